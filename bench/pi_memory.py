"""Resident memory of both processes as they run on a Pi, and what a 512 MB Pi Zero W has left.

Requirement (issue 13): the daemon and the sidecar together leave at least 128 MB of a Pi Zero
W's 448 MB (512 MB less the camera's 64 MB CMA reserve) to the OS and the page cache, and the
sidecar stays at or under 40 MB on either MQTT transport.

- **Daemon**: ``pinthesky`` replays the walkers footage in real time (two walk-ins, so two
  clips), with uploads to S3 (moto on 127.0.0.1, credentials from the local AWS IoT
  credentials provider), CloudWatch logs and events on (moto), the data plane on, and one
  viewer reading the local page's MJPEG stream for the whole run. VmRSS is sampled every
  0.5 s: the peak sample and VmHWM (the kernel's peak) are reported.
- **Sidecar**, once per transport (``PINTHESKY_MQTT_TRANSPORT=crt`` then ``paho``, side by side
  in one run): ``pinthesky-iot`` against mosquitto with mutual TLS, 20 commands and 20 events
  through it, then VmRSS and VmHWM after 10 s. ``paho`` is what every 32-bit Pi runs.

``zero_w_left_mb`` is 512 MB less the camera's CMA reserve (64 MB on a Pi Zero, see
docs/cameras.md) less the daemon's peak and the paho sidecar's: what the OS and everything
else share.
These are x86-64 figures: on 32-bit Raspberry Pi OS pointers and Python objects are smaller,
so a Pi Zero W's own figures should be lower (not measured here: no hardware).

Run from the repository root (about 90 s)::

    .venv/bin/python bench/pi_memory.py

Prints ``daemon_peak_rss_mb=``, ``sidecar_crt_rss_mb=``, ``sidecar_paho_rss_mb=``,
``zero_w_left_mb=`` and ``result=PASS|FAIL``; writes bench/out/pi_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, Check, event_flags, pinthesky_command, report
from daemon import memory
from live import REGION, Cloud, Viewer
from sidecar import sidecar_argv

sys.path.insert(0, str(REPO / "tests"))
import footage
from mqtt import Mosquitto, Peer
from servers import Pki, free_port, moto_server, s3_client

NAME = "pi_memory"
BUCKET = "bench-bucket"
ZERO_W_MB = 512.0
CMA_MB = 64.0
LIMIT_TOGETHER_MB = ZERO_W_MB - CMA_MB - 128.0
LIMIT_SIDECAR_MB = 40.0


def daemon_memory(work: Path) -> dict[str, Any]:
    scenario = footage.scenario("walkers")
    with moto_server() as endpoint, Cloud(work / "cloud") as cloud:
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        env = dict(
            cloud.env,
            AWS_ENDPOINT_URL_S3=endpoint,
            AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=endpoint,
            AWS_DEFAULT_REGION=REGION,
        )
        env.pop("JOURNAL_STREAM", None)
        port = free_port()
        args = [
            *pinthesky_command(),
            "--source", str(scenario.path), "--replay-speed", "1",
            "--pre-roll", "3", "--post-roll", "4",
            "--combine-dir", str(work / "clips"), "--capture-dir", str(work / "images"),
            *event_flags(work / "events"),
            "--bucket-name", BUCKET,
            "--cloudwatch", "--cloudwatch-log-group", "bench", "--cloudwatch-region", REGION,
            "--cloudwatch-event-type", "all",
            "--http-port", str(port), "--http-bind", "127.0.0.1",
            *cloud.flags(),
        ]  # fmt: skip
        viewer = Viewer(port)
        samples: list[float] = []
        hwm = 0.0
        with (work / "daemon.log").open("w") as log:
            proc = subprocess.Popen(args, env=env, stderr=log)
            viewer.start()
            try:
                while proc.poll() is None:
                    try:
                        mem = memory(proc.pid)
                    except (OSError, KeyError):
                        break  # it just ended
                    samples.append(mem["VmRSS"])
                    hwm = max(hwm, mem["VmHWM"])
                    time.sleep(0.5)
                code = proc.wait(60)
            finally:
                viewer.stop()
                if proc.poll() is None:
                    proc.kill()
        listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    if code != 0 or not samples:
        raise RuntimeError(f"the daemon failed ({code}):\n{(work / 'daemon.log').read_text()}")
    return {
        "daemon_peak_rss_mb": max(samples),
        "daemon_hwm_mb": hwm,
        "daemon_median_rss_mb": sorted(samples)[len(samples) // 2],
        "daemon_uploaded_clips": sum(1 for o in listed if o["Key"].endswith(".h264")),
        "daemon_viewer_jpegs": viewer.jpegs,
    }


def sidecar_memory(work: Path, transport: str) -> dict[str, Any]:
    pki = Pki(work / "certs")
    files = {
        "--event-input": work / "events/input.json",
        "--event-output": work / "events/output.json",
        "--configure-input": work / "configuration/input.json",
        "--configure-output": work / "configuration/output.json",
    }
    log_path = work / "sidecar.log"
    with Mosquitto(pki, work / "broker") as broker, log_path.open("w") as log:
        console = Peer(pki, broker, "console")
        console.subscribe("pinthesky/events/output")
        flags = [x for flag, path in files.items() for x in (flag, str(path))]
        proc = subprocess.Popen(
            sidecar_argv(broker.port, pki, flags),
            stderr=log,
            env={
                **{k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"},
                "PINTHESKY_MQTT_TRANSPORT": transport,
            },
        )
        try:
            deadline = time.monotonic() + 60
            while "subscribed to" not in log_path.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{transport}: no subscription:\n{log_path.read_text()}")
                time.sleep(0.1)
            outbox = Path(str(files["--event-output"]) + ".outbox")
            for i in range(20):
                console.publish("pinthesky/events/bench-cam/input", {"name": "health", "i": i})
                (outbox / f"{i:08d}.json").write_text(json.dumps({"name": "bench", "i": i}))
            console.wait_for(lambda r: len(r) >= 20, 60)
            time.sleep(10)
            mem = memory(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
            console.close()
    return {
        f"sidecar_{transport}_rss_mb": mem["VmRSS"],
        f"sidecar_{transport}_hwm_mb": mem["VmHWM"],
        f"sidecar_{transport}_threads": int(mem["Threads"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strict", action="store_true", help="exit 1 on FAIL")
    # run_all passes --quick to every bench: this one is as long as its footage either way.
    parser.add_argument("--quick", action="store_true", help="the same run (accepted)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pinthesky-bench-"))
    try:
        figures: dict[str, Any] = {}
        for transport in ("crt", "paho"):
            (work / transport).mkdir()
            figures.update(sidecar_memory(work / transport, transport))
        figures.update(daemon_memory(work / "daemon"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    together = max(figures["daemon_peak_rss_mb"], figures["daemon_hwm_mb"]) + max(
        figures["sidecar_paho_hwm_mb"], figures["sidecar_paho_rss_mb"]
    )
    figures["together_paho_mb"] = together
    figures["zero_w_left_mb"] = ZERO_W_MB - CMA_MB - together
    checks = [
        Check("together_paho_mb", "daemon peak + paho sidecar", together, LIMIT_TOGETHER_MB, "MB"),
        Check(
            "sidecar_crt_rss_mb",
            "sidecar on awscrt",
            figures["sidecar_crt_rss_mb"],
            LIMIT_SIDECAR_MB,
            "MB",
        ),
        Check(
            "sidecar_paho_rss_mb",
            "sidecar on paho-mqtt",
            figures["sidecar_paho_rss_mb"],
            LIMIT_SIDECAR_MB,
            "MB",
        ),
    ]
    passed = report(NAME, figures, checks)
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
