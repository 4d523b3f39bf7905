"""paho-mqtt's client across its two APIs: 1.6 (Raspberry Pi OS 12's ``python3-paho-mqtt``) and
2.x (PyPI). Shared by the sidecar's paho transport and the Home Assistant connection.

paho 2 asks which callback signatures the caller speaks (``CallbackAPIVersion``); 1.6 has only
its own, and tells a refused connection by a plain number where 2.x gives a ``ReasonCode``.
paho's ``on_connect_fail`` is told nothing about why: ``Client`` remembers it. And paho drops
a socket whose TLS handshake failed without closing it: ``tls_context`` makes sockets that
close themselves then.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import paho.mqtt.client

# Typed as Any: paho 1.6 has no type hints and 2.x's differ from it.
mqtt: Any = paho.mqtt.client

V2 = hasattr(mqtt, "CallbackAPIVersion")


class _ClosedOnFailure(ssl.SSLSocket):
    """A TLS socket that closes itself when its handshake fails. paho leaves such a socket to
    the garbage collector: while a broker restarts, or with a wrong CA, each attempt would
    hold a file descriptor until a collection came."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise  # not a failure: a non-blocking handshake goes on
        except BaseException:
            self.close()
            raise


def tls_context(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """What paho's ``tls_set`` makes (the server's certificate and host name checked against
    ``ca``, or the system's CAs; a client certificate when given), with sockets that close
    themselves when the handshake fails. Raises OSError or ssl.SSLError on unreadable files."""
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    context.sslsocket_class = _ClosedOnFailure
    return context


class Client(paho.mqtt.client.Client):
    """paho's client, remembering why the last connection attempt failed."""

    last_error: str = ""

    def reconnect(self) -> Any:
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_error = f"{type(exc).__name__} ({exc})" if str(exc) else type(exc).__name__
            raise


def new_client(client_id: str, protocol: int, clean_session: bool | None = None) -> Client:
    """A client that speaks paho 2's callback signatures where it has them (the callbacks of
    both modules here take either)."""
    kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
    if clean_session is not None:
        kwargs["clean_session"] = clean_session
    if V2:
        return Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
    return Client(**kwargs)


def connect_refusal(code: Any) -> str | None:
    """Why the broker refused a connection (its CONNACK), or None when it accepted: a
    ``ReasonCode`` (paho 2.x, and 1.6 on MQTT 5) or a number (paho 1.6 on MQTT 3.1.1)."""
    if hasattr(code, "is_failure"):
        return str(code) if code.is_failure else None
    value = int(getattr(code, "value", code) or 0)
    if not value:
        return None
    if value >= 0x80:
        return str(code)
    return str(mqtt.connack_string(value))


def disconnect_code(args: tuple[Any, ...]) -> Any:
    """The reason code among ``on_disconnect``'s arguments after (client, userdata): 1.6 passes
    (rc) on MQTT 3.1.1 and (rc, properties) on MQTT 5, 2.x (flags, reason_code, properties)."""
    if len(args) >= 2:
        return args[-2]
    return args[0] if args else None
