"""Setting changes made on the home network: the local page's and Home Assistant's.

Both take one path, the one a shadow change takes too: the whole change is checked by the
option table (``settings.merge``) and refused whole when any value is wrong, then applied by the
daemon's ``reconfigure`` (the camera reopens only when it must), kept in the ``--local-settings``
file (merged line by line, so the owner's comments stay) and written to the shadow's reported
state, where the shadow's ``desired`` does not undo it until the cloud changes its mind. One
change at a time, in the order they came.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pinthesky.eventfiles import NotOurFile, read_ours, write_atomically
from pinthesky.installer.onpi import merge_toml
from pinthesky.settings import (
    MAX_LOCAL_BYTES,
    Rect,
    Resolution,
    Settings,
    Window,
    flatten,
    merge,
)

if TYPE_CHECKING:
    from pinthesky.control.controller import Control

log = logging.getLogger(__name__)


class Host(Protocol):
    """What a local change uses of the daemon (``daemon.app.Daemon`` provides it)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def control(self) -> Control | None: ...

    async def reconfigure(self, changes: dict[str, Any], origin: str) -> set[str]: ...


@dataclass
class Outcome:
    """What became of a change: the keys applied, whether the file kept them, the refusals."""

    applied: set[str] = field(default_factory=set)
    saved: bool = True
    errors: list[str] = field(default_factory=list)


def toml_value(value: Any) -> Any:
    """What the ``--local-settings`` file keeps for a typed value."""
    if value is None:
        return "none"
    if isinstance(value, tuple) and not isinstance(value, Resolution | Window):
        return ";".join(str(r) for r in value if isinstance(r, Rect))
    if isinstance(value, bool | int | float):
        return value
    return str(value)


class LocalChanges:
    """Applies, keeps and reports changes from the page and from Home Assistant (on the loop)."""

    def __init__(self, daemon: Host) -> None:
        self.daemon = daemon
        self._lock = asyncio.Lock()
        self.changes = 0

    async def apply(self, changes: dict[str, Any], origin: str) -> Outcome:
        """Check ``changes`` (key path -> raw value) whole; apply, keep and report them, or
        refuse them all with one line per problem."""
        async with self._lock:
            _, errors = merge(self.daemon.settings, changes, origin)
            if errors:
                # All or nothing: a form is sent whole, and half of it applied would surprise.
                return Outcome(errors=errors)
            applied = await self.daemon.reconfigure(changes, origin)
            saved = True
            if applied:
                # Every key asked for, as it now is, even one that kept its value: the owner
                # set it. Not what they moved with: a new buffer moves rolls that follow it,
                # and they must go on following it after a restart.
                saved = await asyncio.to_thread(self._persist, set(changes), origin)
                if self.daemon.control is not None:
                    self.daemon.control.shadow.local_change(applied)
                self.changes += 1
            return Outcome(applied, saved)

    def _persist(self, keys: set[str], origin: str) -> bool:
        """Merge the changed keys into the ``--local-settings`` file (worker thread); False
        when it cannot be written (the change holds until the daemon restarts)."""
        s = self.daemon.settings
        path = s.http.local_settings
        flat = flatten(s)
        values: dict[str, dict[str, Any]] = {}
        for key in sorted(keys):
            section, name = key.split(".")
            values.setdefault(section, {})[name] = toml_value(flat[key])
        try:
            before = _read_regular(path)
            if not before:
                before = (
                    "# Changes made on pinthesky's local page and from Home Assistant; read after\n"
                    "# the --config file. You may edit it: only the keys changed are set.\n"
                )
            write_atomically(path, merge_toml(before, values).encode(), mode=0o600)
        except OSError as exc:
            log.warning(
                "%s: cannot keep the change in %s (%s); it holds until a restart",
                origin,
                path,
                exc.strerror or exc,
            )
            return False
        return True


def _read_regular(path: Path) -> str:
    """The file's text, or "" when there is none of ours: a link (or anything but a regular
    file) planted under its name is not read, and the file written in its place replaces it."""
    try:
        data, size = read_ours(path, MAX_LOCAL_BYTES + 1)
    except FileNotFoundError:
        return ""
    except NotOurFile as exc:
        log.warning("%s is %s: replaced by the page's own file", path, exc.strerror)
        return ""
    if size > MAX_LOCAL_BYTES:
        raise OSError(f"{path} is larger than {MAX_LOCAL_BYTES} bytes")
    return data.decode("utf-8", errors="replace")
