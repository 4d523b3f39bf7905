"""The clip directory: clips written safely, salvaged after a crash, kept under a quota.

A clip is written under a hidden temporary name in the clip directory, as fragmented MP4
(``mp4.py``: one fragment per GOP, readable up to the last complete fragment even if the
writer dies) or raw Annex-B H.264. When complete it is fsynced, renamed to its final name
``{start_epoch}.motion.mp4`` (or ``.h264``) and the directory is fsynced, so a final name never
points at a truncated file. At start, temporary files left by a crash are salvaged: the
packets that can still be read are written again as a proper clip, and a file with nothing
readable is removed. Every method blocks: the daemon calls them on its clip-writer thread.

A clip with motion has a picture beside it, ``{start_epoch}.motion.jpg`` (the same stem as the
clip): the motion alert's JPEG and the clip's thumbnail. ``ClipStore.picture(clip)`` finds it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinthesky.errors import ClipStoreError
from pinthesky.eventfiles import read_ours
from pinthesky.media import US, Packet, StreamInfo, has_parameter_sets
from pinthesky.record.mp4 import TIMESCALE, FragmentedMp4Writer

log = logging.getLogger(__name__)

PARTIAL = ".partial"
_FINAL = re.compile(r"^(\d+)(?:-(\d+))?\.motion\.(mp4|h264)$")
_PICTURE = re.compile(r"^(\d+)(?:-(\d+))?\.motion\.jpg$")
PICTURE_SUFFIX = ".jpg"
MAX_EPOCH = 253402300799
"""The last second of the year 9999: a larger start time in a name is no clip of ours."""
_TEMP = re.compile(r"^\.(\d+)(?:-(\d+))?\.motion\.(mp4|h264)\.partial$")


@dataclass(frozen=True, slots=True)
class ClipInfo:
    """A finished clip on disk."""

    path: Path
    start_epoch: int
    duration: float
    """Seconds from the first frame to the end of the last one."""
    size: int
    trigger: str
    packets: int
    start_ts: int = 0
    """Sensor timestamp of the first frame (µs)."""
    end_ts: int = 0
    """Sensor timestamp just after the last frame (µs)."""


def out_of_space(exc: OSError) -> bool:
    """The file system (or the user's quota) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class _File:
    """An unbuffered file whose every write is all or nothing.

    A write the disk has no room for is cut back (``ftruncate``) to where it began, so the file
    always ends after a complete fragment and the same bytes can be written again later.
    """

    def __init__(self, path: Path) -> None:
        # Ours alone: a name planted in the clip directory is never followed or reused.
        self._fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )

    def write(self, data: bytes) -> int:
        start = os.lseek(self._fd, 0, os.SEEK_CUR)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            os.ftruncate(self._fd, start)
            os.lseek(self._fd, start, os.SEEK_SET)
            raise
        return len(data)

    def tell(self) -> int:
        return os.lseek(self._fd, 0, os.SEEK_CUR)

    def seek(self, offset: int) -> int:
        return os.lseek(self._fd, offset, os.SEEK_SET)

    def flush(self) -> None:
        pass  # unbuffered

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        os.close(self._fd)


