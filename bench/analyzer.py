"""Cost of ``MotionAnalyzer.analyse`` per frame, next to the upstream one-line MSE.

Requirement: the analyzer costs at most 2x what the upstream picamera2 example's one-line MSE
(``np.square(np.subtract(cur, prev)).mean()`` on uint8) costs on the same 320x240 frames,
measured side by side in one run.

The real-footage "walkers" scenario (tests/footage.py: a still campus, then people walking)
is decoded once, every 2nd frame (5 frames per second, the daemon's default analysis rate),
to 320x240 grayscale. Both contenders then run over the same consecutive-frame pairs in
several rounds, in alternating order (A B, B A, A B, ...) so that machine noise hits both
alike; each contender's figure is its median round (total time / pairs). The analyzer runs
with the default motion settings for a 640x480 main stream, as the daemon builds it. The
requirement is checked on these tight-loop figures.

For information, a few pairs are also timed one call at a time, 0.1 s apart, as the daemon
calls the analyzer (``paced_*``): caches are then not primed by the previous call, so both
contenders cost more per call than in the loop, which is what the daemon's status line
("frames analysed (N us each)") shows.

Run (from the repository root)::

    .venv/bin/python bench/analyzer.py [--rounds 5] [--quick]

Prints ``analyzer_us_per_frame=``, ``mse_us_per_frame=``, ``ratio=`` and ``result=PASS|FAIL``;
writes bench/out/analyzer.json. Exits 0 whether the requirement passes or fails (``--strict``
exits 1 on FAIL); 2 if the footage cannot be built.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import av
import numpy as np
import numpy.typing as npt
from _common import REPO, Check, report

from pinthesky import settings
from pinthesky.motion import MotionAnalyzer
from pinthesky.settings import Resolution

NAME = "analyzer"
LIMIT_RATIO = 2.0
LORES = Resolution(320, 240)
MAIN = Resolution(640, 480)
SCENARIO = "walkers"
STEP = 2
"""Decode every STEP-th frame: the footage is 10 fps, the daemon analyses 5 per second."""

U8 = npt.NDArray[np.uint8]


def load_frames(step: int = STEP) -> tuple[list[U8], int]:
    """The scenario's frames as contiguous 320x240 uint8 luma, and the frame period in µs."""
    sys.path.insert(0, str(REPO / "tests"))
    import footage

    sc = footage.scenario(SCENARIO)
    frames: list[U8] = []
    with av.open(str(sc.path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % step:
                continue
            gray = frame.reformat(width=LORES.width, height=LORES.height, format="gray")
            frames.append(np.ascontiguousarray(gray.to_ndarray(), dtype=np.uint8))
    return frames, round(1_000_000 * step / sc.fps)


def time_mse(frames: Sequence[U8]) -> tuple[float, float]:
    """Seconds for the upstream MSE over every consecutive pair (and a checksum)."""
    total = 0.0
    t0 = time.perf_counter()
    prev = frames[0]
    for cur in frames[1:]:
        total += np.square(np.subtract(cur, prev)).mean()
        prev = cur
    return time.perf_counter() - t0, total


def time_analyzer(frames: Sequence[U8], period_us: int) -> tuple[float, float]:
    """Seconds for ``analyse`` over every consecutive pair (and the moving blocks seen).

    A fresh analyzer per round, primed with the first frame outside the timing, so each
    round sees the same pairs with the same noise-estimate history.
    """
    cfg = settings.defaults()
    analyzer = MotionAnalyzer(LORES, MAIN, cfg.motion)
    analyzer.analyse(frames[0], 0)
    blocks = 0.0
    t0 = time.perf_counter()
    for i in range(1, len(frames)):
        blocks += analyzer.analyse(frames[i], i * period_us).blocks
    return time.perf_counter() - t0, blocks


def time_paced(frames: Sequence[U8], period_us: int, pairs: int, gap: float) -> dict[str, float]:
    """Median µs per call when calls come one at a time, ``gap`` seconds apart.

    The daemon calls ``analyse`` 5 times a second, between other work, so caches and branch
    predictors are not primed by the previous call as in a tight loop. Alternating
    MSE / analyse per pair with a sleep before each call approximates that; informational.
    """
    cfg = settings.defaults()
    analyzer = MotionAnalyzer(LORES, MAIN, cfg.motion)
    analyzer.analyse(frames[0], 0)
    mse: list[float] = []
    ana: list[float] = []
    for i in range(1, min(pairs, len(frames) - 1) + 1):
        time.sleep(gap)
        t0 = time.perf_counter()
        np.square(np.subtract(frames[i], frames[i - 1])).mean()
        mse.append(time.perf_counter() - t0)
        time.sleep(gap)
        t0 = time.perf_counter()
        analyzer.analyse(frames[i], i * period_us)
        ana.append(time.perf_counter() - t0)
    paced_mse = statistics.median(mse) * 1e6
    paced_ana = statistics.median(ana) * 1e6
    return {
        "paced_pairs": len(ana),
        "paced_gap_s": gap,
        "paced_analyzer_us_per_frame": paced_ana,
        "paced_mse_us_per_frame": paced_mse,
        "paced_ratio": paced_ana / paced_mse,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument(
        "--paced-pairs",
        type=int,
        default=40,
        help="pairs timed one call at a time, 0.1 s apart (informational; 0: skip; default 40)",
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds, 15 paced pairs")
    parser.add_argument("--strict", action="store_true", help="exit 1 on FAIL")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else max(1, args.rounds)
    paced_pairs = min(15, args.paced_pairs) if args.quick else args.paced_pairs

    try:
        frames, period_us = load_frames()
    except (RuntimeError, OSError) as exc:
        print(f"error: cannot build the {SCENARIO} footage: {exc}", file=sys.stderr)
        return 2
    pairs = len(frames) - 1

    contenders: dict[str, Callable[[], tuple[float, float]]] = {
        "mse": lambda: time_mse(frames),
        "analyzer": lambda: time_analyzer(frames, period_us),
    }
    # Warm up caches, allocator and the analyzer's code paths, untimed.
    for run in contenders.values():
        run()
    per_round: dict[str, list[float]] = {name: [] for name in contenders}
    checks: dict[str, float] = {}
    order = list(contenders)
    gc.collect()
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            seconds, checksum = contenders[name]()
            per_round[name].append(seconds / pairs * 1e6)
            checks[name] = checksum

    analyzer_us = statistics.median(per_round["analyzer"])
    mse_us = statistics.median(per_round["mse"])
    ratio = analyzer_us / mse_us
    figures = {
        "scenario": SCENARIO,
        "frames": len(frames),
        "pairs": pairs,
        "frame_size": f"{LORES.width}x{LORES.height}",
        "rounds": rounds,
        "analyzer_us_per_frame": analyzer_us,
        "mse_us_per_frame": mse_us,
        "ratio": ratio,
        "ratio_limit": LIMIT_RATIO,
        "analyzer_us_min_round": min(per_round["analyzer"]),
        "mse_us_min_round": min(per_round["mse"]),
        "ratio_of_min_rounds": min(per_round["analyzer"]) / min(per_round["mse"]),
        "analyzer_moving_blocks_total": checks["analyzer"],
        **(time_paced(frames, period_us, paced_pairs, 0.1) if paced_pairs > 0 else {}),
        "numpy": np.__version__,
        "rounds_us": {k: [round(v, 2) for v in vs] for k, vs in per_round.items()},
    }
    passed = report(
        NAME,
        figures,
        [Check("ratio", "analyzer / upstream MSE per frame", ratio, LIMIT_RATIO, "x")],
    )
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
