"""Start-up latency: ``pinthesky --version``, and the daemon's first buffered frame.

Requirement: ``pinthesky --version`` returns in under 0.3 s, and the daemon reaches its first
buffered frame in under 2 s.

``--version``: wall time of the venv's console script (interpreter start, entry-point import,
exit) as a child process, median of ``--version-runs`` (default 10) runs after one untimed
run that warms the page cache.

First frame: ``pinthesky --source synthetic`` (defaults otherwise) is spawned; the figure is
the wall time from just before the spawn until its "first frame buffered" INFO line arrives on
the log pipe, median of ``--daemon-runs`` (default 3). That includes interpreter start-up and
imports, which the daemon's own figure (parsed from the same line: time since ``main()``
began) leaves out; both are reported, the spawn-to-line one is held to the limit. Each daemon
is then stopped with SIGTERM.

Run (from the repository root)::

    .venv/bin/python bench/startup.py [--version-runs 10] [--daemon-runs 3] [--quick]

Prints ``version_seconds=``, ``first_frame_seconds=``, ``first_frame_daemon_seconds=`` and
``result=PASS|FAIL``; writes bench/out/startup.json. Exits 0 whether the requirement passes or
fails (``--strict`` exits 1 on FAIL); 2 if a command does not work at all.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import FIRST_FRAME, Check, DaemonProcess, pinthesky_command, report

from pinthesky import __version__

NAME = "startup"
LIMIT_VERSION_S = 0.3
LIMIT_FIRST_FRAME_S = 2.0


def time_version(runs: int) -> list[float]:
    argv = [*pinthesky_command(), "--version"]
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        took = time.perf_counter() - t0
        if out.returncode != 0 or out.stdout.strip() != __version__:
            raise RuntimeError(
                f"`{' '.join(argv)}` gave code {out.returncode}, output {out.stdout!r}"
                f" {out.stderr.strip()[-300:]!r} (expected {__version__!r})"
            )
        if i:  # the first run only warms the page cache
            times.append(took)
    return times


def time_first_frame() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pinthesky-bench-") as tmp:
        daemon = DaemonProcess(["--source", "synthetic", "--combine-dir", str(Path(tmp))])
        try:
            at, m = daemon.wait_for(FIRST_FRAME, timeout=30)
        finally:
            code, stop_took = daemon.stop(5.0)
    return {
        "spawn_to_line": at - daemon.spawned,
        "daemon_figure": float(m.group(1)),
        "exit_code": code,
        "stop_seconds": stop_took,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version-runs", type=int, default=10, help="default 10")
    parser.add_argument("--daemon-runs", type=int, default=3, help="default 3")
    parser.add_argument("--quick", action="store_true", help="same as the defaults (fast)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on FAIL")
    args = parser.parse_args(argv)

    try:
        version_times = time_version(max(1, args.version_runs))
        # One untimed daemon start first, like the untimed --version: a cold page cache (the
        # first start after a build) would otherwise weigh on the median of few runs.
        time_first_frame()
        daemon_runs = [time_first_frame() for _ in range(max(1, args.daemon_runs))]
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    first_frame = [r["spawn_to_line"] for r in daemon_runs]
    own = [r["daemon_figure"] for r in daemon_runs]
    figures: dict[str, Any] = {
        "command": " ".join(pinthesky_command()),
        "version_runs": len(version_times),
        "version_seconds": statistics.median(version_times),
        "version_seconds_min": min(version_times),
        "version_seconds_max": max(version_times),
        "daemon_runs": len(daemon_runs),
        "first_frame_seconds": statistics.median(first_frame),
        "first_frame_seconds_max": max(first_frame),
        "first_frame_daemon_seconds": statistics.median(own),
        "daemon_exit_codes": " ".join(str(r["exit_code"]) for r in daemon_runs),
        "version_times": [round(t, 4) for t in version_times],
        "first_frame_runs": daemon_runs,
    }
    checks = [
        Check(
            "version_seconds",
            "`pinthesky --version` wall time",
            figures["version_seconds"],
            LIMIT_VERSION_S,
            "s",
        ),
        Check(
            "first_frame_seconds",
            "spawn to first buffered frame",
            figures["first_frame_seconds"],
            LIMIT_FIRST_FRAME_S,
            "s",
        ),
    ]
    passed = report(NAME, figures, checks)
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
