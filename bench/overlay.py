"""What privacy masks and the timestamp cost per frame, side by side with a frame left alone.

The overlay runs on the camera's own thread for every frame (picamera2's ``pre_callback``),
on the main stream and the lores one. Measured here per frame, at 640x480 (the default, with
its 320x240 lores) and at 1920x1080, over 30 s of frames (so the text is drawn again once a
second, as in the daemon), for: nothing, one privacy mask (160x120 at 640x480, scaled with
the picture), the timestamp, and both.

A Pi Zero W's ARM1176 is taken as 100 times slower than this machine's core (the worst of the
30-100x in ``shared/spec/camera.md``; numpy's slice fills are memory-bound, so this is
pessimistic). Requirement: at the default settings the mask and the timestamp together take at
most a tenth of a frame's time on a Pi Zero W (5 ms at 20 fps).

Run from the repository root::

    .venv/bin/python bench/overlay.py
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import numpy as np
from _common import Check, report

from pinthesky.camera.overlay import Overlay
from pinthesky.settings import Rect, Resolution, defaults

NAME = "overlay"
PI_ZERO_FACTOR = 100.0
SECONDS = 30


def per_frame(size: tuple[int, int], lores: tuple[int, int], fps: int, **changes: Any) -> float:
    """Microseconds per frame to burn the overlay into main and lores (median of 5 runs)."""
    w, h = size
    scale = w / 640
    mask = Rect(round(64 * scale), round(96 * scale), round(160 * scale), round(120 * scale))
    settings = dataclasses.replace(
        defaults().camera,
        resolution=Resolution(w, h),
        lores=Resolution(*lores),
        framerate=fps,
        privacy_masks=(mask,) if changes.get("mask") else (),
        timestamp="%Y-%m-%d %H:%M:%S" if changes.get("timestamp") else None,
    )
    overlay = Overlay(settings, lambda ts: 1_700_000_000 + ts / 1e6)
    rng = np.random.default_rng(1)
    frames = {
        s: rng.integers(16, 235, (s[1] * 3 // 2, s[0]), dtype=np.uint8) for s in (size, lores)
    }
    runs = []
    for _ in range(5):
        planes = {s: overlay.on(s) for s in frames} if overlay.active else {}
        began = time.perf_counter()
        for i in range(SECONDS * fps):
            ts = i * 1_000_000 // fps
            for s, plane in planes.items():
                yuv = frames[s]
                fw, fh = s
                flat = yuv.reshape(-1)
                n = (fh // 2) * (fw // 2)
                u = flat[fw * fh : fw * fh + n].reshape(fh // 2, fw // 2)
                v = flat[fw * fh + n : fw * fh + 2 * n].reshape(fh // 2, fw // 2)
                plane.apply(yuv[:fh], u, v, ts)
        runs.append((time.perf_counter() - began) / (SECONDS * fps) * 1e6)
    return float(np.median(runs))


def main() -> int:
    figures: dict[str, Any] = {"pi_zero_factor": PI_ZERO_FACTOR}
    cases = {
        "none": {},
        "mask": {"mask": 1},
        "timestamp": {"timestamp": 1},
        "both": {"mask": 1, "timestamp": 1},
    }
    for label, size, lores, fps in (
        ("640x480", (640, 480), (320, 240), 20),
        ("1080p", (1920, 1080), (320, 240), 30),
    ):
        for case, changes in cases.items():
            us = per_frame(size, lores, fps, **changes)
            figures[f"{label}_{case}_us_per_frame"] = round(us, 2)
            figures[f"{label}_{case}_pi_zero_share_of_frame"] = round(
                us * PI_ZERO_FACTOR / (1e6 / fps), 4
            )
    share = figures["640x480_both_pi_zero_share_of_frame"]
    checks = [
        Check(
            "pi_zero_default",
            "mask and timestamp at 640x480, 20 fps, on a Pi Zero W (projected), share of a frame",
            share,
            0.1,
            "x",
        )
    ]
    return 0 if report(NAME, figures, checks) else 1


if __name__ == "__main__":
    sys.exit(main())
