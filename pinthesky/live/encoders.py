"""JPEG and MPEG-1 for live view, through the FFmpeg that PyAV bundles (``mjpeg``,
``mpeg1video``).

An encoder is made, used and dropped on one worker thread (``worker.py``): creating it imports
PyAV, about 25 MB resident, which the daemon pays only once someone watches. Pictures arrive
at whatever size the source made them; scaling to the encoder's size is part of the colour
conversion (one swscale pass) on the same thread.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from pinthesky.errors import PintheskyError
from pinthesky.live.tap import Picture, turn

JPEG_QSCALE = 6
"""JPEG quantiser, 2 (best) to 31: about 30 KB for a 640x480 picture of a room."""

MPEG1_RATES = (24, 25, 30, 50, 60)
"""Picture rates MPEG-1 defines (besides the NTSC ones)."""
MPEG1_EXTRA_RATES = (5, 10, 12, 15)
"""Rates FFmpeg writes with the unofficial codes of libmpeg3 and Xing, which jsmpeg and
FFmpeg's decoder read; MPEG-1 has no 20 or 8."""


def mpeg1_rate(fps: int) -> int:
    """The picture rate written in the MPEG-1 sequence header for ``fps`` pictures a second:
    the smallest rate MPEG-1 can express that is not below it (a live stream shows each picture
    as it arrives; the rate only sizes the bit budget per picture)."""
    return min(r for r in (*MPEG1_EXTRA_RATES, *MPEG1_RATES) if r >= fps)


class EncodeError(PintheskyError):
    """A picture could not be encoded (FFmpeg's message, one line)."""


def _encode(ctx: Any, picture: Picture | None, pts: int = 0, rotation: int = 0) -> bytes:
    """Turn, scale and convert ``picture`` for ``ctx`` (None flushes it), encode; FFmpeg's
    errors become ``EncodeError``."""
    import av

    try:
        frame = None
        if picture is not None:
            picture = turn(picture, rotation)
            frame = av.VideoFrame.from_ndarray(picture.data, format="yuv420p")
            if (picture.width, picture.height, ctx.pix_fmt) != (ctx.width, ctx.height, "yuv420p"):
                frame = frame.reformat(width=ctx.width, height=ctx.height, format=ctx.pix_fmt)
            frame.pts = pts
        return b"".join(bytes(p) for p in ctx.encode(frame))
    except (av.FFmpegError, ValueError) as exc:
        raise EncodeError(f"{ctx.name}: {exc}") from None


class JpegEncoder:
    """YUV420 pictures to baseline JPEG (JFIF, full range), any size in, turned clockwise by
    ``rotation``, ``width`` x ``height`` out."""

    def __init__(
        self, width: int, height: int, rotation: int = 0, qscale: int = JPEG_QSCALE
    ) -> None:
        import av

        ctx: Any = av.CodecContext.create("mjpeg", "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuvj420p"  # JPEG is full range: the conversion widens the camera's
        ctx.time_base = Fraction(1, 30)
        # A fixed quantiser: qmin = qmax is what FFmpeg's mjpeg honours (q:v is ignored here).
        ctx.flags |= av.codec.context.Flags.qscale
        ctx.qmin = ctx.qmax = qscale
        ctx.thread_count = 1  # FFmpeg's slice threads: 12 MB more, and a Pi Zero has one core
        self._ctx = ctx
        self.width, self.height, self.rotation = width, height, rotation
        self._pts = 0

    def encode(self, picture: Picture) -> bytes:
        self._pts += 1
        return _encode(self._ctx, picture, self._pts, self.rotation)


class Mpeg1Encoder:
    """YUV420 pictures to an MPEG-1 video elementary stream (what jsmpeg plays), as the old
    daemon's ``ffmpeg -f mpeg1video -b 800k`` made it: no B-frames, so every byte goes out as
    soon as its picture is encoded, and one I-frame a second for a player to resync on."""

    def __init__(self, width: int, height: int, fps: int, bitrate: int, rotation: int = 0) -> None:
        import av

        rate = mpeg1_rate(fps)
        ctx: Any = av.CodecContext.create("mpeg1video", "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, rate)
        ctx.framerate = Fraction(rate)
        ctx.bit_rate = bitrate
        ctx.gop_size = rate
        ctx.max_b_frames = 0
        if rate in MPEG1_EXTRA_RATES:
            ctx.options = {"strict": "unofficial"}
        ctx.thread_count = 1
        self._ctx = ctx
        self.width, self.height, self.rate, self.rotation = width, height, rate, rotation
        self._pts = 0

    def encode(self, picture: Picture) -> bytes:
        self._pts += 1
        return _encode(self._ctx, picture, self._pts, self.rotation)

    def flush(self) -> bytes:
        """What the encoder still holds, and the sequence end code."""
        return _encode(self._ctx, None)
