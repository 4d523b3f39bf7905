"""The JSON files shared with the IoT sidecar: watched with inotify, read and written safely.

* ``Watcher``: one inotify descriptor on the event loop (``loop.add_reader``), watching the
  files' directories, so both in-place writes (``CLOSE_WRITE``) and atomic replaces
  (``MOVED_TO``) are seen.
* ``EventInput``: the file the sidecar appends cloud messages to. To never lose a message
  appended while we read, the file is first renamed aside (a later append creates or finds a
  fresh one), then the renamed file is read; one still being appended to is read again when
  its writer closes it, and removed once it has been quiet for a while.
* ``EventOutput``: one event per write. aws-iot-device-client watches the publish file's own
  inode for ``CLOSE_WRITE`` (a renamed-in replacement would never be published), reads it when
  it gets round to it and then sleeps 500 ms; so each event is written in place (truncate,
  write, close) and the next one waits ``SPACING_S``, so that two events never coalesce.
  When the outbox directory next to it exists (``pinthesky-iot`` creates it), each event is
  also put there as a file of its own, named in order: a queue on disk that the sidecar
  drains, so no event is lost while the sidecar or MQTT is down (``OUTBOX_MAX`` at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pinthesky.jsonstream import MAX_MESSAGE_BYTES, parse_stream

log = logging.getLogger(__name__)

SPACING_S = 0.6
"""Seconds between two events written to the publish file (the client reads every 500 ms)."""
MAX_INPUT_BYTES = 1024 * 1024
"""More than this waiting in the input file is an attack or a runaway: skipped."""
CONSUME_GRACE_S = 5.0
"""A renamed-aside input file is removed after this long without new writes."""
FILE_MODE = 0o600
DIR_MODE = 0o745


OUTBOX_MAX = 1000
"""Events kept for the sidecar at most; beyond, the oldest go (logged and counted)."""


def outbox_dir(event_output: Path) -> Path:
    """The sidecar's queue of events to publish: ``<event output file>.outbox/``."""
    return event_output.with_name(event_output.name + ".outbox")


def write_atomically(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Write to a hidden temporary name, fsync, rename into place: readers see all or nothing."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_file(path: Path) -> None:
    """Create the file (and its directory) with the contract's modes when missing."""
    if not path.parent.exists():
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))


def write_in_place(path: Path, data: bytes) -> None:
    """Truncate and write, so a watch on this inode sees one CLOSE_WRITE (aws-iot-device-client
    watches its files' inodes: a renamed-in replacement would go unnoticed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def truncate(path: Path) -> None:
    write_in_place(path, b"")


class Watcher:
    """inotify on the event loop; handlers get the name of the file that changed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from inotify_simple import INotify

        self._inotify = INotify()
        self._loop = loop
        self._dirs: dict[int, list[tuple[str, Callable[[str], None]]]] = {}
        loop.add_reader(self._inotify.fileno(), self._read)

    def watch(self, path: Path, handler: Callable[[str], None], prefix: bool = False) -> None:
        """Call ``handler(name)`` when ``path`` (or, with ``prefix``, any file whose name
        starts with ``path.name``) is written and closed, created, or moved in."""
        from inotify_simple import flags

        mask = flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE
        wd = self._inotify.add_watch(str(path.parent), mask)
        self._dirs.setdefault(wd, []).append((path.name + ("*" if prefix else ""), handler))

    def watch_dir(self, directory: Path, handler: Callable[[str], None]) -> None:
        """Call ``handler(name)`` for any file written, created or moved into ``directory``."""
        from inotify_simple import flags

        mask = flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE
        wd = self._inotify.add_watch(str(directory), mask)
        self._dirs.setdefault(wd, []).append(("*", handler))

    def _read(self) -> None:
        # On the loop: the inotify descriptor is readable.
        for event in self._inotify.read(timeout=0):
            for pattern, handler in self._dirs.get(event.wd, []):
                hit = (
                    event.name.startswith(pattern[:-1])
                    if pattern.endswith("*")
                    else event.name == pattern
                )
                if hit:
                    try:
                        handler(event.name)
                    except Exception:
                        log.exception("handling a change of %s failed", event.name)

    def close(self) -> None:
        self._loop.remove_reader(self._inotify.fileno())
        self._inotify.close()