class ClipWriter:
    """One clip being written. Not thread-safe: used from the clip-writer thread only.

    With a ``store``, a full disk is met by evicting older clips and writing again; when none
    is left, the clip is cut at its last complete fragment into a finished clip of its own
    (collected in ``parts``) and recording goes on in a new file from the next keyframe, so
    the newest footage wins and every finished file plays.
    """

    def __init__(
        self,
        final: Path,
        info: StreamInfo,
        fmt: str,
        trigger: str,
        start_epoch: int,
        store: ClipStore | None = None,
    ) -> None:
        self.info = info
        self.fmt = fmt
        self.trigger = trigger
        self.store = store
        self._frame_us = round(US / info.framerate) if info.framerate else US // 20
        self.parts: list[ClipInfo] = []
        """Clips cut off this one because the disk was full (for the caller to announce)."""
        self.dropped = 0
        """Packets that found no room at all."""
        self._reset(final, start_epoch)

    def _reset(self, final: Path, start_epoch: int) -> None:
        self.final = final
        self.temp = final.with_name("." + final.name + PARTIAL)
        self.start_epoch = start_epoch
        self._fh: _File | None = None
        self._mp4: FragmentedMp4Writer | None = None
        self._pending: Packet | None = None
        self._first_ts: int | None = None
        self._last_ts = 0
        self.packets = 0
        self._written = 0  # packets in the file (the rest wait in the open fragment)
        self._lost = False  # the open fragment found no room and was left out

    def write(self, packets: Iterable[Packet]) -> None:
        for pkt in packets:
            try:
                self._add(pkt)
            except OSError as exc:
                if self.store is None or not out_of_space(exc):
                    raise
                self._make_room(pkt, exc)

    def _add(self, pkt: Packet) -> None:
        # Every step below either completes or leaves the writer as it was, so that a packet
        # refused for lack of room can be given again.
        if self._first_ts is None:
            if not pkt.keyframe or (self.fmt == "mp4" and not has_parameter_sets(pkt.data)):
                return  # a clip must start decodable
            self._open()
            self._first_ts = pkt.ts
        if pkt.ts <= self._last_ts and self.packets:
            return  # never go back in time inside one clip
        if self.fmt == "h264":
            assert self._fh is not None
            self._fh.write(pkt.data)
            self._written = self.packets + 1
        else:
            if self._pending is not None:
                self._mux(self._pending, pkt.ts)
            self._pending = pkt
        self._last_ts = pkt.ts
        self.packets += 1

    def _open(self) -> None:
        try:
            write_meta(self.final, {"trigger": self.trigger, "start_epoch": self.start_epoch})
        except OSError as exc:
            if not out_of_space(exc):
                raise
            # Only the trigger is lost (it reads "motion"); the footage matters more.
            log.warning("%s: no room for its trigger file: %s", self.final.name, exc)
        fh = _File(self.temp)
        if self.fmt == "mp4":
            self._mp4 = FragmentedMp4Writer(
                fh,  # type: ignore[arg-type]  # the file-like methods the writer uses
                self.info.width,
                self.info.height,
                self.info.rotation,
            )
        self._fh = fh

    def _mux(self, pkt: Packet, next_ts: int) -> None:
        # Durations from cumulative tick positions, so rounding never drifts the timeline.
        assert self._first_ts is not None and self._mp4 is not None
        start = _ticks(pkt.ts - self._first_ts)
        before = self._mp4.fragments
        self._mp4.add(pkt.data, pkt.keyframe, max(1, _ticks(next_ts - self._first_ts) - start))
        if self._mp4.fragments != before:
            self._written = self.packets - 1  # all but the pending keyframe

    def _make_room(self, pkt: Packet, exc: OSError) -> None:
        """The disk is full: evict older clips, or cut this one, and write ``pkt`` again."""
        assert self.store is not None
        while True:
            if self.store.evict_oldest(f"room for {self.final.name}"):
                pass
            elif self._written > 0:
                self._cut()
            else:
                self.dropped += 1
                if self.dropped == 1:
                    log.error("%s: the disk is full and holds nothing older: %s", self.final, exc)
                return
            try:
                self._add(pkt)
                return
            except OSError as again:
                if not out_of_space(again):
                    raise
                exc = again

    def _cut(self) -> None:
        """Finish the file at its last complete fragment; go on in a new one."""
        assert self.store is not None and self._first_ts is not None
        if self._mp4 is not None:
            self._mp4.drop_open_fragment()
            self._pending = None
            self._lost = True
            self._mp4.close()  # patches the header in place: needs no room
        last = self._last_ts
        info = self._close_file()
        if info is not None:
            log.warning(
                "the disk is full: %s cut at %.1f s; recording goes on in a new clip",
                info.path.name,
                info.duration,
            )
            self.parts.append(info)
        epoch = self.start_epoch + max(0, (last - self._first_ts) // US)
        self._reset(self.store.free_name(epoch, self.fmt), epoch)

    @property
    def end_ts(self) -> int:
        """Sensor timestamp just after the last frame written (µs; 0 before the first)."""
        return self._last_ts + self._frame_us if self._first_ts is not None else 0

    @property
    def duration(self) -> float:
        if self._first_ts is None:
            return 0.0
        return (self._last_ts - self._first_ts + self._frame_us) / US

    def close(self, facts: dict[str, Any] | None = None) -> ClipInfo | None:
        """Finish the file and give it its final name; None if it holds no frame.

        ``facts`` (end time, peak score, picture) are kept beside the clip with its trigger,
        before the clip appears under its final name, for the uploader's S3 metadata.
        """
        if self._first_ts is None:
            return None
        mp4 = self._mp4
        if mp4 is not None:
            pending = self._pending
            self._pending = None
            if pending is not None and not self._with_room(
                lambda: self._mux(pending, pending.ts + self._frame_us)
            ):
                mp4.drop_open_fragment()
                self._lost = True
            if not self._with_room(mp4.close):
                # The open fragment found no room: the file still ends after the last one.
                mp4.drop_open_fragment()
                self._lost = True
                mp4.close()
            if mp4.fragments == 0:
                self.abort()
                return None
        if facts:
            meta = {"trigger": self.trigger, "start_epoch": self.start_epoch, **facts}
            meta["duration"] = round(self.duration, 2)
            if not self._with_room(lambda: write_meta(self.final, meta)):
                log.warning("%s: no room for its facts; the clip is kept without them", self.final)
        return self._close_file()

    def _with_room(self, write: Callable[[], None]) -> bool:
        """Run ``write``, evicting older clips while the disk is full; False if it never fit."""
        while True:
            try:
                write()
                return True
            except OSError as exc:
                if self.store is None or not out_of_space(exc):
                    raise
            if not self.store.evict_oldest(f"room for {self.final.name}"):
                return False

    def _close_file(self) -> ClipInfo | None:
        assert self._fh is not None and self._first_ts is not None
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        os.replace(self.temp, self.final)
        _fsync_path(self.final.parent)
        size = self.final.stat().st_size
        end = self._last_ts + self._frame_us
        packets = self.packets
        if self._lost and self._mp4 is not None:
            # The file ends before the last frames given: say what it really holds.
            end = self._first_ts + self._mp4.duration_ticks * US // TIMESCALE
            packets = self._written
        return ClipInfo(
            self.final,
            self.start_epoch,
            (end - self._first_ts) / US,
            size,
            self.trigger,
            packets,
            self._first_ts,
            end,
        )

    def abort(self) -> None:
        """Drop the clip (nothing was written that anyone could want)."""
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:  # closing a half-written file after an I/O error
                log.debug("closing %s failed", self.temp, exc_info=True)
            self._fh = None
        self.temp.unlink(missing_ok=True)


META = ".json"
META_LIMIT = 64 * 1024
"""Largest clip metadata read (the recorder writes a few hundred bytes)."""


def picture_path(clip: Path) -> Path:
    """Where the motion picture of ``clip`` goes: ``1700000000.motion.mp4`` ->
    ``1700000000.motion.jpg`` (the S3 key's name too)."""
    return clip.with_suffix(PICTURE_SUFFIX)


def picture_epoch(picture: Path) -> int | None:
    """The start epoch in a motion picture's name; None if it is not one."""
    m = _PICTURE.match(picture.name)
    return int(m.group(1)) if m else None


def _meta_path(clip: Path) -> Path:
    return clip.with_name("." + clip.name + META)


def write_meta(clip: Path, meta: dict[str, Any]) -> None:
    """Keep a clip's trigger beside it, durably, before the clip exists under its name."""
    path = _meta_path(clip)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)  # a leftover, or a name planted to be written through
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            os.write(fd, json.dumps(meta).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # never leave a half-written one behind (a full disk)
        raise


def complete_fragments_end(path: Path) -> int | None:
    """Where the last complete ``moof`` + ``mdat`` of a fragmented MP4 ends (None when the
    file has no header or no complete fragment)."""
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        pos, kinds, good = 0, [], None
        while pos + 8 <= size:
            fh.seek(pos)
            length, kind = struct.unpack(">I4s", fh.read(8))
            if length == 1 and pos + 16 <= size:
                length = struct.unpack(">Q", fh.read(8))[0]
            if length < 8 or pos + length > size:
                break
            pos += length
            kinds.append(kind)
            if kind == b"mdat" and kinds[-2:-1] == [b"moof"] and b"moov" in kinds:
                good = pos
    return good


def _ticks(us: int) -> int:
    return (us * TIMESCALE + US // 2) // US


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ClipStore:
    """The clip directory with its quota. Methods block; call them off the event loop."""

    def __init__(
        self, directory: Path, fmt: str = "mp4", max_bytes: int = 1 << 30, min_free: int = 0
    ) -> None:
        self.directory = directory
        self.fmt = fmt
        self.max_bytes = max_bytes
        self.min_free = min_free
        self.evicted = 0

    def prepare(self) -> None:
        """Create the directory and prove it is writable; ClipStoreError otherwise."""
        d = self.directory
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / ".pinthesky-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise ClipStoreError(
                f"clip directory {d}: not writable: {exc.strerror or exc}"
            ) from None

    def new_clip(self, start_epoch: int, info: StreamInfo, trigger: str) -> ClipWriter:
        return ClipWriter(
            self.free_name(start_epoch, self.fmt), info, self.fmt, trigger, start_epoch, self
        )

    def free_name(self, epoch: int, fmt: str) -> Path:
        # Two clips starting in the same second (a split, a manual capture) must not collide.
        path = self.directory / f"{epoch}.motion.{fmt}"
        n = 1
        while path.exists() or path.with_name("." + path.name + PARTIAL).exists():
            path = self.directory / f"{epoch}-{n}.motion.{fmt}"
            n += 1
        return path

    def clips(self) -> list[Path]:
        """Finished clips, oldest first."""
        found = []
        for entry in os.scandir(self.directory):
            m = _FINAL.match(entry.name)
            # Only regular files of ours: a link planted here (to /etc/passwd, say) is neither
            # listed, served nor uploaded, and a start time no clock can show is not ours.
            if m and int(m.group(1)) <= MAX_EPOCH and entry.is_file(follow_symlinks=False):
                found.append((int(m.group(1)), int(m.group(2) or 0), Path(entry.path)))
        return [p for *_, p in sorted(found)]

    def evict_oldest(self, why: str) -> bool:
        """Remove the oldest finished clip to make room for a newer one; False if none is
        left. Retention rule: the newest footage wins when the disk is full."""
        for path in self.clips():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue  # uploaded and removed meanwhile
            self.remove(path)
            self.evicted += 1
            log.warning("evicted %s (%d bytes): %s", path.name, size, why)
            return True
        return False

    def make_room(self, need: int, why: str) -> None:
        """Evict the oldest clips until ``need`` bytes can be written above the free-space
        floor (or nothing older is left)."""
        while shutil.disk_usage(self.directory).free - need < self.min_free:
            if not self.evict_oldest(why):
                return

    def recover(self, info: StreamInfo) -> list[ClipInfo]:
        """Salvage the temporary files a killed daemon left behind."""
        saved = []
        for entry in sorted(os.scandir(self.directory), key=lambda e: e.name):
            m = _TEMP.match(entry.name)
            if not m:
                continue
            path = Path(entry.path)
            try:
                clip = self._salvage(path, int(m.group(1)), m.group(3), info)
            except OSError as exc:
                # Footage we could not read or rewrite (a full disk) is never removed.
                log.error("kept %s for the next start: salvaging it failed: %s", path.name, exc)
                continue
            if clip is None:
                log.warning("removed %s: nothing playable in it", path.name)
            else:
                log.warning("salvaged %s as %s (%.1f s)", path.name, clip.path.name, clip.duration)
                saved.append(clip)
            path.unlink(missing_ok=True)
        for entry in os.scandir(self.directory):
            name = entry.name
            if not name.startswith(".") or entry.is_dir(follow_symlinks=False):
                continue
            if ".upload.h264" in name or name.endswith((META + ".tmp", PARTIAL + ".salvage")):
                # A remux for an upload, a trigger file or a salvage that a crash interrupted.
                os.unlink(entry.path)
            elif name.startswith(".") and name.endswith(META):
                owner = self.directory / name[1 : -len(META)]
                partial = owner.with_name("." + owner.name + PARTIAL)
                if not owner.exists() and not partial.exists():
                    os.unlink(entry.path)
        return saved

    def meta(self, clip: Path) -> dict[str, Any]:
        """What the recorder knew about a clip (its trigger); empty if nothing was kept, or
        if a link or anything but a small file of ours sits under its name."""
        try:
            data, size = read_ours(_meta_path(clip), META_LIMIT + 1)
            doc = json.loads(data) if size <= META_LIMIT else None
        except (OSError, ValueError, RecursionError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def remove(self, clip: Path, picture: bool = True) -> None:
        """Delete a clip and what is kept beside it (after upload, or on eviction).

        The uploader passes ``picture=False``: the picture is its own queue entry, uploaded
        (and removed) on its own.
        """
        clip.unlink(missing_ok=True)
        _meta_path(clip).unlink(missing_ok=True)
        if picture:
            picture_path(clip).unlink(missing_ok=True)

    def find(self, name: str) -> Path | None:
        """The finished clip called ``name``, if the directory lists one: a name from outside
        (a URL) is only compared, never joined to a path."""
        for path in self.clips():
            if path.name == name:
                return path
        return None

    def picture(self, clip: Path) -> Path | None:
        """The clip's motion picture (its thumbnail), if it is on disk as a regular file (a
        link planted under its name is not ours)."""
        path = picture_path(clip)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return path if stat.S_ISREG(st.st_mode) else None

    def pictures(self) -> list[Path]:
        """Motion pictures on disk, oldest first (the uploader sends them before anything)."""
        found = []
        for entry in os.scandir(self.directory):
            m = _PICTURE.match(entry.name)
            # Not through a link: one planted under a picture's name would be uploaded.
            if m and int(m.group(1)) <= MAX_EPOCH and entry.is_file(follow_symlinks=False):
                found.append((int(m.group(1)), int(m.group(2) or 0), Path(entry.path)))
        return [p for *_, p in sorted(found)]

    def _salvage(self, path: Path, epoch: int, fmt: str, info: StreamInfo) -> ClipInfo | None:
        import av

        packets: list[Packet] = []
        try:
            with av.open(str(path), format="mp4" if fmt == "mp4" else "h264") as container:
                stream = container.streams.video[0]
                bsf = None
                if fmt == "mp4":
                    bsf = av.BitStreamFilterContext("h264_mp4toannexb", stream)
                frame_us = round(US / (stream.average_rate or info.framerate or 20))
                for n, pkt in enumerate(container.demux(stream)):
                    if pkt.size == 0:
                        continue
                    out = bsf.filter(pkt) if bsf is not None else [pkt]
                    for p in out:
                        ts = round(p.pts * p.time_base * US) if p.pts is not None else n * frame_us
                        packets.append(Packet(bytes(p), bool(p.is_keyframe), ts))
        except (av.FFmpegError, OSError, IndexError) as exc:
            log.debug("reading %s stopped: %s", path, exc)
        # The last packet of a killed writer may be cut short: leave it out.
        packets = packets[:-1]
        if not any(p.keyframe for p in packets):
            return None
        final = path.with_name(path.name[1 : -len(PARTIAL)])
        trigger = str(self.meta(final).get("trigger", "motion"))
        if final.exists():
            final = self.free_name(epoch, fmt)
        writer = ClipWriter(final, info, fmt, trigger=trigger, start_epoch=epoch)
        writer.temp = path.with_name(path.name + ".salvage")
        writer.temp.unlink(missing_ok=True)  # left by a salvage a crash interrupted
        try:
            writer.write(packets)
            return writer.close()
        except OSError as exc:
            writer.abort()
            if not out_of_space(exc) or fmt != "mp4":
                raise
        # No room for a second copy: end the file itself after its last complete fragment.
        return self._salvage_in_place(path, final, epoch, trigger, packets, info)

    def _salvage_in_place(
        self,
        path: Path,
        final: Path,
        epoch: int,
        trigger: str,
        packets: list[Packet],
        info: StreamInfo,
    ) -> ClipInfo | None:
        end = complete_fragments_end(path)
        if end is None:
            raise OSError(errno.ENOSPC, "no room to rewrite it and no complete fragment in it")
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, end)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(path, final)
        _fsync_path(final.parent)
        frame_us = round(US / info.framerate) if info.framerate else US // 20
        first, last = packets[0].ts, packets[-1].ts + frame_us
        return ClipInfo(final, epoch, (last - first) / US, end, trigger, len(packets), first, last)

    def enforce_quota(self, keep: Path | None = None) -> list[Path]:
        """Evict the oldest clips while over the byte quota or under the free-space floor."""
        evicted: list[Path] = []
        sizes = {}
        for path in self.clips():
            try:
                sizes[path] = path.stat().st_size
            except FileNotFoundError:
                continue  # uploaded and removed since the listing
        clips = list(sizes)
        if not clips:
            return evicted
        total = sum(sizes.values())
        free = shutil.disk_usage(self.directory).free
        for path in clips:
            over = total > self.max_bytes
            short = free < self.min_free
            if not (over or short) or path == keep or path == clips[-1]:
                break
            size = sizes[path]
            if not path.exists():
                continue
            self.remove(path)
            total -= size
            free += size
            self.evicted += 1
            evicted.append(path)
            log.warning(
                "evicted %s (%d bytes): %s",
                path.name,
                size,
                f"clips use more than {self.max_bytes} bytes"
                if over
                else f"less than {self.min_free} bytes free",
            )
        return evicted
