"""The systemd units (checked as files with systemd-analyze) and the sd_notify protocol the
daemon and the sidecar speak (checked on a real notification socket)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OLD_ENV, REPO, settings_for
from servers import free_port

from pinthesky.daemon.app import Daemon

UNITS = ("pinthesky", "pinthesky-iot")
SERVICE_DIR = REPO / "service"


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_units_verify_in_an_installed_tree(tmp_path):
    """systemd-analyze verify in a root holding the units, systemd's own units and the two
    commands at the paths the units name (as pitsctl installs them)."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    bin_dir = root / "opt/pinthesky/venv/bin"
    bin_dir.mkdir(parents=True)
    for name in UNITS:
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
        target = root / "etc/systemd/system"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(SERVICE_DIR / f"{name}.service", target)
    for name in UNITS:
        done = analyze("verify", f"--root={root}", f"{name}.service")
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip() == "", done.stderr


@pytest.mark.parametrize("name", UNITS)
def test_units_score_two_or_better_in_systemd_analyze_security(name):
    done = analyze("security", "--offline=yes", str(SERVICE_DIR / f"{name}.service"))
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout + done.stderr)
    assert m, done.stdout + done.stderr
    assert float(m.group(1)) <= 2.0, done.stdout


@pytest.mark.parametrize("name", UNITS)
def test_units_keep_what_the_camera_and_the_health_report_need(name):
    text = (SERVICE_DIR / f"{name}.service").read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "Restart=on-failure" in text
    assert "User=pinthesky" in text and "StateDirectory=pinthesky" in text
    assert "ProcSubset=pid" not in text  # it would hide /proc/meminfo from the health report
    assert "AF_INET" in text
    if name == "pinthesky":
        assert "DeviceAllow=char-video4linux rw" in text and "SupplementaryGroups=video" in text
        assert "/dev/video*" not in text  # DeviceAllow does not glob


class NotifySocket:
    """A datagram socket playing systemd's side of sd_notify."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)
        self.messages: list[str] = []

    def until(self, field: str, count: int = 1) -> list[str]:
        """Receive until ``field`` (e.g. ``WATCHDOG=1``) was seen ``count`` times."""
        while sum(field in m.split("\n") for m in self.messages) < count:
            self.messages.append(self.sock.recv(4096).decode())
        return self.messages

    def close(self) -> None:
        self.sock.close()


def notify_env(sock: NotifySocket) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OLD_ENV}
    env.update(PYTHONPATH=str(REPO), NOTIFY_SOCKET=str(sock.path), WATCHDOG_USEC="3000000")
    return env


def test_the_daemon_says_ready_feeds_the_watchdog_and_says_stopping(tmp_path):
    sock = NotifySocket(tmp_path / "notify")
    args = ["--source", "synthetic", "--combine-dir", str(tmp_path / "clips")]
    for flag, name in (
        ("--event-input", "in.json"),
        ("--event-output", "out.json"),
        ("--configure-input", "cin.json"),
        ("--configure-output", "cout.json"),
    ):
        args += [flag, str(tmp_path / name)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinthesky", *args],
        env=notify_env(sock),
        cwd=tmp_path,
        stderr=subprocess.DEVNULL,
    )
    try:
        sock.until("READY=1")
        sock.until("WATCHDOG=1", 2)  # every second with a 3 s watchdog
        proc.send_signal(signal.SIGTERM)
        messages = sock.until("STOPPING=1")
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        sock.close()
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m.split("\n"))
    first_ping = next(i for i, m in enumerate(messages) if m == "WATCHDOG=1")
    assert ready < first_ping  # ready (a frame is buffered) before the first ping
    assert any(m.startswith("READY=1\nSTATUS=recording") for m in messages)


def test_the_sidecar_says_ready_feeds_the_watchdog_and_says_stopping(tmp_path):
    from servers import Pki
    from test_sidecar import file_flags, sidecar_command

    pki = Pki(tmp_path / "certs")
    sock = NotifySocket(tmp_path / "notify")
    args = [
        "--endpoint",
        "127.0.0.1",
        "--port",
        str(free_port()),  # nothing listens: it keeps retrying, and stays alive
        "--thing-name",
        "cam1",
        "--thing-cert",
        str(pki.cert_file),
        "--thing-key",
        str(pki.key_file),
        *file_flags(tmp_path),
    ]
    proc = subprocess.Popen(
        [*sidecar_command(), *args], env=notify_env(sock), stderr=subprocess.DEVNULL
    )
    try:
        sock.until("READY=1")
        sock.until("WATCHDOG=1", 2)
        proc.send_signal(signal.SIGTERM)
        sock.until("STOPPING=1")
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        sock.close()


def test_the_watchdog_is_fed_only_while_frames_advance_and_tasks_live(tmp_path):
    async def main() -> None:
        daemon = Daemon(settings_for(tmp_path, **{"source.source": "synthetic"}))
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.first_frame.wait(), 15)
        await asyncio.wait_for(daemon.started.wait(), 15)
        assert daemon._healthy(since_last_frame=0.5)
        assert not daemon._healthy(since_last_frame=10.0)  # the camera stopped delivering
        victim = daemon._vital[-1]
        victim.cancel()
        await asyncio.gather(victim, return_exceptions=True)
        assert not daemon._healthy(since_last_frame=0.5)  # a task died
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(main())
