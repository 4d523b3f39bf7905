"""What Home Assistant's MQTT costs the daemon: memory and CPU with it on, against it off.

Requirement: with MQTT on (connected to a broker, Home Assistant listening, the entities kept
up to date) the daemon adds at most 5 MB resident and at most 0.5 % of one core to the same
daemon with MQTT off. On a Pi Zero W the daemon itself peaks at about 165 MB of the 448 MB it
shares with the OS (bench/pi_memory.py): a second process for MQTT (the sidecar on paho
measured 30 MB there) would have cost six times this budget.

Two daemons side by side, at the same time (same load, same crossings of the synthetic scene:
one every 30 s, each a motion event, a clip, a motion picture and a sensor update), measured by
bench/daemon.py's method: one with MQTT off, one with ``--mqtt-host`` pointing at Debian's
mosquitto on 127.0.0.1 (a password file, as a home broker is set up; started here), with a
client subscribed to every topic as Home Assistant's MQTT integration is (started here, in
this process: its CPU is not the daemon's). Both warm up until ``--warmup`` seconds after the
spawn (default 30), then ``--seconds`` (default 60) of CPU time (utime + stime) is read, and
VmRSS every second (its peak in the window, a crossing's, counts); ``--rounds`` times (default
3), the medians of the rounds compared. ``import_mb`` is what loading the MQTT side alone adds
to a process that has loaded the daemon's modules. ``messages_received`` shows what reached
Home Assistant's side.

Run (from the repository root; about five minutes)::

    .venv/bin/python bench/home_assistant.py
    .venv/bin/python bench/home_assistant.py --quick    # 15 s warm-up, 30 s window, 2 rounds

Prints ``rss_mb_off=``, ``rss_mb_on=``, ``rss_mb_added=``, ``cpu_percent_off=``,
``cpu_percent_on=``, ``cpu_percent_added=`` and ``result=PASS|FAIL``; writes
bench/out/home_assistant.json. Exits 0 whether the requirement passes or fails (``--strict``
exits 1 on FAIL); 2 if a run could not be measured.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

from _common import REPO, Check, event_flags, report, side_by_side, window_args
from daemon import measure

sys.path.insert(0, str(REPO / "tests"))
from mqtt import HomeBroker, HomePeer

NAME = "home_assistant"
LIMIT_RSS_MB = 5.0
LIMIT_CPU_PERCENT = 0.5


IMPORT_COST = """
import sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024 / 1e6
import pinthesky.daemon.app
before = rss()
import pinthesky.homeassistant.bridge
print(rss() - before)
"""


def import_cost() -> float:
    """MB resident that loading the MQTT side (paho-mqtt and our modules) adds to a process
    that has loaded the daemon's own."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_COST], capture_output=True, text=True, check=True
    )
    return float(done.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    window = window_args(__doc__.split("\n\n")[0], argv, 30.0, 3, quick=(15.0, 30.0, 2))
    work = Path(tempfile.mkdtemp(prefix="pinthesky-bench-ha-"))
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        with HomeBroker(work / "broker") as broker:
            secret = work / "mqtt-password"
            secret.write_text(HomeBroker.USERS["camera"] + "\n")
            secret.chmod(0o600)
            config = work / "camera.toml"
            config.write_text(
                f'[mqtt]\nusername = "camera"\npassword_file = "{secret}"\n'
                '[cloud_connection]\nthing_name = "bench"\n'
            )
            ha = HomePeer(broker)
            ha.subscribe("homeassistant/#")
            ha.subscribe("pinthesky/#")
            on = ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port)]
            for n in range(window.rounds):
                print(f"# round {n + 1} of {window.rounds}: MQTT off and on, side by side")
                runs: dict[str, dict[str, Any]] = {}
                errors: list[str] = []

                def run(
                    label: str, runs: dict[str, Any] = runs, errors: list[str] = errors
                ) -> None:
                    where = work / f"{label}-{len(rounds)}"
                    args = [
                        "--config", str(config),
                        "--capture-dir", str(where / "images"),
                        "--local-settings", str(where / "local-settings.toml"),
                        *event_flags(where / "events"),
                        *(on if label == "on" else ["--mqtt-host", "none"]),
                    ]  # fmt: skip
                    try:
                        runs[label] = measure(window.warmup, window.seconds, where / "clips", args)
                    except RuntimeError as exc:
                        errors.append(f"{label}: {exc}")

                side_by_side(("off", "on"), run)
                if errors:
                    print("error: " + "; ".join(errors), file=sys.stderr)
                    return 2
                rounds.append(runs)
            received = len(ha.received)
            pictures = ha.count("pinthesky/bench/motion/picture")
            ha.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def total(label: str, key: str) -> float:
        return sum(r[label][key] for r in rounds)

    cpu_off = total("off", "cpu_seconds") / total("off", "window_seconds") * 100
    cpu_on = total("on", "cpu_seconds") / total("on", "window_seconds") * 100
    # The peak within the window (a crossing: a clip written, a picture taken, both daemons
    # alike), the median of the rounds: single readings move by a few MB with the clip writer.
    rss_off = median([r["off"]["rss_window_max_mb"] for r in rounds])
    rss_on = median([r["on"]["rss_window_max_mb"] for r in rounds])
    added = median([r["on"]["rss_window_max_mb"] - r["off"]["rss_window_max_mb"] for r in rounds])
    figures = {
        "settings": "synthetic 640x480 20 fps defaults; broker with a password file on 127.0.0.1",
        "window": f"t = {window.warmup:g} .. {window.warmup + window.seconds:g} s of each run",
        "rounds": len(rounds),
        "rss_mb_off": rss_off,
        "rss_mb_on": rss_on,
        "rss_mb_added": added,
        "import_mb": import_cost(),
        "rss_peak_mb_per_round": [
            [r["off"]["rss_window_max_mb"], r["on"]["rss_window_max_mb"]] for r in rounds
        ],
        "rss_end_mb_per_round": [[r["off"]["rss_mb"], r["on"]["rss_mb"]] for r in rounds],
        "cpu_percent_off": cpu_off,
        "cpu_percent_on": cpu_on,
        "cpu_percent_added": cpu_on - cpu_off,
        "cpu_percent_per_round": [
            [r[k]["cpu_seconds"] / r[k]["window_seconds"] * 100 for k in ("off", "on")]
            for r in rounds
        ],
        "threads_off": rounds[-1]["off"]["threads"],
        "threads_on": rounds[-1]["on"]["threads"],
        "messages_received": received,
        "motion_pictures_received": pictures,
        "stop_seconds_on": max(r["on"]["stop_seconds"] for r in rounds),
    }
    checks = [
        Check("rss_mb_added", "resident memory MQTT adds", added, LIMIT_RSS_MB, "MB"),
        Check(
            "cpu_percent_added",
            "CPU MQTT adds (% of one core)",
            cpu_on - cpu_off,
            LIMIT_CPU_PERCENT,
            "%",
        ),
    ]
    passed = report(NAME, figures, checks)
    return 1 if window.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
