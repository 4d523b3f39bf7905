"""The Raspberry Pi camera, through picamera2 (libcamera).

This is the only module that imports ``picamera2`` or ``libcamera``, and it does so inside
functions: ``import pinthesky.camera.picam`` works on any machine, and a machine without the
camera stack pays nothing for it.

One camera configuration feeds everything: the ``main`` stream (YUV420 at the clip resolution)
goes to picamera2's H.264 encoder (the V4L2 hardware encoder on Pi 0-4, libx264 through PyAV on
Pi 5), whose packets land in our ``PacketRing``; the small ``lores`` stream (YUV420) is sampled
in picamera2's ``post_callback`` at the analysis rate and its Y plane goes to the analyzer.

Live view takes pictures from the stream of the live size (``lores`` when it has that size, else
``main``), only while the ``LiveTap`` wants them: YUV420 copied in the ``post_callback`` at the
live rate, and, on a Pi 0-4 while someone watches the local page, JPEG from picamera2's hardware
``MJPEGEncoder`` running as a second encoder on that stream (``frame_skip_count`` brings it down
to the live rate). On a Pi 5 picamera2's MJPEG is software on the camera thread, so there the
daemon's own encoder does it on a worker thread instead.

A note on threads:

- ``open``, ``start``, ``stop`` and ``capture_jpeg`` run on the daemon's executor threads.
- ``_on_request`` (the ``post_callback``) runs on picamera2's camera thread, once per frame,
  while picamera2 holds its own lock: it must be short and must never raise. It only calls
  ``AnalysisPort.due`` and ``AnalysisPort.submit``, which are built for that thread.
- ``_RingOutput.outputframe`` runs where the encoder produces packets: on the V4L2 encoder's
  poll thread (Pi 0-4), on the camera thread right after ``_on_request`` (libx264 on Pi 5),
  and, for the packets libx264 still holds when it stops, on the thread calling ``stop``.
  ``PacketRing`` locks for itself; so does ``LiveTap`` (JPEG pictures arrive the same way).
- The MJPEG encoder is started and stopped on a short-lived thread of its own (picamera2's
  camera thread must not wait for it), under ``_stop_lock`` like ``stop``; ``_on_request`` only
  reads whether it runs and starts that thread.

Timestamps: picamera2's encoders stamp packets relative to their first frame
(``Encoder._timestamp`` keeps the absolute first one in ``encoder.firsttimestamp``), while the
``post_callback`` sees the absolute ``SensorTimestamp``. The output adds ``firsttimestamp``
back, so packets and analysis frames share one clock: sensor time in microseconds.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

from pinthesky.camera.base import AnalysisPort, open_error
from pinthesky.errors import SourceError
from pinthesky.live.tap import JPEG, YUV420, LiveTap, Picture, i420
from pinthesky.media import AnalysisFrame, StreamInfo
from pinthesky.ring import PacketRing
from pinthesky.settings import CameraSettings

log = logging.getLogger(__name__)

NAME = "picamera2"

PROFILES: dict[str, str] = {
    "baseline": "baseline",
    "main": "main",
    "extended": "main",  # neither the V4L2 encoder nor libx264 can produce Extended
    "high": "high",
    "constrained": "constrained baseline",
}
"""Pi In The Sky profile names to the names picamera2's H.264 encoders accept."""

CAPTURE_TIMEOUT = 10.0
"""Seconds ``capture_jpeg`` waits for a frame before it gives up."""

_logged_once: set[str] = set()


def _log_once(level: int, key: str, msg: str, *args: object) -> None:
    """Log a configuration limitation once per process (a daemon may reopen the camera)."""
    if key not in _logged_once:
        _logged_once.add(key)
        log.log(level, msg, *args)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def camera_present() -> bool | None:
    """Whether a camera is attached: ``None`` when picamera2/libcamera are not usable here
    (not a Raspberry Pi), else whether libcamera lists at least one camera."""
    try:
        from picamera2 import Picamera2
    except Exception as exc:
        # Off a Pi the import fails with ImportError (no libcamera, no pykms), but a partial
        # or mismatched install can fail in other ways (AttributeError from libcamera
        # bindings of another version, OSError from a shared library): all mean "no picamera2".
        log.debug("picamera2 not usable: %s", _one_line(exc))
        return None
    try:
        cameras = Picamera2.global_camera_info()
    except Exception as exc:
        log.warning("picamera2: cannot list cameras: %s", _one_line(exc))
        return False
    return len(cameras) > 0


