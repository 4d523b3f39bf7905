"""The recorder: decides when a clip starts and ends, and feeds it packets from the ring.

It is a small state machine on the event loop, driven by frame timestamps only:

* idle -> recording: motion started (the clip starts at the keyframe at or before the motion's
  onset minus the pre-roll) or a manual capture was asked for (pre-roll before "now").
* recording: every analysed frame, the packets buffered since the last one are appended.
  Motion keeps the clip open; the clip ends ``post_roll`` seconds after the last frame with
  motion, or at the end of a manual capture, whichever is later. A clip longer than
  ``max_clip`` is split on the next keyframe and recording goes on in a new clip.
* recording -> idle: the end time has been buffered; the clip is closed and renamed.

When a clip first holds motion the recorder says so with ``MotionClip`` (the alerts take the
motion picture then); the clip's facts (end, duration, peak score, its picture) are kept beside
it for the uploader.

All file work runs on one dedicated writer thread, in submission order, so the loop never
waits for the SD card. Finished clips are announced with ``ClipReady`` on the event bus.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pinthesky.media import US, Clock, Packet, StreamInfo
from pinthesky.record.bus import ClipReady, EventBus, MotionClip, PictureTaken
from pinthesky.record.clips import ClipInfo, ClipStore, ClipWriter
from pinthesky.record.motion import MotionEnded, MotionEvent, MotionSeen, MotionStarted
from pinthesky.record.ring import PacketRing
from pinthesky.settings import RecorderSettings, Window

log = logging.getLogger(__name__)
T = TypeVar("T")


def local_hour() -> int:
    return time.localtime().tm_hour


@dataclass(frozen=True)
class OpenClip:
    """The clip being recorded, as a manual capture asked for now would find it."""

    name: str
    trigger: str
    """What started it (``motion`` or ``manual``)."""
    triggers: tuple[str, ...]
    """Everything that asked for it so far, in order."""


@dataclass
class _Clip:
    writer: ClipWriter
    start_ts: int
    next_seq: int
    trigger: str
    has_motion: bool
    manual_until: int | None = None
    waiters: list[asyncio.Future[ClipInfo | None]] = field(default_factory=list)
    peak_score: float = 0.0
    """Most moving macroblocks in one analysed frame while the clip was open."""
    picture: str | None = None
    """File name of the clip's motion picture, once it is on disk."""
    triggers: list[str] = field(default_factory=list)
    """What asked for the clip, in order: its trigger, then motion or a manual capture that
    joined it while it was being recorded (kept in its facts when more than one)."""

    def __post_init__(self) -> None:
        if not self.triggers:
            self.triggers.append(self.trigger)

    def joined_by(self, trigger: str) -> None:
        if trigger not in self.triggers:
            self.triggers.append(trigger)


