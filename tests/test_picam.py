"""PicameraSource on picamera2's own code, against a libcamera that behaves like a Pi's.

picamera2 is pip-installed here but cannot import off a Pi (no ``libcamera``, no ``pykms``).
The ``rig`` fixture (``tests/pirig.py``) puts the libcamera stand-in (``tests/standin``) in
their place: ``Picamera2()``, its configuration and allocation, its camera thread and
``process_requests``, ``CompletedRequest``, ``MappedArray``, ``Output`` and its encoders all
run unchanged, on a modelled board and camera module whose frames are delivered on demand
(``rig.run``). On a Pi 0-4 the V4L2 encoders are stood in for by picamera2's libav ones (there
is no ``/dev/video11``), their constructors still called; on a Pi 5 picamera2's own
``H264Encoder`` is libx264.

This file runs under the oldest and the newest picamera2 pinthesky supports (tests/Makefile).
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import gc
import io
import itertools
import logging
import sys
import threading
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from conftest import eventually
from pirig import PiRig

from pinthesky.camera import picam, stack
from pinthesky.camera.base import AnalysisPort
from pinthesky.camera.picam import PicameraSource, camera_present
from pinthesky.errors import SourceError
from pinthesky.live import tap as live_tap
from pinthesky.live.tap import YUV420, LiveTap, Picture
from pinthesky.media import US, AnalysisFrame, has_parameter_sets, nal_type, split_annexb
from pinthesky.record.ring import PacketRing
from pinthesky.settings import CameraSettings, Resolution, defaults

pytestmark = pytest.mark.filterwarnings(
    # picamera2's own threads still use the spelling Python 3.10 deprecated.
    "ignore:setDaemon\\(\\) is deprecated:DeprecationWarning"
)

FPS = 20
FRAME_US = US // FPS


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
    rig: PiRig, board: str = "pi4", sensor: str | None = "imx219", **changes: Any
) -> PicameraSource:
    if rig.board is None:
        rig.install(board, sensor)
    return PicameraSource(camera_settings(**changes))


def frames_of(rig: PiRig) -> list[int]:
    """Sensor time (microseconds) of every frame the camera delivered, as the encoders and
    the callback round it."""
    return [int(ns / 1000) for ns in rig.camera.timestamps]


def _port_nowhere() -> AnalysisPort:
    loop = asyncio.new_event_loop()
    loop.close()  # submit() on a closed loop is a no-op, as at daemon exit
    return AnalysisPort(loop, lambda f: None, 5.0, FRAME_US, False, lambda e: None)


async def flush_loop() -> None:
    """Run every callback already queued on the loop (FIFO) before returning."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_soon(done.set_result, None)
    await asyncio.wait_for(done, 5)


def sps(data: bytes) -> bytes:
    return next(u for u in split_annexb(data) if nal_type(u) == 7)


