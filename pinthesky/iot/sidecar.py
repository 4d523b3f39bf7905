"""``pinthesky-iot``: the AWS IoT sidecar. MQTT 5 over mutual TLS on one side (awsiotsdk/awscrt
where PyPI has its wheels, pure-Python paho-mqtt on 32-bit Pis: see ``pinthesky.iot.mqtt``), the
daemon's four files on the other; nothing compiled on the Pi.

- **Shadow** (named ``--shadow-name``, default ``pinthesky``): on every connection it
  subscribes to the shadow's ``get`` and ``update`` answers, ``update/documents`` and
  ``update/delta``, asks for the shadow (``get``) and writes it to the configure-output file as
  a documents message, so the daemon applies the current ``desired``. Every
  ``update/documents`` message is written there too, atomically (temporary name + rename). The
  configure-input file, when the daemon writes it, is published as ``reported`` (8 KiB at
  most, invalid JSON skipped with one line). A delta is not echoed: the daemon reports what
  it applied. With ``--seed-desired``, an empty ``desired`` is seeded from the first report
  (without ``cloud_connection``), because the console needs ``desired.camera``.
- **Commands**: each message on ``pinthesky/events/{thing}/input`` (QoS 1) is appended to the
  event-input file with one ``write`` and fsynced before it is acknowledged, in order. The
  daemon renames that file aside before reading it, so nothing appended is ever lost, and it
  reads the values one by one, so messages never run together. The MQTT session persists
  for an hour, so the broker keeps commands sent while the sidecar is offline.
- **Jobs** (the console's reboot, shutdown, service-logs and update buttons): AWS IoT Jobs on
  ``$aws/things/{thing}/jobs/...``; the next execution is started on every connection and on
  ``notify-next``, one at a time; only the handlers in ``jobs`` run, and the execution is
  reported SUCCEEDED or FAILED with the output's tail.
- **Events**: the daemon puts each event it writes into ``<event-output>.outbox/`` as a file
  of its own (the sidecar creates that directory; see ``eventfiles``). Files are published in
  name order on ``pinthesky/events/output`` at QoS 1 and deleted once the broker acknowledged
  them: events written while MQTT is down wait on disk (1,000 at most) and go after the
  reconnection, in order.

Reconnection is the MQTT client's own, with capped exponential backoff (1 s to 2 min). Once
the subscriptions are acknowledged the sidecar logs "subscribed to N topics": commands sent
from then on are delivered (tests wait for that line before publishing).
SIGTERM/SIGINT disconnect cleanly and exit 0. Bad input from the broker (invalid JSON, a
message too large, a document of the wrong shape) is one log line and is dropped; nothing
partial is ever written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pinthesky.cloud.credentials import check_key_permissions
from pinthesky.errors import PintheskyError
from pinthesky.eventfiles import (
    FILE_MODE,
    Watcher,
    ensure_file,
    open_ours,
    outbox_dir,
    read_ours,
    write_atomically,
)
from pinthesky.iot.mqtt import Endpoint, Handlers, PublishFailed, Transport, open_transport
from pinthesky.jsonstream import MAX_MESSAGE_BYTES
from pinthesky.notify import Notifier
from pinthesky.settings import Settings

log = logging.getLogger("pinthesky.iot")

PROG = "pinthesky-iot"
MAX_REPORT_BYTES = 8 * 1024
"""A named shadow's document is 8 KiB at most."""
MAX_INBOUND_BYTES = 128 * 1024
"""AWS IoT's largest message."""
EVENTS_OUTPUT = "pinthesky/events/output"
SESSION_EXPIRY_S = 3600
GET_TIMEOUT_S = 10.0
PUBLISH_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
OUTBOX_MODE = 0o700
"""Like the four files (0600, in directories the daemon's user owns): the daemon and the
sidecar run as the same dedicated user, which aws-iot-device-client's mode checks need too."""


