"""Does the analyzer hold beyond the labelled examples? Every scenario, drawn afresh.

The scenarios of tests/footage.py are built from seeded randomness (sensor noise, where the
raindrops and flakes fall): ``tests/test_detect.py`` checks them with one seed each. Here
each is built again with other seeds, the same scene and labelled events with other pixels
(the garden cases, ``GARDEN``, with two more seeds: other insects and flights, strands, drops,
crowns and sways), and ``pinthesky detect`` (the analyzer and the tracker as the daemon runs
them, post-roll 4 s) must give exactly the labelled events, each starting and ending within
1 s. For each run it prints the events found, the highest score outside the labelled events
(with 0.5 s before and 2 s after them: how close a false event came) and the peak within each.
The low branch (``branch_gusts``, ``branch_walkers``: deeper shade, bigger and faster flecks)
is still wrong on one seed (walkers in its deep shade): see docs/motion.md.

Run (from the repository root; the first run encodes the footage, about 15 s a scenario)::

    .venv/bin/python bench/detector_seeds.py [--seeds 1 2] [--only rain_night downpour] [--quick]

Prints ``<scenario>_s<seed>=OK|WRONG ...`` lines, then ``wrong=`` and ``result=PASS|FAIL``
(PASS when no run is wrong); writes bench/out/detector_seeds.json. Exits 0 whether it passes
or fails (``--strict`` exits 1 on FAIL).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from _common import REPO, Check, report

from pinthesky import settings
from pinthesky.daemon.detect import detect

NAME = "detector_seeds"
GARDEN = (
    "moths",
    "moths_walkers",
    "strand",
    "wet_window",
    "dappled_shade",
    "shade_walkers",
    "branch_gusts",
    "branch_walkers",
    "approach",
    "approach_left",
)
"""Things at the lens, dappled shade (under a tree, under a low branch), walkers coming toward
the camera: each also drawn with ``GARDEN_SEEDS`` (other insects, flights, strands, drops,
crowns, sways and noise)."""
GARDEN_SEEDS = (3, 4)
MARGIN_BEFORE_S, MARGIN_AFTER_S = 0.5, 2.0
"""Around a labelled event, scores belong to it (onset, post-roll)."""


def one(footage: Any, name: str, seed: int) -> str:
    """One run's verdict, OK or WRONG first, then what it found."""
    sc = footage.scenario(name, seed)
    s = settings.merge(settings.defaults(), {"recorder.post_roll": "4"}, "bench")[0]
    d = detect(sc.path, s)
    found = [(round(e.start, 1), round(e.end, 1), e.peak) for e in d.events]
    ok = sc.matches([(e.start, e.end) for e in d.events])

    def near(t: float) -> bool:
        return any(b - MARGIN_BEFORE_S <= t <= e + MARGIN_AFTER_S for b, e in sc.events)

    outside = [x.blocks for x in d.scores if not x.lighting and not near(x.ts / 1e6)]
    peaks = [
        max([x.blocks for x in d.scores if b <= x.ts / 1e6 <= e] or [0.0]) for b, e in sc.events
    ]
    line = (
        f"{'OK' if ok else 'WRONG'} events {found} want {list(sc.events)} "
        f"false_max {max(outside or [0.0]):.0f} peaks {peaks}"
    )
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", help="scenario names (default: all)")
    parser.add_argument("--quick", action="store_true", help="seed 1 only")
    parser.add_argument("--strict", action="store_true", help="exit 1 on FAIL")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    import footage

    names = args.only or footage.all_scenarios()
    runs: dict[str, str] = {}
    seeds = args.seeds[:1] if args.quick else args.seeds
    for name in names:
        extra = [s for s in GARDEN_SEEDS if name in GARDEN and s not in seeds]
        for seed in seeds if args.quick else [*seeds, *extra]:
            line = one(footage, name, seed)
            runs[f"{name}_s{seed}"] = line
            print(f"{name}_s{seed}: {line}", file=sys.stderr, flush=True)  # progress
    wrong = sum(not line.startswith("OK") for line in runs.values())
    check = Check("wrong", "runs whose events are not the labelled ones", wrong, 0, "runs")
    passed = report(NAME, {"runs": len(runs), "wrong": wrong, **runs}, [check])
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
