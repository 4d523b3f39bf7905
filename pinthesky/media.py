"""Plain media types shared by the camera sources, the ring buffer, the analyzer and the clips.

Every timestamp in the pipeline is a sensor timestamp in integer microseconds on one clock per
source (the camera's, or the replayed file's media clock shifted to "now"). Clip boundaries,
motion persistence and post-roll are all measured on that clock, never on the wall clock, so a
replayed file cuts the same clips at any speed.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

US = 1_000_000
"""Microseconds per second."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One encoded H.264 access unit (Annex-B), as the encoder produced it."""

    data: bytes
    keyframe: bool
    ts: int
    """Sensor timestamp, microseconds."""


@dataclass(frozen=True, slots=True)
class AnalysisFrame:
    """A small grayscale picture for the motion analyzer."""

    luma: npt.NDArray[np.uint8]
    """(height, width) luma plane, a private copy the analyzer may keep."""
    ts: int
    """Sensor timestamp of the frame, microseconds (same clock as the packets)."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a source produces: needed to mux clips and to scale the analysis."""

    width: int
    height: int
    framerate: Fraction
    rotation: int = 0
    """Display rotation the clips must carry (90 or 270: the sensor cannot transpose)."""


@dataclass(frozen=True, slots=True)
class Clock:
    """Maps sensor time to wall-clock epoch seconds.

    Fixed once when a source starts: sensor time is monotonic, the wall clock may be stepped by
    NTP after boot. Clip names use the epoch, everything else uses sensor time.
    """

    sensor_origin_us: int
    epoch_origin: float

    @classmethod
    def now(cls, sensor_now_us: int) -> Clock:
        return cls(sensor_now_us, time.time())

    def epoch(self, ts_us: int) -> float:
        return self.epoch_origin + (ts_us - self.sensor_origin_us) / US


def monotonic_us() -> int:
    """The clock our own sources stamp frames with (libcamera uses CLOCK_MONOTONIC too)."""
    return time.monotonic_ns() // 1000


def split_annexb(data: bytes) -> list[bytes]:
    """Split an Annex-B byte stream into NAL units (without their start codes)."""
    units: list[bytes] = []
    start = -1
    i = 0
    n = len(data)
    while True:
        j = data.find(b"\x00\x00\x01", i)
        if j < 0:
            break
        if start >= 0:
            end = j - 1 if j > 0 and data[j - 1] == 0 else j
            units.append(data[start:end])
        start = j + 3
        i = start
    if 0 <= start < n:
        units.append(data[start:])
    return units


def nal_type(unit: bytes) -> int:
    return unit[0] & 0x1F if unit else -1


def has_parameter_sets(data: bytes) -> bool:
    """True when an access unit carries SPS and PPS, so a decoder can start on it."""
    types = {nal_type(u) for u in split_annexb(data[:4096])}
    return 7 in types and 8 in types


def release_memory() -> None:
    """Hand freed heap back to the system (glibc keeps it otherwise): worth it after big
    one-off work such as pre-encoding the synthetic scene, on a 512 MB Pi."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not glibc
        ctypes.CDLL(name).malloc_trim(0)


class RateGate:
    """Picks the frames to analyse so the analysis runs at its own rate, whatever the camera's.

    Timestamps jitter on a real sensor; half a frame of slack keeps a 20 fps camera analysed at
    5 fps on exactly every 4th frame rather than drifting to every 5th.
    """

    def __init__(self, analysis_fps: float, frame_period_us: int) -> None:
        self.interval_us = int(US / analysis_fps)
        self._slack_us = frame_period_us // 2
        self._next_due: int | None = None

    def due(self, ts: int) -> bool:
        if self._next_due is not None and ts < self._next_due - self._slack_us:
            return False
        self._next_due = ts + self.interval_us
        return True
