"""The optional local web server: the page, the live MJPEG stream, the clips, health, and the
control API.

Plain HTTP/1.1 on asyncio streams, on the daemon's loop; one request per connection. Routes:

- ``GET /``: the page (``page.py``);
- ``GET /stream.mjpg``: ``multipart/x-mixed-replace`` JPEGs at the live rate, from the one
  encoder every viewer shares (``live/mjpeg.py``); at most ``http.max_viewers``, then 503;
- ``GET /clips/NAME``: a clip, with single byte ranges (206) so that browsers can seek, and
  ``?download=1`` to save it; NAME must be one of the names the clip directory lists: no path
  from the URL is ever joined to a directory;
- ``GET /health.json``: the health report (``health.py``);
- ``GET /snapshot.jpg``: the camera's current picture (Home Assistant's Generic Camera, scripts);
  requests within ``SNAPSHOT_MAX_AGE_S`` of a picture share it, so a dashboard of viewers costs
  the camera at most one still a second;
- ``GET /thumbs/NAME``: a clip's picture, when one was made beside it;
- ``GET /stills/NAME``: a still (``?download=1`` to save it), one the capture directory lists;
- ``GET /app.js``: the page's script (``local/script.py``);
- ``/api/...``: the control API (``local/api.py``).

Every request must name the camera in its ``Host`` header (its addresses, ``localhost``, its
host name, ``HOSTNAME.local`` or one of ``http.host_names``: ``guard.HostNames``), so that a
page on another site cannot read the camera through a name of its own (DNS rebinding). With
``http.password`` set every request needs HTTP basic auth (any user name); wrong passwords
are slowed per address (``guard.PasswordGuard``). A request that
changes something (``PATCH``, ``POST``, ``DELETE``, only under ``/api/``) also needs a password
to be set at all (without one the API is read-only), must come from this page (``Origin`` and
``Sec-Fetch-Site``, when the browser sends them) and carries at most ``MAX_BODY`` bytes of JSON.

The server never blocks the loop on the disk (files are read on a worker thread) or on a client
(every read and write has a timeout). Hostile clients: a request head must arrive whole within
``HEAD_TIMEOUT_S``; an address opens at most ``NEW_PER_SECOND`` connections a second (beyond a
burst) and holds at most ``MAX_PER_ADDRESS``; when its share or every connection slot is taken,
the connection (of that address) that has waited longest for its head is closed to make room
(idle and trickling connections cannot lock others out); an MJPEG viewer gets a picture only
when the previous one has left, and is dropped once it has taken none for ``VIEWER_STALL_S``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import os
import re
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from pinthesky.eventfiles import open_ours
from pinthesky.live.mjpeg import MjpegBroadcaster
from pinthesky.local.api import LocalApi
from pinthesky.local.guard import ConnectionRate, HostNames, PasswordGuard, client_key
from pinthesky.local.page import ClipEntry, render
from pinthesky.local.script import SCRIPT
from pinthesky.logs import Throttle
from pinthesky.record.clips import ClipStore
from pinthesky.record.stills import StillStore
from pinthesky.settings import HttpSettings, Resolution

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024
"""Bytes of request line and headers accepted."""
HEAD_TIMEOUT_S = 10.0
"""The whole request head must arrive within this (a trickle of bytes does not extend it)."""
READ_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 20.0
MAX_CONNECTIONS = 64
MAX_PER_ADDRESS = 16
"""Connections from one address at once: a browser opens six at most, so one machine flooding
the port uses up its own share, never the owner's."""
NEW_PER_SECOND, NEW_BURST = 20.0, 100
"""New connections an address may open: 20 a second, 100 at once (the page with its script,
pictures and live view is about 20); beyond, a connection is closed before it is read."""
MAX_BODY = 64 * 1024
"""Bytes of a request's JSON body accepted (a settings change is a few hundred)."""
VIEWER_STALL_S = 10.0
"""An MJPEG viewer that has not taken a whole picture for this long is dropped."""
STREAM_SNDBUF = 128 * 1024
"""Kernel send buffer of an MJPEG connection: a few pictures, not seconds of them."""
_DIGITS = 18
"""Longest byte position taken at its value; a longer one is beyond any file."""
PAGE_CLIPS = 12
SNAPSHOT_MAX_AGE_S = 1.0
MAX_STILL = 16 * 1024 * 1024
"""Largest still served (a full-resolution JPEG of the largest sensor is a few MB)."""
FILE_CHUNK = 256 * 1024
BOUNDARY = "FRAME"
_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")  # ASCII digits: \d takes "²" too
_LENGTH = re.compile(r"[0-9]{1,9}")
_REASONS = {
    200: "OK",
    206: "Partial Content",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    429: "Too Many Requests",
    503: "Service Unavailable",
}
_SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    version: str = "HTTP/1.1"


