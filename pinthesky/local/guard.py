"""Who gets in over the home network: wrong passwords slowed per address, and the host names
the page answers to. The local page (``web.py``) and RTSP (``live/rtsp.py``) share it.

Password guessing (``PasswordGuard``). The n-th wrong password in a row from an address holds
its answer for ``penalty(n)`` seconds: a quarter of a second for the first ``FREE_TRIES`` (a
typo costs nothing one notices), then twice as long for each further one, up to ``MAX_WAIT_S``.
Until that time has passed, a password from the same address is not even checked: the request
is turned away at once (429 on the page, 503 on RTSP), so opening many connections does not
buy more guesses, and nothing is held for the guesser. The owner is never locked out for
longer than ``MAX_WAIT_S``: another address is not slowed at all, a right password clears the
address's count, and the count is forgotten after ``FORGET_S`` without a wrong one. Addresses
count one by one, IPv6 ones too: on a home network every device, the owner's phone as well as
a compromised one, has an address in the same /64, so counting per /64 would let any device
lock the owner out.

Floods (``ConnectionRate``). An address may open connections at a steady rate with a burst
above it; a connection beyond is closed at once, before anything of it is read, so that a
machine flooding the port costs the camera an accept and a reset per connection, not a
request. Other addresses are not concerned, and the flooding one may open connections again a
moment after it stops.

The log gets one line for the first wrong password from an address in a window, and one line
per window summing up the rest, so that a guesser cannot fill the SD card.

Host names (``HostNames``). A page on another site can make a browser on the home network
send requests to the camera under the other site's name (DNS rebinding: the name is made to
resolve to the camera's address). Browsers keep such a page from reading answers only from
another origin, and the name is part of the origin, so the page answers only to names the
camera is known by: its own addresses, ``localhost``, its host name and ``HOSTNAME.local``,
and the names the owner configures (``http.host_names``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

FIRST_WAIT_S = 0.25
FREE_TRIES = 4
"""Wrong passwords in a row answered after ``FIRST_WAIT_S`` (four a second) before the wait
starts doubling."""
MAX_WAIT_S = 10.0
"""The longest a wrong password holds its address back: the most an owner who shares the
address of a guesser (or mistyped many times) ever waits."""
FORGET_S = 600.0
"""An address without a wrong password for this long starts again from nothing."""
WINDOW_S = 60.0
"""Seconds summed up by one log line."""
MAX_ADDRESSES = 1024
"""Addresses remembered at once; beyond, the one quiet for longest is forgotten."""
LISTED = 5
"""Addresses named in a summary line (the rest are counted)."""


def penalty(failures: int) -> float:
    """Seconds the ``failures``-th wrong password in a row holds its address back."""
    doublings = min(max(0, failures - FREE_TRIES), 16)  # 2.0 ** a million overflows
    return min(MAX_WAIT_S, FIRST_WAIT_S * 2.0**doublings)


@dataclass
class _Address:
    failures: int = 0
    """Wrong passwords in a row."""
    last_wrong: float = 0.0
    blocked_until: float = 0.0
    wrong: int = 0
    """Wrong passwords in the current log window."""
    turned_away: int = 0
    """Tries turned away unchecked in the current log window."""


class PasswordGuard:
    """Wrong passwords per address, for one server (``name`` begins its log lines). Used on
    the event loop only."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self._addresses: dict[str, _Address] = {}
        self._summary: asyncio.TimerHandle | None = None
        self._told = 0
        """Addresses given a line of their own in the current window."""
        self.wrong = 0
        self.turned_away = 0

    def wait(self, address: str) -> float:
        """Seconds before ``address`` may try a password again; 0 when it may now. A try
        before then is counted and turned away unchecked."""
        entry = self._addresses.get(client_key(address))
        left = 0.0 if entry is None else entry.blocked_until - self._clock()
        if left <= 0:
            return 0.0
        assert entry is not None
        entry.turned_away += 1
        self.turned_away += 1
        self._schedule_summary()
        return left

    def failed(self, address: str) -> float:
        """A wrong password from ``address``: the seconds to hold its answer back."""
        now = self._clock()
        key = client_key(address)
        entry = self._addresses.get(key)
        if entry is None:
            self._forget_one()
            entry = self._addresses[key] = _Address()
        if now - entry.last_wrong > FORGET_S:
            entry.failures = 0
        entry.failures += 1
        entry.last_wrong = now
        delay = penalty(entry.failures)
        entry.blocked_until = now + delay
        if entry.wrong == 0 and self._told < LISTED:
            self._told += 1
            log.warning(
                "%s: a wrong password from %s (more are summed up every %.0f s)",
                self.name,
                key,
                WINDOW_S,
            )
        entry.wrong += 1
        self.wrong += 1
        self._schedule_summary()
        return delay

    def passed(self, address: str) -> None:
        """The right password from ``address``: its count starts again."""
        entry = self._addresses.get(client_key(address))
        if entry is not None:
            entry.failures = 0
            entry.blocked_until = 0.0

    def close(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        self._summarise()

    def _forget_one(self) -> None:
        if len(self._addresses) < MAX_ADDRESSES:
            return
        quiet = min(self._addresses, key=lambda k: self._addresses[k].last_wrong)
        del self._addresses[quiet]

    def _schedule_summary(self) -> None:
        if self._summary is None:
            with contextlib.suppress(RuntimeError):  # no loop: said with the next window
                loop = asyncio.get_running_loop()
                self._summary = loop.call_later(WINDOW_S, self._summarise)

    def _summarise(self) -> None:
        """One line for the window that ended: how many wrong passwords from where."""
        self._summary = None
        self._told = 0
        busy = sorted(
            ((k, e) for k, e in self._addresses.items() if e.wrong or e.turned_away),
            key=lambda item: -(item[1].wrong + item[1].turned_away),
        )
        if not busy:
            return
        parts = [
            f"{e.wrong} from {k}"
            + (f" (and {e.turned_away} tries turned away unchecked)" if e.turned_away else "")
            for k, e in busy[:LISTED]
        ]
        if len(busy) > LISTED:
            rest = busy[LISTED:]
            parts.append(f"{sum(e.wrong for _, e in rest)} from {len(rest)} more addresses")
        log.warning(
            "%s: wrong passwords in the last %.0f s: %s; each answer waits up to %.0f s",
            self.name,
            WINDOW_S,
            ", ".join(parts),
            MAX_WAIT_S,
        )
        for _, entry in busy:
            entry.wrong = entry.turned_away = 0
        # Entries with nothing left to hold are dropped once their count is forgotten.
        now = self._clock()
        for key in [k for k, e in self._addresses.items() if now - e.last_wrong > FORGET_S]:
            del self._addresses[key]


def client_key(address: str) -> str:
    """What a client is counted under: its address (an IPv4-mapped IPv6 one as IPv4)."""
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class ConnectionRate:
    """New connections per address: a bucket of ``burst`` that refills at ``per_second``.
    Used on the event loop only."""

    def __init__(
        self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        """Address -> (connections it may still open, when that was counted)."""
        self.refused = 0

    def allow(self, address: str) -> bool:
        """Whether ``address`` may open one more connection now (and count it)."""
        now = self._clock()
        key = client_key(address)
        left, then = self._buckets.get(key, (float(self.burst), now))
        left = min(float(self.burst), left + (now - then) * self.per_second)
        if left < 1:
            self._buckets[key] = (left, now)
            self.refused += 1
            return False
        if len(self._buckets) >= MAX_ADDRESSES and key not in self._buckets:
            self._forget_full(now)
        self._buckets[key] = (left - 1, now)
        return True

    def _forget_full(self, now: float) -> None:
        """Drop the addresses whose bucket has filled up again (as if never seen), or else
        the one counted first."""
        for key, (left, then) in list(self._buckets.items()):
            if left + (now - then) * self.per_second >= self.burst:
                del self._buckets[key]
        if len(self._buckets) >= MAX_ADDRESSES:
            del self._buckets[next(iter(self._buckets))]


class HostNames:
    """The names (``Host`` header values) the page answers to."""

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        self.extra = frozenset(extra)

    def allowed(self, host: str) -> bool:
        """Whether a ``Host`` header value (``name[:port]``, ``[v6]:port``) names this camera."""
        name = _host_of(host)
        if name is None:
            return False
        if name in self.extra or name == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            own = socket.gethostname().lower()
            short = own.split(".")[0]
            return name in (own, short, f"{own}.local", f"{short}.local")
        return str(ip) in self.extra or _local_address(ip)


def _host_of(host: str) -> str | None:
    """The name or address of a ``Host`` value, lower-cased, without port or final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        inside, bracket, port = host[1:].partition("]")
        if not bracket or (port and not _port(port[1:] if port[0] == ":" else "x")):
            return None
        return inside
    name, colon, port = host.partition(":")
    if colon and not _port(port):
        return None
    name = name.removesuffix(".")
    return name or None


def _port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5


def _local_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is an address of this machine: the kernel lets us bind only to those
    (the addresses change with DHCP and IPv6 privacy extensions, so none are kept)."""
    if ip.is_unspecified or ip.is_multicast:
        return False
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True
