"""The MQTT transport on awsiotsdk/awscrt (the AWS Common Runtime, native code)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from awscrt import mqtt5
from awsiot import mqtt5_client_builder

from pinthesky.iot.mqtt.base import Endpoint, Handlers, PublishFailed


def _error(data: Any) -> str:
    exc = getattr(data, "exception", None)
    name = getattr(exc, "name", None) or type(exc).__name__
    return f"{name}" + (f" ({exc})" if exc and str(exc) != name else "")


class CrtTransport:
    """awscrt's MQTT 5 client: reconnection with capped exponential backoff and jitter is its
    own; the session is rejoined on every connection."""

    name = "crt"

    def __init__(self, endpoint: Endpoint, handlers: Handlers) -> None:
        self._handlers = handlers
        self._stopped: Future[None] = Future()
        self._client = mqtt5_client_builder.mtls_from_path(
            endpoint=endpoint.host,
            port=endpoint.port,
            cert_filepath=str(endpoint.cert),
            pri_key_filepath=str(endpoint.key),
            ca_filepath=str(endpoint.ca) if endpoint.ca else None,
            client_id=endpoint.client_id,
            keep_alive_interval_sec=endpoint.keep_alive_s,
            session_expiry_interval_sec=endpoint.session_expiry_s,
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_ALWAYS,
            min_reconnect_delay_ms=int(endpoint.min_reconnect_s * 1000),
            max_reconnect_delay_ms=int(endpoint.max_reconnect_s * 1000),
            ack_timeout_sec=int(endpoint.ack_timeout_s),
            on_publish_received=self._on_publish,
            on_lifecycle_connection_success=lambda _: handlers.connected(),
            on_lifecycle_connection_failure=lambda d: handlers.connection_failed(_error(d)),
            on_lifecycle_disconnection=lambda d: handlers.disconnected(_error(d)),
            on_lifecycle_stopped=self._on_stopped,
        )

    def _on_publish(self, data: Any) -> None:
        packet = data.publish_packet
        self._handlers.message(packet.topic, bytes(packet.payload or b""))

    def _on_stopped(self, data: Any) -> None:
        if not self._stopped.done():
            self._stopped.set_result(None)

    def start(self) -> None:
        self._client.start()

    async def subscribe(self, topics: Sequence[str]) -> list[str]:
        packet = mqtt5.SubscribePacket(
            subscriptions=[
                mqtt5.Subscription(topic_filter=t, qos=mqtt5.QoS.AT_LEAST_ONCE) for t in topics
            ]
        )
        try:
            suback = await asyncio.wrap_future(self._client.subscribe(packet))
        except Exception as exc:
            raise PublishFailed(str(exc) or type(exc).__name__) from None
        return [
            f"{topic}: {code.name}"
            for topic, code in zip(topics, suback.reason_codes, strict=False)
            if code.value >= 0x80
        ]

    async def publish(self, topic: str, payload: bytes) -> None:
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS.AT_LEAST_ONCE)
        try:
            done = await asyncio.wrap_future(self._client.publish(packet))
        except Exception as exc:
            raise PublishFailed(str(exc) or type(exc).__name__) from None
        code = done.puback.reason_code if done.puback is not None else None
        if code is not None and code.value >= 0x80:
            raise PublishFailed(f"refused: {code.name}")

    async def stop(self, within_s: float) -> bool:
        self._client.stop(mqtt5.DisconnectPacket())
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._stopped), within_s)
        except TimeoutError:
            return False
        return True
