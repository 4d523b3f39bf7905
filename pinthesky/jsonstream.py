"""Reading JSON that anyone may have written: concatenated values, garbage, attacks.

aws-iot-device-client appends every MQTT message to the input file, so the file holds a stream
of JSON values (``{...}{...}``), the literal ``DC-Publish`` trigger, or whatever a publisher
sent. ``parse_stream`` returns every object it can read and one line per thing it skipped. It
never raises: sizes are capped before parsing, NaN/Infinity and huge numbers are refused, deep
nesting ends in a rejection (``RecursionError`` is caught, as is every ``ValueError``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGE_BYTES = 128_000
"""AWS IoT's largest MQTT payload; nothing larger is a real message."""
MAX_DEPTH = 16
"""Our documents nest six levels at most (the shadow's ``current.state.desired.x``)."""
MAX_INT_DIGITS = 19
DC_PUBLISH = "DC-Publish"
"""What aws-iot-device-client appends to ask for a republish of its publish file."""


class _Rejected(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _Rejected(f"{name} is not allowed")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Rejected(f"a number of {len(text)} digits is not allowed")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected(f"{text[:20]} is out of range")
    return value


_DECODER = json.JSONDecoder(
    parse_constant=_reject_constant, parse_int=_parse_int, parse_float=_parse_float
)


def _depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth, stopping early past ``limit``."""
    if isinstance(value, dict | list):
        if limit <= 0:
            return 1
        items = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(v, limit - 1) for v in items), default=0)
    return 0


@dataclass
class Parsed:
    values: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """One line per thing that was not a usable message."""
    consumed: int = 0
    """Characters of the text that were dealt with (a value cut short at the end is not)."""


def parse_stream(text: str, final: bool = True, limit: int | None = None) -> Parsed:
    """Every JSON object in ``text``; with ``final=False`` an incomplete value at the end is
    left for later (``consumed`` stops before it) instead of being rejected. With ``limit``,
    parsing stops after that many values and skipped things (the rest is for later)."""
    out = Parsed()
    pos = 0
    n = len(text)
    while pos < n and (limit is None or len(out.values) + len(out.skipped) < limit):
        while pos < n and text[pos] in " \t\r\n\x00":
            pos += 1
        if pos >= n:
            break
        if text.startswith(DC_PUBLISH, pos):
            out.skipped.append("DC-Publish trigger ignored")
            pos += len(DC_PUBLISH)
            continue
        start = pos
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except _Rejected as exc:
            # Well-formed but refused: skip the whole value, so that objects nested in it are
            # never taken for messages of their own.
            out.skipped.append(f"rejected a message: {exc}")
            pos = _end_of_value(text, start)
            continue
        except RecursionError:
            out.skipped.append("rejected a message: nested too deeply")
            pos = _end_of_value(text, start)
            continue
        except ValueError as exc:
            if not final and _incomplete(exc, text):
                break  # the writer may still be appending this one
            out.skipped.append(
                f"skipped text that is not JSON at character {start}: {text[start : start + 40]!r}"
            )
            pos = _next_object(text, start + 1)
            continue
        pos = end
        if end - start > MAX_MESSAGE_BYTES:
            out.skipped.append(
                f"rejected a message of {end - start} bytes (at most {MAX_MESSAGE_BYTES})"
            )
        elif not isinstance(value, dict):
            out.skipped.append(f"rejected a message that is not an object: {type(value).__name__}")
        elif _depth(value) > MAX_DEPTH:
            out.skipped.append("rejected a message: nested too deeply")
        else:
            out.values.append(value)
    out.consumed = min(pos, n)
    return out


def _incomplete(exc: ValueError, text: str) -> bool:
    return isinstance(exc, json.JSONDecodeError) and exc.pos >= len(text.rstrip()) - 1


def _end_of_value(text: str, start: int) -> int:
    """Just past the value starting at ``start`` (brackets matched outside strings)."""
    depth = 0
    in_string = False
    i = start
    n = len(text)
    while i < n:
        c = text[i]
        if in_string:
            if c == "\\":
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth <= 0:
                return i + 1
        elif depth == 0 and c in " \t\r\n":
            return i  # a bare scalar
        i += 1
    return n


def _next_object(text: str, pos: int) -> int:
    """Where the next value could start: the next ``{`` (or the end)."""
    found = text.find("{", pos)
    return len(text) if found < 0 else found
