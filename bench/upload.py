"""Upload speed against a bare boto3 upload, and kill -9 at random points during uploads.

Requirements (issue 3):
- uploading a 20 MB clip to the local S3 server takes at most 1.5x as long as a bare
  ``boto3 upload_file`` of the same file, in the same run. Ours includes what a real upload
  does: the MP4 -> Annex-B remux for the ``.motion.h264`` key, the upload, the delete.
- kill -9 at random points during uploads (20 trials): after a restart every clip is
  uploaded exactly once under its key, and nothing is left behind in the clip directory.

S3 is moto in server mode on 127.0.0.1 (started here). The kill trials run the real daemon
(``pinthesky --source <lights footage>``: no motion, so no new clips) with a queue of six
clips, SIGKILL it at a random moment after its uploader started, and repeat; a last run
drains the queue. Then the bucket must hold exactly the six keys, each object the full
remuxed clip, and the clip directory must be empty.

Run from the repository root: ``.venv/bin/python bench/upload.py`` (about a minute);
``--trials N`` changes the number of kills. Prints ``speed_ratio=``, ``missing_keys=``,
``extra_keys=``, ``leftover_files=`` and ``result=PASS|FAIL``; writes bench/out/upload.json.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, Check, pinthesky_command, report

sys.path.insert(0, str(REPO / "tests"))
from servers import s3_client

NAME = "upload"
BUCKET = "bench-clips"
LIMIT_RATIO = 1.5
CLIP_MB = 20


def big_clip(directory: Path, epoch: int, megabytes: float) -> Path:
    """A clip of real footage of about ``megabytes``, written by the daemon's own writer."""
    from fractions import Fraction

    import footage

    from pinthesky.media import Packet, StreamInfo
    from pinthesky.record.clips import ClipStore
    from pinthesky.record.mp4 import to_annexb

    # One clip of real footage, recorded by the daemon, repeated up to the size.
    scratch = Path(tempfile.mkdtemp())
    subprocess.run(
        [
            *pinthesky_command(),
            "--source",
            str(footage.scenario("walkers").path),
            "--replay-speed",
            "0",
            "--pre-roll",
            "3",
            "--post-roll",
            "4",
            "--combine-dir",
            str(scratch),
        ],
        check=True,
        capture_output=True,
    )
    source = ClipStore(scratch).clips()[0]
    units = list(to_annexb(source.read_bytes()))
    shutil.rmtree(scratch)
    store = ClipStore(directory)
    store.prepare()
    writer = store.new_clip(epoch, StreamInfo(640, 480, Fraction(10)), "motion")
    written, i = 0, 0
    while written < megabytes * 1e6 or not units[i % len(units)].startswith(b"\x00\x00\x00\x01g"):
        unit = units[i % len(units)]
        writer.write([Packet(unit, unit[4] & 0x1F == 7, i * 100_000)])
        written += len(unit)
        i += 1
    info = writer.close()
    assert info is not None
    return info.path


def speed(work: Path, endpoint: str) -> dict[str, float]:

    from pinthesky.cloud.uploader import Target, Uploader
    from pinthesky.record.clips import ClipStore

    client = s3_client(endpoint)
    master = big_clip(work / "master", 1_700_000_000, CLIP_MB)
    size = master.stat().st_size
    bare, ours = [], []
    for rep in range(3):
        t = time.perf_counter()
        client.upload_file(str(master), BUCKET, f"bare/{rep}.mp4")
        bare.append(time.perf_counter() - t)
        queue = work / f"queue{rep}"
        shutil.copytree(master.parent, queue)
        store = ClipStore(queue)
        up = Uploader(
            Target(BUCKET, "cam1", "speed", "capture_images", "h264"),
            store,
            work / "none",
            lambda: client,
            lambda _: None,
        )
        clip = store.clips()[0]
        t = time.perf_counter()
        up._upload(clip)
        ours.append(time.perf_counter() - t)
    return {
        "clip_mb": round(size / 1e6, 1),
        "bare_upload_seconds": round(statistics.median(bare), 3),
        "our_upload_seconds": round(statistics.median(ours), 3),
        "speed_ratio": round(statistics.median(ours) / statistics.median(bare), 3),
    }


def kill_trials(work: Path, endpoint: str, trials: int) -> dict[str, float]:
    import footage

    from pinthesky.record.clips import ClipStore, write_meta
    from pinthesky.record.mp4 import to_annexb

    queue = work / "queue"
    queue.mkdir()
    master = big_clip(work / "kill-master", 1_700_000_000, CLIP_MB)
    sizes = {}
    for n in range(6):
        epoch = 1_700_000_100 + n * 100
        clip = queue / f"{epoch}.motion.mp4"
        shutil.copy(master, clip)
        write_meta(clip, {"trigger": "manual" if n % 2 else "motion", "start_epoch": epoch})
        sizes[f"motion_videos/cam1/{epoch}.motion.h264"] = sum(
            len(u) for u in to_annexb(clip.read_bytes())
        )
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    args = [
        *pinthesky_command(),
        "--source",
        str(footage.scenario("lights").path),
        "--combine-dir",
        str(queue),
        "--capture-dir",
        str(work / "images"),
        "--bucket-name",
        BUCKET,
        "--thing-name",
        "cam1",
    ]
    rng = random.Random(2)
    for _ in range(trials):
        proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            if "uploading to" in line:
                break
        time.sleep(rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    remaining = len(ClipStore(queue).clips())
    # A last run drains the queue.
    proc = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while ClipStore(queue).clips() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    client = s3_client(endpoint)
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix="motion_videos/").get("Contents", [])
    found = {o["Key"]: o["Size"] for o in listed}
    return {
        "trials": trials,
        "clips_left_after_trials": remaining,
        "missing_keys": len(set(sizes) - set(found)),
        "extra_keys": len(set(found) - set(sizes)),
        "wrong_sizes": sum(1 for k, v in sizes.items() if k in found and found[k] != v),
        "leftover_files": len(list(queue.iterdir())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--strict", action="store_true", help="exit 1 on FAIL")
    args = parser.parse_args()
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    work = Path(tempfile.mkdtemp(prefix="pinthesky-bench-upload-"))
    try:
        figures: dict[str, float] = {
            **speed(work, endpoint),
            **kill_trials(work, endpoint, args.trials),
        }
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    checks = [
        Check(
            "speed_ratio",
            "20 MB clip: ours / bare upload_file",
            figures["speed_ratio"],
            LIMIT_RATIO,
            "x",
        ),
        Check(
            "missing_keys", "clips never uploaded after kill -9", figures["missing_keys"], 0, "keys"
        ),
        Check("extra_keys", "objects under another key", figures["extra_keys"], 0, "keys"),
        Check("wrong_sizes", "objects not the whole clip", figures["wrong_sizes"], 0, "keys"),
        Check(
            "leftover_files",
            "files left in the clip directory",
            figures["leftover_files"],
            0,
            "files",
        ),
    ]
    passed = report(NAME, figures, checks)
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
