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
import errno
import json
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pinthesky.jsonstream import MAX_MESSAGE_BYTES, parse_stream
from pinthesky.logs import Throttle

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


class NotOurFile(OSError):
    """A name of ours that is a link, a directory, a FIFO or another special file."""


def open_ours(path: Path, write: bool = False, create: bool = False, append: bool = False) -> int:
    """Open one of our files: never through a link (``O_NOFOLLOW``), never blocking on a FIFO
    or a device (``O_NONBLOCK``), and only if it is a regular file with no other name (a hard
    link to someone else's file is not ours either). Returns the descriptor."""
    flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    flags |= os.O_WRONLY if write else os.O_RDONLY
    if create:
        flags |= os.O_CREAT
    if append:
        flags |= os.O_APPEND
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            # ELOOP: a link; ENXIO: a FIFO with no reader; EISDIR: a directory.
            raise NotOurFile(exc.errno, "not a regular file", str(path)) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "a file with other names" if stat.S_ISREG(st.st_mode) else "not a regular file"
        raise NotOurFile(errno.EPERM, what, str(path))
    return fd


def read_ours(path: Path, limit: int, offset: int = 0) -> tuple[bytes, int]:
    """At most ``limit`` bytes of our file from ``offset``, and the file's size."""
    fd = open_ours(path)
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, limit, offset), size
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int = 0o640) -> None:
    """Write to a hidden temporary name, fsync, rename into place: readers see all or nothing.
    The temporary name is created afresh, so a link planted under it is never written
    through (the rename replaces a link at ``path`` itself, not what it points to)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_NEW_NAMES = threading.Lock()
"""Held while a free name is chosen and the file renamed into it (``write_new``)."""


def write_new(directory: Path, names: Iterator[str], data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` under the first of ``names`` that is free in ``directory``, and never
    over another file: fsynced under a hidden temporary name, then renamed into place, so
    that it is never seen half written nor with two names (the uploader would take a file
    with two names for a planted hard link). Choosing the name and renaming are one step
    under a lock: two files written at once never take the same name. The daemon is the one
    writer of these names. Returns the file's path."""
    fd, tmp = tempfile.mkstemp(prefix=".new-", dir=directory)  # O_EXCL, O_NOFOLLOW
    try:
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        with _NEW_NAMES:
            for name in names:
                path = directory / name
                if not os.path.lexists(path):
                    os.rename(tmp, path)
                    return path
        raise FileExistsError(f"no free name in {directory}")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def ensure_file(path: Path) -> None:
    """Create the file (and its directory) with the contract's modes when missing."""
    if not path.parent.exists():
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, FILE_MODE))


def write_in_place(path: Path, data: bytes) -> None:
    """Truncate and write, so a watch on this inode sees one CLOSE_WRITE (aws-iot-device-client
    watches its files' inodes: a renamed-in replacement would go unnoticed)."""
    try:
        fd = open_ours(path, write=True, create=True)
    except FileNotFoundError:
        ensure_file(path)  # the directory went away (a reinstall): make it again
        fd = open_ours(path, write=True, create=True)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, data)
    finally:
        os.close(fd)


def truncate(path: Path) -> None:
    write_in_place(path, b"")


