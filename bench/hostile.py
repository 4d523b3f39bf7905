"""What a hostile home network costs the owner and the camera, side by side with a quiet one.

Two daemons run at once (the same machine load for both) on the synthetic source with the
defaults (640x480, 20 fps; a walk-in every 30 s), each with the page and RTSP on 127.0.0.1 and
a password:

- ``quiet``: only the owner uses it;
- ``attacked``: the same, while ``tests/intruder.py``'s attackers go at it for the whole
  window: two password guessers on each protocol from 127.0.0.2, a hundred idle or half-open
  sockets on each port from 127.0.0.3, and forged Host headers on the page.

After ``--warmup`` seconds (default 10), for ``--seconds`` (default 60), the owner (127.0.0.1)
asks each daemon's page for ``/health.json`` twice a second and opens its RTSP stream once,
half way through. Side by side: the page's median and slowest answer, the seconds to the
first picture of the stream, the walk-ins confirmed (and how long after they began), the
daemon's CPU (% of one core) and its log lines a minute; for the attacked one, the wrong
passwords checked a minute on each protocol beside the tries sent.

Requirements: at most 20 wrong passwords checked a minute on each protocol (the guard's
schedule allows 14 in the first minute and 6 a minute after); at most 60 log lines a minute
under attack; the owner's page answers within 1 s and the stream shows a picture within 5 s
under attack; as many walk-ins confirmed under attack as at rest.

Run (from the repository root; about a minute and a half)::

    .venv/bin/python bench/hostile.py
    .venv/bin/python bench/hostile.py --quick    # 5 s warm-up, 30 s window

Prints ``key=value`` figures and ``result=PASS|FAIL``; writes bench/out/hostile.json. Exits 0
whether the requirements pass or fail (``--strict`` exits 1 on FAIL); 2 if a run could not be
measured.
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    FIRST_FRAME,
    REPO,
    Check,
    DaemonProcess,
    event_flags,
    in_scratch,
    report,
    side_by_side,
    window_args,
)
from daemon import cpu_seconds

sys.path.insert(0, str(REPO / "tests"))
from intruder import Attack, request
from servers import free_port

NAME = "hostile"
PASSWORD = "bench pass"
CONFIRMED = re.compile(r"motion: confirmed ([0-9.]+) s after it began")


def owner_first_picture(port: int) -> float:
    """Seconds until FFmpeg's RTSP client (PyAV) decodes the stream's first picture."""
    import av

    started = time.monotonic()
    url = f"rtsp://me:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{port}/live"
    with av.open(url, options={"rtsp_transport": "tcp"}, timeout=20) as container:
        for _ in container.decode(video=0):
            return time.monotonic() - started
    return float("inf")


def run_one(label: str, scratch: Path, warmup: float, seconds: float) -> dict[str, Any]:
    work = scratch / label
    dirs = {"clips": work / "clips", "images": work / "images", "secret": work / "secret"}
    for d in (dirs["clips"], dirs["images"]):
        d.mkdir(parents=True)
    dirs["secret"].write_bytes(b"SECRET\n")
    http_port, rtsp_port = free_port(), free_port()
    config = work / "pinthesky.toml"
    config.write_text(
        f'[http]\npassword = "{PASSWORD}"\nport = {http_port}\nbind = "127.0.0.1"\n'
        f'local_settings = "{work / "local-settings.toml"}"\n'
        f'[rtsp]\nport = {rtsp_port}\nbind = "127.0.0.1"\n'
    )
    daemon = DaemonProcess(
        [
            "--config", str(config),
            "--source", "synthetic",
            "--combine-dir", str(dirs["clips"]),
            "--capture-dir", str(dirs["images"]),
            *event_flags(work / "events"),
        ]
    )  # fmt: skip
    attack = Attack(http_port, rtsp_port, PASSWORD, dirs)
    try:
        daemon.wait_for(FIRST_FRAME, 60)
        time.sleep(warmup)  # the bench's own pacing: let start-up settle before measuring
        stat = Path(f"/proc/{daemon.pid}/stat")
        lines0, cpu0, t0 = len(daemon.lines), cpu_seconds(stat), time.monotonic()
        if label == "attacked":
            for n in range(2):
                attack.start(f"guess page {n}", attack.guess_page)
                attack.start(f"guess rtsp {n}", attack.guess_rtsp)
            attack.start("idle page", attack.idle_page)
            attack.start("idle rtsp", attack.idle_rtsp)
            attack.start("hosts", attack.forge_hosts)
        answers: list[float] = []
        first_picture = None
        deadline = t0 + seconds
        while time.monotonic() < deadline:
            status, _, took = request(http_port, "GET", "/health.json", password=PASSWORD)
            answers.append(took if status == 200 else float("inf"))
            if first_picture is None and time.monotonic() > t0 + seconds / 2:
                first_picture = owner_first_picture(rtsp_port)
            time.sleep(0.5)  # the owner's pace: twice a second
        attack.join()
        window = time.monotonic() - t0
        cpu = cpu_seconds(stat) - cpu0
        lines = len(daemon.lines) - lines0
        confirmed = [float(m.group(1)) for at, m in daemon.matching_at(CONFIRMED) if at >= t0]
    finally:
        code, _ = daemon.stop()
    got = attack.got
    out: dict[str, Any] = {
        "window_seconds": round(window, 1),
        "page_ms_median": round(statistics.median(answers) * 1000, 1),
        "page_ms_max": round(max(answers) * 1000, 1),
        "stream_first_picture_s": round(first_picture or float("inf"), 2),
        "walk_ins_confirmed": len(confirmed),
        "confirmed_after_s_max": max(confirmed, default=0.0),
        "cpu_percent": round(cpu / window * 100, 2),
        "log_lines_per_min": round(lines / window * 60, 1),
        "exit_code": code,
    }
    for proto in ("page", "rtsp"):
        tries = attack.tally(f"guess {proto}")
        out[f"{proto}_tries_per_s"] = round(tries.total() / window, 1)
        out[f"{proto}_checked_per_min"] = round(tries[401] / window * 60, 1)
    out["forged_hosts_refused"] = got.get("hosts", Counter())[403]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    w = window_args(__doc__ or "", argv, warmup=10, rounds=1, quick=(5, 30, 1))

    def measure(scratch: Path) -> dict[str, dict[str, Any]]:
        runs: dict[str, dict[str, Any]] = {}

        def one(label: str) -> None:
            runs[label] = run_one(label, scratch, w.warmup, w.seconds)

        side_by_side(["quiet", "attacked"], one)
        return runs

    runs = in_scratch(NAME, measure)
    if runs is None or set(runs) != {"quiet", "attacked"}:
        return 2
    quiet, attacked = runs["quiet"], runs["attacked"]
    figures = {f"{k}_{label}": v for label, run in runs.items() for k, v in run.items()}
    checks = [
        Check(
            "page_checked_per_min_attacked",
            "wrong page passwords checked a minute",
            attacked["page_checked_per_min"],
            20,
            "/min",
        ),
        Check(
            "rtsp_checked_per_min_attacked",
            "wrong RTSP passwords checked a minute",
            attacked["rtsp_checked_per_min"],
            20,
            "/min",
        ),
        Check(
            "log_lines_per_min_attacked",
            "log lines a minute under attack",
            attacked["log_lines_per_min"],
            60,
            "lines",
        ),
        Check(
            "page_ms_max_attacked",
            "owner's slowest page answer",
            attacked["page_ms_max"],
            1000,
            "ms",
        ),
        Check(
            "stream_first_picture_s_attacked",
            "owner's first RTSP picture",
            attacked["stream_first_picture_s"],
            5,
            "s",
        ),
        Check(
            "walk_ins_missed",
            "walk-ins confirmed at rest but not under attack",
            quiet["walk_ins_confirmed"] - attacked["walk_ins_confirmed"],
            0,
            "",
        ),
    ]
    passed = report(NAME, figures, checks)
    return 1 if w.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
