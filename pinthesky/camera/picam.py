"""The Raspberry Pi camera, through picamera2 (libcamera).

This is the only module that imports ``picamera2`` or ``libcamera``, and it does so inside
functions: ``import pinthesky.camera.picam`` works on any machine, and a machine without the
camera stack pays nothing for it.

One camera configuration feeds everything: the ``main`` stream (YUV420 at the clip resolution)
goes to picamera2's H.264 encoder (the V4L2 hardware encoder on Pi 0-4, libx264 through PyAV on
Pi 5), whose packets land in our ``PacketRing``; the small ``lores`` stream (YUV420) is sampled
in picamera2's ``post_callback`` at the analysis rate and its Y plane goes to the analyzer.

The configuration itself (sensor mode, delivered rate, buffers) is decided by
``pinthesky.hardware.camera.setup`` from the camera module's modes, which come from
``pinthesky.hardware.sensors`` or, for a sensor not known there, from configuring each mode at
one small buffer (never ``Picamera2.sensor_modes``, which needs more camera memory than a
512 MB Pi has). picamera2 runs with ``queue=False``: it keeps no frame back from the camera.

Live view takes pictures only while the ``LiveTap`` wants them. YUV420 pictures are copied in
the ``post_callback`` at the live rate from the stream of the live size (``lores`` or
``main``), or, when neither has it, from ``main`` taking every n-th pixel each way: never the
whole main frame on the camera thread. JPEG pictures come, on a Pi 0-4 while someone watches
the local page, from picamera2's hardware ``MJPEGEncoder`` running as a second encoder on the
stream of the live size, or on ``main`` at its own size when no stream has it (the browser
scales), when camera memory has room for it. On a Pi 5 picamera2's MJPEG is software on the
camera thread, so there the daemon's own encoder does it on a worker thread instead.

A note on threads:

- ``open``, ``start``, ``stop`` and ``capture_jpeg`` run on the daemon's executor threads.
- ``_pre_request`` (the ``pre_callback``) runs on the camera thread before anything else sees
  the frame: it burns the privacy masks and the timestamp into the buffers (``overlay``).
- ``_on_request`` (the ``post_callback``) runs on picamera2's camera thread, once per frame,
  while picamera2 holds its own lock: it must be short and must never raise. It only calls
  ``AnalysisPort.due`` and ``AnalysisPort.submit``, which are built for that thread, and,
  when ``capture_jpeg`` waits for a still, copies that frame's planes into the still's slot
  (the JPEG is encoded back on the waiting thread).
- ``stop`` runs picamera2's stop and close on a thread of its own and waits at most
  ``STOP_TIMEOUT`` for it.
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

import atexit
import contextlib
import errno
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any

import numpy as np

from pinthesky.camera import jpeg, stack
from pinthesky.camera.base import AnalysisPort, open_error
from pinthesky.camera.overlay import Burn, Overlay
from pinthesky.errors import SourceError
from pinthesky.hardware import board, camera, memory, sensors
from pinthesky.live.tap import JPEG, YUV420, LiveTap, Picture, i420
from pinthesky.media import AnalysisFrame, StreamInfo
from pinthesky.record.ring import PacketRing
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

STOP_TIMEOUT = 5.0
"""Seconds ``stop`` waits for picamera2 to stop and close before it leaves a wedged camera
behind: well inside systemd's ``TimeoutStopSec`` (15 s), so that the daemon still finishes
its clip and exits on its own, and the unit restarts it with a fresh process."""

PROBE_SIZE = (320, 240)
"""The main stream's size while a mode of an unknown sensor is measured (one buffer)."""

BUSY = (
    "picamera2: the camera is busy: another program is using it (rpicam-*, libcamera-*, "
    "another pinthesky?); stop it and try again"
)

_logged_once: set[str] = set()
_measured: dict[tuple[str, tuple[tuple[int, tuple[int, int]], ...]], list[sensors.SensorMode]] = {}
"""Modes measured for a sensor not in ``hardware.sensors``, per model and mode list: the
measure reconfigures the camera once per mode, so a reopen reuses it."""


