"""A stand-in for libcamera's Python bindings that behaves like a Raspberry Pi's camera stack.

picamera2 imports ``libcamera`` (Raspberry Pi's pybind11 bindings, which exist only on a Pi).
This package takes its place, so that picamera2's own code runs unchanged here:
``Picamera2()``, ``sensor_modes``, ``create_video_configuration``, ``configure`` (and its
``_make_libcamera_config``, ``validate``, the ``DmaAllocator``), ``start``, its event loop and
``process_requests``, ``stop`` and ``close``. What it models, and where the model comes from:

- **The camera module** (``pirig.Sensor``): its ``Model``, pixel array and sensor modes, as
  ``rpicam-hello --list-cameras`` reports them; autofocus controls where the module has a lens
  motor (Camera Module 3).
- **The pipeline** (``src/libcamera/pipeline/rpi``): the sensor mode is the one
  ``sensor_config`` names (or the best scored), the raw stream takes that mode's size and
  packing (CSI-2 packed on Pi 0-4, PiSP compressed on a Pi 5), lores is clamped to main,
  strides are padded, and after ``configure`` the controls follow the mode:
  ``FrameDurationLimits`` from its highest rate, ``ScalerCrop`` from the part of the pixel
  array it reads.
- **Camera memory** (``CameraMemory``): every buffer picamera2's ``DmaAllocator`` allocates
  comes out of one pool the size of the board's camera memory (CMA less what the display
  holds on Pi 0-4; system memory on a Pi 5), as real memfds that stay allocated while any
  file descriptor or mapping holds them; an allocation past the pool fails with ``ENOMEM``,
  as the dma-heap ioctl does. At ``start`` the pipeline allocates its own internal buffers on
  top (on Pi 0-4: two raw, one main and one lores, because the IPA drops start-up frames).
- **The sensor**: each frame needs a request queued; a frame due while none is queued is
  dropped and counted. Frames carry ``SensorTimestamp``, ``ExposureTime`` and
  ``FrameDuration``; the frame duration is the shortest ``FrameDurationLimits`` allows unless
  the scene needs a longer exposure (``Rig``'s ``exposure_needed``), which auto-exposure takes
  up to the limit's maximum. Frames are delivered on demand (``deliver``) for exact tests, or
  by a thread at the frame rate.
- **The tuning file**: read from ``LIBCAMERA_RPI_TUNING_FILE`` when the camera manager starts
  (as the Raspberry Pi IPA reads it when cameras are registered); a missing file fails.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import mmap
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# -- value types ----------------------------------------------------------------------------


class Size:
    def __init__(self, width: int = 0, height: int = 0) -> None:
        self.width, self.height = int(width), int(height)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Size) and (self.width, self.height) == (other.width, other.height)

    def __hash__(self) -> int:
        return hash((self.width, self.height))

    def __repr__(self) -> str:
        return f"{self.width}x{self.height}"


class Rectangle:
    def __init__(self, x: int = 0, y: int = 0, width: int = 0, height: int = 0) -> None:
        self.x, self.y, self.width, self.height = int(x), int(y), int(width), int(height)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rectangle) and self._t() == other._t()

    def __hash__(self) -> int:
        return hash(self._t())

    def _t(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)

    def __repr__(self) -> str:
        return f"({self.x}, {self.y})/{self.width}x{self.height}"


class PixelFormat:
    def __init__(self, name: str | PixelFormat = "") -> None:
        self.name = str(name)

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(self.name)


class Transform:
    def __init__(
        self, other: Transform | None = None, *, hflip: int = 0, vflip: int = 0, transpose: int = 0
    ) -> None:
        if other is not None:
            hflip, vflip, transpose = other.hflip, other.vflip, other.transpose
        self.hflip, self.vflip, self.transpose = bool(hflip), bool(vflip), bool(transpose)

    def __str__(self) -> str:
        return f"<libcamera.Transform '{int(self.hflip)}{int(self.vflip)}{int(self.transpose)}'>"


class Orientation(enum.Enum):
    Rotate0 = 1
    Rotate0Mirror = 2
    Rotate180 = 3
    Rotate180Mirror = 4
    Rotate90Mirror = 5
    Rotate270 = 6
    Rotate270Mirror = 7
    Rotate90 = 8


class ColorSpace:
    class Primaries(enum.Enum):
        Raw = 0
        Smpte170m = 1
        Rec709 = 2
        Rec2020 = 3

    class TransferFunction(enum.Enum):
        Linear = 0
        Srgb = 1
        Rec709 = 2

    class YcbcrEncoding(enum.Enum):
        Null = 0
        Rec601 = 1
        Rec709 = 2
        Rec2020 = 3

    class Range(enum.Enum):
        Full = 0
        Limited = 1

    def __init__(
        self,
        primaries: Any = None,
        transfer: Any = None,
        ycbcr: Any = None,
        range_: Any = None,
    ) -> None:
        if isinstance(primaries, ColorSpace):  # the copy constructor picamera2 uses
            other = primaries
            primaries, transfer = other.primaries, other.transferFunction
            ycbcr, range_ = other.ycbcrEncoding, other.range
        self.primaries = primaries
        self.transferFunction = transfer
        self.ycbcrEncoding = ycbcr
        self.range = range_

    @classmethod
    def Raw(cls) -> ColorSpace:
        return cls(
            cls.Primaries.Raw, cls.TransferFunction.Linear, cls.YcbcrEncoding.Null, cls.Range.Full
        )

    @classmethod
    def Sycc(cls) -> ColorSpace:
        return cls(
            cls.Primaries.Rec709,
            cls.TransferFunction.Srgb,
            cls.YcbcrEncoding.Rec601,
            cls.Range.Full,
        )

    @classmethod
    def Smpte170m(cls) -> ColorSpace:
        return cls(
            cls.Primaries.Smpte170m,
            cls.TransferFunction.Rec709,
            cls.YcbcrEncoding.Rec601,
            cls.Range.Limited,
        )

    @classmethod
    def Rec709(cls) -> ColorSpace:
        return cls(
            cls.Primaries.Rec709,
            cls.TransferFunction.Rec709,
            cls.YcbcrEncoding.Rec709,
            cls.Range.Limited,
        )

    def __str__(self) -> str:
        return f"<libcamera.ColorSpace '{self.primaries.name}/{self.range.name}'>"


class StreamRole(enum.Enum):
    StillCapture = 0
    VideoRecording = 1
    Viewfinder = 2
    Raw = 3


class ControlType(enum.Enum):
    Null = 0
    Bool = 1
    Byte = 2
    Integer32 = 3
    Integer64 = 4
    Float = 5
    String = 6
    Rectangle = 7
    Size = 8


class ControlId:
    """Keys of libcamera's control and metadata lists (picamera2 reads ``name`` and ``type``)."""

    def __init__(self, name: str, type_: ControlType = ControlType.Integer32) -> None:
        self.name, self.type = name, type_

    def __repr__(self) -> str:
        return f"libcamera.ControlId({self.name})"


