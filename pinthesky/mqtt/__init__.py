"""The sidecar's MQTT 5 connection behind one small interface, on two clients.

- ``crt``: awsiotsdk on the AWS Common Runtime (awscrt), where PyPI has an awscrt wheel (x86-64
  and 64-bit ARM, so the Pi Zero 2 W/3/4/5 on the 64-bit OS).
- ``paho``: paho-mqtt, pure Python, for every 32-bit Raspberry Pi OS (Pi Zero W, Pi 1, and the
  32-bit OS on the others), where awscrt has no wheel and would have to be compiled. Both the
  1.6 API (Raspberry Pi OS 12's ``python3-paho-mqtt``) and 2.x work.

``pyproject.toml`` installs one or the other by platform; at run time ``open_transport``
takes awscrt when it imports and paho-mqtt otherwise. ``PINTHESKY_MQTT_TRANSPORT=crt|paho``
forces one (the tests run the sidecar on both).

Callbacks (``Handlers``) come from the client's own thread: the sidecar hops onto its loop.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pinthesky.errors import PintheskyError

log = logging.getLogger("pinthesky.iot")

TRANSPORT_ENV = "PINTHESKY_MQTT_TRANSPORT"
TRANSPORTS = ("crt", "paho")


class PublishFailed(Exception):
    """A QoS 1 publish or a subscribe that the broker did not acknowledge (or refused)."""


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect, and the session the sidecar keeps."""

    host: str
    port: int
    client_id: str
    cert: Path
    key: Path
    ca: Path | None
    keep_alive_s: int = 60
    session_expiry_s: int = 3600
    min_reconnect_s: float = 1.0
    max_reconnect_s: float = 120.0
    ack_timeout_s: float = 30.0


@dataclass(frozen=True)
class Handlers:
    """What the transport calls, from its own thread."""

    message: Callable[[str, bytes], None]
    connected: Callable[[], None]
    connection_failed: Callable[[str], None]
    disconnected: Callable[[str], None]


class Transport(Protocol):
    """One MQTT 5 client over mutual TLS with a persistent session; it reconnects by itself
    with capped backoff (``Endpoint.min/max_reconnect_s``) until ``stop``."""

    name: str

    def start(self) -> None:
        """Begin connecting (returns at once)."""

    async def subscribe(self, topics: Sequence[str]) -> list[str]:
        """Subscribe at QoS 1; returns one line per topic the broker refused. Raises
        ``PublishFailed`` when there is no answer."""

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish at QoS 1 and return once acknowledged; ``PublishFailed`` otherwise."""

    async def stop(self, within_s: float) -> bool:
        """Disconnect cleanly; False when the client did not stop within ``within_s``."""


def choose(override: str | None = None) -> str:
    """The transport's name: the override (or ``PINTHESKY_MQTT_TRANSPORT``), else ``crt``
    when awsiotsdk and awscrt import, else ``paho``."""
    wanted = override or os.environ.get(TRANSPORT_ENV) or ""
    if wanted:
        if wanted not in TRANSPORTS:
            raise PintheskyError(
                f"{TRANSPORT_ENV}={wanted!r}: expected one of {', '.join(TRANSPORTS)}"
            )
        return wanted
    try:
        # The builder, not just the package: Debian's python3-awscrt 0.16 imports but lacks
        # what awsiotsdk needs.
        importlib.import_module("awsiot.mqtt5_client_builder")
    except ImportError as exc:
        log.debug("awsiotsdk/awscrt not usable (%s): paho-mqtt", exc)
        return "paho"
    return "crt"


def open_transport(endpoint: Endpoint, handlers: Handlers, name: str | None = None) -> Transport:
    """The chosen transport, built (not yet started). A transport whose client is not
    installed is one ``PintheskyError`` line naming the package."""
    name = choose(name)
    try:
        if name == "crt":
            from pinthesky.mqtt.crt import CrtTransport

            return CrtTransport(endpoint, handlers)
        from pinthesky.mqtt.paho import PahoTransport

        return PahoTransport(endpoint, handlers)
    except ImportError as exc:
        package = "awsiotsdk" if name == "crt" else "paho-mqtt"
        raise PintheskyError(f"MQTT transport {name}: {package} is not installed ({exc})") from None
