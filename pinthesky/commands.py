"""The five commands the cloud may send, and nothing else.

``parse_command`` turns one untrusted message ``{"name": ..., "context": {...}}`` into a typed
command, or a one-line reason it was refused. Only the contract's five names are commands:
the old daemon let any internal event through, and one such message made it upload and delete
its own private key. Ids and blocks the cloud sent (``capture_id``, ``health_id``, ``session``,
``connection``) are kept unchanged to be echoed in the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

FILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_DURATION_S = 600
_ECHOED = ("capture_id", "health_id", "session", "connection")


@dataclass(frozen=True)
class Command:
    echo: dict[str, Any] = field(default_factory=dict)
    """The request's ids and blocks, echoed unchanged in the answer."""


@dataclass(frozen=True)
class CaptureVideo(Command):
    duration: int = 30


@dataclass(frozen=True)
class CaptureImage(Command):
    file_name: str | None = None


@dataclass(frozen=True)
class Health(Command):
    pass


@dataclass(frozen=True)
class Configuration(Command):
    pass


@dataclass(frozen=True)
class Record(Command):
    start: bool = False
    stop: bool = False


class Refused(ValueError):
    """The message is not a command we take; the text says why, in one line."""


def _echo(context: dict[str, Any]) -> dict[str, Any]:
    echo: dict[str, Any] = {}
    for key in _ECHOED:
        if key in context:
            value = context[key]
            if key in ("capture_id", "health_id") and not isinstance(value, str | int):
                raise Refused(f"{key} must be a string")
            if key in ("session", "connection") and not isinstance(value, dict):
                raise Refused(f"{key} must be an object")
            echo[key] = value
    return echo


def parse_command(message: dict[str, Any], default_duration: int) -> Command:
    """A typed command from one message; ``Refused`` with the reason otherwise."""
    name = message.get("name")
    context = message.get("context", {})
    if context is None:
        context = {}
    if not isinstance(name, str):
        raise Refused("no command name")
    if not isinstance(context, dict):
        raise Refused(f"{name}: context must be an object")
    shown = name if len(name) <= 40 else name[:37] + "..."
    echo = _echo(context)
    if name == "capture_video":
        duration = context.get("duration", default_duration)
        if isinstance(duration, str) and duration.strip().isdigit():
            duration = int(duration)
        if (
            isinstance(duration, bool)
            or not isinstance(duration, int | float)
            or not (1 <= duration <= MAX_DURATION_S)
        ):
            raise Refused(
                f"capture_video: duration {duration!r} must be 1 to {MAX_DURATION_S} seconds"
            )
        return CaptureVideo(echo, int(duration))
    if name == "capture_image":
        file_name = context.get("file_name")
        if file_name is not None and (
            not isinstance(file_name, str)
            or not FILE_NAME.fullmatch(file_name)
            or file_name.startswith(".")
        ):
            raise Refused(
                f"capture_image: file_name {str(file_name)[:70]!r} must be a plain "
                "name of letters, digits, '.', '_' or '-' (1-64, not hidden)"
            )
        return CaptureImage(echo, file_name)
    if name == "health":
        return Health(echo)
    if name == "configuration":
        return Configuration(echo)
    if name == "record":
        session = context.get("session")
        if not isinstance(session, dict):
            raise Refused("record: session must be an object with start or stop")
        return Record(echo, bool(session.get("start")), bool(session.get("stop")))
    raise Refused(
        f"{shown!r} is not a command (capture_video, capture_image, health, configuration, record)"
    )
