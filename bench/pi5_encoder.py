"""What H.264 costs a Raspberry Pi 5, which has no video encoder: picamera2's own
``H264Encoder`` there is ``LibavH264Encoder`` (libx264 through PyAV: ``superfast`` for the
High profile, ``zerolatency``, frame threads), called on the camera thread.

The daemon's ``PicameraSource`` runs on picamera2's real code against the libcamera
stand-in (``tests/pirig.py``: a Pi 5 with a Camera Module 3), fed real footage (the walkers of
``opencv-doc``'s ``vtest.avi``, scaled to each size) at the frame rate, for each size and rate
below, twice in one run: once with picamera2's H.264 encoder and once with an encoder that
does nothing (the baseline: the camera, the callback, the analysis and the stand-in's own
work). The encoder's cost is the difference in process CPU time per second of video, in
cores of this machine.

A Pi 5's Cortex-A76 at 2.4 GHz is taken as ``PI5_FACTOR`` times slower than one core of this
machine for libx264 (NEON against AVX2); that is an assumption, not a measurement: the owner's
script (``bench/on_a_pi.py``) measures it on a real Pi. The figure per frame is taken with
the camera delivering as fast as picamera2 takes its frames, so it is the work per frame
whatever else this machine is doing; the cores needed follow from the frame rate. The ceiling in
``pinthesky.hardware.board.PI5_MACROBLOCK_RATE`` keeps the encoder within ``PI5_CORES`` of the
Pi 5's four cores at the rates measured here.

Run (from the repository root; it runs itself under a picamera2 environment of
``.cache/``, built by ``make -C tests picamera2-envs`` when missing)::

    .venv/bin/python bench/pi5_encoder.py [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import REPO, Check, report

NAME = "pi5_encoder"
SIZES = [((1280, 720), 30), ((1920, 1080), 30), ((1920, 1080), 60), ((3840, 2160), 15)]
PI5_FACTOR = 3.0
"""One Pi 5 core (Cortex-A76, 2.4 GHz) against one core of this machine, for libx264."""
PI5_CORES = 2.0
"""What the encoder may take of the Pi 5's four cores at the ceiling: half, which leaves the
rest for the camera thread, the analysis and live view, and room for a Pi 5 without a cooler
that slows its clock when hot."""
PICAMERA2 = "0.3.38"


def _reexec() -> None:
    """Run under the picamera2 environment: the project venv never holds picamera2."""
    python = REPO / ".cache" / f"picamera2-{PICAMERA2}" / "bin" / "python"
    if not python.exists():
        subprocess.run(["make", "-s", "-C", str(REPO / "tests"), "picamera2-envs"], check=True)
    os.execv(str(python), [str(python), *sys.argv])


def footage(size: tuple[int, int], count: int) -> list[Any]:
    """``count`` Y planes of real footage at ``size`` (walkers, scaled)."""
    import av
    import footage as clips

    out = []
    with av.open(str(clips.vtest_path())) as container:
        for frame in container.decode(video=0):
            scaled = frame.reformat(width=size[0], height=size[1], format="gray")
            out.append(scaled.to_ndarray())
            if len(out) == count:
                break
    return out


def measure(size: tuple[int, int], fps: int, seconds: float, encode: bool) -> float:
    """Process CPU seconds per frame: the camera delivers as fast as picamera2 takes the
    frames, so the figure is the work per frame whatever this machine's load."""
    import dataclasses

    import pytest
    from pirig import PiRig

    from pinthesky.camera.base import AnalysisPort
    from pinthesky.camera.picam import PicameraSource
    from pinthesky.media import US
    from pinthesky.record.ring import PacketRing
    from pinthesky.settings import Resolution, defaults

    pictures = footage(size, 60)
    frames = round(seconds * fps)
    with pytest.MonkeyPatch.context() as mp:
        rig = PiRig(mp, Path(os.environ["BENCH_TMP"])).install("pi5", "imx708")
        import picamera2.encoders

        if not encode:

            class Nothing(picamera2.encoders.Encoder):  # type: ignore[misc]
                def __init__(self, **_: Any) -> None:
                    super().__init__()

            mp.setattr(picamera2.encoders, "H264Encoder", Nothing)
        settings = dataclasses.replace(
            defaults().camera, resolution=Resolution(*size), framerate=fps
        )
        src = PicameraSource(settings)
        src.open()
        rig.camera.picture = lambda stream, i, w, h: (
            pictures[i % len(pictures)] if (w, h) == size else pictures[0][:h, :w]
        )
        ring = PacketRing(60 * US)

        async def run() -> float:
            loop = asyncio.get_running_loop()
            port = AnalysisPort(loop, lambda f: None, 5.0, US // fps, False, lambda e: None)
            src.start(ring, port)
            rig.run(src, fps)  # warm up: the codec opens on its first frame
            cpu = time.process_time()
            await asyncio.to_thread(rig.run, src, frames)
            await asyncio.to_thread(src.stop)  # the frames libx264 still holds are encoded
            return (time.process_time() - cpu) / frames

        return asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    if importlib.util.find_spec("picamera2") is None:
        _reexec()
    sys.path.insert(0, str(REPO / "tests"))
    from pinthesky.hardware import board

    figures: dict[str, Any] = {"pi5_factor": PI5_FACTOR, "pi5_cores_allowed": PI5_CORES}
    rates = []
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BENCH_TMP"] = tmp
        for size, fps in SIZES:
            key = f"{size[0]}x{size[1]}p{fps}"
            base = measure(size, fps, args.seconds, encode=False)
            full = measure(size, fps, args.seconds, encode=True)
            per_frame = max(0.0, full - base)
            cores = per_frame * fps  # of this machine, to keep up with the camera
            figures[f"{key}_baseline_ms_per_frame"] = round(base * 1000, 2)
            figures[f"{key}_with_encoder_ms_per_frame"] = round(full * 1000, 2)
            figures[f"{key}_encoder_cores"] = round(cores, 3)
            figures[f"{key}_pi5_cores"] = round(cores * PI5_FACTOR, 2)
            rates.append(per_frame / board.macroblocks(*size))  # core-seconds per macroblock
    # The macroblock rate at which the encoder takes PI5_CORES of a Pi 5, from the dearest
    # measured cost per macroblock.
    ceiling = PI5_CORES / (max(rates) * PI5_FACTOR)
    figures["pi5_ceiling_macroblocks_per_s"] = round(ceiling)
    figures["chosen_macroblocks_per_s"] = board.PI5_MACROBLOCK_RATE
    figures["chosen_1080p_fps"] = board.max_framerate("Raspberry Pi 5", 1920, 1080)
    checks = [
        Check(
            "ceiling",
            "the chosen ceiling is within what the measure allows",
            board.PI5_MACROBLOCK_RATE / ceiling,
            1.0,
            "x",
        )
    ]
    return 0 if report(NAME, figures, checks) else 1


if __name__ == "__main__":
    sys.exit(main())
