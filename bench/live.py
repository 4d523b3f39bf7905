"""What live view costs the daemon, and that it leaves recording alone.

Requirements (issue 8):
- one viewer of the local page's MJPEG stream at 640x480, 5 fps adds at most 15 % of one core
  of this machine to the daemon;
- the daemon's clips are unchanged during a live session.

CPU: three daemons run side by side (bench/daemon.py's method, as bench/cloudwatch.py does:
the same machine load for all), on the synthetic source with defaults (640x480, 20 fps; live
view at its defaults, 640x480 at 5 fps), each with the local web server on 127.0.0.1:
``off`` has nobody watching; ``mjpeg`` has one viewer reading ``/stream.mjpg`` (a thread of
this process) from the start; ``session`` streams MPEG-1 to a data-plane connection (a
``record`` command through its event-input file, posted to a local stand-in for API
Gateway's management API over TLS with credentials from a local AWS IoT credentials
provider, both started here). After ``--warmup`` seconds (default 30) the CPU time of each
daemon process is read over ``--seconds`` (default 60); ``--rounds`` (default 2) repeats it.
The viewer's cost is the ``mjpeg`` daemon's CPU minus the ``off`` daemon's, summed over the
rounds, as a share of one core; the session's likewise (reported, not a requirement).

Encoders: our JPEG and MPEG-1 encoders' time per picture on 100 frames of real footage
(``walkers`` at 640x480), in this process, for scale (the synthetic room compresses far better
than a real scene).

Clips: the ``walkers`` footage (46 s, people walking in at 10-18 s and 30-36 s) is replayed
in real time by two daemons side by side (pre-roll 3 s, post-roll 4 s): one alone, one with an
MJPEG viewer and a data-plane session for the whole replay. The clips must be the same: as
many, the same durations and the same bytes (SHA-256), which means the same first and last
frames. (Analysis is lossless on a replay, so any disturbance of the recording path by live
view would show as a different cut.)

Run (from the repository root; about five minutes)::

    .venv/bin/python bench/live.py
    .venv/bin/python bench/live.py --quick    # 15 s warm-up, 20 s window, one round

Prints ``viewer_cpu_percent=``, ``session_cpu_percent=``, ``clips_identical=`` and
``result=PASS|FAIL``, among other figures; writes bench/out/live.json. Exits 0 whether the
requirements pass or fail (``--strict`` exits 1 on FAIL); 2 if a run could not be measured.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    Check,
    DaemonProcess,
    event_flags,
    in_scratch,
    report,
    side_by_side,
    window_args,
)
from daemon import measure

sys.path.insert(0, str(REPO / "tests"))
import footage
from servers import ApiGateway, CredentialsProvider, Pki, free_port

NAME = "live"
LIMIT_VIEWER_PERCENT = 15.0
REGION = "eu-west-3"
CLIP_READY = re.compile(r"clip (\S+) ready: ([0-9.]+) s, (\d+) bytes")


class Viewer(threading.Thread):
    """Reads ``/stream.mjpg`` as a browser would, as fast as the daemon sends it."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(name=f"viewer-{port}", daemon=True)
        self.port = port
        self.headers = headers or {}
        self.jpegs = 0
        self.bytes = 0
        self.error = ""
        self._halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + 60
        while not self._halt.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/stream.mjpg", headers=self.headers)
                response = conn.getresponse()
                while not self._halt.is_set():
                    line = response.readline()
                    if not line:
                        return  # the daemon stopped
                    if line.lower().startswith(b"content-length:"):
                        size = int(line.split(b":")[1])
                        response.readline()
                        self.bytes += len(response.read(size))
                        self.jpegs += 1
            except (ConnectionError, OSError, http.client.HTTPException) as exc:
                if time.monotonic() > deadline:  # not up after a minute: give up
                    self.error = str(exc)
                    return
                self._halt.wait(0.2)  # the daemon is not listening yet
            finally:
                conn.close()

    def stop(self) -> None:
        self._halt.set()


class Cloud:
    """The local AWS IoT credentials provider and API Gateway, and the daemon flags for them."""

    def __init__(self, directory: Path) -> None:
        self.pki = Pki(directory / "pki")
        self.provider = CredentialsProvider(self.pki)
        self.api = ApiGateway(self.pki)
        self.env = dict(os.environ, AWS_CA_BUNDLE=str(self.pki.ca_file))
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            self.env.pop(name, None)

    def flags(self) -> list[str]:
        p = self.pki
        return [
            "--thing-name", "bench-cam",
            "--credentials-endpoint", self.provider.endpoint,
            "--role-alias", self.provider.role_alias,
            "--thing-cert", str(p.cert_file),
            "--thing-key", str(p.key_file),
            "--ca-cert", str(p.ca_file),
            "--dataplane",
            "--dataplane-endpoint", self.api.endpoint,
            "--dataplane-region", REGION,
        ]  # fmt: skip

    def __enter__(self) -> Cloud:
        self.provider.__enter__()
        self.api.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.api.__exit__()
        self.provider.__exit__()


