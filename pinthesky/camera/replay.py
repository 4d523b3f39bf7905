"""A video file as the camera: anything PyAV reads, replayed in real time or as fast as possible.

Each frame is scaled to the configured resolution and encoded with libx264 shaped like the
Pi's encoder (one keyframe per ``iperiod`` frames, no B-frames), so clips cut from a replay
look like clips from a Pi. A file that already is what the Pi would produce (H.264 at the
configured size, no B-frames, a keyframe at least every two ``iperiod``) is passed through
untouched instead, and only decoded for the analysis. Frames are stamped with the file's own
media time, shifted to start at "now" on the monotonic clock; analysis frames are handed over
losslessly (the replay waits for the analyzer), so a replay cuts the same clips at any speed.
"""

from __future__ import annotations

import logging
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from pinthesky.camera.base import AnalysisPort, open_error
from pinthesky.camera.overlay import Burn, Overlay
from pinthesky.camera.x264 import X264Encoder, encode_jpeg
from pinthesky.errors import SourceError
from pinthesky.live.tap import YUV420, LiveTap, Picture
from pinthesky.media import US, AnalysisFrame, Packet, StreamInfo, monotonic_us
from pinthesky.record.ring import PacketRing
from pinthesky.settings import CameraSettings

log = logging.getLogger(__name__)


class _Timeline:
    """Media time of the file -> sensor time, paced to the replay speed (replay thread)."""

    def __init__(self, speed: float, stop: threading.Event) -> None:
        self.origin = monotonic_us()
        self._wall0 = time.monotonic()
        self._speed = speed
        self._stop = stop
        self._t0: float | None = None
        self._last = self.origin - 1

    def stamp(self, t: float) -> int | None:
        """The sensor timestamp of media time ``t``, once it is due; None when stopping."""
        if self._t0 is None:
            self._t0 = t
        # Strictly increasing stamps even if the file repeats a timestamp.
        ts = max(self.origin + round((t - self._t0) * US), self._last + 1)
        self._last = ts
        if self._speed > 0:
            delay = self._wall0 + (ts - self.origin) / US / self._speed - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return None
        return None if self._stop.is_set() else ts


