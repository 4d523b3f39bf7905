"""A synthetic scene for machines without a camera: a still room with sensor noise, and an
object that walks across it every 30 seconds.

The H.264 stream is encoded once at start, in a child process (a one-second GOP of the still
room, and the GOPs of one crossing), then replayed GOP by GOP in real time, so the steady-state
CPU and memory are the daemon's own, as on a Pi whose encoder is in hardware. The small
analysis frames are rendered on the fly from the same scene description (cheap: a few numpy
additions per analysed frame).

While privacy masks or a timestamp are set (``overlay``), the frames must carry them, so the
scene is rendered and encoded frame by frame in the daemon instead (libx264, ``ultrafast``),
from the next frame on; when they are cleared the pre-encoded stream takes over again at its
next keyframe.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

from pinthesky.camera.base import AnalysisPort
from pinthesky.camera.overlay import Burn, Overlay
from pinthesky.camera.x264 import X264Encoder, encode_jpeg
from pinthesky.errors import SourceError
from pinthesky.live.tap import YUV420, LiveTap, Picture
from pinthesky.media import US, AnalysisFrame, Packet, StreamInfo, monotonic_us
from pinthesky.record.ring import PacketRing
from pinthesky.settings import CameraSettings, Resolution

log = logging.getLogger(__name__)

PERIOD_S = 30.0
"""An object crosses the scene once per period."""
CROSS_AT_S = 10.0
"""Seconds into each period the crossing starts (leaves time to fill the pre-roll)."""
CROSS_FOR_S = 4.0
NOISE_SIGMA = 2.0


@dataclass(frozen=True)
class Scene:
    """Geometry of the scene in picture-relative units, rendered at any size."""

    width: int
    height: int

    def background(self) -> npt.NDArray[np.int16]:
        h, w = self.height, self.width
        y = np.linspace(0.0, 1.0, h)[:, None]
        x = np.linspace(0.0, 1.0, w)[None, :]
        img = 70 + 90 * y + 20 * x  # light from above, a wall fading to the floor
        img = img + 6 * np.sin(x * 40) * np.sin(y * 30)  # some texture for the encoder
        # a door and a window
        img[int(h * 0.15) : int(h * 0.75), int(w * 0.65) : int(w * 0.8)] = 60
        img[int(h * 0.2) : int(h * 0.45), int(w * 0.1) : int(w * 0.35)] = 200
        out: npt.NDArray[np.int16] = np.clip(img, 0, 255).astype(np.int16)
        return out

    def object_box(self, t: float) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) of the walking object at ``t`` seconds, or None when absent."""
        phase = t % PERIOD_S - CROSS_AT_S
        if not 0 <= phase < CROSS_FOR_S:
            return None
        w, h = self.width, self.height
        ow, oh = max(2, w // 10), max(2, int(h / 2.5))
        x0 = int(-ow + (w + ow) * phase / CROSS_FOR_S)
        y0 = int(h * 0.4)
        return max(0, x0), y0, min(w, x0 + ow), min(h, y0 + oh)

    def render(self, base: npt.NDArray[np.int16], t: float) -> npt.NDArray[np.int16]:
        img = base.copy()
        box = self.object_box(t)
        if box is not None:
            x0, y0, x1, y1 = box
            if x1 > x0:
                img[y0:y1, x0:x1] = 35
        return img


class SyntheticSource:
    """A ``Camera`` that plays the synthetic scene in real time."""

    name = "synthetic"

    def __init__(self, settings: CameraSettings, seed: int = 7) -> None:
        self._settings = settings
        self._rng = np.random.default_rng(seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._still: list[Packet] = []
        self._crossing: list[Packet] = []
        self._fps = settings.framerate
        self._t = 0.0
        # Live pictures draw their noise from a generator of their own, so that watching never
        # changes the analysis frames (and with them the clips).
        self._live_rng = np.random.default_rng(seed + 1)
        self._live_scene: tuple[Resolution, Scene, npt.NDArray[np.int16]] | None = None
        self._live_noise: npt.NDArray[np.int16] | None = None
        self._burn = Burn()
        self._encoder: X264Encoder | None = None
        """The in-process encoder while the frames carry an overlay."""
        self._main_rng = np.random.default_rng(seed + 2)
        self._main_scene: tuple[npt.NDArray[np.int16], npt.NDArray[np.int16]] | None = None
        self._last_ts = 0

    def open(self) -> StreamInfo:
        s = self._settings
        w, h = s.resolution
        iperiod = s.iperiod
        self._main = Scene(w, h)
        self._lores = Scene(*s.lores)
        self._lores_bg = self._lores.background()
        lw, lh = s.lores
        self._noise = self._rng.normal(0, NOISE_SIGMA, (lh + 16, lw + 16)).astype(np.int16)
        # Align the crossing to GOP boundaries so each pre-encoded GOP starts on an IDR.
        self._gop = iperiod
        self._loop_gops = max(2, math.ceil(PERIOD_S * self._fps / iperiod))
        self._cross_gop0 = math.ceil(CROSS_AT_S * self._fps / iperiod)
        self._cross_gops = math.ceil(CROSS_FOR_S * self._fps / iperiod)
        self._still, self._crossing = self._encode_in_child(
            self._cross_gop0 * iperiod, self._cross_gops * iperiod
        )
        log.info(
            "synthetic scene %dx%d at %d fps: an object crosses every %.0f s",
            w,
            h,
            self._fps,
            PERIOD_S,
        )
        return StreamInfo(w, h, Fraction(self._fps), s.rotation)

    def _encode_in_child(
        self, cross_first: int, cross_frames: int
    ) -> tuple[list[Packet], list[Packet]]:
        """Pre-encode in a child process: the daemon itself then never loads FFmpeg's
        encoders, whose memory would stay resident long after this one-off job."""
        s = self._settings
        args = {
            "width": s.resolution.width,
            "height": s.resolution.height,
            "fps": self._fps,
            "bitrate": s.bitrate,
            "profile": s.encoding_profile,
            "gop": self._gop,
            "cross_first": cross_first,
            "cross_frames": cross_frames,
        }
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pinthesky.camera.synthetic", json.dumps(args)],
                capture_output=True,
                timeout=120,
                check=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            reason = detail.decode(errors="replace").strip().splitlines()[-1:] or [str(exc)]
            raise SourceError(f"synthetic scene: pre-encoding failed: {reason[0]}") from None
        still, crossing = _unpack(done.stdout)
        return still, crossing

    def _noisy(
        self, img: npt.NDArray[np.int16], noise: npt.NDArray[np.int16]
    ) -> npt.NDArray[np.uint8]:
        return _noisy(img, noise, self._rng)

    def set_overlay(self, overlay: Overlay) -> None:
        self._burn.set(overlay)

    def _main_frame(self, ts: int) -> Any:
        """The scene now at the main size, with noise and the overlay (synthetic thread)."""
        import av

        w, h = self._settings.resolution
        if self._main_scene is None:
            noise = self._main_rng.normal(0, NOISE_SIGMA, (h + 16, w + 16)).astype(np.int16)
            self._main_scene = (self._main.background(), noise)
        background, noise = self._main_scene
        yuv = np.empty((h * 3 // 2, w), np.uint8)
        yuv[:h] = _noisy(self._main.render(background, self._t), noise, self._main_rng)
        yuv[h:] = 128
        return av.VideoFrame.from_ndarray(self._burn.apply_i420(yuv, ts), format="yuv420p")

    def _encode_live(self, ts: int) -> list[Packet]:
        """One frame rendered, burnt and encoded here (synthetic thread)."""
        if self._encoder is None:
            s = self._settings
            self._encoder = X264Encoder(
                s.resolution.width,
                s.resolution.height,
                Fraction(self._fps),
                s.bitrate,
                s.encoding_profile,
                self._gop,
                preset="ultrafast",
            )
        return self._encoder.encode(self._main_frame(ts), ts)

    def start(self, ring: PacketRing, port: AnalysisPort, live: LiveTap | None = None) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(ring, port, live), name="synthetic-camera", daemon=True
        )
        self._thread.start()

    def _run(self, ring: PacketRing, port: AnalysisPort, live: LiveTap | None) -> None:
        # Runs on the synthetic camera thread: it plays the part of the sensor and encoder.
        try:
            origin = monotonic_us()
            i = 0
            loop_frames = self._loop_gops * self._gop
            cross0 = self._cross_gop0 * self._gop
            cross1 = cross0 + self._cross_gops * self._gop
            while not self._stop.is_set():
                ts = origin + round(i * US / self._fps)
                delay = (ts - monotonic_us()) / US
                if delay > 0 and self._stop.wait(delay):
                    break
                k = i % loop_frames
                self._t = k / self._fps
                self._last_ts = ts
                if self._burn.active or (self._encoder is not None and k % self._gop):
                    # An overlay: rendered and encoded here (and, once it is cleared, until
                    # the pre-encoded stream reaches its next keyframe).
                    for packet in self._encode_live(ts):
                        ring.push(packet)
                else:
                    if self._encoder is not None:
                        for packet in self._encoder.encode(None):
                            ring.push(packet)
                        self._encoder = None
                    if cross0 <= k < cross1:
                        pkt = self._crossing[k - cross0]
                    else:
                        pkt = self._still[k % self._gop]
                    ring.push(Packet(pkt.data, pkt.keyframe, ts))
                if port.due(ts):
                    luma = self._noisy(self._lores.render(self._lores_bg, self._t), self._noise)
                    plane = self._burn.plane((luma.shape[1], luma.shape[0]))
                    if plane is not None:
                        plane.apply(luma, None, None, ts)
                    port.submit(AnalysisFrame(luma, ts))
                if live is not None and live.wants(YUV420) and live.due(ts):
                    live.offer(self._live_picture(live.size, ts))
                i += 1
        except Exception as exc:  # the daemon restarts or exits; never die silently
            log.exception("synthetic camera failed")
            port.failed(exc)

    def _live_picture(self, size: Resolution, ts: int) -> Picture:
        """The scene now, rendered at the live size with its noise (synthetic thread)."""
        if self._live_scene is None or self._live_scene[0] != size:
            scene = Scene(*size)
            self._live_scene = (size, scene, scene.background())
            self._live_noise = self._live_rng.normal(
                0, NOISE_SIGMA, (size.height + 16, size.width + 16)
            ).astype(np.int16)
        _, scene, background = self._live_scene
        assert self._live_noise is not None
        luma = _noisy(scene.render(background, self._t), self._live_noise, self._live_rng)
        w, h = size
        yuv = np.empty((h * 3 // 2, w), np.uint8)
        yuv[:h] = luma
        yuv[h:] = 128  # no colour in the synthetic room
        return Picture(YUV420, self._burn.apply_i420(yuv, ts), w, h, ts)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def capture_jpeg(self) -> bytes:
        import av

        w, h = self._settings.resolution
        luma = np.clip(self._main.render(self._main.background(), self._t), 0, 255)
        yuv = np.concatenate([luma.astype(np.uint8), np.full((h // 2, w), 128, np.uint8)])
        self._burn.apply_i420(yuv, self._last_ts)
        frame: Any = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        return encode_jpeg(frame, rotation=self._settings.rotation)


def _noisy(
    img: npt.NDArray[np.int16], noise: npt.NDArray[np.int16], rng: np.random.Generator
) -> npt.NDArray[np.uint8]:
    """The scene with sensor noise: a window at a random offset into a fixed noise field."""
    h, w = img.shape
    dy, dx = rng.integers(0, 16, 2)
    noisy = img + noise[dy : dy + h, dx : dx + w]
    out: npt.NDArray[np.uint8] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


def encode_scene(args: dict[str, Any], seed: int = 7) -> tuple[list[Packet], list[Packet]]:
    """One GOP of the still room and the GOPs of one crossing, encoded like the Pi would."""
    import av

    w, h, fps, gop = args["width"], args["height"], args["fps"], args["gop"]
    rng = np.random.default_rng(seed)
    scene = Scene(w, h)
    bg = scene.background()
    noise = rng.normal(0, NOISE_SIGMA, (h + 16, w + 16)).astype(np.int16)
    chroma = np.full((h // 2, w), 128, np.uint8)
    parts = []
    for first, frames in ((0, gop), (args["cross_first"], args["cross_frames"])):
        enc = X264Encoder(
            w, h, Fraction(fps), args["bitrate"], args["profile"], gop, preset="ultrafast"
        )
        packets: list[Packet] = []
        for i in range(frames):
            luma = _noisy(scene.render(bg, (first + i) / fps), noise, rng)
            frame = av.VideoFrame.from_ndarray(np.concatenate([luma, chroma]), format="yuv420p")
            packets += enc.encode(frame, round(i * US / fps))
        packets += enc.close()
        parts.append(packets)
    return parts[0], parts[1]


def _pack(parts: tuple[list[Packet], list[Packet]]) -> bytes:
    out = bytearray()
    for packets in parts:
        out += struct.pack(">I", len(packets))
        for p in packets:
            out += struct.pack(">IB", len(p.data), p.keyframe) + p.data
    return bytes(out)


def _unpack(data: bytes) -> tuple[list[Packet], list[Packet]]:
    parts: list[list[Packet]] = []
    pos = 0
    for _ in range(2):
        (count,) = struct.unpack_from(">I", data, pos)
        pos += 4
        packets = []
        for _ in range(count):
            size, key = struct.unpack_from(">IB", data, pos)
            pos += 5
            packets.append(Packet(data[pos : pos + size], bool(key), 0))
            pos += size
        parts.append(packets)
    return parts[0], parts[1]


if __name__ == "__main__":
    # The pre-encoding child: settings as JSON in, packets on stdout.
    sys.stdout.buffer.write(_pack(encode_scene(json.loads(sys.argv[1]))))
