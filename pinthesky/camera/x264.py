"""Software encoding through PyAV: H.264 shaped like the Pi's hardware encoder, and JPEG stills.

Used by the sources that have no hardware encoder (file replay, the synthetic scene): no
B-frames (so decode order is presentation order, as from the Pi), a keyframe every ``iperiod``
frames with SPS/PPS repeated before each one (picamera2's ``repeat=True``), Annex-B output.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from pinthesky.media import US, Packet

# Pi In The Sky profile names -> what libx264 knows (it has no "extended").
_X264_PROFILE = {
    "baseline": "baseline",
    "constrained": "baseline",
    "main": "main",
    "extended": "main",
    "high": "high",
}


class X264Encoder:
    """Encodes ``av.VideoFrame``s stamped in microseconds into ``Packet``s."""

    def __init__(
        self,
        width: int,
        height: int,
        framerate: Fraction,
        bitrate: int,
        profile: str = "high",
        iperiod: int = 20,
        preset: str = "veryfast",
    ) -> None:
        import av

        ctx: Any = av.CodecContext.create("libx264", "w")
        ctx.width = width
        ctx.height = height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, US)
        ctx.framerate = framerate
        ctx.bit_rate = bitrate
        ctx.gop_size = iperiod
        # One thread: with its VBV holding a bitrate that binds (as ``auto`` does), x264's
        # threaded rate control makes different bytes of the same frames from run to run, and
        # a replay must give the same clips at any speed.
        ctx.thread_count = 1
        ctx.options = {
            "preset": preset,
            "tune": "zerolatency",
            "profile": _X264_PROFILE.get(profile, "high"),
            # keyint_min/scenecut: keyframes exactly every iperiod frames, as on the Pi.
            # vbv: hold the bitrate like the Pi's encoder does, which bounds the ring's memory.
            "x264-params": (
                f"repeat-headers=1:bframes=0:scenecut=0:keyint_min={iperiod}"
                f":vbv-maxrate={bitrate // 1000}:vbv-bufsize={bitrate // 1000}"
            ),
        }
        self._ctx = ctx
        self.width = width
        self.height = height

    def encode(self, frame: Any | None, ts: int = 0) -> list[Packet]:
        """Encode one frame (``None`` flushes); packet timestamps are the frames' ``ts``."""
        if frame is not None:
            frame.pts = ts
            frame.time_base = Fraction(1, US)
        out = []
        for pkt in self._ctx.encode(frame):
            out.append(Packet(bytes(pkt), bool(pkt.is_keyframe), int(pkt.pts)))
        return out

    def close(self) -> list[Packet]:
        return self.encode(None)


def encode_jpeg(frame: Any, quality: int = 85, rotation: int = 0) -> bytes:
    """One JPEG still from a decoded ``av.VideoFrame`` (software MJPEG, any size), turned
    clockwise by ``rotation`` degrees as the clips are shown."""
    import av

    if rotation % 360:
        from pinthesky.live.tap import YUV420, Picture, turn

        picture = Picture(YUV420, frame.to_ndarray(format="yuv420p"), frame.width, frame.height, 0)
        frame = av.VideoFrame.from_ndarray(turn(picture, rotation).data, format="yuv420p")
    ctx: Any = av.CodecContext.create("mjpeg", "w")
    ctx.width = frame.width
    ctx.height = frame.height
    ctx.pix_fmt = "yuvj420p"
    ctx.time_base = Fraction(1, 25)
    # qscale 2..31, lower is better; map a 0-100 quality onto it.
    ctx.options = {"q:v": str(max(2, min(31, round(31 - quality * 0.29))))}
    ctx.flags |= av.codec.context.Flags.qscale
    still = frame.reformat(format="yuvj420p")
    still.pts = 0
    data = b"".join(bytes(p) for p in ctx.encode(still))
    data += b"".join(bytes(p) for p in ctx.encode(None))
    return data