def picture_of(stream: str, frame: int, w: int, h: int) -> np.ndarray:
    from libcamera import default_picture

    y: np.ndarray = default_picture(stream, frame, w, h)
    return y


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(("rotation", "info_rotation"), [(0, 0), (90, 90), (180, 0), (270, 270)])
def test_configuration(
    rig: PiRig, rotation: int, info_rotation: int, caplog: pytest.LogCaptureFixture
) -> None:
    src = open_source(rig, rotation=rotation, resolution=Resolution(640, 480))
    with caplog.at_level(logging.DEBUG, logger="pinthesky.camera.picam"):
        info = src.open()
        config = src._picam2.camera_configuration()
        queue = src._picam2._max_queue_len
        src.stop()
        src.open()  # a reopen (retry) must not repeat the one-time messages
        src.stop()
    assert config["main"]["size"] == (640, 480) and config["main"]["format"] == "YUV420"
    assert config["lores"]["size"] == (160, 120) and config["lores"]["format"] == "YUV420"
    assert config["controls"]["FrameRate"] == FPS
    assert config["encode"] == "main"
    assert config["queue"] is False and queue == 0, "picamera2 keeps no frame from the camera"
    transform = config["transform"]
    assert (bool(transform.hflip), bool(transform.vflip)) == (
        (True, True) if rotation == 180 else (False, False)
    )
    assert info.width == 640
    assert info.height == 480
    assert info.framerate == Fraction(FPS)
    assert isinstance(info.framerate, Fraction)
    assert info.rotation == info_rotation
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
@pytest.mark.parametrize("board", ["pi4", "pi5"])
def test_encoder_settings(
    rig: PiRig, board: str, name: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    src = open_source(rig, board, encoding_profile=name, encoding_bitrate=3_000_000)
    with caplog.at_level(logging.INFO, logger="pinthesky.camera.picam"):
        src.open()
        src.start(PacketRing(10 * US), _port_nowhere())
        encoders = list(src._picam2._encoders)
        encoder = src._encoder
        src.stop()
        src.open()
        src.stop()
    assert encoders == [encoder]
    # On a Pi 0-4 the V4L2 encoder's own constructor took the same call (``v4l2``).
    for made in [encoder] + ([encoder.v4l2] if board == "pi4" else []):
        assert made.profile == expected
        assert made.bitrate == 3_000_000
        assert made.repeat is True
        assert made.iperiod == 10
        assert made.framerate == FPS
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


def test_iperiod_defaults_to_the_framerate(rig: PiRig) -> None:
    src = open_source(rig, keyframe_interval=0, framerate=15)
    src.open()
    src.start(PacketRing(10 * US), _port_nowhere())
    src.stop()
    assert src._encoder.iperiod == 15


# -- errors ---------------------------------------------------------------------------------


def test_configure_failure_is_a_one_line_source_error(rig: PiRig) -> None:
    src = open_source(rig)
    rig.state.fail["configure"] = RuntimeError("Failed to configure: Invalid argument\ndetail")
    with pytest.raises(SourceError) as err:
        src.open()
    assert str(err.value) == "picamera2: Failed to configure: Invalid argument"
    assert not rig.camera.acquired, "a half-opened camera must be released"
    assert rig.memory.held() == 0
    src.stop()


# picamera2 leaves its notification pipe open when Picamera2() fails (no camera): its file
# object is collected later, which Python reports.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_factory_failures(rig: PiRig) -> None:
    rig.install("pi4", None)  # nothing on the camera connector
    with pytest.raises(SourceError, match=r"^picamera2: no camera detected$"):
        PicameraSource(camera_settings()).open()

    rig.install("pi4", "imx219")
    rig.state.fail["acquire"] = RuntimeError("Failed to acquire camera: Device or resource busy")
    with pytest.raises(SourceError) as err:
        PicameraSource(camera_settings()).open()
    assert str(err.value) == picam.BUSY
    assert str(err.value).startswith("picamera2: the camera is busy: another program")

    def broken(tuning: str | None) -> Any:
        raise RuntimeError("Camera __init__ sequence did not complete.\nmore detail")

    with pytest.raises(SourceError) as err:
        PicameraSource(camera_settings(), factory=broken).open()
    assert str(err.value) == "picamera2: Camera __init__ sequence did not complete."
    del err  # its traceback holds the half-made Picamera2 objects: they go now, here
    gc.collect()


def test_start_failure_releases_the_camera(rig: PiRig) -> None:
    src = open_source(rig)
    src.open()
    rig.state.fail["start"] = OSError(5, "Input/output error")
    with pytest.raises(SourceError, match=r"^picamera2: \[Errno 5\] Input/output error$"):
        src.start(PacketRing(10 * US), _port_nowhere())
    assert not rig.camera.acquired
    assert rig.memory.held() == 0, "every camera buffer is freed"


def test_a_picamera2_that_does_not_import_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed (its metadata is there) but broken: never "not a Pi"."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("picamera2", "libcamera")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "libcamera", None)
    monkeypatch.setattr(stack, "picamera2_version", lambda: "0.3.33")
    for attempt in (lambda: PicameraSource(camera_settings()).open(), camera_present):
        with pytest.raises(SourceError) as err:
            attempt()
        message = str(err.value)
        assert message.startswith("picamera2 0.3.33 is installed but does not import: ")
        assert "libcamera" in message and "\n" not in message


def test_stop_is_idempotent_and_tries_every_step(
    rig: PiRig, caplog: pytest.LogCaptureFixture
) -> None:
    src = open_source(rig)
    src.open()
    src.start(PacketRing(10 * US), _port_nowhere())

    def boom() -> None:
        raise RuntimeError("boom")

    src._encoder.stop = boom
    rig.state.fail["stop"] = OSError("gone")
    picam2 = src._picam2
    with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
        src.stop()
        src.stop()
    assert picam2.post_callback is None
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # picamera2's close() stops the camera again first: the camera really fails twice.
    assert messages == [
        "picamera2: stop_encoder failed: boom",
        "picamera2: stop failed: gone",
        "picamera2: close failed: gone",
    ]
    with pytest.raises(SourceError):
        src.capture_jpeg()
    rig.state.fail.clear()
    picam2.close()  # the camera works again: release it as the next start would


# -- analysis frames ------------------------------------------------------------------------


def test_analysis_frames_reach_the_loop(rig: PiRig) -> None:
    src = open_source(rig)
    src.open()
    frames: list[AnalysisFrame] = []
    handler_threads: set[int] = set()
    callback_threads: set[int] = set()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        five = asyncio.Event()

        def handler(frame: AnalysisFrame) -> None:
            handler_threads.add(threading.get_ident())
            frames.append(frame)
            if len(frames) == 5:
                five.set()

        # lossless: every due frame is delivered, so the test knows exactly which ones.
        port = AnalysisPort(loop, handler, 5.0, FRAME_US, True, lambda e: None)
        src.start(PacketRing(10 * US), port)
        callback = src._picam2.post_callback

        def spy(request: Any) -> None:
            callback_threads.add(threading.get_ident())
            callback(request)

        src._picam2.post_callback = spy
        runner = asyncio.ensure_future(asyncio.to_thread(rig.run, src, 20))
        await asyncio.wait_for(five.wait(), 30)
        await runner
        await flush_loop()
        src.stop()
        return port.dropped

    assert asyncio.run(main()) == 0
    # 20 fps analysed at 5 fps: frames 0, 4, 8, 12 and 16, stamped in microseconds.
    assert [f.ts for f in frames] == frames_of(rig)[0:20:4]
    for k, frame in enumerate(frames):
        assert frame.luma.dtype == np.uint8
        assert frame.luma.shape == (120, 160)
        assert frame.luma.flags.c_contiguous
        assert frame.luma.flags.owndata
        np.testing.assert_array_equal(frame.luma, picture_of("lores", 4 * k, 160, 120))
    assert handler_threads == {threading.get_ident()}, "handlers run on the loop"
    assert callback_threads and threading.get_ident() not in callback_threads


def test_camera_thread_never_waits_for_the_loop(rig: PiRig) -> None:
    src = open_source(rig)
    src.open()
    frames: list[AnalysisFrame] = []

    async def main() -> AnalysisPort:
        loop = asyncio.get_running_loop()
        port = AnalysisPort(loop, frames.append, 5.0, FRAME_US, False, lambda e: None)
        src.start(PacketRing(10 * US), port)
        # Block the loop while the camera runs: a live camera must not wait for it.
        rig.run(src, 20)
        await flush_loop()
        src.stop()
        return port

    port = asyncio.run(main())
    assert [f.ts for f in frames] == frames_of(rig)[:1]
    assert port.delivered == 1
    assert port.dropped == 4


def test_callback_errors_are_contained(rig: PiRig, caplog: pytest.LogCaptureFixture) -> None:
    src = open_source(rig)
    src.open()

    class BrokenRequest:
        @property
        def request(self) -> Any:
            raise KeyError("SensorTimestamp")

    async def main() -> None:
        port = AnalysisPort(
            asyncio.get_running_loop(), lambda f: None, 5.0, FRAME_US, False, lambda e: None
        )
        src.start(PacketRing(10 * US), port)
        callback = src._picam2.post_callback
        assert callback is not None
        with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
            for _ in range(3):
                callback(BrokenRequest())  # must not raise
        src.stop()

    asyncio.run(main())
    lost = [r for r in caplog.records if "analysis frame lost" in r.getMessage()]
    assert len(lost) == 1, "one message per distinct error"


# -- the output -----------------------------------------------------------------------------


def test_output_is_a_real_picamera2_output_with_absolute_timestamps(
    rig: PiRig, caplog: pytest.LogCaptureFixture
) -> None:
    src = open_source(rig)
    from picamera2.outputs import Output

    src.open()
    ring = PacketRing(60 * US)
    src.start(ring, _port_nowhere())
    encoder = src._encoder
    output = encoder.output  # the one output, as picamera2 gives it back
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
def test_end_to_end_with_the_pi5_encoder(rig: PiRig, profile: str, profile_idc: int) -> None:
    """On a Pi 5 picamera2's own H264Encoder is libx264 through PyAV: every frame it encodes
    lands in the ring, stamped with its sensor time."""
    frames = 30
    src = open_source(rig, "pi5", "imx708", encoding_profile=profile)
    import picamera2.encoders

    info = src.open()
    ring = PacketRing(60 * US)
    analysed: list[AnalysisFrame] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        port = AnalysisPort(loop, analysed.append, 5.0, FRAME_US, True, lambda e: None)
        src.start(ring, port)
        assert type(src._encoder) is picamera2.encoders.LibavH264Encoder
        await asyncio.to_thread(rig.run, src, frames)
        await flush_loop()
        await asyncio.to_thread(src.stop)  # flushes the frames libx264 still holds

    asyncio.run(main())
    packets, _ = ring.read(0)

    # Every frame came out, stamped with its absolute sensor time.
    assert [p.ts for p in packets] == frames_of(rig)
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
    # The encoder read the right memory: picture 7 looks like what the sensor produced.
    y = decoded[7].to_ndarray(format="gray")
    diff = np.abs(y.astype(np.int16) - picture_of("main", 7, 320, 240).astype(np.int16))
    assert diff.mean() < 6


# -- stills ---------------------------------------------------------------------------------


def _still(src: PicameraSource, rig: PiRig) -> bytes:
    """capture_jpeg on a thread while the camera delivers frames."""
    result: list[bytes] = []
    thread = threading.Thread(target=lambda: result.append(src.capture_jpeg()), daemon=True)
    thread.start()
    # The camera runs until the still is taken (frames before the request are not it).
    for _ in range(2000):
        if not thread.is_alive():
            break
        rig.run(src, 1)
        thread.join(0.01)
    thread.join(30)
    assert not thread.is_alive(), "the still never came"
    return result[0]


def levels(stream: str, frame: int, w: int, h: int) -> np.ndarray:
    """A picture in limited range: left half video black (16), right half white (235)."""
    y = np.full((h, w), 16, dtype=np.uint8)
    y[:, w // 2 :] = 235
    return y


@pytest.mark.parametrize("sensor", ["imx219", "imx708"])
def test_still_is_full_range_and_takes_no_camera_request(rig: PiRig, sensor: str) -> None:
    from PIL import Image

    src = open_source(rig, "pi4", sensor)
    src.open()
    rig.camera.picture = levels
    src.start(PacketRing(10 * US), _port_nowhere())
    data = _still(src, rig)
    assert src._picam2._job_list == [], "no job left queued in picamera2"
    src.stop()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (320, 240)
        y = np.asarray(image.convert("L"))
    # Video black and white become JPEG's 0 and 255 (written as is they would be 16 and 235).
    assert y[:, 10:150].mean() < 3
    assert y[:, 170:310].mean() > 252


@pytest.mark.parametrize(("rotation", "top"), [(90, "black"), (270, "white")])
def test_a_still_is_turned_as_the_clips_are_shown(rig: PiRig, rotation: int, top: str) -> None:
    """Turned clockwise by the rotation, like the clips (their display rotation) and live view:
    a camera mounted on its side gives an upright picture."""
    from PIL import Image

    src = open_source(rig, rotation=rotation)
    src.open()
    rig.camera.picture = levels  # black on the left, white on the right
    src.start(PacketRing(10 * US), _port_nowhere())
    data = _still(src, rig)
    src.stop()
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (240, 320), "portrait"
        y = np.asarray(image.convert("L")).astype(float)
    first, second = y[10:150].mean(), y[170:310].mean()
    assert (first < 3 and second > 252) if top == "black" else (first > 252 and second < 3)


def test_still_of_a_full_range_camera_is_not_widened_twice(rig: PiRig) -> None:
    from PIL import Image

    src = open_source(rig)
    src.open()
    rig.camera.picture = levels
    src._limited = False  # a camera configured full range (sYCC)
    src.start(PacketRing(10 * US), _port_nowhere())
    data = _still(src, rig)
    src.stop()
    with Image.open(io.BytesIO(data)) as image:
        y = np.asarray(image.convert("L"))
    assert abs(y[:, 10:150].mean() - 16) < 3
    assert abs(y[:, 170:310].mean() - 235) < 3


def test_capture_jpeg_errors(rig: PiRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(picam, "CAPTURE_TIMEOUT", 0.2)
    src = open_source(rig)
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
    rig.run(src, 3)  # frames after the timeout go nowhere and are released
    monkeypatch.setattr(picam, "CAPTURE_TIMEOUT", 30.0)
    assert _still(src, rig)[:2] == b"\xff\xd8"
    src.stop()


def test_a_still_waiting_when_the_camera_stops_is_told_at_once(rig: PiRig) -> None:
    src = open_source(rig)
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
    waiter.join(30)  # well before CAPTURE_TIMEOUT would have run out
    assert errors == ["picamera2: still capture failed: the camera stopped"]


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
    ("size", "stream", "step"),
    [
        ((160, 120), "lores", 1),
        ((320, 240), "main", 1),
        ((80, 60), "main", 4),
        ((240, 180), "main", 1),
    ],
)
def test_live_yuv_comes_from_the_stream_of_the_live_size(
    rig: PiRig, size: tuple[int, int], stream: str, step: int
) -> None:
    """From the stream of the live size, else every n-th pixel of main: never more than a
    live picture's worth copied on the camera thread (the worker scales the rest)."""
    src = open_source(rig, "pi5", "imx708")  # no hardware JPEG: YUV only
    src.open()

    async def main() -> list[Picture]:
        tap = RecordingTap(asyncio.get_running_loop())
        tap.reset(Resolution(*size), FRAME_US)
        src.start(PacketRing(10 * US), _port_nowhere(), tap)
        assert tap.native_jpeg is False
        rig.run(src, 8)
        assert tap.pictures == [], "nothing is copied while nobody watches"
        feed = tap.subscribe(YUV420)
        rig.run(src, 20)
        feed.close()
        rig.run(src, 8)
        src.stop()
        return tap.pictures

    pictures = asyncio.run(main())
    stamps = frames_of(rig)
    # 20 fps camera, 5 fps live: every 4th frame while the feed was open.
    assert [p.ts for p in pictures] == stamps[8:28:4]
    full = (160, 120) if stream == "lores" else (320, 240)
    w, h = full[0] // step, full[1] // step
    for p in pictures:
        assert p.kind == YUV420 and (p.width, p.height) == (w, h)
        assert p.data.shape == (h * 3 // 2, w) and p.data.flags.c_contiguous
        expected = picture_of(stream, stamps.index(p.ts), *full)[::step, ::step]
        np.testing.assert_array_equal(p.data[:h], expected)
        assert (p.data[h:] == 128).all(), "U and V planes, without the stride's padding"


def test_hardware_mjpeg_runs_beside_h264_while_someone_watches(rig: PiRig) -> None:
    """On a Pi 0-4 the JPEGs come from picamera2's MJPEGEncoder, a second encoder on the
    stream of the live size, started for the first JPEG consumer and stopped after the last.
    Its buffers are camera memory while it runs."""
    src = open_source(rig, "pi4")
    src.open()
    ring = PacketRing(60 * US)
    base = rig.memory.held()

    async def main() -> list[Picture]:
        tap = RecordingTap(asyncio.get_running_loop())
        tap.reset(Resolution(320, 240), FRAME_US)
        src.start(ring, _port_nowhere(), tap)
        assert tap.native_jpeg is True
        with_h264 = rig.memory.held()
        feed = tap.subscribe(live_tap.JPEG)
        rig.run(src, 1)  # the camera thread sees a JPEG consumer: encoder started
        await asyncio.to_thread(eventually, lambda: src._mjpeg is not None, 10, "MJPEG")
        mjpeg = src._mjpeg
        assert mjpeg in src._picam2._encoders
        assert (mjpeg.name, mjpeg.frame_skip_count) == ("main", 4)
        assert rig.memory.held() - with_h264 == 8 * 2**20, "the codec's capture buffers"
        rig.run(src, 24)
        feed.close()
        rig.run(src, 1)  # nobody left: encoder stopped
        await asyncio.to_thread(
            eventually, lambda: mjpeg not in src._picam2._encoders, 10, "MJPEG stopped"
        )
        rig.run(src, 4)
        await asyncio.to_thread(src.stop)
        return tap.pictures

    pictures = asyncio.run(main())
    stamps = frames_of(rig)
    assert pictures and all(p.kind == live_tap.JPEG for p in pictures)
    steps = {b.ts - a.ts for a, b in itertools.pairwise(pictures)}
    assert steps == {4 * FRAME_US}, "one frame in four: the live rate"
    assert all(p.ts in stamps[:26] for p in pictures)
    from PIL import Image

    for p in (pictures[0], pictures[-1]):
        with Image.open(io.BytesIO(p.data)) as image:
            assert image.format == "JPEG" and image.size == (320, 240) == (p.width, p.height)
    # H.264 went on for every frame: the recording never noticed.
    packets, _ = ring.read(0)
    assert len(packets) == 30
    assert rig.memory.held() == 0 and base > 0


def test_live_view_stays_on_the_hardware_above_640_wide(rig: PiRig) -> None:
    """At 1280x720 the live size is 640x360, which no stream has: the JPEGs come from the
    hardware encoder on main at its own size (the browser scales), and the YUV pictures are
    every other pixel of main; the camera thread never copies a whole 1280x720 frame."""
    src = open_source(rig, "pi4", resolution=Resolution(1280, 720), lores=Resolution(320, 240))
    src.open()

    async def main() -> list[Picture]:
        tap = RecordingTap(asyncio.get_running_loop())
        tap.reset(Resolution(640, 360), FRAME_US)
        src.start(PacketRing(10 * US), _port_nowhere(), tap)
        assert tap.native_jpeg is True
        jpegs, yuv = tap.subscribe(live_tap.JPEG), tap.subscribe(YUV420)
        rig.run(src, 1)
        await asyncio.to_thread(eventually, lambda: src._mjpeg is not None, 10, "MJPEG")
        rig.run(src, 12)
        jpegs.close()
        yuv.close()
        await asyncio.to_thread(src.stop)
        return tap.pictures

    pictures = asyncio.run(main())
    assert (src._jpeg_stream, src._live_stream, src._live_step) == ("main", "main", 2)
    jpeg = [p for p in pictures if p.kind == live_tap.JPEG]
    yuv = [p for p in pictures if p.kind == YUV420]
    assert jpeg and yuv
    assert {(p.width, p.height) for p in jpeg} == {(1280, 720)}
    assert {(p.width, p.height) for p in yuv} == {(640, 360)}
    stamps = frames_of(rig)
    for p in yuv:
        expected = picture_of("main", stamps.index(p.ts), 1280, 720)[::2, ::2]
        np.testing.assert_array_equal(p.data[:360], expected)


def test_no_hardware_jpeg_for_a_quarter_turn(rig: PiRig) -> None:
    """The hardware encoder cannot turn a JPEG by 90 degrees: our encoder does it then."""
    src = open_source(rig, "pi4", rotation=90)

    async def main() -> bool:
        tap = LiveTap(asyncio.get_running_loop(), 5)
        tap.reset(Resolution(320, 240), FRAME_US, rotation=src.open().rotation)
        src.start(PacketRing(10 * US), _port_nowhere(), tap)
        src.stop()
        return tap.native_jpeg

    assert asyncio.run(main()) is False


def test_a_failing_mjpeg_encoder_falls_back_to_software(
    rig: PiRig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = open_source(rig, "pi4")
    import picamera2.encoders

    def broken() -> Any:
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(picamera2.encoders, "MJPEGEncoder", broken)
    src.open()

    async def main() -> LiveTap:
        tap = LiveTap(asyncio.get_running_loop(), 5)
        tap.reset(Resolution(320, 240), FRAME_US)
        src.start(PacketRing(10 * US), _port_nowhere(), tap)
        feed = tap.subscribe(live_tap.JPEG)
        with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
            rig.run(src, 1)
            await asyncio.to_thread(eventually, lambda: not tap.native_jpeg, 10, "fallback")
        feed.close()
        src.stop()
        return tap

    asyncio.run(main())
    assert "MJPEG encoder failed ([Errno 16] Device or resource busy)" in caplog.text


# -- camera_present -------------------------------------------------------------------------


def test_camera_present_asks_libcamera(rig: PiRig, monkeypatch: pytest.MonkeyPatch) -> None:
    rig.install("pi4", None)
    assert camera_present() is False
    rig.install("pi4", "imx708")
    assert camera_present() is True
    from picamera2 import Picamera2

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


# -- what real Pis run ----------------------------------------------------------------------


def test_the_picamera2_under_test_is_supported(rig: PiRig) -> None:
    """Each picamera2 environment (tests/Makefile) runs this file; the version it holds is
    the one the daemon sees."""
    from importlib import metadata

    version = stack.picamera2_version()
    assert version == metadata.version("picamera2")
    assert stack.unsupported(version) is None


def test_pyav_at_import_is_said_for_the_versions_that_do_it(
    rig: PiRig, caplog: pytest.LogCaptureFixture
) -> None:
    version = stack.picamera2_version()
    assert version is not None
    src = open_source(rig)
    with caplog.at_level(logging.INFO, logger="pinthesky.camera.picam"):
        src.open()
        src.stop()
    said = [r.getMessage() for r in caplog.records if "PyAV" in r.getMessage()]
    if stack.version_tuple(version) < (0, 3, 34):  # bench/picamera2_import.py measures it
        assert said == [
            f"picamera2 {version} loads PyAV (about 25 MB) on import; 0.3.34 or later does "
            f"not: {stack.UPGRADE_HINT}"
        ]
    else:
        assert said == []


@pytest.mark.parametrize("version", ["0.3.12", "0.3.19", "0.3.25", "0.3.29"])
def test_an_old_picamera2_is_refused_in_one_line(
    rig: PiRig, monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(stack, "picamera2_version", lambda: version)
    src = open_source(rig)
    with pytest.raises(SourceError) as err:
        src.open()
    message = str(err.value)
    assert message.startswith(f"picamera2 {version} is too old (pinthesky needs 0.3.30 or later)")
    assert "apt install python3-picamera2" in message and "\n" not in message
    assert rig.state.managers == [], "the camera is not touched"


def test_only_the_timestamp_is_read_per_frame(rig: PiRig, monkeypatch: pytest.MonkeyPatch) -> None:
    src = open_source(rig)
    from picamera2.request import CompletedRequest

    def everything(self: Any) -> dict[str, Any]:
        raise AssertionError("get_metadata converts every control: not per frame")

    monkeypatch.setattr(CompletedRequest, "get_metadata", everything)
    src.open()
    frames: list[AnalysisFrame] = []

    async def main() -> None:
        port = AnalysisPort(
            asyncio.get_running_loop(), frames.append, 5.0, FRAME_US, True, lambda e: None
        )
        src.start(PacketRing(10 * US), port)
        await asyncio.to_thread(rig.run, src, 8)
        await flush_loop()
        src.stop()

    asyncio.run(main())
    assert [f.ts for f in frames] == frames_of(rig)[0:8:4]


def test_stop_is_bounded_on_a_wedged_camera(
    rig: PiRig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(picam, "STOP_TIMEOUT", 0.3)
    unregistered: list[Any] = []
    monkeypatch.setattr(atexit, "unregister", unregistered.append)
    wedge = threading.Event()
    src = open_source(rig)
    src.open()
    src.start(PacketRing(10 * US), _port_nowhere())
    picam2 = src._picam2
    rig.state.fail["stop"] = lambda: wedge.wait(60)  # the camera never stops
    with caplog.at_level(logging.ERROR, logger="pinthesky.camera.picam"):
        stopper = threading.Thread(target=src.stop, daemon=True)
        stopper.start()
        stopper.join(30)
    assert not stopper.is_alive(), "stop() returned although the camera is wedged"
    assert "did not stop within 0 s" in caplog.text
    # picamera2's own close() at exit would wait on the wedged camera again.
    assert picam2.close in unregistered
    wedge.set()  # the camera comes back: the stop left behind finishes and closes it
    eventually(lambda: not picam2.is_open, 10, "the camera closed")


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


def test_versions_as_apt_and_pip_write_them() -> None:
    assert stack.version_tuple("0.3.30") == (0, 3, 30)
    assert stack.version_tuple("0.3.25-1+rpt1") == (0, 3, 25)
    assert stack.version_tuple("0.3.38~bookworm") == (0, 3, 38)
    assert stack.unsupported("0.3.30") is None and stack.unsupported(None) is None
    assert stack.unsupported("0.3.29") is not None


def test_still_encoder_without_simplejpeg_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from pinthesky.camera import jpeg

    y = np.full((16, 16), 16, dtype=np.uint8)
    c = np.full((8, 8), 128, dtype=np.uint8)
    assert jpeg.encode_i420(y, c, c, limited=True)[:2] == b"\xff\xd8"
    monkeypatch.setitem(sys.modules, "simplejpeg", None)
    with pytest.raises(jpeg.JpegError, match=r"^JPEG encoding needs simplejpeg"):
        jpeg.encode_i420(y, c, c, limited=True)


# -- privacy masks and the timestamp ---------------------------------------------------------


@pytest.mark.parametrize("board", ["pi4", "pi5"])
def test_the_overlay_is_written_into_the_buffers_the_encoders_read(rig: PiRig, board: str) -> None:
    """picamera2's pre_callback burns the privacy mask and the timestamp into the camera's own
    buffers, before its encoders, our callback and the stills see them: the H.264 clip, the
    analysis frames (lores), live view and a still all carry the mask."""
    from pinthesky.camera.overlay import Overlay
    from pinthesky.settings import Rect

    settings = camera_settings(
        resolution=Resolution(640, 480),
        lores=Resolution(320, 240),
        privacy_masks=(Rect(64, 96, 160, 120),),
        timestamp="%H:%M:%S",
    )
    rig.install(board, "imx219")
    src = PicameraSource(settings)
    info = src.open()
    src.set_overlay(Overlay(settings, lambda ts: ts / US + 1_700_000_000, info.rotation))
    ring = PacketRing(60 * US)
    analysed: list[AnalysisFrame] = []

    async def main() -> tuple[list[Picture], bytes]:
        loop = asyncio.get_running_loop()
        tap = RecordingTap(loop)
        tap.reset(Resolution(640, 480), FRAME_US)
        port = AnalysisPort(loop, analysed.append, 5.0, FRAME_US, True, lambda e: None)
        src.start(ring, port, tap)
        feed = tap.subscribe(YUV420)
        await asyncio.to_thread(rig.run, src, 20)
        still = await asyncio.to_thread(_still, src, rig)
        feed.close()
        await flush_loop()
        await asyncio.to_thread(src.stop)
        return tap.pictures, still

    pictures, still = asyncio.run(main())
    packets, _ = ring.read(0)
    codec = av.CodecContext.create("h264", "r")
    decoded = []
    for p in packets:
        decoded += codec.decode(av.Packet(p.data))
    assert len(decoded) >= 20
    for frame in decoded:
        y = frame.to_ndarray()[:480]
        assert y[100:212, 68:220].max() <= 22, "the encoder read the masked buffer"
        assert y[300:400, 400:600].mean() > 60, "the rest is the picture"
        assert (y[:30, :200] >= 200).any(), "the timestamp's ink"
    for frame in analysed:
        assert frame.luma[49:107, 33:111].max() <= 16, "lores: masked before the analysis"
    assert pictures and all(
        (p.data[96:216, 64:224] == 16).all() for p in pictures if p.kind == YUV420
    )
    from PIL import Image

    with Image.open(io.BytesIO(still)) as image:
        grey = np.asarray(image.convert("L"))
    assert grey[100:212, 68:220].max() <= 12, "the still: black at full range"