class Topics:
    def __init__(self, thing: str, shadow: str) -> None:
        base = f"$aws/things/{thing}/shadow/name/{shadow}"
        self.get = f"{base}/get"
        self.get_accepted = f"{base}/get/accepted"
        self.get_rejected = f"{base}/get/rejected"
        self.update = f"{base}/update"
        self.update_accepted = f"{base}/update/accepted"
        self.update_rejected = f"{base}/update/rejected"
        self.documents = f"{base}/update/documents"
        self.delta = f"{base}/update/delta"
        self.commands = f"pinthesky/events/{thing}/input"
        self.jobs = f"$aws/things/{thing}/jobs"
        self.notify_next = f"{self.jobs}/notify-next"
        self.start_next = f"{self.jobs}/start-next"
        self.start_next_accepted = f"{self.start_next}/accepted"
        self.start_next_rejected = f"{self.start_next}/rejected"
        self.job_update_rejected = f"{self.jobs}/+/update/rejected"

    def subscriptions(self) -> list[str]:
        return [
            self.get_accepted,
            self.get_rejected,
            self.update_accepted,
            self.update_rejected,
            self.documents,
            self.delta,
            self.commands,
            self.notify_next,
            self.start_next_accepted,
            self.start_next_rejected,
            self.job_update_rejected,
        ]


def _json_object(payload: bytes, limit: int, what: str) -> dict[str, Any] | None:
    """The payload as a JSON object, or None after one log line saying what was wrong."""
    if len(payload) > limit:
        log.warning("%s: %d bytes, more than %d: dropped", what, len(payload), limit)
        return None
    try:
        value = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        log.warning("%s: not JSON (%s): dropped", what, exc)
        return None
    if not isinstance(value, dict):
        log.warning("%s: a JSON %s, not an object: dropped", what, type(value).__name__)
        return None
    return value


