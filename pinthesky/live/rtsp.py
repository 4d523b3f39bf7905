"""RTSP out: the camera's own H.264, from the ring buffer, to RTSP clients on the home network.

RTSP 1.0 (RFC 2326) on asyncio streams, on the daemon's loop, with nothing encoded again:
every client gets the access units the ring already holds, starting at its newest keyframe,
cut into RTP packets (``rtp.py``). Supported: ``OPTIONS``, ``DESCRIBE`` (SDP with
``sprop-parameter-sets`` and ``profile-level-id``, ``packetization-mode=1``), ``SETUP`` for RTP
over the RTSP connection (interleaved) or over UDP (unicast, to the address the request came
from: a ``destination`` elsewhere is refused, so the camera cannot be made to flood a third
party), ``PLAY``, ``PAUSE``, ``TEARDOWN``, ``GET_PARAMETER`` and ``SET_PARAMETER`` as
keep-alives. With ``http.password`` set every method but ``OPTIONS`` needs it, through
Digest (preferred by FFmpeg and live555, the password never crosses the network) or Basic
authentication, any user name; wrong passwords are slowed per address
(``local/guard.PasswordGuard``, shared with the page).

Hostile clients cannot shut the owner's player out. A request head must arrive whole within
``HEAD_TIMEOUT_S`` of its first byte, and bytes that cannot begin one (garbage, a TLS hello,
interleaved data before a session) are answered 400 at once. A connection that has not given
the password (or, without one, holds no session) may stay idle ``UNTRUSTED_IDLE_S`` between
requests. An address opens at most ``NEW_PER_SECOND`` connections a second (beyond a burst),
and holds at most ``MAX_PER_ADDRESS`` connections; when its share or every
slot is taken, the oldest such connection is closed to make room (one that never sent a whole
request before one that did): only playing (or authenticated) clients keep their slots.

Nothing here ever makes the camera, the recorder or the analysis wait: the source thread only
wakes the loop (``PacketRing.on_packet``) while someone plays, and one callback on the loop
reads the new packets and writes them to every client without awaiting any. A client whose
unsent data grows beyond ``BACKLOG_LIMIT`` loses whole frames until the next keyframe (the
picture freezes, then resumes cleanly); one that takes nothing for ``STALL_TIMEOUT_S`` is
disconnected. A session ends with its RTSP connection, with ``TEARDOWN``, or after
``timeout`` seconds in which the client sent nothing (no request, no RTCP): FFmpeg and live555
send a keep-alive every half of the ``timeout`` the ``Session`` header announces.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import hashlib
import hmac
import ipaddress
import logging
import math
import re
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit

from pinthesky.live.rtp import RtpStream, nal_units, parameter_sets, sdp
from pinthesky.local.guard import ConnectionRate, PasswordGuard, client_key
from pinthesky.logs import Throttle
from pinthesky.media import Packet
from pinthesky.record.ring import PacketRing
from pinthesky.settings import RtspSettings

log = logging.getLogger(__name__)

HEAD_LIMIT = 8 * 1024
"""Bytes of request line and headers accepted."""
HEAD_TIMEOUT_S = 5.0
"""A request head must arrive whole within this of its first byte."""
MAX_PER_ADDRESS = 8
"""Connections from one address at once: one machine flooding the port uses up its own share
(an NVR needs one or two), never the owner's."""
NEW_PER_SECOND, NEW_BURST = 10.0, 40
"""New connections an address may open: 10 a second, 40 at once (a player opens one or two);
beyond, a connection is closed before it is read."""
UNTRUSTED_IDLE_S = 10.0
"""How long a connection that has not given the password (without one: that holds no
session) may stay silent between requests."""
NONCE_LIFETIME_S = 120.0
"""A Digest nonce is good for this long; then the client is told it is stale and takes a new
one (FFmpeg and live555 do so without asking the user)."""
MAX_HEADERS = 64
BODY_LIMIT = 4096
SESSION_TIMEOUT_S = 60.0
STALL_TIMEOUT_S = 20.0
"""A client that takes no data for this long (its backlog stays full) is disconnected."""
BACKLOG_LIMIT = 1024 * 1024
"""Bytes waiting for a client beyond which its next frames are dropped, up to a keyframe."""
WRITE_TIMEOUT_S = 20.0
SR_INTERVAL_S = 5.0
REALM = "pinthesky"
STREAM_PATHS = ("", "/live")
"""The stream's URL paths: ``rtsp://HOST:PORT/live`` (or just ``rtsp://HOST:PORT/``)."""
TRACK = "trackID=0"
METHODS = (
    "OPTIONS",
    "DESCRIBE",
    "SETUP",
    "PLAY",
    "PAUSE",
    "TEARDOWN",
    "GET_PARAMETER",
    "SET_PARAMETER",
)
_NOT_ALLOWED = ("ANNOUNCE", "RECORD", "REDIRECT")
_TOKEN = re.compile(r"[A-Za-z_]{1,32}")
_TOKEN_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_NONCE = re.compile(r"[0-9a-f]{56}")
_NUMBER = re.compile(r"[0-9]{1,9}")  # ASCII digits only: str.isdigit() takes "²" too
_AUTH_PARAM = re.compile(r'([A-Za-z]+)\s*=\s*(?:"([^"]*)"|([^\s,]*))')
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    451: "Parameter Not Understood",
    453: "Not Enough Bandwidth",
    454: "Session Not Found",
    455: "Method Not Valid in This State",
    459: "Aggregate Operation Not Allowed",
    461: "Unsupported Transport",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    505: "RTSP Version Not Supported",
}


