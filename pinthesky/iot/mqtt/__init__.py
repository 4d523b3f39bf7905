"""The sidecar's MQTT 5 connection behind one small interface, on two clients.

- ``crt``: awsiotsdk on the AWS Common Runtime (awscrt), where PyPI has an awscrt wheel (x86-64
  and 64-bit ARM, so the Pi Zero 2 W/3/4/5 on the 64-bit OS).
- ``paho``: paho-mqtt, pure Python, for every 32-bit Raspberry Pi OS (Pi Zero W, Pi 1, and the
  32-bit OS on the others), where awscrt has no wheel and would have to be compiled. Both the
  1.6 API (Raspberry Pi OS 12's ``python3-paho-mqtt``) and 2.x work.

``pyproject.toml`` installs one or the other by platform; at run time ``open_transport``
takes awscrt when it imports and paho-mqtt otherwise. ``PINTHESKY_MQTT_TRANSPORT=crt|paho``
forces one (the tests run the sidecar on both).

The interface is in ``base``. Callbacks (``Handlers``) come from the client's own thread: the
sidecar hops onto its loop.
"""

from __future__ import annotations

import importlib
import logging
import os

from pinthesky.errors import PintheskyError
from pinthesky.iot.mqtt.base import Endpoint, Handlers, PublishFailed, Transport

__all__ = ["TRANSPORTS", "TRANSPORT_ENV", "Endpoint", "Handlers", "PublishFailed", "Transport",
           "choose", "open_transport"]  # fmt: skip

log = logging.getLogger("pinthesky.iot")

TRANSPORT_ENV = "PINTHESKY_MQTT_TRANSPORT"
TRANSPORTS = ("crt", "paho")


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
            from pinthesky.iot.mqtt.crt import CrtTransport

            return CrtTransport(endpoint, handlers)
        from pinthesky.iot.mqtt.paho import PahoTransport

        return PahoTransport(endpoint, handlers)
    except ImportError as exc:
        package = "awsiotsdk" if name == "crt" else "paho-mqtt"
        raise PintheskyError(f"MQTT transport {name}: {package} is not installed ({exc})") from None