def append_message(path: Path, data: bytes) -> None:
    """One message appended with one write, fsynced (the daemon reads values one by one)."""
    # Never through a link, never blocked on a FIFO planted under the daemon's input name.
    fd = open_ours(path, write=True, create=True, append=True)
    try:
        os.write(fd, data + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


class Sidecar:
    """One MQTT connection bridged to the daemon's files. ``run`` returns the exit code."""

    def __init__(self, settings: Settings) -> None:
        cc, ev, iot = settings.cloud_connection, settings.events, settings.iot
        assert cc.thing_name and iot.endpoint and cc.cert_path and cc.key_path
        self.settings = settings
        self.thing = cc.thing_name
        self.topics = Topics(cc.thing_name, iot.shadow_name)
        self.outbox = outbox_dir(ev.event_output)
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._wake_outbox = asyncio.Event()
        self._shadow_known = asyncio.Event()
        self._desired: dict[str, Any] | None = None
        self._last_report: bytes | None = None
        self._client: Transport | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.commands = 0
        self.documents = 0
        self.published = 0
        self.reports = 0
        self.dropped = 0
        self.jobs = 0
        self._job_running = False

    # -- lifecycle ----------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.loop = loop
        ev = self.settings.events
        for path in (ev.event_input, ev.event_output, ev.configure_input, ev.configure_output):
            ensure_file(path)
        with contextlib.suppress(FileExistsError):
            self.outbox.mkdir(mode=OUTBOX_MODE)
        self._client = client = self._make_client()
        watcher = Watcher(loop)
        watcher.watch(ev.configure_input, lambda _: self._spawn(self._publish_report()))
        watcher.watch_dir(self.outbox, lambda _: self._wake_outbox.set())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        drain = asyncio.create_task(self._drain_outbox(), name="outbox")
        iot = self.settings.iot
        log.info(
            "pinthesky-iot: connecting to %s:%d as %s (%s); shadow %s; events in %s, out %s",
            iot.endpoint,
            iot.port,
            self.thing,
            f"MQTT on {client.name}",
            iot.shadow_name,
            ev.event_input,
            self.outbox,
        )
        client.start()
        notifier = Notifier()
        notifier.ready("connecting")
        alive = asyncio.create_task(self._feed_watchdog(notifier, drain), name="watchdog")
        try:
            await self._stop.wait()
        finally:
            notifier.stopping()
            alive.cancel()
            drain.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(alive, drain, *self._tasks, return_exceptions=True)
            watcher.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self._disconnect()
        log.info(
            "pinthesky-iot stopped: %d commands delivered, %d events published, %d reports",
            self.commands,
            self.published,
            self.reports,
        )
        return 0

    async def _feed_watchdog(self, notifier: Notifier, drain: asyncio.Task[None]) -> None:
        """WATCHDOG=1 while the loop turns and the outbox task lives; STATUS on changes."""
        every = notifier.watchdog_s
        was = None
        while True:
            now = self.connected.is_set()
            if now != was:
                notifier.status("connected" if now else "disconnected, retrying")
                was = now
            if every and not drain.done():
                notifier.watchdog()
            await asyncio.sleep(every / 3 if every else 5.0)

    async def _disconnect(self) -> None:
        assert self._client is not None
        if not await self._client.stop(STOP_TIMEOUT_S):
            log.warning("MQTT client did not stop within %.0f s", STOP_TIMEOUT_S)

    def _make_client(self) -> Transport:
        cc, iot = self.settings.cloud_connection, self.settings.iot
        assert iot.endpoint and cc.cert_path and cc.key_path
        endpoint = Endpoint(
            host=iot.endpoint,
            port=iot.port,
            client_id=self.thing,
            cert=cc.cert_path,
            key=cc.key_path,
            ca=cc.cacert_path,
            session_expiry_s=SESSION_EXPIRY_S,
            ack_timeout_s=PUBLISH_TIMEOUT_S,
        )
        handlers = Handlers(
            message=self._on_publish,
            connected=self._on_connected,
            connection_failed=self._on_connection_failure,
            disconnected=self._on_disconnected,
        )
        return open_transport(endpoint, handlers)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the MQTT client's thread: connection events -------------------------------------------

    def _on_connected(self) -> None:
        log.info("connected to %s", self.settings.iot.endpoint)
        self.loop.call_soon_threadsafe(self._spawn, self._after_connect())

    def _on_connection_failure(self, reason: str) -> None:
        log.warning("cannot connect to %s: %s", self.settings.iot.endpoint, reason)

    def _on_disconnected(self, reason: str) -> None:
        if not self._stop.is_set():
            log.warning("disconnected: %s", reason)
        self.loop.call_soon_threadsafe(self.connected.clear)

    # -- on the loop: after each connection ---------------------------------------------------

    async def _after_connect(self) -> None:
        assert self._client is not None
        topics = self.topics.subscriptions()
        try:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for can swallow a cancellation
            # that comes as the operation finishes, and the task then runs on after SIGTERM.
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                refused = await self._client.subscribe(topics)
        except (PublishFailed, TimeoutError) as exc:
            # Events can still go out; commands and the shadow wait for the next connection.
            log.error("subscribing failed: %s", exc or type(exc).__name__)
            self.connected.set()
            return
        for line in refused:
            log.error("subscription refused: %s", line)
        log.info("subscribed to %d topics", len(topics) - len(refused))
        self._shadow_known.clear()
        await self._publish(self.topics.get, {"clientToken": _token()})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._shadow_known.wait(), GET_TIMEOUT_S)
        self.connected.set()
        self._wake_outbox.set()
        self._last_report = None  # what the shadow holds may be older: report again
        await self._publish_report()
        await self._ask_for_job()

    async def _publish(self, topic: str, message: dict[str, Any] | bytes) -> bool:
        """Publish at QoS 1; True once the broker acknowledged it."""
        assert self._client is not None
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):  # see _after_connect
                await self._client.publish(topic, payload)
        except (PublishFailed, TimeoutError) as exc:
            log.warning("publishing to %s failed: %s", topic, exc or type(exc).__name__)
            return False
        return True

    async def _publish_report(self) -> None:
        """The configure-input file as ``reported`` (when connected and it changed)."""
        if not self.connected.is_set():
            return  # published after the next connection
        path = self.settings.events.configure_input
        try:
            data, _ = read_ours(path, MAX_REPORT_BYTES + 1)
        except OSError as exc:  # a link or a FIFO is never read (nor published)
            log.warning("reported state %s: %s", path, exc.strerror or exc)
            return
        if not data.strip() or data == self._last_report:
            return
        reported = _json_object(data, MAX_REPORT_BYTES, f"reported state {path}")
        if reported is None:
            return
        state: dict[str, Any] = {"reported": reported}
        if self.settings.iot.seed_desired and self._shadow_known.is_set() and not self._desired:
            state["desired"] = {k: v for k, v in reported.items() if k != "cloud_connection"}
            log.info("shadow desired state is empty: seeding it from the report")
        self._last_report = data
        if await self._publish(self.topics.update, {"state": state, "clientToken": _token()}):
            self.reports += 1
            if "desired" in state:
                self._desired = state["desired"]
        else:
            self._last_report = None

    # -- jobs ---------------------------------------------------------------------------------

    async def _ask_for_job(self) -> None:
        if not self._job_running:
            await self._publish(self.topics.start_next, {"clientToken": _token()})

    async def _run_job(self, execution: dict[str, Any]) -> None:
        """One job execution: the allowed handler run off the loop, its outcome reported."""
        from pinthesky.iot.jobs import JobRefused, parse_job, run_job

        job_id = execution.get("jobId")
        if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
            log.warning("job execution with an invalid jobId %r: ignored", job_id)
            return
        self._job_running = True
        try:
            try:
                job = parse_job(execution.get("jobDocument"))
            except JobRefused as exc:
                log.warning("job %s refused: %s", job_id, exc)
                ok, details = False, {"reason": str(exc)[:1000]}
            else:
                log.info("job %s: running %s", job_id, job.handler)
                ok, output = await asyncio.to_thread(run_job, job)
                details = {"handler": job.handler, "output": output}
                log.info("job %s: %s", job_id, "succeeded" if ok else "failed")
            update = {
                "status": "SUCCEEDED" if ok else "FAILED",
                "statusDetails": details,
                "clientToken": _token(),
            }
            await self._publish(f"{self.topics.jobs}/{job_id}/update", update)
            self.jobs += 1
        finally:
            self._job_running = False
        await self._ask_for_job()

    async def _drain_outbox(self) -> None:
        """Publish the daemon's events in order, one at a time, deleting each once acked."""
        while not self._stop.is_set():
            await self.connected.wait()
            self._wake_outbox.clear()
            queued = sorted(self.outbox.glob("*.json"))
            if not queued:
                await self._wake_outbox.wait()
                continue
            for path in queued:
                if not self.connected.is_set():
                    break
                try:
                    data, _ = read_ours(path, MAX_MESSAGE_BYTES + 1)
                except FileNotFoundError:
                    continue
                except OSError as exc:  # a link planted in the outbox: dropped, not followed
                    log.warning("event %s: %s: dropped", path.name, exc.strerror or exc)
                    path.unlink(missing_ok=True)
                    self.dropped += 1
                    continue
                if _json_object(data, MAX_MESSAGE_BYTES, f"event {path.name}") is None:
                    path.unlink(missing_ok=True)
                    self.dropped += 1
                    continue
                if not await self._publish(EVENTS_OUTPUT, data):
                    await asyncio.sleep(1.0)  # the connection is going: wait for the next
                    break
                path.unlink(missing_ok=True)
                self.published += 1

    # -- the MQTT client's thread: messages in -------------------------------------------------

    def _on_publish(self, topic: str, payload: bytes) -> None:
        try:
            self._route(topic, payload)
        except Exception:
            # Never let one message break the connection's thread.
            log.exception("handling a message on %s failed", topic)

    def _route(self, topic: str, payload: bytes) -> None:
        t = self.topics
        ev = self.settings.events
        if topic == t.commands:
            message = _json_object(payload, MAX_MESSAGE_BYTES, f"command on {topic}")
            if message is None:
                self.dropped += 1
                return
            try:
                append_message(ev.event_input, json.dumps(message, separators=(",", ":")).encode())
            except OSError as exc:  # a link, FIFO or directory under the input's name
                log.error("command not passed on: %s: %s", ev.event_input, exc.strerror or exc)
                self.dropped += 1
                return
            self.commands += 1
        elif topic == t.documents:
            doc = _json_object(payload, MAX_INBOUND_BYTES, f"shadow documents on {topic}")
            desired = _desired_of(doc.get("current")) if doc is not None else None
            if doc is None or desired is None:
                self.dropped += 1
                return
            self._set_desired(desired)
            write_atomically(ev.configure_output, json.dumps(doc).encode(), FILE_MODE)
            self.documents += 1
        elif topic == t.get_accepted:
            doc = _json_object(payload, MAX_INBOUND_BYTES, f"shadow on {topic}")
            desired = _desired_of(doc) if doc is not None else None
            if doc is None or desired is None:
                self.dropped += 1
                return
            self._set_desired(desired)
            state = doc.get("state", {})
            message = {
                "previous": None,
                "current": {
                    "state": {"desired": desired, "reported": state.get("reported") or {}},
                    "metadata": doc.get("metadata") or {},
                    "version": doc.get("version"),
                },
                "timestamp": doc.get("timestamp") or int(time.time()),
            }
            write_atomically(ev.configure_output, json.dumps(message).encode(), FILE_MODE)
            self.documents += 1
            self.loop.call_soon_threadsafe(self._shadow_known.set)
        elif topic == t.get_rejected:
            answer = _json_object(payload, MAX_INBOUND_BYTES, f"answer on {topic}") or {}
            if answer.get("code") == 404:
                log.info("shadow %s does not exist yet", self.settings.iot.shadow_name)
                self._set_desired({})
            else:
                log.warning("shadow get refused: %s %s", answer.get("code"), answer.get("message"))
            self.loop.call_soon_threadsafe(self._shadow_known.set)
        elif topic == t.update_rejected:
            answer = _json_object(payload, MAX_INBOUND_BYTES, f"answer on {topic}") or {}
            log.warning("shadow update refused: %s %s", answer.get("code"), answer.get("message"))
        elif topic == t.delta:
            log.debug("shadow delta received (the daemon reports what it applies)")
        elif topic in (t.notify_next, t.start_next_accepted):
            message = _json_object(payload, MAX_INBOUND_BYTES, f"jobs message on {topic}")
            execution = (message or {}).get("execution")
            if not isinstance(execution, dict):
                return  # no job waiting
            if topic == t.notify_next:
                self.loop.call_soon_threadsafe(self._spawn, self._ask_for_job())
            else:
                self.loop.call_soon_threadsafe(self._spawn, self._run_job(execution))
        elif topic == t.start_next_rejected or topic.endswith("/update/rejected"):
            answer = _json_object(payload, MAX_INBOUND_BYTES, f"answer on {topic}") or {}
            log.warning("jobs: %s refused: %s", topic, answer.get("message") or answer)

    def _set_desired(self, desired: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(setattr, self, "_desired", desired)


def _desired_of(doc: Any) -> dict[str, Any] | None:
    """``state.desired`` of a shadow document ({} when absent), None when malformed."""
    if not isinstance(doc, dict):
        log.warning("shadow document without a state: dropped")
        return None
    state = doc.get("state")
    desired = state.get("desired", {}) if isinstance(state, dict) else None
    if desired is None:
        desired = {}
    if not isinstance(desired, dict):
        log.warning(
            "shadow document whose desired state is not an object (%s): dropped",
            type(desired).__name__,
        )
        return None
    return desired


def _token() -> str:
    return uuid.uuid4().hex[:16]


# -- command line ---------------------------------------------------------------------------

SIDECAR_KEYS = (
    "cloud_connection.thing_name",
    "cloud_connection.cert_path",
    "cloud_connection.key_path",
    "cloud_connection.cacert_path",
    "events.event_input",
    "events.event_output",
    "events.configure_input",
    "events.configure_output",
    "daemon.log_level",
    "daemon.state_dir",
)


def check_readable(settings: Settings) -> list[str]:
    """One line per missing setting or unreadable certificate or key."""
    cc, iot = settings.cloud_connection, settings.iot
    errors = []
    if not iot.endpoint:
        errors.append("--endpoint is required (the iot:Data-ATS endpoint)")
    if not cc.thing_name:
        errors.append("--thing-name is required")
    for flag, path in (
        ("--thing-cert", cc.cert_path),
        ("--thing-key", cc.key_path),
        ("--ca-cert", cc.cacert_path),
    ):
        if path is None:
            if flag != "--ca-cert":
                errors.append(f"{flag} is required")
            continue
        try:
            with path.open("rb") as fh:
                fh.read(1)
        except OSError as exc:
            errors.append(f"{flag} {path}: cannot read: {exc.strerror}")
            continue
        if flag == "--thing-key":
            try:
                check_key_permissions(path)
            except PintheskyError as exc:
                errors.append(f"{flag} {exc}")
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    from pinthesky import settings as settings_module
    from pinthesky.cmdline import OneLineParser, load_settings
    from pinthesky.logs import setup_logging

    parser = OneLineParser(
        prog=PROG, description="AWS IoT sidecar of pinthesky: MQTT to the daemon's files."
    )
    parser.add_argument(
        "--config", metavar="FILE", type=Path, help="the daemon's TOML file of settings"
    )
    settings_module.add_arguments(parser, lambda key: key in SIDECAR_KEYS or key.startswith("iot."))
    ns = parser.parse_args(argv)
    cfg = load_settings(ns, PROG)
    assert isinstance(cfg, Settings)
    errors = check_readable(cfg)
    for line in errors:
        print(f"{PROG}: {line}", file=sys.stderr)
    if errors:
        return 2
    setup_logging(cfg.daemon.log_level)
    try:
        return asyncio.run(Sidecar(cfg).run())
    except PintheskyError as exc:  # no usable MQTT client: one line
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
