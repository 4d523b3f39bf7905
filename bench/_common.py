"""Shared helpers of the benchmark scripts: paths, figures, checks and the JSON report.

Every benchmark prints its figures as ``key=value`` lines (one per line, so ``grep`` and
``cut -d= -f2`` work), then one ``check ...`` line per requirement and a final
``result=PASS`` or ``result=FAIL``, and writes the same figures to ``bench/out/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "bench" / "out"
FIRST_FRAME = re.compile(r"first frame buffered ([0-9.]+) s after start")
"""The daemon's INFO line once the ring holds its first packet (its own figure in group 1)."""


@dataclass(frozen=True)
class Check:
    """One requirement: ``value`` must be at most ``limit`` (in ``unit``)."""

    key: str
    what: str
    value: float
    limit: float
    unit: str

    @property
    def passed(self) -> bool:
        return self.value <= self.limit

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def pinthesky_command() -> list[str]:
    """The console script of the project venv (falls back to ``python -m pinthesky``)."""
    script = Path(sys.executable).parent / "pinthesky"
    if script.is_file():
        return [str(script)]
    venv_script = REPO / ".venv" / "bin" / "pinthesky"
    if venv_script.is_file():
        return [str(venv_script)]
    found = shutil.which("pinthesky")
    if found:
        return [found]
    return [sys.executable, "-m", "pinthesky"]


def machine() -> dict[str, Any]:
    """What the figures were measured on (load matters: other work shares the cores)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {
        "cpu_model": model or platform.processor(),
        "cpus": os.cpu_count(),
        "loadavg": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
    }


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def print_figures(figures: dict[str, Any]) -> None:
    for key, value in figures.items():
        if isinstance(value, dict | list):
            continue  # detail for the JSON only
        print(f"{key}={fmt(value)}", flush=True)


def in_scratch(name: str, measure: Callable[[Path], T]) -> T | None:
    """``measure`` run in a scratch directory of its own, removed afterwards.

    A ``RuntimeError`` (a daemon or a server that did not behave) is one ``error:`` line and
    None, for the benchmark to exit 2.
    """
    scratch = Path(tempfile.mkdtemp(prefix=f"pinthesky-bench-{name}-"))
    try:
        return measure(scratch)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def report(name: str, figures: dict[str, Any], checks: list[Check]) -> bool:
    """Print figures, checks and the verdict; write ``bench/out/<name>.json``; True if PASS."""
    print_figures(figures)
    for c in checks:
        print(
            f"check {c.key}: {fmt(c.value)} {c.unit} <= {fmt(c.limit)} {c.unit} {c.verdict}",
            flush=True,
        )
    passed = all(c.passed for c in checks)
    result = "PASS" if passed else "FAIL"
    print(f"result={result}", flush=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "result": result,
        "checks": [{**asdict(c), "pass": c.passed} for c in checks],
        "figures": figures,
        "machine": machine(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"json={path.relative_to(REPO)}", flush=True)
    return passed


class DaemonProcess:
    """``pinthesky`` as a child process whose log (stderr) is collected line by line.

    A reader thread timestamps every line as it arrives (``time.monotonic``), so waiting for
    a line never blocks the pipe and the daemon never stalls on a full one.
    """

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = [*pinthesky_command(), *args]
        run_env = dict(os.environ if env is None else env)
        run_env.pop("JOURNAL_STREAM", None)  # keep the timestamped log format
        self.spawned = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=run_env,
        )
        self.pid = self.proc.pid
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, name="daemon-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> tuple[float, re.Match[str]]:
        """(arrival time, match) of the first log line matching ``pattern``.

        Raises ``RuntimeError`` with the log's tail if the daemon exits or times out first.
        """
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for at, line in self.lines[seen:]:
                    m = pattern.search(line)
                    if m:
                        return at, m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "exited" if self._eof else f"did not log it within {timeout:g} s"
                    raise RuntimeError(
                        f"daemon {why} before /{pattern.pattern}/; log tail:\n" + self.tail()
                    )
                self._cond.wait(min(left, 0.5))

    def matching(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        with self._cond:
            return [m for _, line in self.lines if (m := pattern.search(line))]

    def matching_at(self, pattern: re.Pattern[str]) -> list[tuple[float, re.Match[str]]]:
        """(arrival time, match) of every log line matching ``pattern``."""
        with self._cond:
            return [(at, m) for at, line in self.lines if (m := pattern.search(line))]

    def tail(self, n: int = 15) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[-n:])

    def stop(self, timeout: float = 5.0) -> tuple[int | None, float]:
        """SIGTERM, then wait up to ``timeout`` s: (exit code or None if it hung, seconds).

        A daemon that does not exit in time is killed (and its code reported as None).
        """
        if self.proc.poll() is not None:
            return self.proc.returncode, 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t0
        if code is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        return code, took

    def kill(self) -> None:
        """Last resort on an error path: make sure the child does not outlive us."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass(frozen=True)
class Window:
    """How a side-by-side bench measures: warm-up and window in seconds, rounds, --strict."""

    warmup: float
    seconds: float
    rounds: int
    strict: bool


def window_args(
    description: str,
    argv: Sequence[str] | None,
    warmup: float,
    rounds: int,
    quick: tuple[float, float, int],
) -> Window:
    """The command line of a side-by-side bench (``--quick`` for a short look)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--warmup", type=float, default=warmup, help=f"seconds (default {warmup:g})"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="window (default 60)")
    parser.add_argument("--rounds", type=int, default=rounds, help=f"side-by-side runs ({rounds})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--warmup {:g} --seconds {:g} --rounds {}".format(*quick),
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 on FAIL")
    args = parser.parse_args(argv)
    if args.quick:
        return Window(*quick, args.strict)
    return Window(args.warmup, max(1.0, args.seconds), args.rounds, args.strict)


def event_flags(directory: Path) -> list[str]:
    """Each daemon its own sidecar files (benches run daemons side by side)."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        "--event-input", str(directory / "input.json"),
        "--event-output", str(directory / "output.json"),
        "--configure-input", str(directory / "config-input.json"),
        "--configure-output", str(directory / "config-output.json"),
    ]  # fmt: skip


def side_by_side(labels: Sequence[str], run: Callable[[str], None]) -> None:
    """``run(label)`` for every label at once, each on its own thread; returns when all have."""
    threads = [threading.Thread(target=run, args=(label,)) for label in labels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
