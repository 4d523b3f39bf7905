"""JPEG from the camera's YUV at the right (full) range: the one path for stills and for the
pictures taken at motion start, and the fix for the Pi 0-4 hardware MJPEG encoder's pictures.

A video configuration gives limited-range YUV (black at 16, white at 235; chroma 16-240), but
JPEG (JFIF) is full range: written as is, blacks come out grey and whites dim. Stills are
widened with two 256-entry tables before ``simplejpeg`` (a picamera2 dependency) encodes the
planes. The hardware encoder's JPEGs cannot be touched before encoding, so their quantisation
tables are scaled instead: the decoder then multiplies every coefficient by 255/219 (luma) or
255/224 (chroma), which widens the picture around mid-grey; luma ends within 2.4 levels of an
exact conversion (the level shift is about 128, not 16), chroma is exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pinthesky.errors import PintheskyError

QUALITY = 90
"""Still JPEG quality (simplejpeg's 1-100)."""

LUMA_GAIN = 255 / 219
CHROMA_GAIN = 255 / 224


def _tables() -> tuple[np.ndarray, np.ndarray]:
    v = np.arange(256, dtype=np.float64)
    luma = np.clip(np.rint((v - 16) * LUMA_GAIN), 0, 255).astype(np.uint8)
    chroma = np.clip(np.rint((v - 128) * CHROMA_GAIN + 128), 0, 255).astype(np.uint8)
    return luma, chroma


LUMA_LUT, CHROMA_LUT = _tables()


class JpegError(PintheskyError):
    """A JPEG could not be made or read (one line)."""


def widen(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    """Limited-range planes to full range (new contiguous arrays)."""
    return LUMA_LUT[y], CHROMA_LUT[u], CHROMA_LUT[v]


def encode_i420(
    y: np.ndarray, u: np.ndarray, v: np.ndarray, limited: bool, quality: int = QUALITY
) -> bytes:
    """A JFIF JPEG of I420 planes; ``limited`` planes are widened to full range first."""
    try:  # a picamera2 dependency (python3-simplejpeg on a Pi): there wherever a camera is
        import simplejpeg  # type: ignore[import-untyped]
    except ImportError:
        raise JpegError("JPEG encoding needs simplejpeg (apt install python3-simplejpeg)") from None

    planes = widen(y, u, v) if limited else (y, u, v)
    y2, u2, v2 = (np.ascontiguousarray(p) for p in planes)
    try:
        data: bytes = simplejpeg.encode_jpeg_yuv_planes(y2, u2, v2, quality=quality)
    except (ValueError, RuntimeError) as exc:
        raise JpegError(f"JPEG encoding failed: {exc}") from None
    return data


_widened: dict[bytes, bytes] = {}
"""Header (up to the start of scan) -> the same header with scaled tables. An encoder writes
the same header on every picture, so the tables are scaled once, not 5 times a second."""


def widen_tables(jpeg: bytes) -> bytes:
    """``jpeg`` written from limited-range samples, with its quantisation tables scaled so
    that it decodes at full range. The entropy-coded data is left alone; 8-bit table entries
    are capped at 255 (only reached at the very lowest qualities)."""
    end = _header_end(jpeg)
    header = jpeg[:end]
    scaled = _widened.get(header)
    if scaled is None:
        scaled = _scale_tables(header)
        if len(_widened) >= 8:  # a new quality or size: forget the old ones
            _widened.clear()
        _widened[header] = scaled
    return scaled + jpeg[end:]


def _segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(marker, body offset, end offset) of each header segment, up to and including SOS."""
    if data[:2] != b"\xff\xd8":
        raise JpegError("not a JPEG (no start-of-image marker)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise JpegError(f"broken JPEG header at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end > len(data):
            raise JpegError("truncated JPEG header")
        yield marker, pos + 4, end
        if marker == 0xDA:  # start of scan: the header is over
            return
        pos = end
    raise JpegError("JPEG without a start of scan")


def _header_end(data: bytes) -> int:
    return next(end for marker, _, end in _segments(data) if marker == 0xDA)


def _scale_tables(header: bytes) -> bytes:
    data = bytearray(header)
    tables: dict[int, list[tuple[int, int]]] = {}  # table id -> (offset, precision)
    luma_table: int | None = None
    for marker, body, end in _segments(header):
        if marker == 0xDB:  # DQT: one or more tables
            q = body
            while q < end:
                precision, table = data[q] >> 4, data[q] & 0x0F
                tables.setdefault(table, []).append((q + 1, precision))
                q += 1 + 64 * (2 if precision else 1)
        elif marker in (0xC0, 0xC1, 0xC2):  # SOF: the first component is luma
            luma_table = data[body + 8]
    if luma_table is None or not tables:
        raise JpegError("JPEG without a frame header or quantisation tables")
    for table, places in tables.items():
        gain = LUMA_GAIN if table == luma_table else CHROMA_GAIN
        for offset, precision in places:
            width = 2 if precision else 1
            top = 0xFFFF if precision else 0xFF
            for i in range(64):
                at = offset + i * width
                value = int.from_bytes(data[at : at + width], "big")
                scaled = min(top, max(1, round(value * gain)))
                data[at : at + width] = scaled.to_bytes(width, "big")
    return bytes(data)