class Recorder:
    """Cuts clips out of the ring buffer. Runs on the event loop; I/O on its writer thread."""

    def __init__(
        self,
        settings: RecorderSettings,
        ring: PacketRing,
        store: ClipStore,
        info: StreamInfo,
        clock: Clock,
        bus: EventBus,
        window: Window | None = None,
        analysis_interval_us: int = 200_000,
        hour: Callable[[], int] = local_hour,
        armed: bool = True,
    ) -> None:
        self.settings = settings
        self.ring = ring
        self.store = store
        self.info = info
        self.clock = clock
        self.bus = bus
        self.window = window
        self.hour = hour
        self.armed = armed
        """Disarmed, motion starts no clip and never marks one as holding motion (so no
        motion picture, no alert); manual clips are recorded as asked."""
        self._pre_us = round(settings.pre_roll * US)
        self._post_us = round(settings.post_roll * US)
        self._max_us = round(settings.max_clip * US)
        # Motion began some time between the previous analysed frame and the first one that
        # saw it: start the pre-roll half an analysis interval earlier to cover that.
        self._onset_slack_us = analysis_interval_us // 2
        self._io = ThreadPoolExecutor(1, thread_name_prefix="clip-writer")
        self._pending: set[asyncio.Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clip: _Clip | None = None
        self._motion = False
        self._last_motion = 0
        self.clips_recorded = 0
        self.write_errors = 0
        self._window_logged: bool | None = None

    def update(self, settings: RecorderSettings, window: Window | None, armed: bool = True) -> None:
        """New timings, window and arming, live (the clip being recorded keeps going)."""
        self.settings = settings
        self.window = window
        if armed != self.armed:
            if armed:
                log.info("armed: motion is recorded")
            else:
                log.info("disarmed: motion is not recorded, manual clips and stills still are")
        self.armed = armed
        self._pre_us = round(settings.pre_roll * US)
        self._post_us = round(settings.post_roll * US)
        self._max_us = round(settings.max_clip * US)

    @property
    def recording(self) -> bool:
        return self._clip is not None

    @property
    def open_clip(self) -> OpenClip | None:
        """The clip being recorded, which a manual capture asked for now would extend."""
        clip = self._clip
        if clip is None:
            return None
        return OpenClip(clip.writer.final.name, clip.trigger, tuple(clip.triggers))

    # -- inputs ---------------------------------------------------------------------------

    def on_motion(self, events: list[MotionEvent], now_ts: int, blocks: float = 0.0) -> None:
        """Called for every analysed frame, with the tracker's events for it and its score
        (moving macroblocks)."""
        if self._clip is not None:
            self._clip.peak_score = max(self._clip.peak_score, blocks)
        for ev in events:
            if isinstance(ev, MotionStarted):
                self._motion = True
                self._last_motion = ev.declared
                if not self.armed:
                    log.debug("motion while disarmed: not recorded")
                elif self._clip is not None:
                    if not self._clip.has_motion:
                        self._clip.has_motion = True
                        self._clip.joined_by("motion")
                        self._announce_motion(self._clip, ev.declared)
                elif self._window_allows():
                    log.info(
                        "motion: confirmed %.1f s after it began", (ev.declared - ev.onset) / US
                    )
                    self._start(
                        "motion", ev.onset - self._onset_slack_us - self._pre_us, has_motion=True
                    )
                    if self._clip is not None:
                        self._clip.peak_score = blocks
                        self._announce_motion(self._clip, ev.declared)
            elif isinstance(ev, MotionSeen):
                self._last_motion = ev.ts
            elif isinstance(ev, MotionEnded):
                self._motion = False
                self._last_motion = ev.last_seen
        self.pump(now_ts)

    def capture(self, duration: float) -> asyncio.Future[ClipInfo | None]:
        """A manual clip: pre-roll plus ``duration`` seconds from now (trigger ``manual``).

        If a clip is already being recorded it is extended instead, and ``manual`` joins its
        triggers (``open_clip`` tells which clip that is). The future resolves with the clip
        once it is on disk.
        """
        fut: asyncio.Future[ClipInfo | None] = asyncio.get_running_loop().create_future()
        now = self.ring.newest_ts()
        if now is None:
            fut.set_result(None)
            return fut
        until = now + round(duration * US)
        if self._clip is None:
            self._start("manual", now - self._pre_us, has_motion=self._motion and self.armed)
            if self._clip is not None and self._motion and self.armed:
                self._clip.joined_by("motion")  # under way, outside the recording window
        if self._clip is None:
            fut.set_result(None)
            return fut
        clip = self._clip
        clip.manual_until = max(clip.manual_until or 0, until)
        clip.joined_by("manual")
        clip.waiters.append(fut)
        return fut

    # -- the state machine ----------------------------------------------------------------

    def _window_allows(self) -> bool:
        if self.window is None:
            return True
        inside = self.window.contains(self.hour())
        if inside != self._window_logged:
            self._window_logged = inside
            log.info(
                "recording window %s: motion recording %s",
                self.window,
                "on" if inside else "off until the window opens",
            )
        return inside

    def _start(self, trigger: str, from_ts: int, has_motion: bool) -> None:
        seq = self.ring.keyframe_before(from_ts)
        if seq is None:
            log.warning("no keyframe buffered yet: cannot start a %s clip", trigger)
            return
        start_ts = self.ring.packet_ts(seq)
        assert start_ts is not None
        epoch = int(self.clock.epoch(start_ts))
        writer = self.store.new_clip(epoch, self.info, trigger)
        self._clip = _Clip(writer, start_ts, seq, trigger, has_motion)
        self.ring.pin(seq)
        log.info(
            "recording %s clip %s from %.1f s before the trigger",
            trigger,
            writer.final.name,
            (from_ts + self._pre_us - start_ts) / US,
        )

    def _announce_motion(self, clip: _Clip, declared_ts: int) -> None:
        self.bus.publish(
            MotionClip(
                clip.writer.final,
                clip.writer.start_epoch,
                clip.trigger,
                self.clock.epoch(declared_ts),
            )
        )

    def picture_taken(self, taken: PictureTaken) -> None:
        """The motion picture of a clip is on disk: it goes into the clip's facts."""
        # The picture names the clip it was taken for; a clip already closed (the camera was
        # slower than the post-roll) goes without it in its facts.
        if self._clip is not None and self._clip.writer.final == taken.clip:
            self._clip.picture = taken.path.name

    def _end_ts(self, clip: _Clip) -> int | None:
        """When the clip ends; None while motion is still going on."""
        ends = []
        if clip.has_motion:
            if self._motion:
                return None
            ends.append(self._last_motion + self._post_us)
        if clip.manual_until is not None:
            ends.append(clip.manual_until)
        return max(ends) if ends else None

    def pump(self, now_ts: int) -> None:
        """Append what the ring holds to the open clip; close it when its end is buffered."""
        clip = self._clip
        while clip is not None:
            end = self._end_ts(clip)
            packets, next_seq = self.ring.read(clip.next_seq, until_ts=end)
            split = self._split_index(clip, packets)
            if split is not None:
                self._write(clip, packets[:split])
                clip.next_seq += split
                self._finish(clip)
                clip = self._continue(clip)
                continue
            self._write(clip, packets)
            clip.next_seq = next_seq
            self.ring.pin(next_seq)
            if end is not None and now_ts >= end:
                self._finish(clip)
                self._clip = None
                self.ring.pin(None)
            return

    def _split_index(self, clip: _Clip, packets: list[Packet]) -> int | None:
        for i, pkt in enumerate(packets):
            if pkt.keyframe and pkt.ts - clip.start_ts >= self._max_us and pkt.ts > clip.start_ts:
                return i
        return None

    def _continue(self, old: _Clip) -> _Clip:
        """The next part of a split clip starts on the keyframe where the last one stopped."""
        start_ts = self.ring.packet_ts(old.next_seq)
        assert start_ts is not None
        writer = self.store.new_clip(int(self.clock.epoch(start_ts)), self.info, old.trigger)
        clip = _Clip(
            writer,
            start_ts,
            old.next_seq,
            old.trigger,
            old.has_motion,
            old.manual_until,
            old.waiters,
            triggers=list(old.triggers),
        )
        old.waiters = []
        self._clip = clip
        log.info(
            "clip longer than %.0f s: continuing in %s", self.settings.max_clip, writer.final.name
        )
        return clip

    # -- I/O on the writer thread -----------------------------------------------------------

    def _submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        self._loop = asyncio.get_running_loop()
        fut = self._loop.run_in_executor(self._io, fn, *args)
        self._pending.add(fut)
        fut.add_done_callback(self._pending.discard)
        fut.add_done_callback(self._io_failed)
        return fut

    def _io_failed(self, fut: asyncio.Future[Any]) -> None:
        # On the loop: an unexpected error of the writer thread is one log line, never a
        # "Future exception was never retrieved" at garbage collection.
        if not fut.cancelled() and fut.exception() is not None:
            self.write_errors += 1
            log.error("clip writer: %r", fut.exception())

    def _announce(self, info: ClipInfo) -> None:
        # On the loop.
        self.clips_recorded += 1
        self.bus.publish(ClipReady(info))

    def _announce_parts(self, writer: ClipWriter) -> None:
        # Writer thread: clips the writer cut off because the disk was full.
        while writer.parts:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._announce, writer.parts.pop(0))

    def _write(self, clip: _Clip, packets: list[Packet]) -> None:
        if packets:
            self._submit(self._write_io, clip.writer, packets)

    def _write_io(self, writer: ClipWriter, packets: list[Packet]) -> None:
        # Writer thread. Room is made before writing (the oldest clips go first), so the
        # free-space floor holds while a clip grows.
        try:
            self.store.make_room(sum(len(p.data) for p in packets), f"room for {writer.final.name}")
            writer.write(packets)
        except OSError as exc:
            self.write_errors += 1
            log.error("writing %s failed: %s; freeing space and going on", writer.final.name, exc)
            self.store.enforce_quota()
        self._announce_parts(writer)

    def _finish(self, clip: _Clip) -> None:
        # A snapshot taken on the loop: the writer thread never sees the live _Clip.
        facts: dict[str, Any] = {"peak_score": round(clip.peak_score)}
        if clip.picture is not None:
            facts["picture"] = clip.picture
        if len(clip.triggers) > 1:
            facts["triggers"] = list(clip.triggers)
        fut = self._submit(self._finish_io, clip.writer, facts)
        waiters = clip.waiters

        def done(f: asyncio.Future[ClipInfo | None]) -> None:
            info = None if f.cancelled() or f.exception() else f.result()
            if info is not None:
                self._announce(info)
            for w in waiters:
                if not w.done():
                    w.set_result(info)

        fut.add_done_callback(done)

    def _finish_io(self, writer: ClipWriter, facts: dict[str, Any]) -> ClipInfo | None:
        # Writer thread.
        try:
            end = int(self.clock.epoch(writer.end_ts))
            info = writer.close({**facts, "end_time": end})
            self._announce_parts(writer)
        except Exception:
            # A clip we could not finish is still on disk under its temporary name and will
            # be salvaged at the next start; say so loudly now.
            self.write_errors += 1
            log.exception(
                "finishing %s failed; it will be salvaged at the next start", writer.final.name
            )
            return None
        if info is None:
            writer.abort()
            return None
        log.info(
            "clip %s ready: %.1f s, %d bytes, trigger %s",
            info.path.name,
            info.duration,
            info.size,
            info.trigger,
        )
        self.store.enforce_quota(keep=info.path)
        return info

    async def close(self) -> None:
        """Finish the open clip with everything buffered, and wait for the disk."""
        clip = self._clip
        newest = self.ring.newest_ts()
        if clip is not None and newest is not None:
            # End the clip at the newest buffered frame (or earlier, if it was due anyway).
            end = self._end_ts(clip)
            clip.manual_until = newest + 1 if end is None else min(end, newest + 1)
            clip.has_motion = False
            self.pump(newest + 1)
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
        self._io.shutdown(wait=True)
