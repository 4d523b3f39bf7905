"""Typed events and the in-process bus that carries them between components.

Facts are named in the past tense (``ClipReady``). Subscriptions are explicit calls to
``subscribe`` with the event class, so ``grep ClipReady`` finds every producer and consumer.
Handlers run on the event loop, in subscription order; one that raises is logged and the
others still run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pinthesky.record.clips import ClipInfo

log = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class ClipReady:
    """A clip is complete on disk under its final name (the uploader's queue entry)."""

    clip: ClipInfo


@dataclass(frozen=True, slots=True)
class ImageReady:
    """A still is complete on disk in the capture directory (queued for upload)."""

    path: Path


@dataclass(frozen=True, slots=True)
class MotionClip:
    """A clip now holds motion: it started on motion, or motion began during a manual clip.

    ``clip`` is the clip's final path (it may not exist yet); ``start_epoch`` the epoch in its
    name; ``declared_epoch`` when the tracker confirmed the motion.
    """

    clip: Path
    start_epoch: int
    trigger: str
    declared_epoch: float


@dataclass(frozen=True, slots=True)
class PictureTaken:
    """The motion picture of ``clip`` is on disk at ``path`` (queued for upload)."""

    clip: Path
    path: Path


@dataclass(frozen=True, slots=True)
class MotionDetected:
    """Motion was confirmed (onset and confirmation as epoch seconds)."""

    onset_epoch: float
    declared_epoch: float


@dataclass(frozen=True, slots=True)
class MotionStopped:
    """The motion event is over: nothing moved for the post-roll (epoch seconds of the last
    frame with motion)."""

    last_seen_epoch: float


@dataclass(frozen=True, slots=True)
class SettingsChanged:
    """Settings were applied live (from the shadow, the page or Home Assistant): their key
    paths."""

    keys: frozenset[str]
    origin: str


class EventBus:
    """Publish/subscribe by event class, on the event loop."""

    def __init__(self) -> None:
        self._handlers: defaultdict[type[Any], list[Callable[[Any], None]]] = defaultdict(list)

    def subscribe(self, kind: type[E], handler: Callable[[E], None]) -> None:
        self._handlers[kind].append(handler)

    def publish(self, event: object) -> None:
        for handler in list(self._handlers[type(event)]):
            try:
                handler(event)
            except Exception:
                log.exception("handler %r failed on %s", handler, type(event).__name__)
