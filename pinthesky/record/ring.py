"""The pre-event ring buffer: encoded H.264 packets kept in memory, whole GOPs at a time.

Sources push packets with ``push`` (or ``outputframe``, the signature of picamera2's
``Output.outputframe``; the picamera2 adapter forwards to it from a real ``Output`` subclass,
after turning the encoder's relative timestamps into sensor time). The recorder on the asyncio
loop reads from it by sequence number. A clip always starts on a keyframe, so the ring drops
whole groups of pictures from its front and never a packet a clip may still need.

A note on locking: ``push`` runs on a source thread (picamera2's encoder poll thread on a
Pi 0-4, its camera thread on a Pi 5, our replay or synthetic thread), every other method on the
event loop. One ``threading.Lock`` guards the deque, the keyframe index and the counters; it is
held only for list operations, never for I/O. ``on_first_packet`` runs on the source thread and
must only cross into the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pinthesky.media import US, Packet

log = logging.getLogger(__name__)


HARD_MAX_BYTES = 256 * 1024 * 1024
"""The most the ring ever holds, on a Pi with memory to spare."""


def byte_caps(mem_total: int | None) -> tuple[int, int]:
    """The ring's byte caps on a machine with ``mem_total`` bytes of memory: what it keeps of
    pre-roll (``max_bytes``), and what it holds at most while a clip writer falls behind
    (``hard_max_bytes``). An eighth of the memory at most: 54 MB on a Pi Zero (about 430 MB
    for Linux), where 256 MB would be more than half of it."""
    hard = HARD_MAX_BYTES if mem_total is None else min(HARD_MAX_BYTES, mem_total // 8)
    return hard // 2, hard


@dataclass(frozen=True, slots=True)
class RingStats:
    packets: int
    bytes: int
    seconds: float
    dropped_unread: int
    """Packets dropped while a clip still needed them (the clip writer fell too far behind)."""


class PacketRing:
    """A bounded buffer of the most recent packets, addressed by a growing sequence number.

    ``retain_us`` is how far back a clip may need to start (pre-roll plus detection latency);
    the ring keeps the keyframe at or before ``newest - retain_us`` and everything after it.
    ``max_bytes`` (``--buffer-size``) caps memory instead of, or as well as, time. While a clip
    is open the recorder *pins* the ring at the next packet it has not written yet, and nothing
    from there on is dropped, up to ``hard_max_bytes``.
    """

    def __init__(
        self,
        retain_us: int,
        max_bytes: int | None = None,
        hard_max_bytes: int = HARD_MAX_BYTES,
    ) -> None:
        self.retain_us = retain_us
        self.max_bytes = max_bytes
        self.hard_max_bytes = hard_max_bytes
        self._lock = threading.Lock()
        self._packets: deque[Packet] = deque()
        self._first_seq = 0  # sequence number of self._packets[0]
        self._keyframes: deque[int] = deque()  # sequence numbers of keyframes in the ring
        self._bytes = 0
        self._pin: int | None = None
        self._dropped_unread = 0
        self._shortened_logged = False
        self.on_first_packet: Callable[[], None] | None = None
        self.on_packet: Callable[[], None] | None = None
        """Called on the source thread after each packet while set (RTSP clients wait on it);
        like ``on_first_packet`` it must only cross into the loop with
        ``call_soon_threadsafe``."""

    # -- encoder thread -------------------------------------------------------------------

    def outputframe(
        self,
        frame: Any,
        keyframe: bool = True,
        timestamp: int | None = None,
        packet: Any = None,
        audio: bool = False,
    ) -> None:
        """picamera2's ``Output.outputframe`` signature; called on the source thread."""
        if audio or timestamp is None:
            return
        self.push(Packet(bytes(frame), bool(keyframe), int(timestamp)))

    def push(self, pkt: Packet) -> None:
        first = False
        with self._lock:
            if not self._packets and self._first_seq == 0:
                first = True
            if not self._packets and not pkt.keyframe:
                # Nothing decodable can start before the first keyframe: skip until one comes.
                return
            if pkt.keyframe:
                self._keyframes.append(self._first_seq + len(self._packets))
            self._packets.append(pkt)
            self._bytes += len(pkt.data)
            self._trim(pkt.ts)
        if first and self.on_first_packet is not None:
            self.on_first_packet()
        listener = self.on_packet
        if listener is not None:
            listener()

    def _trim(self, newest_ts: int) -> None:
        # Called with the lock held. Drop the oldest GOP while the next one still covers the
        # retention window (or the byte cap forces it), unless a pinned clip needs it.
        while len(self._keyframes) > 1:
            next_key = self._keyframes[1]
            next_ts = self._packets[next_key - self._first_seq].ts
            over_time = next_ts <= newest_ts - self.retain_us
            over_bytes = self.max_bytes is not None and self._bytes > self.max_bytes
            if not (over_time or over_bytes):
                return
            if self._pin is not None and self._pin < next_key:
                if self._bytes <= self.hard_max_bytes:
                    return
                self._dropped_unread += next_key - max(self._pin, self._first_seq)
                self._pin = next_key
            if over_bytes and not over_time and not self._shortened_logged:
                self._shortened_logged = True
                log.warning(
                    "the buffer's %d bytes (--buffer-size, or the memory this Pi can spare) "
                    "hold less than the %.1f s pre-roll: clips start later",
                    self.max_bytes,
                    self.retain_us / US,
                )
            self._drop_to(next_key)

    def _drop_to(self, seq: int) -> None:
        while self._first_seq < seq:
            self._bytes -= len(self._packets.popleft().data)
            self._first_seq += 1
        while self._keyframes and self._keyframes[0] < seq:
            self._keyframes.popleft()

    # -- event loop -----------------------------------------------------------------------

    def keyframe_before(self, ts: int) -> int | None:
        """Sequence number of the newest keyframe at or before ``ts`` (else the oldest one)."""
        with self._lock:
            if not self._keyframes:
                return None
            best = self._keyframes[0]
            for seq in self._keyframes:
                if self._packets[seq - self._first_seq].ts <= ts:
                    best = seq
                else:
                    break
            return best

    def read(self, from_seq: int, until_ts: int | None = None) -> tuple[list[Packet], int]:
        """Packets from ``from_seq`` on (up to and excluding ``until_ts``), and the next seq.

        If the ring already dropped ``from_seq`` the read starts at the oldest packet it has.
        """
        with self._lock:
            start = max(from_seq, self._first_seq)
            out: list[Packet] = []
            idx = start - self._first_seq
            while idx < len(self._packets):
                pkt = self._packets[idx]
                if until_ts is not None and pkt.ts >= until_ts:
                    break
                out.append(pkt)
                idx += 1
            return out, start + len(out)

    def packet_ts(self, seq: int) -> int | None:
        with self._lock:
            idx = seq - self._first_seq
            if 0 <= idx < len(self._packets):
                return self._packets[idx].ts
            return None

    def newest_ts(self) -> int | None:
        with self._lock:
            return self._packets[-1].ts if self._packets else None

    def pin(self, seq: int | None) -> None:
        """Keep every packet from ``seq`` on (``None`` releases the pin)."""
        with self._lock:
            self._pin = seq
            if seq is None and self._packets:
                self._trim(self._packets[-1].ts)

    def stats(self) -> RingStats:
        with self._lock:
            seconds = 0.0
            if self._packets:
                seconds = (self._packets[-1].ts - self._packets[0].ts) / US
            return RingStats(len(self._packets), self._bytes, seconds, self._dropped_unread)
