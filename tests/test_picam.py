"""PicameraSource against a fake Picamera2 object, with the REAL picamera2 encoders and outputs.

picamera2 itself is pip-installed but cannot import off a Pi (no ``libcamera``, no ``pykms``).
The ``stubs`` fixture puts stand-ins for those two in ``sys.modules``; then picamera2's own
``Output``, ``CompletedRequest``, ``MappedArray`` and ``LibavH264Encoder`` (libx264 through
PyAV, the Pi 5 encoder) import and run. Only the ``Picamera2`` object is faked: its camera
thread is simulated by ``FakePicamera2.run_camera``, which builds real ``CompletedRequest``
objects around fake libcamera requests and does what ``Picamera2.process_requests`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import io
import itertools
import logging
import sys
import threading
import types
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from conftest import eventually

from pinthesky.camera import picam
from pinthesky.camera.base import AnalysisPort
from pinthesky.camera.picam import PicameraSource, camera_present
from pinthesky.errors import SourceError
from pinthesky.live import tap as live_tap
from pinthesky.live.tap import YUV420, LiveTap, Picture
from pinthesky.media import US, AnalysisFrame, has_parameter_sets, nal_type, split_annexb
from pinthesky.record.ring import PacketRing
from pinthesky.settings import CameraSettings, Resolution, defaults

T0_NS = 987_654_321_123_456  # sensor time of the first simulated frame, ns
T0_US = T0_NS // 1000
FPS = 20
FRAME_NS = 1_000_000_000 // FPS
JPEG = b"\xff\xd8fake jpeg\xff\xd9"


# -- stand-ins for libcamera and pykms ------------------------------------------------------


class _Anything(type):
    """A class whose every missing attribute is another such class (for enum-like lookups
    such as ``libcamera.ColorSpace.Sycc()`` at picamera2's import time)."""

    def __getattr__(cls, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        sub = _Anything(attr, (), {})
        setattr(cls, attr, sub)
        return sub


def _stub_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)

    def getattr_(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        cls = _Anything(attr, (), {})
        setattr(module, attr, cls)
        return cls

    module.__getattr__ = getattr_  # type: ignore[method-assign]
    return module


class Transform:
    def __init__(self, hflip: int = 0, vflip: int = 0, transpose: int = 0) -> None:
        self.hflip, self.vflip, self.transpose = hflip, vflip, transpose

    def __str__(self) -> str:
        return f"<Transform hflip={self.hflip} vflip={self.vflip} transpose={self.transpose}>"


class ControlId:
    """What libcamera's metadata dictionaries are keyed by (``get_metadata`` uses ``.name``)."""

    def __init__(self, name: str) -> None:
        self.name = name


class ColorSpace:
    """libcamera's ColorSpace, as far as picamera2 and we read it."""

    class Range:
        Full = "Full"
        Limited = "Limited"

    def __init__(self, name: str, range_: str) -> None:
        self.name, self.range = name, range_

    def __repr__(self) -> str:
        return f"<libcamera.ColorSpace '{self.name}'>"

    @classmethod
    def Sycc(cls) -> ColorSpace:
        return cls("sYCC", cls.Range.Full)

    @classmethod
    def Smpte170m(cls) -> ColorSpace:
        return cls("SMPTE170M", cls.Range.Limited)

    @classmethod
    def Rec709(cls) -> ColorSpace:
        return cls("Rec709", cls.Range.Limited)


def _mode(bits: int, size: tuple[int, int], fps: float, crop: tuple[int, ...]) -> dict[str, Any]:
    """One entry of ``Picamera2.sensor_modes`` as picamera2 reports it."""
    return {
        "format": f"SRGGB{bits}_CSI2P" if bits > 8 else "SRGGB8",
        "unpacked": f"SRGGB{bits}",
        "bit_depth": bits,
        "size": size,
        "fps": fps,
        "crop_limits": crop,
        "exposure_limits": (75, 11_766_829, None),
    }


IMX219 = [  # Camera Module v2, as `rpicam-hello --list-cameras` and picamera2 list it
    _mode(10, (640, 480), 206.65, (1000, 752, 1280, 960)),
    _mode(10, (1640, 1232), 41.85, (0, 0, 3280, 2464)),
    _mode(10, (1920, 1080), 47.57, (680, 692, 1920, 1080)),
    _mode(10, (3280, 2464), 21.19, (0, 0, 3280, 2464)),
    _mode(8, (640, 480), 206.65, (1000, 752, 1280, 960)),
    _mode(8, (1640, 1232), 83.70, (0, 0, 3280, 2464)),
    _mode(8, (1920, 1080), 47.57, (680, 692, 1920, 1080)),
    _mode(8, (3280, 2464), 21.19, (0, 0, 3280, 2464)),
]
IMX708 = [  # Camera Module 3 (10-bit only)
    _mode(10, (1536, 864), 120.13, (768, 432, 3072, 1728)),
    _mode(10, (2304, 1296), 56.03, (0, 0, 4608, 2592)),
    _mode(10, (4608, 2592), 14.35, (0, 0, 4608, 2592)),
]
SENSORS = {"imx219": IMX219, "imx708": IMX708}


def _picamera2_modules() -> list[str]:
    return [m for m in sys.modules if m == "picamera2" or m.startswith("picamera2.")]


@pytest.fixture
def stubs(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """Stub libcamera and pykms so the real picamera2 modules import; on the way out, forget
    the picamera2 modules imported against the stubs."""
    for name in _picamera2_modules():
        monkeypatch.delitem(sys.modules, name)
    libcamera = _stub_module("libcamera")
    controls = _stub_module("libcamera.controls")
    controls.SensorTimestamp = ControlId("SensorTimestamp")  # type: ignore[attr-defined]
    libcamera.controls = controls  # type: ignore[attr-defined]
    libcamera.Transform = Transform  # type: ignore[attr-defined]
    libcamera.ColorSpace = ColorSpace  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "libcamera", libcamera)
    monkeypatch.setitem(sys.modules, "libcamera.controls", controls)
    monkeypatch.setitem(sys.modules, "pykms", _stub_module("pykms"))
    monkeypatch.setitem(sys.modules, "kms", None)  # picamera2 tries this first: use pykms
    monkeypatch.setattr(picam, "_logged_once", set())

    import picamera2.encoders

    # Off a Pi picamera2 assumes a Pi 0-4 and picks the V4L2 encoder, which needs
    # /dev/video11. Use the one a Pi 5 gets: libx264 through PyAV.
    monkeypatch.setattr(picamera2.encoders, "H264Encoder", picamera2.encoders.LibavH264Encoder)
    yield libcamera
    for name in _picamera2_modules():
        del sys.modules[name]


# -- a fake Picamera2 -----------------------------------------------------------------------


def lores_y(i: int, w: int, h: int) -> np.ndarray:
    r, c = np.mgrid[0:h, 0:w]
    y: np.ndarray = ((3 * r + 5 * c + 7 * i) % 256).astype(np.uint8)
    return y


def main_y(i: int, w: int, h: int) -> np.ndarray:
    r, c = np.mgrid[0:h, 0:w]
    y: np.ndarray = (64 + (r + c + 4 * i) % 128).astype(np.uint8)
    return y


def i420(y: np.ndarray, stride: int) -> np.ndarray:
    """A flat I420 buffer as libcamera lays it out: rows padded to ``stride``, UV grey."""
    h, w = y.shape
    buf = np.full((h * 3 // 2, stride), 128, dtype=np.uint8)
    buf[:h, :] = 0xEE  # padding bytes that must never show up in a picture
    buf[:h, :w] = y
    return buf.reshape(-1)


class FakeSync:
    def __init__(self, mem: np.ndarray) -> None:
        self.mem = mem

    def __enter__(self) -> np.ndarray:
        return self.mem

    def __exit__(self, *args: Any) -> None:
        return None


class FakeAllocator:
    mapped_buffers: dict[Any, Any] = {}  # noqa: RUF012

    def sync(self, allocator: Any, fb: np.ndarray, write: bool) -> FakeSync:
        return FakeSync(fb)

    def acquire(self, buffers: Any) -> None:
        pass

    def release(self, buffers: Any) -> None:
        pass


class FakeLibcameraRequest:
    def __init__(self, buffers: dict[str, np.ndarray], metadata: dict[Any, Any]) -> None:
        self.buffers = buffers
        self.metadata = metadata


class FakeJpegRequest:
    def __init__(self) -> None:
        self.saved: list[tuple[str, Any, Any]] = []

    def save(self, name: str, file_output: Any, format: Any = None) -> None:
        self.saved.append((name, file_output, format))
        file_output.write(JPEG)


class FakePicamera2:
    """Records what PicameraSource asks for; ``run_camera`` plays the camera thread.

    It carries the attributes picamera2's real ``CompletedRequest`` reads from its camera, so
    the requests handed to the callback and to the encoder are real ones.
    """

    def __init__(
        self,
        fail: dict[str, BaseException] | None = None,
        main_pad: int = 64,
        lores_pad: int = 32,
        sensor: str = "imx219",
    ) -> None:
        self.fail = fail or {}
        self.sensor_modes = SENSORS[sensor]
        self.camera_properties = {"Model": sensor}
        self.main_picture: Callable[[int, int, int], np.ndarray] = main_y
        self.main_pad = main_pad
        self.lores_pad = lores_pad
        self.calls: list[str] = []
        self.config_kwargs: dict[str, Any] = {}
        self.post_callback: Callable[[Any], None] | None = None
        self.encoders: list[tuple[Any, Any]] = []
        self.capture_kwargs: dict[str, Any] = {}
        self.jpeg_request = FakeJpegRequest()
        self.real_jpeg = False
        self.callback_threads: set[int] = set()
        # What picamera2.request.CompletedRequest reads from its Picamera2:
        self.request_lock = threading.Lock()
        self.stop_count = 0
        self.configure_count = 0
        self.camera_config: dict[str, Any] = {}
        self.stream_map: dict[str, Any] = {}
        self.allocator = FakeAllocator()
        self.camera = None
        self.started = False
        self.options: dict[str, Any] = {}
        from picamera2.request import Helpers

        self.helpers = Helpers(self)

    def _step(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]

    def create_video_configuration(self, **kwargs: Any) -> dict[str, Any]:
        self._step("create_video_configuration")
        self.config_kwargs = kwargs
        return dict(kwargs)

    def configure(self, config: dict[str, Any]) -> None:
        self._step("configure")
        self.configure_count += 1
        main, lores = dict(config["main"]), dict(config["lores"])
        main["stride"] = main["size"][0] + self.main_pad
        lores["stride"] = lores["size"][0] + self.lores_pad
        # What create_video_configuration picks when not told: limited range, by size.
        colour = config.get("colour_space") or (
            ColorSpace.Smpte170m() if main["size"][0] < 1280 else ColorSpace.Rec709()
        )
        self.camera_config = {
            "main": main,
            "lores": lores,
            "raw": None,
            "display": "main",
            "colour_space": colour,
        }
        self.stream_map = {"main": "main-stream", "lores": "lores-stream"}

    def camera_configuration(self) -> dict[str, Any]:
        return self.camera_config

    def start(self) -> None:
        self._step("start")
        self.started = True

    def start_encoder(self, encoder: Any, output: Any, name: str | None = None) -> None:
        # What Picamera2.start_encoder does, minus the camera.
        self._step("start_encoder")
        encoder.output = output  # the real Encoder accepts only picamera2 Output objects
        stream = self.camera_config[name or "main"]
        encoder.name = name or "main"
        encoder.width, encoder.height = stream["size"]
        encoder.format = stream["format"]
        encoder.stride = stream["stride"]
        encoder.start()
        self.encoders.append((encoder, output))

    def stop_encoder(self, encoders: Any = None) -> None:
        self._step("stop_encoder")
        for encoder, _ in self.encoders:
            if encoders is None or encoder is encoders:
                encoder.stop()

    def stop(self) -> None:
        self._step("stop")
        self.started = False
        self.stop_count += 1

    def close(self) -> None:
        self._step("close")

    def make_request(self, i: int) -> Any:
        """Frame ``i`` as a real CompletedRequest."""
        from picamera2.request import CompletedRequest

        main, lores = self.camera_config["main"], self.camera_config["lores"]
        (mw, mh), (lw, lh) = main["size"], lores["size"]
        buffers = {
            "main-stream": i420(self.main_picture(i, mw, mh), main["stride"]),
            "lores-stream": i420(lores_y(i, lw, lh), lores["stride"]),
        }
        ts_key = sys.modules["libcamera"].controls.SensorTimestamp
        metadata = {ts_key: T0_NS + i * FRAME_NS, ControlId("ExposureTime"): 10_000}
        return CompletedRequest(FakeLibcameraRequest(buffers, metadata), self)

    def run_camera(self, frames: int, first: int = 0) -> threading.Thread:
        """Deliver ``frames`` frames from a thread, as Picamera2.process_requests does."""

        def run() -> None:
            for i in range(first, first + frames):
                request = self.make_request(i)
                if self.post_callback is not None:
                    self.callback_threads.add(threading.get_ident())
                    self.post_callback(request)
                for encoder, _ in self.encoders:
                    encoder.encode(encoder.name, request)
                request.release()

        thread = threading.Thread(target=run, name="fake-camera", daemon=True)
        thread.start()
        return thread

    @contextlib.contextmanager
    def captured_request(self, **kwargs: Any) -> Iterator[Any]:
        self._step("captured_request")
        self.capture_kwargs = kwargs
        if not self.real_jpeg:
            yield self.jpeg_request
            return
        request = self.make_request(0)
        try:
            yield request
        finally:
            request.release()


# -- helpers --------------------------------------------------------------------------------


def camera_settings(**changes: Any) -> CameraSettings:
    base = dataclasses.replace(
        defaults().camera,
        resolution=Resolution(320, 240),
        lores=Resolution(160, 120),
        framerate=FPS,
        keyframe_interval=10,
    )
    return dataclasses.replace(base, **changes)


def open_source(
    fake: FakePicamera2 | None = None, **changes: Any
) -> tuple[PicameraSource, FakePicamera2]:
    fake = fake or FakePicamera2()
    src = PicameraSource(camera_settings(**changes), factory=lambda: fake)
    return src, fake


def join(thread: threading.Thread) -> None:
    thread.join(timeout=30)
    assert not thread.is_alive(), "the simulated camera thread hung"


async def flush_loop() -> None:
    """Run every callback already queued on the loop (FIFO) before returning."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_soon(done.set_result, None)
    await asyncio.wait_for(done, 5)


def sps(data: bytes) -> bytes:
    return next(u for u in split_annexb(data) if nal_type(u) == 7)


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(("rotation", "info_rotation"), [(0, 0), (90, 90), (180, 0), (270, 270)])
def test_configuration(
    stubs: types.ModuleType, rotation: int, info_rotation: int, caplog: pytest.LogCaptureFixture
) -> None:
    src, fake = open_source(rotation=rotation, resolution=Resolution(640, 480))
    with caplog.at_level(logging.DEBUG, logger="pinthesky.camera.picam"):
        info = src.open()
        src.stop()
        src.open()  # a reopen (retry) must not repeat the one-time messages
    kw = fake.config_kwargs
    assert kw["main"] == {"size": (640, 480), "format": "YUV420"}
    assert kw["lores"] == {"size": (160, 120), "format": "YUV420"}
    assert kw["controls"] == {"FrameRate": FPS}
    assert kw["encode"] == "main"
    if rotation == 180:
        assert isinstance(kw["transform"], Transform)
        assert (kw["transform"].hflip, kw["transform"].vflip) == (1, 1)
    else:
        assert "transform" not in kw
    assert info.width == 640
    assert info.height == 480
    assert info.framerate == Fraction(FPS)
    assert isinstance(info.framerate, Fraction)
    assert info.rotation == info_rotation
    assert fake.calls[:2] == ["create_video_configuration", "configure"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    if rotation in (90, 270):
        assert len(warnings) == 1
        assert "cannot rotate" in warnings[0].getMessage()
    else:
        assert warnings == []
    levels = [r for r in caplog.records if "level" in r.getMessage()]
    assert len(levels) == 1
    assert levels[0].levelno == logging.DEBUG


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("baseline", "baseline"),
        ("main", "main"),
        ("extended", "main"),
        ("high", "high"),
        ("constrained", "constrained baseline"),
    ],
)
def test_encoder_settings(
    stubs: types.ModuleType, name: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    import picamera2.encoders

    src, fake = open_source(encoding_profile=name, encoding_bitrate=3_000_000)
    with caplog.at_level(logging.INFO, logger="pinthesky.camera.picam"):
        src.open()
        src.start(PacketRing(10 * US), _port_nowhere())
        src.stop()
        src.open()
    encoder, _ = fake.encoders[0]
    assert isinstance(encoder, picamera2.encoders.H264Encoder)
    assert encoder.profile == expected
    assert encoder.bitrate == 3_000_000
    assert encoder.repeat is True
    assert encoder.iperiod == 10
    assert encoder.framerate == FPS
    infos = [
        r
        for r in caplog.records
        if r.levelno == logging.INFO and not any(w in r.getMessage() for w in (" mode ", "PyAV"))
    ]
    if name == "extended":
        assert len(infos) == 1
        assert "extended" in infos[0].getMessage()
    else:
        assert infos == []


def test_iperiod_defaults_to_the_framerate(stubs: types.ModuleType) -> None:
    src, fake = open_source(keyframe_interval=0, framerate=15)
    src.open()
    src.start(PacketRing(10 * US), _port_nowhere())
    src.stop()
    assert fake.encoders[0][0].iperiod == 15


def _port_nowhere() -> AnalysisPort:
    loop = asyncio.new_event_loop()
    loop.close()  # submit() on a closed loop is a no-op, as at daemon exit
    return AnalysisPort(loop, lambda f: None, 5.0, US // FPS, False, lambda e: None)


# -- errors ---------------------------------------------------------------------------------


def test_configure_failure_is_a_one_line_source_error(stubs: types.ModuleType) -> None:
    fake = FakePicamera2(
        fail={"configure": RuntimeError("Camera __init__ sequence did not complete.")}
    )
    src, _ = open_source(fake)
    with pytest.raises(SourceError) as err:
        src.open()
    assert str(err.value) == "picamera2: Camera __init__ sequence did not complete."
    assert fake.calls[-2:] == ["stop", "close"], "a half-opened camera must be released"
    src.stop()
    assert fake.calls.count("close") == 1


def test_factory_failures(stubs: types.ModuleType) -> None:
    def no_camera() -> Any:
        raise IndexError("list index out of range")  # Picamera2() with no camera listed

    with pytest.raises(SourceError, match=r"^picamera2: no camera detected$"):
        PicameraSource(camera_settings(), factory=no_camera).open()

    def busy() -> Any:
        # What Picamera2() raises when another process holds the camera: the cause is hidden.
        try:
            raise RuntimeError("Failed to acquire camera: Device or resource busy")
        except RuntimeError as exc:
            raise RuntimeError("Camera __init__ sequence did not complete.") from exc

    with pytest.raises(SourceError) as err:
        PicameraSource(camera_settings(), factory=busy).open()
    assert str(err.value) == picam.BUSY
    assert str(err.value).startswith("picamera2: the camera is busy: another program")

    def broken() -> Any:
        raise RuntimeError("Camera __init__ sequence did not complete.\nmore detail")

    with pytest.raises(SourceError) as err:
        PicameraSource(camera_settings(), factory=broken).open()
    assert str(err.value) == "picamera2: Camera __init__ sequence did not complete."


def test_start_failure_releases_the_camera(stubs: types.ModuleType) -> None:
    fake = FakePicamera2(fail={"start_encoder": OSError(5, "Input/output error")})
    src, _ = open_source(fake)
    src.open()
    with pytest.raises(SourceError, match=r"^picamera2: \[Errno 5\] Input/output error$"):
        src.start(PacketRing(10 * US), _port_nowhere())
    assert fake.calls[-2:] == ["stop", "close"]


def test_open_without_picamera2(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _picamera2_modules():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "libcamera", None)
    with pytest.raises(SourceError) as err:
        PicameraSource(camera_settings(), factory=FakePicamera2).open()
    assert str(err.value).startswith("picamera2: not usable on this machine")
    assert "\n" not in str(err.value)


def test_stop_is_idempotent_and_tries_every_step(
    stubs: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    fake = FakePicamera2(fail={"stop_encoder": RuntimeError("boom"), "stop": OSError("gone")})
    src, _ = open_source(fake)
    src.open()
    src.start(PacketRing(10 * US), _port_nowhere())
    fake.calls.clear()
    with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
        src.stop()
        src.stop()
    assert fake.calls == ["stop_encoder", "stop", "close"]
    assert fake.post_callback is None
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == ["picamera2: stop_encoder failed: boom", "picamera2: stop failed: gone"]
    with pytest.raises(SourceError):
        src.capture_jpeg()


# -- analysis frames ------------------------------------------------------------------------


def test_analysis_frames_reach_the_loop(stubs: types.ModuleType) -> None:
    src, fake = open_source()
    src.open()
    frames: list[AnalysisFrame] = []
    handler_threads: set[int] = set()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        five = asyncio.Event()

        def handler(frame: AnalysisFrame) -> None:
            handler_threads.add(threading.get_ident())
            frames.append(frame)
            if len(frames) == 5:
                five.set()

        # lossless: every due frame is delivered, so the test knows exactly which ones.
        port = AnalysisPort(loop, handler, 5.0, US // FPS, True, lambda e: None)
        src.start(PacketRing(10 * US), port)
        thread = fake.run_camera(20)
        await asyncio.wait_for(five.wait(), 30)
        await asyncio.to_thread(join, thread)
        await flush_loop()
        src.stop()
        return port.dropped

    assert asyncio.run(main()) == 0
    # 20 fps analysed at 5 fps: frames 0, 4, 8, 12 and 16, stamped in microseconds.
    assert [f.ts for f in frames] == [T0_US + k * 200_000 for k in range(5)]
    for k, frame in enumerate(frames):
        assert frame.luma.dtype == np.uint8
        assert frame.luma.shape == (120, 160)
        assert frame.luma.flags.c_contiguous
        assert frame.luma.flags.owndata
        np.testing.assert_array_equal(frame.luma, lores_y(4 * k, 160, 120))
    assert handler_threads == {threading.get_ident()}, "handlers run on the loop"
    assert fake.callback_threads and threading.get_ident() not in fake.callback_threads


def test_camera_thread_never_waits_for_the_loop(stubs: types.ModuleType) -> None:
    src, fake = open_source()
    src.open()
    frames: list[AnalysisFrame] = []

    async def main() -> AnalysisPort:
        loop = asyncio.get_running_loop()
        port = AnalysisPort(loop, frames.append, 5.0, US // FPS, False, lambda e: None)
        src.start(PacketRing(10 * US), port)
        # Block the loop while the camera runs: a live camera must not wait for it.
        join(fake.run_camera(20))
        await flush_loop()
        src.stop()
        return port

    port = asyncio.run(main())
    assert [f.ts for f in frames] == [T0_US]
    assert port.delivered == 1
    assert port.dropped == 4


def test_callback_errors_are_contained(
    stubs: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    src, fake = open_source()
    src.open()

    class BrokenRequest:
        def get_metadata(self) -> dict[str, Any]:
            raise KeyError("SensorTimestamp")

    async def main() -> None:
        port = AnalysisPort(
            asyncio.get_running_loop(), lambda f: None, 5.0, US // FPS, False, lambda e: None
        )
        src.start(PacketRing(10 * US), port)
        assert fake.post_callback is not None
        with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
            for _ in range(3):
                fake.post_callback(BrokenRequest())  # must not raise
        src.stop()

    asyncio.run(main())
    lost = [r for r in caplog.records if "analysis frame lost" in r.getMessage()]
    assert len(lost) == 1, "one message per distinct error"


# -- the output -----------------------------------------------------------------------------


def test_output_is_a_real_picamera2_output_with_absolute_timestamps(
    stubs: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    from picamera2.outputs import Output

    src, fake = open_source()
    src.open()
    ring = PacketRing(60 * US)
    src.start(ring, _port_nowhere())
    encoder, output = fake.encoders[0]
    assert isinstance(output, Output)
    assert output.needs_pacing is False

    encoder.firsttimestamp = 5_000_000  # set by Encoder._timestamp on the first frame
    idr = b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x00\x01\x68\xce\x00\x00\x00\x01\x65\x88"
    output.outputframe(idr, True, 0)
    output.outputframe(b"\x00\x00\x00\x01\x41\x9a", False, 50_000, None, False)
    output.outputframe(None, True, 60_000, object(), True)  # audio: not ours
    with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
        output.outputframe(object(), False, 100_000)  # a broken frame must not raise
    packets, _ = ring.read(0)
    assert [(p.ts, p.keyframe) for p in packets] == [(5_000_000, True), (5_050_000, False)]
    assert packets[0].data == idr
    assert any("packet lost" in r.getMessage() for r in caplog.records)
    src.stop()


# -- end to end with the real libx264 encoder -----------------------------------------------


@pytest.mark.parametrize(
    ("profile", "profile_idc"),
    [("baseline", 66), ("constrained", 66), ("main", 77), ("extended", 77), ("high", 100)],
)
def test_end_to_end_with_the_real_libav_encoder(
    stubs: types.ModuleType, profile: str, profile_idc: int
) -> None:
    import picamera2.encoders

    frames = 30
    src, fake = open_source(encoding_profile=profile)
    info = src.open()
    ring = PacketRing(60 * US)
    analysed: list[AnalysisFrame] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        port = AnalysisPort(loop, analysed.append, 5.0, US // FPS, True, lambda e: None)
        src.start(ring, port)
        assert isinstance(fake.encoders[0][0], picamera2.encoders.LibavH264Encoder)
        await asyncio.to_thread(join, fake.run_camera(frames))
        await flush_loop()
        await asyncio.to_thread(src.stop)  # flushes the frames libx264 still holds

    asyncio.run(main())
    packets, _ = ring.read(0)

    # Every frame came out, stamped with its absolute sensor time.
    assert [p.ts for p in packets] == [T0_US + i * FRAME_NS // 1000 for i in range(frames)]
    # Analysis frames and packets share one clock.
    assert {f.ts for f in analysed} <= {p.ts for p in packets}
    assert len(analysed) == 8  # frames 0, 4, ..., 28

    keyframes = [i for i, p in enumerate(packets) if p.keyframe]
    assert keyframes[0] == 0
    assert len(keyframes) >= 3
    assert all(b - a <= 10 for a, b in zip(keyframes, [*keyframes[1:], frames], strict=True)), (
        "iperiod"
    )
    assert all(has_parameter_sets(packets[i].data) for i in keyframes), "repeat=True"
    assert sps(packets[0].data)[1] == profile_idc

    codec = av.CodecContext.create("h264", "r")
    decoded = []
    for p in packets:
        decoded += codec.decode(av.Packet(p.data))
    decoded += codec.decode(None)
    assert len(decoded) == frames
    assert {(f.width, f.height) for f in decoded} == {(info.width, info.height)} == {(320, 240)}
    # The encoder read the right memory: picture 7 looks like what the camera produced.
    y = decoded[7].to_ndarray(format="gray")
    diff = np.abs(y.astype(np.int16) - main_y(7, 320, 240).astype(np.int16))
    assert diff.mean() < 6


# -- stills ---------------------------------------------------------------------------------


def _still(src: PicameraSource, fake: FakePicamera2, first: int = 0) -> bytes:
    """capture_jpeg on a thread while the camera delivers frames."""
    result: list[bytes] = []
    thread = threading.Thread(target=lambda: result.append(src.capture_jpeg()), daemon=True)
    thread.start()
    # The camera runs until the still is taken (frames before the request are not it).
    i = first
    while thread.is_alive() and i < first + 2000:
        join(fake.run_camera(1, first=i))
        i += 1
        thread.join(0.01)
    join(thread)
    return result[0]


def levels() -> Callable[[int, int, int], np.ndarray]:
    """A main picture in limited range: left half video black (16), right half white (235)."""

    def picture(i: int, w: int, h: int) -> np.ndarray:
        y = np.full((h, w), 16, dtype=np.uint8)
        y[:, w // 2 :] = 235
        return y

    return picture


@pytest.mark.parametrize("sensor", ["imx219", "imx708"])
def test_still_is_full_range_and_takes_no_camera_request(
    stubs: types.ModuleType, sensor: str
) -> None:
    from PIL import Image

    fake = FakePicamera2(sensor=sensor)
    fake.main_picture = levels()
    src, _ = open_source(fake)
    src.open()
    src.start(PacketRing(10 * US), _port_nowhere())
    data = _still(src, fake)
    src.stop()
    assert "captured_request" not in fake.calls, "no job left queued in picamera2"
    assert "stop_encoder" in fake.calls and fake.calls.index("stop_encoder") > fake.calls.index(
        "start_encoder"
    )
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (320, 240)
        y = np.asarray(image.convert("L"))
    # Video black and white become JPEG's 0 and 255 (written as is they would be 16 and 235).
    assert y[:, 10:150].mean() < 3
    assert y[:, 170:310].mean() > 252


def test_still_of_a_full_range_camera_is_not_widened_twice(stubs: types.ModuleType) -> None:
    from PIL import Image

    fake = FakePicamera2()
    fake.main_picture = levels()
    src, _ = open_source(fake)
    src.open()
    fake.camera_config["colour_space"] = ColorSpace.Sycc()
    src._limited = picam._limited_range(ColorSpace.Sycc())
    src.start(PacketRing(10 * US), _port_nowhere())
    data = _still(src, fake)
    src.stop()
    with Image.open(io.BytesIO(data)) as image:
        y = np.asarray(image.convert("L"))
    assert abs(y[:, 10:150].mean() - 16) < 3
    assert abs(y[:, 170:310].mean() - 235) < 3


def test_capture_jpeg_errors(stubs: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(picam, "CAPTURE_TIMEOUT", 0.2)
    src, fake = open_source()
    with pytest.raises(SourceError, match="not running"):
        src.capture_jpeg()
    src.open()
    src.start(PacketRing(10 * US), _port_nowhere())
    # No frame comes: a one-line error, and nothing is left waiting for the camera thread.
    with pytest.raises(
        SourceError, match=r"^picamera2: still capture failed: no frame from the camera in 0 s$"
    ):
        src.capture_jpeg()
    assert src._still is None
    join(fake.run_camera(3))  # frames after the timeout go nowhere and are released
    monkeypatch.setattr(picam, "CAPTURE_TIMEOUT", 30.0)
    assert _still(src, fake, first=3)[:2] == b"\xff\xd8"
    src.stop()


# -- live view ------------------------------------------------------------------------------


class RecordingTap(LiveTap):
    """A live tap that also keeps every picture offered (a feed keeps only the newest)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop, 5)
        self.pictures: list[Picture] = []

    def offer(self, picture: Picture) -> None:
        self.pictures.append(picture)
        super().offer(picture)


@pytest.mark.parametrize(
    ("size", "stream"), [((160, 120), "lores"), ((320, 240), "main"), ((240, 180), "main")]
)
def test_live_yuv_comes_from_the_stream_of_the_live_size(
    stubs: types.ModuleType, monkeypatch: pytest.MonkeyPatch, size: tuple[int, int], stream: str
) -> None:
    monkeypatch.setattr(picam, "_hardware_jpeg", lambda: False)
    src, fake = open_source()  # main 320x240 with 64 bytes of row padding, lores 160x120 with 32
    src.open()

    async def main() -> list[Picture]:
        tap = RecordingTap(asyncio.get_running_loop())
        tap.reset(Resolution(*size), US // FPS)
        src.start(PacketRing(10 * US), _port_nowhere(), tap)
        assert tap.native_jpeg is False
        join(fake.run_camera(8))
        assert tap.pictures == [], "nothing is copied while nobody watches"
        feed = tap.subscribe(YUV420)
        join(fake.run_camera(20, first=8))
        feed.close()
        join(fake.run_camera(8, first=28))
        src.stop()
        return tap.pictures

    pictures = asyncio.run(main())
    frame_us = FRAME_NS // 1000
    # 20 fps camera, 5 fps live: every 4th frame while the feed was open.
    assert [p.ts for p in pictures] == [T0_US + i * frame_us for i in range(8, 28, 4)]
    w, h = (160, 120) if stream == "lores" else (320, 240)
    make_y = lores_y if stream == "lores" else main_y
    for p in pictures:
        assert p.kind == YUV420 and (p.width, p.height) == (w, h)
        assert p.data.shape == (h * 3 // 2, w) and p.data.flags.c_contiguous
        np.testing.assert_array_equal(p.data[:h], make_y((p.ts - T0_US) // frame_us, w, h))
        assert (p.data[h:] == 128).all(), "U and V planes, without the stride's padding"


def test_hardware_mjpeg_runs_beside_h264_while_someone_watches(
    stubs: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a Pi 0-4 the JPEGs come from picamera2's MJPEGEncoder, a second encoder on the
    stream of the live size, started for the first JPEG consumer and stopped after the last.
    Here the real LibavMjpegEncoder stands in for the V4L2 one (what picamera2 itself picks
    where there is no hardware encoder)."""
    import picamera2.encoders
    from PIL import Image

    class OneThreadMjpeg(picamera2.encoders.LibavMjpegEncoder):  # type: ignore[misc]
        """Without FFmpeg's frame threads. With them, freeing the codec (when the garbage
        collector gets to it, in some later test) deadlocks PyAV: a codec thread frees a
        queued frame that wraps a numpy buffer and needs the GIL, which the freeing thread
        holds while it waits for that codec thread (seen once in five full runs)."""

        def _start(self) -> None:
            super()._start()
            self._stream.codec_context.thread_count = 1  # the codec opens on the first frame

    monkeypatch.setattr(picam, "_hardware_jpeg", lambda: True)
    monkeypatch.setattr(picamera2.encoders, "MJPEGEncoder", OneThreadMjpeg)
    src, fake = open_source()
    src.open()
    ring = PacketRing(60 * US)

    async def main() -> list[Picture]:
        tap = RecordingTap(asyncio.get_running_loop())
        tap.reset(Resolution(320, 240), US // FPS)
        src.start(ring, _port_nowhere(), tap)
        assert tap.native_jpeg is True
        feed = tap.subscribe(live_tap.JPEG)
        join(fake.run_camera(1))  # the camera thread sees a JPEG consumer: encoder started
        await asyncio.to_thread(eventually, lambda: len(fake.encoders) == 2, 10, "MJPEG")
        mjpeg, _ = fake.encoders[1]
        assert isinstance(mjpeg, picamera2.encoders.LibavMjpegEncoder)
        assert (mjpeg.name, mjpeg.frame_skip_count) == ("main", 4)
        join(fake.run_camera(24, first=1))
        feed.close()
        join(fake.run_camera(1, first=25))  # nobody left: encoder stopped
        await asyncio.to_thread(
            eventually, lambda: fake.calls.count("stop_encoder") == 1, 10, "MJPEG stopped"
        )
        join(fake.run_camera(4, first=26))
        await asyncio.to_thread(src.stop)
        return tap.pictures

    pictures = asyncio.run(main())
    assert pictures and all(p.kind == live_tap.JPEG for p in pictures)
    frame_us = FRAME_NS // 1000
    steps = {b.ts - a.ts for a, b in itertools.pairwise(pictures)}
    assert steps == {4 * frame_us}, "one frame in four: the live rate"
    assert all((p.ts - T0_US) % frame_us == 0 and p.ts < T0_US + 26 * frame_us for p in pictures)
    for p in (pictures[0], pictures[-1]):
        with Image.open(io.BytesIO(p.data)) as image:
            assert image.format == "JPEG" and image.size == (320, 240) == (p.width, p.height)
    # H.264 went on for every frame: the recording never noticed.
    packets, _ = ring.read(0)
    assert len(packets) == 30
    assert fake.calls.count("stop_encoder") == 2  # the MJPEG one, then H.264 at stop


def test_no_hardware_jpeg_for_a_quarter_turn(
    stubs: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hardware encoder cannot turn a JPEG by 90 degrees: our encoder does it then."""
    monkeypatch.setattr(picam, "_hardware_jpeg", lambda: True)
    src, _ = open_source(rotation=90)

    async def main() -> bool:
        tap = LiveTap(asyncio.get_running_loop(), 5)
        tap.reset(Resolution(320, 240), US // FPS, rotation=src.open().rotation)
        src.start(PacketRing(10 * US), _port_nowhere(), tap)
        src.stop()
        return tap.native_jpeg

    assert asyncio.run(main()) is False


def test_a_failing_mjpeg_encoder_falls_back_to_software(
    stubs: types.ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import picamera2.encoders

    def broken() -> Any:
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(picam, "_hardware_jpeg", lambda: True)
    monkeypatch.setattr(picamera2.encoders, "MJPEGEncoder", broken)
    src, fake = open_source()
    src.open()

    async def main() -> LiveTap:
        tap = LiveTap(asyncio.get_running_loop(), 5)
        tap.reset(Resolution(320, 240), US // FPS)
        src.start(PacketRing(10 * US), _port_nowhere(), tap)
        feed = tap.subscribe(live_tap.JPEG)
        with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
            join(fake.run_camera(1))
            await asyncio.to_thread(eventually, lambda: not tap.native_jpeg, 10, "fallback")
        feed.close()
        src.stop()
        return tap

    asyncio.run(main())
    assert "MJPEG encoder failed ([Errno 16] Device or resource busy)" in caplog.text


# -- camera_present -------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("libcamera") is not None, reason="a Pi")
def test_camera_present_off_pi(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _picamera2_modules():
        monkeypatch.delitem(sys.modules, name)
    assert camera_present() is None


def test_camera_present_without_libcamera(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _picamera2_modules():
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "libcamera", None)  # import raises ImportError
    assert camera_present() is None


def test_camera_present_asks_libcamera(
    stubs: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from picamera2 import Picamera2

    listed: list[Any] = []
    monkeypatch.setattr(Picamera2, "global_camera_info", staticmethod(lambda: listed))
    assert camera_present() is False
    listed.append({"Model": "imx708", "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a", "Num": 0})
    assert camera_present() is True

    def broken() -> Any:
        raise RuntimeError("libcamera: no camera manager")

    monkeypatch.setattr(Picamera2, "global_camera_info", staticmethod(broken))
    assert camera_present() is False


def test_module_imports_nothing_from_picamera2() -> None:
    source = picam.__file__
    assert source is not None
    with open(source, encoding="utf-8") as fh:
        top_level = [
            line for line in fh if line.startswith(("import ", "from ")) and "picamera2" in line
        ]
    assert top_level == []


# -- what real Pis run (issue 20) -----------------------------------------------------------


def test_the_picamera2_under_test_is_supported(stubs: types.ModuleType) -> None:
    """Each picamera2 environment (tests/Makefile) runs this file; the version it holds is
    the one the daemon sees."""
    from importlib import metadata

    from pinthesky.camera import pi

    version = pi.picamera2_version()
    assert version == metadata.version("picamera2")
    assert pi.unsupported(version) is None


def test_pyav_at_import_is_said_for_the_versions_that_do_it(
    stubs: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    from pinthesky.camera import pi

    version = pi.picamera2_version()
    assert version is not None
    src, _ = open_source()
    with caplog.at_level(logging.INFO, logger="pinthesky.camera.picam"):
        src.open()
        src.stop()
    said = [r.getMessage() for r in caplog.records if "PyAV" in r.getMessage()]
    if pi.version_tuple(version) < (0, 3, 34):  # bench/picamera2_import.py measures it
        assert said == [
            f"picamera2 {version} loads PyAV (about 25 MB) on import; 0.3.34 or later does "
            f"not: {pi.UPGRADE_HINT}"
        ]
    else:
        assert said == []


@pytest.mark.parametrize("version", ["0.3.12", "0.3.19", "0.3.25", "0.3.29"])
def test_an_old_picamera2_is_refused_in_one_line(
    stubs: types.ModuleType, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    from pinthesky.camera import pi

    monkeypatch.setattr(pi, "picamera2_version", lambda: version)
    src, fake = open_source()
    with pytest.raises(SourceError) as err:
        src.open()
    message = str(err.value)
    assert message.startswith(f"picamera2 {version} is too old (pinthesky needs 0.3.30 or later)")
    assert "apt install python3-picamera2" in message and "\n" not in message
    assert fake.calls == [], "the camera is not touched"


@pytest.mark.parametrize(
    ("sensor", "size", "fps", "mode", "width_share"),
    [
        ("imx219", (640, 480), 20, ((1640, 1232), 10), "100%"),
        ("imx219", (1280, 720), 30, ((1640, 1232), 10), "100%"),
        ("imx708", (1536, 864), 100, ((1536, 864), 10), "67%"),
        ("imx219", (1920, 1080), 20, ((1640, 1232), 10), "100%"),
        ("imx219", (3280, 2464), 15, ((3280, 2464), 10), "100%"),
        ("imx219", (640, 480), 60, ((1640, 1232), 8), "100%"),
        ("imx708", (640, 480), 20, ((2304, 1296), 10), "100%"),
        ("imx708", (1920, 1080), 30, ((2304, 1296), 10), "100%"),
    ],
)
def test_the_full_field_sensor_mode_is_asked_for_and_logged(
    stubs: types.ModuleType,
    caplog: pytest.LogCaptureFixture,
    sensor: str,
    size: tuple[int, int],
    fps: int,
    mode: tuple[tuple[int, int], int],
    width_share: str,
) -> None:
    fake = FakePicamera2(sensor=sensor)
    src, _ = open_source(fake, resolution=Resolution(*size), framerate=fps)
    with caplog.at_level(logging.INFO, logger="pinthesky.camera.picam"):
        info = src.open()
    src.stop()
    assert fake.config_kwargs["sensor"] == {"output_size": mode[0], "bit_depth": mode[1]}
    assert info.framerate == fps
    logged = [r.getMessage() for r in caplog.records if " mode " in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].startswith(f"picamera2: {sensor} mode {mode[0][0]}x{mode[0][1]} {mode[1]}-bit")
    assert f"{width_share} of the sensor's width" in logged[0]


@pytest.mark.parametrize(
    ("sensor", "fps", "delivered"), [("imx219", 250, 206), ("imx708", 121, 120)]
)
def test_a_frame_rate_the_sensor_cannot_give_is_clamped_aloud(
    stubs: types.ModuleType,
    caplog: pytest.LogCaptureFixture,
    sensor: str,
    fps: int,
    delivered: int,
) -> None:
    """At full resolution only the slow full-sensor mode has the whole field: the rate the
    camera really delivers goes into StreamInfo, the FrameRate control and the keyframes."""
    fake = FakePicamera2(sensor=sensor)
    size = (3280, 2464) if sensor == "imx219" else (4608, 2592)
    src, _ = open_source(
        fake,
        resolution=Resolution(*size),
        lores=Resolution(320, 240),
        framerate=fps,
        keyframe_interval=0,
    )
    with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
        info = src.open()
    src.stop()
    assert info.framerate == Fraction(delivered)
    assert fake.config_kwargs["controls"] == {"FrameRate": delivered}
    assert src._encoder.framerate == delivered
    assert src._encoder.iperiod == delivered, "one keyframe a second at the delivered rate"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"recording at {delivered} fps, not {fps}" in m for m in warnings)


@pytest.mark.parametrize(
    ("model", "cma_mb", "size", "buffers"),
    [
        ("Raspberry Pi Zero W Rev 1.1", 64, (640, 480), 6),
        ("Raspberry Pi Zero W Rev 1.1", 64, (1920, 1080), 5),
        ("Raspberry Pi 4 Model B Rev 1.5", 512, (1920, 1080), 6),
    ],
)
def test_buffers_fit_the_camera_memory(
    stubs: types.ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
    model: str,
    cma_mb: int,
    size: tuple[int, int],
    buffers: int,
) -> None:
    from pinthesky.camera import pi

    (tmp_path / "model").write_bytes(model.encode() + b"\0")
    (tmp_path / "meminfo").write_text(f"MemTotal: 443000 kB\nCmaTotal: {cma_mb * 1024} kB\n")
    monkeypatch.setattr(pi, "MODEL_FILE", tmp_path / "model")
    monkeypatch.setattr(pi, "MEMINFO", tmp_path / "meminfo")
    fake = FakePicamera2()
    src, _ = open_source(fake, resolution=Resolution(*size), lores=Resolution(320, 240))
    with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
        src.open()
    src.stop()
    assert fake.config_kwargs["buffer_count"] == buffers
    reduced = [r.getMessage() for r in caplog.records if "buffers per stream" in r.getMessage()]
    assert len(reduced) == (buffers < 6)


def test_too_little_camera_memory_is_one_line(
    stubs: types.ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from pinthesky.camera import pi

    (tmp_path / "model").write_text("Raspberry Pi Zero W Rev 1.1")
    (tmp_path / "meminfo").write_text("CmaTotal: 40960 kB\n")
    monkeypatch.setattr(pi, "MODEL_FILE", tmp_path / "model")
    monkeypatch.setattr(pi, "MEMINFO", tmp_path / "meminfo")
    fake = FakePicamera2()
    src, _ = open_source(fake, resolution=Resolution(1920, 1080), lores=Resolution(320, 240))
    with pytest.raises(SourceError) as err:
        src.open()
    assert str(err.value).startswith("picamera2: 1920x1080 needs ")
    assert "this Pi has 40 MB (CMA)" in str(err.value)
    assert "configure" not in fake.calls
    assert fake.calls[-1] == "close", "the camera is released"


def test_only_the_timestamp_is_read_per_frame(
    stubs: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    from picamera2.request import CompletedRequest

    def everything(self: Any) -> dict[str, Any]:
        raise AssertionError("get_metadata converts every control: not per frame")

    monkeypatch.setattr(CompletedRequest, "get_metadata", everything)
    src, fake = open_source()
    src.open()
    frames: list[AnalysisFrame] = []

    async def main() -> None:
        port = AnalysisPort(
            asyncio.get_running_loop(), frames.append, 5.0, US // FPS, True, lambda e: None
        )
        src.start(PacketRing(10 * US), port)
        await asyncio.to_thread(join, fake.run_camera(8))
        await flush_loop()
        src.stop()

    asyncio.run(main())
    assert [f.ts for f in frames] == [T0_US, T0_US + 200_000]


def test_stop_is_bounded_on_a_wedged_camera(
    stubs: types.ModuleType, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(picam, "STOP_TIMEOUT", 0.3)
    wedge = threading.Event()
    fake = FakePicamera2()
    src, _ = open_source(fake)
    src.open()
    src.start(PacketRing(10 * US), _port_nowhere())
    monkeypatch.setattr(fake, "stop", lambda: wedge.wait(60))  # the camera thread never ends
    with caplog.at_level(logging.ERROR, logger="pinthesky.camera.picam"):
        stopper = threading.Thread(target=src.stop, daemon=True)
        stopper.start()
        stopper.join(30)
    wedge.set()
    assert not stopper.is_alive(), "stop() returned although the camera is wedged"
    assert "did not stop within 0 s" in caplog.text


def test_hardware_mjpeg_pictures_are_widened_to_full_range() -> None:
    """What the Pi 0-4 MJPEG encoder writes (limited-range samples in a JFIF file, made here
    by FFmpeg's mjpeg without conversion) decodes at full range once its tables are scaled."""
    from PIL import Image

    from pinthesky.camera import jpeg

    w, h = 320, 240
    y = np.full((h, w), 16, dtype=np.uint8)
    y[:, w // 2 :] = 235
    y[: h // 2, :] = 126  # mid-grey stays mid-grey
    chroma = np.full((h // 2, w // 2), 128, dtype=np.uint8)
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuvj420p"
    ctx.time_base = Fraction(1, 30)
    ctx.thread_count = 1
    frame = av.VideoFrame.from_ndarray(
        np.concatenate([y.reshape(-1), chroma.reshape(-1), chroma.reshape(-1)]).reshape(
            h * 3 // 2, w
        ),
        format="yuvj420p",
    )
    as_written = b"".join(bytes(p) for p in ctx.encode(frame)) + b"".join(
        bytes(p) for p in ctx.encode(None)
    )

    def lum(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("L")).astype(float)

    before, after = lum(as_written), lum(jpeg.widen_tables(as_written))
    bottom = slice(h // 2 + 8, h - 8)
    assert abs(before[bottom, 8:150].mean() - 16) < 3  # grey blacks as written
    assert after[bottom, 8:150].mean() < 3
    assert after[bottom, 170:312].mean() > 244  # within a few levels of 255 (see jpeg)
    assert abs(after[8 : h // 2 - 8, :].mean() - 126) < 4
    with pytest.raises(jpeg.JpegError):
        jpeg.widen_tables(b"not a jpeg")


def test_a_still_waiting_when_the_camera_stops_is_told_at_once(stubs: types.ModuleType) -> None:
    src, _ = open_source()
    src.open()
    src.start(PacketRing(10 * US), _port_nowhere())
    errors: list[str] = []

    def still() -> None:
        try:
            src.capture_jpeg()
        except SourceError as exc:
            errors.append(str(exc))

    waiter = threading.Thread(target=still, daemon=True)
    waiter.start()
    eventually(lambda: src._still is not None, 10, "the still waits")
    src.stop()
    join(waiter)  # well before CAPTURE_TIMEOUT would have run out
    assert errors == ["picamera2: still capture failed: the camera stopped"]


@pytest.mark.parametrize(
    ("model", "hardware"),
    [
        ("Raspberry Pi Zero W Rev 1.1", True),
        ("Raspberry Pi Zero 2 W Rev 1.0", True),
        ("Raspberry Pi 3 Model B Plus Rev 1.3", True),
        ("Raspberry Pi Compute Module 4 Rev 1.0", True),
        ("Raspberry Pi 4 Model B Rev 1.5", True),
        ("Raspberry Pi 5 Model B Rev 1.0", False),
        ("Raspberry Pi Compute Module 5 Rev 1.0", False),
        ("Raspberry Pi 500 Rev 1.0", False),
        (None, False),
    ],
)
def test_which_pis_encode_in_hardware(model: str | None, hardware: bool) -> None:
    from pinthesky.camera import pi

    assert pi.hardware_encoder(model) is hardware
    assert (pi.encoder_limit(model, 2592, 1944) is not None) is hardware
    assert pi.encoder_limit(model, 1920, 1080) is None


def test_versions_as_apt_and_pip_write_them() -> None:
    from pinthesky.camera import pi

    assert pi.version_tuple("0.3.30") == (0, 3, 30)
    assert pi.version_tuple("0.3.25-1+rpt1") == (0, 3, 25)
    assert pi.version_tuple("0.3.38~bookworm") == (0, 3, 38)
    assert pi.unsupported("0.3.30") is None and pi.unsupported(None) is None
    assert pi.unsupported("0.3.29") is not None


def test_still_encoder_without_simplejpeg_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from pinthesky.camera import jpeg

    y = np.full((16, 16), 16, dtype=np.uint8)
    c = np.full((8, 8), 128, dtype=np.uint8)
    assert jpeg.encode_i420(y, c, c, limited=True)[:2] == b"\xff\xd8"
    monkeypatch.setitem(sys.modules, "simplejpeg", None)
    with pytest.raises(jpeg.JpegError, match=r"^JPEG encoding needs simplejpeg"):
        jpeg.encode_i420(y, c, c, limited=True)
