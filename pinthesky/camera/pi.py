"""What the Raspberry Pi itself allows: the picamera2 versions we run on, the hardware
encoder's largest picture, camera memory (CMA) and the sensor mode that sees the whole field.

Pure functions over facts read from the Pi (``/proc/device-tree/model``, ``/proc/meminfo``,
picamera2's package metadata, ``Picamera2.sensor_modes``), so every rule is tested off a Pi.
Nothing here imports picamera2: asking its version must not load the camera stack (before
picamera2 0.3.34 that import alone loads PyAV, about 25 MB).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

MIN_PICAMERA2 = (0, 3, 30)
"""The oldest picamera2 we run on. Before it: no stills (YUV420 ``request.save`` before 0.3.26,
``captured_request(wait=...)`` before 0.3.20), no camera at all (``H264Encoder(profile=...)``
before 0.3.17, the V4L2 encoders do not import in 0.3.29), a camera-memory leak on every reopen
(before 0.3.18) and a hardware encoder that can stall (before 0.3.26)."""

LAZY_PYAV_PICAMERA2 = (0, 3, 34)
"""From this version on ``import picamera2`` no longer imports PyAV."""

UPGRADE_HINT = "sudo apt update && sudo apt install python3-picamera2 python3-libcamera"

ENCODER_MAX = (1920, 1920)
"""Largest width and height the Pi 0-4 hardware H.264 encoder takes (level 4.2 by picture)."""
ENCODER_MAX_MACROBLOCKS = 8192
"""Level 4.2's largest picture in 16x16 macroblocks: 1920x1080 is 8160 (1920x1088 coded)."""

BUFFERS = 6
"""picamera2's buffer count for a video configuration: what we ask for when memory allows."""
MIN_BUFFERS = 3
"""Fewer and the camera drops frames while the encoder holds one and a still holds another."""
ENCODER_CMA = 8 * 2**20
"""Camera memory one V4L2 encoder (H.264 or MJPEG) holds on a Pi 0-4, its own buffers."""
CMA_SHARE = 0.75
"""Of the CMA the kernel reports, what the camera may plan to use: the display and the
codec firmware take the rest."""


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.3.30"`` -> ``(0, 3, 30)``; a Debian suffix (``0.3.30-1``, ``+rpt1``) is ignored."""
    release = re.split(r"[-+~]", text, maxsplit=1)[0]
    return tuple(int(p) for p in re.findall(r"\d+", release)[:3])


