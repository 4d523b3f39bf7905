"""Cloud control through the sidecar's files: commands in, events out.

Messages read from the event-input file become typed commands (``commands.py``); anything
else is refused with one log line. Commands are carried out with the daemon's own APIs
(a manual clip, a still, a health report, the configuration, a live stream) and answered on the
event-output file, echoing the request's ids. Every upload is announced with ``upload_end``;
one that a command asked for also carries that command's ``capture_id``. An answer to a request
that came through the data plane (its ``connection`` has an ``id``) is also posted there, as
``{"invoke": <event>}``, for the console to match by ``connection.invoke_id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pinthesky.cloud.uploader import UploadEnded, Uploader
from pinthesky.control.commands import (
    CaptureImage,
    CaptureVideo,
    Command,
    Configuration,
    Health,
    Record,
    Refused,
    parse_command,
    parse_connection,
)
from pinthesky.control.health import Health as HealthReport
from pinthesky.control.shadow import SHADOW_KEYS, desired_changes, reported_document, same_value
from pinthesky.errors import PintheskyError
from pinthesky.eventfiles import (
    EventInput,
    EventOutput,
    Watcher,
    ensure_file,
    read_ours,
    write_atomically,
    write_in_place,
)
from pinthesky.jsonstream import MAX_MESSAGE_BYTES, parse_stream
from pinthesky.logs import Throttle

if TYPE_CHECKING:
    from pinthesky.cloud.dataplane import DataPlane
    from pinthesky.live.session import LiveSessions
    from pinthesky.record.bus import EventBus
    from pinthesky.record.recorder import Recorder
    from pinthesky.settings import Settings

log = logging.getLogger(__name__)


class Host(Protocol):
    """What the control side uses of the daemon that runs it. The composition root
    (``daemon.app.Daemon``) provides it; declaring it here keeps this package from importing
    the daemon, which imports this package."""

    @property
    def settings(self) -> Settings: ...
    @property
    def bus(self) -> EventBus: ...
    @property
    def uploader(self) -> Uploader | None: ...
    @property
    def dataplane(self) -> DataPlane: ...
    @property
    def recorder(self) -> Recorder | None: ...
    @property
    def sessions(self) -> LiveSessions | None: ...
    @property
    def motion_captured(self) -> int: ...
    @property
    def recording(self) -> bool: ...

    def queue_gauges(self) -> dict[str, float]: ...
    async def capture_image(self, file_name: str | None = None) -> Path: ...
    async def reconfigure(self, changes: dict[str, Any], origin: str) -> set[str]: ...


class Control:
    """Owns the event files; runs on the loop."""

    def __init__(self, daemon: Host) -> None:
        s = daemon.settings
        self.daemon = daemon
        self.output = EventOutput(s.events.event_output, s.cloud_connection.thing_name)
        self.input = EventInput(s.events.event_input, self._on_message)
        self.health = HealthReport()
        self._requests: dict[str, dict[str, Any]] = {}  # local file name -> echo of its command
        self._durations: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._health_next: dict[str, Any] | None = None
        self.commands = 0
        self.refused = 0
        # A flood of commands or of refusals is summarised rather than logged line by line.
        self._warn = Throttle(log)
        self._say = Throttle(log, burst=20)
        self.shadow = ShadowSync(daemon)
        daemon.bus.subscribe(UploadEnded, self._on_upload)

    def start(self, watcher: Watcher) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        """Start reading commands; the tasks to run (and supervise), by name."""
        self.input.start(watcher)
        try:
            ensure_file(self.output.path)  # the sidecar watches it: it must exist from the start
        except OSError as exc:
            log.error("event output %s: %s", self.output.path, exc)
        self.shadow.start(watcher)
        return {"event output": self.output.run, "health": self._periodic_health}

    # -- input --------------------------------------------------------------------------------

    def _on_message(self, message: dict[str, Any]) -> None:
        default = self.daemon.settings.recorder
        try:
            command = parse_command(message, default_duration=round(default.post_roll) or 30)
        except Refused as exc:
            self.refused += 1
            self._warn(logging.WARNING, "refused a message: %s", exc)
            return
        self.commands += 1
        self._say(logging.INFO, "command %s", type(command).__name__)
        self._track(asyncio.get_running_loop().create_task(self._carry_out(command)))

    async def _carry_out(self, command: Command) -> None:
        try:
            await self._handle(command)
        except PintheskyError as exc:
            log.warning("%s failed: %s", type(command).__name__, exc)
        except Exception:
            log.exception("%s failed", type(command).__name__)

    async def _handle(self, command: Command) -> None:
        d = self.daemon
        if isinstance(command, CaptureVideo):
            if d.recorder is None:
                raise PintheskyError("capture_video: the camera is not running")
            joined = d.recorder.open_clip
            if joined is not None:
                log.info(
                    "capture_video joins the %s clip %s being recorded: it is extended to "
                    "cover the request",
                    joined.trigger,
                    joined.name,
                )
            clip = await d.recorder.capture(command.duration)
            if clip is None:
                raise PintheskyError("capture_video: nothing buffered yet")
            # upload_end says so too: the clip's trigger stays what started it.
            echo = {**command.echo, **({"joined": joined.trigger} if joined else {})}
            self._remember(clip.path.name, echo, command.duration)
        elif isinstance(command, CaptureImage):
            path = await d.capture_image(command.file_name)
            self._remember(path.name, command.echo, None)
        elif isinstance(command, Health):
            self.emit_health(command.echo)
        elif isinstance(command, Configuration):
            self.answer(
                "configuration_end", configuration=reported_document(d.settings), **command.echo
            )
        elif isinstance(command, Record):
            if d.sessions is None:
                raise PintheskyError("record: the daemon is not running")
            d.sessions.handle(command)

    def _remember(self, name: str, echo: dict[str, Any], duration: int | None) -> None:
        if self.daemon.uploader is None:
            log.info("%s kept locally (no bucket configured): no upload_end", name)
            return
        self._requests[name] = echo
        if duration is not None:
            self._durations[name] = duration

    # -- output -------------------------------------------------------------------------------

    def _on_upload(self, ended: UploadEnded) -> None:
        echo = self._requests.pop(ended.name, {})
        fields: dict[str, Any] = {
            "start_time": ended.start_time,
            "upload": {"bucket_name": ended.bucket, "bucket_key": ended.key},
            **echo,
        }
        if ended.trigger is not None:
            fields["trigger"] = ended.trigger
        if ended.name in self._durations:
            fields["duration"] = self._durations.pop(ended.name)
        # The clip's facts are new fields; a manual capture's requested ``duration`` (the
        # contract's int) is kept over the measured one.
        for key, value in ended.facts().items():
            fields.setdefault(key, value)
        self.answer("upload_end", **fields)

    def emit_health(self, echo: dict[str, Any] | None = None) -> None:
        d = self.daemon
        report = self.health.report(d.motion_captured, d.recording)
        event = self.answer("health_end", **report, **(echo or {}))
        if d.settings.health.file is not None:
            # One writer at a time, the newest report wins (two in flight would race).
            writing = self._health_next is not None
            self._health_next = event
            if not writing:
                self._track(asyncio.get_running_loop().create_task(self._write_health_file()))

    async def _write_health_file(self) -> None:
        while self._health_next is not None:
            event = self._health_next
            path = self.daemon.settings.health.file
            try:
                if path is not None:
                    await asyncio.to_thread(self._keep_health, path, event)
            except Exception:  # the next report tries again; the camera carries on
                log.exception("health file %s could not be written", path)
            if self._health_next is event:
                self._health_next = None

    def _keep_health(self, path: Path, event: dict[str, Any]) -> None:
        """The last report and the upload queue, for ``pitsctl view`` (on a worker thread:
        it lists the queue's directories)."""
        queue = self.daemon.queue_gauges()
        document = {
            **event,
            "upload_queue": {
                "clips": int(queue.get("UploadQueueDepth", 0)),
                "bytes": int(queue.get("UploadQueueBytes", 0)),
                "uploading": self.daemon.uploader is not None,
            },
        }
        try:
            write_atomically(path, json.dumps(document).encode(), mode=0o600)
        except OSError as exc:
            log.warning("health file %s: %s", path, exc)

    def answer(self, name: str, **fields: Any) -> dict[str, Any]:
        """Write an event to the event-output file and, when its request came through the
        data plane, post it to the request's connection too. Returns the event."""
        event = self.output.emit(name, **fields)
        if "connection" not in fields:
            return event
        try:
            connection = parse_connection(fields["connection"])
        except Refused as exc:
            log.warning("%s not posted to the data plane: %s", name, exc)
            return event
        self._track(self.daemon.dataplane.reply(connection, event))
        return event

    def _track(self, task: asyncio.Task[Any]) -> None:
        """Keep a reference to a task until it ends (the loop only keeps weak ones)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _periodic_health(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        # One at start, then every health.interval (at most an hour: the cloud marks a device
        # unhealthy 62 minutes after its last report).
        while True:
            self.emit_health()
            await sleep(min(self.daemon.settings.health.interval, 3600))


class ShadowSync:
    """The named shadow through two files: desired state in (``--configure-output``, rewritten
    by the sidecar on every ``/update/documents``), reported state out (``--configure-input``,
    published by the sidecar when written). Runs on the loop."""

    def __init__(self, daemon: Host) -> None:
        self.daemon = daemon
        self.output = daemon.settings.events.configure_output
        self.input = daemon.settings.events.configure_input
        self._lock = asyncio.Lock()
        self._seen_documents = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.applied = 0
        self.rejected = 0
        self.reports = 0
        self.reads = 0
        self._desired: dict[str, Any] = {}
        """The last desired state read (key path -> value)."""
        self._pinned_path = daemon.settings.http.local_settings.with_suffix(".desired.json")
        self._pinned = _read_pinned(self._pinned_path)
        """Keys changed on the local page -> the desired value the cloud held then (None:
        none). A desired value that is still the same does not undo the local change."""
        self._warn = Throttle(log)

    def start(self, watcher: Watcher) -> None:
        for path in (self.output, self.input):
            try:
                ensure_file(path)
            except OSError as exc:
                log.error("shadow file %s: %s", path, exc)
        policy = self.daemon.settings.events.shadow_update
        empty = self._read() is None
        if policy == "always" or (policy == "empty" and empty):
            self.write_report()
        watcher.watch(self.output, lambda _: self._schedule())
        log.info("shadow: desired state from %s, reported to %s", self.output, self.input)
        if not empty:
            self._schedule()  # the last desired state the sidecar wrote applies at start

    def _schedule(self) -> None:
        task = asyncio.get_running_loop().create_task(self._apply())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _read(self) -> dict[str, Any] | None:
        try:
            data, _ = read_ours(self.output, MAX_MESSAGE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            # A link (to /etc/shadow, say) or a FIFO: one line, never a byte of it.
            self._warn(logging.ERROR, "shadow document %s: %s", self.output, exc.strerror or exc)
            return None
        parsed = parse_stream(data.decode("utf-8", errors="surrogateescape"))
        for reason in parsed.skipped:
            log.warning("shadow document: %s", reason)
        if not parsed.values or parsed.values[-1] == {}:
            return None
        return parsed.values[-1]

    async def _apply(self) -> None:
        async with self._lock:  # one document at a time, in order
            doc = self._read()
            self.reads += 1
            if doc is None:
                return
            current = doc.get("current", {})
            state = current.get("state", {}) if isinstance(current, dict) else {}
            desired = state.get("desired") if isinstance(state, dict) else None
            if desired is None:
                return
            d = self.daemon
            changes, refused = desired_changes(
                d.settings, desired, d.settings.events.shadow_allow_identity
            )
            changes = self._unpinned(changes, desired)
            for line in refused:
                log.warning("%s", line)
            self.rejected += len(refused)
            before = len(changes)
            applied = await d.reconfigure(changes, "shadow") if changes else set()
            self.rejected += before - len({k for k in changes if k in applied})
            first = not self._seen_documents
            self._seen_documents = True
            if applied:
                self.applied += 1
                self.write_report()
            elif first:
                # As the old daemon did: a sidecar restart must not publish stale boot values.
                self._write(b"")

    def _unpinned(self, changes: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
        """Leave out what the local page changed since the cloud last changed its mind."""
        self._desired = _flat_desired(desired)
        kept = {}
        for key, value in changes.items():
            if key in self._pinned and same_value(self._desired.get(key), self._pinned[key]):
                log.info("shadow %s: the local page's value stands (desired unchanged)", key)
                continue
            if self._pinned.pop(key, _ABSENT) is not _ABSENT:
                self._save_pinned()
            kept[key] = value
        return kept

    def local_change(self, keys: set[str]) -> None:
        """Settings changed on the local page: report them, and remember the desired values
        they overrule so that only a new desired value from the cloud undoes them."""
        for key in keys:
            self._pinned[key] = self._desired.get(key)
        self._save_pinned()
        self.write_report()

    def _save_pinned(self) -> None:
        try:
            write_atomically(self._pinned_path, json.dumps(self._pinned).encode(), mode=0o600)
        except OSError as exc:
            log.warning("%s: %s (a restart may let the cloud's value back)", self._pinned_path, exc)

    def write_report(self) -> None:
        """The full reported document, in place (the sidecar watches this file's inode)."""
        data = json.dumps(reported_document(self.daemon.settings), separators=(",", ":"))
        if self._write(data.encode()):
            self.reports += 1

    def _write(self, data: bytes) -> bool:
        try:
            write_in_place(self.input, data)
        except OSError as exc:
            self._warn(logging.ERROR, "shadow report %s: %s", self.input, exc.strerror or exc)
            return False
        return True


_ABSENT = object()


def _flat_desired(desired: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for section, keys in SHADOW_KEYS.items():
        body = desired.get(section)
        if isinstance(body, dict):
            flat.update({keys[n]: v for n, v in body.items() if n in keys})
    return flat


def _read_pinned(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_ours(path, MAX_MESSAGE_BYTES)[0])
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
