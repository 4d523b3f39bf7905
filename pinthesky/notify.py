"""systemd's notification protocol in a few lines of stdlib: READY, WATCHDOG, STOPPING, STATUS.

A datagram to the socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract
socket). Outside systemd (no ``$NOTIFY_SOCKET``) every call does nothing. ``$WATCHDOG_USEC``
(for this process, per ``$WATCHDOG_PID``) says how often systemd expects ``WATCHDOG=1``; the
callers send it only while they are healthy, so a hung camera or a dead task makes systemd
restart the service.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = dict(os.environ if environ is None else environ)
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and mine and int(usec) > 0 else None
        """Seconds within which systemd wants a WATCHDOG=1 (None: no watchdog)."""

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *fields: str) -> bool:
        """Send ``fields`` (``READY=1``, ``STATUS=...``) in one datagram; False if it failed."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall("\n".join(fields).encode())
        except OSError:
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")
