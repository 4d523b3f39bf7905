"""Bitrate against picture quality: the measurements behind ``--encoding-bitrate auto``.

Issue 19. Real footage (OpenCV's ``vtest.avi``: people walking, 768x576 at 10 fps, shipped in
Debian's ``opencv-doc``) and the synthetic scene (a still room with sensor noise and an object
crossing it) are scaled to each common camera size and encoded with libx264 set up as the
Pi's encoder is (``pinthesky.camera.x264.X264Encoder``: no B-frames, one keyframe a second,
SPS/PPS repeated, the bitrate held by the VBV, High profile; the ``superfast`` preset that
picamera2 gives libx264 on a Pi 5 for the High profile). Each encode is decoded again and
compared with its source on the luma plane: PSNR, and SSIM on 8x8 windows (Wang et al.),
both in numpy.

Two parts, both printed as ``key=value`` lines:

- ``--curves``: every footage and size at a ladder of bits per pixel per frame, with the old
  default (17 Mb/s) as the last rung: the curves the table in ``pinthesky.settings`` was
  chosen from (the slow part: about 20 minutes here, longer on a loaded machine).
- always: the same footage at the old default and at ``auto``, side by side: bytes per
  30-second clip, PSNR and SSIM of each, and the seconds to upload each clip to a local S3
  (moto on 127.0.0.1, started here), plus what the clip takes over a 10 Mb/s Wi-Fi link
  (computed from its size).

Run from the repository root: ``.venv/bin/python bench/bitrate.py [--curves]`` (about 3
minutes without the curves); writes bench/out/bitrate.json. Exits 0 whether the checks pass or
fail (``--strict``: 1 on FAIL).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from _common import REPO, Check, report

sys.path.insert(0, str(REPO / "tests"))

NAME = "bitrate"
OLD_DEFAULT = 17_000_000
CLIP_S = 30.0
SECONDS = 6
"""Seconds of each footage encoded per measurement."""
SIZES = ((640, 480), (1280, 720), (1920, 1080))
BPP_LADDER = (0.015, 0.03, 0.05, 0.08, 0.12, 0.18, 0.27, 0.4)
AUTO_SSIM_SHORTFALL = 0.025
"""Real footage at auto keeps an SSIM of at least 0.975 (the knee is at 0.98)."""
MAKE_RUN_RATIO = 0.25
"""make run's clip at auto is at most a quarter of its size at the old default."""
WIFI_BPS = 10_000_000
"""A Pi Zero W's Wi-Fi in practice (10-20 Mb/s): the time a clip holds the link."""

U8 = npt.NDArray[np.uint8]


# -- footage -------------------------------------------------------------------------------


def vtest_frames(width: int, height: int, fps: int) -> Iterator[Any]:
    """The walkers, scaled; every second frame for 5 fps (the footage is 10 fps)."""
    import av
    import footage

    step = 2 if fps == 5 else 1
    with av.open(str(footage.vtest_path())) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % step == 0:
                yield frame.reformat(width=width, height=height, format="yuv420p")


def tree_frames(width: int, height: int, fps: int) -> Iterator[Any]:
    """A real tree in wind (320x240 at 15 fps, scaled up): the hardest scene here."""
    import av
    import footage

    with av.open(str(footage.tree_path())) as container:
        for frame in container.decode(video=0):
            yield frame.reformat(width=width, height=height, format="yuv420p")


