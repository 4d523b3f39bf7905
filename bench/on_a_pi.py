"""On a Raspberry Pi with its camera: what the camera really does with pinthesky's configuration.

What no test off a Pi can settle: the camera memory the V4L2 encoders and libcamera really
take, the rate the camera delivers and the frames it drops at each size, what a Pi 5's software
encoder costs in CPU and heat, and whether a turned still looks right. Stop the service first
(it holds the camera), then, as the service's user::

    sudo systemctl stop pinthesky
    sudo -u pinthesky /opt/pinthesky/venv/bin/python on_a_pi.py --resolution 1920x1080 \\
        --framerate 30 --seconds 20
    sudo systemctl start pinthesky

Prints ``key=value`` lines: the board and its memory, the camera module and the modes libcamera
lists, the mode, buffers and memory pinthesky chose, camera memory in use while it runs (with a
live JPEG viewer half of the time, as when someone watches the page), the rate delivered from
the sensor's timestamps, frames dropped, CPU and temperature; and writes a still (turned by
``--rotation``) to ``--still``. Send the output with a report.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def _temperature() -> float | None:
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000
    except (OSError, ValueError):
        return None


def _cma_used() -> int | None:
    from pinthesky.hardware import board

    info = board.meminfo()
    if "CmaTotal" not in info or "CmaFree" not in info:
        return None
    return info["CmaTotal"] - info["CmaFree"]


def _print(key: str, value: Any) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"{key}={value}", flush=True)


def run(args: argparse.Namespace) -> int:
    from pinthesky import settings as config
    from pinthesky.camera import picam, stack
    from pinthesky.camera.base import AnalysisPort
    from pinthesky.errors import PintheskyError
    from pinthesky.hardware import board, sensors
    from pinthesky.live import tap as live_tap
    from pinthesky.media import US
    from pinthesky.record.ring import PacketRing

    model = board.pi_model()
    _print("board", model or "not a Raspberry Pi")
    info = board.meminfo()
    for key in ("MemTotal", "MemAvailable", "CmaTotal", "CmaFree"):
        if key in info:
            _print(f"{key.lower()}_mb", info[key] / 2**20)
    _print("picamera2", stack.picamera2_version())
    try:
        s = config.load(
            {
                "source.source": "picamera2",
                "camera.resolution": args.resolution,
                "camera.framerate": args.framerate,
                "camera.rotation": args.rotation,
            },
            environ={},
        )
        src = picam.PicameraSource(s.camera)
        before = _cma_used()
        stream = src.open()
    except PintheskyError as exc:
        _print("refused", str(exc))
        return 1
    attached = src.attached
    setup = src.setup
    assert attached is not None and setup is not None
    _print("camera", attached.model)
    _print("autofocus", attached.autofocus)
    for m in attached.modes:
        _print(f"mode_{m.size[0]}x{m.size[1]}_{m.bit_depth}bit", f"{m.fps} fps, crop {m.crop}")
    if setup.mode is not None:
        array = sensors.pixel_array(attached.modes)
        _print("chosen", sensors.describe(setup.mode, (stream.width, stream.height), array))
    _print("buffers", setup.buffers)
    _print("planned_mb", setup.bytes / 2**20)
    _print("live_jpeg_in_hardware", setup.live_encoder)
    _print("framerate_asked", args.framerate)
    _print("framerate_configured", float(stream.framerate))

    ring = PacketRing(round((args.seconds + 5) * US))
    samples: dict[str, list[float]] = {"cma": [], "temp": []}

    async def main() -> float:
        loop = asyncio.get_running_loop()
        tap = live_tap.LiveTap(loop, 5)
        tap.reset(
            config.live_size(s.live, config.Resolution(stream.width, stream.height)), US // 20
        )
        port = AnalysisPort(
            loop, lambda f: None, 5.0, round(US / stream.framerate), False, lambda e: None
        )
        src.start(ring, port, tap)
        cpu = os.times()
        started = time.monotonic()
        feed = tap.subscribe(live_tap.JPEG)
        while time.monotonic() - started < args.seconds:
            if feed is not None and time.monotonic() - started > args.seconds / 2:
                feed.close()  # the second half without a viewer
                feed = None
            await asyncio.sleep(1)
            used = _cma_used()
            if used is not None:
                samples["cma"].append(used)
            temp = _temperature()
            if temp is not None:
                samples["temp"].append(temp)
        spent = os.times()
        return (spent.user + spent.system - cpu.user - cpu.system) / (time.monotonic() - started)

    cores = asyncio.run(main())
    still = src.capture_jpeg()
    Path(args.still).write_bytes(still)
    src.stop()
    packets, _ = ring.read(0)
    gaps = [b.ts - a.ts for a, b in itertools.pairwise(packets)]
    if gaps:
        period = statistics.median(gaps)
        _print("framerate_delivered", US / period)
        _print("frames_dropped", sum(round(g / period) - 1 for g in gaps if g > 1.5 * period))
    _print("packets", len(packets))
    _print("cpu_cores", cores)
    if samples["cma"] and before is not None:
        _print("cma_in_use_mb", (max(samples["cma"]) - before) / 2**20)
    if samples["temp"]:
        _print("temperature_max_c", max(samples["temp"]))
    _print("still", f"{args.still} ({len(still)} bytes, turned by {args.rotation} degrees)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", default="640x480")
    parser.add_argument("--framerate", type=int, default=20)
    parser.add_argument("--rotation", type=int, default=0, choices=(0, 90, 180, 270))
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--still", default="on_a_pi.jpg")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
