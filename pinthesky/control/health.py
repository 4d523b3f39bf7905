"""The device's health report (``health_end`` of the Pi In The Sky contract).

Figures come from ``/proc`` and ``statvfs``, cheaply, with no dependency: memory in kB as
``/proc/meminfo`` gives it, disk in bytes of ``/``, CPU as the percentage used since the last
report, ``up_time`` in whole seconds of the monotonic clock (it never wraps).
"""

from __future__ import annotations

import fcntl
import os
import platform
import socket
import struct
import time
from pathlib import Path
from typing import Any

from pinthesky import __version__
from pinthesky.hardware.board import meminfo

_SIOCGIFADDR = 0x8915


def _cpu_times() -> tuple[int, int]:
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields), idle


def _os_release() -> dict[str, str]:
    out = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            out[key] = value.strip().strip('"')
    except OSError:
        pass
    return out


def ip_address() -> str | None:
    """The first IPv4 address of a non-loopback interface (asks the kernel, sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            if name == "lo":
                continue
            try:
                packed = fcntl.ioctl(
                    s.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode())
                )
            except OSError:
                continue
            return socket.inet_ntoa(packed[20:24])
    return None


THERMAL = Path("/sys/class/thermal")
_CPU_ZONES = ("cpu-thermal", "cpu_thermal", "soc_thermal", "x86_pkg_temp")
"""Thermal zone types of the CPU: a Raspberry Pi's, then other boards' and PCs'."""


def cpu_temperature(root: Path = THERMAL) -> float | None:
    """Degrees Celsius of the CPU (a Pi's ``cpu-thermal`` zone, else the first zone); None
    where the kernel reports none (a virtual machine, a container)."""
    readings: dict[str, float] = {}
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip()
            readings.setdefault(kind, int((zone / "temp").read_text().strip()) / 1000)
        except (OSError, ValueError):
            continue
    for kind in _CPU_ZONES:
        if kind in readings:
            return round(readings[kind], 1)
    return round(next(iter(readings.values())), 1) if readings else None


class Health:
    """Builds health reports; keeps the CPU sample of the previous one."""

    def __init__(self) -> None:
        self.started_epoch = int(time.time())
        self._started = time.monotonic()
        self._cpu = _cpu_times()
        self._system: dict[str, Any] | None = None
        self._system_at = 0.0

    SYSTEM_TTL_S = 1.0
    """System readings are reused for this long: a burst of health requests (a flood of
    them, even) costs one reading of /proc a second, not one per request."""

    def report(self, motion_captured: int, recording: bool) -> dict[str, Any]:
        now = time.monotonic()
        if self._system is None or now - self._system_at >= self.SYSTEM_TTL_S:
            self._system, self._system_at = self._read_system(), now
        return {
            "version": __version__,
            "python_version": platform.python_version(),
            "motion_captured": motion_captured,
            "recording_status": recording,
            "start_time": self.started_epoch,
            "up_time": int(now - self._started),
            **self._system,
        }

    def _read_system(self) -> dict[str, Any]:
        total, idle = _cpu_times()
        d_total, d_idle = total - self._cpu[0], idle - self._cpu[1]
        self._cpu = (total, idle)
        mem = {k: v // 1024 for k, v in meminfo().items()}  # in kB, as the contract has it
        disk = os.statvfs("/")
        osr = _os_release()
        return {
            "mem_free": mem.get("MemFree", 0),
            "mem_avail": mem.get("MemAvailable", 0),
            "mem_total": mem.get("MemTotal", 0),
            "disk_free": disk.f_bavail * disk.f_frsize,
            "disk_used": (disk.f_blocks - disk.f_bfree) * disk.f_frsize,
            "disk_total": disk.f_blocks * disk.f_frsize,
            "cpu_used": round(100.0 * (1 - d_idle / d_total), 1) if d_total > 0 else 0.0,
            "cpu_count": os.cpu_count() or 1,
            "ip_addr": ip_address(),
            "os_version": osr.get("VERSION", platform.release()),
            "os_id": osr.get("ID", platform.system().lower()),
        }
