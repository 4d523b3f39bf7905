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

from pinthesky.settings import https_url

FILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_DURATION_S = 600
_ECHOED = ("capture_id", "health_id", "session", "connection")
CONNECTION_ID = re.compile(r"[A-Za-z0-9=+_-]{1,128}")
"""API Gateway connection ids are 16 base64 characters; nothing else goes into a URL path."""


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
class Connection:
    """Where the data plane wants answers: a WebSocket connection of API Gateway."""

    id: str
    """The connection a live stream or a reply goes to."""
    manager_id: str | None = None
    """The console's own connection, told when a live stream ends (``record_end``)."""
    management_endpoint: str | None = None
    """The management API of that WebSocket API (https); the configured one when absent."""


@dataclass(frozen=True)
class Record(Command):
    start: bool = False
    stop: bool = False
    connection: Connection | None = None


def parse_connection(value: Any) -> Connection:
    """The typed ``connection`` block of a command; ``Refused`` with the reason otherwise."""
    if not isinstance(value, dict):
        raise Refused("connection must be an object")
    cid = value.get("id")
    if not isinstance(cid, str) or not CONNECTION_ID.fullmatch(cid):
        raise Refused(f"connection.id {_short(cid)} must be 1-128 of A-Z a-z 0-9 = + _ -")
    manager = value.get("manager_id")
    if manager is not None and (
        not isinstance(manager, str) or not CONNECTION_ID.fullmatch(manager)
    ):
        raise Refused(
            f"connection.manager_id {_short(manager)} must be 1-128 of A-Z a-z 0-9 = + _ -"
        )
    endpoint = value.get("management_endpoint")
    if endpoint is not None:
        try:
            endpoint = https_url(endpoint)
        except ValueError as exc:
            raise Refused(f"connection.management_endpoint {_short(endpoint)} {exc}") from None
    return Connection(cid, manager, endpoint)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
    try:
        echo = _echo(context)
    except Refused as exc:
        raise Refused(f"{shown}: {exc}") from None
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
        start, stop = session.get("start") is True, session.get("stop") is True
        if start == stop:
            raise Refused("record: session must ask to start or to stop (one of them true)")
        try:
            connection = parse_connection(context.get("connection"))
        except Refused as exc:
            raise Refused(f"record: {exc}") from None
        return Record(echo, start, stop, connection)
    raise Refused(
        f"{shown!r} is not a command (capture_video, capture_image, health, configuration, record)"
    )