def _default_factory() -> Any:
    from picamera2 import Picamera2

    return Picamera2()


def _hardware_jpeg() -> bool:
    """Whether picamera2's ``MJPEGEncoder`` is the hardware one here (Pi 0-4, V4L2)."""
    try:
        from picamera2.platform import Platform, get_platform
    except Exception as exc:  # a partial install fails in many ways (see camera_present)
        log.debug("picamera2 platform unknown: %s", _one_line(exc))
        return False
    return bool(get_platform() == Platform.VC4)


def _make_output(
    what: str, handle: Callable[[Any, bool, int | None, Any], None], detail: bool = False
) -> Any:
    """A real ``picamera2.outputs.Output`` (encoders accept nothing else) that passes each
    video frame to ``handle(frame, keyframe, timestamp, packet)``. It runs on the encoder
    thread (see the note on threads), so nothing may escape into picamera2: each distinct
    failure is logged once as "``what`` lost"."""
    from picamera2.outputs import Output

    errors: set[str] = set()

    class _Output(Output):  # type: ignore[misc]
        def outputframe(
            self,
            frame: Any,
            keyframe: bool = True,
            timestamp: int | None = None,
            packet: Any = None,
            audio: bool = False,
        ) -> None:
            try:
                if not audio:
                    handle(frame, keyframe, timestamp, packet)
            except Exception as exc:
                msg = _one_line(exc)
                if msg not in errors:
                    errors.add(msg)
                    log.warning("picamera2: %s lost: %s", what, msg, exc_info=detail)

    return _Output()


def _ring_output(ring: PacketRing, encoder: Any) -> Any:
    """Feeds ``ring`` with absolute sensor timestamps."""

    def handle(frame: Any, keyframe: bool, timestamp: int | None, packet: Any) -> None:
        if timestamp is not None:
            first = encoder.firsttimestamp
            if first is None:
                _log_once(
                    logging.WARNING,
                    "no-first-ts",
                    "picamera2: packet before the encoder's first frame dropped",
                )
                return
            timestamp = int(first) + int(timestamp)
        ring.outputframe(frame, keyframe, timestamp, packet, False)

    return _make_output("packet", handle, detail=True)


def _jpeg_output(live: LiveTap, encoder: Any, size: tuple[int, int]) -> Any:
    """Hands the MJPEG encoder's JPEGs to the live tap."""

    def handle(frame: Any, keyframe: bool, timestamp: int | None, packet: Any) -> None:
        if frame is not None:
            ts = int(encoder.firsttimestamp or 0) + int(timestamp or 0)
            live.offer(Picture(JPEG, bytes(frame), size[0], size[1], ts))

    return _make_output("live JPEG", handle)