class EventInput:
    """Consumes the messages appended to the input file, exactly as they were written."""

    def __init__(self, path: Path, dispatch: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self._dispatch = dispatch
        self._aside = f".{path.name}.consume-"
        self._offsets: dict[Path, int] = {}
        self._quiet_since: dict[Path, float] = {}
        self.rejected = 0

    def start(self, watcher: Watcher) -> None:
        ensure_file(self.path)
        # Whatever a previous run renamed aside but did not finish is read now.
        for leftover in sorted(self.path.parent.glob(self._aside + "*")):
            self._offsets[leftover] = 0
        watcher.watch(self.path, lambda _: self.poll())
        watcher.watch(self.path.with_name(self._aside), lambda _: self.poll(), prefix=True)
        self.poll()

    def poll(self) -> None:
        """Take what was appended and hand every message on (on the loop; small reads)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
            ensure_file(self.path)
        if size > 0:
            aside = self.path.with_name(f"{self._aside}{time.time_ns()}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                pass
            else:
                self._offsets[aside] = 0
                ensure_file(self.path)
        now = time.monotonic()
        for path in list(self._offsets):
            grew = self._drain(path)
            if grew:
                self._quiet_since[path] = now
            elif now - self._quiet_since.setdefault(path, now) > CONSUME_GRACE_S:
                self._finish(path)

    def _drain(self, path: Path) -> bool:
        offset = self._offsets[path]
        try:
            with path.open("rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size - offset > MAX_INPUT_BYTES:
                    # A flood: keep the newest messages (appended last), drop the rest.
                    skip = size - offset - MAX_INPUT_BYTES
                    log.error(
                        "event input: more than %d bytes waiting in %s: the oldest %d skipped",
                        MAX_INPUT_BYTES,
                        path.name,
                        skip,
                    )
                    self.rejected += 1
                    offset += skip
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            self._offsets.pop(path, None)
            return False
        if not data:
            return False
        text = data.decode("utf-8", errors="surrogateescape")
        parsed = parse_stream(text, final=False)
        for reason in parsed.skipped:
            log.warning("event input: %s", reason)
            self.rejected += 1
        for message in parsed.values:
            self._dispatch(message)
        used = len(text[: parsed.consumed].encode("utf-8", errors="surrogateescape"))
        self._offsets[path] = offset + used
        return used > 0

    def _finish(self, path: Path) -> None:
        offset = self._offsets.pop(path, 0)
        self._quiet_since.pop(path, None)
        with contextlib.suppress(OSError):
            rest = path.read_bytes()[offset:]
            if rest.strip():
                parsed = parse_stream(rest.decode("utf-8", errors="surrogateescape"))
                for reason in parsed.skipped:
                    log.warning("event input: %s", reason)
                for message in parsed.values:
                    self._dispatch(message)
        with contextlib.suppress(OSError):
            path.unlink()


class EventOutput:
    """Writes events to the publish file one at a time, spaced so none is lost."""

    def __init__(self, path: Path, thing_name: str | None, spacing: float = SPACING_S) -> None:
        self.path = path
        self.thing_name = thing_name
        self.spacing = spacing
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
        self.written = 0
        self.dropped = 0

    def emit(self, name: str, **fields: Any) -> dict[str, Any]:
        """Queue an event (on the loop); the oldest is dropped if 256 are already waiting.
        Returns the event as written."""
        event = {
            "name": name,
            "timestamp": int(time.time()),
            "thing_name": self.thing_name,
            **fields,
        }
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._queue.get_nowait()
            self.dropped += 1
            log.error("event output: more than 256 events waiting, the oldest was dropped")
            self._queue.put_nowait(event)
        return event

    async def run(self) -> None:
        await asyncio.to_thread(ensure_file, self.path)
        while True:
            event = await self._queue.get()
            await asyncio.to_thread(self._write, event)
            await asyncio.sleep(self.spacing)

    def _write(self, event: dict[str, Any]) -> None:
        data = json.dumps(event, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE_BYTES:
            log.error(
                "event output: %s event of %d bytes is too large to publish, skipped",
                event.get("name"),
                len(data),
            )
            return
        write_in_place(self.path, data)
        self._to_outbox(data)
        self.written += 1
        log.debug("event %s written", event.get("name"))

    def _to_outbox(self, data: bytes) -> None:
        outbox = outbox_dir(self.path)
        if not outbox.is_dir():
            return  # another sidecar (aws-iot-device-client) reads the file itself
        try:
            write_atomically(outbox / f"{time.time_ns():020d}.json", data)
            queued = sorted(p for p in outbox.iterdir() if p.suffix == ".json")
            for old in queued[: max(0, len(queued) - OUTBOX_MAX)]:
                old.unlink(missing_ok=True)
                self.dropped += 1
                log.error(
                    "event outbox: more than %d events unpublished, dropped %s",
                    OUTBOX_MAX,
                    old.name,
                )
        except OSError as exc:
            log.error("event outbox %s: %s", outbox, exc)
