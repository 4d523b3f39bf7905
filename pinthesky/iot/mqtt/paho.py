"""The MQTT transport on paho-mqtt (pure Python): 1.6 (Raspberry Pi OS 12's apt package) or 2.x.

paho's own network thread (``loop_start``) connects, reconnects with capped exponential
backoff (``reconnect_delay_set``) and resends unacknowledged QoS 1 messages; the session is
rejoined on every connection (``clean_start=False`` with a session expiry). Incoming QoS 1
messages are acknowledged after the handler returns, so a command is on disk before the broker
forgets it, as with awscrt.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from pinthesky.iot.mqtt.base import Endpoint, Handlers, PublishFailed
from pinthesky.mqttclient import disconnect_code, mqtt, new_client, tls_context


def _failed(code: Any) -> bool:
    """An MQTT 5 reason code (paho's ReasonCode/ReasonCodes, or a plain int) is a failure."""
    return int(getattr(code, "value", code) or 0) >= 0x80


class _Acks:
    """Futures waiting on packet ids, safe against the answer arriving before the caller has
    registered its id (paho's thread may read the ack while ``publish`` is still returning)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._early: dict[int, Any] = {}

    def expect(self, mid: int) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if mid in self._early:
                future.set_result(self._early.pop(mid))
            else:
                self._waiting[mid] = (loop, future)
        return future

    def forget(self, mid: int) -> None:
        with self._lock:
            self._waiting.pop(mid, None)

    def answer(self, mid: int, value: Any) -> None:
        with self._lock:
            waiting = self._waiting.pop(mid, None)
            if waiting is None:
                self._early[mid] = value
                return
        loop, future = waiting

        def settle() -> None:
            if not future.done():
                future.set_result(value)

        loop.call_soon_threadsafe(settle)


class PahoTransport:
    """paho-mqtt's MQTT 5 client over mutual TLS."""

    name = "paho"

    def __init__(self, endpoint: Endpoint, handlers: Handlers) -> None:
        self._endpoint = endpoint
        self._handlers = handlers
        self._acks = _Acks()
        self._subacks = _Acks()
        client = new_client(endpoint.client_id, mqtt.MQTTv5)
        client.tls_set_context(tls_context(endpoint.ca, endpoint.cert, endpoint.key))
        client.reconnect_delay_set(
            min_delay=max(1, round(endpoint.min_reconnect_s)),
            max_delay=max(1, round(endpoint.max_reconnect_s)),
        )
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self._client = client
        self._stopping = False

    # -- paho's thread ------------------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, code: Any, *_: Any) -> None:
        if _failed(code):
            self._handlers.connection_failed(f"refused by the broker: {code}")
        else:
            self._handlers.connected()

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._handlers.connection_failed(self._client.last_error or "connection failed")

    def _on_disconnect(self, client: Any, userdata: Any, *args: Any) -> None:
        code = disconnect_code(args)
        if not self._stopping:
            self._handlers.disconnected(str(code) if code is not None else "connection lost")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._handlers.message(message.topic, bytes(message.payload or b""))

    def _on_publish(self, client: Any, userdata: Any, mid: int, *rest: Any) -> None:
        # 2.x tells the PUBACK's reason code; 1.6 only that the PUBACK came.
        self._acks.answer(mid, rest[0] if rest else None)

    def _on_subscribe(
        self, client: Any, userdata: Any, mid: int, codes: Any, properties: Any = None
    ) -> None:
        self._subacks.answer(mid, list(codes))

    # -- the sidecar's loop -------------------------------------------------------------------

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._endpoint.session_expiry_s
        self._client.connect_async(
            self._endpoint.host,
            self._endpoint.port,
            keepalive=self._endpoint.keep_alive_s,
            clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    async def _wait(self, acks: _Acks, rc: int, mid: int | None) -> Any:
        # Not connected: paho keeps a QoS 1 message and sends it after the reconnection.
        if mid is None or rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            if mid is not None:
                acks.forget(mid)
            raise PublishFailed(mqtt.error_string(rc))
        try:
            async with asyncio.timeout(self._endpoint.ack_timeout_s):
                return await acks.expect(mid)
        except TimeoutError:
            acks.forget(mid)
            raise PublishFailed(f"no answer within {self._endpoint.ack_timeout_s:.0f} s") from None

    async def subscribe(self, topics: Sequence[str]) -> list[str]:
        rc, mid = self._client.subscribe([(t, SubscribeOptions(qos=1)) for t in topics])
        if rc == mqtt.MQTT_ERR_NO_CONN:
            raise PublishFailed("not connected")
        codes = await self._wait(self._subacks, rc, mid)
        return [f"{t}: {c}" for t, c in zip(topics, codes, strict=False) if _failed(c)]

    async def publish(self, topic: str, payload: bytes) -> None:
        info = self._client.publish(topic, payload, qos=1)
        code = await self._wait(self._acks, info.rc, info.mid)
        if code is not None and _failed(code):
            raise PublishFailed(f"refused: {code}")

    async def stop(self, within_s: float) -> bool:
        self._stopping = True
        self._client.disconnect()
        try:
            # loop_stop joins paho's thread, which ends once the DISCONNECT is sent.
            await asyncio.wait_for(asyncio.to_thread(self._client.loop_stop), within_s)
        except TimeoutError:
            return False
        return True
