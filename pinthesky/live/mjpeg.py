"""One JPEG encoder for every viewer of the local page's ``/stream.mjpg``.

The first viewer starts a producer task: it subscribes to the tap, encodes each picture once
on its worker thread (or takes the camera's own JPEGs when the camera makes them) and offers the
JPEG to every viewer. A viewer keeps only the newest JPEG it has not sent yet, so a slow
network connection skips pictures instead of growing a queue or slowing the others down. The
last viewer to leave stops the producer, and with it the tap's pictures. Everything here runs
on the loop; only the encoding runs on the worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from pinthesky.live.encoders import EncodeError, JpegEncoder
from pinthesky.live.tap import JPEG, YUV420, Feed, LiveTap
from pinthesky.live.worker import Worker
from pinthesky.media import release_memory

log = logging.getLogger(__name__)

RECHECK_S = 1.0
"""Seconds without a picture after which the producer checks which kind to subscribe to (a
restarted camera may start or stop making JPEG itself)."""
RETRY_S = 1.0


class Viewer:
    """One viewer: the newest JPEG not sent yet."""

    def __init__(self) -> None:
        self._jpeg: bytes | None = None
        self._ready = asyncio.Event()
        self.closed = False
        self.sent = 0
        self.skipped = 0

    def offer(self, jpeg: bytes) -> None:
        if self._jpeg is not None:
            self.skipped += 1
        self._jpeg = jpeg
        self._ready.set()

    async def next(self, within: float | None = None) -> bytes | None:
        """The next JPEG to send; None after ``within`` seconds or once the stream closed."""
        while self._jpeg is None and not self.closed:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), within)
            except TimeoutError:
                return None
        jpeg, self._jpeg = self._jpeg, None
        if jpeg is not None:
            self.sent += 1
        return jpeg

    def close(self) -> None:
        self.closed = True
        self._ready.set()


class MjpegBroadcaster:
    """Shares one JPEG producer between at most ``max_viewers`` viewers (on the loop)."""

    def __init__(self, tap: LiveTap, max_viewers: int) -> None:
        self.tap = tap
        self.max_viewers = max_viewers
        self._viewers: list[Viewer] = []
        self._producer: asyncio.Task[None] | None = None
        self.encoded = 0
        """JPEGs our encoder made (one per picture, whatever the number of viewers)."""
        self.forwarded = 0
        """JPEGs the camera made itself and we passed on."""

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def join(self) -> Viewer | None:
        """A new viewer; None when ``max_viewers`` already watch."""
        if len(self._viewers) >= self.max_viewers:
            return None
        viewer = Viewer()
        self._viewers.append(viewer)
        if self._producer is None or self._producer.done():
            self._producer = asyncio.get_running_loop().create_task(
                self._produce(), name="mjpeg-producer"
            )
            # Once the producer and its encoder are gone, glibc returns their heap.
            self._producer.add_done_callback(lambda _: release_memory())
            log.info("live view: first MJPEG viewer, pictures at %d fps", self.tap.fps)
        return viewer

    def leave(self, viewer: Viewer) -> None:
        viewer.close()
        if viewer in self._viewers:
            self._viewers.remove(viewer)
        if not self._viewers and self._producer is not None:
            self._producer.cancel()
            self._producer = None
            log.info("live view: no MJPEG viewer left")

    async def close(self) -> None:
        for viewer in list(self._viewers):
            viewer.close()
        self._viewers.clear()
        if self._producer is not None:
            self._producer.cancel()
            await asyncio.gather(self._producer, return_exceptions=True)
            self._producer = None

    async def _produce(self) -> None:
        # Supervised here: a failure is logged and the producer starts over, the viewers stay.
        while self._viewers:
            try:
                await self._produce_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live view: the MJPEG producer failed; starting it again")
                await asyncio.sleep(RETRY_S)

    async def _produce_once(self) -> None:
        worker = Worker("mjpeg-encoder")
        feed: Feed | None = None
        encoder: JpegEncoder | None = None
        errors: set[str] = set()
        try:
            while self._viewers:
                kind = JPEG if self.tap.native_jpeg else YUV420
                if feed is None or feed.kind != kind:
                    if feed is not None:
                        feed.close()
                    feed = self.tap.subscribe(kind)
                picture = await feed.get(RECHECK_S)
                if picture is None:
                    continue
                if kind == JPEG:
                    jpeg = bytes(picture.data)
                    self.forwarded += 1
                else:
                    size, turned = self.tap.view_size, self.tap.rotation
                    if encoder is None or (encoder.width, encoder.height, encoder.rotation) != (
                        *size,
                        turned,
                    ):
                        encoder = await worker.run(partial(JpegEncoder, *size, turned))
                    try:
                        jpeg = await worker.run(partial(encoder.encode, picture))
                    except EncodeError as exc:
                        if str(exc) not in errors:  # one line per distinct error
                            errors.add(str(exc))
                            log.warning("live view: a picture could not be encoded: %s", exc)
                        continue
                    self.encoded += 1
                for viewer in self._viewers:
                    viewer.offer(jpeg)
        finally:
            if feed is not None:
                feed.close()
            worker.close()
