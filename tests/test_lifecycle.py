"""Start, stop, crash and recover: the daemon as systemd and a power cut treat it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import pytest
from conftest import REPO, clip_facts, settings_for, until

from pinthesky.camera.base import AnalysisPort
from pinthesky.daemon import app as daemon_module
from pinthesky.daemon.app import Daemon
from pinthesky.media import StreamInfo
from pinthesky.record.bus import ClipReady
from pinthesky.record.ring import PacketRing


def spawn(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pinthesky", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> str:
    """Read the daemon's log until a line contains ``needle`` (a watchdog kills a hang)."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if needle in line:
                return line
    finally:
        timer.cancel()
    raise AssertionError(f"the daemon never logged {needle!r} (exit {proc.poll()})")


def replay_args(video: Path, clips: Path, speed: str) -> list[str]:
    return [
        "--source",
        str(video),
        "--replay-speed",
        speed,
        "--pre-roll",
        "3",
        "--post-roll",
        "4",
        "--combine-dir",
        str(clips),
    ]


def test_kill_9_mid_clip_leaves_no_truncated_clip_and_is_salvaged(footage, tmp_path):
    clips = tmp_path / "clips"
    video = footage.scenario("walkers").path
    with spawn(*replay_args(video, clips, "2"), cwd=tmp_path) as proc:
        wait_for_line(proc, "recording motion clip")
        # Let the clip grow for a few keyframes (the daemon must still be running then).
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    partials = list(clips.glob(".*.partial"))
    assert len(partials) == 1 and partials[0].stat().st_size > 0
    for final in clips.glob("*.motion.mp4"):  # anything under a final name is whole
        assert clip_facts(final).frames > 0

    # The next start salvages the partial clip into a playable one.
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "pinthesky",
            "--source",
            "synthetic",
            "--combine-dir",
            str(clips),
            "--validate-config",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.returncode == 0  # validating never touches the clips
    assert list(clips.glob(".*.partial")) == partials
    with spawn(*replay_args(footage.scenario("lights").path, clips, "0"), cwd=tmp_path) as proc:
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "salvaged" in err
    assert not list(clips.glob(".*.partial"))
    (salvaged,) = clips.glob("*.motion.mp4")
    facts = clip_facts(salvaged)
    assert facts.first_keyframe and facts.frames >= 20  # at least two seconds at 10 fps


def test_sigterm_mid_clip_finishes_a_playable_clip_and_exits_0(footage, tmp_path):
    clips = tmp_path / "clips"
    with spawn(*replay_args(footage.scenario("walkers").path, clips, "2"), cwd=tmp_path) as proc:
        wait_for_line(proc, "recording motion clip")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    (clip,) = clips.glob("*.motion.mp4")
    facts = clip_facts(clip)
    assert facts.first_keyframe and facts.frames >= 30  # the pre-roll at least
    assert not list(clips.glob(".*.partial"))


def test_sigint_on_the_synthetic_scene_exits_0_within_5_s(tmp_path):
    with spawn("--source", "synthetic", "--combine-dir", str(tmp_path / "c"), cwd=tmp_path) as proc:
        wait_for_line(proc, "first frame buffered")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0


class FailingCamera:
    """Delivers a few frames, then its thread dies, like a camera losing its ribbon."""

    name = "fake"

    def __init__(self, packets: int = 3, fail: bool = True) -> None:
        self.packets = packets
        self.fail = fail
        self.stopped = False

    def open(self) -> StreamInfo:
        return StreamInfo(640, 480, Fraction(20))

    def start(self, ring: PacketRing, port: AnalysisPort, live: object = None) -> None:
        def run() -> None:
            for i in range(self.packets):
                ring.outputframe(b"\x00\x00\x00\x01\x65", keyframe=True, timestamp=i * 50_000)
            if self.fail:
                port.failed(OSError("Dequeue timer of 1000000.00us has expired!"))

        threading.Thread(target=run, daemon=True).start()

    def stop(self) -> None:
        self.stopped = True

    def capture_jpeg(self) -> bytes:
        return b""

    def set_overlay(self, overlay: object) -> None:
        pass


def test_a_dying_camera_exits_non_zero(tmp_path):
    camera = FailingCamera()
    daemon = Daemon(settings_for(tmp_path), camera=camera)
    assert asyncio.run(asyncio.wait_for(daemon.run(), 10)) == 1
    assert camera.stopped


def test_a_stalled_camera_exits_non_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(daemon_module, "STALL_SECONDS", 1.5)
    camera = FailingCamera(fail=False)
    daemon = Daemon(settings_for(tmp_path), camera=camera)
    assert asyncio.run(asyncio.wait_for(daemon.run(), 10)) == 1