class ControlInfo:
    def __init__(self, min_: Any, max_: Any, default: Any = None) -> None:
        self.min, self.max, self.default = min_, max_, default


class _Namespace:
    def __init__(self, **items: Any) -> None:
        self.__dict__.update(items)


def _ids(*specs: tuple[str, ControlType]) -> dict[str, ControlId]:
    return {name: ControlId(name, t) for name, t in specs}


_I32, _I64, _F, _B = (
    ControlType.Integer32,
    ControlType.Integer64,
    ControlType.Float,
    ControlType.Bool,
)
_CONTROLS = _ids(
    ("SensorTimestamp", _I64),
    ("ExposureTime", _I32),
    ("ExposureTimeMode", _I32),
    ("AnalogueGain", _F),
    ("AnalogueGainMode", _I32),
    ("AeEnable", _B),
    ("AwbEnable", _B),
    ("FrameDuration", _I64),
    ("FrameDurationLimits", _I64),
    ("ScalerCrop", ControlType.Rectangle),
    ("NoiseReductionMode", _I32),
    ("AfMode", _I32),
    ("AfTrigger", _I32),
    ("AfState", _I32),
    ("LensPosition", _F),
    ("SensorTemperature", _F),
)
controls = _Namespace(
    **_CONTROLS,
    AfModeEnum=_Namespace(Manual=0, Auto=1, Continuous=2),
    draft=_Namespace(
        NoiseReductionModeEnum=_Namespace(Off=0, Fast=1, HighQuality=2, Minimal=3, ZSL=4),
        NoiseReductionMode=_CONTROLS["NoiseReductionMode"],
    ),
)
_PROPERTIES = _ids(
    ("Model", ControlType.String),
    ("Location", _I32),
    ("Rotation", _I32),
    ("PixelArraySize", ControlType.Size),
    ("PixelArrayActiveAreas", ControlType.Rectangle),
    ("ScalerCropMaximum", ControlType.Rectangle),
    ("ColorFilterArrangement", _I32),
    ("UnitCellSize", ControlType.Size),
)
properties = _Namespace(
    **_PROPERTIES,
    draft=_Namespace(
        ColorFilterArrangementEnum=_Namespace(RGGB=0, GRBG=1, GBRG=2, BGGR=3, RGB=4, MONO=5)
    ),
)
sys.modules[__name__ + ".controls"] = controls  # type: ignore[assignment]


