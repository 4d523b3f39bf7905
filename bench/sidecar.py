"""Memory and CPU of ``pinthesky-iot`` while idle and connected.

Requirement: ``pinthesky-iot`` uses at most 40 MB resident memory and under 0.5 % of one core
while idle.

Starts Debian's mosquitto on 127.0.0.1 with a TLS listener that requires client certificates
(certificates made by trustme; the same set-up as tests/test_sidecar.py), then
``pinthesky-iot`` connected to it with its four files in a temporary directory. Once the
sidecar logs "connected", it warms up for ``--warmup`` seconds (default 10), then its CPU time
(utime + stime, /proc/<pid>/stat) is read at the start and end of a ``--seconds`` window
(default 60) with nothing to do; resident memory (VmRSS) is read at the end, and the peak
(VmHWM). MB are 10^6 bytes. Finally it gets SIGTERM and must exit 0.

Run (from the repository root; about 80 s)::

    .venv/bin/python bench/sidecar.py
    .venv/bin/python bench/sidecar.py --quick      # 5 s warm-up, 20 s window

Prints ``rss_mb=``, ``hwm_mb=``, ``cpu_percent=``, ``stop_seconds=`` and ``result=PASS|FAIL``;
writes bench/out/sidecar.json. Exits 0 whether the requirement passes or fails (``--strict``
exits 1 on FAIL); 2 if it could not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import REPO, Check, report
from daemon import cpu_seconds, memory

sys.path.insert(0, str(REPO / "tests"))
from mqtt import Mosquitto
from servers import Pki

NAME = "sidecar"
LIMIT_RSS_MB = 40.0
LIMIT_CPU_PERCENT = 0.5


def sidecar_argv(port: int, pki: Any, files: list[str]) -> list[str]:
    """``pinthesky-iot`` against a local broker on ``port`` as thing ``bench-cam``."""
    return [
        *sidecar_command(),
        "--endpoint", "127.0.0.1",
        "--port", str(port),
        "--thing-name", "bench-cam",
        "--thing-cert", str(pki.cert_file),
        "--thing-key", str(pki.key_file),
        "--ca-cert", str(pki.ca_file),
        *files,
    ]  # fmt: skip


def sidecar_command() -> list[str]:
    script = Path(sys.executable).parent / "pinthesky-iot"
    return [str(script)] if script.is_file() else [str(REPO / ".venv" / "bin" / "pinthesky-iot")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds (default 10)")
    parser.add_argument("--seconds", type=float, default=60.0, help="window (default 60)")
    parser.add_argument("--quick", action="store_true", help="--warmup 5 --seconds 20")
    parser.add_argument("--strict", action="store_true", help="exit 1 on FAIL")
    args = parser.parse_args(argv)
    warmup, seconds = (5.0, 20.0) if args.quick else (args.warmup, max(1.0, args.seconds))

    tmp = Path(tempfile.mkdtemp(prefix="pinthesky-bench-"))
    try:
        pki = Pki(tmp / "certs")
        with Mosquitto(pki, tmp / "broker") as broker:
            log_path = tmp / "sidecar.log"
            files = []
            for flag, name in (
                ("--event-input", "events/input.json"),
                ("--event-output", "events/output.json"),
                ("--configure-input", "configuration/input.json"),
                ("--configure-output", "configuration/output.json"),
            ):
                files += [flag, str(tmp / name)]
            with log_path.open("w") as log:
                proc = subprocess.Popen(
                    sidecar_argv(broker.port, pki, files),
                    stderr=log,
                    env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"},
                )
                try:
                    spawned = time.monotonic()
                    while "connected to" not in log_path.read_text():
                        if proc.poll() is not None or time.monotonic() - spawned > 30:
                            print(f"error: no connection:\n{log_path.read_text()}", file=sys.stderr)
                            return 2
                        time.sleep(0.1)
                    connected_after = time.monotonic() - spawned
                    time.sleep(warmup)
                    stat = Path(f"/proc/{proc.pid}/stat")
                    w0, c0 = time.monotonic(), cpu_seconds(stat)
                    time.sleep(seconds)
                    w1, c1 = time.monotonic(), cpu_seconds(stat)
                    mem = memory(proc.pid)
                    t0 = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    code = proc.wait(10)
                    stop_seconds = time.monotonic() - t0
                finally:
                    if proc.poll() is None:
                        proc.kill()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures = {
        "connected_after_s": connected_after,
        "window_seconds": w1 - w0,
        "cpu_seconds": c1 - c0,
        "cpu_percent": (c1 - c0) / (w1 - w0) * 100,
        "rss_mb": mem["VmRSS"],
        "hwm_mb": mem["VmHWM"],
        "rss_anon_mb": mem["RssAnon"],
        "rss_file_mb": mem["RssFile"],
        "threads": int(mem["Threads"]),
        "stop_seconds": stop_seconds,
        "exit_code": code,
    }
    checks = [
        Check(
            "rss_mb", "pinthesky-iot resident memory, idle", figures["rss_mb"], LIMIT_RSS_MB, "MB"
        ),
        Check(
            "cpu_percent",
            "pinthesky-iot CPU idle, % of one core",
            figures["cpu_percent"],
            LIMIT_CPU_PERCENT,
            "%",
        ),
    ]
    passed = report(NAME, figures, checks) and code == 0
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
