"""Shared test helpers: settings from flags, the daemon run in-process, facts about a clip."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pytest
from pirig import PiRig

from pinthesky.daemon.app import Daemon
from pinthesky.media import US, split_annexb
from pinthesky.record.bus import ClipReady
from pinthesky.record.clips import ClipInfo
from pinthesky.settings import Settings, load

REPO = Path(__file__).resolve().parent.parent

CAMERA_TESTS = ["test_picam.py", "test_pi_cameras.py"]
"""They run picamera2's own code, which the project venv never holds (installed, picamera2 is
the camera stack the daemon insists on): ``make -C tests picamera2`` runs them under each
supported picamera2, from its own environment."""
if importlib.util.find_spec("picamera2") is None:
    collect_ignore = CAMERA_TESTS


def pytest_report_header() -> str:
    if importlib.util.find_spec("picamera2") is None:
        return "camera tests: not here (no picamera2); make -C tests picamera2 runs them"
    from importlib import metadata

    return f"camera tests: picamera2 {metadata.version('picamera2')}"


def settings_for(tmp: Path, **flags: Any) -> Settings:
    """Settings as the command line would give them (keys are option key paths)."""
    raw: dict[str, Any] = {
        "storage.combine_dir": str(tmp / "clips"),
        "storage.capture_dir": str(tmp / "images"),
        "events.event_input": str(tmp / "events" / "input.json"),
        "events.event_output": str(tmp / "events" / "output.json"),
        "events.configure_input": str(tmp / "configuration" / "input.json"),
        "events.configure_output": str(tmp / "configuration" / "output.json"),
        "http.local_settings": str(tmp / "local-settings.toml"),
    }
    raw.update({k: str(v) for k, v in flags.items()})
    return load(raw, environ={})


async def until(predicate: Callable[[], Any], within: float = 20) -> None:
    """Wait until ``predicate()`` holds, checking on the loop every 10 ms."""
    done = asyncio.Event()

    def check() -> None:
        if predicate():
            done.set()
        else:
            asyncio.get_running_loop().call_later(0.01, check)

    check()
    await asyncio.wait_for(done.wait(), within)


def eventually(predicate: Callable[[], Any], timeout: float = 30, what: str = "") -> Any:
    """Wait (in a thread-free test) until ``predicate()`` returns something true; return it."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while True:
        result = predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what or predicate}"
        tick.wait(0.05)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """No AWS credentials from the environment; the returned function points S3 at a server."""

    def point_at(endpoint: str) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return point_at


@dataclass
class Run:
    code: int
    clips: list[ClipInfo]
    daemon: Daemon

    def video_time(self, ts: int) -> float:
        """Seconds into the replayed file of a sensor timestamp."""
        origin = getattr(self.daemon.camera, "origin_us", None)
        assert origin is not None
        return (ts - origin) / US


def run_daemon(settings: Settings, timeout: float = 120) -> Run:
    """Run the daemon until its source ends; collect the clips it announced."""

    async def main() -> Run:
        daemon = Daemon(settings)
        clips: list[ClipInfo] = []
        daemon.bus.subscribe(ClipReady, lambda e: clips.append(e.clip))
        code = await asyncio.wait_for(daemon.run(), timeout)
        return Run(code, clips, daemon)

    return asyncio.run(main())


@dataclass
class ClipFacts:
    frames: int
    width: int
    height: int
    first_keyframe: bool
    duration: float
    """Seconds from the first frame's start to the last frame's end, from the container."""
    fragmented: bool


def serve_daemon(
    settings: Settings,
    port_of: Callable[[Daemon], int | None],
    check: Callable[[Daemon, int], Any],
) -> Daemon:
    """Run the daemon until its camera delivers, call ``check(daemon, port)`` on a thread with
    the port ``port_of`` finds (a server of the daemon's), then stop the daemon (exit 0)."""

    async def main() -> Daemon:
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.started.wait(), 15)
        await asyncio.wait_for(daemon.first_frame.wait(), 15)
        port = port_of(daemon)
        assert port is not None
        try:
            await asyncio.to_thread(check, daemon, port)
        finally:
            daemon.request_stop()
            assert await asyncio.wait_for(task, 10) == 0
        return daemon

    return asyncio.run(main())


def clip_facts(path: Path) -> ClipFacts:
    """Decode a whole clip with PyAV (as a player would) and report what it holds."""
    fmt = "h264" if path.suffix == ".h264" else None
    with av.open(str(path), format=fmt) as c:
        stream = c.streams.video[0]
        frames = 0
        first_key = False
        first_t = last_t = 0.0
        width = height = 0
        for frame in c.decode(stream):
            if frames == 0:
                first_key = frame.key_frame
                first_t = float(frame.time or 0.0)
                width, height = frame.width, frame.height
            last_t = float(frame.time or 0.0)
            frames += 1
        rate = float(stream.average_rate or stream.guessed_rate or 10)
    data = path.read_bytes()
    fragmented = path.suffix == ".mp4" and b"moof" in data and b"mvex" in data[:4096]
    return ClipFacts(frames, width, height, first_key, last_t - first_t + 1 / rate, fragmented)


def mp4_boxes(data: bytes) -> list[bytes]:
    out = []
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        out.append(kind)
        if size < 8:
            break
        pos += size
    return out


def nal_types(data: bytes) -> list[int]:
    return [u[0] & 0x1F for u in split_annexb(data) if u]


OLD_ENV = (
    "CLOUDWATCH",
    "CLOUDWATCH_THREADED",
    "DATAPLANE",
    "CLOUDWATCH_DELINEATE_STREAM",
    "AWS_DEFAULT_REGION",
    "PINTHESKY_STATE_DIR",
)
"""Environment variables the daemon reads (most of them the 0.9.1 daemon's): kept out of the
tests' subprocesses."""


def pinthesky(
    *args: str, cwd: Path, timeout: float = 120, python: Path | str = sys.executable
) -> subprocess.CompletedProcess[str]:
    """``python -m pinthesky ARGS`` from this working tree, in a clean environment."""
    env = {k: v for k, v in os.environ.items() if k not in OLD_ENV and k != "JOURNAL_STREAM"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [str(python), "-m", "pinthesky", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class DaemonProcess:
    """``python -m pinthesky ARGS`` as a child process, its log collected line by line."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pinthesky", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.started = time.monotonic()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def logged(self, pattern: str) -> list[str]:
        return [line for line in list(self.lines) if re.search(pattern, line)]

    def stop(self) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took."""
        stopped = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        finally:
            self.proc.kill()
        self._reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code, time.monotonic() - stopped


@pytest.fixture(scope="session")
def footage() -> Any:
    sys.path.insert(0, str(Path(__file__).parent))
    import footage as module

    return module


@pytest.fixture
def target() -> Iterator[Path]:
    """A stand-in for a Pi's file system to install into (``pitarget``)."""
    from pitarget import target_root

    with target_root() as root:
        yield root


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[PiRig]:
    """A Raspberry Pi with a camera module (``rig.install(board, sensor)``): picamera2's real
    code on the libcamera stand-in (``tests/pirig.py``). Whatever the test left of picamera2
    (an unclosed camera, a buffer still mapped) is collected before it ends, so that it is
    reported against the test that left it."""
    yield PiRig(monkeypatch, tmp_path)
    gc.collect()
