"""How fast a shadow change is applied and reported.

Requirement (issue 4): a shadow change is applied and reported within 200 ms of the file write
(excluding any camera restart).

The real daemon runs (``--source synthetic``) with its sidecar files in a temporary directory.
Like aws-iot-device-client on an ``/update/documents`` message, the script rewrites the
shadow-output file with a new ``desired.camera.sensitivity``, then waits (inotify on the
shadow-input file) until the daemon's reported document shows the new value. 30 changes.

Run from the repository root: ``.venv/bin/python bench/shadow_latency.py``. Prints
``latency_ms_median=``, ``latency_ms_p95=``, ``latency_ms_max=`` and ``result=PASS|FAIL``;
writes bench/out/shadow_latency.json.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Check, pinthesky_command, report

NAME = "shadow_latency"
LIMIT_MS = 200.0
CHANGES = 30


def documents(sensitivity: int, version: int) -> str:
    state = {
        "state": {"desired": {"camera": {"sensitivity": str(sensitivity)}}},
        "metadata": {},
        "version": version,
    }
    return json.dumps({"previous": state, "current": state, "timestamp": time.time()})


def main() -> int:
    from inotify_simple import INotify, flags

    work = Path(tempfile.mkdtemp(prefix="pinthesky-bench-shadow-"))
    conf = work / "configuration"
    args = [
        *pinthesky_command(),
        "--source",
        "synthetic",
        "--combine-dir",
        str(work / "clips"),
        "--event-input",
        str(work / "events" / "input.json"),
        "--event-output",
        str(work / "events" / "output.json"),
        "--configure-input",
        str(conf / "input.json"),
        "--configure-output",
        str(conf / "output.json"),
    ]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "shadow: desired state from" in line:
            break
    reported = conf / "input.json"
    watch = INotify()
    watch.add_watch(str(reported), flags.CLOSE_WRITE)
    latencies = []
    for i in range(CHANGES):
        value = 20 + i
        (conf / "output.json").write_text(documents(value, i + 2))
        t0 = time.perf_counter()
        while True:
            if not watch.read(timeout=2000):
                raise SystemExit(f"no report within 2 s for change {i}")
            text = reported.read_text()
            if text and json.loads(text)["camera"]["sensitivity"] == value:
                break
        latencies.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.05)
    proc.terminate()
    proc.wait(timeout=10)
    proc.stderr.close()
    latencies.sort()
    figures = {
        "changes": CHANGES,
        "latency_ms_median": round(statistics.median(latencies), 2),
        "latency_ms_p95": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "latency_ms_max": round(latencies[-1], 2),
    }
    checks = [
        Check(
            "latency_ms_max",
            "shadow change applied and reported",
            figures["latency_ms_max"],
            LIMIT_MS,
            "ms",
        )
    ]
    passed = report(NAME, figures, checks)
    return 1 if "--strict" in sys.argv and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
