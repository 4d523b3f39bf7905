"""A worker: one daemon thread that runs blocking calls in order, results back on the loop.

Live view encodes and posts on threads of its own, so that neither the event loop nor the
default executor (camera start and stop, stills, clip housekeeping) waits for it. The thread is
a daemon thread: a post stuck on the network must never hold up the process at exit (the
session has already given up on it by then).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Job = tuple[Callable[[], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


class Worker:
    """Runs submitted calls one after the other on its own thread."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn``; await the future for its result (or its exception). On the loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, fut, loop))
        return fut

    def close(self) -> None:
        """Let the thread end after the calls already queued; returns at once."""
        self._jobs.put(None)

    def _run(self) -> None:
        # The worker thread: crosses into the loop only with call_soon_threadsafe.
        while (job := self._jobs.get()) is not None:
            fn, fut, loop = job
            if fut.cancelled():
                continue
            try:
                outcome: tuple[Any, BaseException | None] = (fn(), None)
            except BaseException as exc:
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, fut, *outcome)


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)
