"""The camera in Home Assistant: its entities kept up to date, their commands carried out.

On every connection (and whenever Home Assistant says ``online`` on ``<discovery>/status``, as
it does when it starts) the discovery configurations go out, then every state, then
``online`` on the availability topic; all retained, so Home Assistant has them whenever it
subscribes. From then on the bus says what changed: motion confirmed and over (the tracker's
events: the sensor follows motion whether the camera is armed or not), the motion picture of a
clip, a still, a finished clip, settings applied (from the page, the shadow or Home Assistant).
The sensors (upload queue, free disk, CPU temperature) are read every minute and soon after a
clip or an upload.

Commands take the path of the page's changes (``local.changes``): checked whole by the option
table, applied by ``reconfigure``, kept in the ``--local-settings`` file, reported to the
shadow. A refused value is one log line, and the state is published again so Home Assistant
shows the value in force. Buttons: *record* is a manual clip of ``RECORD_S`` seconds (recorded
armed or not), *take still* a still, published as the Still image.

Nothing the camera does waits on the broker: bus handlers only queue messages (or start a task
that reads a picture from disk). Commands are carried out one at a time by one task, newest
per topic (a flood of them costs a few, never a queue), at most one every ``COMMAND_GAP_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pinthesky.cloud.uploader import UploadEnded
from pinthesky.control.health import cpu_temperature, ip_address
from pinthesky.errors import PintheskyError
from pinthesky.eventfiles import open_ours
from pinthesky.hardware import board
from pinthesky.homeassistant.client import ONLINE, Broker, BrokerClient
from pinthesky.homeassistant.discovery import OFF, ON, PRESS, Topics, camera_name, configs
from pinthesky.logs import Throttle
from pinthesky.record.bus import (
    ClipReady,
    EventBus,
    ImageReady,
    MotionDetected,
    MotionStopped,
    PictureTaken,
    SettingsChanged,
)

if TYPE_CHECKING:
    from pinthesky.local.changes import LocalChanges
    from pinthesky.record.clips import ClipStore
    from pinthesky.record.recorder import Recorder
    from pinthesky.settings import Settings

log = logging.getLogger(__name__)

ORIGIN = "home assistant"
RECORD_S = 30.0
"""Seconds of the manual clip the Record button asks for (plus the pre-roll), as the page's."""
MAX_COMMAND_BYTES = 64
MAX_PICTURE_BYTES = 8 * 1024 * 1024
COMMAND_GAP_S = 0.2
STILL_GAP_S = 1.0
SENSORS_EVERY_S = 60.0
SENSORS_SOONEST_S = 2.0
REPUBLISH_SOONEST_S = 5.0
SHOWN_KEYS = {"camera.armed", "camera.sensitivity"}