class PicameraSource:
    """The Camera protocol on top of picamera2."""

    name = NAME

    def __init__(self, settings: CameraSettings, factory: Callable[[], Any] | None = None) -> None:
        self._settings = settings
        self._factory = factory or _default_factory
        self._picam2: Any = None
        self._encoder: Any = None
        self._lores_size: tuple[int, int] = (settings.lores.width, settings.lores.height)
        self._port: AnalysisPort | None = None
        self._camera_started = False
        self._encoder_started = False
        self._callback_errors: set[str] = set()
        self._stop_lock = threading.Lock()
        self._geometry: dict[str, tuple[int, int, int]] = {}
        """Stream name -> (width, height, stride) as configured."""
        self._live: LiveTap | None = None
        self._live_stream = "main"
        self._live_jpeg = False
        """Whether live JPEG comes from picamera2's hardware MJPEG encoder."""
        self._mjpeg: Any = None
        self._mjpeg_switching = False

    # -- executor threads -----------------------------------------------------------------

    def open(self) -> StreamInfo:
        s = self._settings
        if self._picam2 is not None:
            self.stop()
        try:
            import libcamera
            from picamera2.encoders import H264Encoder
        except Exception as exc:
            raise SourceError(
                f"picamera2: not usable on this machine ({_one_line(exc)}); on a Raspberry Pi "
                "install python3-picamera2 and create the venv with --system-site-packages"
            ) from None

        rotation = s.rotation
        kwargs: dict[str, Any] = {
            "main": {"size": (s.resolution.width, s.resolution.height), "format": "YUV420"},
            "lores": {"size": (s.lores.width, s.lores.height), "format": "YUV420"},
            "controls": {"FrameRate": s.framerate},
            "encode": "main",
        }
        if rotation == 180:
            kwargs["transform"] = libcamera.Transform(hflip=1, vflip=1)
        elif rotation in (90, 270):
            _log_once(
                logging.WARNING,
                "rotation",
                "picamera2: the camera cannot rotate by %d degrees; clips carry it as a "
                "display rotation and the analysis rotates in software",
                rotation,
            )
        profile = PROFILES.get(s.encoding_profile, s.encoding_profile)
        if s.encoding_profile == "extended":
            _log_once(
                logging.INFO,
                "profile",
                "picamera2: H.264 profile extended is not supported by the encoder; using main",
            )
        _log_once(
            logging.DEBUG,
            "level",
            "picamera2: encoding level %s is not passed on; the encoder picks the level it needs",
            s.encoding_level,
        )

        try:
            picam2 = self._factory()
        except IndexError:
            # Picamera2() indexes libcamera's camera list: an empty list means no camera.
            raise SourceError("picamera2: no camera detected") from None
        except Exception as exc:
            raise open_error(NAME, exc) from None
        self._picam2 = picam2
        try:
            config = picam2.create_video_configuration(**kwargs)
            picam2.configure(config)
            streams = picam2.camera_configuration()
            width, height = streams["main"]["size"]
            lw, lh = streams["lores"]["size"]
            self._lores_size = (int(lw), int(lh))
            self._geometry = {
                name: (int(s["size"][0]), int(s["size"][1]), int(s["stride"]))
                for name, s in ((n, streams[n]) for n in ("main", "lores"))
            }
            self._encoder = H264Encoder(
                bitrate=s.bitrate,
                repeat=True,
                iperiod=s.iperiod,
                framerate=s.framerate,
                profile=profile,
            )
        except Exception as exc:
            self.stop()
            raise open_error(NAME, exc) from None
        if (width, height) != tuple(s.resolution):
            log.warning("picamera2: main stream is %dx%d, not %s", width, height, s.resolution)
        return StreamInfo(
            int(width), int(height), Fraction(s.framerate), rotation if rotation in (90, 270) else 0
        )

    def start(self, ring: PacketRing, port: AnalysisPort, live: LiveTap | None = None) -> None:
        picam2 = self._picam2
        if picam2 is None:
            raise SourceError("picamera2: start() before open()")
        output = _ring_output(ring, self._encoder)
        self._port = port
        if live is not None:
            size = tuple(live.size)
            lores = self._geometry.get("lores", (0, 0, 0))[:2]
            self._live_stream = "lores" if lores == size else "main"
            at_size = self._geometry.get(self._live_stream, (0, 0, 0))[:2] == size
            # The hardware cannot turn a JPEG by a quarter: then our encoder makes them.
            self._live_jpeg = at_size and live.rotation == 0 and _hardware_jpeg()
            live.native_jpeg = self._live_jpeg
        self._live = live
        try:
            picam2.post_callback = self._on_request
            picam2.start()
            self._camera_started = True
            picam2.start_encoder(self._encoder, output)
            self._encoder_started = True
        except Exception as exc:
            self.stop()
            raise open_error(NAME, exc) from None

    def stop(self) -> None:
        with self._stop_lock:
            picam2, self._picam2 = self._picam2, None
            self._port = None
            self._live = None
            if picam2 is None:
                return
            encoder_started, self._encoder_started = self._encoder_started, False
            self._camera_started = False
            mjpeg, self._mjpeg = self._mjpeg, None
            steps: list[tuple[str, Callable[[], Any]]] = []
            if mjpeg is not None:
                steps.append(("stop_encoder (MJPEG)", lambda: picam2.stop_encoder(mjpeg)))
            if encoder_started:
                steps.append(("stop_encoder", lambda: picam2.stop_encoder(self._encoder)))
            steps += [("stop", picam2.stop), ("close", picam2.close)]
            for what, step in steps:
                try:
                    step()
                except Exception as exc:
                    log.warning("picamera2: %s failed: %s", what, _one_line(exc))
            with contextlib.suppress(Exception):
                picam2.post_callback = None

    def capture_jpeg(self) -> bytes:
        picam2 = self._picam2
        if picam2 is None or not self._camera_started:
            raise SourceError("picamera2: still capture failed: the camera is not running")
        buf = io.BytesIO()
        try:
            with picam2.captured_request(wait=CAPTURE_TIMEOUT) as request:
                request.save("main", buf, format="jpeg")
        except Exception as exc:
            raise open_error(f"{NAME}: still capture failed", exc) from None
        return buf.getvalue()

    # -- camera thread --------------------------------------------------------------------

    def _on_request(self, request: Any) -> None:
        """picamera2's ``post_callback``: every frame, on the camera thread."""
        port = self._port
        if port is None:
            return
        try:
            ns = request.get_metadata()["SensorTimestamp"]
            # Rounded exactly as Encoder._timestamp does, so a packet and the analysis frame
            # of the same picture carry the same microsecond.
            ts = int(ns / 1000)
            if port.due(ts):
                w, h = self._lores_size
                yuv = request.make_array("lores")  # (h * 3 // 2, stride), Y plane on top
                luma = np.array(yuv[:h, :w], dtype=np.uint8, copy=True, order="C")
                port.submit(AnalysisFrame(luma, ts))
        except Exception as exc:
            self._callback_error("analysis frame lost", exc)
            return
        live = self._live
        if live is not None:
            try:
                self._live_request(request, live, ts)
            except Exception as exc:
                self._callback_error("live picture lost", exc)

    def _callback_error(self, what: str, exc: Exception) -> None:
        msg = f"{type(exc).__name__}: {_one_line(exc)}"
        if msg not in self._callback_errors:
            self._callback_errors.add(msg)
            log.warning("picamera2: %s: %s", what, msg, exc_info=True)

    def _live_request(self, request: Any, live: LiveTap, ts: int) -> None:
        """Live view's share of a frame (camera thread): start or stop the MJPEG encoder as
        viewers come and go, and copy a YUV420 picture when one is wanted and due."""
        running = self._mjpeg is not None
        if self._live_jpeg and live.wants(JPEG) != running and not self._mjpeg_switching:
            self._mjpeg_switching = True
            threading.Thread(
                target=self._switch_mjpeg, args=(live,), name="picamera2-mjpeg", daemon=True
            ).start()
        if not (live.wants(YUV420) and live.due(ts)):
            return
        from picamera2.request import MappedArray

        w, h, stride = self._geometry[self._live_stream]
        with MappedArray(request, self._live_stream, write=False) as mapped:
            # libcamera's YUV420: Y rows of ``stride`` bytes, then U and V rows of half that.
            flat = mapped.array.reshape(-1)
            half = stride // 2
            u0 = stride * h
            v0 = u0 + half * (h // 2)
            y = flat[:u0].reshape(h, stride)[:, :w]
            u = flat[u0:v0].reshape(h // 2, half)[:, : w // 2]
            v = flat[v0 : v0 + half * (h // 2)].reshape(h // 2, half)[:, : w // 2]
            picture = i420(y, u, v)  # the one copy, made before the buffer goes back
        live.offer(Picture(YUV420, picture, w, h, ts))

    def _switch_mjpeg(self, live: LiveTap) -> None:
        """Start or stop picamera2's MJPEG encoder to match the tap (its own short thread)."""
        wanted = live.wants(JPEG)
        try:
            with self._stop_lock:
                picam2 = self._picam2
                if picam2 is None or not self._camera_started:
                    return
                if wanted and self._mjpeg is None:
                    from picamera2.encoders import MJPEGEncoder

                    encoder = MJPEGEncoder()
                    # picamera2 encodes one frame in frame_skip_count: the live rate, roughly.
                    encoder.frame_skip_count = max(1, round(self._settings.framerate / live.fps))
                    w, h, _ = self._geometry[self._live_stream]
                    output = _jpeg_output(live, encoder, (w, h))
                    picam2.start_encoder(encoder, output, name=self._live_stream)
                    self._mjpeg = encoder
                    log.info("picamera2: MJPEG encoder started on the %s stream", self._live_stream)
                elif not wanted and self._mjpeg is not None:
                    encoder, self._mjpeg = self._mjpeg, None
                    picam2.stop_encoder(encoder)
                    log.info("picamera2: MJPEG encoder stopped")
        except Exception as exc:
            # Live view falls back to the daemon's own JPEG encoder; recording goes on.
            log.warning("picamera2: MJPEG encoder failed (%s): encoding JPEG in software", exc)
            self._live_jpeg = False
            live.native_jpeg = False
        finally:
            self._mjpeg_switching = False
