"""Cloud control through the sidecar's files: commands in, events out.

Messages read from the event-input file become typed commands (``commands.py``); anything
else is refused with one log line. Commands are carried out with the daemon's own APIs
(a manual clip, a still, a health report, the configuration) and answered on the
event-output file, echoing the request's ids. Every upload is announced with ``upload_end``;
one that a command asked for also carries that command's ``capture_id``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pinthesky.commands import (
    CaptureImage,
    CaptureVideo,
    Command,
    Configuration,
    Health,
    Record,
    Refused,
    parse_command,
)
from pinthesky.errors import PintheskyError
from pinthesky.eventfiles import EventInput, EventOutput, Watcher, ensure_file
from pinthesky.health import Health as HealthReport
from pinthesky.shadow import reported_document
from pinthesky.uploader import UploadEnded

if TYPE_CHECKING:
    from pinthesky.daemon import Daemon

log = logging.getLogger(__name__)


class Control:
    """Owns the event files; runs on the loop."""

    def __init__(self, daemon: Daemon) -> None:
        s = daemon.settings
        self.daemon = daemon
        self.output = EventOutput(s.events.event_output, s.cloud_connection.thing_name)
        self.input = EventInput(s.events.event_input, self._on_message)
        self.health = HealthReport()
        self._requests: dict[str, dict[str, Any]] = {}  # local file name -> echo of its command
        self._durations: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.commands = 0
        self.refused = 0
        daemon.bus.subscribe(UploadEnded, self._on_upload)

    def start(self, watcher: Watcher) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        """Start reading commands; the tasks to run (and supervise), by name."""
        self.input.start(watcher)
        ensure_file(self.output.path)  # the sidecar watches it: it must exist from the start
        return {"event output": self.output.run, "health": self._periodic_health}

    # -- input --------------------------------------------------------------------------------

    def _on_message(self, message: dict[str, Any]) -> None:
        default = self.daemon.settings.recorder
        try:
            command = parse_command(message, default_duration=round(default.post_roll) or 30)
        except Refused as exc:
            self.refused += 1
            log.warning("refused a message: %s", exc)
            return
        self.commands += 1
        log.info("command %s", type(command).__name__)
        task = asyncio.get_running_loop().create_task(self._carry_out(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
            clip = await d.recorder.capture(command.duration)
            if clip is None:
                raise PintheskyError("capture_video: nothing buffered yet")
            self._remember(clip.path.name, command.echo, command.duration)
        elif isinstance(command, CaptureImage):
            path = await d.capture_image(command.file_name)
            self._remember(path.name, command.echo, None)
        elif isinstance(command, Health):
            self.emit_health(command.echo)
        elif isinstance(command, Configuration):
            self.output.emit(
                "configuration_end", configuration=reported_document(d.settings), **command.echo
            )
        elif isinstance(command, Record):
            log.warning("record: live streaming is not available in this version")

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
        self.output.emit("upload_end", **fields)

    def emit_health(self, echo: dict[str, Any] | None = None) -> None:
        d = self.daemon
        recording = d.recorder is not None and d.ring is not None and d.ring.newest_ts() is not None
        clips = d.recorder.clips_recorded if d.recorder is not None else 0
        self.output.emit("health_end", **self.health.report(clips, recording), **(echo or {}))

    async def _periodic_health(self, sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        # One at start, then every health.interval (at most an hour: the cloud marks a device
        # unhealthy 62 minutes after its last report).
        while True:
            self.emit_health()
            await sleep(min(self.daemon.settings.health.interval, 3600))
