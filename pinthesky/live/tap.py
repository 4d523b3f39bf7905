"""The live tap: pictures from the camera thread to the live consumers on the event loop.

A source asks ``wants`` and ``due`` for every frame and, only when both say yes, makes a picture
and ``offer``s it: while nobody watches, the camera thread copies nothing. Each consumer holds a
``Feed``, a slot for one picture: a newer picture replaces one not yet taken (counted as
dropped), so a slow consumer costs the camera nothing and memory stays at one picture per
consumer. Pictures are YUV420 (I420, the layout PyAV's ``yuv420p`` takes: a ``(h * 3 // 2, w)``
uint8 array, Y then U then V), or JPEG bytes from a camera that encodes JPEG itself.

A note on threads: ``wants``, ``due`` and ``offer`` run on the source's thread (picamera2's
camera or encoder thread, the replay or synthetic thread); ``subscribe``, ``Feed.get``,
``Feed.close`` and ``reset`` run on the loop. The set of feeds is an immutable tuple replaced
under ``_lock`` by the loop, so the camera thread reads it without locking. A feed's slot has
its own lock, held only to swap one reference; the camera thread wakes the loop with
``call_soon_threadsafe``, at most once per picture taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass
from typing import Any

from pinthesky.media import US, RateGate
from pinthesky.settings import Resolution

YUV420 = "yuv420"
JPEG = "jpeg"
KINDS = (YUV420, JPEG)


@dataclass(frozen=True, slots=True)
class Picture:
    """One live picture. Shared by every consumer of its kind: never modified."""

    kind: str
    data: Any
    """I420 ``numpy`` array of shape ``(height * 3 // 2, width)`` for YUV420; bytes for JPEG."""
    width: int
    height: int
    ts: int
    """Sensor timestamp, microseconds."""


class Feed:
    """One consumer's slot in the tap."""

    def __init__(self, tap: LiveTap, kind: str, loop: asyncio.AbstractEventLoop) -> None:
        self.kind = kind
        self._tap = tap
        self._loop = loop
        self._lock = threading.Lock()
        self._picture: Picture | None = None
        self._wake_pending = False
        self._ready = asyncio.Event()
        self.closed = False
        self.taken = 0
        self.dropped = 0

    # -- source thread ----------------------------------------------------------------------

    def put(self, picture: Picture) -> None:
        with self._lock:
            if self._picture is not None:
                self.dropped += 1
            self._picture = picture
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: the daemon is exiting
            self._loop.call_soon_threadsafe(self._wake)

    # -- event loop ---------------------------------------------------------------------------

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._ready.set()

    async def get(self, within: float | None = None) -> Picture | None:
        """The newest picture not taken yet; None after ``within`` seconds or once closed."""
        while not self.closed:
            with self._lock:
                picture, self._picture = self._picture, None
                if picture is None:
                    self._ready.clear()
            if picture is not None:
                self.taken += 1
                return picture
            try:
                await asyncio.wait_for(self._ready.wait(), within)
            except TimeoutError:
                return None
        return None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._tap._remove(self)
            self._ready.set()


class LiveTap:
    """Where sources hand live pictures over; lives as long as the daemon (across camera
    restarts)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fps: int) -> None:
        self._loop = loop
        self.fps = fps
        self.size = Resolution(640, 480)
        """The live size: sources that can make pictures of any size make them this size."""
        self.native_jpeg = False
        """Set by a source whose camera encodes JPEG itself (picamera2 on a Pi 0-4)."""
        self.rotation = 0
        """Clockwise turn people see the pictures with, where the camera cannot turn them itself
        (the clips carry it as a display rotation; live pictures are turned by the encoders)."""
        self._lock = threading.Lock()
        self._feeds: dict[str, tuple[Feed, ...]] = {kind: () for kind in KINDS}
        self._gate = RateGate(fps, US // 20)
        self.offered = 0

    def reset(self, size: Resolution, frame_period_us: int, rotation: int = 0) -> None:
        """A (re)started camera: its frame period, the live size and the rotation to show its
        pictures with (on the loop, before the source starts)."""
        self.size = size
        self.rotation = rotation
        self.native_jpeg = False
        self._gate = RateGate(self.fps, frame_period_us)

    @property
    def view_size(self) -> Resolution:
        """The live size as people see it (turned by a quarter when the rotation says so)."""
        if self.rotation in (90, 270):
            return Resolution(self.size.height, self.size.width)
        return self.size

    # -- event loop ---------------------------------------------------------------------------

    def subscribe(self, kind: str) -> Feed:
        if kind not in KINDS:
            raise ValueError(f"no such picture kind: {kind}")
        feed = Feed(self, kind, self._loop)
        with self._lock:
            self._feeds[kind] = (*self._feeds[kind], feed)
        return feed

    def _remove(self, feed: Feed) -> None:
        with self._lock:
            self._feeds[feed.kind] = tuple(f for f in self._feeds[feed.kind] if f is not feed)

    def consumers(self, kind: str) -> int:
        return len(self._feeds[kind])

    # -- source thread ------------------------------------------------------------------------

    def wants(self, kind: str) -> bool:
        """Whether anyone consumes pictures of ``kind`` now (one dictionary read)."""
        return bool(self._feeds[kind])

    def due(self, ts: int) -> bool:
        """Whether the frame stamped ``ts`` keeps the live rate (YUV pictures: one source
        thread at a time calls this)."""
        return self._gate.due(ts)

    def offer(self, picture: Picture) -> None:
        """Hand a picture to every consumer of its kind; never blocks."""
        self.offered += 1
        for feed in self._feeds[picture.kind]:
            feed.put(picture)


def turn(picture: Picture, rotation: int) -> Picture:
    """A YUV420 picture turned clockwise by ``rotation`` degrees (copies; worker thread)."""
    import numpy as np

    turns = (rotation // 90) % 4
    if not turns:
        return picture
    w, h = picture.width, picture.height
    chroma = picture.data[h:].reshape(-1)
    n = (h // 2) * (w // 2)
    planes = (
        picture.data[:h],
        chroma[:n].reshape(h // 2, w // 2),
        chroma[n : 2 * n].reshape(h // 2, w // 2),
    )
    y, u, v = (np.rot90(plane, k=-turns) for plane in planes)
    return Picture(picture.kind, i420(y, u, v), y.shape[1], y.shape[0], picture.ts)


def i420(y: Any, u: Any, v: Any) -> Any:
    """One contiguous I420 array from the three planes (copies them)."""
    import numpy as np

    h, w = y.shape
    out = np.empty((h * 3 // 2, w), np.uint8)
    out[:h] = y
    flat = out[h:].reshape(-1)
    n = (h // 2) * (w // 2)
    flat[:n] = u.reshape(-1)
    flat[n : 2 * n] = v.reshape(-1)
    return out
