"""The ``record`` command: the camera, live, as MPEG-1 to a data-plane connection.

One ``LiveSession`` per connection, at most ``live.max_sessions`` at once. A session posts the
``jsmp`` header, then encodes each live picture on its encoder thread and posts the stream in
chunks of at most 32768 bytes on its post thread, through one client made for it. It ends when
the console stops it, a post fails (``GoneException``: the viewer left), API Gateway's limits
would end the connection anyway (two hours; ten minutes without a picture to send), or the
daemon stops; then ``record_end`` tells the console's manager connection. The stream is kept
close to live: when the network is slower than the video, whole pictures are skipped before
encoding (never bytes of the stream, which would break it until the next I-frame).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pinthesky.cloud.dataplane import CHUNK_BYTES, DataPlane, DataPlaneError, header, post
from pinthesky.control.commands import Connection, Record
from pinthesky.live.encoders import EncodeError, Mpeg1Encoder
from pinthesky.live.tap import YUV420, Feed, LiveTap
from pinthesky.live.worker import Worker
from pinthesky.media import release_memory
from pinthesky.settings import Resolution, Settings, live_size

log = logging.getLogger(__name__)

MAX_SECONDS = 2 * 3600.0
"""API Gateway closes a WebSocket connection after two hours."""
IDLE_SECONDS = 600.0
"""... and after ten minutes without a message."""
BACKLOG_BYTES = 4 * CHUNK_BYTES
"""Encoded bytes waiting to be posted beyond which pictures are skipped."""
END_WITHIN_S = 2.0
"""At daemon stop, how long the sessions get to tell the console (the stop must take < 5 s)."""


@dataclass(frozen=True)
class Limits:
    max_seconds: float = MAX_SECONDS
    idle_seconds: float = IDLE_SECONDS


class LiveSession:
    """One live stream to one connection (on the loop; encoding and posting on workers)."""

    def __init__(
        self,
        connection: Connection,
        echo: dict[str, Any],
        tap: LiveTap,
        dataplane: DataPlane,
        target: tuple[str, str],
        size: Resolution,
        fps: int,
        bitrate: int,
        thing_name: str | None,
        limits: Limits,
        rotation: int = 0,
    ) -> None:
        self.connection = connection
        self.echo = echo
        self.tap = tap
        self.dataplane = dataplane
        self.target = target
        self.size = size
        """The stream's size, as people see it (in the header)."""
        self.rotation = rotation
        self.fps = fps
        self.bitrate = bitrate
        self.thing_name = thing_name
        self.limits = limits
        self._stop = asyncio.Event()
        self.stop_reason = ""
        self.reason = ""
        """Why it ended (in ``record_end``)."""
        self.pictures = 0
        self.skipped = 0
        self.posts = 0
        self.bytes = 0
        self.largest_post = 0
        self.ended = asyncio.Event()

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.stop_reason = reason
            self._stop.set()

    async def run(self) -> None:
        started = time.monotonic()
        cid = self.connection.id
        log.info(
            "live stream to connection %s started: MPEG-1 %s at %d fps, %d kb/s",
            cid,
            self.size,
            self.fps,
            self.bitrate // 1000,
        )
        try:
            self.reason = await self._stream()
        except DataPlaneError as exc:
            self.reason = "gone" if exc.gone else f"post failed: {exc}"
        except EncodeError as exc:
            self.reason = f"encoding failed: {exc}"
        except asyncio.CancelledError:
            self.reason = "the daemon stopped"
            raise
        finally:
            log.info(
                "live stream to connection %s ended after %.0f s (%s): %d pictures, %d skipped,"
                " %d bytes in %d posts",
                cid,
                time.monotonic() - started,
                self.reason,
                self.pictures,
                self.skipped,
                self.bytes,
                self.posts,
            )
        await self._end()

    async def _stream(self) -> str:
        encoder_thread = Worker("live-encoder")
        post_thread = Worker("live-post")
        feed: Feed | None = None
        tasks: list[asyncio.Task[Any]] = []
        try:
            endpoint, region = self.target
            client = await post_thread.run(partial(self.dataplane.client, endpoint, region))
            cid = self.connection.id
            # jsmpeg reads the header first; base64 like every post (as pits-device 0.9.1).
            body = base64.b64encode(header(*self.size))
            await post_thread.run(partial(post, client, cid, body))
            feed = self.tap.subscribe(YUV420)
            w, h = self.size
            encoder = await encoder_thread.run(
                partial(Mpeg1Encoder, w, h, self.fps, self.bitrate, self.rotation)
            )
            pending = bytearray()
            more = asyncio.Event()

            async def send() -> None:
                while True:
                    await more.wait()
                    more.clear()
                    while pending:
                        chunk = bytes(pending[:CHUNK_BYTES])
                        del pending[:CHUNK_BYTES]
                        body = base64.b64encode(chunk)
                        await post_thread.run(partial(post, client, cid, body))
                        self.posts += 1
                        self.bytes += len(chunk)
                        self.largest_post = max(self.largest_post, len(chunk))

            async def encode(feed: Feed) -> str:
                while True:
                    picture = await feed.get(self.limits.idle_seconds)
                    if picture is None:
                        return "idle"
                    if len(pending) > BACKLOG_BYTES:
                        self.skipped += 1
                        continue
                    pending.extend(await encoder_thread.run(partial(encoder.encode, picture)))
                    self.pictures += 1
                    more.set()

            sender = asyncio.create_task(send(), name=f"live-post-{cid}")
            encoding = asyncio.create_task(encode(feed), name=f"live-encode-{cid}")
            stopped = asyncio.create_task(self._stop.wait(), name=f"live-stop-{cid}")
            tasks = [sender, encoding, stopped]
            done, _ = await asyncio.wait(
                tasks, timeout=self.limits.max_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                return "time limit"
            if stopped in done:
                return self.stop_reason
            finished = sender if sender in done else encoding
            return str(finished.result())  # raises what ended it (DataPlaneError, ...)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if feed is not None:
                feed.close()
            encoder_thread.close()
            post_thread.close()

    async def _end(self) -> None:
        """``record_end`` to the console's manager connection (as pits-device 0.9.1)."""
        await send_record_end(
            self.dataplane, self.connection, self.echo, self.thing_name, self.reason
        )
        self.ended.set()


async def send_record_end(
    dataplane: DataPlane,
    connection: Connection,
    echo: dict[str, Any],
    thing_name: str | None,
    reason: str,
) -> None:
    if connection.manager_id is None:
        log.debug("record_end not sent: the record command named no manager connection")
        return
    event = {
        **echo,
        "name": "record_end",
        "timestamp": int(time.time()),
        "thing_name": thing_name,
        "session": {"stop": True},
        "reason": reason,
    }
    try:
        await dataplane.invoke(connection.manager_id, connection.management_endpoint, event)
    except DataPlaneError as exc:
        log.warning("record_end for connection %s not posted: %s", connection.id, exc)


class LiveSessions:
    """Starts and stops live sessions on ``record`` commands (on the loop)."""

    def __init__(
        self,
        tap: LiveTap,
        dataplane: DataPlane,
        settings: Callable[[], Settings],
        camera_size: Callable[[], Resolution],
        limits: Limits | None = None,
    ) -> None:
        self.tap = tap
        self.dataplane = dataplane
        self._settings = settings
        self._camera_size = camera_size
        self.limits = limits or Limits()
        self.sessions: dict[str, LiveSession] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.started = 0
        self.refused = 0

    def handle(self, command: Record) -> None:
        connection = command.connection
        assert connection is not None  # parse_command guarantees it for record
        if command.stop:
            session = self.sessions.get(connection.id)
            if session is None:
                log.info("record stop: no live stream to connection %s", connection.id)
            else:
                session.stop("stopped by the console")
            return
        if connection.id in self.sessions:
            log.info("record: connection %s is already streaming", connection.id)
            return
        s = self._settings()
        try:
            target = self.dataplane.target()
        except DataPlaneError as exc:
            self.refused += 1
            log.warning("record refused for connection %s: %s", connection.id, exc)
            return
        if len(self.sessions) >= s.live.max_sessions:
            self.refused += 1
            why = (
                f"{len(self.sessions)} live stream(s) already running "
                f"(live.max_sessions = {s.live.max_sessions})"
            )
            log.warning("record refused for connection %s: %s", connection.id, why)
            self._spawn(
                send_record_end(
                    self.dataplane,
                    connection,
                    command.echo,
                    s.cloud_connection.thing_name,
                    f"refused: {why}",
                )
            )
            return
        size = live_size(s.live, self._camera_size())
        if self.tap.rotation in (90, 270):
            size = Resolution(size.height, size.width)
        session = LiveSession(
            connection,
            command.echo,
            self.tap,
            self.dataplane,
            target,
            size,
            s.live.fps,
            s.live.bitrate,
            s.cloud_connection.thing_name,
            self.limits,
            self.tap.rotation,
        )
        self.sessions[connection.id] = session
        self.started += 1

        async def run() -> None:
            try:
                await session.run()
            finally:
                self.sessions.pop(connection.id, None)
                if not self.sessions:
                    release_memory()  # glibc returns the freed encoder's heap

        self._spawn(run())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    async def close(self, within: float = END_WITHIN_S) -> None:
        """End every session (``record_end`` included) at daemon stop, waiting at most
        ``within`` seconds: a post that hangs is abandoned on its daemon thread."""
        for session in self.sessions.values():
            session.stop("the daemon stopped")
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=within)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=0.5)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("live session failed", exc_info=task.exception())
