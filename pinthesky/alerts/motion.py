"""``motion_start``: a picture of the motion in S3, then the event, seconds after motion began.

When a clip first holds motion (``MotionClip`` from the recorder) a JPEG is taken from the
running camera (the still path every ``capture_image`` uses) and kept beside the clip as
``{start_epoch}.motion.jpg``: the clip's thumbnail, and the first entry of the upload queue.
Once S3 has it, ``motion_start`` goes to the event output with the picture's bucket and key.
Without a bucket the event goes out at once, without ``image``; when S3 does not take the
picture (down, refused, or slower than ``UPLOAD_WAIT_S``; while uploads are failing it does
not wait at all) the event goes out without it too, and the picture stays queued: it follows
with the clip, whose metadata names its key.

The cooldown limits events only: every motion clip gets its picture. It is measured on the
motion's own time (frame timestamps), so a replayed file alerts the same at any speed.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pinthesky.cloud.uploader import Target, UploadEnded, UploadFailed
from pinthesky.eventfiles import write_atomically
from pinthesky.record.bus import EventBus, MotionClip, PictureTaken
from pinthesky.record.clips import picture_path
from pinthesky.settings import AlertSettings

log = logging.getLogger(__name__)

UPLOAD_WAIT_S = 20.0
"""Longest the event waits for its picture to reach S3 before it goes out without it."""


class MotionAlerts:
    """Takes the motion picture and sends ``motion_start``. Runs on the loop; the camera and
    the disk are used from worker threads."""

    def __init__(
        self,
        bus: EventBus,
        capture: Callable[[], bytes],
        emit: Callable[..., object],
        settings: Callable[[], AlertSettings],
        target: Callable[[], Target | None],
        wait_s: float = UPLOAD_WAIT_S,
    ) -> None:
        self._capture = capture
        self._emit = emit
        self._settings = settings
        self._target = target
        self.wait_s = wait_s
        self._bus = bus
        self._last_sent = -math.inf
        self._waiting: dict[str, asyncio.Future[UploadEnded | UploadFailed]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.held_back = 0
        self.pictures = 0
        bus.subscribe(MotionClip, self.on_motion_clip)
        bus.subscribe(UploadEnded, self._on_upload)
        bus.subscribe(UploadFailed, self._on_upload)

    def on_motion_clip(self, ev: MotionClip) -> None:
        cooldown = self._settings().cooldown
        send = ev.declared_epoch - self._last_sent >= cooldown
        if send:
            self._last_sent = ev.declared_epoch
        else:
            self.held_back += 1
            log.info(
                "motion_start for %s held back: %.0f s since the last one (cooldown %.0f s)",
                ev.clip.name,
                ev.declared_epoch - self._last_sent,
                cooldown,
            )
        task = asyncio.get_running_loop().create_task(self._picture_then_event(ev, send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _picture_then_event(self, ev: MotionClip, send: bool) -> None:
        target = self._target()
        path: Path | None = picture_path(ev.clip)
        assert path is not None
        waiter = None
        try:
            jpeg = await asyncio.to_thread(self._capture)
            await asyncio.to_thread(write_atomically, path, jpeg, 0o644)
        except Exception as exc:
            # Whatever the camera or the card did, the alert still goes out (without image).
            log.error("motion picture for %s failed: %s", ev.clip.name, exc)
            path = None
        else:
            self.pictures += 1
            if send and target is not None:
                # Listening before the uploader hears of the picture: its answer cannot be missed.
                waiter = asyncio.get_running_loop().create_future()
                self._waiting[path.name] = waiter
            self._bus.publish(PictureTaken(ev.clip, path))
        if not send:
            return
        fields: dict[str, Any] = {"start_time": ev.start_epoch, "trigger": ev.trigger}
        if waiter is not None and path is not None and target is not None:
            try:
                outcome = await asyncio.wait_for(waiter, self.wait_s)
            except TimeoutError:
                outcome = UploadFailed(path.name, f"not in S3 after {self.wait_s:.0f} s")
            finally:
                self._waiting.pop(path.name, None)
            if isinstance(outcome, UploadEnded):
                fields["image"] = {"bucket_name": outcome.bucket, "bucket_key": outcome.key}
            else:
                log.warning(
                    "motion_start without its picture (%s): the picture follows with the clip",
                    outcome.reason,
                )
        self._emit("motion_start", **fields)
        self.sent += 1

    def _on_upload(self, outcome: UploadEnded | UploadFailed) -> None:
        waiter = self._waiting.get(outcome.name)
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop: alerts under way get ``grace_s`` to go out (the uploader still runs); then
        they are dropped (their pictures stay queued)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
