"""What the local control page costs the daemon: CPU and memory with the page open vs not.

Three daemons run side by side (bench/daemon.py's method, the same machine load for all) on
the synthetic source with defaults (640x480, 20 fps; live view 640x480 at 5 fps):

- ``off``: no local web server at all (``--http-port`` not given);
- ``idle``: the web server and the control API on 127.0.0.1, nobody looking;
- ``open``: the same with the control page open, as a browser holds it: the page, its script,
  ``/api/settings`` and ``/api/clips`` once, then the live MJPEG picture read as fast as the
  daemon sends it, and the settings and clips asked for again every 10 s (a reload).

After ``--warmup`` seconds (default 30) each daemon's CPU time is read over ``--seconds``
(default 60); ``--rounds`` (default 2) repeats it. The page's cost is ``open`` minus ``off``
as a share of one core (most of it is the live picture's JPEG encoding, which bench/live.py
measures alone); the idle server's is ``idle`` minus ``off``. Memory is each daemon's resident
set at the end of its window.

Run (from the repository root; about three minutes)::

    .venv/bin/python bench/control_page.py
    .venv/bin/python bench/control_page.py --quick    # 15 s warm-up, 20 s window, one round

Prints ``page_open_cpu_percent=``, ``idle_server_cpu_percent=``, ``rss_mb_*=`` and
``result=PASS|FAIL``; writes bench/out/control_page.json. Exits 0 whether the requirements
pass or fail (``--strict`` exits 1 on FAIL); 2 if a run could not be measured.
"""

from __future__ import annotations

import base64
import http.client
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import REPO, Check, event_flags, in_scratch, report, side_by_side, window_args
from daemon import measure
from live import Viewer

sys.path.insert(0, str(REPO / "tests"))
from servers import free_port

NAME = "control_page"
LIMIT_PAGE_PERCENT = 15.0
"""The page open may cost what one live viewer may (bench/live.py's limit)."""
LIMIT_IDLE_PERCENT = 0.5
PASSWORD = "bench"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"b:{PASSWORD}".encode()).decode()}
RUNS = ("off", "idle", "open")


class PageUser(threading.Thread):
    """The page's own requests: the document, its script, the API, again every 10 s."""

    def __init__(self, port: int) -> None:
        super().__init__(name=f"page-{port}", daemon=True)
        self.port = port
        self.requests = 0
        self.refused = 0
        """Connections refused or reset: the daemon not listening yet, or stopping."""
        self.error = ""
        self._halt = threading.Event()

    def run(self) -> None:
        paths = ("/", "/app.js", "/api/settings", "/api/clips")
        while not self._halt.is_set():
            for path in paths:
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                    conn.request("GET", path, headers=AUTH)
                    response = conn.getresponse()
                    response.read()
                    conn.close()
                    if response.status != 200:
                        self.error = f"{path}: {response.status}"
                    self.requests += 1
                except OSError:
                    self.refused += 1
            self._halt.wait(10)

    def stop(self) -> None:
        self._halt.set()


def rounds(warmup: float, seconds: float, count: int, scratch: Path) -> list[dict[str, Any]]:
    done = []
    for n in range(count):
        print(f"# round {n + 1} of {count}: no page, page idle, page open, side by side",
              flush=True)  # fmt: skip
        runs: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        users: list[Any] = []

        def run(
            label: str, n: int = n, runs: Any = runs, errors: Any = errors, users: Any = users
        ) -> None:
            work = scratch / f"round{n}-{label}"
            extra = event_flags(work / "events")
            if label != "off":
                port = free_port()
                extra += ["--http-port", str(port), "--http-bind", "127.0.0.1",
                          "--http-password", PASSWORD,
                          "--local-settings", str(work / "local.toml")]  # fmt: skip
            if label == "open":
                users.extend([PageUser(port), Viewer(port, AUTH)])
                for user in users:
                    user.start()
            try:
                runs[label] = measure(warmup, seconds, work / "clips", extra)
            except RuntimeError as exc:
                errors.append(f"{label}: {exc}")

        side_by_side(RUNS, run)
        for user in users:
            user.stop()
            user.join(10)
        if errors:
            raise RuntimeError("; ".join(errors))
        page, viewer = users
        if page.error or page.requests < 4 or viewer.jpegs == 0:
            raise RuntimeError(f"the page did not load: {page.error or viewer.error}")
        runs["open"]["page_requests"] = page.requests
        runs["open"]["page_refused"] = page.refused
        runs["open"]["viewer_jpegs"] = viewer.jpegs
        done.append(runs)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    window = window_args(__doc__.split("\n\n")[0], argv, 30.0, 2, quick=(15.0, 20.0, 1))
    measured = in_scratch(
        "page", lambda scratch: rounds(window.warmup, window.seconds, window.rounds, scratch)
    )
    if measured is None:
        return 2

    def percent(label: str) -> float:
        cpu = sum(float(r[label]["cpu_seconds"]) for r in measured)
        return cpu / sum(float(r[label]["window_seconds"]) for r in measured) * 100

    page = percent("open") - percent("off")
    idle = percent("idle") - percent("off")
    figures = {
        "settings": "synthetic 640x480 20 fps defaults; live view 640x480 at 5 fps",
        "window": f"t = {window.warmup:g} .. {window.warmup + window.seconds:g} s of each run",
        "rounds": len(measured),
        "cpu_percent_off": percent("off"),
        "cpu_percent_idle": percent("idle"),
        "cpu_percent_open": percent("open"),
        "page_open_cpu_percent": page,
        "idle_server_cpu_percent": idle,
        "rss_mb_off": max(r["off"]["rss_mb"] for r in measured),
        "rss_mb_idle": max(r["idle"]["rss_mb"] for r in measured),
        "rss_mb_open": max(r["open"]["rss_mb"] for r in measured),
        "page_requests": sum(r["open"]["page_requests"] for r in measured),
        "viewer_jpegs": sum(r["open"]["viewer_jpegs"] for r in measured),
    }
    checks = [
        Check(
            "page_open_cpu_percent",
            "CPU of the control page open (with its live picture)",
            page,
            LIMIT_PAGE_PERCENT,
            "%",
        ),
        Check(
            "idle_server_cpu_percent",
            "CPU of the page's server while nobody looks",
            idle,
            LIMIT_IDLE_PERCENT,
            "%",
        ),
    ]
    passed = report(NAME, figures, checks)
    return 1 if window.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