def ask_for_a_session(events: Path, connection: str, api: ApiGateway) -> threading.Thread:
    """Append a ``record`` command to the event-input file as soon as the daemon created it."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while not (events / "output.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # the daemon creates its event files once it runs
        command = {
            "name": "record",
            "context": {
                "session": {"start": True},
                "connection": {"id": connection, "manager_id": f"{connection}-manager",
                               "management_endpoint": api.endpoint, "invoke_id": "bench"},
            },
        }  # fmt: skip
        with (events / "input.json").open("a") as fh:
            fh.write(json.dumps(command))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def cpu_rounds(
    warmup: float, seconds: float, rounds: int, cloud: Cloud, scratch: Path
) -> list[dict[str, dict[str, Any]]]:
    done: list[dict[str, dict[str, Any]]] = []
    for n in range(rounds):
        print(f"# round {n + 1} of {rounds}: nobody watching, one MJPEG viewer, one data-plane"
              " session, side by side", flush=True)  # fmt: skip
        runs: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        viewers: dict[str, Viewer] = {}

        def run(
            label: str, n: int = n, runs: Any = runs, errors: Any = errors, viewers: Any = viewers
        ) -> None:
            work = scratch / f"round{n}-{label}"
            port = free_port()
            extra = ["--http-port", str(port), "--http-bind", "127.0.0.1"]
            extra += event_flags(work / "events")
            if label == "mjpeg":
                viewers[label] = Viewer(port)
                viewers[label].start()
            if label == "session":
                extra += cloud.flags()
                ask_for_a_session(work / "events", f"bench-{n}", cloud.api)
            try:
                runs[label] = measure(warmup, seconds, work / "clips", extra, cloud.env)
            except RuntimeError as exc:
                errors.append(f"{label}: {exc}")

        side_by_side(RUNS, run)
        for viewer in viewers.values():
            viewer.stop()
            viewer.join(10)
        if errors:
            raise RuntimeError("; ".join(errors))
        viewer = viewers["mjpeg"]
        if viewer.error or viewer.jpegs == 0:
            raise RuntimeError(f"the viewer got no picture: {viewer.error}")
        runs["mjpeg"]["viewer_jpegs"] = viewer.jpegs
        runs["mjpeg"]["viewer_bytes"] = viewer.bytes
        runs["session"]["posts"] = len(cloud.api.to(f"bench-{n}"))
        if runs["session"]["posts"] < 2:
            raise RuntimeError("the data-plane session posted nothing")
        done.append(runs)
    return done


RUNS = ("off", "mjpeg", "session")


def replay(path: Path, work: Path, extra: list[str], env: dict[str, str]) -> dict[str, Any]:
    """The daemon on a video file in real time, to its end; its clips, in order."""
    clips = work / "clips"
    daemon = DaemonProcess(
        ["--source", str(path), "--replay-speed", "1", "--pre-roll", "3", "--post-roll", "4",
         "--combine-dir", str(clips), *event_flags(work / "events"), *extra],
        env,
    )  # fmt: skip
    try:
        code = daemon.proc.wait(300)
    except BaseException:
        daemon.kill()
        raise
    if code != 0:
        raise RuntimeError(f"replay exited {code}: {daemon.tail()}")
    ready = daemon.matching(CLIP_READY)
    files = sorted(clips.glob("*.motion.mp4"))
    return {
        "clips": [
            {
                "seconds": float(m.group(2)),
                "bytes": int(m.group(3)),
                "sha256": hashlib.sha256((clips / m.group(1)).read_bytes()).hexdigest()[:16],
            }
            for m in ready
            if (clips / m.group(1)).exists()
        ],
        "files": len(files),
        "log_tail": daemon.tail(6).splitlines(),
    }


def clip_timing(cloud: Cloud, scratch: Path) -> dict[str, Any]:
    video = footage.scenario("walkers").path
    results: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    port = free_port()
    viewer = Viewer(port)

    def run(label: str) -> None:
        work = scratch / f"replay-{label}"
        extra: list[str] = []
        if label == "live":
            extra = ["--http-port", str(port), "--http-bind", "127.0.0.1", *cloud.flags()]
            viewer.start()
            ask_for_a_session(work / "events", "bench-replay", cloud.api)
        try:
            results[label] = replay(video, work, extra, cloud.env)
        except RuntimeError as exc:
            errors.append(f"{label}: {exc}")

    print("# the walkers footage in real time, alone and with a viewer and a session", flush=True)
    side_by_side(("alone", "live"), run)
    viewer.stop()
    if errors:
        raise RuntimeError("; ".join(errors))
    ends = [json.loads(p.body)["invoke"] for p in cloud.api.to("bench-replay-manager")]
    return {
        "alone": results["alone"]["clips"],
        "live": results["live"]["clips"],
        "viewer_jpegs": viewer.jpegs,
        "session_posts": len(cloud.api.to("bench-replay")),
        "session_end": ends[0]["reason"] if ends else "no record_end",
    }


def encoder_costs(pictures: int = 100) -> dict[str, float]:
    """Milliseconds per picture of our JPEG and MPEG-1 encoders on real footage (the walkers,
    scaled to 640x480 as the camera's main stream would be), in this process: the synthetic
    room compresses much better than a real scene."""
    import av
    import numpy as np

    from pinthesky.live.encoders import JpegEncoder, Mpeg1Encoder
    from pinthesky.live.tap import YUV420, Picture

    frames = []
    with av.open(str(footage.scenario("walkers").path)) as container:
        for frame in container.decode(video=0):
            yuv = frame.reformat(width=640, height=480, format="yuv420p").to_ndarray()
            frames.append(Picture(YUV420, np.ascontiguousarray(yuv), 640, 480, 0))
            if len(frames) == pictures:
                break
    jpeg, mpeg1 = JpegEncoder(640, 480), Mpeg1Encoder(640, 480, 5, 800_000)
    jpeg.encode(frames[0])  # the first call opens the codec
    t0 = time.perf_counter()
    sizes = [len(jpeg.encode(f)) for f in frames]
    t1 = time.perf_counter()
    mpeg1.encode(frames[0])
    t2 = time.perf_counter()
    for f in frames:
        mpeg1.encode(f)
    t3 = time.perf_counter()
    return {
        "jpeg_ms_per_picture_real_footage": (t1 - t0) / len(frames) * 1000,
        "jpeg_kbytes_real_footage": sum(sizes) / len(sizes) / 1000,
        "mpeg1_ms_per_picture_real_footage": (t3 - t2) / len(frames) * 1000,
    }


def main(argv: Sequence[str] | None = None) -> int:
    window = window_args(__doc__.split("\n\n")[0], argv, 30.0, 2, quick=(15.0, 20.0, 1))
    warmup, seconds, rounds = window.warmup, window.seconds, window.rounds

    def measure(
        scratch: Path,
    ) -> tuple[list[dict[str, dict[str, Any]]], dict[str, Any], dict[str, float]]:
        with Cloud(scratch) as cloud:
            measured = cpu_rounds(warmup, seconds, rounds, cloud, scratch)
            timing = clip_timing(cloud, scratch)
        return measured, timing, encoder_costs()

    results = in_scratch("live", measure)
    if results is None:
        return 2
    measured, timing, costs = results

    def total(label: str, key: str) -> float:
        return sum(r[label][key] for r in measured)

    def percent(label: str) -> float:
        return total(label, "cpu_seconds") / total(label, "window_seconds") * 100

    viewer = percent("mjpeg") - percent("off")
    session = percent("session") - percent("off")
    identical = bool(timing["alone"]) and timing["alone"] == timing["live"]
    figures = {
        "settings": "synthetic 640x480 20 fps defaults; live view 640x480 at 5 fps",
        "window": f"t = {warmup:g} .. {warmup + seconds:g} s of each run",
        "rounds": len(measured),
        "cpu_percent_off": percent("off"),
        "cpu_percent_mjpeg_viewer": percent("mjpeg"),
        "cpu_percent_session": percent("session"),
        "viewer_cpu_percent": viewer,
        "session_cpu_percent": session,
        "viewer_cpu_percent_per_round": [
            (r["mjpeg"]["cpu_seconds"] - r["off"]["cpu_seconds"]) / r["off"]["window_seconds"] * 100
            for r in measured
        ],
        "viewer_jpegs_per_second": sum(r["mjpeg"]["viewer_jpegs"] for r in measured)
        / max(1.0, sum(r["mjpeg"]["window_end_s"] for r in measured)),
        "viewer_kbytes_per_jpeg": sum(r["mjpeg"]["viewer_bytes"] for r in measured)
        / max(1, sum(r["mjpeg"]["viewer_jpegs"] for r in measured))
        / 1000,
        **costs,
        "rss_mb_off": max(r["off"]["rss_mb"] for r in measured),
        "rss_mb_mjpeg_viewer": max(r["mjpeg"]["rss_mb"] for r in measured),
        "rss_mb_session": max(r["session"]["rss_mb"] for r in measured),
        "memory_detail_mb": {
            label: {k: r[label][k] for k in ("rss_mb", "rss_anon_mb", "rss_file_mb", "threads")}
            for r in measured[-1:]
            for label in RUNS
        },
        "session_posts": sum(r["session"]["posts"] for r in measured),
        "clips_alone": len(timing["alone"]),
        "clips_with_live_view": len(timing["live"]),
        "clips_identical": identical,
        "clip_seconds_alone": [c["seconds"] for c in timing["alone"]],
        "clip_seconds_with_live_view": [c["seconds"] for c in timing["live"]],
        "clips_detail": timing,
        "replay_viewer_jpegs": timing["viewer_jpegs"],
        "replay_session_posts": timing["session_posts"],
        "replay_session_end": timing["session_end"],
    }
    checks = [
        Check(
            "viewer_cpu_percent",
            "CPU of one MJPEG viewer 640x480 5 fps, % of one core",
            viewer,
            LIMIT_VIEWER_PERCENT,
            "%",
        ),
        Check(
            "clips_changed",
            "clips that differ with live view (walkers, real time)",
            0.0 if identical else 1.0,
            0.0,
            "",
        ),
    ]
    passed = report(NAME, figures, checks)
    return 1 if window.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
