"""How long a flood of input holds up the event loop, side by side with no flood.

Requirement (issue 14): the loop is never held up for more than 1 s by input. The real daemon
runs in this process (``--source synthetic``, its sidecar files in a temporary directory);
a task measures how late a 20 ms sleep wakes up (the loop's lag). First 15 s with nothing on
the input file (the baseline), then one write of 11 MB of valid ``health`` commands followed by
200 KB of ``{``, as in the issue's attack, and 15 s more. Log lines are counted throughout.

Run from the repository root: ``.venv/bin/python bench/flood.py``. Prints ``lag_ms_max_quiet=``,
``lag_ms_max_flood=``, ``commands_handled=``, ``log_lines_flood=`` and ``result=PASS|FAIL``;
writes bench/out/flood.json.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from _common import Check, in_scratch, report

from pinthesky.daemon.app import Daemon
from pinthesky.settings import load

NAME = "flood"
SECONDS = 15.0
LIMIT_MS = 1000.0


class Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.lines += 1


async def lags(seconds: float) -> list[float]:
    loop = asyncio.get_running_loop()
    out = []
    end = loop.time() + seconds
    while loop.time() < end:
        before = loop.time()
        await asyncio.sleep(0.02)
        out.append((loop.time() - before - 0.02) * 1000)
    return out


async def run(work: Path) -> dict[str, float]:
    events = work / "events"
    settings = load(
        {
            "source.source": "synthetic",
            "storage.combine_dir": str(work / "clips"),
            "storage.capture_dir": str(work / "images"),
            "events.event_input": str(events / "input.json"),
            "events.event_output": str(events / "output.json"),
            "events.configure_input": str(work / "configuration" / "input.json"),
            "events.configure_output": str(work / "configuration" / "output.json"),
        },
        environ={},
    )
    daemon = Daemon(settings)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.first_frame.wait(), 60)
    counter = Count()
    logging.getLogger().addHandler(counter)
    quiet = await lags(SECONDS)
    quiet_lines = counter.lines
    health = json.dumps({"name": "health", "context": {"health_id": "flood"}})
    fd = os.open(events / "input.json", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (health * (11_000_000 // len(health))).encode())
        os.write(fd, b"{" * 200_000)
    finally:
        os.close(fd)
    flood = await lags(SECONDS)
    assert daemon.control is not None
    handled = daemon.control.commands
    daemon.request_stop()
    await task
    return {
        "lag_ms_max_quiet": round(max(quiet), 1),
        "lag_ms_max_flood": round(max(flood), 1),
        "lag_ms_p99_flood": round(sorted(flood)[int(0.99 * (len(flood) - 1))], 1),
        "commands_handled": handled,
        "log_lines_quiet": quiet_lines,
        "log_lines_flood": counter.lines - quiet_lines,
    }


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115
    figures = in_scratch("flood", lambda work: asyncio.run(run(work)))
    if figures is None:
        return 2
    checks = [
        Check(
            "lag_ms_max_flood",
            "loop held up by a flood of input",
            figures["lag_ms_max_flood"],
            LIMIT_MS,
            "ms",
        )
    ]
    passed = report(NAME, figures, checks)
    return 1 if "--strict" in sys.argv and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
