"""The local control API behind ``/api/``: settings, a manual clip, a still, the clips and
stills, health.

Requests arrive parsed (method, path after ``/api``, JSON body) from ``web.py``, which has
already checked the password, the origin and the body's size. Every answer is a status and a
JSON document; a refusal is ``{"error": "<one line>"}`` (``errors`` for several settings).

Settings use the sections and names of the TOML file and the shadow. A change takes the path
every change made on the home network takes (``changes.LocalChanges``: the option table, the
daemon's ``reconfigure``, the ``--local-settings`` file, the shadow's reported state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pinthesky.control.controller import Host as ControlHost
from pinthesky.local.page import health_rows
from pinthesky.settings import (
    OPTION_BY_KEY,
    PAGE_KEYS,
    Rect,
    Resolution,
    Settings,
    Window,
    flatten,
    merge,
)

if TYPE_CHECKING:
    from pinthesky.control.controller import Control
    from pinthesky.local.changes import LocalChanges
    from pinthesky.record.clips import ClipStore
    from pinthesky.record.stills import StillStore

log = logging.getLogger(__name__)

MAX_RECORD_S = 600
"""Longest manual clip the page may ask for."""
PAGE_STILLS = 48
"""Newest stills listed (the page shows them as pictures; the rest are counted)."""
_PROBE = "\x00?"
"""A value no option accepts: its refusal is the option's "allowed" text."""
_CLIP = re.compile(r"^(\d{1,12})(?:-(\d{1,6}))?\.motion\.(mp4|h264)$")


class ApiError(Exception):
    """A refused request: its status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_value(value: Any) -> Any:
    """A setting's value as the API shows it (the TOML file's text for the typed ones)."""
    if isinstance(value, Resolution | Window):
        return str(value)
    if isinstance(value, tuple):  # mask rectangles
        return [list(r) for r in value if isinstance(r, Rect)]
    if isinstance(value, Path):
        return str(value)
    return value


def _allowed(key: str) -> str:
    try:
        OPTION_BY_KEY[key].parse(_PROBE)
    except ValueError as exc:
        return str(exc).removeprefix("must be ")
    return "text"


def options() -> list[dict[str, Any]]:
    """What the page's form shows for each setting it may change."""
    out = []
    for key in PAGE_KEYS:
        opt = OPTION_BY_KEY[key]
        section, name = key.split(".")
        out.append(
            {
                "section": section,
                "name": name,
                "help": opt.help,
                "allowed": _allowed(key),
                "default": json_value(opt.default),
            }
        )
    return out


def settings_document(s: Settings) -> dict[str, dict[str, Any]]:
    flat = flatten(s)
    doc: dict[str, dict[str, Any]] = {}
    for key in PAGE_KEYS:
        section, name = key.split(".")
        doc.setdefault(section, {})[name] = json_value(flat[key])
    return doc


class Host(ControlHost, Protocol):
    """What the API uses of the daemon that runs it: what the control side uses (the API
    records, captures and reconfigures the same way) plus the clip store and the control side
    itself. The composition root (``daemon.app.Daemon``) provides it; declaring it here keeps
    this package from importing the daemon, which imports this package."""

    @property
    def store(self) -> ClipStore: ...
    @property
    def stills(self) -> StillStore: ...
    @property
    def control(self) -> Control | None: ...
    @property
    def changes(self) -> LocalChanges: ...

    def health_report(self) -> dict[str, Any]: ...


