"""AWS IoT Jobs for the Pi In The Sky console's buttons: reboot, shutdown, service logs, update.

Only the handlers below run, with arguments checked one by one: a job document names a
handler, it never supplies a command. Documents come in aws-iot-device-client's two shapes, so
existing job templates keep working::

    {"operation": "reboot", "args": []}
    {"version": "1.0", "steps": [{"action": {"type": "runHandler",
        "input": {"handler": "read-service-logs.sh", "args": ["pinthesky", "100"]}}}]}

Handler names are accepted with or without the old installer's script names
(``read-service-logs.sh``, ``upgrade-pinthesky.sh``, ``reboot.sh``, ``shutdown.sh``).
``run_job`` returns the outcome; the sidecar reports it as the job execution's status, with the
tail of the handler's output.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

OUTPUT_CHARS = 1000
"""statusDetails values are short strings: the output's tail is reported."""
TIMEOUT_S = 600.0
SERVICES = ("pinthesky", "pinthesky-iot")
_VERSION = re.compile(r"\d+(\.\d+){0,3}([ab]|rc|\.post|\.dev)?\d*")
_TIME = re.compile(r"[0-9A-Za-z :+-]{1,40}")


class JobRefused(ValueError):
    """The document asks for something that is not an allowed handler with valid arguments."""


@dataclass(frozen=True)
class Job:
    handler: str
    argv: list[str]


def _service_logs(args: Sequence[str]) -> list[str]:
    service, lines, pattern, since, until = [*args, "", "", "", "", ""][:5]
    service = service or "pinthesky"
    if service not in SERVICES:
        raise JobRefused(f"service-logs: service {service!r} is not one of {', '.join(SERVICES)}")
    count = lines or "100"
    if not count.isdigit() or not 1 <= int(count) <= 10_000:
        raise JobRefused(f"service-logs: lines {count!r} must be a number from 1 to 10000")
    argv = ["journalctl", "--no-pager", "-u", service, "-n", count]
    if pattern:
        if len(pattern) > 200 or "\n" in pattern:
            raise JobRefused("service-logs: pattern must be one line of at most 200 characters")
        argv += ["-g", pattern]
    for flag, value in (("--since", since), ("--until", until)):
        if value:
            if not _TIME.fullmatch(value):
                raise JobRefused(f"service-logs: {flag[2:]} {value!r} is not a time")
            argv += [flag, value]
    return argv


def _update(args: Sequence[str]) -> list[str]:
    version = args[0] if args else ""
    spec = "pinthesky"
    if version and version != "latest":
        if not _VERSION.fullmatch(version):
            raise JobRefused(f"update: version {version!r} is not a release number")
        spec = f"pinthesky=={version}"
    # Into the environment this sidecar runs from; systemd restarts the services after it.
    return [sys.executable, "-m", "pip", "install", "--upgrade", "--no-input", spec]


def _no_args(argv: list[str]) -> Callable[[Sequence[str]], list[str]]:
    def build(args: Sequence[str]) -> list[str]:
        if args:
            raise JobRefused(f"{argv[-1]}: takes no arguments")
        return argv

    return build


HANDLERS: dict[str, Callable[[Sequence[str]], list[str]]] = {
    "reboot": _no_args(["systemctl", "reboot"]),
    "shutdown": _no_args(["systemctl", "poweroff"]),
    "service-logs": _service_logs,
    "update": _update,
}
ALIASES = {
    "reboot.sh": "reboot",
    "shutdown.sh": "shutdown",
    "read-service-logs.sh": "service-logs",
    "upgrade-pinthesky.sh": "update",
}


def parse_job(document: Any) -> Job:
    """The handler and command line a job document asks for, or ``JobRefused``."""
    if not isinstance(document, dict):
        raise JobRefused("the job document is not an object")
    if "steps" in document:
        steps = document["steps"]
        if not isinstance(steps, list) or len(steps) != 1 or not isinstance(steps[0], dict):
            raise JobRefused("only job documents with exactly one step are supported")
        action = steps[0].get("action")
        if not isinstance(action, dict) or action.get("type", "runHandler") != "runHandler":
            raise JobRefused("the step's action must be of type runHandler")
        given = action.get("input")
        if not isinstance(given, dict):
            raise JobRefused("the step's action has no input")
        name, args = given.get("handler"), given.get("args", [])
    else:
        name, args = document.get("operation"), document.get("args", [])
    if not isinstance(name, str):
        raise JobRefused("the job document names no handler")
    handler = ALIASES.get(name, name)
    if handler not in HANDLERS:
        raise JobRefused(f"{name!r} is not an allowed handler ({', '.join(HANDLERS)})")
    if not isinstance(args, list) or not all(isinstance(a, str | int) for a in args):
        raise JobRefused(f"{handler}: args must be a list of strings")
    if len(args) > 8:
        raise JobRefused(f"{handler}: too many args")
    return Job(handler, HANDLERS[handler]([str(a) for a in args]))


def run_job(job: Job, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    """Run the handler (blocking: call it off the event loop): (succeeded, output's tail)."""
    try:
        done = subprocess.run(
            job.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        return False, f"{job.argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return False, f"{job.handler}: no result after {timeout:.0f} s"
    output = done.stdout.decode("utf-8", errors="replace")[-OUTPUT_CHARS:]
    if done.returncode != 0:
        return False, output or f"{job.handler}: exit code {done.returncode}"
    return True, output
