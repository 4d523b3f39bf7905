"""A small fragmented-MP4 writer for one H.264 video track.

Recording a clip needs nothing more than boxes around the encoder's bytes, so the daemon does
not load FFmpeg (about 25 MB resident, a noticeable import on a Pi Zero) just to mux.

Layout: ``ftyp``, ``moov`` (SPS/PPS in ``avcC``, the display matrix in ``tkhd``, ``mvex`` for
fragments), then one ``moof`` + ``mdat`` per group of pictures, each written and flushed as soon
as the next keyframe arrives. A writer killed mid-clip leaves a file that plays up to its last
complete fragment. ``close`` writes the total duration into the header, so players show the
right length and can seek.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from pinthesky.media import nal_type, split_annexb

TIMESCALE = 90_000
"""Track ticks per second (the MPEG clock)."""

_SPS, _PPS, _AUD = 7, 8, 9
_KEY_FLAGS = 0x02000000  # sample depends on no other sample
_DELTA_FLAGS = 0x01010000  # depends on others, not a sync sample

# Display matrices (16.16 fixed point, 2.30 for the last column): how a player turns the
# picture. The Pi's ISP cannot rotate by 90 degrees, so the clip says it instead.
_MATRICES = {
    0: (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000),
    90: (0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000),
    180: (-0x10000, 0, 0, 0, -0x10000, 0, 0, 0, 0x40000000),
    270: (0, -0x10000, 0, 0x10000, 0, 0, 0, 0, 0x40000000),
}


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def _full(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


def avcc(sps: bytes, pps: bytes) -> bytes:
    """The ``avcC`` decoder configuration record for one SPS and one PPS."""
    profile, compat, level = sps[1], sps[2], sps[3]
    record = struct.pack(">BBBBBB", 1, profile, compat, level, 0xFF, 0xE1)
    record += struct.pack(">H", len(sps)) + sps + b"\x01" + struct.pack(">H", len(pps)) + pps
    if profile in (100, 110, 122, 144):
        # High profiles carry chroma format and bit depths: 4:2:0, 8 bits, as the Pi encodes.
        record += bytes((0xFC | 1, 0xF8, 0xF8, 0))
    return _box(b"avcC", record)


class FragmentedMp4Writer:
    """Writes H.264 access units (Annex-B) into an MP4 file, one fragment per GOP."""

    def __init__(self, fh: BinaryIO, width: int, height: int, rotation: int = 0) -> None:
        self._fh = fh
        self._width = width
        self._height = height
        self._rotation = rotation
        self._samples: list[tuple[bytes, int, bool]] = []  # (length-prefixed data, ticks, key)
        self._base = 0  # decode time of the first sample of the open fragment
        self._next = 0  # decode time after the last sample added
        self._sequence = 0
        self._header_written = False
        self._duration_at: list[tuple[int, int]] = []  # (file offset, field size) to patch

    @property
    def started(self) -> bool:
        return self._header_written

    def add(self, access_unit: bytes, keyframe: bool, duration: int) -> bool:
        """Add one access unit lasting ``duration`` ticks; False if it cannot start a file."""
        units = split_annexb(access_unit)
        if not self._header_written:
            if not keyframe:
                return False
            sps = next((u for u in units if nal_type(u) == _SPS), None)
            pps = next((u for u in units if nal_type(u) == _PPS), None)
            if sps is None or pps is None or len(sps) < 4:
                return False
            self._write_header(sps, pps)
        elif keyframe and self._samples:
            self._flush_fragment()
        # Parameter sets live in avcC; access unit delimiters are not needed in MP4.
        data = b"".join(
            struct.pack(">I", len(u)) + u for u in units if nal_type(u) not in (_SPS, _PPS, _AUD)
        )
        self._samples.append((data, duration, keyframe))
        self._next += duration
        return True

    @property
    def fragments(self) -> int:
        """Fragments written so far (the open one not counted)."""
        return self._sequence

    @property
    def duration_ticks(self) -> int:
        """Ticks of every sample added (and not dropped)."""
        return self._next

    def drop_open_fragment(self) -> None:
        """Forget the samples not yet written (the disk had no room for them), so that
        ``close`` ends the file at its last complete fragment."""
        self._samples = []
        self._next = self._base

    def close(self) -> None:
        """Write the last fragment and the total duration."""
        if not self._header_written:
            return
        if self._samples:
            self._flush_fragment()
        end = self._fh.tell()
        for offset, size in self._duration_at:
            self._fh.seek(offset)
            if size == 8:
                self._fh.write(struct.pack(">Q", self._next))
            else:
                self._fh.write(struct.pack(">I", min(self._next, 0xFFFFFFFF)))
        self._fh.seek(end)
        self._fh.flush()

    # -- boxes ------------------------------------------------------------------------------

    def _write_header(self, sps: bytes, pps: bytes) -> None:
        ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso5iso6avc1mp41")
        w, h = self._width, self._height
        matrix = struct.pack(">9i", *_MATRICES[self._rotation])
        # Durations are in the movie time scale (mvhd), which we set equal to the track's.
        mvhd = _full(
            b"mvhd",
            0,
            0,
            struct.pack(">IIII", 0, 0, TIMESCALE, 0),
            struct.pack(">IH", 0x00010000, 0x0100),
            bytes(10),
            struct.pack(">9i", *_MATRICES[0]),
            bytes(24),
            struct.pack(">I", 2),
        )
        tkhd = _full(
            b"tkhd",
            0,
            3,
            struct.pack(">IIIII", 0, 0, 1, 0, 0),
            bytes(8),
            struct.pack(">hhhH", 0, 0, 0, 0),
            matrix,
            struct.pack(">II", w << 16, h << 16),
        )
        mdhd = _full(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, TIMESCALE, 0, 0x55C4, 0))
        hdlr = _full(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"VideoHandler\x00")
        avc1 = _box(
            b"avc1",
            bytes(6),
            struct.pack(">H", 1),
            bytes(16),
            struct.pack(">HH", w, h),
            struct.pack(">II", 0x00480000, 0x00480000),
            bytes(4),
            struct.pack(">H", 1),
            bytes(32),
            struct.pack(">Hh", 0x18, -1),
            avcc(sps, pps),
        )
        stbl = _box(
            b"stbl",
            _full(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
            _full(b"stts", 0, 0, bytes(4)),
            _full(b"stsc", 0, 0, bytes(4)),
            _full(b"stsz", 0, 0, bytes(8)),
            _full(b"stco", 0, 0, bytes(4)),
        )
        dinf = _box(b"dinf", _full(b"dref", 0, 0, struct.pack(">I", 1), _full(b"url ", 0, 1)))
        minf = _box(b"minf", _full(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
        mdia = _box(b"mdia", mdhd, hdlr, minf)
        trak = _box(b"trak", tkhd, mdia)
        mehd = _full(b"mehd", 1, 0, bytes(8))
        trex = _full(b"trex", 0, 0, struct.pack(">IIIII", 1, 1, 0, 0, 0))
        mvex = _box(b"mvex", mehd, trex)
        moov = _box(b"moov", mvhd, trak, mvex)
        header = ftyp + moov
        # Remember where the durations go (patched by close): mvhd, tkhd, mdhd, mehd.
        base = len(ftyp)
        at = moov.find(b"mvhd") + 4 + 4 + 12
        self._duration_at.append((base + at, 4))
        at = moov.find(b"tkhd") + 4 + 4 + 16
        self._duration_at.append((base + at, 4))
        at = moov.find(b"mdhd") + 4 + 4 + 12
        self._duration_at.append((base + at, 4))
        at = moov.find(b"mehd") + 4 + 4
        self._duration_at.append((base + at, 8))
        self._fh.write(header)
        self._header_written = True

    def _flush_fragment(self) -> None:
        # Nothing changes until the write succeeded: after a failed write (a full disk) the
        # same samples can be written again.
        sequence = self._sequence + 1
        count = len(self._samples)
        entries = b"".join(
            struct.pack(">III", dur, len(data), _KEY_FLAGS if key else _DELTA_FLAGS)
            for data, dur, key in self._samples
        )
        # trun: data offset, then duration, size and flags for every sample.
        trun_flags = 0x000001 | 0x000100 | 0x000200 | 0x000400
        trun_len = 8 + 4 + 4 + 4 + len(entries)
        tfhd = _full(b"tfhd", 0, 0x020000, struct.pack(">I", 1))  # default-base-is-moof
        tfdt = _full(b"tfdt", 1, 0, struct.pack(">Q", self._base))
        mfhd = _full(b"mfhd", 0, 0, struct.pack(">I", sequence))
        moof_len = 8 + len(mfhd) + 8 + len(tfhd) + len(tfdt) + trun_len
        trun = _full(b"trun", 0, trun_flags, struct.pack(">Ii", count, moof_len + 8), entries)
        moof = _box(b"moof", mfhd, _box(b"traf", tfhd, tfdt, trun))
        payload = b"".join(data for data, _, _ in self._samples)
        self._fh.write(moof + struct.pack(">I4s", 8 + len(payload), b"mdat") + payload)
        self._fh.flush()
        self._sequence = sequence
        self._base = self._next
        self._samples = []


# -- reading back: the Annex-B stream Pi In The Sky's cloud expects ---------------------------


def _children(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes between ``start`` and ``end``."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return  # a cut-off box: stop at the last whole one
        yield kind, pos + header, pos + size
        pos += size


def _find(data: bytes, start: int, end: int, path: tuple[bytes, ...]) -> tuple[int, int] | None:
    for kind, body, box_end in _children(data, start, end):
        if kind == path[0]:
            if len(path) == 1:
                return body, box_end
            # stsd and avc1 have fields before their child boxes.
            skip = {b"stsd": 8, b"avc1": 78}.get(kind, 0)
            found = _find(data, body + skip, box_end, path[1:])
            if found is not None:
                return found
    return None


def to_annexb(data: bytes) -> Iterator[bytes]:
    """The access units of an MP4 written by ``FragmentedMp4Writer``, as Annex-B H.264, with
    SPS and PPS before every keyframe (what ``ffmpeg -c copy`` on the cloud side expects).

    No re-encoding and no FFmpeg: the boxes are read directly. Stops at a cut-off fragment.
    """
    config = _find(
        data, 0, len(data), (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"avc1", b"avcC")
    )
    if config is None:
        raise ValueError("no H.264 track configuration (avcC) in the file")
    pos = config[0] + 5
    sps_len = struct.unpack_from(">H", data, pos + 1)[0]
    sps = data[pos + 3 : pos + 3 + sps_len]
    pos += 3 + sps_len
    pps_len = struct.unpack_from(">H", data, pos + 1)[0]
    pps = data[pos + 3 : pos + 3 + pps_len]
    start = b"\x00\x00\x00\x01"
    parameter_sets = start + sps + start + pps
    moof_start = -1
    samples: list[tuple[int, bool]] = []
    data_offset = 0
    for kind, body, end in _children(data, 0, len(data)):
        if kind == b"moof":
            moof_start = body - 8
            trun = _find(data, body, end, (b"traf", b"trun"))
            if trun is None:
                continue
            samples, data_offset = _trun(data, trun[0])
        elif kind == b"mdat" and moof_start >= 0:
            pos = moof_start + data_offset
            for size, key in samples:
                if pos + size > end:
                    return
                unit = bytearray(parameter_sets if key else b"")
                nal_pos = pos
                while nal_pos + 4 <= pos + size:
                    (n,) = struct.unpack_from(">I", data, nal_pos)
                    unit += start + data[nal_pos + 4 : nal_pos + 4 + n]
                    nal_pos += 4 + n
                yield bytes(unit)
                pos += size
            moof_start = -1


def _trun(data: bytes, at: int) -> tuple[list[tuple[int, bool]], int]:
    (version_flags, count) = struct.unpack_from(">II", data, at)
    flags = version_flags & 0xFFFFFF
    pos = at + 8
    offset = 0
    if flags & 0x1:
        (offset,) = struct.unpack_from(">i", data, pos)
        pos += 4
    if flags & 0x4:
        pos += 4  # first-sample flags
    samples = []
    for _ in range(count):
        if flags & 0x100:
            pos += 4
        size = 0
        if flags & 0x200:
            (size,) = struct.unpack_from(">I", data, pos)
            pos += 4
        sample_flags = 0
        if flags & 0x400:
            (sample_flags,) = struct.unpack_from(">I", data, pos)
            pos += 4
        if flags & 0x800:
            pos += 4
        samples.append((size, not sample_flags & 0x00010000))
    return samples, offset