def _log_once(level: int, key: str, msg: str, *args: object) -> None:
    """Log a configuration limitation once per process (a daemon may reopen the camera)."""
    if key not in _logged_once:
        _logged_once.add(key)
        log.log(level, msg, *args)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_busy(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps: ``Picamera2()`` hides the cause behind "Camera
    __init__ sequence did not complete.") says the camera is held by another process."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if getattr(cause, "errno", None) == errno.EBUSY or "busy" in str(cause).lower():
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _limited_range(colour_space: Any) -> bool:
    """Whether the configured colour space is limited range (what video configurations get:
    Smpte170m, Rec709); an unknown one is taken as limited, picamera2's video default."""
    try:
        import libcamera

        return bool(colour_space.range != libcamera.ColorSpace.Range.Full)
    except Exception:
        return True


def _import_picamera2() -> Any:
    """picamera2's ``Picamera2`` class. picamera2 is installed (its version is known): if it
    does not import, the camera stack is broken, and that is one line, never a silent
    synthetic scene. A partial or mismatched install fails in many ways (ImportError from a
    misspelt module in 0.3.29, PyAV's from 0.3.30-0.3.33, AttributeError from libcamera
    bindings of another version, OSError from a shared library)."""
    version = stack.picamera2_version() or "(unknown version)"
    try:
        from picamera2 import Picamera2
    except Exception as exc:
        raise SourceError(stack.broken(version, exc)) from None
    return Picamera2


def camera_present() -> bool:
    """Whether libcamera lists at least one camera (picamera2 must be installed)."""
    picamera2 = _import_picamera2()
    try:
        cameras = picamera2.global_camera_info()
    except Exception as exc:
        log.warning("picamera2: cannot list cameras: %s", _one_line(exc))
        return False
    return len(cameras) > 0


def _default_factory(tuning: str | None) -> Any:
    picamera2 = _import_picamera2()
    # libcamera reads the tuning file when its camera manager starts; listing the cameras
    # (camera_present) started one without it. With no camera open, start a fresh one now
    # that picamera2 will have set LIBCAMERA_RPI_TUNING_FILE (or cleared it).
    manager = getattr(picamera2, "_cm", None)
    if manager is not None and not manager.cameras:
        if tuning:
            os.environ["LIBCAMERA_RPI_TUNING_FILE"] = tuning
        else:
            os.environ.pop("LIBCAMERA_RPI_TUNING_FILE", None)
        manager.reset()
    return picamera2(tuning=tuning)


def _hardware_jpeg() -> bool:
    """Whether picamera2's ``MJPEGEncoder`` is the hardware one here (Pi 0-4, V4L2)."""
    try:
        from picamera2.platform import Platform, get_platform
    except Exception as exc:  # a partial install fails in many ways (see _import_picamera2)
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


def _jpeg_output(live: LiveTap, encoder: Any, size: tuple[int, int], limited: bool) -> Any:
    """Hands the MJPEG encoder's JPEGs to the live tap, at full range (see ``jpeg``)."""

    def handle(frame: Any, keyframe: bool, timestamp: int | None, packet: Any) -> None:
        if frame is not None:
            ts = int(encoder.firsttimestamp or 0) + int(timestamp or 0)
            data = jpeg.widen_tables(bytes(frame)) if limited else bytes(frame)
            live.offer(Picture(JPEG, data, size[0], size[1], ts))

    return _make_output("live JPEG", handle)


def _split_i420(
    buffer: np.ndarray, w: int, h: int, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views of the Y, U and V planes of a libcamera YUV420 buffer: Y rows of ``stride``
    bytes, then U and V rows of half that; the padding is left out."""
    flat = buffer.reshape(-1)
    half = stride // 2
    u0 = stride * h
    v0 = u0 + half * (h // 2)
    y = flat[:u0].reshape(h, stride)[:, :w]
    u = flat[u0:v0].reshape(h // 2, half)[:, : w // 2]
    v = flat[v0 : v0 + half * (h // 2)].reshape(h // 2, half)[:, : w // 2]
    return y, u, v


def turn_planes(
    planes: tuple[np.ndarray, np.ndarray, np.ndarray], rotation: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The planes turned clockwise by ``rotation`` degrees, as people see the clips."""
    turns = (rotation // 90) % 4
    if not turns:
        return planes
    y, u, v = (np.rot90(p, k=-turns) for p in planes)
    return y, u, v


def _step(size: tuple[int, int], live: tuple[int, int]) -> int:
    """Every n-th pixel of a ``size`` picture each way that still covers ``live``."""
    return max(1, min(size[0] // max(1, live[0]), size[1] // max(1, live[1])))


class _StillSlot:
    """Where the camera thread leaves the planes of one frame for ``capture_jpeg``."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.planes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.error = "no picture"


class PicameraSource:
    """The Camera protocol on top of picamera2."""

    name = NAME

    def __init__(
        self, settings: CameraSettings, factory: Callable[[str | None], Any] | None = None
    ) -> None:
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
        self._live_step = 1
        """Every n-th pixel of ``_live_stream`` each way makes a live YUV picture."""
        self._live_jpeg = False
        """Whether live JPEG comes from picamera2's hardware MJPEG encoder."""
        self._jpeg_stream = "main"
        self._mjpeg: Any = None
        self._mjpeg_switching = False
        self._limited = True
        """Whether the camera's YUV is limited range (JPEGs must be widened)."""
        self._ts_key: Any = None
        """libcamera's SensorTimestamp control: the one metadata item read per frame."""
        self._still_lock = threading.Lock()
        self._still: _StillSlot | None = None
        self.framerate = settings.framerate
        """The rate the camera delivers (the configured one unless the sensor mode is slower)."""
        self.sensor_mode: sensors.SensorMode | None = None
        self.setup: camera.Setup | None = None
        self.attached: camera.Attached | None = None
        """The camera module, known once the camera opened (settings are checked against it)."""
        self._burn = Burn()

    # -- executor threads -----------------------------------------------------------------

    def open(self) -> StreamInfo:
        s = self._settings
        if self._picam2 is not None:
            self.stop()
        version = stack.picamera2_version()
        problem = stack.unsupported(version)
        if problem is not None:
            raise SourceError(problem)
        if version is not None and stack.version_tuple(version) < stack.LAZY_PYAV_PICAMERA2:
            _log_once(
                logging.INFO,
                "pyav",
                "picamera2 %s loads PyAV (about 25 MB) on import; %s or later does not: %s",
                version,
                stack.show(stack.LAZY_PYAV_PICAMERA2),
                stack.UPGRADE_HINT,
            )
        _import_picamera2()
        import libcamera
        from libcamera import controls
        from picamera2.encoders import H264Encoder

        self._ts_key = controls.SensorTimestamp
        model = board.pi_model()
        tuning = None
        if s.tuning != "default":
            path = camera.tuning_path(s.tuning, board.platform(model))
            if path is None:
                raise SourceError(f"picamera2: camera.tuning = {s.tuning!r}: no such tuning file")
            tuning = str(path)

        rotation = s.rotation
        size = (s.resolution.width, s.resolution.height)
        lores = (s.lores.width, s.lores.height)
        if rotation in (90, 270):
            _log_once(
                logging.WARNING,
                "rotation",
                "picamera2: the camera cannot rotate by %d degrees; clips carry it as a "
                "display rotation and the analysis, live view and stills turn in software",
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
            picam2 = self._factory(tuning)
        except (IndexError, RuntimeError) as exc:
            # Picamera2() indexes libcamera's camera list; 0.3.38 says "No camera number 0".
            if isinstance(exc, IndexError) or "no camera number" in str(exc).lower():
                raise SourceError("picamera2: no camera detected") from None
            if _is_busy(exc):
                raise SourceError(BUSY) from None
            raise open_error(NAME, exc) from None
        except Exception as exc:
            if _is_busy(exc):
                raise SourceError(BUSY) from None
            raise open_error(NAME, exc) from None
        self._picam2 = picam2
        try:
            self.attached = attached = self._attached(picam2)
            problem = camera.tuning_problem(s.tuning, model, attached)
            if problem:
                raise SourceError(f"picamera2: camera.tuning = {s.tuning!r}: {problem}")
            found = camera.setup(
                model, board.meminfo(), list(attached.modes), size, lores, s.framerate
            )
            if isinstance(found, str):
                raise SourceError(f"picamera2: {found}")
            self.setup = found
            self.sensor_mode = mode = found.mode
            fps = found.fps
            if mode is not None:
                self._log_mode(attached, mode, size, fps)
                if fps < s.framerate:
                    _log_once(
                        logging.WARNING,
                        f"clamp-{s.framerate}-{mode.size}",
                        "picamera2: the sensor gives at most %.2f fps at %dx%d: recording at "
                        "%d fps, not %d",
                        mode.fps,
                        *mode.size,
                        fps,
                        s.framerate,
                    )
            kwargs: dict[str, Any] = {
                "main": {"size": size, "format": "YUV420"},
                "lores": {"size": lores, "format": "YUV420"},
                "encode": "main",
                # Nothing of ours asks picamera2 for a past frame: with a queue it would keep
                # one buffer back from the camera at all times.
                "queue": False,
                "buffer_count": found.buffers,
                "controls": self._controls(attached, fps, controls),
            }
            if mode is not None:
                kwargs["sensor"] = {"output_size": mode.size, "bit_depth": mode.bit_depth}
            if rotation == 180:
                kwargs["transform"] = libcamera.Transform(hflip=1, vflip=1)
            self._configure(picam2, kwargs, found, size)
            fps = self._delivered(picam2, fps, controls)
            self.framerate = fps
            streams = picam2.camera_configuration()
            width, height = streams["main"]["size"]
            lw, lh = streams["lores"]["size"]
            self._lores_size = (int(lw), int(lh))
            self._geometry = {
                name: (int(st["size"][0]), int(st["size"][1]), int(st["stride"]))
                for name, st in ((n, streams[n]) for n in ("main", "lores"))
            }
            self._limited = _limited_range(streams.get("colour_space"))
            iperiod = s.keyframe_interval or fps  # 0 means one keyframe a second
            self._encoder = H264Encoder(
                bitrate=s.bitrate,
                repeat=True,
                iperiod=iperiod,
                framerate=fps,
                profile=profile,
            )
        except SourceError:
            self.stop()
            raise
        except Exception as exc:
            self.stop()
            if _is_busy(exc):
                raise SourceError(BUSY) from None
            raise open_error(NAME, exc) from None
        if (width, height) != tuple(s.resolution):
            log.warning("picamera2: main stream is %dx%d, not %s", width, height, s.resolution)
        return StreamInfo(
            int(width), int(height), Fraction(fps), rotation if rotation in (90, 270) else 0
        )

    def _attached(self, picam2: Any) -> camera.Attached:
        """The camera module: its model, its modes (known here, or measured at one small
        buffer each), whether its lens moves."""
        model = str(picam2.camera_properties.get("Model", "sensor"))
        listed = _listed_modes(picam2)
        modes = sensors.known_modes(model, ((bits, size) for bits, size, _ in listed))
        if modes is None and listed:
            key = (model, tuple((bits, size) for bits, size, _ in listed))
            if key not in _measured:
                log.info(
                    "picamera2: %s is not a camera module pinthesky knows: measuring its %d modes",
                    model,
                    len(listed),
                )
                _measured[key] = _measure_modes(picam2, listed)
            modes = _measured[key]
        info = picam2.camera_controls
        lens = info.get("LensPosition")
        return camera.Attached(
            model,
            tuple(modes or ()),
            "AfMode" in info and lens is not None,
            (float(lens[0]), float(lens[1])) if lens is not None else (0.0, 32.0),
        )

    def _controls(self, attached: camera.Attached, fps: int, controls: Any) -> dict[str, Any]:
        """Frame rate (fixed, or down to ``min_framerate`` when the scene is dark) and focus."""
        s = self._settings
        out: dict[str, Any] = {}
        slowest = s.min_framerate
        if slowest is not None and slowest < fps:
            # Auto-exposure may stretch a frame up to 1/slowest s in the dark: a longer
            # exposure. Clips follow the sensor's timestamps, so a slower night is exact.
            out["FrameDurationLimits"] = (round(1e6 / fps), round(1e6 / slowest))
        else:
            out["FrameRate"] = fps
        problem = camera.focus_problem(s.focus, attached)
        if problem:
            _log_once(
                logging.WARNING,
                f"focus-{s.focus}",
                "picamera2: camera.focus = %s: %s; not applied",
                s.focus,
                problem,
            )
        elif s.focus == "continuous":
            out["AfMode"] = controls.AfModeEnum.Continuous
        elif isinstance(s.focus, float):
            out["AfMode"] = controls.AfModeEnum.Manual
            out["LensPosition"] = s.focus
        return out

    def _configure(
        self, picam2: Any, kwargs: dict[str, Any], found: camera.Setup, size: tuple[int, int]
    ) -> None:
        """Configure, then count the memory of what picamera2 actually made; with fewer
        buffers if that is more than the plan allowed."""
        picam2.configure(picam2.create_video_configuration(**kwargs))
        budget = found.budget.bytes
        if budget is None:
            return
        streams = picam2.camera_configuration()
        main, lores, raw = (
            int((streams.get(n) or {}).get("framesize") or 0) for n in ("main", "lores", "raw")
        )
        need = memory.need(main, lores, raw, encoders=found.v4l2)
        fewest = memory.min_buffers(found.holders)
        buffers = found.buffers
        while buffers > fewest and need.at(buffers) > budget:
            buffers -= 1
        if need.at(buffers) > budget:
            raise SourceError("picamera2: " + memory.too_little(size, need, found.budget, fewest))
        if buffers != found.buffers:
            log.warning(
                "picamera2: the configuration picamera2 made takes %.0f MB at %d buffers: using %d",
                need.at(found.buffers) / 2**20,
                found.buffers,
                buffers,
            )
            picam2.configure(
                picam2.create_video_configuration(**{**kwargs, "buffer_count": buffers})
            )
        self.setup = found.with_buffers(buffers, need)
        if buffers < memory.BUFFERS:
            _log_once(
                logging.WARNING,
                f"buffers-{size}-{buffers}",
                "picamera2: %d buffers per stream, not %d, to fit %s (%.0f MB instead of %.0f MB)",
                buffers,
                memory.BUFFERS,
                found.budget.where,
                need.at(buffers) / 2**20,
                found.full / 2**20,
            )

    def _delivered(self, picam2: Any, fps: int, controls: Any) -> int:
        """The rate the configured mode really allows (libcamera's ``FrameDurationLimits``):
        a driver whose modes differ from the known ones is caught here, and said aloud."""
        limits = picam2.camera_controls.get("FrameDurationLimits")
        if not limits or not limits[0]:
            return fps
        top = 1e6 / float(limits[0])
        if top + 0.01 >= fps:
            return fps
        slower = max(1, math.floor(top))
        log.warning(
            "picamera2: the configured mode gives at most %.2f fps: recording at %d fps, not %d",
            top,
            slower,
            fps,
        )
        assert self.attached is not None
        picam2.set_controls(self._controls(self.attached, slower, controls))
        return slower

    def _log_mode(
        self, attached: camera.Attached, mode: sensors.SensorMode, size: tuple[int, int], fps: int
    ) -> None:
        array = sensors.pixel_array(attached.modes)
        _log_once(
            logging.INFO,
            f"mode-{attached.model}-{size}-{fps}-{mode}",
            "picamera2: %s mode %s, for %dx%d at %d fps",
            attached.model,
            sensors.describe(mode, size, array),
            *size,
            fps,
        )

    def start(self, ring: PacketRing, port: AnalysisPort, live: LiveTap | None = None) -> None:
        picam2 = self._picam2
        if picam2 is None:
            raise SourceError("picamera2: start() before open()")
        output = _ring_output(ring, self._encoder)
        self._port = port
        if live is not None:
            self._plan_live(live)
        self._live = live
        try:
            picam2.pre_callback = self._pre_request
            picam2.post_callback = self._on_request
            picam2.start()
            self._camera_started = True
            picam2.start_encoder(self._encoder, output)
            self._encoder_started = True
        except Exception as exc:
            self.stop()
            raise open_error(NAME, exc) from None

    def _plan_live(self, live: LiveTap) -> None:
        """Where live pictures come from: the stream of the live size, or ``main``."""
        size = tuple(live.size)
        at_size = [n for n in ("lores", "main") if self._geometry.get(n, (0, 0, 0))[:2] == size]
        main = self._geometry.get("main", (0, 0, 0))[:2]
        self._live_stream = at_size[0] if at_size else "main"
        self._live_step = 1 if at_size else _step(main, live.size)
        self._jpeg_stream = at_size[0] if at_size else "main"
        # The hardware cannot turn a JPEG by a quarter: then our encoder makes them. Its
        # buffers must also fit in camera memory beside the H.264 encoder's.
        room = self.setup is None or self.setup.live_encoder
        self._live_jpeg = live.rotation == 0 and room and _hardware_jpeg()
        live.native_jpeg = self._live_jpeg

    def stop(self) -> None:
        with self._stop_lock:
            picam2, self._picam2 = self._picam2, None
            self._port = None
            self._live = None
            if picam2 is None:
                return
            encoder_started, self._encoder_started = self._encoder_started, False
            self._camera_started = False
            with self._still_lock:
                waiting, self._still = self._still, None
            if waiting is not None:  # no frame will come: tell the waiting still now
                waiting.error = "the camera stopped"
                waiting.ready.set()
            mjpeg, self._mjpeg = self._mjpeg, None
            steps: list[tuple[str, Callable[[], Any]]] = []
            if mjpeg is not None:
                steps.append(("stop_encoder (MJPEG)", lambda: picam2.stop_encoder(mjpeg)))
            if encoder_started:
                steps.append(("stop_encoder", lambda: picam2.stop_encoder(self._encoder)))
            steps += [("stop", picam2.stop), ("close", picam2.close)]

            def run_steps() -> None:
                for what, step in steps:
                    try:
                        step()
                    except Exception as exc:
                        log.warning("picamera2: %s failed: %s", what, _one_line(exc))
                with contextlib.suppress(Exception):
                    picam2.pre_callback = picam2.post_callback = None

            # A wedged camera thread makes picamera2's stop() wait forever: bound the wait so
            # the daemon can still exit (systemd then restarts it with a fresh process).
            worker = threading.Thread(target=run_steps, name="picamera2-stop", daemon=True)
            worker.start()
            worker.join(STOP_TIMEOUT)
            if worker.is_alive():
                # picamera2 registered close() to run at exit: on the wedged camera it would
                # hang the exit until systemd's watchdog kills the process.
                with contextlib.suppress(Exception):
                    atexit.unregister(picam2.close)
                log.error(
                    "picamera2: the camera did not stop within %.0f s; leaving it behind "
                    "(it stays busy until pinthesky restarts)",
                    STOP_TIMEOUT,
                )

    def capture_jpeg(self) -> bytes:
        """A still of the main stream at full range, turned as the clips are shown. The camera
        thread copies the next frame into a slot this thread waits on: a timeout leaves no
        request behind (picamera2's ``captured_request(wait=...)`` leaves its job queued, and
        the job later takes a buffer nobody gives back)."""
        picam2 = self._picam2
        if picam2 is None or not self._camera_started:
            raise SourceError("picamera2: still capture failed: the camera is not running")
        slot = _StillSlot()
        with self._still_lock:
            if self._still is not None:
                slot = self._still  # a still already wanted: share its frame
            else:
                self._still = slot
        try:
            if not slot.ready.wait(CAPTURE_TIMEOUT):
                raise SourceError(
                    f"picamera2: still capture failed: no frame from the camera in "
                    f"{CAPTURE_TIMEOUT:.0f} s"
                )
        finally:
            with self._still_lock:
                if self._still is slot:
                    self._still = None
        if slot.planes is None:
            raise SourceError(f"picamera2: still capture failed: {slot.error}")
        planes = turn_planes(slot.planes, self._settings.rotation)
        try:
            return jpeg.encode_i420(*planes, limited=self._limited)
        except jpeg.JpegError as exc:
            raise SourceError(f"picamera2: still capture failed: {exc}") from None

    def set_overlay(self, overlay: Overlay) -> None:
        self._burn.set(overlay)

    # -- camera thread --------------------------------------------------------------------

    def _pre_request(self, request: Any) -> None:
        """picamera2's ``pre_callback``: every frame, on the camera thread, before anything
        copies or encodes it. The privacy masks and the timestamp are written into the
        buffers themselves, so the encoders, the callback and the stills all see them."""
        if not self._burn.active:
            return
        from picamera2.request import MappedArray

        try:
            ts = int(request.request.metadata[self._ts_key] / 1000)
            for stream, (w, h, stride) in self._geometry.items():
                plane = self._burn.plane((w, h))
                if plane is None:
                    continue
                with MappedArray(request, stream, write=True) as mapped:
                    y, u, v = _split_i420(mapped.array, w, h, stride)
                    plane.apply(y, u, v, ts, self._limited)
                    del y, u, v  # views of the buffer: gone before it is unmapped
        except Exception as exc:
            # Never a frame with its privacy masks missing: blank it whole instead.
            self._callback_error("overlay not applied, frame blanked", exc)
            with contextlib.suppress(Exception):
                for stream in self._geometry:
                    with MappedArray(request, stream, write=True) as mapped:
                        mapped.array[...] = 0

    def _on_request(self, request: Any) -> None:
        """picamera2's ``post_callback``: every frame, on the camera thread."""
        if self._still is not None:
            self._take_still(request)
        port = self._port
        if port is None:
            return
        try:
            # Only the timestamp: get_metadata() converts every control of every frame.
            ns = request.request.metadata[self._ts_key]
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

    def _take_still(self, request: Any) -> None:
        """Copy the main stream's planes for a waiting ``capture_jpeg`` (camera thread)."""
        with self._still_lock:
            slot, self._still = self._still, None
        if slot is None:
            return
        try:
            slot.planes = self._planes(request, "main")
        except Exception as exc:
            slot.error = _one_line(exc)
        slot.ready.set()

    def _planes(
        self, request: Any, stream: str, step: int = 1
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of the Y, U and V planes of ``stream`` in ``request`` without the padding,
        every ``step``-th pixel each way."""
        from picamera2.request import MappedArray

        w, h, stride = self._geometry[stream]
        with MappedArray(request, stream, write=False) as mapped:
            y, u, v = _split_i420(mapped.array, w, h, stride)
            if step > 1:
                # The chroma planes are half size: the same step keeps 4:2:0 (even sizes).
                rows, cols = (h // step) & ~1, (w // step) & ~1
                y = y[: rows * step : step, : cols * step : step]
                u = u[: rows // 2 * step : step, : cols // 2 * step : step]
                v = v[: rows // 2 * step : step, : cols // 2 * step : step]
            return y.copy(), u.copy(), v.copy()  # made before the buffer goes back

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
        # The one copy, made before the buffer goes back: of the live size's stream, or of
        # every n-th pixel of main (a twentieth of a 1080p frame for a 480x270 live size).
        y, u, v = self._planes(request, self._live_stream, self._live_step)
        live.offer(Picture(YUV420, i420(y, u, v), y.shape[1], y.shape[0], ts))

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
                    encoder.frame_skip_count = max(1, round(self.framerate / live.fps))
                    w, h, _ = self._geometry[self._jpeg_stream]
                    output = _jpeg_output(live, encoder, (w, h), self._limited)
                    picam2.start_encoder(encoder, output, name=self._jpeg_stream)
                    self._mjpeg = encoder
                    log.info("picamera2: MJPEG encoder started on the %s stream", self._jpeg_stream)
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


# -- the sensor's modes -----------------------------------------------------------------------


def _listed_modes(picam2: Any) -> list[tuple[int, tuple[int, int], str]]:
    """The raw modes libcamera lists for the camera (bit depth, size, format), read from a
    raw stream's formats: nothing is configured or allocated."""
    import libcamera
    from picamera2.formats import is_raw
    from picamera2.sensor_format import SensorFormat

    config = picam2.camera.generate_configuration([libcamera.StreamRole.Raw])
    formats = config.at(0).formats
    out = []
    for pixel_format in formats.pixel_formats:
        name = str(pixel_format)
        if not is_raw(name):
            continue
        bits = SensorFormat(name).bit_depth
        out += [(bits, (s.width, s.height), name) for s in formats.sizes(pixel_format)]
    return out


def _measure_modes(
    picam2: Any, listed: Iterable[tuple[int, tuple[int, int], str]]
) -> list[sensors.SensorMode]:
    """Each mode's top rate and crop, from configuring the camera in it with one buffer and a
    small main stream: at most one raw frame of camera memory, where picamera2's own
    ``sensor_modes`` takes four of each."""
    modes = []
    for bits, size, name in listed:
        config = picam2.create_video_configuration(
            main={"size": PROBE_SIZE, "format": "YUV420"},
            raw={"format": name, "size": size},
            sensor={"output_size": size, "bit_depth": bits},
            buffer_count=1,
            queue=False,
        )
        picam2.configure(config)
        info = picam2.camera_controls
        fastest = float(info["FrameDurationLimits"][0])
        crop = tuple(int(v) for v in info["ScalerCrop"][1])
        modes.append(sensors.SensorMode(size, bits, round(1e6 / fastest, 2), crop))  # type: ignore[arg-type]
    return modes