class Host(Protocol):
    """What the bridge uses of the daemon (``daemon.app.Daemon`` provides it)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def bus(self) -> EventBus: ...
    @property
    def recorder(self) -> Recorder | None: ...
    @property
    def store(self) -> ClipStore: ...
    @property
    def changes(self) -> LocalChanges: ...

    def queue_gauges(self) -> dict[str, float]: ...
    async def capture_image(self, file_name: str | None = None) -> Path: ...


class HomeAssistant:
    """MQTT discovery and state for Home Assistant, on the loop."""

    def __init__(self, daemon: Host) -> None:
        self.daemon = daemon
        self.topics = Topics.of(daemon.settings)
        self.client: BrokerClient | None = None
        self._motion = False
        self._pictures: dict[str, bytes] = {}
        """Topic -> the last picture published there, sent again after a reconnection."""
        self._last_clip: dict[str, Any] | None = None
        """The Last clip sensor's state and attributes; not published before there is one (a
        timestamp sensor takes no "None")."""
        self._sensors: dict[str, Any] | None = None
        self._pending: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._sensors_due = asyncio.Event()
        self._republish_due = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_still = -STILL_GAP_S
        self.commands = 0
        self.refused = 0
        # Refusals one line each, up to a burst; a flood is summed up.
        self._warn = Throttle(log, burst=20)

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> bool:
        """Connect (in the background); False, after one line, when the password file
        cannot be read (the camera goes on without Home Assistant)."""
        s = self.daemon.settings.mqtt
        assert s.host is not None
        password = s.password
        if s.password_file is not None:
            try:
                password = await asyncio.to_thread(read_password, s.password_file)
            except (OSError, ValueError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                log.error(
                    "mqtt.password_file %s cannot be used (%s); Home Assistant is off",
                    s.password_file,
                    why,
                )
                return False
        broker = Broker(
            host=s.host,
            port=s.broker_port,
            client_id=f"pinthesky-{self.topics.node}",
            will_topic=self.topics.availability,
            username=s.username,
            password=password,
            tls=s.tls,
            ca_file=s.ca_file,
        )
        newest = await asyncio.to_thread(self._newest_clip)
        if newest is not None:
            self._last_clip = newest
        bus = self.daemon.bus
        bus.subscribe(MotionDetected, lambda _: self._motion_now(True))
        bus.subscribe(MotionStopped, lambda _: self._motion_now(False))
        bus.subscribe(PictureTaken, lambda ev: self._spawn(self._picture(ev.path, False)))
        bus.subscribe(ImageReady, lambda ev: self._spawn(self._picture(ev.path, True)))
        bus.subscribe(ClipReady, self._on_clip)
        bus.subscribe(UploadEnded, lambda _: self._sensors_due.set())
        bus.subscribe(SettingsChanged, self._on_settings)
        self.client = BrokerClient(broker, self._on_connected, self._on_messages)
        self.client.start()
        self._spawn(self._run_commands(), "home assistant commands")
        self._spawn(
            self._paced(
                self._sensors_due, self._publish_sensors, SENSORS_SOONEST_S, SENSORS_EVERY_S
            ),
            "home assistant sensors",
        )
        self._spawn(
            self._paced(self._republish_due, self._publish_all, REPUBLISH_SOONEST_S),
            "home assistant discovery",
        )
        log.info(
            "home assistant: MQTT discovery on %s%s as %s, topics under %s",
            self.client.address,
            " (TLS)" if s.tls else "",
            camera_name(self.daemon.settings),
            self.topics.prefix,
        )
        return True

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.client is not None:
            await self.client.stop()
            log.info(
                "home assistant: stopped (%d commands, %d refused)", self.commands, self.refused
            )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _paced(
        self,
        due: asyncio.Event,
        action: Callable[[], Any],
        soonest: float,
        every: float | None = None,
    ) -> None:
        """Run ``action`` when ``due`` is set (or every ``every`` seconds), never twice
        within ``soonest`` seconds: a burst of reasons costs one run."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await due.wait()
            due.clear()
            try:
                done = action()
                if asyncio.iscoroutine(done):
                    await done
            except Exception:
                log.exception("home assistant: %s failed", getattr(action, "__name__", action))
            await asyncio.sleep(soonest)

    # -- publishing ---------------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes | str | dict[str, Any]) -> None:
        if self.client is None:
            return
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":"))
        self.client.publish(topic, payload)

    def _on_connected(self) -> None:
        assert self.client is not None
        self.client.subscribe([*self.topics.commands(), self.topics.status])
        self._publish_all()
        self._sensors_due.set()

    def _publish_all(self) -> None:
        """Every configuration, every state, then ``online``."""
        s = self.daemon.settings
        for topic, config in configs(s, board.pi_model(), page_url(s)).items():
            self._publish(topic, config)
        self._motion_now(self._motion)
        self._publish_settings()
        for topic, jpeg in self._pictures.items():
            self._publish(topic, jpeg)
        if self._last_clip is not None:
            self._publish(self.topics.last_clip, self._last_clip)
        if self._sensors is not None:
            self._publish(self.topics.state, self._sensors)
        self._publish(self.topics.availability, ONLINE)

    def _publish_settings(self) -> None:
        camera = self.daemon.settings.camera
        self._publish(self.topics.armed, ON if camera.armed else OFF)
        self._publish(self.topics.sensitivity, str(camera.sensitivity))

    async def _publish_sensors(self) -> None:
        self._sensors = await asyncio.to_thread(self._read_sensors)
        self._publish(self.topics.state, self._sensors)

    def _read_sensors(self) -> dict[str, Any]:
        """Worker thread: lists the upload queue, asks the file system and the kernel."""
        queue = self.daemon.queue_gauges()
        free = None
        with contextlib.suppress(OSError):
            st = os.statvfs(self.daemon.settings.storage.combine_dir)
            free = round(st.f_bavail * st.f_frsize / 1e9, 2)
        return {
            "upload_queue": int(queue.get("UploadQueueDepth", 0)),
            "disk_free_gb": free,
            "cpu_temperature": cpu_temperature(),
        }

    # -- what the camera did ------------------------------------------------------------------

    def _motion_now(self, moving: bool) -> None:
        self._motion = moving
        self._publish(self.topics.motion, ON if moving else OFF)

    async def _picture(self, path: Path, still: bool) -> None:
        topic = self.topics.still_picture if still else self.topics.motion_picture
        try:
            jpeg = await asyncio.to_thread(_read_picture, path)
        except OSError as exc:
            log.warning("home assistant: picture %s not sent: %s", path.name, exc)
            return
        self._pictures[topic] = jpeg
        self._publish(topic, jpeg)

    def _on_clip(self, ready: ClipReady) -> None:
        clip = ready.clip
        facts = clip_facts(clip.path.name, clip.start_epoch, clip.trigger)
        facts.update(duration=round(clip.duration, 1), size_mb=round(clip.size / 1e6, 1))
        self._last_clip = facts
        self._publish(self.topics.last_clip, facts)
        self._sensors_due.set()

    def _on_settings(self, changed: SettingsChanged) -> None:
        if changed.keys & SHOWN_KEYS:
            self._publish_settings()

    def _newest_clip(self) -> dict[str, Any] | None:
        """Worker thread: the newest clip on disk at start (it may be uploaded since)."""
        store = self.daemon.store
        with contextlib.suppress(OSError):
            clips = store.clips()
            if clips:
                newest = clips[-1]
                start = int(newest.name.split(".")[0].split("-")[0])
                return clip_facts(newest.name, start, store.meta(newest).get("trigger"))
        return None

    # -- commands -----------------------------------------------------------------------------

    def _on_messages(self, batch: dict[str, bytes]) -> None:
        for topic, payload in batch.items():
            if topic == self.topics.status:
                if payload.strip() == ONLINE:
                    self._republish_due.set()  # Home Assistant (re)started
                continue
            self._pending[topic] = payload
        if self._pending:
            self._wake.set()

    async def _run_commands(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                topic = next(iter(self._pending))
                payload = self._pending.pop(topic)
                try:
                    await self._command(topic, payload)
                except Exception:
                    log.exception("home assistant: the command on %s failed", topic)
                await asyncio.sleep(COMMAND_GAP_S)

    def _refuse(self, topic: str, why: str) -> None:
        self.refused += 1
        self._warn(logging.WARNING, "home assistant: %s refused: %s", topic, why)

    async def _command(self, topic: str, payload: bytes) -> None:
        t = self.topics
        if len(payload) > MAX_COMMAND_BYTES:
            self._refuse(topic, f"{len(payload)} bytes, more than {MAX_COMMAND_BYTES}")
            return
        try:
            text = payload.decode("utf-8").strip()
        except UnicodeDecodeError:
            self._refuse(topic, "not UTF-8 text")
            return
        self.commands += 1
        if topic in (t.set_armed, t.set_sensitivity):
            key = "camera.armed" if topic == t.set_armed else "camera.sensitivity"
            outcome = await self.daemon.changes.apply({key: text}, ORIGIN)
            for line in outcome.errors:
                self.refused += 1
                self._warn(logging.WARNING, "%s", line)
            if not outcome.applied:
                self._publish_settings()  # Home Assistant shows the value in force
        elif text != PRESS:
            self._refuse(topic, f"{text[:20]!r} is not {PRESS}")
        elif topic == t.press_record:
            self._record()
        elif topic == t.press_still:
            await self._still()

    def _record(self) -> None:
        recorder = self.daemon.recorder
        if recorder is None:
            self._refuse(self.topics.press_record, "the camera is not running")
            return
        done = recorder.capture(RECORD_S)
        if done.done() and done.result() is None:
            self._refuse(self.topics.press_record, "nothing buffered yet; try again in a second")
            return
        log.info("%s: manual clip of %g s", ORIGIN, RECORD_S)

    async def _still(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_still < STILL_GAP_S:
            self._refuse(self.topics.press_still, f"one still every {STILL_GAP_S:g} s at most")
            return
        self._last_still = loop.time()
        try:
            path = await self.daemon.capture_image()
        except PintheskyError as exc:
            self._refuse(self.topics.press_still, str(exc))
            return
        log.info("%s: still %s", ORIGIN, path.name)


def clip_facts(name: str, start_epoch: int, trigger: Any) -> dict[str, Any]:
    """The Last clip sensor's state (its ``start``, a timestamp) and attributes (not ``name``:
    Home Assistant keeps that word for the entity's own)."""
    start = datetime.fromtimestamp(start_epoch, UTC).isoformat()
    return {"start": start, "clip": name, "trigger": trigger}


def page_url(s: Settings) -> str | None:
    """The local page's address for the device's link in Home Assistant (when it is on)."""
    if s.http.port is None:
        return None
    address = s.http.bind if s.http.bind not in ("0.0.0.0", "::") else ip_address()
    return f"http://{address}:{s.http.port}/" if address else None


def read_password(path: Path) -> str:
    """The first line of ``path`` (worker thread); a file others may read is refused."""
    with path.open("rb") as fh:
        if os.fstat(fh.fileno()).st_mode & stat.S_IROTH:
            raise ValueError("others may read it: chmod o-r it")
        lines = fh.read(4096).decode("utf-8").splitlines()
    if not lines or not lines[0].strip():
        raise ValueError("it is empty: its first line is the password")
    return lines[0].strip()


def _read_picture(path: Path) -> bytes:
    fd = open_ours(path)
    with os.fdopen(fd, "rb") as fh:
        if os.fstat(fh.fileno()).st_size > MAX_PICTURE_BYTES:
            raise OSError(f"larger than {MAX_PICTURE_BYTES} bytes")
        return fh.read()
