"""What the libcamera stand-in models: Raspberry Pi boards and their camera modules.

The facts here are written from what the hardware reports, not from pinthesky's own tables:
sensor modes as ``rpicam-hello --list-cameras`` lists them on Raspberry Pi OS 12 (size, bit
depth, highest frame rate, the part of the pixel array each mode reads), and camera memory as
each board's kernel gives it (``CmaTotal`` in ``/proc/meminfo``). The stand-in
(``tests/standin/libcamera``) serves them to picamera2's real code; pinthesky must reach the
same conclusions from its own knowledge (``pinthesky/hardware``).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MB = 2**20


@dataclass(frozen=True)
class Mode:
    """One sensor mode: what the sensor sends in it."""

    bits: int
    size: tuple[int, int]
    fps: float
    crop: tuple[int, int, int, int]
    """The part of the pixel array read (x, y, width, height)."""

    @property
    def format(self) -> str:
        return f"{self.bayer}{self.bits}_CSI2P" if self.bits > 8 else f"{self.bayer}8"

    bayer: str = "SRGGB"


@dataclass(frozen=True)
class Sensor:
    """A camera module as libcamera sees it."""

    model: str
    """libcamera's ``Model`` property (the tuning file's name without ``.json``)."""
    array: tuple[int, int]
    modes: tuple[Mode, ...]
    autofocus: bool = False
    mono: bool = False

    def with_model(self, model: str) -> Sensor:
        return Sensor(model, self.array, self.modes, self.autofocus, self.mono)


def _modes(bayer: str, *rows: tuple[int, tuple[int, int], float, tuple[int, int, int, int]]):
    return tuple(Mode(bits, size, fps, crop, bayer) for bits, size, fps, crop in rows)


OV5647 = Sensor(  # Camera Module v1
    "ov5647",
    (2592, 1944),
    _modes(
        "SGBRG",
        (10, (640, 480), 58.92, (16, 0, 2560, 1920)),
        (10, (1296, 972), 43.25, (0, 0, 2592, 1944)),
        (10, (1920, 1080), 30.62, (348, 434, 1928, 1080)),
        (10, (2592, 1944), 15.63, (0, 0, 2592, 1944)),
    ),
)
IMX219 = Sensor(  # Camera Module v2
    "imx219",
    (3280, 2464),
    _modes(
        "SRGGB",
        (10, (640, 480), 206.65, (1000, 752, 1280, 960)),
        (10, (1640, 1232), 41.85, (0, 0, 3280, 2464)),
        (10, (1920, 1080), 47.57, (680, 692, 1920, 1080)),
        (10, (3280, 2464), 21.19, (0, 0, 3280, 2464)),
        (8, (640, 480), 206.65, (1000, 752, 1280, 960)),
        (8, (1640, 1232), 83.70, (0, 0, 3280, 2464)),
        (8, (1920, 1080), 47.57, (680, 692, 1920, 1080)),
        (8, (3280, 2464), 21.19, (0, 0, 3280, 2464)),
    ),
)
IMX477 = Sensor(  # HQ Camera
    "imx477",
    (4056, 3040),
    _modes(
        "SRGGB",
        (10, (1332, 990), 120.05, (696, 528, 2664, 1980)),
        (12, (2028, 1080), 50.03, (0, 440, 4056, 2160)),
        (12, (2028, 1520), 40.01, (0, 0, 4056, 3040)),
        (12, (4056, 3040), 10.00, (0, 0, 4056, 3040)),
    ),
)
IMX708 = Sensor(  # Camera Module 3 (10-bit only; the wide and NoIR kinds have the same modes)
    "imx708",
    (4608, 2592),
    _modes(
        "SRGGB",
        (10, (1536, 864), 120.13, (768, 432, 3072, 1728)),
        (10, (2304, 1296), 56.03, (0, 0, 4608, 2592)),
        (10, (4608, 2592), 14.35, (0, 0, 4608, 2592)),
    ),
    autofocus=True,
)
IMX500 = Sensor(  # AI Camera
    "imx500",
    (4056, 3040),
    _modes(
        "SRGGB",
        (10, (2028, 1520), 30.02, (0, 0, 4056, 3040)),
        (10, (4056, 3040), 10.00, (0, 0, 4056, 3040)),
    ),
)
IMX296 = Sensor(  # Global Shutter Camera
    "imx296",
    (1456, 1088),
    _modes("SBGGR", (10, (1456, 1088), 60.38, (0, 0, 1456, 1088))),
)

SENSORS = {
    s.model: s
    for s in (
        OV5647,
        IMX219,
        IMX477,
        IMX708,
        IMX708.with_model("imx708_wide"),
        IMX708.with_model("imx708_noir"),
        IMX708.with_model("imx708_wide_noir"),
        IMX500,
        IMX296,
    )
}


@dataclass(frozen=True)
class Board:
    """A Raspberry Pi as the camera stack sees it."""

    name: str
    model: str
    """``/proc/device-tree/model``."""
    platform: str
    """``vc4`` (Pi 0-4: Unicam, the bcm2835 ISP, V4L2 codecs) or ``pisp`` (Pi 5)."""
    ram: int
    cma: int
    camera_in_cma: bool = True
    """Whether camera buffers come from CMA (Pi 0-4) or from system memory (Pi 5, whose
    hardware blocks sit behind an IOMMU)."""
    display: int = 8 * MB
    """CMA other users hold (the KMS console's framebuffer on a headless Pi)."""
    cores: int = 4

    @property
    def meminfo(self) -> str:
        total = self.ram * 15 // 16  # what the firmware and the kernel leave
        available = total * 3 // 4
        return (
            f"MemTotal:       {total // 1024} kB\n"
            f"MemFree:        {available // 1024} kB\n"
            f"MemAvailable:   {available // 1024} kB\n"
            f"CmaTotal:       {self.cma // 1024} kB\n"
            f"CmaFree:        {(self.cma - self.display) // 1024} kB\n"
        )

    @property
    def camera_memory(self) -> int:
        """What camera buffers may take before an allocation fails."""
        if self.camera_in_cma:
            return self.cma - self.display
        return self.ram * 15 // 16 * 3 // 4


BOARDS = {
    b.name: b
    for b in (
        Board("zero-w", "Raspberry Pi Zero W Rev 1.1", "vc4", 512 * MB, 64 * MB, cores=1),
        Board("zero-2-w", "Raspberry Pi Zero 2 W Rev 1.0", "vc4", 512 * MB, 64 * MB),
        Board("pi3", "Raspberry Pi 3 Model B Plus Rev 1.3", "vc4", 1024 * MB, 256 * MB),
        Board("pi4", "Raspberry Pi 4 Model B Rev 1.5", "vc4", 4096 * MB, 512 * MB),
        Board(
            "pi5", "Raspberry Pi 5 Model B Rev 1.0", "pisp", 4096 * MB, 64 * MB, camera_in_cma=False
        ),
    )
}


@dataclass
class Rig:
    """The hardware one test runs on: a board and the camera module on its connector."""

    board: Board
    sensor: Sensor | None
    tuning_files: tuple[str, ...] = field(default=())


# -- running picamera2 on the stand-in --------------------------------------------------------

STANDIN = Path(__file__).parent / "standin"


def _forget(prefixes: tuple[str, ...]) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[name]


def load_picamera2(platform: str) -> Any:
    """Import the installed picamera2 afresh against the stand-in, on ``platform``.

    picamera2 learns its platform at import, by asking ``/dev/video*`` whether one is the
    Pi 5's ``pispbe``; here no device answers, so its own ``platform`` module is run and
    then told what the board is. Its dma-heap allocator allocates from the stand-in's camera
    memory (``/dev/dma_heap`` does not exist here); everything else is picamera2's code."""
    _forget(("picamera2", "libcamera", "pykms", "kms"))
    spec = importlib.util.find_spec("picamera2")
    assert spec is not None and spec.submodule_search_locations, "picamera2 is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "platform.py"
    platform_spec = importlib.util.spec_from_file_location("picamera2.platform", path)
    assert platform_spec is not None and platform_spec.loader is not None
    module = importlib.util.module_from_spec(platform_spec)
    platform_spec.loader.exec_module(module)
    module._platform = module.Platform.PISP if platform == "pisp" else module.Platform.VC4
    sys.modules["picamera2.platform"] = module
    sys.modules["kms"] = None  # type: ignore[assignment]  # picamera2 tries it first: pykms
    import libcamera
    import picamera2
    import picamera2.dma_heap
    from picamera2.allocators import dmaallocator

    dmaallocator.DmaHeap = libcamera.DmaHeap
    picamera2.dma_heap.DmaHeap = libcamera.DmaHeap
    dmaallocator.fcntl = libcamera.Kernel(fcntl)
    return picamera2


CODEC_CAPTURE = 16 * 512 * 1024
"""What one bcm2835 V4L2 encoder takes of camera memory: picamera2 asks it for 16 capture
buffers of 512 KiB."""


def videocore_encoders(picamera2: Any, memory: Any) -> tuple[type, type]:
    """Stand-ins for the Pi 0-4's V4L2 H.264 and MJPEG encoders (``/dev/video11`` does not
    exist here): picamera2's own constructors check the call, libx264 and FFmpeg's MJPEG do the
    encoding (picamera2's ``LibavH264Encoder`` and ``LibavMjpegEncoder``, which hold each frame
    until the next one is in, as the codec holds its input), and the codec's capture buffers
    come out of the board's camera memory while the encoder runs."""
    from picamera2.encoders import LibavH264Encoder, LibavMjpegEncoder
    from picamera2.encoders.h264_encoder import H264Encoder as V4l2H264
    from picamera2.encoders.mjpeg_encoder import MJPEGEncoder as V4l2Mjpeg

    class Codec:
        _capture: list[int]

        def _start(self) -> None:
            self._capture = [memory.alloc("bcm2835-codec-capture", CODEC_CAPTURE)]
            try:
                super()._start()  # type: ignore[misc]
            except BaseException:
                self._release_capture()
                raise

        def _stop(self) -> None:
            try:
                super()._stop()  # type: ignore[misc]
            finally:
                self._release_capture()

        def _release_capture(self) -> None:
            for fd in getattr(self, "_capture", []):
                os.close(fd)
            self._capture = []

    class VideoCoreH264(Codec, LibavH264Encoder):  # type: ignore[misc,valid-type]
        def __init__(
            self,
            bitrate: Any = None,
            repeat: bool = True,
            iperiod: Any = None,
            framerate: Any = None,
            enable_sps_framerate: bool = False,
            qp: Any = None,
            profile: Any = None,
        ) -> None:
            self.v4l2 = V4l2H264(
                bitrate=bitrate,
                repeat=repeat,
                iperiod=iperiod,
                framerate=framerate,
                enable_sps_framerate=enable_sps_framerate,
                qp=qp,
                profile=profile,
            )
            super().__init__(
                bitrate=bitrate,
                repeat=repeat,
                iperiod=iperiod or 30,
                framerate=framerate or 30,
                qp=qp,
                profile=profile,
            )

    class VideoCoreMjpeg(Codec, LibavMjpegEncoder):  # type: ignore[misc,valid-type]
        def __init__(self, bitrate: Any = None) -> None:
            self.v4l2 = V4l2Mjpeg(bitrate=bitrate)
            super().__init__(bitrate=bitrate)

        def _start(self) -> None:
            super()._start()
            # Without FFmpeg's frame threads. With them, freeing the codec (when the garbage
            # collector gets to it, in some later test) can deadlock PyAV: a codec thread
            # frees a queued frame that wraps a numpy buffer and needs the GIL, which the
            # freeing thread holds while it waits for that codec thread.
            self._stream.codec_context.thread_count = 1

    return VideoCoreH264, VideoCoreMjpeg


class PiRig:
    """One Raspberry Pi with one camera module, for one test: picamera2's real code on the
    libcamera stand-in, and the files pinthesky reads to learn the board."""

    def __init__(self, monkeypatch: Any, tmp_path: Path) -> None:
        self._monkeypatch = monkeypatch
        self._tmp = tmp_path
        self.state: Any = None
        self.board: Board | None = None
        self.picamera2: Any = None

    def install(
        self,
        board: str | Board = "pi4",
        sensor: str | Sensor | None = "imx219",
        free_running: bool = False,
    ) -> PiRig:
        self.board = BOARDS[board] if isinstance(board, str) else board
        self.sensor = SENSORS[sensor] if isinstance(sensor, str) else sensor
        self._monkeypatch.syspath_prepend(str(STANDIN))
        for name in [m for m in sys.modules if m.split(".")[0] in ("picamera2", "libcamera")]:
            self._monkeypatch.delitem(sys.modules, name)
        self.picamera2 = load_picamera2(self.board.platform)
        import libcamera

        self.libcamera = libcamera
        self.state = libcamera.install(
            self.board, [self.sensor] if self.sensor else [], free_running=free_running
        )
        model = self._tmp / "device-tree-model"
        model.write_text(self.board.model + "\0")
        meminfo = self._tmp / "meminfo"
        meminfo.write_text(self.board.meminfo)
        self.model_file, self.meminfo_file = model, meminfo
        tuning = self._tmp / "tuning"
        for kind in ("vc4", "pisp"):
            (tuning / kind).mkdir(parents=True, exist_ok=True)
            for name in SENSORS:
                for variant in (name, f"{name}_noir"):
                    text = json.dumps({"version": 2.0, "target": kind, "standin": variant})
                    (tuning / kind / f"{variant}.json").write_text(text)
        self.tuning_dir = tuning

        from pinthesky.camera import picam
        from pinthesky.hardware import board, camera

        patch = self._monkeypatch.setattr
        patch(board, "MODEL_FILE", model)
        patch(board, "MEMINFO", meminfo)
        patch(camera, "TUNING_DIRS", (tuning,))
        patch(picam, "_logged_once", set())
        patch(picam, "_measured", {})
        import picamera2.encoders

        if self.board.platform == "vc4":
            h264, mjpeg = videocore_encoders(self.picamera2, self.state.memory)
            patch(picamera2.encoders, "H264Encoder", h264)
            patch(picamera2.encoders, "MJPEGEncoder", mjpeg)
        return self

    @property
    def camera(self) -> Any:
        """The camera picamera2 opened last (or, before any, the one listed last)."""
        if self.state.last_acquired is not None:
            return self.state.last_acquired
        cameras = self.state.cameras()
        assert cameras, "no camera manager has started"
        return cameras[-1]

    @property
    def memory(self) -> Any:
        return self.state.memory

    def run(self, source: Any, frames: int, wait: float = 10.0) -> int:
        """Deliver ``frames`` frames and return once picamera2 has handled each (its event
        loop ran the callbacks and the encoders). ``source`` is a ``PicameraSource`` (or the
        ``Picamera2`` object itself)."""
        picam2 = getattr(source, "_picam2", None) or source
        before = picam2.frames
        delivered = self.camera.deliver(frames, wait=wait)
        deadline = time.monotonic() + 30
        while picam2.frames < before + delivered:
            assert time.monotonic() < deadline, "picamera2 did not take the frames"
            time.sleep(0.002)
        with picam2.lock:  # the callbacks and encoders ran under it
            pass
        return delivered