class Watcher:
    """inotify on the event loop; handlers get the name of the file that changed.

    A watched directory that goes away (a reinstall deletes and re-creates it) is made again
    and watched again, and its handlers are called once, so nothing written meanwhile waits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from inotify_simple import INotify

        self._inotify = INotify()
        self._loop = loop
        self._dirs: dict[int, list[tuple[str, Callable[[str], None]]]] = {}
        self._paths: dict[int, Path] = {}
        loop.add_reader(self._inotify.fileno(), self._read)

    def watch(self, path: Path, handler: Callable[[str], None], prefix: bool = False) -> None:
        """Call ``handler(name)`` when ``path`` (or, with ``prefix``, any file whose name
        starts with ``path.name``) is written and closed, created, or moved in."""
        self._add(path.parent, path.name + ("*" if prefix else ""), handler)

    def watch_dir(self, directory: Path, handler: Callable[[str], None]) -> None:
        """Call ``handler(name)`` for any file written, created or moved into ``directory``."""
        self._add(directory, "*", handler)

    def _add(self, directory: Path, pattern: str, handler: Callable[[str], None]) -> None:
        from inotify_simple import flags

        mask = flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE | flags.DELETE_SELF
        mask |= flags.MOVE_SELF
        wd = self._inotify.add_watch(str(directory), mask)
        self._dirs.setdefault(wd, []).append((pattern, handler))
        self._paths[wd] = directory

    def _read(self) -> None:
        from inotify_simple import flags

        # On the loop: the inotify descriptor is readable.
        for event in self._inotify.read(timeout=0):
            if event.mask & (flags.IGNORED | flags.MOVE_SELF):
                self._rewatch(event.wd)
                continue
            if event.mask & flags.DELETE_SELF:
                continue  # IGNORED follows
            for pattern, handler in self._dirs.get(event.wd, []):
                hit = (
                    event.name.startswith(pattern[:-1])
                    if pattern.endswith("*")
                    else event.name == pattern
                )
                if hit:
                    self._call(handler, event.name)

    def _call(self, handler: Callable[[str], None], name: str) -> None:
        try:
            handler(name)
        except Exception:
            log.exception("handling a change of %s failed", name)

    def _rewatch(self, wd: int) -> None:
        """The directory of ``wd`` was deleted or moved away: make it again, watch it again."""
        handlers = self._dirs.pop(wd, [])
        directory = self._paths.pop(wd, None)
        if directory is None or not handlers:
            return
        with contextlib.suppress(OSError):
            self._inotify.rm_watch(wd)  # a moved directory is still watched where it went
        try:
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            for pattern, handler in handlers:
                self._add(directory, pattern, handler)
        except OSError as exc:
            log.error("%s went away and cannot be made again: %s", directory, exc)
            return
        log.warning("%s went away: made again and watched again", directory)
        for pattern, handler in handlers:
            self._call(handler, pattern.rstrip("*"))

    def close(self) -> None:
        self._loop.remove_reader(self._inotify.fileno())
        self._inotify.close()


class EventInput:
    """Consumes the messages appended to the input file, exactly as they were written.

    Work is bounded per turn of the loop: at most ``BATCH`` messages (or things skipped) out
    of at most ``WINDOW`` bytes, then the rest waits for the next turn (``call_soon``), so a
    flood never holds up the camera's frames; warnings about it are summarised.
    """

    BATCH = 16
    WINDOW = 2 * MAX_MESSAGE_BYTES + 1024

    def __init__(self, path: Path, dispatch: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self._dispatch = dispatch
        self._aside = f".{path.name}.consume-"
        self._offsets: dict[Path, int] = {}
        self._quiet_since: dict[Path, float] = {}
        self._again = False
        # Separate budgets, so that a flood of garbage never hides that a file is not ours.
        self._warn = Throttle(log, burst=10)
        self._err = Throttle(log)
        self.rejected = 0

    def start(self, watcher: Watcher) -> None:
        self._ensure()
        # Whatever a previous run renamed aside but did not finish is read now.
        for leftover in sorted(self.path.parent.glob(self._aside + "*")):
            self._offsets[leftover] = 0
        watcher.watch(self.path, lambda _: self.poll())
        watcher.watch(self.path.with_name(self._aside), lambda _: self.poll(), prefix=True)
        self.poll()

    def _ensure(self) -> None:
        try:
            ensure_file(self.path)
        except OSError as exc:
            self._err(logging.ERROR, "event input %s: %s", self.path, exc)

    def poll(self) -> None:
        """Take what was appended and hand the next messages on (on the loop; bounded)."""
        self._again = False
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            self._ensure()
        else:
            if not stat.S_ISREG(st.st_mode):
                # A link, FIFO or directory under our name: never read (nor renamed aside).
                self.rejected += 1
                self._err(logging.ERROR, "event input %s: not a regular file, ignored", self.path)
            elif st.st_size > 0:
                aside = self.path.with_name(f"{self._aside}{time.time_ns()}")
                try:
                    os.rename(self.path, aside)
                except FileNotFoundError:
                    pass
                else:
                    self._offsets[aside] = 0
                    self._ensure()
        now = time.monotonic()
        budget = self.BATCH
        for path in list(self._offsets):
            if budget <= 0:
                self._later()  # its turn comes next (waiting for it is not being quiet)
                self._quiet_since[path] = now
                continue
            grew, more = self._drain(path, budget)
            if more:
                self._later()
                budget = 0
            if grew:
                self._quiet_since[path] = now
            elif now - self._quiet_since.setdefault(path, now) > CONSUME_GRACE_S:
                self._finish(path)

    def _later(self) -> None:
        if not self._again:
            self._again = True
            asyncio.get_running_loop().call_soon(self.poll)

    def _drain(self, path: Path, budget: int) -> tuple[bool, bool]:
        """Hand on up to ``budget`` messages; (anything consumed, more waiting)."""
        offset = self._offsets[path]
        try:
            data, size = read_ours(path, self.WINDOW, offset)
            if size - offset > MAX_INPUT_BYTES:
                # A flood: keep the newest messages (appended last), drop the rest.
                skip = size - offset - MAX_INPUT_BYTES
                self._err(
                    logging.ERROR,
                    "event input: more than %d bytes waiting in %s: the oldest %d skipped",
                    MAX_INPUT_BYTES,
                    path.name,
                    skip,
                )
                self.rejected += 1
                offset += skip
                data, size = read_ours(path, self.WINDOW, offset)
        except FileNotFoundError:
            self._offsets.pop(path, None)
            return False, False
        except OSError as exc:
            # Not ours to read (a link to /etc/shadow, a FIFO): one line, never its content.
            self.rejected += 1
            self._err(logging.ERROR, "event input %s: %s", path.name, exc.strerror or exc)
            self._offsets.pop(path, None)
            self._quiet_since.pop(path, None)
            with contextlib.suppress(OSError):
                path.unlink()  # our own name for it, renamed aside: the link, not its target
            return False, False
        if not data:
            return False, False
        text = data.decode("utf-8", errors="surrogateescape")
        full = offset + len(data) < size or len(data) == self.WINDOW
        parsed = parse_stream(text, final=False, limit=budget)
        if parsed.consumed == 0 and full:
            # More than any message can be, still not complete: it is not one.
            parsed = parse_stream(text, final=True, limit=budget)
        for reason in parsed.skipped:
            self._warn(logging.WARNING, "event input: %s", reason)
            self.rejected += 1
        for message in parsed.values:
            self._dispatch(message)
        used = len(text[: parsed.consumed].encode("utf-8", errors="surrogateescape"))
        self._offsets[path] = offset + used
        # More to read next turn, unless all that is left is a message still being written.
        stopped = len(parsed.values) + len(parsed.skipped) >= budget
        more = offset + used < size and (stopped or offset + len(data) < size)
        return used > 0, more

    def _finish(self, path: Path) -> None:
        offset = self._offsets.pop(path, 0)
        self._quiet_since.pop(path, None)
        with contextlib.suppress(OSError):
            rest, _ = read_ours(path, self.WINDOW, offset)
            if rest.strip():
                # What was left is a message never finished (the drains took the rest).
                parsed = parse_stream(
                    rest.decode("utf-8", errors="surrogateescape"), limit=self.BATCH
                )
                for reason in parsed.skipped:
                    self._warn(logging.WARNING, "event input: %s", reason)
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
        self.failed = 0
        self._warn = Throttle(log)

    def emit(self, name: str, **fields: Any) -> dict[str, Any]:
        """Queue an event (on the loop) and return it; the oldest is dropped if 256 are
        already waiting."""
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
            self._warn(
                logging.ERROR, "event output: more than 256 events waiting, the oldest was dropped"
            )
            self._queue.put_nowait(event)
        return event

    async def run(self) -> None:
        try:
            await asyncio.to_thread(ensure_file, self.path)
        except OSError as exc:
            self._warn(logging.ERROR, "event output %s: %s", self.path, exc)
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
        try:
            write_in_place(self.path, data)
        except OSError as exc:
            # A directory, FIFO or link under our name: one line, the camera carries on (the
            # outbox, when there is one, still gets the event).
            self.failed += 1
            self._warn(logging.ERROR, "event output %s: %s", self.path, exc.strerror or exc)
        else:
            self.written += 1
            log.debug("event %s written", event.get("name"))
        self._to_outbox(data)

    def _to_outbox(self, data: bytes) -> None:
        outbox = outbox_dir(self.path)
        try:
            if not stat.S_ISDIR(os.lstat(outbox).st_mode):
                raise FileNotFoundError(outbox)  # a link is not our outbox
        except FileNotFoundError:
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
            self._warn(logging.ERROR, "event outbox %s: %s", outbox, exc)
