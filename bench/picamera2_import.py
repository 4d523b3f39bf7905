"""What importing the camera stack costs at start-up, per picamera2 version.

Before picamera2 0.3.34 ``import picamera2`` imports PyAV (its ``encoders`` package imports
the libav encoders eagerly); from 0.3.34 on PyAV is imported only when a libav encoder is made.
On a Pi 0-4 the daemon's H.264 encoder is the V4L2 one, so there PyAV is needed only for live
MPEG-1 (and is then loaded when someone watches); on a Pi 5 the encoder is libx264 through PyAV.

Each figure is measured in a fresh child process: resident memory (VmRSS) before and after
the import, and whether PyAV ended up in ``sys.modules``. ``libcamera`` and ``pykms`` are
stubbed here (they exist only on a Pi), so the figures cover picamera2's
own Python imports, not libcamera's shared libraries.

- ``baseline``: the daemon's own modules (``pinthesky.daemon.app``, ``pinthesky.camera.picam``)
  in the project venv, without picamera2;
- one column per picamera2 environment under ``.cache/`` (built by ``make -C tests
  picamera2-envs`` when missing): ``import picamera2``, then ``from picamera2.encoders import
  H264Encoder, MJPEGEncoder`` as ``PicameraSource.open`` does.

Requirement: the daemon's own start-up loads no PyAV.

Run (from the repository root)::

    .venv/bin/python bench/picamera2_import.py [--strict]

Prints ``<env>_<what>_mb=`` and ``<env>_<what>_av=`` lines; writes bench/out/picamera2_import.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import REPO, Check, report

NAME = "picamera2_import"

CHILD = r"""
import json, sys, types

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0

class _Anything(type):
    def __getattr__(cls, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        sub = _Anything(attr, (), {})
        setattr(cls, attr, sub)
        return sub

def stub(name):
    module = types.ModuleType(name)
    def getattr_(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        cls = _Anything(attr, (), {})
        setattr(module, attr, cls)
        return cls
    module.__getattr__ = getattr_
    return module

import numpy  # everything imports it first; not part of the figure
figures = {}
if sys.argv[1] == "baseline":
    before = rss()
    import pinthesky.daemon.app, pinthesky.camera.picam
    figures["daemon"] = (rss() - before, "av" in sys.modules)
else:
    libcamera = stub("libcamera")
    libcamera.controls = stub("libcamera.controls")
    libcamera.Transform = type("Transform", (), {"__init__": lambda self, **kw: None})
    sys.modules.update(libcamera=libcamera, pykms=stub("pykms"), kms=None)
    sys.modules["libcamera.controls"] = libcamera.controls
    before = rss()
    import picamera2
    figures["import"] = (rss() - before, "av" in sys.modules)
    from picamera2.encoders import H264Encoder, MJPEGEncoder
    figures["encoders"] = (rss() - before, "av" in sys.modules)
print(json.dumps(figures))
"""


def measure(python: Path, what: str) -> dict[str, tuple[int, bool]]:
    done = subprocess.run(
        [str(python), "-c", CHILD, what],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{python} {what}: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, tuple[int, bool]] = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="(accepted; the run is short)")
    parser.add_argument("--strict", action="store_true", help="exit 1 if the check FAILs")
    args = parser.parse_args(argv)
    if not list((REPO / ".cache").glob("picamera2-*/bin/python")):
        subprocess.run(["make", "-s", "-C", str(REPO / "tests"), "picamera2-envs"], check=False)
    envs = sorted(
        (REPO / ".cache").glob("picamera2-*/bin/python"),
        key=lambda p: tuple(int(x) for x in p.parent.parent.name.split("-")[1].split(".")),
    )
    if not envs:
        print("no picamera2 environments: `make -C tests picamera2-envs` failed")
        return 2
    figures: dict[str, Any] = {}
    columns = [("baseline", Path(sys.executable), "baseline")]
    columns += [(p.parent.parent.name.replace("-", "_").replace(".", "_"), p, "pi") for p in envs]
    for name, python, what in columns:
        for step, (grown, av) in measure(python, what).items():
            figures[f"{name}_{step}_mb"] = round(grown / 2**20, 1)
            figures[f"{name}_{step}_av"] = av
    checks = [
        Check(
            "daemon_pyav",
            "PyAV loaded by the daemon's own modules",
            float(figures["baseline_daemon_av"]),
            0.0,
            "loaded",
        )
    ]
    passed = report(NAME, figures, checks)
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
