"""The Raspberry Pi itself: which model, which camera platform, and what its H.264 encoder
keeps up with.

Pi 0-4 (``vc4``): the bcm2835 ISP and a hardware H.264 encoder (V4L2), rated for 1080p30.
Pi 5, CM5 and Pi 500 (``pisp``): the PiSP ISP and no video encoder at all; picamera2 encodes
with libx264 through PyAV on the CPU. Off a Pi there is no camera platform.
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path

MODEL_FILE = Path("/proc/device-tree/model")
MEMINFO = Path("/proc/meminfo")

VC4 = "vc4"
PISP = "pisp"

VC4_MAX_SIDE = 1920
"""The widest and tallest picture the Pi 0-4 encoder takes."""
VC4_MAX_MACROBLOCKS = 8192
"""Its largest picture in 16x16 macroblocks (H.264 level 4.0's frame size; 1920x1080 is
8160, coded as 1920x1088)."""
VC4_MACROBLOCK_RATE = 245_760
"""Macroblocks a second the Pi 0-4 encoder keeps up with: level 4.0's rate, which is what
its rating (1080p30) means. picamera2 raises the level above it and never refuses; the
encoder then falls behind and the camera drops frames."""
PI5_MACROBLOCK_RATE = 326_400
"""Macroblocks a second libx264 keeps up with on a Pi 5's CPU at picamera2's settings
(``superfast`` for the High profile, ``zerolatency``, frame threads): 1080p40, 4K at 10 fps.
Chosen from ``bench/pi5_encoder.py``: a 1080p frame costs 13.6 ms of one core of the machine
it ran on, about three times that on a Pi 5's Cortex-A76, so 1080p40 takes 1.6 of its four
cores and leaves the rest for the camera thread, the analysis, live view and a Pi 5 that slows
down when hot (the measure allows 345,000 at two cores)."""


def pi_model() -> str | None:
    """``Raspberry Pi Zero W Rev 1.1`` and the like; None off a Raspberry Pi."""
    with contextlib.suppress(OSError):
        model = MODEL_FILE.read_text(errors="replace").strip("\0\n ")
        if model.startswith("Raspberry Pi"):
            return model
    return None


def platform(model: str | None) -> str | None:
    """``vc4`` for a Pi 0-4, ``pisp`` for a Pi 5 (CM5, Pi 500), None off a Pi."""
    if model is None:
        return None
    return PISP if re.search(r"Raspberry Pi (5|Compute Module 5|500)\b", model) else VC4


def hardware_encoder(model: str | None) -> bool:
    """Whether this Pi encodes H.264 in hardware (Pi 0-4)."""
    return platform(model) == VC4


def macroblocks(width: int, height: int) -> int:
    return ((width + 15) // 16) * ((height + 15) // 16)


def max_framerate(model: str | None, width: int, height: int) -> int | None:
    """The highest whole frame rate ``model``'s encoder keeps up with at ``width`` x
    ``height``; None when nothing bounds it (off a Pi: a replayed file is not encoded)."""
    kind = platform(model)
    if kind is None:
        return None
    rate = VC4_MACROBLOCK_RATE if kind == VC4 else PI5_MACROBLOCK_RATE
    return math.floor(rate / macroblocks(width, height))


def encoder_limit(
    model: str | None, width: int, height: int, fps: float | None = None
) -> str | None:
    """Why ``model`` cannot encode ``width`` x ``height`` (at ``fps``) in real time, or None
    when it can."""
    kind = platform(model)
    if kind is None:
        return None
    if kind == VC4 and (
        width > VC4_MAX_SIDE
        or height > VC4_MAX_SIDE
        or macroblocks(width, height) > VC4_MAX_MACROBLOCKS
    ):
        return (
            f"the {model}'s H.264 encoder takes at most 1920x1080 "
            f"({VC4_MAX_MACROBLOCKS} macroblocks, no side over {VC4_MAX_SIDE})"
        )
    top = max_framerate(model, width, height)
    if fps is not None and top is not None and fps > top:
        what = "H.264 encoder" if kind == VC4 else "software H.264 encoder (libx264)"
        if top < 1:
            return f"the {model}'s {what} cannot keep up with {width}x{height} at any frame rate"
        return f"the {model}'s {what} keeps up with at most {top} fps at {width}x{height}"
    return None


# -- memory ---------------------------------------------------------------------------------


def meminfo() -> dict[str, int]:
    """``/proc/meminfo`` in bytes (``CmaTotal``, ``MemAvailable``, ...); empty off Linux."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in MEMINFO.read_text().splitlines():
            name, _, rest = line.partition(":")
            fields = rest.split()
            with contextlib.suppress(ValueError, IndexError):
                out[name.strip()] = int(fields[0]) * (1024 if fields[1:2] == ["kB"] else 1)
    return out