# -- camera memory --------------------------------------------------------------------------


class CameraMemory:
    """The pool camera buffers come from: real memfds, counted while anything holds them.

    A buffer is held while the process has a descriptor or a mapping of it (``/proc/self/fd``
    and ``/proc/self/maps``), as the kernel keeps a dma-buf: closing picamera2's descriptor
    does not free a buffer it still has mapped."""

    PREFIX = "standin-cma"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.peak = 0
        self.failures: list[tuple[str, int]] = []
        self._sizes: dict[int, int] = {}  # inode -> bytes
        self._lock = threading.Lock()

    def alloc(self, name: str, size: int) -> int:
        """A descriptor of ``size`` bytes, or ``OSError(ENOMEM)``."""
        with self._lock:
            held = self.held()
            if held + size > self.capacity:
                self.failures.append((name, size))
                raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))
            fd = os.memfd_create(f"{self.PREFIX}:{name}", os.MFD_CLOEXEC)
            os.ftruncate(fd, size)
            self._sizes[os.fstat(fd).st_ino] = size
            self.peak = max(self.peak, held + size)
            return fd

    def held(self) -> int:
        alive: set[int] = set()
        with contextlib.suppress(OSError):
            for entry in os.scandir("/proc/self/fd"):
                with contextlib.suppress(OSError):
                    if self.PREFIX in os.readlink(entry.path):
                        alive.add(os.stat(entry.path).st_ino)
        with open("/proc/self/maps") as maps:
            for line in maps:
                if self.PREFIX in line:
                    alive.add(int(line.split()[4]))
        for inode in [i for i in self._sizes if i not in alive]:
            del self._sizes[inode]
        return sum(self._sizes.values())


class _UniqueFD:
    def __init__(self, fd: int = -1) -> None:
        self._fd = fd

    def get(self) -> int:
        return self._fd

    def release(self) -> int:
        fd, self._fd = self._fd, -1
        return fd

    def isValid(self) -> bool:
        return self._fd >= 0


class DmaHeap:
    """Takes the place of picamera2's ``DmaHeap`` (which opens ``/dev/dma_heap/*``): the same
    interface, allocating from the rig's camera memory."""

    def __init__(self) -> None:
        self.isValid = True

    def alloc(self, name: str, size: int) -> _UniqueFD:
        return _UniqueFD(_rig_state().memory.alloc(name, size))

    def close(self) -> None:
        pass


DMA_BUF_IOCTL_SYNC = 0x40086200


