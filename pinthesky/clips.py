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

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pinthesky.errors import ClipStoreError
from pinthesky.media import US, Packet, StreamInfo, has_parameter_sets
from pinthesky.mp4 import TIMESCALE, FragmentedMp4Writer

log = logging.getLogger(__name__)

PARTIAL = ".partial"
_FINAL = re.compile(r"^(\d+)(?:-(\d+))?\.motion\.(mp4|h264)$")
_PICTURE = re.compile(r"^(\d+)(?:-(\d+))?\.motion\.jpg$")
PICTURE_SUFFIX = ".jpg"
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


class ClipWriter:
    """One clip being written. Not thread-safe: used from the clip-writer thread only."""

    def __init__(
        self, final: Path, info: StreamInfo, fmt: str, trigger: str, start_epoch: int
    ) -> None:
        self.final = final
        self.temp = final.with_name("." + final.name + PARTIAL)
        self.info = info
        self.fmt = fmt
        self.trigger = trigger
        self.start_epoch = start_epoch
        self._fh: Any = None
        self._mp4: FragmentedMp4Writer | None = None
        self._pending: Packet | None = None
        self._first_ts: int | None = None
        self._last_ts = 0
        self.packets = 0
        self._frame_us = round(US / info.framerate) if info.framerate else US // 20

    def write(self, packets: Iterable[Packet]) -> None:
        for pkt in packets:
            if self._first_ts is None:
                if not pkt.keyframe or (self.fmt == "mp4" and not has_parameter_sets(pkt.data)):
                    continue  # a clip must start decodable
                self._first_ts = pkt.ts
                write_meta(self.final, {"trigger": self.trigger, "start_epoch": self.start_epoch})
                self._fh = self.temp.open("wb")
                if self.fmt == "mp4":
                    self._mp4 = FragmentedMp4Writer(
                        self._fh, self.info.width, self.info.height, self.info.rotation
                    )
            if pkt.ts <= self._last_ts and self.packets:
                continue  # never go back in time inside one clip
            if self.fmt == "h264":
                self._fh.write(pkt.data)
            else:
                if self._pending is not None:
                    self._mux(self._pending, pkt.ts)
                self._pending = pkt
            self._last_ts = pkt.ts
            self.packets += 1

    def _mux(self, pkt: Packet, next_ts: int) -> None:
        # Durations from cumulative tick positions, so rounding never drifts the timeline.
        assert self._first_ts is not None and self._mp4 is not None
        start = _ticks(pkt.ts - self._first_ts)
        self._mp4.add(pkt.data, pkt.keyframe, max(1, _ticks(next_ts - self._first_ts) - start))

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
        if facts:
            meta = {"trigger": self.trigger, "start_epoch": self.start_epoch, **facts}
            write_meta(self.final, {**meta, "duration": round(self.duration, 2)})
        if self._mp4 is not None:
            if self._pending is not None:
                self._mux(self._pending, self._pending.ts + self._frame_us)
                self._pending = None
            self._mp4.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self.temp, self.final)
        _fsync_path(self.final.parent)
        size = self.final.stat().st_size
        return ClipInfo(
            self.final,
            self.start_epoch,
            self.duration,
            size,
            self.trigger,
            self.packets,
            self._first_ts,
            self._last_ts + self._frame_us,
        )

    def abort(self) -> None:
        """Drop the clip (nothing was written that anyone could want)."""
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:  # closing a half-written file after an I/O error
                log.debug("closing %s failed", self.temp, exc_info=True)
        self.temp.unlink(missing_ok=True)


META = ".json"


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
    with tmp.open("w") as fh:
        json.dump(meta, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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
            self._free_name(start_epoch, self.fmt), info, self.fmt, trigger, start_epoch
        )

    def _free_name(self, epoch: int, fmt: str) -> Path:
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
            if m and entry.is_file():
                found.append((int(m.group(1)), int(m.group(2) or 0), Path(entry.path)))
        return [p for *_, p in sorted(found)]

    def recover(self, info: StreamInfo) -> list[ClipInfo]:
        """Salvage the temporary files a killed daemon left behind."""
        saved = []
        for entry in sorted(os.scandir(self.directory), key=lambda e: e.name):
            m = _TEMP.match(entry.name)
            if not m:
                continue
            path = Path(entry.path)
            clip = self._salvage(path, int(m.group(1)), m.group(3), info)
            if clip is None:
                log.warning("removed %s: nothing playable in it", path.name)
            else:
                log.warning("salvaged %s as %s (%.1f s)", path.name, clip.path.name, clip.duration)
                saved.append(clip)
            path.unlink(missing_ok=True)
        for entry in os.scandir(self.directory):
            name = entry.name
            if name.startswith(".") and ".upload.h264" in name:
                os.unlink(entry.path)  # a remux for an upload that a crash interrupted
            elif name.startswith(".") and name.endswith(META):
                owner = self.directory / name[1 : -len(META)]
                partial = owner.with_name("." + owner.name + PARTIAL)
                if not owner.exists() and not partial.exists():
                    os.unlink(entry.path)
        return saved

    def meta(self, clip: Path) -> dict[str, Any]:
        """What the recorder knew about a clip (its trigger); empty if nothing was kept."""
        try:
            data = json.loads(_meta_path(clip).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def remove(self, clip: Path, picture: bool = True) -> None:
        """Delete a clip and what is kept beside it (after upload, or on eviction).

        The uploader passes ``picture=False``: the picture is its own queue entry, uploaded
        (and removed) on its own.
        """
        clip.unlink(missing_ok=True)
        _meta_path(clip).unlink(missing_ok=True)
        if picture:
            picture_path(clip).unlink(missing_ok=True)

    def picture(self, clip: Path) -> Path | None:
        """The clip's motion picture (its thumbnail), if it is on disk."""
        path = picture_path(clip)
        return path if path.is_file() else None

    def pictures(self) -> list[Path]:
        """Motion pictures on disk, oldest first (the uploader sends them before anything)."""
        found = []
        for entry in os.scandir(self.directory):
            m = _PICTURE.match(entry.name)
            if m and entry.is_file():
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
            final = self._free_name(epoch, fmt)
        writer = ClipWriter(final, info, fmt, trigger=trigger, start_epoch=epoch)
        writer.temp = path.with_name(path.name + ".salvage")
        try:
            writer.write(packets)
            return writer.close()
        except (av.FFmpegError, OSError) as exc:
            log.warning("could not salvage %s: %s", path.name, exc)
            writer.abort()
            return None

    def enforce_quota(self, keep: Path | None = None) -> list[Path]:
        """Evict the oldest clips while over the byte quota or under the free-space floor."""
        evicted = []
        clips = self.clips()
        sizes = {p: p.stat().st_size for p in clips}
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