def synthetic_frames(width: int, height: int, fps: int) -> Iterator[Any]:
    """The scene ``make run`` records, its object crossing, with the sensor's noise."""
    import av

    from pinthesky.camera.synthetic import CROSS_AT_S, NOISE_SIGMA, Scene, _noisy

    rng = np.random.default_rng(3)
    scene = Scene(width, height)
    base = scene.background()
    noise = rng.normal(0, NOISE_SIGMA, (height + 16, width + 16)).astype(np.int16)
    chroma = np.full((height // 2, width), 128, np.uint8)
    i = 0
    while True:
        luma = _noisy(scene.render(base, CROSS_AT_S - 1 + i / fps), noise, rng)
        yield av.VideoFrame.from_ndarray(np.concatenate([luma, chroma]), format="yuv420p")
        i += 1


FOOTAGE: dict[str, Callable[[int, int, int], Iterator[Any]]] = {
    "walkers": vtest_frames,
    "tree": tree_frames,
    "synthetic": synthetic_frames,
}
CURVES = (
    *(("walkers", w, h, 10) for w, h in SIZES),
    ("walkers", 640, 480, 5),  # the same scene at half the frame rate
    *(("tree", w, h, 15) for w, h in SIZES),
    ("synthetic", 640, 480, 20),
)
"""The curves measured with ``--curves``: (footage, width, height, frames per second); real
footage at its own frame rate (the walkers also at every second frame)."""


# -- quality -------------------------------------------------------------------------------


def luma(frame: Any) -> U8:
    plane = frame.planes[0]
    rows: U8 = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
    return rows[:, : frame.width]


def _box(x: npt.NDArray[np.float32], k: int = 8) -> npt.NDArray[np.float64]:
    """Means over every k x k window (an integral image)."""
    c = np.cumsum(np.cumsum(np.pad(x, ((1, 0), (1, 0))), 0, dtype=np.float64), 1)
    out: npt.NDArray[np.float64] = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)
    return out


def ssim(a: U8, b: U8) -> float:
    """Mean SSIM of two luma planes over 8x8 windows, constants of Wang et al. (2004)."""
    x, y = a.astype(np.float32), b.astype(np.float32)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _box(x), _box(y)
    vx, vy = _box(x * x) - mx * mx, _box(y * y) - my * my
    cov = _box(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def psnr(a: U8, b: U8) -> float:
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 99.0 if mse == 0 else 10 * float(np.log10(255 * 255 / mse))


def measure(frames: list[Any], fps: int, bitrate: int) -> tuple[dict[str, float], bytes]:
    """Encode as the Pi would, decode, compare: kb/s, PSNR and SSIM (every third frame), and
    the H.264 stream itself."""
    import av

    from pinthesky.camera.x264 import X264Encoder

    w, h = frames[0].width, frames[0].height
    enc = X264Encoder(w, h, Fraction(fps), bitrate, "high", fps, preset="superfast")
    packets = []
    for i, frame in enumerate(frames):
        packets += enc.encode(frame, round(i * 1_000_000 / fps))
    packets += enc.close()
    decoder: Any = av.CodecContext.create("h264", "r")
    decoded: list[Any] = []
    for p in packets:
        decoded += decoder.decode(av.Packet(p.data))
    decoded += decoder.decode(None)
    if len(decoded) != len(frames):
        raise RuntimeError(f"decoded {len(decoded)} of {len(frames)} frames")
    pairs = [(luma(s), luma(d)) for s, d in zip(frames, decoded, strict=True)][::3]
    stream = b"".join(p.data for p in packets)
    quality = {
        "kbps": len(stream) * 8 / (len(frames) / fps) / 1000,
        "psnr": float(np.mean([psnr(a, b) for a, b in pairs])),
        "ssim": float(np.mean([ssim(a, b) for a, b in pairs])),
    }
    return quality, stream


def take(source: Iterator[Any], count: int) -> list[Any]:
    frames = []
    for frame in source:
        frames.append(frame)
        if len(frames) == count:
            break
    return frames


# -- the two parts -------------------------------------------------------------------------


def curves(figures: dict[str, Any]) -> None:
    rows = []
    for name, w, h, fps in CURVES:
        frames = take(FOOTAGE[name](w, h, fps), SECONDS * fps)
        ladder = sorted({round(b * w * h * fps, -3) for b in BPP_LADDER} | {OLD_DEFAULT})
        for bitrate in ladder:
            m, _ = measure(frames, fps, int(bitrate))
            row = {"footage": name, "size": f"{w}x{h}", "fps": fps, **m}
            row["target_kbps"] = bitrate / 1000
            row["bpp"] = m["kbps"] * 1000 / (w * h * fps)
            rows.append(row)
            print(
                f"curve {name} {w}x{h} {fps}fps target={bitrate / 1e6:.2f}Mb/s "
                f"got={m['kbps'] / 1000:.2f}Mb/s bpp={row['bpp']:.3f} "
                f"psnr={m['psnr']:.2f} ssim={m['ssim']:.4f}",
                flush=True,
            )
    figures["curves"] = rows


def side_by_side(figures: dict[str, Any], checks: list[Check]) -> None:
    """Old default against auto on the same footage: size, quality, upload time."""
    from servers import moto_server, s3_client

    from pinthesky.settings import Resolution, auto_bitrate

    cases = [("synthetic", 640, 480, 20)]  # what make run records
    cases += [("walkers", w, h, 10) for w, h in SIZES] + [("tree", 640, 480, 15)]
    with moto_server() as url, tempfile.TemporaryDirectory() as tmp:
        s3 = s3_client(url)
        s3.create_bucket(Bucket="bench")
        for name, w, h, fps in cases:
            frames = take(FOOTAGE[name](w, h, fps), SECONDS * fps)
            auto = auto_bitrate(Resolution(w, h), fps)
            tag = f"{name}_{w}x{h}_{fps}"
            for label, bitrate in (("old", OLD_DEFAULT), ("auto", auto)):
                m, stream = measure(frames, fps, bitrate)
                # A clip of CLIP_S seconds: the encoded footage, end to end (real H.264).
                path = Path(tmp) / f"{tag}_{label}.h264"
                path.write_bytes(stream * round(CLIP_S / SECONDS))
                clip_bytes = path.stat().st_size
                t0 = time.perf_counter()
                s3.upload_file(str(path), "bench", path.name)
                upload_s = time.perf_counter() - t0
                path.unlink()
                figures[f"{tag}_{label}_bitrate_set"] = bitrate
                figures[f"{tag}_{label}_clip_mb"] = clip_bytes / 1e6
                figures[f"{tag}_{label}_psnr_db"] = m["psnr"]
                figures[f"{tag}_{label}_ssim"] = m["ssim"]
                figures[f"{tag}_{label}_upload_local_s"] = upload_s
                figures[f"{tag}_{label}_upload_wifi10_s"] = clip_bytes * 8 / WIFI_BPS
            old_mb = figures[f"{tag}_old_clip_mb"]
            figures[f"{tag}_size_ratio"] = figures[f"{tag}_auto_clip_mb"] / old_mb
            figures[f"{tag}_ssim_loss"] = figures[f"{tag}_old_ssim"] - figures[f"{tag}_auto_ssim"]
            if name != "synthetic":
                # The synthetic room is flat walls plus sensor noise: past a few hundred kb/s
                # its bits go into copying the noise, so its SSIM says nothing about detail.
                checks.append(
                    Check(
                        f"{tag}_auto_ssim_shortfall",
                        "1 - SSIM at auto (real footage)",
                        1 - figures[f"{tag}_auto_ssim"],
                        AUTO_SSIM_SHORTFALL,
                        "",
                    )
                )
    default = "synthetic_640x480_20"
    checks.append(
        Check(
            "make_run_clip_ratio",
            "make run's clip at auto / at 17 Mb/s",
            figures[f"{default}_size_ratio"],
            MAKE_RUN_RATIO,
            "",
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--curves", action="store_true", help="also measure every curve")
    parser.add_argument("--quick", action="store_true", help="the same (no curves)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on FAIL")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    checks: list[Check] = []
    if args.curves:
        curves(figures)
    side_by_side(figures, checks)
    passed = report(NAME, figures, checks)
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
