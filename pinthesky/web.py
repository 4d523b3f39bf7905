"""The optional local web server: the page, the live MJPEG stream, the clips, health.

Plain HTTP/1.1 on asyncio streams, on the daemon's loop; one request per connection. Routes:

- ``GET /``: the page (``page.py``);
- ``GET /stream.mjpg``: ``multipart/x-mixed-replace`` JPEGs at the live rate, from the one
  encoder every viewer shares (``live/mjpeg.py``); at most ``http.max_viewers``, then 503;
- ``GET /clips/NAME``: a clip, with single byte ranges (206) so that browsers can seek, and
  ``?download=1`` to save it; NAME must be one of the names the clip directory lists: no path
  from the URL is ever joined to a directory;
- ``GET /health.json``: the health report (``health.py``).

With ``http.password`` set every request needs HTTP basic auth (any user name). The server
never blocks the loop on the disk (files are read on a worker thread) or on a client (every
read and write has a timeout); it only reads what the recorder wrote, never deletes.
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
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

from pinthesky.clips import ClipStore
from pinthesky.live.mjpeg import MjpegBroadcaster
from pinthesky.page import ClipEntry, render
from pinthesky.settings import HttpSettings, Resolution

log = logging.getLogger(__name__)

HEAD_LIMIT = 16 * 1024
"""Bytes of request line and headers accepted."""
READ_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 20.0
MAX_CONNECTIONS = 64
PAGE_CLIPS = 12
FILE_CHUNK = 256 * 1024
BOUNDARY = "FRAME"
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_REASONS = {
    200: "OK",
    206: "Partial Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    416: "Range Not Satisfiable",
    503: "Service Unavailable",
}
_SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; "
        "frame-ancestors 'none'"
    ),
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


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
        n = int(last)
        if n == 0:
            raise Unsatisfiable(value)
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise Unsatisfiable(value)
    return start, end


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
        headers[name.lower()] = value.strip()
    url = urlsplit(target)
    return Request(method, url.path, parse_qs(url.query), headers)


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
    ) -> None:
        self.settings = settings
        self.store = store
        self.mjpeg = mjpeg
        self._health = health
        self._title = title
        self._live_size = live_size
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()
        self.port: int | None = None
        self.requests = 0
        self.unauthorized = 0

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
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._exchange(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("http: a client went away or stalled (%s): nothing to answer", exc)
        except asyncio.LimitOverrunError:
            with contextlib.suppress(ConnectionError, TimeoutError):
                await self._error(writer, 400, "request header too large")
        except Exception:
            log.exception("http: a request failed")
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._clients) > MAX_CONNECTIONS:
            await self._error(writer, 503, "too many connections")
            return
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        request = parse_head(head)
        self.requests += 1
        if request is None:
            await self._error(writer, 400, "not an HTTP/1.x request")
            return
        if not self._authorized(request):
            self.unauthorized += 1
            await self._send(
                writer,
                401,
                {"WWW-Authenticate": 'Basic realm="pinthesky", charset="UTF-8"'},
                b"password required\n",
            )
            return
        if request.method not in ("GET", "HEAD"):
            await self._send(writer, 405, {"Allow": "GET, HEAD"}, b"GET or HEAD only\n")
            return
        path = request.path
        if path in ("/", "/index.html"):
            await self._page(writer, request)
        elif path == "/stream.mjpg":
            await self._stream(writer, request)
        elif path == "/health.json":
            body = json.dumps(await asyncio.to_thread(self._health)).encode()
            await self._send(writer, 200, _json(), body, head_only=request.method == "HEAD")
        elif path.startswith("/clips/"):
            await self._clip(writer, request, unquote(path[len("/clips/") :]))
        else:
            await self._error(writer, 404, "not found")

    def _authorized(self, request: Request) -> bool:
        password = self.settings.password
        if password is None:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        _, sep, given = decoded.partition(":")
        # Compared in constant time: the answer must not tell how much of a guess was right.
        return bool(sep) and hmac.compare_digest(given.encode(), password.encode())

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
                size = path.stat().st_size
                entries.append(
                    ClipEntry(path.name, int(path.name.split(".")[0].split("-")[0]), size)
                )
        return entries

    def _find_clip(self, name: str) -> Path | None:
        # Worker thread. The name must be one the directory lists as a finished clip.
        for path in self.store.clips():
            if path.name == name:
                return path
        return None

    async def _clip(self, writer: asyncio.StreamWriter, request: Request, name: str) -> None:
        path = await asyncio.to_thread(self._find_clip, name)
        if path is None:
            await self._error(writer, 404, "no such clip")
            return
        try:
            fh = await asyncio.to_thread(path.open, "rb")
        except OSError:  # evicted or uploaded and removed since the listing
            await self._error(writer, 404, "no such clip")
            return
        try:
            size = (await asyncio.to_thread(os.fstat, fh.fileno())).st_size
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
            await self._send_head(writer, 200, headers, None)
            if request.method == "HEAD":
                return
            while True:
                jpeg = await viewer.next()
                if jpeg is None:
                    return  # the server is closing
                writer.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n".encode()
                    + jpeg
                    + b"\r\n"
                )
                # A viewer that cannot take a picture within the timeout is dropped.
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
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


def _json() -> dict[str, str]:
    return {"Content-Type": "application/json", "Cache-Control": "no-store"}
