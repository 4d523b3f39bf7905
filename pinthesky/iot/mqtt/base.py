"""The MQTT transport interface the sidecar and both transports share: where to connect
(``Endpoint``), the callbacks (``Handlers``), the client (``Transport``) and its one error.

Its own module so that ``crt`` and ``paho`` depend on it, not on the package that picks
between them (which imports them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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
