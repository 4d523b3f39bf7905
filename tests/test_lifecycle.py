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
from conftest import clip_facts, settings_for

from pinthesky.camera.base import AnalysisPort
from pinthesky.daemon import app as daemon_module
from pinthesky.daemon.app import Daemon
from pinthesky.media import StreamInfo
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


def test_auto_source_never_falls_back_silently_on_a_pi_without_camera(tmp_path, monkeypatch):
    from pinthesky.camera import make_camera, picam
    from pinthesky.errors import SourceError

    settings = settings_for(tmp_path)
    monkeypatch.setattr(picam, "camera_present", lambda: False)  # picamera2 here, no camera
    with pytest.raises(SourceError, match="no camera detected"):
        make_camera(settings)
    monkeypatch.setattr(picam, "camera_present", lambda: None)  # not a Pi at all
    assert make_camera(settings).name == "synthetic"
    monkeypatch.setattr(picam, "camera_present", lambda: True)
    assert make_camera(settings).name == "picamera2"
