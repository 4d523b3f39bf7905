"""The MQTT connection to a broker on the home network (Home Assistant's), on paho-mqtt.

MQTT 3.1.1, which every home broker speaks, with a user name and password, optionally over TLS
(the broker's certificate checked against ``ca_file`` or the system's CAs), and a last will:
the broker itself says ``offline`` on the availability topic when the camera vanishes (a
``kill -9``, a power cut, a lost Wi-Fi). The session is clean: what Home Assistant needs is
retained, and published again after every connection.

paho's network thread (``loop_start``) connects, keeps the connection alive and reconnects with
capped exponential backoff. Its callbacks (the ``_on_*`` methods, on paho's thread) cross into
the loop only with ``call_soon_threadsafe``.

The camera's loop never waits on the broker: ``publish`` only queues a message for paho's
thread, and while disconnected nothing is queued at all (the owner publishes everything again
once connected). Messages in are kept newest-per-topic until the loop takes them: a flood of
commands costs one entry per topic and one wake-up of the loop per batch, never a queue that
grows. A connection problem is one log line when it starts or changes, not one per retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinthesky.mqttclient import (
    connect_refusal,
    disconnect_code,
    mqtt,
    new_client,
    tls_context,
)

log = logging.getLogger(__name__)

QUEUE_LIMIT = 200
"""Messages paho may hold unsent (a slow broker); beyond them a publish is dropped: the state
it carried goes out again with the next change or connection."""


@dataclass(frozen=True)
class Broker:
    """Where and as whom to connect."""

    host: str
    port: int
    client_id: str
    will_topic: str
    """Retained ``offline`` here when the connection dies, ``online`` once connected."""
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    keep_alive_s: int = 30
    min_reconnect_s: int = 1
    max_reconnect_s: int = 60


ONLINE, OFFLINE = b"online", b"offline"


class BrokerClient:
    """One connection to the broker, owned by the loop it was made on."""

    def __init__(
        self,
        broker: Broker,
        on_connected: Callable[[], None],
        on_messages: Callable[[dict[str, bytes]], None],
    ) -> None:
        self.broker = broker
        self._on_connected = on_connected
        self._on_messages = on_messages
        self._loop = asyncio.get_running_loop()
        self.connected = False
        """On the loop: the broker accepted us and we have not heard of a disconnection."""
        self.connections = 0
        self.dropped = 0
        self._problem: str | None = None
        # Note on locking: the inbox is filled by paho's thread and emptied by the loop.
        self._inbox_lock = threading.Lock()
        self._inbox: dict[str, bytes] = {}
        self.received = 0
        self._stopping = False
        client = new_client(broker.client_id, mqtt.MQTTv311, clean_session=True)
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            client.tls_set_context(tls_context(broker.ca_file))
        client.will_set(broker.will_topic, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(broker.min_reconnect_s, broker.max_reconnect_s)
        client.max_queued_messages_set(QUEUE_LIMIT)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

    @property
    def address(self) -> str:
        return f"{self.broker.host}:{self.broker.port}"

    def start(self) -> None:
        """Begin connecting (returns at once; paho's thread connects and reconnects)."""
        self._client.connect_async(
            self.broker.host, self.broker.port, keepalive=self.broker.keep_alive_s
        )
        self._client.loop_start()

    def publish(self, topic: str, payload: bytes | str, retain: bool = True) -> bool:
        """Queue a message for the broker (QoS 1); False when not connected or paho's queue is
        full (nothing is kept: the caller publishes its state again after the next connection)."""
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.dropped += 1
            log.debug("mqtt: %s not queued: %s", topic, mqtt.error_string(info.rc))
            return False
        return True

    def subscribe(self, topics: Sequence[str]) -> None:
        """Subscribe at QoS 1 (paho sends it; a refusal would show as no messages)."""
        if topics:
            self._client.subscribe([(t, 1) for t in topics])

    async def stop(self, within_s: float = 3.0) -> None:
        """Say ``offline`` (retained) and disconnect cleanly, within ``within_s``."""
        self._stopping = True
        if self.connected:
            info = self._client.publish(self.broker.will_topic, OFFLINE, qos=1, retain=True)
            # paho sends the DISCONNECT after what is queued: waiting for the PUBACK only
            # makes sure Home Assistant heard it before the connection goes. A connection
            # lost meanwhile makes paho refuse to wait (2.x raises): the will says it then.
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, within_s / 2)
        self._client.disconnect()
        try:
            await asyncio.wait_for(asyncio.to_thread(self._client.loop_stop), within_s)
        except TimeoutError:
            log.warning("mqtt: the client did not stop within %.0f s", within_s)
        self.connected = False

    # -- the loop's side ----------------------------------------------------------------------

    def _take_inbox(self) -> None:
        with self._inbox_lock:
            batch, self._inbox = self._inbox, {}
        if batch and not self._stopping:
            self._on_messages(batch)

    def _now_connected(self) -> None:
        self.connected = True
        self.connections += 1
        self._problem = None
        log.info("mqtt: connected to %s", self.address)
        self._on_connected()

    def _now_disconnected(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        if was and not self._stopping:
            self._problem = None
            log.warning("mqtt: connection to %s lost (%s); reconnecting", self.address, reason)

    def _failed(self, problem: str) -> None:
        # One line when a problem starts or changes; retries with the same one are quiet.
        if problem != self._problem and not self._stopping:
            self._problem = problem
            log.error(
                "mqtt: %s; retrying (at most every %d s)", problem, self.broker.max_reconnect_s
            )
        else:
            log.debug("mqtt: %s", problem)

    # -- paho's thread ------------------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, code: Any, *_: Any) -> None:
        refusal = connect_refusal(code)
        if refusal is None:
            self._loop.call_soon_threadsafe(self._now_connected)
            return
        hint = ""
        if any(w in refusal.lower() for w in ("password", "authori", "identifier")):
            hint = " (check mqtt.username and the password)"
        self._loop.call_soon_threadsafe(
            self._failed, f"the broker {self.address} refused the login: {refusal}{hint}"
        )

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        why = self._client.last_error or "connection failed"
        self._loop.call_soon_threadsafe(
            self._failed, f"cannot reach the broker {self.address}: {why}"
        )

    def _on_disconnect(self, client: Any, userdata: Any, *args: Any) -> None:
        code = disconnect_code(args)
        self._loop.call_soon_threadsafe(self._now_disconnected, str(code))

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._inbox_lock:
            first = not self._inbox
            self._inbox[message.topic] = bytes(message.payload or b"")
            self.received += 1
        if first:
            self._loop.call_soon_threadsafe(self._take_inbox)
