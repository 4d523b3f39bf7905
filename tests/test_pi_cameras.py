"""Every Raspberry Pi with every camera module, on picamera2's own code.

The libcamera stand-in (``tests/pirig.py``) models each board's camera memory (64 MB of CMA on
a Pi Zero W and Zero 2 W, 256 MB on a Pi 3, 512 MB on a Pi 4, system memory on a Pi 5: an
allocation past it fails, libcamera's own buffers and the V4L2 encoders' included) and each
camera module's sensor modes, as the hardware reports them. picamera2 configures, allocates
and runs as it would on the Pi.

The matrix: every board with every camera module, at the default settings (640x480 at 20 fps)
and at 1080p30. Each cell either starts within the memory its board has, with the mode that
sees the widest field at that aspect ratio, delivering the rate asked for, or is refused in
one line when the change is checked against the attached camera, before the camera is
touched. The other tests take the camera's findings one by one.

This file runs under the oldest and the newest picamera2 pinthesky supports (tests/Makefile).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from fractions import Fraction
from typing import Any

import pytest
from conftest import eventually
from pirig import BOARDS, MB, SENSORS, Mode, PiRig, Sensor

from pinthesky.camera import picam
from pinthesky.camera.base import AnalysisPort
from pinthesky.camera.picam import PicameraSource
from pinthesky.errors import SourceError
from pinthesky.hardware import sensors
from pinthesky.live import tap as live_tap
from pinthesky.live.tap import LiveTap
from pinthesky.media import US
from pinthesky.record.ring import PacketRing
from pinthesky.settings import Resolution, Settings, defaults, live_size, merge

pytestmark = pytest.mark.filterwarnings("ignore:setDaemon\\(\\) is deprecated:DeprecationWarning")

SETTINGS = {"default": ("640x480", 20), "1080p": ("1920x1080", 30)}


def widest_field(sensor: Sensor, size: tuple[int, int], fps: float) -> float:
    """The widest field at ``size``'s aspect ratio among the modes the hardware reports that
    are fast enough: worked out from the rig's own facts, not pinthesky's tables."""
    fast = [m for m in sensor.modes if m.fps + 0.01 >= fps] or [
        max(sensor.modes, key=lambda m: m.fps)
    ]
    return max(_area(m, size, sensor.array) for m in fast)


def _area(mode: Mode, size: tuple[int, int], array: tuple[int, int]) -> float:
    _, _, cw, ch = mode.crop
    ow, oh = size
    fw, fh = (ch * ow / oh, ch) if cw * oh > ch * ow else (cw, cw * oh / ow)
    return (fw / array[0]) * (fh / array[1])


def nowhere(fps: int = 20) -> AnalysisPort:
    """A port whose loop is closed: frames go nowhere, as at daemon exit."""
    loop = asyncio.new_event_loop()
    loop.close()
    return AnalysisPort(loop, lambda f: None, 5.0, US // fps, False, lambda e: None)


def run_camera(rig: PiRig, settings: Settings, frames: int, watch: bool) -> dict[str, Any]:
    """Open, start with a live JPEG viewer when ``watch`` (the MJPEG encoder's memory counts),
    deliver ``frames`` frames; what happened."""
    src = PicameraSource(settings.camera)
    info = src.open()
    ring = PacketRing(60 * US)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        tap = LiveTap(loop, 5)
        tap.reset(live_size(settings.live, Resolution(info.width, info.height)), US // 20)
        port = AnalysisPort(loop, lambda f: None, 5.0, US // 20, False, lambda e: None)
        src.start(ring, port, tap)
        feed = tap.subscribe(live_tap.JPEG) if watch else None
        if feed is not None and tap.native_jpeg:
            rig.run(src, 1)
            await asyncio.to_thread(eventually, lambda: src._mjpeg is not None, 10, "MJPEG")
        await asyncio.to_thread(rig.run, src, frames)
        facts = {
            "info": info,
            "config": src._picam2.camera_configuration(),
            "kept": list(src._picam2.completed_requests),
            "duration": rig.camera.frame_duration_us(),
            "setup": src.setup,
            "attached": src.attached,
            "mjpeg": src._mjpeg is not None,
        }
        if feed is not None:
            feed.close()
        await asyncio.to_thread(src.stop)
        return facts

    facts = asyncio.run(main())
    facts["packets"] = len(ring.read(0)[0])
    return facts


@pytest.mark.parametrize("asked", list(SETTINGS))
@pytest.mark.parametrize("sensor", list(SENSORS))
@pytest.mark.parametrize("board", list(BOARDS))
def test_every_pi_with_every_camera_module(rig: PiRig, board: str, sensor: str, asked: str) -> None:
    rig.install(board, sensor)
    base = defaults()
    size, fps = SETTINGS[asked]
    # The camera opens at the defaults: then pinthesky knows the module attached.
    first = run_camera(rig, base, 5, watch=False)
    s, errors = merge(
        base, {"camera.resolution": size, "camera.framerate": fps}, "page", first["attached"]
    )
    if errors:
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert s.camera.resolution == base.camera.resolution, "the last good size is kept"
        assert rig.memory.failures == [], "refused before the camera was touched"
        return
    w, h = (int(v) for v in size.split("x"))
    facts = run_camera(rig, s, 20, watch=True)
    hw = rig.board
    assert hw is not None
    assert rig.memory.failures == [], "no allocation failed"
    assert rig.memory.peak <= hw.camera_memory
    setup = facts["setup"]
    assert rig.memory.peak <= setup.bytes, "the plan counted every buffer the camera allocated"
    assert facts["mjpeg"] is setup.live_encoder
    # The widest field the camera module can give at this aspect ratio and rate.
    chosen = facts["config"]["sensor"]
    mode = next(
        m
        for m in SENSORS[sensor].modes
        if m.size == tuple(chosen["output_size"]) and m.bits == chosen["bit_depth"]
    )
    widest = widest_field(SENSORS[sensor], (w, h), fps)
    assert _area(mode, (w, h), SENSORS[sensor].array) >= widest * (1 - sensors.FIELD_TOLERANCE)
    # The rate asked for, delivered, and every frame encoded.
    assert facts["info"].framerate == Fraction(fps)
    assert facts["duration"] == round(1e6 / fps)
    assert facts["packets"] >= 20
    assert facts["kept"] == [], "picamera2 keeps no frame back from the camera"
    assert setup.buffers >= 2 + 1 + int(setup.live_encoder)


def test_a_change_the_camera_memory_cannot_take_is_refused_in_one_line(rig: PiRig) -> None:
    """A Pi Zero W whose CMA is 48 MB (a smaller cma- setting) with the HQ Camera: 1080p does
    not fit even with the fewest buffers. The page's change is refused in one line before the
    camera is touched, and the camera goes on at its last good size."""
    small = dataclasses.replace(BOARDS["zero-w"], name="zero-w-48", cma=48 * MB)
    rig.install(small, "imx477")
    base = defaults()
    first = run_camera(rig, base, 5, watch=False)
    s, errors = merge(base, {"camera.resolution": "1920x1080"}, "page", first["attached"])
    assert errors == [
        "page camera.resolution = '1920x1080': 1920x1080 needs 36.1 MB of camera memory (CMA) even "
        "with 3 buffers, and the camera may use 36.0 MB here; lower camera.resolution or raise the "
        "CMA (dtoverlay=vc4-kms-v3d,cma-128 in /boot/firmware/config.txt)"
    ]
    assert s.camera.resolution == base.camera.resolution
    # At start-up (a config file), the same rule is one line from the camera.
    src = PicameraSource(dataclasses.replace(base.camera, resolution=Resolution(1920, 1080)))
    with pytest.raises(SourceError) as err:
        src.open()
    assert str(err.value).startswith("picamera2: 1920x1080 needs ")
    assert rig.memory.failures == [], "refused before anything was allocated"


# -- the findings, one by one ----------------------------------------------------------------


@pytest.mark.parametrize("sensor", ["imx708", "imx477", "imx500"])
def test_the_modes_are_known_without_sensor_modes(rig: PiRig, sensor: str) -> None:
    """picamera2's ``sensor_modes`` configures every mode at four full-size buffers: 62-76 MB
    for these cameras, past a 512 MB Pi's camera memory. pinthesky never calls it."""
    rig.install("zero-2-w", sensor)
    from picamera2 import Picamera2

    def forbidden(self: Any) -> Any:
        raise AssertionError("sensor_modes allocates four buffers of every mode")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Picamera2, "sensor_modes", property(forbidden))
        facts = run_camera(rig, defaults(), 5, watch=True)
    assert rig.memory.failures == []
    assert facts["config"]["sensor"]["output_size"] != (640, 480)
    assert facts["attached"].modes == tuple(
        sensors.SensorMode(m.size, m.bits, m.fps, m.crop) for m in SENSORS[sensor].modes
    )