class Unsatisfiable(ValueError):
    """A byte range outside the file."""


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single ``bytes=`` range, inclusive; None to send everything
    (no range, or several, or one this server does not understand: RFC 9110 lets it ignore
    them). Raises ``Unsatisfiable`` for a range that starts beyond the end."""
    if not value:
        return None
    match = _RANGE.fullmatch(value.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # bytes=-N: the last N bytes
        n = _position(last)
        if n == 0:
            raise Unsatisfiable(value)
        return max(0, size - n), size - 1
    start = _position(first)
    end = min(_position(last), size - 1) if last else size - 1
    if start >= size or (last and _position(last) < start):
        raise Unsatisfiable(value)
    return start, end


def _position(digits: str) -> int:
    # int() of thousands of digits is refused by Python (and slow): any number this long
    # is past the end of every file, which is all the range logic needs to know.
    return int(digits) if len(digits.lstrip("0")) <= _DIGITS else 10**_DIGITS


_SINGLE = ("host", "content-length", "authorization")
"""Headers a request may carry once: two of them would let a proxy and this server read two
different requests out of one."""


def parse_head(head: bytes) -> Request | None:
    """The request line and headers; None if they are not HTTP/1.x."""
    try:
        text = head.decode("iso-8859-1")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target = parts[0], parts[1]
    if not target.startswith("/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return None
        if name.lower() in _SINGLE and name.lower() in headers:
            return None
        headers[name.lower()] = value.strip()
    url = urlsplit(target)
    return Request(method, url.path, parse_qs(url.query), headers, parts[2])


class WebServer:
    """Serves the page, the stream and the clips on ``http.bind``:``http.port``."""

    def __init__(
        self,
        settings: HttpSettings,
        store: ClipStore,
        mjpeg: MjpegBroadcaster,
        health: Callable[[], dict[str, Any]],
        title: Callable[[], str],
        live_size: Callable[[], Resolution],
        api: LocalApi | None = None,
        snapshot: Callable[[], bytes] | None = None,
        stills: Callable[[], StillStore] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.mjpeg = mjpeg
        self._health = health
        self._title = title
        self._live_size = live_size
        self._stills = stills
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self._waiting: dict[asyncio.StreamWriter, tuple[float, str]] = {}
        """Connections still sending their request head -> when they came, and from where."""
        self._counted: dict[asyncio.StreamWriter, str] = {}
        """Connections that hold a slot (not those closed to make room) -> their address."""
        self._per_address: Counter[str] = Counter()
        self.api = api
        self.guard = PasswordGuard("http")
        self.rate = ConnectionRate(NEW_PER_SECOND, NEW_BURST)
        self._flood_log = Throttle(log, burst=1, window=60.0)
        """One line a minute about connections closed unread, and their count."""
        self.hosts = HostNames(settings.host_names)
        self._throttle = Throttle(log, burst=5, window=60.0)
        """Lines about clients: at most a few a minute, whatever they send."""
        self._snapshots = Snapshots(snapshot) if snapshot is not None else None
        self.port: int | None = None
        self.requests = 0
        self.unauthorized = 0
        self.wrong_host = 0
        self.evicted = 0
        self.dropped_viewers = 0
        self.cross_origin = 0

    async def start(self) -> None:
        """Listen; raises OSError when the address cannot be used."""
        s = self.settings
        self._server = await asyncio.start_server(
            self._serve, s.bind, s.port, limit=HEAD_LIMIT, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http: the local page is at http://%s:%d/", s.bind, self.port)
        if s.password is None and not ipaddress.ip_address(s.bind).is_loopback:
            log.warning(
                "http: no password (http.password): anyone who can reach port %d watches the "
                "camera and downloads its clips",
                self.port,
            )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.mjpeg.close()
        self.guard.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.wait(set(self._clients), timeout=2)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
            log.info("http: the local page stopped (%d requests served)", self.requests)

    # -- one connection ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = client_key((writer.get_extra_info("peername") or ("",))[0])
        if not self.rate.allow(address):
            # A flood from one machine: closed before anything is read, at almost no cost.
            writer.transport.abort()
            self._flood_log(logging.WARNING, "http: %s opens connections too fast", address)
            return
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        self._counted[writer] = address
        self._per_address[address] += 1
        try:
            if self._per_address[address] > MAX_PER_ADDRESS and not self._evict_waiting(address):
                self._uncount(writer)
                await self._error(writer, 503, "too many connections from this address")
                return
            if len(self._counted) > MAX_CONNECTIONS and not self._evict_waiting():
                self._uncount(writer)
                await self._error(writer, 503, "too many connections")
                return
            self._waiting[writer] = (asyncio.get_running_loop().time(), address)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            finally:
                self._waiting.pop(writer, None)
            await self._exchange(head, reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("http: a client went away or stalled (%s): nothing to answer", exc)
        except asyncio.LimitOverrunError:
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._error(writer, 400, "request header too large")
        except asyncio.CancelledError:
            # The server is closing. Ending quietly: the stream's own callback would log the
            # cancellation of a connection's task as an error.
            pass
        except Exception:
            self._throttle(logging.ERROR, "http: a request failed", exc_info=True)
        finally:
            self._clients.discard(task)
            self._waiting.pop(writer, None)
            self._uncount(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2)

    def _evict_waiting(self, address: str | None = None) -> bool:
        """Close the connection (from ``address``, or any) that has waited longest for its
        request head; False when there is none (the others are busy with a request, and end
        on their own timeouts)."""
        waiting = [w for w, (_, a) in self._waiting.items() if address in (None, a)]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda w: self._waiting[w][0])
        del self._waiting[oldest]
        self._uncount(oldest)  # its slot is free now, though its task ends a moment later
        oldest.transport.abort()  # its read ends with a reset, like a client that went away
        self.evicted += 1
        log.debug("http: every connection slot taken; closed one still sending its head")
        return True

    def _uncount(self, writer: asyncio.StreamWriter) -> None:
        address = self._counted.pop(writer, None)
        if address is not None:
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    async def _exchange(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        request = parse_head(head)
        self.requests += 1
        if request is None:
            await self._error(writer, 400, "not an HTTP/1.x request")
            return
        host = request.headers.get("host")
        if host is None and request.version != "HTTP/1.0":
            await self._error(writer, 400, "a Host header is required")
            return
        if host is not None and not self.hosts.allowed(host):
            self.wrong_host += 1
            self._throttle(
                logging.WARNING,
                "http: refused a request for %r: not a name of this camera (add it to "
                "http.host_names if it is yours)",
                host[:80],
            )
            await self._error(writer, 403, f"this camera is not {host[:80]!r}")
            return
        if not await self._authorized(writer, request):
            return
        path = request.path
        if path.startswith("/api/"):
            await self._api(reader, writer, request)
            return
        if request.method not in ("GET", "HEAD"):
            await self._send(writer, 405, {"Allow": "GET, HEAD"}, b"GET or HEAD only\n")
            return
        if path in ("/", "/index.html"):
            await self._page(writer, request)
        elif path == "/stream.mjpg":
            await self._stream(writer, request)
        elif path == "/snapshot.jpg":
            await self._snapshot(writer, request)
        elif path == "/health.json":
            body = json.dumps(await asyncio.to_thread(self._health)).encode()
            await self._send(writer, 200, _json(), body, head_only=request.method == "HEAD")
        elif path.startswith("/clips/"):
            await self._clip(writer, request, unquote(path[len("/clips/") :]))
        elif path.startswith("/thumbs/"):
            await self._thumb(writer, request, unquote(path[len("/thumbs/") :]))
        elif path.startswith("/stills/"):
            await self._still(writer, request, unquote(path[len("/stills/") :]))
        elif path == "/app.js":
            headers = {
                "Content-Type": "text/javascript; charset=utf-8",
                "Cache-Control": "no-cache",
            }
            await self._send(writer, 200, headers, SCRIPT, head_only=request.method == "HEAD")
        else:
            await self._error(writer, 404, "not found")

    async def _authorized(self, writer: asyncio.StreamWriter, request: Request) -> bool:
        """Whether the request may go on; when not, it has been answered (401, or 429 while
        its address is slowed down for wrong passwords)."""
        password = self.settings.password
        if password is None:
            return True
        header = request.headers.get("authorization")
        if header is not None:
            address = (writer.get_extra_info("peername") or ("",))[0]
            wait = self.guard.wait(address)
            if wait > 0:
                # Not even checked: a right guess now would tell a guesser it was right.
                text = f"too many wrong passwords from {address}: try again in {wait:.0f} s\n"
                headers = {"Retry-After": str(math.ceil(wait)), "Content-Type": "text/plain"}
                await self._send(writer, 429, headers, text.encode())
                return False
            if _basic_password_is(header, password):
                self.guard.passed(address)
                return True
            await asyncio.sleep(self.guard.failed(address))
        self.unauthorized += 1
        await self._send(
            writer,
            401,
            {"WWW-Authenticate": 'Basic realm="pinthesky", charset="UTF-8"'},
            b"password required\n",
        )
        return False

    # -- routes --------------------------------------------------------------------------------

    async def _page(self, writer: asyncio.StreamWriter, request: Request) -> None:
        clips, health = await asyncio.to_thread(lambda: (self._clip_entries(), self._health()))
        size = self._live_size()
        body = render(self._title(), clips, health, (size.width, size.height))
        headers = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}
        await self._send(writer, 200, headers, body, head_only=request.method == "HEAD")

    def _clip_entries(self) -> list[ClipEntry]:
        # Worker thread: lists the clip directory.
        entries = []
        for path in reversed(self.store.clips()[-PAGE_CLIPS:]):
            with contextlib.suppress(OSError, ValueError):
                size = path.lstat().st_size
                entries.append(
                    ClipEntry(path.name, int(path.name.split(".")[0].split("-")[0]), size)
                )
        return entries

    # -- the control API -----------------------------------------------------------------------

    async def _api(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request
    ) -> None:
        if self.api is None:
            await self._error(writer, 404, "not found")
            return
        method = request.method
        body: Any = None
        if method not in ("GET", "HEAD"):
            refusal = self._refuse_change(request)
            if refusal is not None:
                status, text = refusal
                await self._send(writer, status, _json(), _error_json(text))
                return
            try:
                body = await self._read_body(reader, request)
            except _BodyError as exc:
                await self._send(writer, exc.status, _json(), _error_json(str(exc)))
                return
        status, payload = await self.api.handle(method, request.path[len("/api") :], body)
        data = json.dumps(payload).encode()
        await self._send(writer, status, _json(), data, head_only=method == "HEAD")

    def _refuse_change(self, request: Request) -> tuple[int, str] | None:
        """Why a request that changes something is refused, or None to let it in."""
        if request.method not in ("PATCH", "POST", "DELETE"):
            return 405, "GET, HEAD, PATCH, POST or DELETE"
        if self.settings.password is None:
            return 403, (
                "control is off: set http.password in the --config file to change settings, "
                "record or delete from this page"
            )
        # A page on another site may make the browser send requests here (with the saved
        # password): browsers say where a request comes from, and only this page may change.
        site = request.headers.get("sec-fetch-site")
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if (site is not None and site not in ("same-origin", "none")) or (
            origin is not None and origin != f"http://{host}"
        ):
            self.cross_origin += 1
            return 403, "refused: the request comes from another site"
        return None

    async def _read_body(self, reader: asyncio.StreamReader, request: Request) -> Any:
        headers = request.headers
        if "transfer-encoding" in headers:
            raise _BodyError(411, "send the body with a Content-Length")
        raw = headers.get("content-length", "0")
        if not _LENGTH.fullmatch(raw):  # ASCII: str.isdigit() takes "²", which int() refuses
            raise _BodyError(400, "bad Content-Length")
        length = int(raw)
        if length > MAX_BODY:
            raise _BodyError(413, f"the body may have at most {MAX_BODY} bytes")
        if length == 0:
            return None
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            # Also keeps out plain HTML forms, which browsers send from any site.
            raise _BodyError(415, "the body must be application/json")
        data = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S)
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise _BodyError(400, "the body is not valid JSON") from None

    async def _snapshot(self, writer: asyncio.StreamWriter, request: Request) -> None:
        if self._snapshots is None:
            await self._error(writer, 404, "not found")
            return
        try:
            jpeg = await self._snapshots.get()
        except Exception as exc:  # the camera's own error, as one line
            await self._error(writer, 503, f"no picture: {exc}")
            return
        headers = {"Content-Type": "image/jpeg", "Cache-Control": "no-store"}
        await self._send(writer, 200, headers, jpeg, head_only=request.method == "HEAD")

    async def _thumb(self, writer: asyncio.StreamWriter, request: Request, name: str) -> None:
        def read() -> bytes | None:
            clip = self.store.find(name)
            picture = self.store.picture(clip) if clip is not None else None
            if picture is None:
                return None
            with os.fdopen(open_ours(picture), "rb") as fh:
                if os.fstat(fh.fileno()).st_size > 8 * 1024 * 1024:
                    return None
                return fh.read()

        try:
            data = await asyncio.to_thread(read)
        except OSError:
            data = None
        if data is None:
            await self._error(writer, 404, "no picture for that clip")
            return
        headers = {"Content-Type": "image/jpeg", "Cache-Control": "no-cache"}
        await self._send(writer, 200, headers, data, head_only=request.method == "HEAD")

    async def _still(self, writer: asyncio.StreamWriter, request: Request, name: str) -> None:
        def read() -> bytes | None:
            if self._stills is None:
                return None
            path = self._stills().find(name)
            if path is None:
                return None
            with os.fdopen(open_ours(path), "rb") as fh:
                if os.fstat(fh.fileno()).st_size > MAX_STILL:
                    return None
                return fh.read()

        try:
            data = await asyncio.to_thread(read)
        except OSError:  # uploaded and removed since the listing
            data = None
        if data is None:
            await self._error(writer, 404, "no such still")
            return
        headers = {"Content-Type": "image/jpeg", "Cache-Control": "no-cache"}
        if request.query.get("download") == ["1"]:
            headers["Content-Disposition"] = f'attachment; filename="{name}"'
        await self._send(writer, 200, headers, data, head_only=request.method == "HEAD")

    async def _clip(self, writer: asyncio.StreamWriter, request: Request, name: str) -> None:
        path = await asyncio.to_thread(self.store.find, name)
        if path is None:
            await self._error(writer, 404, "no such clip")
            return
        try:
            fh, size = await _opened(path)
        except OSError:  # evicted or uploaded and removed since the listing
            await self._error(writer, 404, "no such clip")
            return
        try:
            headers = {
                "Content-Type": "video/mp4" if name.endswith(".mp4") else "video/h264",
                "Accept-Ranges": "bytes",
                "Cache-Control": "no-cache",
            }
            if request.query.get("download") == ["1"]:
                headers["Content-Disposition"] = f'attachment; filename="{name}"'
            try:
                span = parse_range(request.headers.get("range"), size)
            except Unsatisfiable:
                headers["Content-Range"] = f"bytes */{size}"
                await self._send(writer, 416, headers, b"")
                return
            status, first, last = 200, 0, size - 1
            if span is not None:
                status, (first, last) = 206, span
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            length = max(0, last - first + 1)
            await self._send_head(writer, status, headers, length)
            if request.method == "GET":
                await self._copy(fh, writer, first, length)
        finally:
            await asyncio.to_thread(fh.close)

    async def _copy(
        self, fh: BinaryIO, writer: asyncio.StreamWriter, first: int, length: int
    ) -> None:
        await asyncio.to_thread(fh.seek, first)
        left = length
        while left > 0:
            chunk = await asyncio.to_thread(fh.read, min(FILE_CHUNK, left))
            if not chunk:
                break  # the file is shorter than it was (cannot happen to a finished clip)
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
            left -= len(chunk)

    async def _stream(self, writer: asyncio.StreamWriter, request: Request) -> None:
        viewer = self.mjpeg.join()
        if viewer is None:
            await self._error(writer, 503, f"{self.mjpeg.max_viewers} viewers already watch")
            return
        try:
            headers = {
                "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                "Cache-Control": "no-store",
            }
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
            await self._send_head(writer, 200, headers, None)
            if request.method == "HEAD":
                return
            loop = asyncio.get_running_loop()
            transport = writer.transport
            taken = loop.time()
            while True:
                jpeg = await viewer.next(within=VIEWER_STALL_S)
                if transport.is_closing():
                    return
                if transport.get_write_buffer_size() > 0:
                    # The last picture has not left yet: skip this one, and let a viewer
                    # that takes nothing for long go, so that it frees its slot.
                    if loop.time() - taken > VIEWER_STALL_S:
                        self.dropped_viewers += 1
                        self._throttle(
                            logging.INFO, "http: dropped an MJPEG viewer that stopped reading"
                        )
                        return
                    continue
                taken = loop.time()
                if jpeg is None:
                    if viewer.closed:
                        return  # the server is closing
                    continue
                writer.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                    + jpeg
                    + b"\r\n"
                )
        finally:
            self.mjpeg.leave(viewer)

    # -- responses -----------------------------------------------------------------------------

    async def _send_head(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        headers: dict[str, str],
        length: int | None,
    ) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}"]
        all_headers = {**_SECURITY, **headers, "Connection": "close"}
        if length is not None:
            all_headers["Content-Length"] = str(length)
        lines += [f"{k}: {v}" for k, v in all_headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        headers: dict[str, str],
        body: bytes,
        head_only: bool = False,
    ) -> None:
        await self._send_head(writer, status, headers, len(body))
        if not head_only and body:
            writer.write(body)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)

    async def _error(self, writer: asyncio.StreamWriter, status: int, text: str) -> None:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        await self._send(writer, status, headers, (text + "\n").encode())


def _basic_password_is(header: str, password: str) -> bool:
    """Whether a Basic ``Authorization`` header carries ``password`` (any user name)."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    _, sep, given = decoded.partition(":")
    # Compared in constant time: the answer must not tell how much of a guess was right.
    return bool(sep) and hmac.compare_digest(given.encode(), password.encode())