class LocalApi:
    """Carries out the API's requests with the daemon's own methods (on the loop)."""

    def __init__(self, daemon: Host) -> None:
        self.daemon = daemon

    async def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        try:
            return await self._route(method, path, body)
        except ApiError as exc:
            return exc.status, {"error": str(exc)}

    async def _route(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if path == "/settings":
            if method in ("GET", "HEAD"):
                return 200, self._settings()
            if method == "PATCH":
                return await self._patch(body)
            raise ApiError(405, "GET or PATCH")
        if path == "/record":
            self._method(method, "POST")
            return await self._record(body)
        if path == "/still":
            self._method(method, "POST")
            return await self._still()
        if path == "/clips":
            self._method(method, "GET")
            return 200, {"days": await asyncio.to_thread(self._list_clips)}
        if path.startswith("/clips/"):
            self._method(method, "DELETE")
            return await self._delete(path[len("/clips/") :])
        if path == "/stills":
            self._method(method, "GET")
            return 200, await asyncio.to_thread(self._list_stills)
        if path.startswith("/stills/"):
            self._method(method, "DELETE")
            return await self._delete_still(path[len("/stills/") :])
        if path == "/health":
            self._method(method, "GET")
            report = await asyncio.to_thread(self.daemon.health_report)
            return 200, {"rows": health_rows(report)}
        raise ApiError(404, "no such API route")

    @staticmethod
    def _method(method: str, allowed: str) -> None:
        if method != allowed and not (allowed == "GET" and method == "HEAD"):
            raise ApiError(405, f"{allowed} only")

    # -- settings ------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        s = self.daemon.settings
        return {
            "settings": settings_document(s),
            "options": options(),
            "control": s.http.password is not None,
        }

    async def _patch(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not body:
            raise ApiError(400, 'send {"section": {"name": value}} with the settings to change')
        changes: dict[str, Any] = {}
        errors: list[str] = []
        unknown = False
        for section, values in body.items():
            if not isinstance(values, dict):
                errors.append(f"{str(section)[:40]}: must be an object of settings")
                continue
            for name, value in values.items():
                key = f"{section}.{name}"
                if key not in PAGE_KEYS:
                    unknown = True
                    where = "unknown setting" if key not in OPTION_BY_KEY else "not changeable here"
                    errors.append(f"{key[:80]}: {where}")
                else:
                    changes[key] = value
        if not errors:
            outcome = await self.daemon.changes.apply(changes, "page")
            errors = outcome.errors
        else:
            # The keys the page may change are checked even when others are refused: the
            # answer names every problem in the body, not only the first kind found.
            errors += merge(self.daemon.settings, changes, "page")[1]
        if errors:
            # All or nothing: a form is sent whole, and half of it applied would surprise.
            listed = _first(errors)
            if unknown:  # said once, not once per key: the answer stays small
                listed.append(f"the page may change {', '.join(PAGE_KEYS)}")
            return 400, {"error": errors[0], "errors": listed}
        return 200, {
            "changed": sorted(outcome.applied),
            "saved": outcome.saved,
            **self._settings(),
        }

    # -- record, still ---------------------------------------------------------------------

    async def _record(self, body: Any) -> tuple[int, Any]:
        d = self.daemon
        raw = body.get("duration", 30) if isinstance(body, dict) else None
        if (
            isinstance(raw, bool)
            or not isinstance(raw, int | float)
            or not 1 <= raw <= MAX_RECORD_S
        ):
            raise ApiError(400, f"duration: must be a number of seconds from 1 to {MAX_RECORD_S}")
        if d.recorder is None:
            raise ApiError(503, "the camera is not running")
        joined = d.recorder.open_clip
        future = d.recorder.capture(float(raw))
        if future.done() and future.result() is None:
            raise ApiError(503, "nothing buffered yet; try again in a second")
        answer: dict[str, Any] = {"recording": True, "duration": raw}
        if joined is None:
            log.info("page: manual clip of %g s", raw)
            return 202, answer
        # One clip at a time: a request while one is recorded extends it (its trigger stays
        # what started it, and "manual" joins its facts' triggers).
        note = (
            f"joins the {joined.trigger} clip {joined.name} being recorded: it goes on for at "
            f"least {raw:g} s more"
        )
        log.info("page: manual clip of %g s %s", raw, note)
        return 202, {**answer, "joined": joined.name, "trigger": joined.trigger, "note": note}

    async def _still(self) -> tuple[int, Any]:
        try:
            path = await self.daemon.capture_image()
        except Exception as exc:  # the camera's own error, as one line
            raise ApiError(503, f"still failed: {exc}") from None
        return 200, {"name": path.name}

    # -- clips -----------------------------------------------------------------------------

    def _list_clips(self) -> list[dict[str, Any]]:
        """Every clip, newest day first and newest first within a day (worker thread)."""
        store = self.daemon.store
        days: dict[str, list[dict[str, Any]]] = {}
        for path in reversed(store.clips()):
            m = _CLIP.match(path.name)
            if m is None:
                continue
            with contextlib.suppress(OSError):
                st = path.lstat()
                start = int(m.group(1))
                thumb = store.picture(path)
                meta = store.meta(path)
                entry = {
                    "name": path.name,
                    "start": start,
                    "time": time.strftime("%H:%M:%S", time.localtime(start)),
                    "size": st.st_size,
                    "format": m.group(3),
                    "playable": m.group(3) == "mp4",
                    "trigger": meta.get("trigger"),
                    "triggers": _triggers(meta),
                    "thumbnail": f"thumbs/{path.name}" if thumb else None,
                }
                days.setdefault(time.strftime("%Y-%m-%d", time.localtime(start)), []).append(entry)
        return [{"day": day, "clips": clips} for day, clips in days.items()]

    def _list_stills(self) -> dict[str, Any]:
        """The newest stills (worker thread)."""
        stills = self.daemon.stills.stills()
        return {
            "stills": [
                {
                    "name": s.path.name,
                    "time": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.taken)),
                    "size": s.size,
                }
                for s in stills[:PAGE_STILLS]
            ],
            "total": len(stills),
        }

    async def _delete_still(self, name: str) -> tuple[int, Any]:
        stills = self.daemon.stills
        path = await asyncio.to_thread(stills.find, name)
        if path is None:
            raise ApiError(404, "no such still")
        await asyncio.to_thread(stills.remove, path)
        log.info("page: deleted still %s", path.name)
        return 200, {"deleted": path.name}

    async def _delete(self, name: str) -> tuple[int, Any]:
        path = await asyncio.to_thread(self.daemon.store.find, name)
        if path is None:
            raise ApiError(404, "no such clip")
        await asyncio.to_thread(self.daemon.store.remove, path)  # its picture too
        log.info("page: deleted %s", path.name)
        return 200, {"deleted": path.name}


def _triggers(meta: dict[str, Any]) -> list[str]:
    """Everything that asked for a clip: its trigger, and what joined it while recorded."""
    joined = meta.get("triggers")
    if isinstance(joined, list) and all(isinstance(t, str) for t in joined):
        return [str(t) for t in joined]
    trigger = meta.get("trigger")
    return [trigger] if isinstance(trigger, str) else []


MAX_ERRORS = 20
"""Problems listed in one answer; the rest are counted."""


def _first(errors: list[str]) -> list[str]:
    if len(errors) <= MAX_ERRORS:
        return list(errors)
    return [*errors[: MAX_ERRORS - 1], f"and {len(errors) - MAX_ERRORS + 1} more problems"]
