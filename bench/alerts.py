"""Delay from the first frame with motion to ``motion_start``, beside the old first word.

Requirement (issue 17): the motion picture is taken and the event ready to go within 2 s of
the first frame with motion at the default settings, plus the picture's upload.

The daemon runs in this process at real speed (``--replay-speed 1``, every other setting at its
default) on footage whose ground truth says when motion begins, with S3 a local moto server
and the camera's credentials from the local AWS IoT credentials provider (mutual TLS). Frame
times are the replayed file's timestamps mapped to wall-clock time by the daemon's own clock,
so the delays below are what a person would wait:

- ``confirm_s``: first frame with motion -> the tracker confirms it (``motion.min_time``);
- ``captured_s``: -> the camera handed over the JPEG;
- ``picture_s``: -> the JPEG is on disk beside the clip, fsynced (the 2 s goal);
- ``event_s``: -> ``motion_start`` written, picture in S3 (``picture_s`` plus the upload);
- baseline ``clip_ready_s``: -> the clip is finished, the earliest moment anything was said
  before this issue (then it still had to be uploaded: ``upload_end``).

Run from the repository root: ``.venv/bin/python bench/alerts.py`` (about two minutes);
prints the figures per footage and their worst case, writes bench/out/alerts.json (``--quick``:
the walkers footage only; ``--strict``: exit 1 on FAIL).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, Check, report

sys.path.insert(0, str(REPO / "tests"))
import footage
from servers import CredentialsProvider, Pki, moto_server, s3_client

from pinthesky.daemon.app import Daemon
from pinthesky.media import US
from pinthesky.record.bus import ClipReady, MotionClip, PictureTaken
from pinthesky.settings import load

NAME = "alerts"
BUCKET = "bench-alerts"
LIMIT_S = 2.0
SCENARIOS = ("walkers", "night_walkers", "small_object")
STEPS = ("declared", "captured", "picture", "event", "clip_ready")


class Timed(Daemon):
    """The daemon, noting when (wall clock) each step of the first alert happened."""

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.at: dict[str, float] = {}
        self.event: dict[str, Any] | None = None
        self.bus.subscribe(MotionClip, lambda e: self._note("declared", e.declared_epoch))
        self.bus.subscribe(PictureTaken, lambda e: self._note("picture", time.time()))
        self.bus.subscribe(ClipReady, lambda e: self._note("clip_ready", time.time()))

    def _note(self, what: str, when: float) -> None:
        self.at.setdefault(what, when)

    def _capture_jpeg(self) -> bytes:
        jpeg = super()._capture_jpeg()
        self._note("captured", time.time())
        return jpeg

    def _alert(self, name: str, **fields: Any) -> dict[str, Any] | None:
        event = super()._alert(name, **fields)
        if self.event is None:
            self.event = event
            self._note("event", time.time())
        return event


def run(name: str, work: Path, pki: Pki, provider: CredentialsProvider) -> dict[str, float]:
    scenario = footage.scenario(name)
    raw = {
        "source.source": scenario.path,
        "source.replay_speed": 1,
        "storage.combine_dir": work / name / "clips",
        "storage.capture_dir": work / name / "images",
        "events.event_input": work / name / "events" / "input.json",
        "events.event_output": work / name / "events" / "output.json",
        "events.configure_input": work / name / "configuration" / "input.json",
        "events.configure_output": work / name / "configuration" / "output.json",
        "storage.bucket_name": BUCKET,
        "cloud_connection.thing_name": "bench-cam",
        "cloud_connection.credentials_endpoint": provider.endpoint,
        "cloud_connection.role_alias": "pits-role",
        "cloud_connection.cert_path": pki.cert_file,
        "cloud_connection.key_path": pki.key_file,
        "cloud_connection.cacert_path": pki.ca_file,
    }
    settings = load({k: str(v) for k, v in raw.items()}, environ={})

    async def main() -> Timed:
        daemon = Timed(settings)
        await daemon.run()
        return daemon

    daemon = asyncio.run(main())
    assert daemon.event is not None and "image" in daemon.event, daemon.event
    origin = getattr(daemon.camera, "origin_us", None)
    assert origin is not None
    first_motion = daemon.clock.epoch(origin + round(scenario.events[0][0] * US))
    return {f"{name}_{what}_s": round(daemon.at[what] - first_motion, 3) for what in STEPS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the walkers footage only")
    parser.add_argument("--strict", action="store_true", help="exit 1 on FAIL")
    args = parser.parse_args()
    scenarios = SCENARIOS[:1] if args.quick else SCENARIOS
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pki = Pki(work / "certs")
        with moto_server() as endpoint, CredentialsProvider(pki) as provider:
            os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
            os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
            s3_client(endpoint).create_bucket(Bucket=BUCKET)
            for name in scenarios:
                figures.update(run(name, work, pki, provider))
                print(f"{name}: done", flush=True)
    for what in STEPS:
        figures[f"worst_{what}_s"] = max(figures[f"{n}_{what}_s"] for n in scenarios)
    checks = [
        Check(
            "picture_s",
            "first frame with motion -> picture taken (event ready), worst footage",
            figures["worst_picture_s"],
            LIMIT_S,
            "s",
        )
    ]
    passed = report(NAME, figures, checks)
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
