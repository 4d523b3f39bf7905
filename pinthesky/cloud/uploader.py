"""Uploads clips and stills to S3, and never loses one.

The clip and capture directories are the queue: a finished clip or still is already on disk
under its final name (fsynced, renamed) when it is announced, so the queue is durable and a
restart resumes from the directory listing. One task drains it, motion pictures first (the
motion alert waits for them), then stills (someone is waiting for them), then clips oldest
first. Each clip carries its facts as S3 user metadata (trigger, start and end time, duration,
peak score, its picture's key). A file is deleted only after S3 accepted the
object; the key is derived from the file, so an upload interrupted by a crash is redone under
the same key, never duplicated. Failures retry without limit, with capped exponential backoff
and jitter; a broken device identity (401/403, unknown CA) is logged loudly and retried slowly.

Every file is opened without following links (``eventfiles.open_ours``) and uploaded from
that descriptor, so a link planted in the queue, or swapped in after the listing, is never
read. The S3 calls block, so each runs on its own daemon thread, and s3transfer runs the
upload in that thread too (no worker threads, which Python would wait for at exit). Between
chunks the upload checks whether to go on: a stopping daemon gives it up at once (the file
stays queued and is redone at the next start), and so does a clip deleted meanwhile (from the
page): a clip deleted before it reached the bucket never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import random
import stat
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pinthesky.errors import PintheskyError
from pinthesky.eventfiles import NotOurFile, open_ours
from pinthesky.logs import Throttle
from pinthesky.record.clips import ClipStore, picture_epoch
from pinthesky.record.mp4 import to_annexb

log = logging.getLogger(__name__)
T = TypeVar("T")

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
"""Retries never wait longer than five minutes (as AWS's stream manager)."""
IDENTITY_BACKOFF_S = 120.0
"""Least wait after a 401/403: retrying a refused identity quickly only fills the logs."""
MULTIPART_BYTES = 16 * 1024 * 1024

_IDENTITY_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "Forbidden",
    "403",
    "401",
}


@dataclass(frozen=True, slots=True)
class UploadEnded:
    """A clip or still is in S3 (the commands issue turns this into ``upload_end``)."""

    kind: str
    """``video`` or ``image``."""
    name: str
    """Local file name (gone now)."""
    bucket: str
    key: str
    start_time: int
    """Epoch seconds the clip started (the still was taken)."""
    trigger: str | None
    end_time: int | None = None
    duration: float | None = None
    """Seconds of video in the clip (clips only)."""
    peak_score: int | None = None
    """Most moving macroblocks in one frame of the clip."""
    image_key: str | None = None
    """S3 key of the clip's motion picture."""
    triggers: str | None = None
    """Everything that asked for the clip, in order, when more than its ``trigger`` did
    (``motion,manual``: a manual capture joined a motion clip being recorded). ``trigger``
    stays the first of them, one of the contract's two values."""

    def facts(self) -> dict[str, Any]:
        """The clip's facts that are known, as ``upload_end`` and S3 metadata name them."""
        facts = {
            "end_time": self.end_time,
            "duration": self.duration,
            "peak_score": self.peak_score,
            "image_key": self.image_key,
            "triggers": self.triggers,
        }
        return {k: v for k, v in facts.items() if v is not None}


@dataclass(frozen=True, slots=True)
class UploadFailed:
    """An upload attempt failed; the file stays queued and is retried (after a backoff)."""

    name: str
    reason: str


class _Watch:
    """An s3transfer subscriber that ends a transfer the daemon no longer wants. s3transfer
    calls ``on_progress`` in the upload thread after each chunk it reads; cancelling the
    transfer there makes its next read fail, and s3transfer cleans up (a multipart upload is
    aborted, its files closed)."""

    def __init__(self, reason: Callable[[], str | None]) -> None:
        self._reason = reason
        self.why: str | None = None

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        if self.why is None:
            self.why = self._reason()
            if self.why is not None:
                future.cancel()


class UploadError(PintheskyError):
    """One upload failed; ``identity`` when the device's credentials were refused."""

    def __init__(self, message: str, identity: bool = False) -> None:
        super().__init__(message)
        self.identity = identity


