"""What CloudWatch costs the daemon: CPU with logs and metrics on, against the same run off.

Requirement: with CloudWatch logs enabled at INFO, the daemon's CPU stays within 1.2x of the
same run with CloudWatch off.

Two daemons measured by bench/daemon.py's method side by side, at the same time (so that the
machine's load and the synthetic scene's crossings are the same for both; each needs about 1.5 %
of one of the two cores), on the synthetic source with defaults (640x480, 20 fps, 17 Mb/s; log
level INFO): one with CloudWatch off, one with ``--cloudwatch --cloudwatch-event-type all``
(logs and EMF metrics, default send interval 10 s, metrics every 60 s) against a local
CloudWatch Logs (moto in server mode, started here, in this process: its CPU is not the
daemon's). Both warm up until ``--warmup`` seconds after the spawn (default 60) and then
measure ``--seconds`` (default 60) of CPU time (utime + stime of the daemon process). This is
repeated ``--rounds`` times (default 3) and the ratio of the summed CPU seconds is checked.
``records_received`` counts what reached the local CloudWatch, to show that the logs and
metrics were shipped.

Run (from the repository root; about six minutes)::

    .venv/bin/python bench/cloudwatch.py
    .venv/bin/python bench/cloudwatch.py --quick    # 20 s warm-up, 20 s window per run

Prints ``cpu_percent_off=``, ``cpu_percent_on=``, ``cpu_ratio=``, ``rss_mb_off=``,
``rss_mb_on=``, ``records_received=`` and ``result=PASS|FAIL``; writes bench/out/cloudwatch.json.
Exits 0 whether the requirement passes or fails (``--strict`` exits 1 on FAIL); 2 if a run
could not be measured.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import REPO, Check, report, window_args
from daemon import measure

sys.path.insert(0, str(REPO / "tests"))
from servers import aws_client, moto_server

NAME = "cloudwatch"
LIMIT_RATIO = 1.2
GROUP = "pinthesky-bench"


def records_in(endpoint: str) -> int:
    client = aws_client("logs", endpoint)
    total = 0
    for stream in client.describe_log_streams(logGroupName=GROUP)["logStreams"]:
        token = None
        while True:
            page = client.get_log_events(
                logGroupName=GROUP,
                logStreamName=stream["logStreamName"],
                startFromHead=True,
                **({"nextToken": token} if token else {}),
            )
            total += len(page["events"])
            if not page["events"] or page["nextForwardToken"] == token:
                break
            token = page["nextForwardToken"]
    return total


def main(argv: Sequence[str] | None = None) -> int:
    window = window_args(__doc__.split("\n\n")[0], argv, 60.0, 3, quick=(20.0, 20.0, 3))
    warmup, seconds = window.warmup, window.seconds

    rounds: list[dict[str, dict[str, Any]]] = []
    with moto_server() as endpoint:
        env = dict(
            os.environ,
            AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        on = [
            "--cloudwatch",
            "--cloudwatch-log-group",
            GROUP,
            "--cloudwatch-event-type",
            "all",
            "--thing-name",
            "bench-cam",
        ]
        for n in range(window.rounds):
            print(f"# round {n + 1} of {window.rounds}: CloudWatch off and on, side by side")
            runs: dict[str, dict[str, Any]] = {}
            errors: list[str] = []

            def run(
                label: str,
                extra: list[str],
                runs: dict[str, Any] = runs,
                errors: list[str] = errors,
            ) -> None:
                combine_dir = Path(tempfile.mkdtemp(prefix="pinthesky-bench-"))
                try:
                    runs[label] = measure(warmup, seconds, combine_dir, extra, env)
                except RuntimeError as exc:
                    errors.append(f"{label}: {exc}")
                finally:
                    shutil.rmtree(combine_dir, ignore_errors=True)

            threads = [
                threading.Thread(target=run, args=(label, extra))
                for label, extra in (("off", []), ("on", on))
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                print("error: " + "; ".join(errors), file=sys.stderr)
                return 2
            rounds.append(runs)
        received = records_in(endpoint)

    def total(label: str, key: str) -> float:
        return sum(r[label][key] for r in rounds)

    ratio = total("on", "cpu_seconds") / total("off", "cpu_seconds")
    figures = {
        "settings": "synthetic 640x480 20 fps defaults, log level INFO",
        "window": f"t = {warmup:g} .. {warmup + seconds:g} s of each run",
        "rounds": len(rounds),
        "cpu_percent_off": total("off", "cpu_seconds") / total("off", "window_seconds") * 100,
        "cpu_percent_on": total("on", "cpu_seconds") / total("on", "window_seconds") * 100,
        "cpu_ratio": ratio,
        "cpu_ratio_per_round": [r["on"]["cpu_seconds"] / r["off"]["cpu_seconds"] for r in rounds],
        "rss_mb_off": max(r["off"]["rss_mb"] for r in rounds),
        "rss_mb_on": max(r["on"]["rss_mb"] for r in rounds),
        "threads_off": rounds[-1]["off"]["threads"],
        "threads_on": rounds[-1]["on"]["threads"],
        "records_received": received,
        "stop_seconds_on": max(r["on"]["stop_seconds"] for r in rounds),
    }
    checks = [
        Check("cpu_ratio", "CPU with CloudWatch on / off", ratio, LIMIT_RATIO, "x"),
    ]
    passed = report(NAME, figures, checks)
    return 1 if window.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