class BadRequest(Exception):
    """A request this server cannot read: answered 400 (or ``status``), then the connection
    closes because the byte stream can no longer be trusted."""

    def __init__(self, why: str, status: int = 400) -> None:
        super().__init__(why)
        self.status = status


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    path: str
    cseq: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    after: Callable[[], None] | None = None
    """Runs once the response is queued, before anything else is written (PLAY starts)."""


def parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    """Method, URL, version and headers (names lower-cased) of a request head."""
    text = head.decode("iso-8859-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise BadRequest("not an RTSP request line")
    method, url, version = parts
    if not version.startswith("RTSP/"):
        raise BadRequest("not an RTSP request")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise BadRequest("a malformed header line")
        headers[name.lower()] = value.strip()
        if len(headers) > MAX_HEADERS:
            raise BadRequest("too many headers")
    return method, url, version, headers


@dataclass
class Transport:
    """What a client chose in ``SETUP``: interleaved channels, or its UDP ports."""

    tcp: bool
    channels: tuple[int, int] = (0, 1)
    client_ports: tuple[int, int] = (0, 0)


def parse_transport(value: str) -> Transport | None:
    """The first alternative of a ``Transport`` header this server can serve, else None."""
    for alternative in value.split(","):
        parts = [p.strip() for p in alternative.split(";") if p.strip()]
        if not parts:
            continue
        spec = parts[0].upper()
        params: dict[str, str] = {}
        for p in parts[1:]:
            name, _, v = p.partition("=")
            params[name.strip().lower()] = v.strip()
        if "multicast" in params or "destination" in params:
            continue
        if params.get("mode", "play").strip('"').lower() != "play":
            continue
        try:
            if spec == "RTP/AVP/TCP":
                channels = (
                    _pair(params["interleaved"], 0, 255) if "interleaved" in params else (0, 1)
                )
                return Transport(True, channels=channels)
            if spec in ("RTP/AVP", "RTP/AVP/UDP") and "client_port" in params:
                return Transport(False, client_ports=_pair(params["client_port"], 1, 65535))
        except ValueError:
            continue
    return None


def _pair(text: str, low: int, high: int) -> tuple[int, int]:
    """``a-b`` (or ``a``, then ``a+1``) with both in [low, high]."""
    first, sep, second = text.partition("-")
    a = int(first)
    b = int(second) if sep else a + 1
    if not (low <= a <= high and low <= b <= high):
        raise ValueError(text)
    return a, b


class Verdict(enum.Enum):
    RIGHT = "right"
    WRONG = "wrong"
    STALE = "stale"
    """The password was right, but for a nonce that expired or an answer already taken: the
    client is asked to answer a new nonce, and it is no wrong password."""


class Digest:
    """Digest (RFC 2617, MD5, ``qop=auth`` offered) and Basic authentication.

    A nonce carries when it was made and the address it was given to, under an HMAC with a
    key made at start, so the server keeps nothing per nonce. It works from that address only
    and for ``NONCE_LIFETIME_S``; an answer must be for the URL of the request it comes with;
    and each answer is taken once (clients using ``qop=auth`` count their requests, so every
    answer differs; a captured one sent again is refused). Basic sends the password itself and
    can always be replayed: it is for clients that know nothing else.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._key = secrets.token_bytes(32)
        self._clock = clock
        self._taken: dict[str, float] = {}
        """Answers already accepted -> when their nonce expires (oldest first)."""

    def challenge(self, peer: str, stale: bool = False) -> list[str]:
        issued = f"{int(self._clock()) & 0xFFFFFFFF:08x}"
        salt = secrets.token_hex(8)
        nonce = f"{issued}{salt}{self._mac(issued + salt, peer)}"
        return [
            f'Digest realm="{REALM}", nonce="{nonce}", algorithm=MD5, qop="auth"'
            + (", stale=TRUE" if stale else ""),
            f'Basic realm="{REALM}"',
        ]

    def _mac(self, text: str, peer: str) -> str:
        return hmac.new(self._key, f"{text}|{peer}".encode(), hashlib.sha256).hexdigest()[:32]

    def _nonce(self, nonce: str, peer: str) -> Verdict:
        """RIGHT for a nonce we gave ``peer`` that is still good, STALE for one that expired,
        WRONG for any other."""
        # Bytes, not str: compare_digest refuses non-ASCII text, and headers are any Latin-1.
        if not _NONCE.fullmatch(nonce) or not hmac.compare_digest(
            nonce[24:].encode(), self._mac(nonce[:24], peer).encode()
        ):
            return Verdict.WRONG
        age = (int(self._clock()) - int(nonce[:8], 16)) & 0xFFFFFFFF
        return Verdict.RIGHT if age <= NONCE_LIFETIME_S else Verdict.STALE

    def check(self, header: str, method: str, url: str, password: str, peer: str) -> Verdict:
        scheme, _, rest = header.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(rest.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return Verdict.WRONG
            _, sep, given = decoded.partition(":")
            right = bool(sep) and hmac.compare_digest(given.encode(), password.encode())
            return Verdict.RIGHT if right else Verdict.WRONG
        if scheme.lower() != "digest":
            return Verdict.WRONG
        p: dict[str, str] = {}
        for m in _AUTH_PARAM.finditer(rest):
            p[m.group(1).lower()] = m.group(2) or m.group(3) or ""
        if not {"username", "nonce", "uri", "response"} <= p.keys():
            return Verdict.WRONG
        user, nonce, uri, given = p["username"], p["nonce"], p["uri"], p["response"]
        if p.get("realm") != REALM or p.get("algorithm", "MD5").upper() != "MD5":
            return Verdict.WRONG
        # The answer is for this request's URL (RFC 2617 3.2.2.5): one captured for another
        # URL is no answer here.
        if uri != url and uri != urlsplit(url).path:
            return Verdict.WRONG
        fresh = self._nonce(nonce, peer)
        if fresh is Verdict.WRONG:
            return Verdict.WRONG
        ha1 = _md5(f"{user}:{REALM}:{password}")
        ha2 = _md5(f"{method}:{uri}")
        qop = p.get("qop")
        if qop:
            if qop != "auth" or "nc" not in p or "cnonce" not in p:
                return Verdict.WRONG
            want = _md5(f"{ha1}:{nonce}:{p['nc']}:{p['cnonce']}:{qop}:{ha2}")
        else:
            want = _md5(f"{ha1}:{nonce}:{ha2}")
        # Compared in constant time: the answer must not tell how much of a guess was right.
        if not hmac.compare_digest(given.lower().encode(), want.encode()):
            return Verdict.WRONG
        if fresh is Verdict.STALE or not self._take(want):
            return Verdict.STALE
        return Verdict.RIGHT

    def _take(self, answer: str) -> bool:
        """Record a right answer; False when it was taken before (a replay)."""
        now = self._clock()
        while self._taken:  # oldest first: drop what expired with its nonce
            oldest = next(iter(self._taken))
            if self._taken[oldest] > now:
                break
            del self._taken[oldest]
        if answer in self._taken:
            return False
        self._taken[answer] = now + NONCE_LIFETIME_S
        return True


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()


class _Rtcp(asyncio.DatagramProtocol):
    """The UDP endpoints of a session: RTCP from the client keeps the session alive."""

    def __init__(self, seen: Callable[[], None]) -> None:
        self._seen = seen

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._seen()

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: its session times out.
        log.debug("rtsp: UDP error from a client: %s", exc)


class Session:
    """One client's stream: its RTP state, where its packets go, and where it is in the ring."""

    def __init__(self, sid: str, conn: Connection, transport: Transport) -> None:
        self.id = sid
        self.conn = conn
        self.transport = transport
        self.rtp = RtpStream(secrets.randbits(32), secrets.randbits(16), secrets.randbits(32))
        self.playing = False
        self.ring: PacketRing | None = None
        self.next_seq: int | None = None
        self.need_key = True
        self.udp: tuple[asyncio.DatagramTransport, asyncio.DatagramTransport] | None = None
        self.stalled_since: float | None = None
        self.last_sr = 0.0
        self.frames_sent = 0
        self.frames_dropped = 0

    def backlog(self) -> int:
        if self.udp is not None:
            # asyncio's UDP transports buffer when the socket would block, like TCP ones.
            udp: Any = self.udp[0]
            return int(udp.get_write_buffer_size())
        return self.conn.writer.transport.get_write_buffer_size()

    def send_frame(self, units: list[bytes], sensor_us: int) -> None:
        if self.udp is not None:
            dest = (self.conn.peer, self.transport.client_ports[0])
            for pkt in self.rtp.packetize(units, sensor_us):
                self.udp[0].sendto(pkt, dest)
            return
        self.conn.writer.write(self.rtp.packetize(units, sensor_us, self.transport.channels[0])[0])

    def send_rtcp(self, pkt: bytes) -> None:
        if self.udp is not None:
            self.udp[1].sendto(pkt, (self.conn.peer, self.transport.client_ports[1]))
        else:
            ch = self.transport.channels[1]
            self.conn.writer.write(struct.pack(">cBH", b"$", ch, len(pkt)) + pkt)

    def close(self) -> None:
        self.playing = False
        if self.udp is not None:
            for t in self.udp:
                t.close()
            self.udp = None


class Connection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("", 0)
        local = writer.get_extra_info("sockname") or ("0.0.0.0", 0)
        self.peer: str = peer[0]
        self.address = client_key(self.peer)
        """Who it counts as (``guard.client_key``)."""
        self.local: str = local[0]
        self.sessions: dict[str, Session] = {}
        self.last_seen = self.opened = time.monotonic()
        self.requests = 0
        self.closing = False
        """Closed to make room, or refused: it holds no slot while its task ends."""
        self.authenticated = False
        """It gave the right password (never, without one: then it is trusted while it
        holds a session)."""

    @property
    def trusted(self) -> bool:
        """Whether it keeps its slot when every slot is taken."""
        return self.authenticated or bool(self.sessions)


class RtspServer:
    """Serves the ring's H.264 on ``rtsp.bind``:``rtsp.port`` to at most ``rtsp.max_clients``
    sessions at once."""

    def __init__(
        self,
        settings: RtspSettings,
        password: Callable[[], str | None],
        ring: Callable[[], PacketRing | None],
        framerate: Callable[[], float],
        session_timeout_s: float = SESSION_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self._password = password
        self._ring = ring
        self._framerate = framerate
        self.session_timeout_s = session_timeout_s
        self._auth = Digest()
        self.guard = PasswordGuard("rtsp")
        self.rate = ConnectionRate(NEW_PER_SECOND, NEW_BURST)
        self._flood_log = Throttle(log, burst=1, window=60.0)
        """One line a minute about connections closed unread, and their count."""
        self._throttle = Throttle(log, burst=10, window=60.0)
        """Lines about clients: at most a few a minute, whatever they do."""
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], Connection] = {}
        self.sessions: dict[str, Session] = {}
        self._scheduled = False
        self._split: tuple[Packet | None, list[bytes]] = (None, [])
        """The newest packet sent and its NAL units: split once for every client."""
        self._tick: asyncio.TimerHandle | None = None
        self._hooked: PacketRing | None = None
        self.port: int | None = None
        self.requests = 0
        self.unauthorized = 0
        self.refused = 0
        self.evicted = 0
        self.frames_sent = 0
        self.frames_dropped = 0

    async def start(self) -> None:
        """Listen; raises OSError when the address cannot be used."""
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(
            self._serve, s.bind, s.port, limit=HEAD_LIMIT, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("rtsp: the camera's stream is at rtsp://%s:%d/live", s.bind, self.port)
        if self._password() is None and not ipaddress.ip_address(s.bind).is_loopback:
            log.warning(
                "rtsp: no password (http.password): anyone who can reach port %d watches "
                "the camera",
                self.port,
            )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for sid in list(self.sessions):
            self._end_session(sid)
        # Closing the sockets ends each connection's task through its reader (cancelling the
        # tasks instead makes asyncio's stream callback log the cancellation as an error).
        for conn in self._connections.values():
            conn.writer.transport.abort()
        if self._connections:
            await asyncio.wait(set(self._connections), timeout=2)
        for task in list(self._connections):
            task.cancel()
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        self._unhook()
        self.guard.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
            log.info(
                "rtsp: stopped (%d requests, %d frames sent, %d dropped for slow clients)",
                self.requests,
                self.frames_sent,
                self.frames_dropped,
            )

    # -- one connection ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(writer)
        if not self.rate.allow(conn.address):
            # A flood from one machine: closed before anything is read, at almost no cost.
            writer.transport.abort()
            self._flood_log(logging.WARNING, "rtsp: %s opens connections too fast", conn.address)
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = conn
        try:
            others = [c for c in self._connections.values() if not c.closing and c is not conn]
            mine = [c for c in others if c.address == conn.address]
            cap = self.settings.max_clients * 2 + 8
            if (len(mine) >= MAX_PER_ADDRESS and not self._evict(mine)) or (
                len(others) >= cap and not self._evict(others)
            ):
                conn.closing = True
                await self._write(conn, "0", Response(503, body=b"too many connections\n"))
                return
            await self._exchange(conn, reader)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("rtsp: a client went away or stalled (%s)", exc)
        except asyncio.LimitOverrunError:
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._write(conn, "0", Response(400, body=b"request head too large\n"))
        except BadRequest as exc:
            log.debug("rtsp: refused a request from %s: %s", conn.peer, exc)
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._write(conn, "0", Response(exc.status, body=f"{exc}\n".encode()))
        except Exception:
            self._throttle(logging.ERROR, "rtsp: a request failed", exc_info=True)
        finally:
            del self._connections[task]
            for sid in list(conn.sessions):
                self._end_session(sid)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2)

    def _evict(self, among: Iterable[Connection]) -> bool:
        """Close a connection ``among`` these that is not trusted (no password given, no
        session) to make room: one that never sent a whole request first (a player sends its
        first at once), the oldest first; False when every one is trusted."""
        idle = [c for c in among if not c.trusted and not c.closing]
        if not idle:
            return False
        oldest = min(idle, key=lambda c: (c.requests > 0, c.opened))
        oldest.closing = True
        oldest.writer.transport.abort()  # its read ends with a reset, like a client gone
        self.evicted += 1
        log.debug("rtsp: every connection slot taken; closed one from %s", oldest.peer)
        return True

    async def _exchange(self, conn: Connection, reader: asyncio.StreamReader) -> None:
        while True:
            idle = self.session_timeout_s if conn.trusted else UNTRUSTED_IDLE_S
            try:
                first = await asyncio.wait_for(reader.readexactly(1), idle)
            except TimeoutError:
                if conn.sessions and time.monotonic() - conn.last_seen < idle:
                    continue  # RTCP over UDP kept it alive
                self._throttle(
                    logging.INFO, "rtsp: a client at %s sent nothing for %.0f s", conn.peer, idle
                )
                return
            conn.last_seen = time.monotonic()
            if first == b"$":
                # Interleaved data from the client (RTCP receiver reports): proof of life.
                if not conn.sessions:
                    raise BadRequest("interleaved data before SETUP")
                _, size = struct.unpack(">BH", await self._within(reader.readexactly(3)))
                await self._within(reader.readexactly(size))
                continue
            method, url, version, headers = parse_head(await self._read_head(first, reader))
            cseq = headers.get("cseq", "")
            if not _NUMBER.fullmatch(cseq):
                raise BadRequest("missing or malformed CSeq")
            if version != "RTSP/1.0":
                raise BadRequest(f"{version[:16]} is not RTSP/1.0", 505)
            length = headers.get("content-length", "0")
            if not _NUMBER.fullmatch(length) or int(length) > BODY_LIMIT:
                raise BadRequest("body missing length or too large", 413)
            body = await self._within(reader.readexactly(int(length)))
            self.requests += 1
            conn.requests += 1
            request = Request(method, url, _stream_path(url), cseq, headers, body)
            response = await self._respond(conn, request)
            await self._write(conn, cseq, response)

    async def _read_head(self, first: bytes, reader: asyncio.StreamReader) -> bytes:
        """The request head that ``first`` begins, whole within ``HEAD_TIMEOUT_S``; bytes
        that cannot begin a request line (a method token, then a space) are refused at once,
        not after a time-out."""
        deadline = asyncio.get_running_loop().time() + HEAD_TIMEOUT_S
        head = first
        while head[-1:] != b" ":
            if head[-1] not in _TOKEN_BYTES or len(head) > 32:
                raise BadRequest("not an RTSP request line")
            head += await self._within(reader.readexactly(1), deadline)
        if len(head) == 1:
            raise BadRequest("not an RTSP request line")
        return head + await self._within(reader.readuntil(b"\r\n\r\n"), deadline)

    async def _within(self, read: Awaitable[bytes], deadline: float | None = None) -> bytes:
        """``read``, if it completes by ``deadline`` (default: ``HEAD_TIMEOUT_S`` from now);
        else the client is told (408) and the connection ends."""
        loop = asyncio.get_running_loop()
        left = HEAD_TIMEOUT_S if deadline is None else deadline - loop.time()
        try:
            return await asyncio.wait_for(read, max(0.0, left))
        except TimeoutError:
            why = f"the request did not arrive within {HEAD_TIMEOUT_S:.0f} s"
            raise BadRequest(why, 408) from None

    async def _respond(self, conn: Connection, req: Request) -> Response:
        if req.method in _NOT_ALLOWED:
            return Response(405, {"Allow": ", ".join(METHODS)})
        if req.method not in METHODS:
            return Response(501, {"Public": ", ".join(METHODS)})
        if req.method == "OPTIONS":
            return Response(200, {"Public": ", ".join(METHODS)})
        refusal = await self._authenticate(conn, req)
        if refusal is not None:
            return refusal
        if req.method == "SETUP":
            return await self._setup(conn, req)
        handler = {
            "DESCRIBE": self._describe,
            "PLAY": self._play,
            "PAUSE": self._pause,
            "TEARDOWN": self._teardown,
            "GET_PARAMETER": self._parameter,
            "SET_PARAMETER": self._parameter,
        }[req.method]
        return handler(conn, req)

    async def _authenticate(self, conn: Connection, req: Request) -> Response | None:
        """None when the request may go on; else the answer: 401 (a wrong password's held
        back by the guard), or 503 while the address is slowed down."""
        password = self._password()
        if password is None:
            return None
        header = req.headers.get("authorization")
        stale = False
        if header is not None:
            wait = self.guard.wait(conn.peer)
            if wait > 0:
                # Not even checked: a right guess now would tell a guesser it was right.
                text = f"too many wrong passwords: try again in {wait:.0f} s\n"
                return Response(503, {"Retry-After": str(math.ceil(wait))}, text.encode())
            verdict = self._auth.check(header, req.method, req.url, password, conn.peer)
            if verdict is Verdict.RIGHT:
                self.guard.passed(conn.peer)
                conn.authenticated = True
                return None
            stale = verdict is Verdict.STALE
            if not stale:
                await asyncio.sleep(self.guard.failed(conn.peer))
        self.unauthorized += 1
        challenge = self._auth.challenge(conn.peer, stale)
        return Response(401, {"WWW-Authenticate": "\n".join(challenge)})

    # -- methods -------------------------------------------------------------------------------

    def _describe(self, conn: Connection, req: Request) -> Response:
        if req.path not in STREAM_PATHS:
            return Response(404)
        ring = self._ring()
        key = _newest_keyframe(ring)
        sets = parameter_sets(key.data) if key is not None else None
        if sets is None:
            return Response(503, {"Retry-After": "2"}, b"the camera has not started yet\n")
        text = sdp(sets[0], sets[1], conn.local, secrets.randbits(31), self._framerate())
        base = req.url.rstrip("/") + "/"
        return Response(
            200, {"Content-Type": "application/sdp", "Content-Base": base}, text.encode()
        )

    async def _setup(self, conn: Connection, req: Request) -> Response:
        path = req.path
        if path.endswith("/" + TRACK) or path == TRACK:
            path = path[: -len(TRACK)].rstrip("/")
        if path not in STREAM_PATHS:
            return Response(404)
        if "session" in req.headers:
            return Response(459 if self._session(conn, req) is not None else 454)
        transport = parse_transport(req.headers.get("transport", ""))
        if transport is None:
            return Response(461)
        if len(self.sessions) >= self.settings.max_clients:
            self.refused += 1
            self._throttle(
                logging.INFO,
                "rtsp: refused a client at %s: %d already watch",
                conn.peer,
                self.settings.max_clients,
            )
            return Response(453, body=b"too many clients\n")
        session = Session(secrets.token_hex(8), conn, transport)
        if transport.tcp:
            a, b = transport.channels
            spec = f"RTP/AVP/TCP;unicast;interleaved={a}-{b}"
        else:
            try:
                session.udp = await self._open_udp(conn)
            except OSError as exc:
                self._throttle(logging.WARNING, "rtsp: no UDP ports for a client: %s", exc)
                return Response(461)
            rtp_port = session.udp[0].get_extra_info("sockname")[1]
            a, b = transport.client_ports
            spec = f"RTP/AVP;unicast;client_port={a}-{b};server_port={rtp_port}-{rtp_port + 1}"
        return self._add_session(conn, session, spec)

    async def _open_udp(
        self, conn: Connection
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramTransport]:
        """An even RTP port and the RTCP port after it, on the address the client reached."""

        def seen() -> None:
            conn.last_seen = time.monotonic()

        for _ in range(20):
            rtp, _p = await self._loop.create_datagram_endpoint(
                lambda: _Rtcp(seen), local_addr=(conn.local, 0)
            )
            port = rtp.get_extra_info("sockname")[1]
            if port % 2 == 0 and port < 65535:
                try:
                    rtcp, _p = await self._loop.create_datagram_endpoint(
                        lambda: _Rtcp(seen), local_addr=(conn.local, port + 1)
                    )
                except OSError:
                    rtp.close()
                    continue
                return rtp, rtcp
            rtp.close()
        raise OSError("no free pair of UDP ports")

    def _add_session(self, conn: Connection, session: Session, spec: str) -> Response:
        self.sessions[session.id] = session
        conn.sessions[session.id] = session
        self._start_ticking()
        self._throttle(
            logging.INFO,
            "rtsp: %s set up a stream over %s (%d watching)",
            conn.peer,
            "TCP" if session.transport.tcp else "UDP",
            len(self.sessions),
        )
        return Response(
            200,
            {
                "Transport": f"{spec};ssrc={session.rtp.ssrc:08X}",
                "Session": f"{session.id};timeout={int(self.session_timeout_s)}",
            },
        )

    def _play(self, conn: Connection, req: Request) -> Response:
        session = self._session(conn, req)
        if session is None:
            return Response(454)
        ring = self._ring()
        info = ["url=" + req.url.rstrip("/") + "/" + TRACK, f"seq={session.rtp.seq}"]
        if ring is not None and not session.playing:
            newest = ring.newest_ts()
            seq = ring.keyframe_before(newest) if newest is not None else None
            ts = ring.packet_ts(seq) if seq is not None else None
            session.ring, session.next_seq, session.need_key = ring, seq, True
            if ts is not None:
                info.append(f"rtptime={session.rtp.rtp_time(ts)}")

        def start() -> None:
            session.playing = True
            self._deliver()

        headers = {"Session": session.id, "Range": "npt=now-", "RTP-Info": ";".join(info)}
        return Response(200, headers, after=start)

    def _pause(self, conn: Connection, req: Request) -> Response:
        session = self._session(conn, req)
        if session is None:
            return Response(454)
        session.playing = False
        return Response(200, {"Session": session.id})

    def _teardown(self, conn: Connection, req: Request) -> Response:
        session = self._session(conn, req)
        if session is None:
            return Response(454)
        self._end_session(session.id)
        return Response(200)

    def _parameter(self, conn: Connection, req: Request) -> Response:
        headers = {}
        if "session" in req.headers:
            session = self._session(conn, req)
            if session is None:
                return Response(454)
            headers["Session"] = session.id
        if req.method == "SET_PARAMETER" and req.body.strip():
            return Response(451, headers)
        return Response(200, headers)

    def _session(self, conn: Connection, req: Request) -> Session | None:
        sid = req.headers.get("session", "").split(";")[0].strip()
        return conn.sessions.get(sid)

    def _end_session(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        session.conn.sessions.pop(sid, None)
        session.close()
        self._throttle(
            logging.INFO,
            "rtsp: a stream to %s ended (%d frames sent, %d dropped; %d watching)",
            session.conn.peer,
            session.frames_sent,
            session.frames_dropped,
            len(self.sessions),
        )

    # -- writing -------------------------------------------------------------------------------

    async def _write(self, conn: Connection, cseq: str, response: Response) -> None:
        status = response.status
        lines = [f"RTSP/1.0 {status} {_REASONS[status]}", f"CSeq: {cseq}"]
        lines.append("Server: pinthesky")
        lines.append("Date: " + formatdate(usegmt=True))
        for name, value in response.headers.items():
            lines += [f"{name}: {v}" for v in value.split("\n")]
        if response.body or status >= 400:
            lines.append(f"Content-Length: {len(response.body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        conn.writer.write(head + response.body)
        if response.after is not None:
            response.after()
        await asyncio.wait_for(conn.writer.drain(), WRITE_TIMEOUT_S)

    # -- the pump: ring to clients -------------------------------------------------------------

    def _start_ticking(self) -> None:
        if self._tick is None:
            self._tick = self._loop.call_later(1.0, self._housekeeping)

    def _packet_arrived(self) -> None:
        # Source thread: only wake the loop, once for however many packets came meanwhile
        # (the loop clears the flag before it reads the ring, so no packet is left unread).
        if self._scheduled:
            return
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # loop closed: the daemon is exiting
            self._loop.call_soon_threadsafe(self._on_packets)

    def _on_packets(self) -> None:
        self._scheduled = False
        self._deliver()

    def _hook(self, ring: PacketRing | None) -> None:
        if ring is self._hooked:
            return
        self._unhook()
        if ring is not None:
            ring.on_packet = self._packet_arrived
        self._hooked = ring

    def _unhook(self) -> None:
        if self._hooked is not None:
            self._hooked.on_packet = None
            self._hooked = None

    def _deliver(self) -> None:
        """New packets from the ring to every playing client (a plain callback on the loop:
        no task, nothing awaited)."""
        ring = self._ring()
        self._hook(ring)
        if ring is None:
            return
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if session.playing:
                self._feed(session, ring, now)

    def _housekeeping(self) -> None:
        """Once a second while any session exists: time-outs, sender reports, and the hook on
        a ring that a camera restart replaced."""
        self._tick = None
        now = time.monotonic()
        for session in list(self.sessions.values()):
            if now - session.conn.last_seen > self.session_timeout_s:
                self._throttle(logging.INFO, "rtsp: the stream to %s timed out", session.conn.peer)
                self._end_session(session.id)
                session.conn.writer.close()
        if not self.sessions:
            self._unhook()
            return
        self._deliver()
        self._start_ticking()

    def _feed(self, session: Session, ring: PacketRing, now: float) -> None:
        if session.ring is not ring:
            # The camera was reopened (new settings): start again at the new ring's keyframe.
            newest = ring.newest_ts()
            session.ring = ring
            session.next_seq = ring.keyframe_before(newest) if newest is not None else None
            session.need_key = True
        if session.next_seq is None:
            newest = ring.newest_ts()
            session.next_seq = ring.keyframe_before(newest) if newest is not None else None
            if session.next_seq is None:
                return
        wanted = session.next_seq
        packets, session.next_seq = ring.read(wanted)
        if session.next_seq - len(packets) != wanted:
            session.need_key = True  # the ring moved on past what this client had read
        for pkt in packets:
            self._send_frame(session, pkt, now)
        if now - session.last_sr >= SR_INTERVAL_S and session.rtp.last_sensor_us is not None:
            session.last_sr = now
            newest = ring.newest_ts()
            report = session.rtp.sender_report(newest or session.rtp.last_sensor_us)
            if report is not None:
                session.send_rtcp(report)

    def _send_frame(self, session: Session, pkt: Packet, now: float) -> None:
        if session.backlog() > BACKLOG_LIMIT:
            # Too slow: this frame and every one up to the next keyframe are dropped whole,
            # so the client never decodes a picture whose references it did not get.
            session.need_key = True
            session.stalled_since = session.stalled_since or now
            if now - session.stalled_since > STALL_TIMEOUT_S:
                self._throttle(
                    logging.INFO,
                    "rtsp: %s took nothing for %.0f s: disconnected",
                    session.conn.peer,
                    STALL_TIMEOUT_S,
                )
                self._end_session(session.id)
                session.conn.writer.transport.abort()
                return
        else:
            session.stalled_since = None
        if session.need_key and not pkt.keyframe:
            session.frames_dropped += 1
            self.frames_dropped += 1
            return
        if session.stalled_since is not None:
            session.frames_dropped += 1
            self.frames_dropped += 1
            return
        session.need_key = False
        if self._split[0] is not pkt:
            self._split = (pkt, nal_units(pkt.data))
        session.send_frame(self._split[1], pkt.ts)
        session.frames_sent += 1
        self.frames_sent += 1


def _stream_path(url: str) -> str:
    """The path of a request URL without its trailing slash; ``*`` stays ``*``."""
    if url == "*":
        return "*"
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6 address
        raise BadRequest("the request URL is not rtsp://HOST[:PORT]/PATH") from None
    if parts.scheme.lower() not in ("rtsp", "rtspu") or not parts.netloc:
        raise BadRequest("the request URL is not rtsp://HOST[:PORT]/PATH")
    return parts.path.rstrip("/")


def _newest_keyframe(ring: PacketRing | None) -> Packet | None:
    if ring is None:
        return None
    newest = ring.newest_ts()
    seq = ring.keyframe_before(newest) if newest is not None else None
    if seq is None:
        return None
    packets, _ = ring.read(seq)
    return packets[0] if packets else None