def backoff(failures: int, identity: bool, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``failures`` failures in a row: exponential, capped, jittered."""
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(failures - 1, 20))
    if identity:
        ceiling = max(ceiling, IDENTITY_BACKOFF_S)
    # "Equal jitter": at least half the ceiling, so waits still grow, yet uploads from many
    # cameras after a shared outage do not all come back at the same second.
    return float(ceiling / 2 + rand() * ceiling / 2)


def in_thread(fn: Callable[[], T]) -> Awaitable[T]:
    """Run a blocking call on a daemon thread; the result comes back on the loop."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        # The upload thread: crosses back into the loop only with call_soon_threadsafe.
        try:
            result = fn()
        except BaseException as exc:
            outcome: tuple[T | None, BaseException | None] = (None, exc)
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # the loop closed: the daemon stopped
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="s3-upload", daemon=True).start()
    return fut


@dataclass(frozen=True)
class Target:
    bucket: str
    thing: str
    video_prefix: str
    image_prefix: str
    video_format: str


class Uploader:
    """Drains the clip and capture directories into S3. Runs as one task on the loop."""

    def __init__(
        self,
        target: Target,
        store: ClipStore,
        capture_dir: Path,
        make_client: Callable[[], Any],
        publish: Callable[[UploadEnded | UploadFailed], None],
    ) -> None:
        self.target = target
        self.store = store
        self.capture_dir = capture_dir
        self._make_client = make_client
        self._publish = publish
        self._wake = asyncio.Event()
        self._client: Any = None
        self.failures = 0
        """Failed uploads in a row (the backoff)."""
        self.uploaded = {"video": 0, "image": 0}
        self.failed = 0
        self.bytes_uploaded = 0
        self.seconds = 0.0
        """Time spent uploading, failures included."""
        self.idle = asyncio.Event()
        self._stopping = threading.Event()
        """Set on the loop when the task is cancelled; read by the upload thread."""
        self._refused: set[str] = set()
        """Names in the queue that are not ours (hard links, special files): skipped."""
        self._throttle = Throttle(log, burst=5, window=60.0)
        """Lines about what was planted in the queue: a few a minute, however much is."""
        self.given_up = 0
        """Uploads given up because their file was deleted meanwhile."""

    def notify(self) -> None:
        """Something new is queued (called on the loop)."""
        self._wake.set()

    def pending(self) -> list[Path]:
        """The queue, in upload order: motion pictures, stills, then clips oldest first."""
        stills: list[Path] = []
        if self.capture_dir.is_dir():
            stills = sorted(
                (
                    p
                    for p in self.capture_dir.iterdir()
                    if _regular(p) and not p.name.startswith(".")
                ),
                key=_mtime,
            )
        queue = self.store.pictures() + stills + self.store.clips()
        return [p for p in queue if p.name not in self._refused]

    async def run(self) -> None:
        log.info(
            "uploading to s3://%s/%s/%s/ (%s)",
            self.target.bucket,
            self.target.video_prefix,
            self.target.thing,
            self.target.video_format,
        )
        try:
            # boto3 is imported and the client built now, not on the first upload: the first
            # motion picture must not wait for it (seconds on a Pi Zero).
            await in_thread(self._warm_client)
        except Exception as exc:  # the first upload builds it again and says why
            log.debug("S3 client not ready yet: %s", exc)
        try:
            await self._drain()
        except asyncio.CancelledError:
            # The daemon stops, or uploads are set up anew: the upload under way gives up at
            # its next chunk, and its file stays queued for the next start.
            self._stopping.set()
            raise

    async def _drain(self) -> None:
        while True:
            self._wake.clear()
            queue = await asyncio.to_thread(self.pending)
            if not queue:
                self.idle.set()
                await self._wake.wait()
                continue
            self.idle.clear()
            item = queue[0]
            started = time.monotonic()
            try:
                ended = await in_thread(lambda item=item: self._guarded(item))  # type: ignore[misc]
            except UploadError as exc:
                self.seconds += time.monotonic() - started
                self.failures += 1
                self.failed += 1
                delay = backoff(self.failures, exc.identity)
                level = logging.ERROR if exc.identity or self.failures == 1 else logging.WARNING
                log.log(
                    level,
                    "upload of %s failed (%d in a row): %s; retrying in %.0f s",
                    item.name,
                    self.failures,
                    exc,
                    delay,
                )
                self._publish(UploadFailed(item.name, str(exc)))
                await self._wait(delay)
                continue
            self.seconds += time.monotonic() - started
            if ended is None:
                continue  # the file went away (evicted) meanwhile
            self.failures = 0
            self.uploaded[ended.kind] += 1
            self._publish(ended)

    async def _wait(self, seconds: float) -> None:
        # New work does not cut a backoff short: the network is what failed.
        await asyncio.sleep(seconds)

    # -- the upload thread ------------------------------------------------------------------

    def _warm_client(self) -> None:
        client = self._make_client()
        if self._client is None:  # one set meanwhile (a test's stand-in) is kept
            self._client = client

    def _client_or_new(self) -> Any:
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def _guarded(self, path: Path) -> UploadEnded | None:
        try:
            return self._upload(path)
        except UploadError:
            raise
        except Exception as exc:
            # Whatever it is, the file stays queued and is tried again later; the uploader
            # itself must not die (that would stop every later upload).
            log.exception("unexpected failure uploading %s", path.name)
            raise UploadError(f"{path.name}: {type(exc).__name__}: {exc}") from None

    def _upload(self, path: Path) -> UploadEnded | None:
        try:
            fd = open_ours(path)
        except FileNotFoundError:
            return None  # evicted or deleted since the listing
        except NotOurFile as exc:
            # Planted under one of our names (a link swapped in since the listing, a hard
            # link, a FIFO): never read, and skipped from now on.
            self._refused.add(path.name)
            self._throttle(
                logging.ERROR, "%s in the upload queue is %s: not uploaded", path, exc.strerror
            )
            return None
        try:
            return self._upload_file(path, fd)
        finally:
            os.close(fd)

    def _upload_file(self, path: Path, fd: int) -> UploadEnded | None:
        if path.parent == self.capture_dir:
            start = int(os.fstat(fd).st_mtime)
            return self._put(path, fd, fd, "image", self.target.image_prefix, path.name, start)
        stem = path.name.split(".")[0]
        epoch = picture_epoch(path)
        if path.parent == self.store.directory and epoch is not None:
            prefix = self.target.image_prefix
            return self._put(path, fd, fd, "image", prefix, path.name, epoch, "motion")
        meta = self.store.meta(path)
        trigger = meta.get("trigger", "motion")
        start = int(meta.get("start_epoch", stem.split("-")[0]))
        facts = self._facts(meta)
        ext = self.target.video_format if path.suffix == ".mp4" else "h264"
        body, remuxed = fd, None
        if ext == "h264" and path.suffix == ".mp4":
            remuxed = path.with_name(f".{path.name}.upload.h264")
            try:
                body = _remux_to_annexb(fd, remuxed)
            except (ValueError, IndexError, struct.error) as exc:
                # Never let one damaged clip block the queue: send the MP4 itself.
                log.error(
                    "%s cannot be remuxed to H.264 (%s): uploading the MP4 as it is", path.name, exc
                )
                remuxed.unlink(missing_ok=True)
                body, remuxed, ext = fd, None, "mp4"
            except OSError as exc:
                remuxed.unlink(missing_ok=True)
                raise UploadError(f"{path.name}: cannot remux: {exc}") from None
        key_name = f"{stem}.motion.{ext}"
        try:
            prefix = self.target.video_prefix
            return self._put(path, fd, body, "video", prefix, key_name, start, trigger, facts)
        finally:
            if remuxed is not None:
                os.close(body)
                remuxed.unlink(missing_ok=True)

    def _put(
        self,
        path: Path,
        fd: int,
        body: int,
        kind: str,
        prefix: str,
        name: str,
        start: int,
        trigger: str | None = None,
        facts: dict[str, Any] | None = None,
    ) -> UploadEnded | None:
        """Upload ``body`` (a descriptor: the file ``fd`` of ``path``, or its remux)."""
        from boto3.exceptions import S3UploadFailedError
        from boto3.s3.transfer import TransferConfig, create_transfer_manager
        from botocore.exceptions import BotoCoreError, ClientError
        from s3transfer.exceptions import CancelledError as TransferCancelled

        key = f"{prefix}/{self.target.thing}/{name}"
        extra: dict[str, Any] = {
            "ContentType": "image/jpeg"
            if kind == "image"
            else "video/mp4"
            if name.endswith(".mp4")
            else "video/h264"
        }
        if trigger is not None:
            extra["Metadata"] = {"trigger": trigger}
            if facts is not None:
                # S3 user metadata is text; the start time goes along so an object listing
                # alone tells when each clip was.
                extra["Metadata"].update(
                    {"start_time": str(start)} | {k: str(v) for k, v in facts.items()}
                )
        config = TransferConfig(
            multipart_threshold=MULTIPART_BYTES,
            multipart_chunksize=8 * 1024 * 1024,
            use_threads=False,  # in this daemon thread: a stop never waits for the upload
        )

        def unwanted() -> str | None:
            # The upload thread, after each chunk: give up when the daemon stops or the
            # file was deleted (from the page) since the upload began.
            if self._stopping.is_set():
                return "the daemon stops"
            return "deleted" if os.fstat(fd).st_nlink == 0 else None

        watch = _Watch(unwanted)
        size = os.fstat(body).st_size
        try:
            with create_transfer_manager(self._client_or_new(), config) as transfers:
                # s3transfer opens the file by name for each part: /proc/self/fd/N names the
                # file already opened (never a link swapped in under its name since).
                transfers.upload(
                    f"/proc/self/fd/{body}",
                    self.target.bucket,
                    key,
                    extra_args=extra,
                    subscribers=[watch],
                ).result()
        except TransferCancelled:
            if watch.why == "deleted":
                self.given_up += 1
                log.info("%s was deleted: its upload stopped before it reached S3", path.name)
            return None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            raise UploadError(
                f"s3://{self.target.bucket}/{key}: {code or exc}", identity=code in _IDENTITY_CODES
            ) from None
        except S3UploadFailedError as exc:
            text = str(exc)
            raise UploadError(
                f"s3://{self.target.bucket}/{key}: {text}",
                identity=any(c in text for c in _IDENTITY_CODES),
            ) from None
        except BotoCoreError as exc:
            raise UploadError(f"s3://{self.target.bucket}/{key}: {exc}") from None
        except PintheskyError as exc:  # credentials could not be refreshed
            raise UploadError(str(exc), identity=getattr(exc, "identity", False)) from None
        # S3 has the object: only now may the local copy go (unless it went already, or a
        # new file took its name meanwhile).
        if os.fstat(fd).st_nlink == 0:
            log.info("%s was deleted as its upload ended: the copy in S3 stays", path.name)
        elif _same_file(path, fd):
            self.store.remove(path, picture=False)
        self.bytes_uploaded += size
        log.info("uploaded %s to s3://%s/%s (%d bytes)", path.name, self.target.bucket, key, size)
        return UploadEnded(
            kind, path.name, self.target.bucket, key, start, trigger, **(facts or {})
        )

    def _facts(self, meta: dict[str, Any]) -> dict[str, Any]:
        """A clip's facts from what the recorder kept beside it (none for a salvaged clip)."""
        facts: dict[str, Any] = {}
        with contextlib.suppress(TypeError, ValueError):
            if "end_time" in meta:
                facts["end_time"] = int(meta["end_time"])
            if "duration" in meta:
                facts["duration"] = round(float(meta["duration"]), 2)
            if "peak_score" in meta:
                facts["peak_score"] = int(meta["peak_score"])
        triggers = meta.get("triggers")
        if isinstance(triggers, list) and all(t in ("motion", "manual") for t in triggers):
            facts["triggers"] = ",".join(triggers)
        picture = meta.get("picture")
        if isinstance(picture, str) and picture_epoch(Path(picture)) is not None:
            facts["image_key"] = f"{self.target.image_prefix}/{self.target.thing}/{picture}"
        return facts


def _remux_to_annexb(src: int, dst: Path) -> int:
    """Write the Annex-B stream of the MP4 clip open as ``src`` to the new file ``dst``
    (no re-encoding, little memory); returns ``dst`` open for reading."""
    dst.unlink(missing_ok=True)  # a leftover, or a link planted to be written through
    out_fd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with mmap.mmap(src, 0, access=mmap.ACCESS_READ) as data:
            units = 0
            with os.fdopen(os.dup(out_fd), "wb") as out:
                for unit in to_annexb(data):  # type: ignore[arg-type]
                    out.write(unit)
                    units += 1
        if units == 0:
            raise ValueError("no frame could be read")
    except BaseException:
        os.close(out_fd)
        raise
    return out_fd


def _same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:  # uploaded or deleted since the listing
        return 0.0


def _regular(path: Path) -> bool:
    """A regular file, not a link planted in the queue (to /etc/passwd, say): only those are
    ever uploaded."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False