class Snapshots:
    """The camera's current picture, taken on a worker thread; requests within
    ``SNAPSHOT_MAX_AGE_S`` of one, or while one is being taken, share it."""

    def __init__(self, capture: Callable[[], bytes]) -> None:
        self._capture = capture
        self._jpeg: bytes | None = None
        self._at = 0.0
        self._taking: asyncio.Future[bytes] | None = None
        self.taken = 0

    async def get(self) -> bytes:
        loop = asyncio.get_running_loop()
        if self._jpeg is not None and loop.time() - self._at < SNAPSHOT_MAX_AGE_S:
            return self._jpeg
        if self._taking is None:
            self._taking = asyncio.ensure_future(asyncio.to_thread(self._capture))
            self._taking.add_done_callback(self._taken)
        # Shielded: a client that goes away does not cancel the picture others wait for.
        return await asyncio.shield(self._taking)

    def _taken(self, done: asyncio.Future[bytes]) -> None:
        self._taking = None
        if not done.cancelled() and done.exception() is None:
            self._jpeg, self._at = done.result(), asyncio.get_running_loop().time()
            self.taken += 1


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error_json(text: str) -> bytes:
    return json.dumps({"error": text}).encode()


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json", "Cache-Control": "no-store"}


async def _opened(path: Path) -> tuple[BinaryIO, int]:
    """A clip opened for reading, and its size: never through a link swapped in since the
    listing, never blocking on a FIFO. The open runs on a thread; if the request is cancelled
    meanwhile (its connection closed), the file is closed once the thread has opened it."""

    def work() -> tuple[BinaryIO, int]:
        fh = os.fdopen(open_ours(path), "rb")
        return fh, os.fstat(fh.fileno()).st_size

    def close_late(done: asyncio.Future[tuple[BinaryIO, int]]) -> None:
        if not done.cancelled() and done.exception() is None:
            done.result()[0].close()

    opening = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(close_late)
        raise
