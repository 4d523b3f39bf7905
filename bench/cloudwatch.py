"""What CloudWatch costs the daemon: CPU with logs and metrics on, against the same run off.

Requirement: with CloudWatch logs enabled at INFO, the daemon's CPU stays within 1.2x of the
same run with CloudWatch off.

Two runs of bench/daemon.py's measurement, one after the other, on the synthetic source with
defaults (640x480, 20 fps, 17 Mb/s; log level INFO): first with CloudWatch off, then with
``--cloudwatch --cloudwatch-event-type all`` (logs and EMF metrics, default send interval 10 s
and metrics every 60 s) against a local CloudWatch Logs (moto in server mode, started here, in
this process: its CPU is not the daemon's). Each run warms up until ``--warmup`` seconds after
the spawn (default 60) and then measures ``--seconds`` (default 60) of CPU time (utime + stime
of the daemon process). ``records_received`` counts what reached the local CloudWatch, to show
the run did ship its logs and metrics.

Run (from the repository root; about four minutes)::

    .venv/bin/python bench/cloudwatch.py
    .venv/bin/python bench/cloudwatch.py --quick    # 20 s warm-up, 20 s window per run

Prints ``cpu_percent_off=``, ``cpu_percent_on=``, ``cpu_ratio=``, ``rss_mb_off=``,
``rss_mb_on=``, ``records_received=`` and ``result=PASS|FAIL``; writes bench/out/cloudwatch.json.
Exits 0 whether the requirement passes or fails (``--strict`` exits 1 on FAIL); 2 if a run
could not be measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from _common import REPO, Check, report
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds (default 60)")
    parser.add_argument("--seconds", type=float, default=60.0, help="window (default 60)")
    parser.add_argument("--quick", action="store_true", help="--warmup 20 --seconds 20")
    parser.add_argument("--strict", action="store_true", help="exit 1 on FAIL")
    args = parser.parse_args(argv)
    warmup, seconds = (20.0, 20.0) if args.quick else (args.warmup, max(1.0, args.seconds))

    runs = {}
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
        for label, extra in (("off", []), ("on", on)):
            combine_dir = Path(tempfile.mkdtemp(prefix="pinthesky-bench-"))
            print(f"# run with CloudWatch {label}", flush=True)
            try:
                runs[label] = measure(warmup, seconds, combine_dir, extra, env)
            except RuntimeError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            finally:
                shutil.rmtree(combine_dir, ignore_errors=True)
        received = records_in(endpoint)
    off, on_run = runs["off"], runs["on"]
    ratio = on_run["cpu_percent"] / off["cpu_percent"]
    figures = {
        "settings": "synthetic 640x480 20 fps defaults, log level INFO",
        "window": f"t = {warmup:g} .. {warmup + seconds:g} s of each run",
        "cpu_percent_off": off["cpu_percent"],
        "cpu_percent_on": on_run["cpu_percent"],
        "cpu_ratio": ratio,
        "rss_mb_off": off["rss_mb"],
        "rss_mb_on": on_run["rss_mb"],
        "threads_off": off["threads"],
        "threads_on": on_run["threads"],
        "records_received": received,
        "stop_seconds_on": on_run["stop_seconds"],
    }
    checks = [
        Check("cpu_ratio", "CPU with CloudWatch on / off", ratio, LIMIT_RATIO, "x"),
    ]
    passed = report(NAME, figures, checks)
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
