"""A hostile world: a full disk, planted files, floods. Each test injects the fault for real
(a small tmpfs mounted as root, FIFOs, links, directories in place of files) and checks that
the camera keeps recording and that nothing is lost, leaked or written where it must not be."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.client
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from conftest import clip_facts, eventually, run_daemon, settings_for, until
from servers import free_port
from test_control import start
from test_lifecycle import spawn, wait_for_line
from test_sidecar import COMMANDS, cloud, sidecar

from pinthesky.camera.x264 import X264Encoder
from pinthesky.cloud.uploader import Target, Uploader
from pinthesky.daemon.app import Daemon
from pinthesky.eventfiles import outbox_dir
from pinthesky.logs import Throttle
from pinthesky.media import US, Clock, Packet, StreamInfo
from pinthesky.record.bus import ClipReady, EventBus
from pinthesky.record.clips import ClipInfo, ClipStore
from pinthesky.record.motion import MotionEnded, MotionStarted
from pinthesky.record.recorder import Recorder
from pinthesky.record.ring import PacketRing
from pinthesky.settings import RecorderSettings

INFO = StreamInfo(320, 240, Fraction(10))


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    """A file system of ``size`` at ``directory`` (as root), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.fail("these tests mount a tmpfs and must run as root")
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True
    )
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def noise_packets(seconds: int, first_ts: int = 0, seed: int = 1) -> list[Packet]:
    """Hard-to-compress H.264 (about 40 KB a frame), a keyframe every second at 10 fps."""
    rng = np.random.default_rng(seed)
    enc = X264Encoder(320, 240, Fraction(10), 4_000_000, iperiod=10)
    packets = []
    for i in range(seconds * 10):
        yuv = rng.integers(0, 255, (360, 320), np.uint8)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        packets += enc.encode(frame, first_ts + i * US // 10)
    packets += enc.close()
    return packets


def decodes_whole(path: Path) -> int:
    """Frames in the clip; fails if any packet of it does not decode."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = 0
        for pkt in c.demux(stream):
            for _ in pkt.decode():
                frames += 1
    assert frames == clip_facts(path).frames
    return frames


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".partial")))


# -- D1, D2: the disk fills up while a clip is written --------------------------------------


@pytest.fixture(scope="module")
def big_stream() -> list[Packet]:
    return noise_packets(12)


def test_a_clip_larger_than_the_disk_is_cut_into_playable_clips_newest_kept(
    tmp_path: Path, big_stream: list[Packet], caplog: pytest.LogCaptureFixture
) -> None:
    size = sum(len(p.data) for p in big_stream)
    with tmpfs(tmp_path / "clips", "2m") as clips:
        assert size > 4 * 2**20  # the clip is twice as large as the whole disk
        store = ClipStore(clips, min_free=0)
        older = store.new_clip(1_600_000_000, INFO, "motion")
        older.write(noise_packets(2, seed=2))
        assert older.close() is not None
        writer = store.new_clip(1_700_000_000, INFO, "manual")
        with caplog.at_level(logging.WARNING):
            for n in range(0, len(big_stream), 7):  # as the recorder feeds it
                writer.write(big_stream[n : n + 7])
            last = writer.close()
        assert last is not None
        assert "evicted 1600000000.motion.mp4" in caplog.text  # the older clip made room
        assert "the disk is full" in caplog.text
        assert writer.parts, "the growing clip was cut, not lost"
        finals = store.clips()
        assert finals[-1] == last.path
        assert not leftovers(clips)
        total = 0
        for path in finals:
            total += decodes_whole(path)  # every clip under a final name plays to its end
        # The newest footage won: the last clip ends at the last frame given.
        assert last.end_ts == big_stream[-1].ts + US // 10
        assert decodes_whole(last.path) == last.packets
        assert store.meta(last.path)["trigger"] == "manual"
        assert total >= 10  # at least the last second


def test_salvage_on_a_full_disk_keeps_the_footage_playable(
    tmp_path: Path, big_stream: list[Packet]
) -> None:
    with tmpfs(tmp_path / "clips", "3m") as clips:
        store = ClipStore(clips, min_free=0)
        writer = store.new_clip(1_700_000_000, INFO, "motion")
        stream = big_stream[:45]
        writer.write(stream)
        writer._fh.close()  # killed: no last fragment, no rename  # type: ignore[union-attr]
        filler = clips / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as fh:
            while True:
                fh.write(bytes(65536))  # another program filled the disk meanwhile
        (saved,) = store.recover(INFO)  # no room for a copy: the partial is ended in place
        assert saved.path.name == "1700000000.motion.mp4"
        assert decodes_whole(saved.path) >= 30
        assert not leftovers(clips)


def test_recorder_on_a_full_disk_keeps_recording_and_announces_only_playable_clips(
    tmp_path: Path, big_stream: list[Packet], caplog: pytest.LogCaptureFixture
) -> None:
    """Three motion events on a disk smaller than one of them (D2): every event leaves a
    clip, every announced clip plays, the newest is kept, nothing is left half-written."""
    stream = big_stream + noise_packets(24, first_ts=12 * US, seed=3)
    announced: list[ClipInfo] = []

    async def main(clips: Path) -> Recorder:
        store = ClipStore(clips, min_free=256 * 1024)
        bus = EventBus()
        bus.subscribe(ClipReady, lambda e: announced.append(e.clip))
        ring = PacketRing(30 * US)
        rec = Recorder(
            RecorderSettings(pre_roll=1, post_roll=1, max_clip=120),
            ring,
            store,
            INFO,
            Clock(0, 1_700_000_000.0),
            bus,
        )
        # Motion from 1 s to 8 s, 13 s to 20 s and 25 s to 35 s of the stream.
        events: dict[int, MotionStarted | MotionEnded] = {}
        for begin, end in ((10, 80), (130, 200), (250, 350)):
            events[begin] = MotionStarted(begin * US // 10, begin * US // 10)
            events[end] = MotionEnded(end * US // 10)
        for i, pkt in enumerate(stream):
            ring.push(pkt)
            rec.on_motion([events[i]] if i in events else [], pkt.ts)
            await asyncio.sleep(0)
        await rec.close()
        return rec

    with tmpfs(tmp_path / "clips", "2m") as clips, caplog.at_level(logging.WARNING):
        rec = asyncio.run(main(clips))
        assert rec.write_errors == 0
        assert "Future exception" not in caplog.text and "Traceback" not in caplog.text
        starts = {c.start_epoch for c in announced}
        for t in (1, 13, 25):  # each event gave at least one clip (after its pre-roll)
            assert any(t - 2 <= s - 1_700_000_000 <= t + 1 for s in starts), starts
        on_disk = ClipStore(clips).clips()
        assert on_disk and on_disk[-1] == announced[-1].path  # the newest footage won
        assert announced[-1].end_ts >= 36 * US
        for clip in on_disk:
            decodes_whole(clip)
        for clip in announced:
            assert clip.path in on_disk or "evicted " + clip.path.name in caplog.text
        assert not leftovers(clips)
        assert rec.clips_recorded == len(announced)


# -- W2, W3: what is planted in the clip directory; L1: the stop line ----------------------


def test_links_and_absurd_names_in_the_clip_directory_are_never_listed_or_served(
    tmp_path: Path,
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0\n")
    (clips / "1000000000.motion.mp4").symlink_to(secret)
    (clips / "1000000001.motion.mp4").symlink_to(clips)  # a link to a directory
    (clips / "99999999999999999999.motion.mp4").write_bytes(b"\x00" * 64)
    (clips / "1700000000.motion.mp4").write_bytes(b"\x00" * 64)
    settings = settings_for(tmp_path, **{"source.source": "synthetic", "http.port": free_port()})
    assert [p.name for p in ClipStore(clips).clips()] == ["1700000000.motion.mp4"]

    def check(port: int) -> None:
        status, body = get(port, "/")
        assert status == 200  # an absurd name used to break the page (OverflowError)
        assert b"1700000000.motion.mp4" in body
        assert b"1000000000" not in body and b"99999999999999999999" not in body
        for name in ("1000000000.motion.mp4", "99999999999999999999.motion.mp4"):
            status, body = get(port, "/clips/" + name)
            assert status == 404 and b"root:" not in body

    async def main() -> None:
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.started.wait(), 30)
        assert daemon.web is not None and daemon.web.port is not None
        try:
            await asyncio.to_thread(check, daemon.web.port)
        finally:
            daemon.request_stop()
            assert await asyncio.wait_for(task, 30) == 0

    asyncio.run(main())
    assert secret.read_text() == "root:x:0:0\n"


def test_the_upload_queue_holds_only_regular_files(tmp_path: Path) -> None:
    """W2 for the uploader: links planted among the stills or the clips are never queued."""
    clips, images = tmp_path / "clips", tmp_path / "images"
    clips.mkdir()
    images.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0\n")
    (clips / "1000000000.motion.mp4").symlink_to(secret)
    (images / "still.jpg").symlink_to(secret)
    (images / "real.jpg").write_bytes(b"\xff\xd8")
    (clips / "1700000000.motion.mp4").write_bytes(b"\x00")

    async def pending() -> list[Path]:
        target = Target("bucket", "thing", "videos", "images", "mp4")
        uploader = Uploader(target, ClipStore(clips), images, lambda: None, lambda _: None)
        return uploader.pending()

    names = [p.name for p in asyncio.run(pending())]
    assert names == ["real.jpg", "1700000000.motion.mp4"]


def test_links_named_like_a_picture_or_a_clips_facts_are_never_read(tmp_path: Path) -> None:
    """W2 for what lies beside the clips: a link named like a motion picture is not queued
    for upload, and one in place of a clip's facts is not read (the page lists its trigger)."""
    clips = tmp_path / "clips"
    clips.mkdir()
    secret = tmp_path / "secret.json"
    secret.write_text('{"trigger": "SECRET", "start_epoch": 1}')
    clip = clips / "1700000000.motion.mp4"
    clip.write_bytes(b"\x00")
    (clips / ".1700000000.motion.mp4.json").symlink_to(secret)
    (clips / "1690000000.motion.jpg").symlink_to(secret)
    (clips / "1700000000.motion.jpg").write_bytes(b"\xff\xd8")
    store = ClipStore(clips)
    assert store.meta(clip) == {}
    assert [p.name for p in store.pictures()] == ["1700000000.motion.jpg"]


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_stop_line_counts_each_clip_once(
    footage: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(
        tmp_path,
        **{
            "source.source": footage.scenario("small_object").path,
            "source.replay_speed": 0,
            "recorder.pre_roll": 3,
            "recorder.post_roll": 4,
        },
    )
    with caplog.at_level(logging.INFO, logger="pinthesky.daemon.app"):
        run = run_daemon(settings)
    assert len(run.clips) == 1
    assert "pinthesky stopped: 1 clips recorded" in caplog.text
    assert run.daemon.readings()["ClipsRecorded"] == 1


# -- S1-S8: the sidecar's files ---------------------------------------------------------------

SECRET = "secret-line-that-must-never-be-logged:$6$saltsalt$hash\n"


def sidecar_paths(tmp_path: Path) -> dict[str, Path]:
    return {
        "event_input": tmp_path / "events" / "input.json",
        "event_output": tmp_path / "events" / "output.json",
        "configure_input": tmp_path / "configuration" / "input.json",
        "configure_output": tmp_path / "configuration" / "output.json",
    }


def test_fifos_as_our_files_never_block_the_daemon_or_its_stop(tmp_path: Path) -> None:
    """S3, S4: a FIFO as event-output and as configure-output (nobody reading or writing)."""
    paths = sidecar_paths(tmp_path)
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(paths["event_output"])
    os.mkfifo(paths["configure_output"])
    args = ["--source", "synthetic", "--combine-dir", str(tmp_path / "clips")]
    for key, path in paths.items():
        args += ["--" + key.replace("_", "-"), str(path)]
    with spawn(*args, cwd=tmp_path) as proc:
        wait_for_line(proc, "first frame buffered")
        line = wait_for_line(proc, "event output")  # the health report at start: refused
        assert "not a regular file" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert proc.stderr is not None
        rest = proc.stderr.read()
    assert "Traceback" not in rest
    assert stat.S_ISFIFO(os.lstat(paths["event_output"]).st_mode)  # left as it was


def run_briefly(settings: Any, check: Any = None, timeout: float = 30) -> Daemon:
    """Start the daemon, wait for its first frame, run ``check(daemon)`` (a coroutine
    function) and stop it; the daemon must exit 0."""

    async def main() -> Daemon:
        daemon, task = await start(settings)
        try:
            if check is not None:
                await asyncio.wait_for(check(daemon), timeout)
        finally:
            daemon.request_stop()
            assert await asyncio.wait_for(task, 20) == 0
        return daemon

    return asyncio.run(main())


def test_links_as_our_files_are_never_read_into_the_log_nor_written_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """S5, S6: links from the input files to a secret, and from every file we write (and
    its temporary name) to files that are not ours."""
    paths = sidecar_paths(tmp_path)
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    secret = tmp_path / "shadow"
    secret.write_text(SECRET)
    victims = {name: tmp_path / f"victim-{name}" for name in ("out", "report", "health", "still")}
    for victim in victims.values():
        victim.write_text("precious")
    paths["event_input"].symlink_to(secret)
    paths["configure_output"].symlink_to(secret)
    paths["event_output"].symlink_to(victims["out"])
    paths["configure_input"].symlink_to(victims["report"])
    health = tmp_path / "state" / "health.json"
    health.parent.mkdir()
    (health.parent / ".health.json.tmp").symlink_to(victims["health"])
    images = tmp_path / "images"
    images.mkdir()
    (images / ".still.jpg.tmp").symlink_to(victims["still"])
    settings = settings_for(
        tmp_path,
        **{"source.source": "synthetic", "health.file": health, "events.shadow_update": "always"},
    )

    async def check(daemon: Daemon) -> None:
        await until(lambda: health.is_file() and not health.is_symlink())
        await daemon.capture_image("still.jpg")

    with caplog.at_level(logging.DEBUG):
        run_briefly(settings, check)
    assert secret.read_text() == SECRET
    assert "secret-line" not in caplog.text and "saltsalt" not in caplog.text
    for victim in victims.values():
        assert victim.read_text() == "precious"
    assert json.loads(health.read_text())["name"] == "health_end"
    assert (images / "still.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert "not a regular file" in caplog.text


def test_a_directory_as_event_output_is_one_line_and_the_daemon_keeps_going(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """S7: the output task survives, the daemon answers, and it stops with 0."""
    paths = sidecar_paths(tmp_path)
    paths["event_output"].mkdir(parents=True)
    settings = settings_for(tmp_path, **{"source.source": "synthetic"})

    async def check(daemon: Daemon) -> None:
        assert daemon.control is not None
        output = daemon.control.output
        await until(lambda: output.failed >= 1)
        for i in range(3):
            daemon.control.emit_health({"health_id": f"h{i}"})
        await until(lambda: output.failed >= 4)
        assert all(not t.done() for t in daemon._vital)

    with caplog.at_level(logging.ERROR):
        run_briefly(settings, check)
    lines = [r for r in caplog.records if "event output" in r.getMessage()]
    assert 1 <= len(lines) <= 5 and "Traceback" not in caplog.text


def remove_while_written(directory: Path, attempts: int = 20) -> None:
    """``rm -rf`` of a directory the daemon may be writing into from its writer thread (the
    health report at start lands at any moment): a file made between rmtree's listing and its
    rmdir leaves the directory not empty, so remove again, as an operator would."""
    for attempt in range(attempts):
        try:
            shutil.rmtree(directory)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY or attempt == attempts - 1:
                raise


def test_the_events_directory_deleted_and_made_again_is_watched_again(tmp_path: Path) -> None:
    """S8: as a reinstall does; commands are read from the new directory."""
    paths = sidecar_paths(tmp_path)
    settings = settings_for(tmp_path, **{"source.source": "synthetic"})

    def answered(health_id: str) -> bool:
        with contextlib.suppress(OSError, ValueError):
            event = json.loads(paths["event_output"].read_text())
            return bool(event.get("health_id") == health_id)
        return False

    async def check(daemon: Daemon) -> None:
        events = paths["event_input"].parent
        for health_id in ("r0", "r1"):
            remove_while_written(events)
            events.mkdir(exist_ok=True)
            with paths["event_input"].open("a") as fh:
                fh.write(json.dumps({"name": "health", "context": {"health_id": health_id}}))
            await until(lambda h=health_id: answered(h))

    run_briefly(settings, check)


def test_floods_of_commands_and_garbage_never_block_the_loop_and_motion_is_recorded(
    footage: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """S1, S2: 11 MB of valid health commands in one write, then 200 KB of ``{``, while the
    camera sees motion: the loop is never held up for 1 s, the motion is recorded, and the
    log says what happened in a few lines rather than one per bad byte."""
    scenario = footage.scenario("small_object")  # motion from 10 s to 14 s
    settings = settings_for(
        tmp_path,
        **{
            "source.source": scenario.path,
            "source.replay_speed": 2,
            "recorder.pre_roll": 3,
            "recorder.post_roll": 2,
        },
    )
    health = json.dumps({"name": "health", "context": {"health_id": "flood"}})
    flood = (health * (11_000_000 // len(health))).encode()
    lags: list[float] = []
    clips: list[ClipInfo] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.02)
            lags.append(loop.time() - before - 0.02)

    async def main() -> int:
        daemon = Daemon(settings)
        daemon.bus.subscribe(ClipReady, lambda e: clips.append(e.clip))
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.first_frame.wait(), 30)
        tick = asyncio.create_task(ticker())
        inbox = settings.events.event_input
        fd = os.open(inbox, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, flood)  # one write, as a runaway publisher's messages arrive
        finally:
            os.close(fd)
        await until(lambda: daemon.control is not None and daemon.control.commands > 1000, 60)
        with inbox.open("a") as fh:
            fh.write("{" * 200_000)
        code = await asyncio.wait_for(task, 120)
        tick.cancel()
        return code

    with caplog.at_level(logging.INFO):
        assert asyncio.run(main()) == 0
    assert max(lags) < 1.0, f"the loop was held up for {max(lags):.2f} s"
    (clip,) = clips
    assert clip.duration >= 4  # the motion, from 10 s to 14 s, with its pre- and post-roll
    records = caplog.records
    assert len(records) < 400, f"{len(records)} log lines"
    assert "not logged" in caplog.text  # summarised


def test_the_sidecar_never_follows_links_among_the_files_it_shares(tmp_path: Path) -> None:
    """S5, S6 on the sidecar's side: a link as event-input is not written through, and links
    as configure-input or in the outbox are never read, so nothing else is published."""
    paths = sidecar_paths(tmp_path)
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"name": "health_end", "token": "s3cr3t-token"}))
    victim = tmp_path / "victim"
    victim.write_text("precious")
    paths["event_input"].symlink_to(victim)
    paths["configure_input"].symlink_to(secret)
    outbox = outbox_dir(paths["event_output"])
    outbox.mkdir()
    (outbox / f"{1:020d}.json").symlink_to(secret)
    (outbox / f"{2:020d}.json").write_text(json.dumps({"name": "health_end", "health_id": "ok"}))
    with cloud(tmp_path) as (pki, broker, service, console), sidecar(tmp_path, pki, broker) as proc:
        received = console.wait_for(
            lambda got: any(b'"health_id": "ok"' in p or b'"health_id":"ok"' in p for _, p in got)
        )
        console.publish(COMMANDS, {"name": "health", "context": {"health_id": "x"}})
        eventually(lambda: "command not passed on" in proc.text(), 30, "the refusal")
        text = proc.text()
    assert victim.read_text() == "precious"
    assert not any(b"s3cr3t" in payload for _, payload in received)
    assert "s3cr3t" not in json.dumps(service.state("cam1"))
    assert "s3cr3t" not in text and "Traceback" not in text


def test_the_daemon_on_a_disk_smaller_than_its_clips_keeps_the_newest_playable(
    footage: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """D1, D2 end to end: real footage at 17 Mb/s onto a 4 MiB file system, two motion
    events of 8 s and 6 s: clips are cut and evicted, each announced clip played when it was
    announced, the last motion is on disk, nothing half-written is left, nothing raised."""
    with tmpfs(tmp_path / "clips", "4m") as clips:
        settings = settings_for(
            tmp_path,
            **{
                "source.source": footage.scenario("walkers").path,
                "source.replay_speed": 0,
                "camera.encoding_bitrate": 17_000_000,
                "recorder.pre_roll": 2,
                "recorder.post_roll": 2,
                "storage.min_free": "256K",
            },
        )
        checked: list[int] = []

        def on_clip(event: ClipReady) -> None:
            # On the loop, as the uploader would pick it up: it plays whole right now.
            checked.append(decodes_whole(event.clip.path))

        async def main() -> Daemon:
            daemon = Daemon(settings)
            daemon.bus.subscribe(ClipReady, on_clip)
            assert await asyncio.wait_for(daemon.run(), 300) == 0
            return daemon

        with caplog.at_level(logging.WARNING):
            daemon = asyncio.run(main())
        assert len(checked) >= 2 and all(n > 0 for n in checked)
        assert "the disk is full" in caplog.text or "evicted" in caplog.text
        assert "Traceback" not in caplog.text and "Future exception" not in caplog.text
        assert daemon.recorder is not None and daemon.recorder.write_errors == 0
        on_disk = ClipStore(clips).clips()
        assert on_disk
        for clip in on_disk:
            decodes_whole(clip)
        assert not leftovers(clips)


def test_a_flood_of_log_lines_is_summed_up_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    """The flood guard logs the first lines, says it counts the rest, and gives the count
    when its window ends, even when no further line comes to carry it."""
    log = logging.getLogger("pinthesky.test.throttle")

    async def main() -> None:
        throttle = Throttle(log, burst=3, window=0.2)
        for i in range(10):
            throttle(logging.WARNING, "bad input %d", i)
        await until(
            lambda: any("more lines like that in" in r.getMessage() for r in caplog.records), 5
        )

    with caplog.at_level(logging.WARNING, logger=log.name):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert messages[:3] == ["bad input 0", "bad input 1", "bad input 2"]
    assert messages[3].startswith("more lines like that are counted, not logged")
    assert messages[4].startswith("7 more lines like that in 0 s were not logged")
    assert len(messages) == 5


# -- the pre-event buffer on a Pi Zero ----------------------------------------------------------

PI_ZERO_MEMORY = 443_000 * 1024
"""MemTotal of a 512 MB Pi Zero W (the rest is the GPU's)."""


def test_the_pre_event_buffer_never_takes_more_than_an_eighth_of_the_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The longest pre-roll (300 s) and a 1 GB --buffer-size on a Pi Zero: the buffer keeps
    what a sixteenth of the memory holds, and holds an eighth at most for a clip writer that
    falls behind (it was 256 MiB: more than half of a Pi Zero's memory)."""
    from pinthesky.hardware import board
    from pinthesky.record.ring import byte_caps

    soft, hard = byte_caps(PI_ZERO_MEMORY)
    assert hard <= PI_ZERO_MEMORY // 8 and soft <= hard
    ring = PacketRing(300 * US, soft, hard)
    frame = bytes(512 * 1024)
    for i in range(400):  # 40 s of 512 KB pictures at 10 a second: 200 MB
        ring.push(Packet(frame, i % 10 == 0, i * US // 10))
        assert ring.stats().bytes <= soft + 10 * len(frame)  # at most one GOP over
    ring.pin(0)  # a clip is open and its writer stalls
    for i in range(400, 800):
        ring.push(Packet(frame, i % 10 == 0, i * US // 10))
        assert ring.stats().bytes <= hard + 10 * len(frame)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {PI_ZERO_MEMORY // 1024} kB\n")
    monkeypatch.setattr(board, "MEMINFO", meminfo)
    settings = settings_for(
        tmp_path,
        **{"source.source": "synthetic", "recorder.pre_roll": 300, "camera.buffer_size": "1G"},
    )

    async def check(daemon: Daemon) -> None:
        assert daemon.ring is not None
        assert (daemon.ring.max_bytes, daemon.ring.hard_max_bytes) == (hard, hard)

    with caplog.at_level(logging.WARNING):
        run_briefly(settings, check)
    assert "this Pi can spare" in caplog.text