def show(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


def picamera2_version() -> str | None:
    """The installed picamera2's version from its package metadata (apt and pip both write
    it), without importing it; None when it is not installed."""
    try:
        return metadata.version("picamera2")
    except metadata.PackageNotFoundError:
        return None


def unsupported(version: str | None) -> str | None:
    """One line saying why ``version`` cannot be used, or None when it can."""
    if version is None:
        return None  # not installed: the import error says so
    if version_tuple(version) < MIN_PICAMERA2:
        return (
            f"picamera2 {version} is too old (pinthesky needs {show(MIN_PICAMERA2)} or later); "
            f"upgrade it: {UPGRADE_HINT}"
        )
    return None


# -- the Pi model ------------------------------------------------------------------------------

MODEL_FILE = Path("/proc/device-tree/model")


def pi_model() -> str | None:
    """``Raspberry Pi Zero W Rev 1.1`` and the like; None off a Raspberry Pi."""
    with contextlib.suppress(OSError):
        model = MODEL_FILE.read_text(errors="replace").strip("\0\n ")
        if model.startswith("Raspberry Pi"):
            return model
    return None


def hardware_encoder(model: str | None) -> bool:
    """Whether this Pi encodes H.264 in hardware (Pi 0-4): the Pi 5 has no encoder and uses
    libx264; a machine that is not a Pi uses libx264 too."""
    if model is None:
        return False
    return not re.search(r"Raspberry Pi (5|Compute Module 5|500)\b", model)


def encoder_limit(model: str | None, width: int, height: int) -> str | None:
    """Why ``model``'s encoder cannot take ``width`` x ``height``, or None when it can."""
    if not hardware_encoder(model):
        return None
    macroblocks = ((width + 15) // 16) * ((height + 15) // 16)
    if width > ENCODER_MAX[0] or height > ENCODER_MAX[1] or macroblocks > ENCODER_MAX_MACROBLOCKS:
        return (
            f"the {model}'s H.264 encoder takes at most 1920x1080 "
            f"({ENCODER_MAX_MACROBLOCKS} macroblocks, no side over {ENCODER_MAX[0]})"
        )
    return None


# -- camera memory ----------------------------------------------------------------------------


MEMINFO = Path("/proc/meminfo")


def cma_total() -> int | None:
    """The kernel's contiguous memory (CMA) in bytes, where the camera's buffers live."""
    return _meminfo("CmaTotal:")


def mem_total() -> int | None:
    """The memory the kernel manages, in bytes (a 512 MB Pi Zero has about 430 MB)."""
    return _meminfo("MemTotal:")


def _meminfo(field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in MEMINFO.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return None


def yuv420_bytes(width: int, height: int) -> int:
    # libcamera pads rows to 64 bytes on a Pi; the chroma planes add half again.
    stride = (width + 63) // 64 * 64
    return stride * height * 3 // 2


def raw_bytes(width: int, height: int, bit_depth: int) -> int:
    # CSI-2 packed: 10 bits take 1.25 bytes, 12 bits 1.5; rows padded to 32 bytes.
    stride = (width * max(8, bit_depth) // 8 + 31) // 32 * 32
    return stride * height


@dataclass(frozen=True)
class MemoryPlan:
    """How many buffers the camera gets and what they cost."""

    buffers: int
    bytes: int
    """Camera memory at ``buffers`` buffers, encoders included."""
    full: int
    """What ``BUFFERS`` would have cost."""


def camera_memory(
    main: tuple[int, int],
    lores: tuple[int, int],
    raw: tuple[int, int, int] | None,
    buffers: int,
    encoders: int,
) -> int:
    """Bytes of camera memory: ``buffers`` each of main, lores and raw (width, height, bit
    depth), plus ``encoders`` V4L2 encoders."""
    per_buffer = yuv420_bytes(*main) + yuv420_bytes(*lores)
    if raw is not None:
        per_buffer += raw_bytes(*raw)
    return buffers * per_buffer + encoders * ENCODER_CMA


def plan_memory(
    main: tuple[int, int],
    lores: tuple[int, int],
    raw: tuple[int, int, int] | None,
    encoders: int,
    cma: int | None,
) -> MemoryPlan | str:
    """The most buffers (``BUFFERS`` down to ``MIN_BUFFERS``) that fit in ``CMA_SHARE`` of
    ``cma``, or one line saying that even the fewest do not."""
    full = camera_memory(main, lores, raw, BUFFERS, encoders)
    if cma is None:  # not a Pi, or a kernel that does not say: picamera2's default
        return MemoryPlan(BUFFERS, full, full)
    budget = int(cma * CMA_SHARE)
    for n in range(BUFFERS, MIN_BUFFERS - 1, -1):
        need = camera_memory(main, lores, raw, n, encoders)
        if need <= budget:
            return MemoryPlan(n, need, full)
    need = camera_memory(main, lores, raw, MIN_BUFFERS, encoders)
    return (
        f"{main[0]}x{main[1]} needs {need / 2**20:.0f} MB of camera memory even with "
        f"{MIN_BUFFERS} buffers, and this Pi has {cma / 2**20:.0f} MB (CMA); lower "
        "camera.resolution or raise the CMA (dtoverlay=vc4-kms-v3d,cma-128 in config.txt)"
    )


# -- sensor modes -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SensorMode:
    """One of ``Picamera2.sensor_modes``, reduced to what the choice needs."""

    size: tuple[int, int]
    bit_depth: int
    fps: float
    crop: tuple[int, int, int, int]
    """``crop_limits``: the part of the pixel array this mode reads (x, y, width, height)."""

    @classmethod
    def parse(cls, mode: Mapping[str, Any]) -> SensorMode:
        w, h = mode["size"]
        x, y, cw, ch = mode["crop_limits"]
        return cls((int(w), int(h)), int(mode["bit_depth"]), float(mode["fps"]), (x, y, cw, ch))

    def describe(self, array: tuple[int, int]) -> str:
        x, y, cw, ch = self.crop
        share = cw / array[0] if array[0] else 1.0
        return (
            f"{self.size[0]}x{self.size[1]} {self.bit_depth}-bit up to {self.fps:.1f} fps, "
            f"reading {cw}x{ch} at ({x},{y}): {share:.0%} of the sensor's width"
        )


UPSCALE = 0.8
"""The ISP may scale a sensor mode up by this much (1/0.8 = 1.25x) rather than read a
larger mode."""


def pixel_array(modes: Sequence[SensorMode]) -> tuple[int, int]:
    """The sensor's field as its modes read it: the widest crop."""
    return max(((m.crop[2], m.crop[3]) for m in modes), key=lambda s: s[0] * s[1])


def choose_mode(
    modes: Sequence[SensorMode], size: tuple[int, int], fps: float
) -> SensorMode | None:
    """The sensor mode for a ``size`` video at ``fps``: the one that reads the widest part of
    the sensor (a security camera wants its whole field) among those fast enough, then the
    smallest output at least ``UPSCALE`` of the requested width (the ISP scales that little
    up well, and a bigger raw buffer costs camera memory a Pi Zero lacks), then more bits
    (better in the dark). When no mode is fast enough, the fastest of the widest field."""
    if not modes:
        return None
    fast = [m for m in modes if m.fps + 0.01 >= fps] or [max(modes, key=lambda m: m.fps)]

    def field(m: SensorMode) -> int:
        return m.crop[2] * m.crop[3]

    widest = max(field(m) for m in fast)
    candidates = [m for m in fast if field(m) == widest]
    enough = [m for m in candidates if m.size[0] >= size[0] * UPSCALE]
    if not enough:  # all smaller than asked: the biggest of them
        return max(candidates, key=lambda m: (m.size[0] * m.size[1], m.bit_depth, m.fps))
    return min(enough, key=lambda m: (m.size[0] * m.size[1], -m.bit_depth, -m.fps))