def test_manual_capture_and_still_while_running(tmp_path):
    async def main() -> None:
        daemon = Daemon(settings_for(tmp_path, **{"source.source": "synthetic"}))
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.first_frame.wait(), 10)
        assert daemon.recorder is not None and daemon.camera is not None
        clip = await asyncio.wait_for(daemon.recorder.capture(1.0), 15)
        assert clip is not None and clip.trigger == "manual"
        assert clip.duration >= 1.0
        facts = clip_facts(clip.path)
        assert facts.first_keyframe and facts.frames == clip.packets
        jpeg = await asyncio.to_thread(daemon.camera.capture_jpeg)
        assert jpeg[:2] == b"\xff\xd8"
        still = tmp_path / "still.jpg"
        still.write_bytes(jpeg)
        with av.open(str(still)) as c:
            frame = next(c.decode(video=0))
            assert (frame.width, frame.height) == (640, 480)
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(main())


def test_auto_source_never_falls_back_silently_where_picamera2_is_installed(tmp_path, monkeypatch):
    """Only a machine without picamera2 at all films the synthetic scene; where picamera2 is
    installed, a missing camera, a version too old or a broken install stops the daemon in
    one line."""
    from pinthesky.camera import make_camera, picam, stack
    from pinthesky.errors import SourceError

    settings = settings_for(tmp_path)
    monkeypatch.setattr(stack, "picamera2_version", lambda: None)  # not installed here
    assert make_camera(settings).name == "synthetic"
    monkeypatch.setattr(stack, "picamera2_version", lambda: "0.3.38")
    monkeypatch.setattr(picam, "camera_present", lambda: False)  # picamera2 here, no camera
    with pytest.raises(SourceError, match="no camera detected"):
        make_camera(settings)
    monkeypatch.setattr(picam, "camera_present", lambda: True)
    assert make_camera(settings).name == "picamera2"

    def never() -> bool:
        raise AssertionError("a picamera2 too old is refused before it is imported")

    monkeypatch.setattr(stack, "picamera2_version", lambda: "0.3.29")
    monkeypatch.setattr(picam, "camera_present", never)
    with pytest.raises(SourceError, match=r"^picamera2 0\.3\.29 is too old"):
        make_camera(settings)
    monkeypatch.setattr(stack, "picamera2_version", lambda: "0.3.33")
    monkeypatch.undo()  # the real camera_present: picamera2 does not import here
    monkeypatch.setattr(stack, "picamera2_version", lambda: "0.3.33")
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(SourceError, match=r"^picamera2 0\.3\.33 is installed but does not import"):
        make_camera(settings)


def test_a_wedged_camera_cannot_cost_the_clip_its_end(tmp_path):
    """At stop the open clip is finished from what the ring holds before the camera is asked
    to stop: a camera whose stop hangs (up to its own bound) cannot keep the clip from the
    disk when systemd's kill comes."""
    from pinthesky.camera.synthetic import SyntheticSource

    order: list[str] = []

    class WedgedOnStop(SyntheticSource):
        def stop(self) -> None:
            order.append("camera stop")
            super().stop()

    async def main() -> None:
        settings = settings_for(tmp_path, **{"source.source": "synthetic"})
        daemon = Daemon(settings, camera=WedgedOnStop(settings.camera))
        daemon.bus.subscribe(ClipReady, lambda e: order.append("clip ready"))
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.first_frame.wait(), 10)
        assert daemon.recorder is not None
        clip = daemon.recorder.capture(30.0)  # resolves once the clip is on disk
        await until(lambda: daemon.recorder is not None and daemon.recorder._clip is not None)
        daemon.request_stop()
        assert await asyncio.wait_for(task, 20) == 0
        assert clip.done() and clip.result() is not None

    asyncio.run(main())
    assert order[:2] == ["clip ready", "camera stop"], order


def test_the_camera_stop_bound_leaves_systemd_time_to_spare():
    """picamera2's stop is waited for at most STOP_TIMEOUT; the unit kills at TimeoutStopSec.
    The bound must leave the daemon time to finish after it gives up on the camera."""
    from pinthesky.camera import picam

    unit = (REPO / "service" / "pinthesky.service").read_text()
    timeout = next(
        int(line.split("=")[1]) for line in unit.splitlines() if line.startswith("TimeoutStopSec=")
    )
    assert timeout >= picam.STOP_TIMEOUT * 2, (picam.STOP_TIMEOUT, timeout)


@pytest.mark.parametrize("rotation", [90, 270])
def test_stills_of_every_source_are_turned_as_the_clips_are_shown(tmp_path, rotation):
    """A camera mounted on its side: the clips carry the turn as a display rotation; stills
    (and the motion pictures taken with them) are turned for real."""
    import dataclasses

    from pinthesky.camera.synthetic import SyntheticSource

    settings = settings_for(tmp_path, **{"source.source": "synthetic"})
    camera = SyntheticSource(dataclasses.replace(settings.camera, rotation=rotation))
    info = camera.open()
    assert info.rotation == rotation
    still = tmp_path / "still.jpg"
    still.write_bytes(camera.capture_jpeg())
    camera.stop()
    with av.open(str(still)) as c:
        frame = next(c.decode(video=0))
        assert (frame.width, frame.height) == (480, 640)