class Kernel:
    """``fcntl`` for picamera2's allocator: dma-buf sync is a no-op on our memfds (they are
    coherent), every other request goes to the real kernel."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def ioctl(self, fd: Any, request: int, *args: Any) -> Any:
        if request == DMA_BUF_IOCTL_SYNC:
            return 0
        return self._real.ioctl(fd, request, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


# -- configuration --------------------------------------------------------------------------


class FrameMetadata:
    class Status(enum.Enum):
        Success = 0
        Error = 1
        Cancelled = 2

    def __init__(self) -> None:
        self.status = FrameMetadata.Status.Success
        self.sequence = 0
        self.timestamp = 0


class FrameBuffer:
    class Plane:
        def __init__(self) -> None:
            self.fd = -1
            self.offset = 0
            self.length = 0

    def __init__(self, planes: Sequence[FrameBuffer.Plane]) -> None:
        self.planes = list(planes)
        self.metadata = FrameMetadata()


class FrameBufferAllocator:  # picamera2's LibcameraAllocator; never used by pinthesky
    def __init__(self, camera: Camera) -> None:
        raise NotImplementedError("the stand-in allocates through the dma heap only")


class StreamFormats:
    def __init__(self, formats: dict[str, list[Size]]) -> None:
        self._formats = formats

    @property
    def pixel_formats(self) -> list[PixelFormat]:
        return [PixelFormat(f) for f in self._formats]

    def sizes(self, pixel_format: PixelFormat) -> list[Size]:
        return list(self._formats.get(str(pixel_format), []))


class Stream:
    def __init__(self, name: str, configuration: StreamConfiguration) -> None:
        self.name = name
        self.configuration = configuration

    def __repr__(self) -> str:
        return f"<Stream {self.name}>"


class StreamConfiguration:
    def __init__(
        self, role: StreamRole, formats: StreamFormats, pixel_format: str, size: Size
    ) -> None:
        self.role = role
        self.formats = formats
        self.pixel_format = PixelFormat(pixel_format)
        self.size = size
        self.stride = 0
        self.frame_size = 0
        self.buffer_count = 0
        self.color_space: ColorSpace | None = None
        self.stream: Stream | None = None


class SensorConfiguration:
    def __init__(self) -> None:
        self.bit_depth = 0
        self.output_size = Size()


class CameraConfiguration:
    class Status(enum.Enum):
        Valid = 0
        Adjusted = 1
        Invalid = 2

    def __init__(self, camera: Camera, streams: list[StreamConfiguration]) -> None:
        self._camera = camera
        self._streams = streams
        self.orientation = Orientation.Rotate0
        self.sensor_config: SensorConfiguration | None = None
        self.mode: Any = None
        """The sensor mode ``validate`` chose (a ``pirig.Mode``)."""

    def at(self, index: int) -> StreamConfiguration:
        return self._streams[index]

    def __iter__(self) -> Iterator[StreamConfiguration]:
        return iter(self._streams)

    def __len__(self) -> int:
        return len(self._streams)

    @property
    def size(self) -> int:
        return len(self._streams)

    def validate(self) -> CameraConfiguration.Status:
        return self._camera._validate(self)


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def _bits_per_pixel(fmt: str) -> float:
    if fmt in ("YUV420", "YVU420", "NV12", "NV21"):
        return 1.5
    if fmt in ("XBGR8888", "XRGB8888"):
        return 4
    if fmt in ("BGR888", "RGB888"):
        return 3
    if fmt in ("YUYV", "UYVY", "YVYU", "VYUY"):
        return 2
    raise ValueError(f"unsupported output format {fmt}")


# -- requests and the sensor ----------------------------------------------------------------


class Request:
    class Status(enum.Enum):
        Pending = 0
        Complete = 1
        Cancelled = 2

    def __init__(self, camera: Camera, cookie: int) -> None:
        self._camera = camera
        self.cookie = cookie
        self.status = Request.Status.Pending
        self.buffers: dict[Stream, FrameBuffer] = {}
        self.metadata: dict[ControlId, Any] = {}
        self.controls: dict[ControlId, Any] = {}
        self.sequence = 0

    def add_buffer(self, stream: Stream, buffer: FrameBuffer) -> None:
        if stream in self.buffers:
            raise RuntimeError("Failed to add buffer")
        self.buffers[stream] = buffer

    def set_control(self, control: ControlId, value: Any) -> None:
        self._camera._check_control(control)
        self.controls[control] = value

    def reuse(self) -> None:
        self.status = Request.Status.Pending
        self.metadata = {}
        self.controls = {}


Picture = Callable[[str, int, int, int], np.ndarray]
"""``picture(stream, frame, width, height)``: the Y plane the sensor delivers."""


def default_picture(stream: str, frame: int, width: int, height: int) -> np.ndarray:
    r, c = np.mgrid[0:height, 0:width]
    step = 7 if stream == "lores" else 4
    y: np.ndarray = (64 + (r + 2 * c + step * frame) % 128).astype(np.uint8)
    return y


@dataclass
class SensorStats:
    delivered: int = 0
    dropped: int = 0
    durations: list[int] | None = None


class Camera:
    """One camera on the rig's board."""

    def __init__(
        self, manager: CameraManager, sensor: Any, board: Any, tuning: dict[str, Any] | None
    ) -> None:
        # Weak: the manager owns its cameras, as libcamera's does; a strong reference back
        # would keep a replaced manager (and its tuning) alive until the garbage collector.
        self._manager_ref = weakref.ref(manager)
        self._rig = manager.rig
        self.sensor = sensor
        self.board = board
        self.tuning = tuning
        """The tuning file the IPA loaded (its JSON); None for the sensor's default."""
        connector = (
            "/base/axi/pcie@120000/rp1/i2c@88000"
            if board.platform == "pisp"
            else "/base/soc/i2c0mux/i2c@1"
        )
        self.id = f"{connector}/{sensor.model.split('_')[0]}@1a"
        array = Size(*sensor.array)
        self.properties: dict[ControlId, Any] = {
            _PROPERTIES["Model"]: sensor.model,
            _PROPERTIES["Location"]: 2,
            _PROPERTIES["Rotation"]: 0,
            _PROPERTIES["PixelArraySize"]: array,
            _PROPERTIES["PixelArrayActiveAreas"]: [Rectangle(0, 0, *sensor.array)],
            _PROPERTIES["ScalerCropMaximum"]: Rectangle(0, 0, *sensor.array),
            _PROPERTIES["ColorFilterArrangement"]: 5 if sensor.mono else 0,
            _PROPERTIES["UnitCellSize"]: Size(1120, 1120),
        }
        self.acquired = False
        self.started = False
        self.configured: CameraConfiguration | None = None
        self._mode = max(sensor.modes, key=lambda m: (m.size[0] * m.size[1], m.bits))
        self.controls = self._controls_for(self._mode)
        self.start_controls: dict[str, Any] = {}
        self.applied: dict[str, Any] = {}
        """Controls in force (from ``start`` and every request), by name."""
        self._queue: list[Request] = []
        self._queue_lock = threading.Condition()
        self._internal: list[int] = []
        self._sequence = 0
        self._timestamp_ns = 1_000_000_000_000
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self.picture: Picture = default_picture
        self.exposure_needed = 0
        """Microseconds of exposure the scene needs (0: bright); auto-exposure stretches the
        frame up to ``FrameDurationLimits``' maximum to get it."""
        self.stats = SensorStats(durations=[])
        self.fail = manager.rig.fail
        self.timestamps: list[int] = []
        """Sensor time of every frame delivered, nanoseconds."""
        self._stopping = threading.Event()

    @property
    def _manager(self) -> CameraManager:
        manager = self._manager_ref()
        if manager is None:
            raise RuntimeError("the camera manager is gone")
        return manager

    # -- what picamera2 calls

    def _fault(self, call: str) -> None:
        fault = self.fail.get(call)
        if isinstance(fault, BaseException):
            # A fresh one each time: a raised exception keeps its traceback (and with it
            # picamera2's frames) for as long as it lives, and the test keeps this one.
            raise type(fault)(*fault.args)
        if fault is not None:
            fault()

    def acquire(self) -> None:
        self._fault("acquire")
        if self.acquired:
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        self.acquired = True
        self._rig.last_acquired = self

    def release(self) -> None:
        self._fault("release")
        if self.started:
            raise RuntimeError("Failed to release camera: the camera is running")
        self.acquired = False

    def generate_configuration(self, roles: Sequence[StreamRole]) -> CameraConfiguration:
        streams = []
        for role in roles:
            if role == StreamRole.Raw:
                raw: dict[str, list[Size]] = {}
                for m in self.sensor.modes:  # the sensor's own formats, on either platform
                    raw.setdefault(m.format, []).append(Size(*m.size))
                native = self._mode
                streams.append(
                    StreamConfiguration(role, StreamFormats(raw), native.format, Size(*native.size))
                )
            else:
                top = Size(*self.sensor.array)
                outputs = {
                    f: [Size(64, 64), top]
                    for f in ("YUV420", "YVU420", "XBGR8888", "XRGB8888", "BGR888", "RGB888")
                }
                streams.append(
                    StreamConfiguration(role, StreamFormats(outputs), "YUV420", Size(800, 600))
                )
        return CameraConfiguration(self, streams)

    def configure(self, config: CameraConfiguration) -> int:
        self._fault("configure")
        if not self.acquired or self.started:
            return -errno.EACCES
        if self._validate(config) == CameraConfiguration.Status.Invalid:
            return -errno.EINVAL
        names = iter(("main", "lores"))
        for cfg in config:
            name = "raw" if cfg.role == StreamRole.Raw else next(names)
            cfg.stream = Stream(name, cfg)
        self.configured = config
        self._mode = config.mode
        self.controls = self._controls_for(config.mode)
        return 0

    def create_request(self, cookie: int = 0) -> Request:
        return Request(self, cookie)

    def queue_request(self, request: Request) -> None:
        if not self.started:
            raise RuntimeError("Failed to queue request: the camera is not running")
        with self._queue_lock:
            self._queue.append(request)
            self._queue_lock.notify_all()

    def start(self, controls: dict[ControlId, Any] | None = None) -> None:
        self._fault("start")
        if self.configured is None:
            raise RuntimeError("Failed to start camera: not configured")
        for control in controls or {}:
            self._check_control(control)
        self.start_controls = {c.name: v for c, v in (controls or {}).items()}
        self.applied = dict(self.start_controls)
        self._allocate_internal()
        self.started = True
        self._running.set()
        self._stopping.clear()
        if self._rig.free_running:
            self._thread = threading.Thread(
                target=self._free_run, name="standin-sensor", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._fault("stop")
        if not self.started:
            return
        self._running.clear()
        self._stopping.set()
        with self._queue_lock:
            self._queue_lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.started = False
        with self._queue_lock:
            cancelled, self._queue = self._queue, []
        for request in cancelled:
            request.status = Request.Status.Cancelled
            for buffer in request.buffers.values():
                buffer.metadata.status = FrameMetadata.Status.Cancelled
        self._manager._complete(cancelled)
        for fd in self._internal:
            os.close(fd)
        self._internal = []

    # -- the pipeline

    def _raw_format(self, mode: Any) -> str:
        """What the raw stream carries: CSI-2 packed from Unicam (Pi 0-4); the Pi 5's front
        end writes its own compressed format, 8 bits a pixel, unless asked for 16-bit."""
        if self.board.platform == "pisp":
            return f"{mode.bayer[1:]}_PISP_COMP1"
        return mode.format

    def _controls_for(self, mode: Any) -> dict[ControlId, ControlInfo]:
        fastest = round(1e6 / mode.fps)
        crop = Rectangle(*mode.crop)
        info = {
            "FrameDurationLimits": ControlInfo(fastest, 120_000_000, 33_333),
            "ExposureTime": ControlInfo(26, 66_666, 20_000),
            "AnalogueGain": ControlInfo(1.0, 16.0, 1.0),
            "AeEnable": ControlInfo(False, True, True),
            "AwbEnable": ControlInfo(False, True, True),
            "ScalerCrop": ControlInfo(Rectangle(0, 0, 64, 64), crop, crop),
            "NoiseReductionMode": ControlInfo(0, 4, 0),
        }
        if self.sensor.autofocus:
            info["AfMode"] = ControlInfo(0, 2, 0)
            info["AfTrigger"] = ControlInfo(0, 1, 0)
            info["LensPosition"] = ControlInfo(0.0, 32.0, 1.0)
        return {_CONTROLS[name]: value for name, value in info.items()}

    def _check_control(self, control: ControlId) -> None:
        if control not in self.controls and control.name not in (
            "ExposureTimeMode",
            "AnalogueGainMode",
        ):
            raise RuntimeError(f"Control {control.name} is not supported by this camera")

    def _choose_mode(self, config: CameraConfiguration) -> Any:
        wanted = config.sensor_config
        if wanted is not None and wanted.bit_depth:
            for m in self.sensor.modes:
                if (
                    m.size == (wanted.output_size.width, wanted.output_size.height)
                    and m.bits == wanted.bit_depth
                ):
                    return m
            return None
        main = config.at(0).size
        return min(
            self.sensor.modes,
            key=lambda m: abs(m.size[0] - main.width) + abs(m.size[1] - main.height) - m.bits,
        )

    def _validate(self, config: CameraConfiguration) -> CameraConfiguration.Status:
        status = CameraConfiguration.Status.Valid
        mode = self._choose_mode(config)
        if mode is None:
            return CameraConfiguration.Status.Invalid
        config.mode = mode
        outputs = [c for c in config if c.role != StreamRole.Raw]
        raws = [c for c in config if c.role == StreamRole.Raw]
        if len(raws) > 1 or len(outputs) > 2 or not outputs:
            return CameraConfiguration.Status.Invalid
        for raw in raws:
            fmt = self._raw_format(mode)
            if str(raw.pixel_format) != fmt or raw.size != Size(*mode.size):
                raw.pixel_format, raw.size = PixelFormat(fmt), Size(*mode.size)
                status = CameraConfiguration.Status.Adjusted
            if self.board.platform == "pisp":
                raw.stride = _align(mode.size[0], 32)  # compressed: 8 bits a pixel
            else:
                raw.stride = _align(mode.size[0] * mode.bits // 8, 32)
            raw.frame_size = raw.stride * mode.size[1]
        main = outputs[0]
        for i, out in enumerate(outputs):
            fmt = str(out.pixel_format)
            if i and (self.board.platform == "vc4" and fmt not in ("YUV420", "YVU420")):
                return CameraConfiguration.Status.Invalid
            size = Size(
                min(out.size.width, main.size.width), min(out.size.height, main.size.height)
            )
            size = Size(size.width - size.width % 2, size.height - size.height % 2)
            if size != out.size:
                out.size = size
                status = CameraConfiguration.Status.Adjusted
            bpp = _bits_per_pixel(fmt)
            if bpp == 1.5:
                out.stride = _align(size.width, 64)
                out.frame_size = out.stride * size.height * 3 // 2
            else:
                out.stride = _align(int(size.width * bpp), 64)
                out.frame_size = out.stride * size.height
        for cfg in config:
            if cfg.buffer_count < 1:
                return CameraConfiguration.Status.Invalid
        return status

    def _allocate_internal(self) -> None:
        """The pipeline's own buffers, allocated as it starts. On Pi 0-4 the IPA drops the first
        frames, so Unicam keeps two raw buffers of its own and the ISP one of each output."""
        assert self.configured is not None
        memory = self._rig.memory
        streams = {c.stream.name: c for c in self.configured if c.stream is not None}
        raw_size = (
            streams["raw"].frame_size
            if "raw" in streams
            else (_align(self._mode.size[0] * self._mode.bits // 8, 32) * self._mode.size[1])
        )
        sizes = [
            ("unicam", raw_size),
            ("unicam", raw_size),
            ("isp-output0", streams["main"].frame_size),
        ]
        lores = streams.get("lores")
        sizes.append(
            ("isp-output1", lores.frame_size if lores else streams["main"].frame_size // 4)
        )
        for name, size in sizes:
            try:
                self._internal.append(memory.alloc(f"libcamera-{name}", size))
            except OSError:
                for fd in self._internal:
                    os.close(fd)
                self._internal = []
                raise RuntimeError(
                    f"Failed to start camera: cannot allocate {name} buffers: "
                    f"{os.strerror(errno.ENOMEM)}"
                ) from None

    def frame_duration_us(self) -> int:
        limits = self.applied.get("FrameDurationLimits")
        fastest = round(1e6 / self._mode.fps)
        if limits is None:
            lo = hi = 33_333
        else:
            lo, hi = int(limits[0]), int(limits[1])
        lo = max(lo, fastest)
        hi = max(hi, lo)
        return min(max(lo, self.exposure_needed), hi)

    def deliver(self, frames: int, wait: float = 10.0, realtime: bool = False) -> int:
        """Expose ``frames`` frames now and return how many were delivered. A frame waits up
        to ``wait`` seconds for a request (a real sensor does not wait: ``wait=0`` with
        ``realtime``, which also spaces the frames by their duration, drops frames as a Pi
        would when the application holds every buffer)."""
        delivered = 0
        for _ in range(frames):
            started = time.monotonic()
            if self._expose(wait=wait):
                delivered += 1
            if realtime:
                rest = self.frame_duration_us() / 1e6 - (time.monotonic() - started)
                if rest > 0:
                    time.sleep(rest)
        return delivered

    def _expose(self, wait: float) -> bool:
        duration = self.frame_duration_us()
        self._timestamp_ns += duration * 1000
        sequence = self._sequence
        self._sequence += 1
        with self._queue_lock:
            if not self._queue and wait:
                self._queue_lock.wait_for(
                    lambda: bool(self._queue) or not self._running.is_set(), wait
                )
            request = self._queue.pop(0) if self._queue and self._running.is_set() else None
        if request is None:
            self.stats.dropped += 1
            return False
        self.timestamps.append(self._timestamp_ns)
        for control, value in request.controls.items():
            self.applied[control.name] = value
        self._fill(request, sequence, duration)
        self.stats.delivered += 1
        assert self.stats.durations is not None
        self.stats.durations.append(duration)
        self._manager._complete([request])
        return True

    def _fill(self, request: Request, sequence: int, duration: int) -> None:
        for stream, buffer in request.buffers.items():
            buffer.metadata.status = FrameMetadata.Status.Success
            buffer.metadata.sequence = sequence
            buffer.metadata.timestamp = self._timestamp_ns
            cfg = stream.configuration
            if stream.name == "raw" or str(cfg.pixel_format) not in ("YUV420", "YVU420"):
                continue
            w, h, stride = cfg.size.width, cfg.size.height, cfg.stride
            y = self.picture(stream.name, sequence, w, h)
            # The sensor writes into the dma-buf itself, through a mapping of its own.
            with mmap.mmap(buffer.planes[0].fd, cfg.frame_size) as memory:
                view = np.frombuffer(memory, dtype=np.uint8, count=cfg.frame_size)
                rows = view[: stride * h].reshape(h, stride)
                rows[:, :w] = y
                rows[:, w:] = 0xEE  # padding that must never reach a picture
                view[stride * h :] = 128
                del view, rows  # before the mapping closes
        exposure = (
            min(max(self.exposure_needed, 100), duration) if self.exposure_needed else duration // 2
        )
        request.metadata = {
            _CONTROLS["SensorTimestamp"]: self._timestamp_ns,
            _CONTROLS["ExposureTime"]: exposure,
            _CONTROLS["FrameDuration"]: duration,
            _CONTROLS["AnalogueGain"]: 1.0,
            _CONTROLS["ScalerCrop"]: Rectangle(*self._mode.crop),
        }
        if self.sensor.autofocus:
            request.metadata[_CONTROLS["LensPosition"]] = float(
                self.applied.get("LensPosition", 1.0)
            )
        request.status = Request.Status.Complete
        request.sequence = sequence

    def _free_run(self) -> None:
        while self._running.is_set():
            started = time.monotonic()
            self._expose(wait=0)
            rest = self.frame_duration_us() / 1e6 - (time.monotonic() - started)
            self._stopping.wait(max(0.0, rest))


class CameraManager:
    """The camera list and the completed-request queue picamera2's event loop reads."""

    _instance: weakref.ref[CameraManager] | None = None

    def __init__(self) -> None:
        rig = _rig_state()
        self.rig = rig
        self.event_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ready: list[Request] = []
        self._lock = threading.Lock()
        tuning = None
        path = os.environ.get("LIBCAMERA_RPI_TUNING_FILE")
        if path:
            try:
                with open(path) as f:
                    tuning = json.load(f)
            except (OSError, ValueError) as exc:
                raise RuntimeError(f"Failed to load tuning data file {path}: {exc}") from None
        self.cameras = [Camera(self, s, rig.board, tuning) for s in rig.sensors]
        rig.managers.append(weakref.ref(self))

    @staticmethod
    def singleton() -> CameraManager:
        existing = CameraManager._instance() if CameraManager._instance else None
        if existing is not None:
            return existing
        manager = CameraManager()
        CameraManager._instance = weakref.ref(manager)
        return manager

    def get(self, camera_id: str) -> Camera:
        for camera in self.cameras:
            if camera.id == camera_id:
                return camera
        raise RuntimeError(f"no camera {camera_id}")

    find = get

    def get_ready_requests(self) -> list[Request]:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.event_fd)
        with self._lock:
            ready, self._ready = self._ready, []
        return ready

    def _complete(self, requests: list[Request]) -> None:
        if not requests:
            return
        with self._lock:
            self._ready.extend(requests)
        os.eventfd_write(self.event_fd, 1)

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.event_fd)


# -- the rig --------------------------------------------------------------------------------


class _RigState:
    def __init__(self, board: Any, sensors: list[Any], free_running: bool) -> None:
        self.board = board
        self.sensors = sensors
        self.free_running = free_running
        self.memory = CameraMemory(board.camera_memory)
        self.managers: list[weakref.ref[CameraManager]] = []
        self.last_acquired: Camera | None = None
        """The camera an application acquired last (it outlives its manager here)."""
        self.fail: dict[str, BaseException | Callable[[], Any]] = {}
        """Faults the cameras inject, by the name of the call (``acquire``, ``configure``,
        ``start``, ``stop``, ``release``): an exception to raise, or a callable to run first
        (one that blocks is a wedged camera)."""

    def cameras(self) -> list[Camera]:
        out = []
        for ref in self.managers:
            manager = ref()
            if manager is not None:
                out.extend(manager.cameras)
        return out


class _Installed:
    state: _RigState | None = None


def _rig_state() -> _RigState:
    if _Installed.state is None:
        raise RuntimeError("libcamera stand-in: no rig installed (tests/pirig.py)")
    return _Installed.state


def install(board: Any, sensors: list[Any], free_running: bool = False) -> _RigState:
    """Put ``sensors`` on ``board`` (an empty list: no camera on the connector)."""
    _Installed.state = _RigState(board, sensors, free_running)
    CameraManager._instance = None
    return _Installed.state


_libcamera = sys.modules[__name__]
sys.modules[__name__ + "._libcamera"] = _libcamera
