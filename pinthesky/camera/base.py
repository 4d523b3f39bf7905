"""The small interface every camera source implements, and the bridge into the event loop.

A source produces three things on its own thread(s): encoded H.264 packets, pushed straight
into the ring buffer (``PacketRing.outputframe``), small grayscale analysis frames, handed to
the loop through an ``AnalysisPort`` at the analysis rate, and, only while someone watches,
live pictures handed to the ``LiveTap`` at the live rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from pinthesky.errors import SourceError
from pinthesky.media import AnalysisFrame, RateGate, StreamInfo
from pinthesky.record.ring import PacketRing

if TYPE_CHECKING:
    from pinthesky.camera.overlay import Overlay
    from pinthesky.live.tap import LiveTap

log = logging.getLogger(__name__)


class Camera(Protocol):
    """A source of encoded video plus analysis frames. Every method may block: the daemon
    calls them through the executor."""

    name: str

    def open(self) -> StreamInfo:
        """Configure the device or file; raise ``SourceError`` with a one-line reason."""
        ...

    def start(self, ring: PacketRing, port: AnalysisPort, live: LiveTap | None = None) -> None:
        """Start producing on the source's own thread(s); returns at once. Live pictures go
        to ``live`` while it ``wants`` them."""
        ...

    def stop(self) -> None:
        """Stop producing and release the device; idempotent."""
        ...

    def capture_jpeg(self) -> bytes:
        """A JPEG still of the main stream, taken without stopping the video."""
        ...

    def set_overlay(self, overlay: Overlay) -> None:
        """Burn ``overlay`` (privacy masks, the timestamp) into every frame from the next one
        on, before anything sees it; may be called at any time, on the loop."""
        ...


class AnalysisPort:
    """Hands analysis frames from a source thread to a handler on the event loop.

    Thread contract: ``due``, ``submit``, ``finished`` and ``failed`` are called on the source's
    thread; the handlers run on the loop, reached only through ``call_soon_threadsafe``.

    A live camera must never wait for the loop, so with ``lossless=False`` a frame that arrives
    while the previous one is still queued is dropped and counted. A replayed file can always
    wait, so with ``lossless=True`` the source blocks until the loop has analysed the frame:
    the same frames get analysed at any replay speed, which keeps clips identical.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        handler: Callable[[AnalysisFrame], None],
        analysis_fps: float,
        frame_period_us: int,
        lossless: bool,
        on_end: Callable[[BaseException | None], None],
    ) -> None:
        self._loop = loop
        self._handler = handler
        self._on_end = on_end
        self._gate = RateGate(analysis_fps, frame_period_us)
        self.interval_us = self._gate.interval_us
        self.lossless = lossless
        self._free = threading.Semaphore(1)
        self._closed = threading.Event()
        self.dropped = 0
        self.delivered = 0

    # -- source thread --------------------------------------------------------------------

    def due(self, ts: int) -> bool:
        """Whether a frame stamped ``ts`` should be analysed (keeps the analysis rate)."""
        return self._gate.due(ts)

    def submit(self, frame: AnalysisFrame) -> None:
        if self._closed.is_set():
            return
        if self.lossless:
            if not self._wait_free():
                return
        elif not self._free.acquire(blocking=False):
            self.dropped += 1
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, frame)
        except RuntimeError:  # loop already closed: the daemon is exiting
            self._closed.set()

    def _wait_free(self) -> bool:
        """Wait for the loop to take the previous frame; False if the port closed meanwhile.

        Wakes up now and then so a stopping daemon never leaves the source thread blocked.
        """
        while not self._free.acquire(timeout=0.2):
            if self._closed.is_set():
                return False
        return True

    def finished(self) -> None:
        """The source ran out (end of a replayed file)."""
        self._end(None)

    def failed(self, exc: BaseException) -> None:
        """The source died; the daemon decides whether to retry or exit."""
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        if self._closed.is_set():
            return
        # Deliver the end only after the last frame was analysed.
        if self.lossless and not self._wait_free():
            return
        with contextlib.suppress(RuntimeError):  # loop already closed: nobody to tell
            self._loop.call_soon_threadsafe(self._finish, exc)

    # -- event loop -----------------------------------------------------------------------

    def _deliver(self, frame: AnalysisFrame) -> None:
        try:
            if not self._closed.is_set():
                self.delivered += 1
                self._handler(frame)
        finally:
            self._free.release()

    def _finish(self, exc: BaseException | None) -> None:
        if self.lossless:
            self._free.release()
        if not self._closed.is_set():
            self._closed.set()
            self._on_end(exc)

    def close(self) -> None:
        """Stop accepting frames (called on the loop at shutdown)."""
        self._closed.set()


def open_error(what: str, exc: BaseException) -> SourceError:
    """One line naming what could not be opened and why."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return SourceError(f"{what}: {reason}")
