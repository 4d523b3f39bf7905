"""Device metrics as CloudWatch Embedded Metric Format (EMF) records.

``METRICS`` names every metric once, with its unit and kind. Counters are cumulative totals in
the daemon; each record carries what they gained since the previous record (a total that went
down, because a component was rebuilt, counts from zero). Gauges are read as they are.
``emf_record`` is the one place an EMF document is built.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str
    counter: bool


METRICS = (
    Metric("MotionEvents", "Count", True),
    Metric("ClipsRecorded", "Count", True),
    Metric("ClipWriteErrors", "Count", True),
    Metric("ClipsEvicted", "Count", True),
    Metric("ClipsUploaded", "Count", True),
    Metric("ImagesUploaded", "Count", True),
    Metric("UploadsFailed", "Count", True),
    Metric("UploadBytes", "Bytes", True),
    Metric("UploadSeconds", "Seconds", True),
    Metric("UploadQueueDepth", "Count", False),
    Metric("UploadQueueBytes", "Bytes", False),
    Metric("CommandsHandled", "Count", True),
    Metric("CommandsRejected", "Count", True),
    Metric("ShadowUpdatesApplied", "Count", True),
    Metric("ShadowUpdatesRejected", "Count", True),
    Metric("CameraRestarts", "Count", True),
    Metric("LogRecordsDropped", "Count", True),
    Metric("CpuPercent", "Percent", False),
    Metric("MemoryResident", "Bytes", False),
    Metric("MemoryAvailable", "Bytes", False),
    Metric("DiskFree", "Bytes", False),
)
BY_NAME = {m.name: m for m in METRICS}


def emf_record(
    namespace: str,
    dimensions: Mapping[str, str],
    values: Mapping[str, float],
    timestamp_ms: int,
) -> dict[str, Any]:
    """One EMF document: ``values`` (names from ``METRICS``) under one dimension set."""
    return {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [list(dimensions)],
                    "Metrics": [{"Name": n, "Unit": BY_NAME[n].unit} for n in values],
                }
            ],
        },
        **dimensions,
        **values,
    }


def _resident_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Sampler:
    """Turns the daemon's totals and gauges into one record's values."""

    def __init__(self) -> None:
        self._previous: dict[str, float] = {}
        self._cpu = self._cpu_seconds()
        self._wall = time.monotonic()

    @staticmethod
    def _cpu_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def system(self, disk: Path) -> dict[str, float]:
        """This process's CPU (percent of one core since the last call) and memory, the
        machine's available memory, the free space where clips are kept (reads /proc)."""
        cpu, wall = self._cpu_seconds(), time.monotonic()
        percent = 100.0 * (cpu - self._cpu) / max(wall - self._wall, 1e-6)
        self._cpu, self._wall = cpu, wall
        try:
            st = os.statvfs(disk)
            free = st.f_bavail * st.f_frsize
        except OSError:
            free = 0
        return {
            "CpuPercent": round(percent, 2),
            "MemoryResident": _resident_bytes(),
            "MemoryAvailable": _available_bytes(),
            "DiskFree": free,
        }

    def values(self, readings: Mapping[str, float]) -> dict[str, float]:
        """Counters become their gain since the previous call; gauges pass through."""
        out: dict[str, float] = {}
        for name, value in readings.items():
            metric = BY_NAME[name]
            if metric.counter:
                before = self._previous.get(name, 0)
                self._previous[name] = value
                out[name] = value - before if value >= before else value
            else:
                out[name] = value
        return out