IMX519 = Sensor(  # Arducam's 16 MP autofocus module: not one pinthesky knows
    "imx519",
    (4656, 3496),
    tuple(
        Mode(10, size, fps, crop)
        for size, fps, crop in (
            ((1280, 720), 80.01, (1048, 1042, 2560, 1440)),
            ((1920, 1080), 60.05, (408, 674, 3840, 2160)),
            ((2328, 1748), 30.0, (0, 0, 4656, 3496)),
            ((3840, 2160), 18.0, (408, 672, 3840, 2160)),
            ((4656, 3496), 9.0, (0, 0, 4656, 3496)),
        )
    ),
    autofocus=True,
)


def test_an_unknown_sensor_is_measured_at_one_small_buffer_once(
    rig: PiRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.install("zero-2-w", IMX519)
    with caplog.at_level(logging.INFO, logger="pinthesky.camera.picam"):
        facts = run_camera(rig, defaults(), 5, watch=False)
    measured = facts["attached"].modes
    assert measured == tuple(
        sensors.SensorMode(m.size, m.bits, round(m.fps, 2), m.crop) for m in IMX519.modes
    )
    assert "imx519 is not a camera module pinthesky knows: measuring its 5 modes" in caplog.text
    # One raw frame at a time: the largest raw frame, and little else.
    largest = max(m.size[0] * m.size[1] * 10 // 8 for m in IMX519.modes)
    configured = rig.camera.configured
    assert configured is not None
    assert rig.memory.peak < largest + 24 * MB, "the camera itself took the rest"
    assert facts["config"]["sensor"]["output_size"] == (2328, 1748), "full field, fast enough"
    # A reopen does not measure again.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pinthesky.camera.picam"):
        run_camera(rig, defaults(), 5, watch=False)
    assert "measuring" not in caplog.text


def test_a_pi5_plans_against_system_memory(rig: PiRig) -> None:
    """On a Pi 5 camera buffers are system memory (its CMA is 64 MB, for the display): 4K
    gets its six buffers instead of being refused."""
    rig.install("pi5", "imx708")
    base = defaults()
    first = run_camera(rig, base, 5, watch=False)
    s, errors = merge(
        base, {"camera.resolution": "3840x2160", "camera.framerate": 10}, "page", first["attached"]
    )
    assert errors == []
    facts = run_camera(rig, s, 10, watch=False)
    assert facts["setup"].buffers == 6
    assert facts["setup"].budget.where == "memory"
    assert rig.memory.peak > 64 * MB, "more than the Pi 5's whole CMA"
    assert facts["packets"] >= 10


@pytest.mark.parametrize(
    ("sensor", "size", "fps", "mode", "field"),
    [
        (
            "imx219",
            (640, 480),
            20,
            ((1640, 1232), 10),
            "100% of the sensor's width, 100% of its height",
        ),
        (
            "imx219",
            (1280, 720),
            30,
            ((1640, 1232), 10),
            "100% of the sensor's width, 75% of its height",
        ),
        (
            "imx708",
            (1536, 864),
            100,
            ((1536, 864), 10),
            "67% of the sensor's width, 67% of its height",
        ),
        (
            "imx219",
            (3280, 2464),
            15,
            ((3280, 2464), 10),
            "100% of the sensor's width, 100% of its height",
        ),
        (
            "imx219",
            (640, 480),
            60,
            ((1640, 1232), 8),
            "100% of the sensor's width, 100% of its height",
        ),
        (
            "imx708",
            (640, 480),
            20,
            ((2304, 1296), 10),
            "75% of the sensor's width, 100% of its height",
        ),
        (
            "imx708",
            (1920, 1080),
            30,
            ((2304, 1296), 10),
            "100% of the sensor's width, 100% of its height",
        ),
        (
            "imx477",
            (1920, 1080),
            30,
            ((2028, 1080), 12),
            "95% of the sensor's width, 71% of its height",
        ),
    ],
)
def test_the_widest_field_is_asked_for_and_logged_as_seen(
    rig: PiRig,
    caplog: pytest.LogCaptureFixture,
    sensor: str,
    size: tuple[int, int],
    fps: int,
    mode: tuple[tuple[int, int], int],
    field: str,
) -> None:
    """The field is what is left once the ISP crops the mode to the video's aspect ratio: a
    4:3 video from the Camera Module 3's 16:9 modes sees 75 % of its width."""
    rig.install("pi4", sensor)
    s = dataclasses.replace(
        defaults().camera, resolution=Resolution(*size), framerate=fps, lores=Resolution(320, 240)
    )
    src = PicameraSource(s)
    with caplog.at_level(logging.INFO, logger="pinthesky.camera.picam"):
        info = src.open()
    config = src._picam2.camera_configuration()
    src.stop()
    assert config["sensor"] == {"output_size": mode[0], "bit_depth": mode[1]}
    assert info.framerate == fps
    logged = [r.getMessage() for r in caplog.records if " mode " in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].startswith(f"picamera2: {sensor} mode {mode[0][0]}x{mode[0][1]} {mode[1]}-bit")
    assert field in logged[0]


@pytest.mark.parametrize(
    ("sensor", "fps", "delivered"), [("imx219", 250, 206), ("imx708", 121, 120)]
)
def test_a_frame_rate_the_sensor_cannot_give_is_clamped_aloud(
    rig: PiRig, caplog: pytest.LogCaptureFixture, sensor: str, fps: int, delivered: int
) -> None:
    """At full resolution only the slow full-sensor mode has the whole field: the rate the
    camera really delivers goes into StreamInfo, the frame duration and the keyframes."""
    rig.install("pi4", sensor)
    size = (3280, 2464) if sensor == "imx219" else (4608, 2592)
    s = dataclasses.replace(
        defaults().camera,
        resolution=Resolution(*size),
        lores=Resolution(320, 240),
        framerate=fps,
        keyframe_interval=0,
    )
    src = PicameraSource(s)
    with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
        info = src.open()
    src.start(PacketRing(10 * US), nowhere(fps))
    rig.run(src, 3)
    duration = rig.camera.frame_duration_us()
    src.stop()
    assert info.framerate == Fraction(delivered)
    assert duration == round(1e6 / delivered)
    assert src._encoder.framerate == delivered
    assert src._encoder.iperiod == delivered, "one keyframe a second at the delivered rate"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"recording at {delivered} fps, not {fps}" in m for m in warnings)


def test_memory_planned_from_what_picamera2_made(
    rig: PiRig, caplog: pytest.LogCaptureFixture
) -> None:
    """A driver whose raw frames are larger than pinthesky's estimate: the buffers are counted
    again from picamera2's configuration, and lowered to fit."""
    rig.install("zero-2-w", "imx708")
    from pinthesky.hardware import memory

    real = memory.raw_bytes
    with pytest.MonkeyPatch.context() as mp:  # pinthesky underestimates raw frames by half
        mp.setattr(memory, "raw_bytes", lambda *a: real(*a) // 2)
        with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
            facts = run_camera(
                rig,
                dataclasses.replace(
                    defaults(),
                    camera=dataclasses.replace(defaults().camera, resolution=Resolution(1280, 720)),
                ),
                5,
                watch=True,
            )
    assert "the configuration picamera2 made takes" in caplog.text
    assert facts["config"]["buffer_count"] == facts["setup"].buffers
    assert rig.memory.failures == []
    assert rig.memory.peak <= facts["setup"].bytes


def test_no_frame_is_dropped_at_the_fewest_buffers(rig: PiRig) -> None:
    """At the fewest buffers the plan allows (each encoder holds a frame, the sensor fills one,
    picamera2 hands one to the callback), a camera run at its real rate drops nothing."""
    rig.install("zero-2-w", "imx708")
    s = dataclasses.replace(
        defaults().camera,
        resolution=Resolution(1920, 1080),
        framerate=30,
        lores=Resolution(320, 240),
    )
    src = PicameraSource(s)
    src.open()
    assert src.setup is not None and src.setup.buffers == 4
    port = nowhere(30)
    src.start(PacketRing(10 * US), port)
    rig.run(src, 3)
    delivered = rig.camera.deliver(45, wait=0, realtime=True)
    src.stop()
    assert delivered == 45, f"{45 - delivered} frames dropped"


# -- focus, tuning, night --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("focus", "controls"),
    [("continuous", {"AfMode": 2}), (2.0, {"AfMode": 0, "LensPosition": 2.0}), ("default", {})],
)
def test_focus_of_a_camera_module_3(rig: PiRig, focus: Any, controls: dict[str, Any]) -> None:
    rig.install("pi4", "imx708_wide")
    settings = dataclasses.replace(
        defaults(), camera=dataclasses.replace(defaults().camera, focus=focus)
    )
    run_camera(rig, settings, 3, watch=False)
    applied = {k: v for k, v in rig.camera.applied.items() if k in ("AfMode", "LensPosition")}
    assert applied == controls


def test_focus_on_a_fixed_focus_camera_is_refused_or_left(
    rig: PiRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.install("pi4", "imx219")
    base = defaults()
    first = run_camera(rig, base, 3, watch=False)
    _, errors = merge(base, {"camera.focus": "continuous"}, "page", first["attached"])
    assert errors == [
        "page camera.focus = continuous: the imx219 has a fixed-focus lens; use default"
    ]
    _, errors = merge(base, {"camera.focus": 40}, "page", first["attached"])
    assert len(errors) == 1 and "lens position in dioptres from 0" in errors[0]
    # From the config file at start-up: said once, and not applied (the camera runs).
    settings = dataclasses.replace(base, camera=dataclasses.replace(base.camera, focus=1.5))
    with caplog.at_level(logging.WARNING, logger="pinthesky.camera.picam"):
        run_camera(rig, settings, 3, watch=False)
    assert (
        "camera.focus = 1.5: the imx219 has a fixed-focus lens; use default; not applied"
        in caplog.text
    )
    assert "AfMode" not in rig.camera.applied


def test_a_noir_tuning_file_reaches_libcamera(rig: PiRig) -> None:
    """libcamera reads the tuning file when its camera manager starts: listing the cameras
    first (as the daemon does) must not leave it on the default tuning."""
    rig.install("pi4", "imx219")
    picam.camera_present()
    s = defaults()
    settings = dataclasses.replace(
        s, camera=dataclasses.replace(s.camera, tuning="imx219_noir.json")
    )
    run_camera(rig, settings, 3, watch=False)
    assert rig.camera.tuning is not None and rig.camera.tuning["standin"] == "imx219_noir"
    run_camera(rig, s, 3, watch=False)
    assert rig.camera.tuning is None, "back to the module's own"


def test_a_tuning_file_for_another_sensor_is_refused(rig: PiRig) -> None:
    rig.install("pi4", "imx708")
    base = defaults()
    first = run_camera(rig, base, 3, watch=False)
    _, errors = merge(base, {"camera.tuning": "imx219_noir.json"}, "page", first["attached"])
    assert errors == [
        "page camera.tuning = 'imx219_noir.json': "
        "imx219_noir.json is not a tuning file for the imx708"
    ]
    _, errors = merge(base, {"camera.tuning": "imx708_nothing.json"}, "page", first["attached"])
    assert len(errors) == 1 and "no tuning file imx708_nothing.json in" in errors[0]
    src = PicameraSource(dataclasses.replace(base.camera, tuning="imx219_noir.json"))
    with pytest.raises(SourceError, match="is not a tuning file for the imx708"):
        src.open()


def test_nights_take_longer_exposures_when_allowed(rig: PiRig) -> None:
    """A dark scene needs 150 ms of exposure. At a fixed 20 fps the exposure stops at 50 ms
    (dark footage); with min_framerate 5 the camera slows down and exposes it fully. The clips
    follow the sensor's timestamps, so the slower frames are timed exactly."""
    rig.install("pi4", "imx708")
    base = defaults()
    results = {}
    for slowest in (None, 5.0):
        settings = dataclasses.replace(
            base, camera=dataclasses.replace(base.camera, min_framerate=slowest)
        )
        src = PicameraSource(settings.camera)
        src.open()
        rig.camera.exposure_needed = 150_000
        src.start(PacketRing(10 * US), nowhere(20))
        rig.run(src, 5)
        results[slowest] = (
            rig.camera.applied["FrameDurationLimits"],
            rig.camera.frame_duration_us(),
        )
        src.stop()
    assert results[None] == ((50_000, 50_000), 50_000)
    assert results[5.0] == ((50_000, 200_000), 150_000)


def test_the_owners_script_runs_on_the_stand_in(
    rig: PiRig, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/on_a_pi.py is for a real Pi; here it runs on a free-running stand-in camera, so
    that what an owner runs works."""
    import argparse
    import runpy

    from conftest import REPO
    from PIL import Image

    rig.install("zero-2-w", "imx708", free_running=True)
    script = runpy.run_path(str(REPO / "bench" / "on_a_pi.py"))
    still = tmp_path / "still.jpg"
    args = argparse.Namespace(
        resolution="1280x720", framerate=20, rotation=90, seconds=2.0, still=str(still)
    )
    assert script["run"](args) == 0
    out = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert out["camera"] == "imx708"
    assert out["buffers"] == "4" and out["live_jpeg_in_hardware"] == "True"
    assert abs(float(out["framerate_delivered"]) - 20) < 0.5
    assert out["frames_dropped"] == "0"
    with Image.open(still) as image:
        assert image.size == (720, 1280)