class ReplaySource:
    """A ``Camera`` reading a video file."""

    name = "file"

    def __init__(self, path: Path, settings: CameraSettings, speed: float = 1.0) -> None:
        self._path = path
        self._settings = settings
        self._speed = speed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._container: Any = None
        self._last_frame: Any = None
        self._live: LiveTap | None = None
        self._burn = Burn()
        self.frames = 0
        self.origin_us: int | None = None
        """Sensor time of the file's first frame: media time t is ``origin_us + t``."""

    def open(self) -> StreamInfo:
        import av

        try:
            container: Any = av.open(str(self._path))
            if not container.streams.video:
                raise SourceError(f"{self._path}: cannot read video: no video stream in the file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            # Decode one frame now so an unreadable file fails here, with one clear line.
            first = next(container.decode(stream))
        except SourceError:
            raise
        except StopIteration:
            raise SourceError(f"{self._path}: cannot read video: no frames") from None
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise open_error(f"{self._path}: cannot read video", exc) from None
        self._container = container
        self._first = first
        self.passthrough = self._can_pass_through(stream)
        rate = stream.average_rate or stream.guessed_rate
        self._fps = Fraction(rate) if rate else Fraction(self._settings.framerate)
        w, h = self._settings.resolution
        log.info(
            "replaying %s (%dx%d, %s, %.3g fps) at %s",
            self._path,
            stream.width,
            stream.height,
            stream.codec_context.name,
            float(self._fps),
            "full speed" if self._speed == 0 else f"{self._speed:g}x real time",
        )
        if self.passthrough:
            log.info("%s is H.264 as the camera would send it: passed through", self._path)
        return StreamInfo(w, h, self._fps, self._settings.rotation)

    def _can_pass_through(self, stream: Any) -> bool:
        import av

        ctx = stream.codec_context
        if ctx.name != "h264" or (stream.width, stream.height) != tuple(self._settings.resolution):
            return False
        if getattr(ctx, "has_b_frames", 0):
            return False
        # Pre-roll precision depends on frequent keyframes: look at the first few hundred.
        limit = 2 * self._settings.iperiod
        gap = 0
        try:
            with av.open(str(self._path)) as probe:
                for n, pkt in enumerate(probe.demux(probe.streams.video[0])):
                    if n >= 300:
                        break
                    if pkt.size == 0:
                        continue
                    if pkt.is_keyframe:
                        gap = 0
                    else:
                        gap += 1
                        if gap >= limit:
                            return False
        except av.FFmpegError:
            return False
        return True

    def set_overlay(self, overlay: Overlay) -> None:
        self._burn.set(overlay)

    def start(self, ring: PacketRing, port: AnalysisPort, live: LiveTap | None = None) -> None:
        self._live = live
        self._thread = threading.Thread(
            target=self._run, args=(ring, port), name="replay-camera", daemon=True
        )
        self._thread.start()

    def _frames(self) -> Any:
        yield self._first
        yield from self._container.decode(video=0)

    def _run(self, ring: PacketRing, port: AnalysisPort) -> None:
        # Runs on the replay thread: it plays the part of the sensor and the encoder.
        import av

        timeline = _Timeline(self._speed, self._stop)
        self.origin_us = timeline.origin
        produce = self._pass_through if self.passthrough else self._reencode
        try:
            produce(ring, port, timeline)
        except av.FFmpegError as exc:
            # A damaged tail: keep what was decoded, like a player would.
            log.warning("%s: stopped reading at frame %d: %s", self._path, self.frames, exc)
        except Exception as exc:
            log.exception("replay of %s failed", self._path)
            port.failed(exc)
            return
        log.info("end of %s after %d frames", self._path, self.frames)
        port.finished()

    def _encoder(self) -> X264Encoder:
        s = self._settings
        return X264Encoder(*s.resolution, self._fps, s.bitrate, s.encoding_profile, s.iperiod)

    def _burnt(self, frame: Any, ts: int) -> Any:
        """A yuv420p frame with the overlay burnt in (a new frame), or the frame itself."""
        import av

        if not self._burn.active:
            return frame
        yuv = self._burn.apply_i420(frame.to_ndarray(), ts)
        out = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        out.pts, out.time_base = frame.pts, frame.time_base
        return out

    def _reencode(self, ring: PacketRing, port: AnalysisPort, timeline: _Timeline) -> None:
        """Decode, scale and encode like the Pi's encoder."""
        s = self._settings
        w, h = s.resolution
        enc = self._encoder()
        try:
            for frame in self._frames():
                t = frame.time if frame.time is not None else self.frames / float(self._fps)
                ts = timeline.stamp(t)
                if ts is None:
                    break
                main = self._burnt(frame.reformat(width=w, height=h, format="yuv420p"), ts)
                self._last_frame = main
                for pkt in enc.encode(main, ts):
                    ring.push(pkt)
                self._analyse(frame, ts, port)
                self._offer_live(main, ts)
        finally:
            # Even after a damaged tail, what the encoder still holds belongs to the clip.
            for pkt in enc.close():
                ring.push(pkt)

    def _pass_through(self, ring: PacketRing, port: AnalysisPort, timeline: _Timeline) -> None:
        """Demux, convert to Annex-B, and decode for the analysis only."""
        import av

        with av.open(str(self._path)) as container:
            stream = container.streams.video[0]
            extradata = stream.codec_context.extradata or b""
            # avcC extradata (MP4, MKV) means length-prefixed packets: make them Annex-B.
            bsf = (
                av.BitStreamFilterContext("h264_mp4toannexb", stream)
                if extradata[:1] == b"\x01"
                else None
            )
            encoder: X264Encoder | None = None
            for packet in container.demux(stream):
                if packet.size == 0 or packet.pts is None:
                    continue
                ts = timeline.stamp(float(packet.pts * packet.time_base))
                if ts is None:
                    break
                keyframe = bool(packet.is_keyframe)
                frames = packet.decode()
                if self._burn.active or (encoder is not None and not keyframe):
                    # An overlay can only be burnt into pictures: re-encoded from here on
                    # (and, once it is cleared, until the file's next keyframe).
                    if encoder is None:
                        encoder = self._encoder()
                    frames = [self._burnt(f.reformat(format="yuv420p"), ts) for f in frames]
                    for frame in frames:
                        for pkt in encoder.encode(frame, ts):
                            ring.push(pkt)
                else:
                    if encoder is not None:
                        for pkt in encoder.encode(None):
                            ring.push(pkt)
                        encoder = None
                    for out in bsf.filter(packet) if bsf is not None else [packet]:
                        ring.push(Packet(bytes(out), keyframe, ts))
                for frame in frames:
                    self._last_frame = frame
                    self._analyse(frame, ts, port)
                    self._offer_live(frame, ts)
            if encoder is not None:
                for pkt in encoder.encode(None):
                    ring.push(pkt)

    def _analyse(self, frame: Any, ts: int, port: AnalysisPort) -> None:
        """Count the frame and hand it to the analysis when due (replay thread)."""
        self.frames += 1
        if port.due(ts):
            lw, lh = self._settings.lores
            gray = frame.reformat(width=lw, height=lh, format="gray")
            luma = np.array(gray.to_ndarray(), np.uint8)
            plane = self._burn.plane((lw, lh))
            if plane is not None:  # masked in the analysis too (the frame already is)
                plane.apply(luma, None, None, ts)
            port.submit(AnalysisFrame(luma, ts))

    def _offer_live(self, frame: Any, ts: int) -> None:
        """Hand a frame of the main stream to live view while someone watches (replay thread;
        the live encoder scales it, on its own thread)."""
        live = self._live
        if live is not None and live.wants(YUV420) and live.due(ts):
            yuv = frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p")
            live.offer(Picture(YUV420, yuv.to_ndarray(), frame.width, frame.height, ts))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._container is not None:
            self._container.close()
            self._container = None

    def capture_jpeg(self) -> bytes:
        frame = self._last_frame if self._last_frame is not None else self._first
        return encode_jpeg(frame, rotation=self._settings.rotation)
