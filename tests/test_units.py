"""The parts one at a time: ring buffer, motion analysis and tracking, recorder, clip store."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import clip_facts, settings_for

from pinthesky.camera.x264 import X264Encoder
from pinthesky.media import US, Clock, Packet, RateGate, StreamInfo, has_parameter_sets
from pinthesky.record.bus import ClipReady, EventBus, MotionClip
from pinthesky.record.clips import ClipStore
from pinthesky.record.motion import (
    NOISE_WEIGHT,
    SHAKE_MAX,
    MotionAnalyzer,
    MotionEnded,
    MotionStarted,
    MotionTracker,
    Score,
    _bits,
    _Cells,
    _median,
    _shifted,
)
from pinthesky.record.recorder import Recorder
from pinthesky.record.ring import PacketRing
from pinthesky.settings import RecorderSettings, Rect, Resolution, Window, defaults

S = US  # one second in µs


def pkt(ts: float, key: bool = False, size: int = 10) -> Packet:
    return Packet(b"x" * size, key, round(ts * S))


def fill(ring: PacketRing, seconds: float, fps: int = 10, gop: int = 10) -> None:
    for i in range(round(seconds * fps)):
        ring.push(pkt(i / fps, key=i % gop == 0))


# -- ring buffer ----------------------------------------------------------------------------


def test_ring_keeps_the_keyframe_at_or_before_the_retention_window():
    ring = PacketRing(retain_us=3 * S)
    fill(ring, 10.1)  # up to t=10.0
    first_ts = ring.packet_ts(ring.keyframe_before(0))  # type: ignore[arg-type]
    assert first_ts == 7 * S  # newest 10.0 - 3 s = 7.0, a keyframe
    ring.push(pkt(10.1))
    assert ring.packet_ts(ring.keyframe_before(0)) == 7 * S  # type: ignore[arg-type]
    seq = ring.keyframe_before(round(8.5 * S))
    assert ring.packet_ts(seq) == 8 * S  # type: ignore[arg-type]


def test_ring_skips_until_the_first_keyframe_and_reads_by_sequence():
    ring = PacketRing(retain_us=5 * S)
    ring.push(pkt(0.0))  # not decodable on its own: dropped
    assert ring.newest_ts() is None
    fill(ring, 2)
    packets, nxt = ring.read(0, until_ts=round(0.55 * S))
    assert [p.ts for p in packets] == [round(i / 10 * S) for i in range(6)]
    more, _ = ring.read(nxt)
    assert more[0].ts == round(0.6 * S)


def test_ring_pin_holds_packets_a_clip_still_needs():
    ring = PacketRing(retain_us=1 * S)
    fill(ring, 2)
    seq = ring.keyframe_before(round(1.0 * S))
    ring.pin(seq)
    for i in range(20, 80):
        ring.push(pkt(i / 10, key=i % 10 == 0))
    packets, _ = ring.read(seq)  # type: ignore[arg-type]
    assert packets[0].ts == 1 * S and len(packets) == 70
    ring.pin(None)
    assert ring.packet_ts(ring.keyframe_before(0)) >= 6 * S  # type: ignore[arg-type, operator]


def test_ring_byte_cap_and_hard_cap():
    ring = PacketRing(retain_us=100 * S, max_bytes=250)
    fill(ring, 5)  # 10 bytes a packet, GOPs of 100 bytes
    assert ring.stats().bytes <= 250 + 100
    hard = PacketRing(retain_us=1 * S, hard_max_bytes=300)
    fill(hard, 1)
    hard.pin(0)
    for i in range(10, 60):
        hard.push(pkt(i / 10, key=i % 10 == 0))
    assert hard.stats().dropped_unread > 0  # counted, not silent


def test_ring_outputframe_follows_picamera2_signature():
    ring = PacketRing(retain_us=S)
    ring.outputframe(memoryview(b"\x00\x00\x01\x65"), keyframe=True, timestamp=123)
    ring.outputframe(b"ignored", keyframe=True, timestamp=124, audio=True)
    packets, _ = ring.read(0)
    assert packets == [Packet(b"\x00\x00\x01\x65", True, 123)]


def test_rate_gate_takes_every_fourth_frame_of_a_jittery_20fps_camera():
    gate = RateGate(5, 50_000)
    rng = np.random.default_rng(1)
    taken = [i for i in range(200) if gate.due(i * 50_000 + int(rng.integers(-2000, 2000)))]
    assert taken == list(range(0, 200, 4))


# -- motion -------------------------------------------------------------------------------


def scene(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (30, 40), dtype=np.uint8)
    return np.kron(base, np.ones((8, 8), np.uint8))  # textured 320x240


def noisy(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def analyzer(**motion: Any) -> MotionAnalyzer:
    s = defaults()
    m = s.motion.__class__(**{**s.motion.__dict__, **motion})
    return MotionAnalyzer(Resolution(320, 240), Resolution(640, 480), m)


def test_brightness_steps_do_not_wrap_around_or_count_as_motion():
    # The upstream example's uint8 MSE scores a +64 step as 0; we must neither miss real
    # changes that way nor take a global step for motion.
    a = analyzer()
    img = scene()
    a.analyse(img, 0)
    for step, ts in ((16, 1), (32, 2), (64, 3)):
        brighter = np.clip(img.astype(int) + step, 0, 255).astype(np.uint8)
        assert a.analyse(brighter, ts).blocks == 0
        a.analyse(img, ts)


def test_a_moving_object_scores_in_macroblocks_and_noise_does_not():
    a = analyzer()
    rng = np.random.default_rng(2)
    img = scene()
    a.analyse(noisy(img, 3, rng), 0)
    scores = [a.analyse(noisy(img, 3, rng), i).blocks for i in range(1, 20)]
    assert max(scores) == 0  # noise alone
    moved = img.copy()
    moved[80:160, 100:160] = 20  # a dark object appears: 10x7.5 cells
    score = a.analyse(noisy(moved, 3, rng), 21)
    assert 60 <= score.blocks <= 90  # 16x16 macroblocks at 640x480 == 8x8 cells here


def test_noise_level_adapts_to_a_noisy_night_sensor():
    a = analyzer()
    rng = np.random.default_rng(3)
    dark = (scene() // 5).astype(np.uint8)
    scores = [a.analyse(noisy(dark, 8, rng), i).blocks for i in range(60)]
    assert a.noise_level > 20
    assert max(scores[20:]) <= 10  # settles below the default sensitivity


def test_a_light_switched_on_is_not_motion():
    a = analyzer()
    img = scene()
    a.analyse(img, 0)
    gain = np.linspace(1.8, 1.2, 320)[None, :]  # a lamp on the left
    lit = np.clip(img * gain + 10, 0, 255).astype(np.uint8)
    score = a.analyse(lit, 1)
    assert score.lighting and score.blocks == 0


def test_mask_rectangles_and_images_hide_motion(tmp_path: Path):
    img = scene()
    moved = img.copy()
    moved[0:120, 0:160] = 10  # top-left quarter changes
    masked = analyzer(mask_rects=(Rect(0, 0, 320, 240),))  # main-resolution pixels
    masked.analyse(img, 0)
    assert masked.analyse(moved, 1).blocks == 0
    # The same as an image mask: black where ignored.
    import av

    mask = np.full((480, 640, 3), 255, np.uint8)
    mask[:240, :320] = 0
    png = tmp_path / "mask.png"
    with av.open(str(png), "w") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 640, 480, "rgb24"
        for p in stream.encode(av.VideoFrame.from_ndarray(mask, format="rgb24")):
            out.mux(p)
    by_image = analyzer(mask=png)
    by_image.analyse(img, 0)
    assert by_image.analyse(moved, 1).blocks == 0
    plain = analyzer()
    plain.analyse(img, 0)
    assert plain.analyse(moved, 1).blocks > 100


def test_mask_follows_the_rotation():
    # Viewed rotated by 90 degrees, the viewer's top-left is the sensor's bottom-left.
    s = defaults()
    m = s.motion.__class__(**{**s.motion.__dict__, "mask_rects": (Rect(0, 0, 240, 320),)})
    a = MotionAnalyzer(Resolution(320, 240), Resolution(640, 480), m, rotation=90)
    assert not a.cell_mask[-1, 0] and a.cell_mask[0, -1]


def score(ts: float, blocks: float, lighting: bool = False) -> Score:
    return Score(round(ts * S), blocks, int(blocks), lighting)


def test_motion_must_persist_in_seconds_whatever_the_analysis_rate():
    for fps in (2, 5, 10):
        t = MotionTracker(sensitivity=10, min_time=0.4, quiet=4)
        events = []
        for i in range(10 * fps):
            ts = i / fps
            events += t.update(score(ts, 30 if 2.0 <= ts < 5.0 else 0))
        (started,) = [e for e in events if isinstance(e, MotionStarted)]
        assert started.onset == 2 * S
        assert 2.4 * S <= started.declared <= 2.4 * S + S / fps
        (ended,) = [e for e in events if isinstance(e, MotionEnded)]
        assert 5.0 * S - S / fps <= ended.last_seen < 5.0 * S


def test_a_flicker_shorter_than_min_time_is_not_an_event():
    t = MotionTracker(sensitivity=10, min_time=0.4, quiet=4)
    events = [e for i in range(50) for e in t.update(score(i / 5, 30 if i == 10 else 0))]
    assert events == []


def test_onset_looks_back_at_the_frames_that_led_to_motion():
    t = MotionTracker(sensitivity=10, min_time=0.4, quiet=4)
    blocks = [0, 0, 4, 8, 12, 20, 30, 30, 30]  # a walker entering the picture
    events = [e for i, b in enumerate(blocks) for e in t.update(score(i / 5, b))]
    assert isinstance(events[0], MotionStarted)
    assert events[0].onset == round(0.4 * S)  # the first frame with some movement


# -- recorder -------------------------------------------------------------------------------


class Harness:
    """A recorder on a real ring and clip store, fed hand-made packets and motion."""

    def __init__(
        self, tmp: Path, hour: int = 12, window: Window | None = None, armed: bool = True
    ) -> None:
        self.ring = PacketRing(retain_us=10 * S)
        self.store = ClipStore(tmp, "h264")
        self.store.prepare()
        self.clips: list[Any] = []
        self.motion_clips: list[MotionClip] = []
        bus = EventBus()
        bus.subscribe(ClipReady, lambda e: self.clips.append(e.clip))
        bus.subscribe(MotionClip, self.motion_clips.append)
        self.rec = Recorder(
            RecorderSettings(pre_roll=2, post_roll=3, max_clip=120),
            self.ring,
            self.store,
            StreamInfo(640, 480, Fraction(10)),
            Clock(0, 1_700_000_000.0),
            bus,
            window,
            hour=lambda: hour,
            armed=armed,
        )
        self.t = 0

    def run_until(self, seconds: float, motion: tuple[float, float] | None = None) -> None:
        tracker = MotionTracker(10, 0.4, quiet=3)
        while self.t < seconds * 10:
            ts = round(self.t * S / 10)
            self.ring.push(Packet(b"\x00\x00\x01\x65" + bytes(20), self.t % 10 == 0, ts))
            if self.t % 2 == 0:
                moving = motion is not None and motion[0] <= self.t / 10 < motion[1]
                self.rec.on_motion(tracker.update(Score(ts, 30 if moving else 0, 30)), ts)
            self.t += 1


def test_recorder_cuts_a_clip_from_pre_roll_to_post_roll(tmp_path):
    async def main() -> None:
        h = Harness(tmp_path)
        h.run_until(20, motion=(6.0, 9.0))
        await h.rec.close()
        (clip,) = h.clips
        assert clip.start_ts == 3 * S  # the keyframe at or before 6.0 - 0.1 - 2
        assert clip.trigger == "motion"
        assert clip.path.name == "1700000003.motion.h264"
        assert 8.8 * S + 3 * S <= clip.end_ts <= 9 * S + 3 * S + S // 10

    asyncio.run(main())


def test_recording_window_gates_motion_but_not_manual_captures(tmp_path):
    async def main() -> None:
        h = Harness(tmp_path, hour=3, window=Window(8, 18))
        h.run_until(15, motion=(6.0, 9.0))
        assert h.clips == [] and not h.rec.recording
        fut = h.rec.capture(2.0)
        h.run_until(20)
        clip = await asyncio.wait_for(fut, 5)
        assert clip is not None and clip.trigger == "manual"
        assert clip.duration >= 4.0  # 2 s pre-roll + 2 s
        await h.rec.close()

    asyncio.run(main())
    assert Window(22, 6).contains(23) and Window(22, 6).contains(6)
    assert not Window(22, 6).contains(7) and Window(8, 18).contains(18)


def test_disarmed_motion_makes_no_clip_nor_alert_but_a_manual_clip_records(tmp_path):
    async def main() -> None:
        h = Harness(tmp_path, armed=False)
        h.run_until(15, motion=(6.0, 9.0))
        assert h.clips == [] and h.motion_clips == [] and not h.rec.recording
        # A manual clip while something moves: recorded as asked, not stretched by the
        # motion, and no motion picture or alert is asked for.
        fut = h.rec.capture(2.0)  # from 15.0 - 2 s pre-roll to 17.0
        h.run_until(30, motion=(15.0, 25.0))
        clip = await asyncio.wait_for(fut, 5)
        assert clip is not None and clip.trigger == "manual" and h.motion_clips == []
        assert clip.end_ts <= round(17.2 * S)
        # Armed again (as reconfigure does), the next motion is a clip with its alert.
        h.rec.update(h.rec.settings, None, armed=True)
        h.run_until(45, motion=(35.0, 37.0))
        await h.rec.close()
        assert [c.trigger for c in h.clips] == ["manual", "motion"]
        assert [m.trigger for m in h.motion_clips] == ["motion"]

    asyncio.run(main())


def test_manual_capture_during_motion_extends_the_clip(tmp_path):
    async def main() -> None:
        h = Harness(tmp_path)
        h.run_until(7, motion=(6.0, 9.0))
        joined = h.rec.open_clip  # what a capture asked for now extends
        assert joined is not None and joined.trigger == "motion"
        assert joined.triggers == ("motion",)
        fut = h.rec.capture(10.0)  # until 16.9, past the motion's post-roll at 12
        assert h.rec.open_clip is not None and h.rec.open_clip.triggers == ("motion", "manual")
        h.run_until(25, motion=(6.0, 9.0))
        clip = await asyncio.wait_for(fut, 5)
        assert clip is not None and len(h.clips) == 1 and clip.path.name == joined.name
        assert clip.end_ts >= round(16.9 * S)
        # The clip's facts say both asked for it; its trigger stays what started it.
        meta = h.rec.store.meta(clip.path)
        assert meta["trigger"] == "motion" and meta["triggers"] == ["motion", "manual"]
        await h.rec.close()

    asyncio.run(main())


def test_motion_during_a_manual_clip_joins_its_triggers(tmp_path):
    async def main() -> None:
        h = Harness(tmp_path)
        h.run_until(3)
        fut = h.rec.capture(8.0)
        h.run_until(20, motion=(5.0, 7.0))
        clip = await asyncio.wait_for(fut, 5)
        assert clip is not None and len(h.clips) == 1 and clip.trigger == "manual"
        assert h.rec.store.meta(clip.path)["triggers"] == ["manual", "motion"]
        # A clip with one cause keeps only its trigger.
        h.run_until(40, motion=(30.0, 31.0))
        await h.rec.close()
        second = h.clips[-1]
        assert second.trigger == "motion" and "triggers" not in h.rec.store.meta(second.path)

    asyncio.run(main())


# -- stills ---------------------------------------------------------------------------------


def test_stills_taken_in_the_same_second_never_overwrite_one_another(tmp_path):
    """Twenty stills at once, all in one second: twenty files, each whole, each listed
    (before, each was img-EPOCH.jpg and the last one written was the only one left)."""
    from concurrent.futures import ThreadPoolExecutor

    from pinthesky.record.stills import StillStore

    store = StillStore(tmp_path / "images")
    pictures = [b"\xff\xd8" + bytes([n]) * 5000 + b"\xff\xd9" for n in range(20)]
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda p: store.add(p, 1700000000), pictures))
    assert len(set(paths)) == 20
    assert {p.name for p in paths} == {"img-1700000000.jpg"} | {
        f"img-1700000000-{n}.jpg" for n in range(1, 20)
    }
    assert sorted(p.read_bytes() for p in paths) == sorted(pictures)
    assert all(p.stat().st_nlink == 1 for p in paths)  # the uploader takes no other
    assert {s.path for s in store.stills()} == set(paths)
    assert [p.name for p in (tmp_path / "images").iterdir() if p.name.startswith(".")] == []
    # A still named by the cloud replaces the older one of that name (as its S3 object does).
    store.add(b"\xff\xd8one\xff\xd9", 1700000001, "thumbnail_latest.jpg")
    latest = store.add(b"\xff\xd8two\xff\xd9", 1700000002, "thumbnail_latest.jpg")
    assert latest.read_bytes() == b"\xff\xd8two\xff\xd9" and len(store.stills()) == 21
    assert store.stills()[0].path == latest  # newest first
    assert store.find("../images/thumbnail_latest.jpg") is None and store.find("nope") is None
    os.symlink("/etc/passwd", tmp_path / "images" / "planted.jpg")  # not one of ours
    assert store.find("planted.jpg") is None and len(store.stills()) == 21


# -- clip store -----------------------------------------------------------------------------


def touch(path: Path, size: int) -> Path:
    path.write_bytes(b"\0" * size)
    return path


def test_quota_evicts_oldest_first_and_keeps_the_newest(tmp_path, caplog):
    store = ClipStore(tmp_path, max_bytes=2500)
    for epoch in (1700000300, 1700000100, 1700000200, 1700000400):
        touch(tmp_path / f"{epoch}.motion.mp4", 1000)
    touch(tmp_path / "notes.txt", 5000)  # not ours: never touched
    evicted = store.enforce_quota()
    assert [p.name for p in evicted] == ["1700000100.motion.mp4", "1700000200.motion.mp4"]
    assert store.evicted == 2 and "evicted 1700000100.motion.mp4" in caplog.text
    assert (tmp_path / "notes.txt").exists()


def test_min_free_space_evicts_too(tmp_path, monkeypatch):
    store = ClipStore(tmp_path, max_bytes=1 << 40, min_free=10_000)
    for epoch in (1, 2, 3):
        touch(tmp_path / f"{epoch}.motion.h264", 4000)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage._replace(free=3000))
    evicted = store.enforce_quota()
    assert [p.name for p in evicted] == ["1.motion.h264", "2.motion.h264"]


def test_unwritable_clip_directory_is_one_clear_error(tmp_path):
    from pinthesky.errors import ClipStoreError

    blocker = touch(tmp_path / "file", 1)
    with pytest.raises(ClipStoreError, match="not writable"):
        ClipStore(blocker / "clips").prepare()


def test_salvage_keeps_the_readable_part_of_a_killed_mp4(tmp_path):
    info = StreamInfo(320, 240, Fraction(10))
    enc = X264Encoder(320, 240, Fraction(10), 500_000, iperiod=10)
    import av

    packets = []
    rng = np.random.default_rng(3)
    for i in range(40):
        # Sensor noise, so that every frame takes some bytes: the 300 bytes cut off below
        # must fall inside the last fragment written, as a killed writer leaves it.
        noise = rng.integers(0, 12, (240, 320), dtype=np.uint8)
        luma = np.full((240, 320), 16 + 4 * i, np.uint8) + noise
        yuv = np.concatenate([luma, np.full((120, 320), 128, np.uint8)])
        packets += enc.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p"), i * S // 10)
    packets += enc.close()
    assert has_parameter_sets(packets[0].data) and has_parameter_sets(packets[10].data)
    store = ClipStore(tmp_path)
    writer = store.new_clip(1700000000, info, "motion")
    writer.write(packets)
    writer._fh.close()  # as far as a killed process gets: no last fragment, no rename
    data = writer.temp.read_bytes()
    writer.temp.write_bytes(data[: len(data) - 300])  # and the tail cut short
    (saved,) = store.recover(info)
    assert saved.path.name == "1700000000.motion.mp4"
    assert not list(tmp_path.glob(".*partial*"))
    assert store.meta(saved.path)["trigger"] == "motion"  # the trigger survived the crash
    facts = clip_facts(saved.path)
    assert facts.first_keyframe and 20 <= facts.frames < 40
    assert os.stat(saved.path).st_size > 0


def test_settings_for_uses_defaults(tmp_path):
    s = settings_for(tmp_path)
    assert s.recorder.pre_roll == 7 and s.recorder.post_roll == 15


def textured(seed: int = 5) -> np.ndarray:
    """A 320x240 picture with texture inside cells (smoothed noise), like a real scene."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(30, 220, (61, 81)).astype(float)
    fine = np.kron(coarse, np.ones((4, 4)))[:242, :322]
    # A 3x3 box blur keeps edges a few pixels wide, as a lens does.
    img = sum(fine[dy : dy + 240, dx : dx + 320] for dy in range(3) for dx in range(3)) / 9
    return np.asarray(img, dtype=np.uint8)


def test_a_shaken_view_is_not_motion_but_an_object_moving_in_it_is():
    a = analyzer()
    img = textured()
    a.analyse(img, 0)
    shifted = np.roll(img, (2, -1), axis=(0, 1))
    score = a.analyse(shifted, 200_000)
    assert score.shake and score.blocks == 0 and score.cells > 100
    moved = np.roll(img, (-1, 1), axis=(0, 1)).copy()
    moved[100:160, 100:150] = 15  # a dark object arrives while the view sways back
    score = a.analyse(moved, 400_000)
    assert score.shake and score.blocks >= 40


def test_cell_bitboards_agree_with_3x3_box_sums_on_the_grid():
    # The object stage's neighbourhoods on one Python integer must match plain box sums,
    # rows and columns at the grid's edges included (no wrap from one row to the next).
    rng = np.random.default_rng(3)
    rows, cols = 30, 40
    grid = _Cells(rows, cols)
    weights = 1 << np.arange(rows * cols, dtype=object)
    for density in (0.02, 0.1, 0.4):
        cells = rng.random((rows, cols)) < density
        cells[0, -1] = cells[1, 0] = True  # neighbours in bit order, not on the grid
        bits = int((cells.ravel() * weights).sum())
        padded = np.pad(cells.astype(int), 1)
        box = sum(padded[dy : dy + rows, dx : dx + cols] for dy in range(3) for dx in range(3))

        def as_grid(value: int) -> np.ndarray:
            return np.array([(value >> i) & 1 for i in range(rows * cols)], bool).reshape(
                rows, cols
            )

        assert (as_grid(grid.near(bits)) == (box > 0)).all()
        assert (as_grid(grid.crowded(bits)) == (box >= 3)).all()


def test_the_shifted_frame_is_the_edge_padded_one():
    # _shifted replaced np.pad(mode="edge") and a crop: every shift the shake check can pick.
    image = np.random.default_rng(2).integers(0, 256, (24, 32), dtype=np.uint8)
    padded = np.pad(image, SHAKE_MAX, mode="edge")
    for dy in range(-SHAKE_MAX, SHAKE_MAX + 1):
        for dx in range(-SHAKE_MAX, SHAKE_MAX + 1):
            y0, x0 = SHAKE_MAX - dy, SHAKE_MAX - dx
            expected = padded[y0 : y0 + 24, x0 : x0 + 32]
            assert (_shifted(image, dy, dx) == expected).all(), (dy, dx)


def test_the_median_by_partition_is_numpys():
    rng = np.random.default_rng(4)
    for size in (1, 2, 3, 10, 1199, 1200):
        values = rng.integers(-300, 300, size).astype(np.int16)
        assert _median(values) == float(np.median(values))
        assert _median(values.reshape(1, -1)) == float(np.median(values))


def test_a_grid_packs_into_its_bitboard():
    grid = np.random.default_rng(6).random((30, 40)) < 0.2
    bits = _bits(grid)
    rows, cols = np.nonzero(grid)
    assert bits == sum(1 << int(r * 40 + c) for r, c in zip(rows, cols, strict=True))


def test_noise_median_from_the_histogram_is_the_sample_median():
    a = analyzer()
    rng = np.random.default_rng(5)
    for scale in (0.5, 3.0, 40.0):
        diff = np.clip(np.abs(rng.normal(0, scale, (240, 320))), 0, 255).astype(np.uint8)
        sample = diff[2::4, 2::4].ravel()
        median = float(np.partition(sample, sample.size // 2)[sample.size // 2])
        before = a._noise = 0.0
        a._update_noise(diff)
        expected = max(float(a.settings.noise_level), 3.0 * median / 0.6745)
        assert a._noise == pytest.approx(before + NOISE_WEIGHT * (expected - before))


def test_thin_streaks_in_new_places_never_add_up():
    a = analyzer()
    rng = np.random.default_rng(7)
    dark = (textured() // 5).astype(np.uint8)
    for i in range(20):
        frame = dark.copy()
        for _ in range(60):  # rain: 1-px streaks 6-15 px long, anywhere
            y, x, n = int(rng.integers(0, 225)), int(rng.integers(0, 320)), int(rng.integers(6, 16))
            frame[y : y + n, x] = 200
        score = a.analyse(frame, i * 200_000)
        assert score.blocks == 0, i
    assert score.scattered > 20


def pool_sweep(
    dim: int, size: tuple[float, float], y: int, light: tuple[float, float], xs: range
) -> Iterator[np.ndarray]:
    """A dark scene (``textured() // dim``) under a pool of light of Gaussian radii ``size``
    at height ``y``, multiplying by up to ``1 + light[0]`` and adding ``light[1]``, its centre
    at each of ``xs`` in turn."""
    dark = (textured() // dim).astype(float)
    rows, cols = np.mgrid[0:240, 0:320]
    for cx in xs:
        pool = np.exp(-(((cols - cx) / size[0]) ** 2) - ((rows - y) / size[1]) ** 2)
        yield np.clip(dark * (1 + light[0] * pool) + light[1] * pool, 0, 255).astype(np.uint8)


def test_a_pool_of_light_moving_over_a_dark_scene_is_not_motion():
    a = analyzer()
    for i, frame in enumerate(pool_sweep(4, (60.0, 45.0), 150, (3, 20), range(-60, 380, 20))):
        score = a.analyse(frame, i * 200_000)
        assert score.blocks <= 2, (i, score)
    assert score.lit > 0 or a.analyse(frame, 99 * 200_000).blocks == 0


def test_a_small_object_that_persists_adds_up_its_path():
    # 8x22 analysis pixels (16x44 at 640x480): a few cells a frame, but it walks on.
    a = analyzer()
    rng = np.random.default_rng(9)
    img = textured()
    scores = []
    for i in range(12):
        frame = noisy(img, 1.5, rng)
        x = 60 + 4 * i
        frame[100:122, x : x + 8] = 10
        scores.append(a.analyse(frame, i * 200_000))
    assert max(s.cells for s in scores) <= 8
    assert scores[-1].blocks > 10 and scores[-1].swept


def test_cells_grow_from_a_seed_only_through_joined_cells():
    grid = _Cells(4, 6)

    def bits(*cells: tuple[int, int]) -> int:
        return sum(1 << (r * 6 + c) for r, c in cells)

    within = bits((0, 1), (1, 2), (2, 2), (3, 5), (0, 5))  # (3, 5), (0, 5): not joined
    assert grid.grow(bits((0, 0)), within) == bits((0, 0), (0, 1), (1, 2), (2, 2))
    assert grid.grow(bits((3, 0)), within) == bits((3, 0))


def rain_on(frame: np.ndarray, rng: np.random.Generator, streaks: int = 150) -> None:
    """Thin bright streaks, 1 px wide and 6-15 px long, in new places."""
    for _ in range(streaks):
        y, x, n = int(rng.integers(0, 225)), int(rng.integers(0, 320)), int(rng.integers(6, 16))
        frame[y : y + n, x] = 200


def test_in_rain_a_solid_flash_that_comes_and_goes_is_not_an_object():
    # A frame difference shows a flash twice, as it comes and as it goes, in the same cells:
    # a big drop lit for one frame must not look like something that stayed.
    a = analyzer()
    rng = np.random.default_rng(11)
    dark = (textured() // 5).astype(np.uint8)
    scores = []
    for i in range(12):
        frame = dark.copy()
        rain_on(frame, rng)
        if i % 3 == 1:  # a 16x16 flash, somewhere new each time
            y, x = 40 + 50 * (i // 3), 40 + 70 * (i // 3)
            frame[y : y + 16, x : x + 16] = 230
        scores.append(a.analyse(frame, i * 200_000))
    assert all(s.scattered > 0.1 * a.live_cells for s in scores[1:])  # clutter
    assert [s.objects for s in scores] == [0] * 12
    assert max(s.blocks for s in scores) < 10  # a 3x3 group as it comes, no more


def test_the_steep_rim_of_a_small_bright_pool_is_light_too():
    # Near headlights: the light falls off across a cell, so the old texture times one
    # brightness ratio does not explain it; a ratio sloping across the cell does.
    a = analyzer()
    for i, frame in enumerate(pool_sweep(5, (30.0, 22.0), 120, (5, 10), range(-40, 360, 16))):
        score = a.analyse(frame, i * 200_000)
        assert score.blocks <= 2, (i, score)


def blob(frame: np.ndarray, x: float, y: float, radius: float, blur: float, level: float) -> None:
    """A disc of ``radius`` at (x, y) seen through a blur of ``blur`` px, at ``level``."""
    rows, cols = np.mgrid[0:240, 0:320]
    r = np.hypot(cols - x, rows - y)
    cover = np.clip((radius - r) / max(blur, 1.0) + 0.5, 0.0, 1.0)
    frame[:] = np.clip(frame * (1 - cover) + level * cover, 0, 255).astype(np.uint8)


def test_a_blurred_glowing_insect_at_the_lens_is_not_motion_but_a_walker_there_is():
    # An insect at the IR lamp, a few centimetres from the lens: burnt out and blurred over
    # many pixels, hovering about the dim garden. A walker in the garden, in focus, crossing
    # the picture below it meanwhile, is an event from her first steps.
    rng = np.random.default_rng(12)
    dark = (textured() // 5).astype(np.uint8)
    walker = (textured(8)[:48, :16] // 3).astype(np.uint8)
    path = [(60 + 17 * i + 20 * np.sin(i), 110 + 30 * np.cos(1.3 * i)) for i in range(16)]
    for with_walker in (False, True):
        a = analyzer()
        scores = []
        for i, (x, y) in enumerate(path):
            frame = noisy(dark, 4, rng)
            if with_walker:
                frame[170:218, 40 + 8 * i : 56 + 8 * i] = walker
            blob(frame, x, y, 24, 14.0, 400)
            scores.append(a.analyse(frame, i * 200_000))
        assert sum(1 for s in scores if s.near) >= 10
        tracker = MotionTracker(10, 0.4, quiet=1.0)
        events = [e for s in scores for e in tracker.update(s)]
        started = [e for e in events if isinstance(e, MotionStarted)]
        if with_walker:
            assert len(started) == 1 and started[0].onset <= 3 * 200_000, scores
        else:
            assert started == [] and max(s.blocks for s in scores) <= 2, scores


def test_a_walker_coming_toward_the_camera_counts_though_only_her_outline_moves():
    # She grows by a pixel every frame and barely moves sideways: between two frames only
    # her outline changes (thin), but over a second she has grown by a solid amount.
    rng = np.random.default_rng(13)
    img = textured()
    patch = np.kron(np.random.default_rng(3).integers(0, 60, (12, 5)), np.ones((4, 4)))
    a = analyzer()
    scores = []
    for i in range(25):
        frame = noisy(img, 1.5, rng)
        h = 40 + i
        w = round(h * 0.4)
        body = patch[np.linspace(0, 47, h).astype(int)][:, np.linspace(0, 19, w).astype(int)]
        frame[100 : 100 + h, 200 : 200 + w] = body.astype(np.uint8)
        scores.append(a.analyse(frame, i * 200_000))
    assert max(s.blocks for s in scores) > 10
    assert any(s.grown for s in scores)


def fleck_pattern(rng: np.random.Generator) -> np.ndarray:
    """Gaps between leaves as sunflecks (1) in shade (0): blobs of 4-12 px, a pixel or two
    of penumbra."""
    coarse = rng.random((240 // 6 + 2, 336 // 6 + 2))
    fine = np.kron(coarse, np.ones((6, 6)))[:240, :336]
    smooth = sum(np.roll(np.roll(fine, dy, 0), dx, 1) for dy in (-2, 0, 2) for dx in (-2, 0, 2))
    return np.clip((smooth / 9 - 0.5) * 12 + 0.5, 0.0, 1.0)


def sunflecks(t: float, patterns: tuple[np.ndarray, ...]) -> np.ndarray:
    """The light under a tree ``t`` s into a gust: the wind picks up over a second, the
    crown sways the flecks 5 px to and fro and 2 px up and down, and the leaves flutter
    (some of the flecks change shape and back); 35 % of the light in the shade."""
    wind = min(t, 1.0)
    dx = round(5 * wind * np.sin(2 * np.pi * 1.3 * t))
    dy = round(2 * wind * np.sin(2 * np.pi * 0.9 * t))
    sun = np.roll(patterns[int(t * 1.5) % 2], dy, 0)[:, 8 + dx : 328 + dx]
    return 0.35 + 0.65 * sun


def under_a_tree(gust_from: int, walker_from: int | None, speed: int = 8) -> list[Score]:
    """Scores of 50 frames (5 a second) of sunflecks on textured ground under a tree, a gust
    from frame ``gust_from``; a walker in dark clothes (lit by the same flecks) crossing the
    shade from frame ``walker_from`` at ``speed`` px a frame."""
    ground = textured().astype(float) * 0.6 + 90
    walker = (textured(9)[:48, :16] // 8).astype(float)
    rng = np.random.default_rng(14)
    still, other = fleck_pattern(rng), fleck_pattern(rng)
    fluttering = np.kron(rng.random((8, 12)) < 0.3, np.ones((30, 28), dtype=bool))
    patterns = (still, np.where(fluttering, other, still))
    a = analyzer()
    scores = []
    for i in range(50):
        scene = ground.copy()
        if walker_from is not None and i >= walker_from:
            x = 10 + speed * (i - walker_from)
            scene[150:198, x : x + 16] = walker
        scene[80:] *= sunflecks(max(i - gust_from, 0) / 5, patterns)[80:]
        scores.append(a.analyse(noisy(scene, 1.5, rng), i * 200_000))
    return scores


def test_dappled_shade_in_a_gust_is_not_motion_but_a_walker_through_it_is():
    # Still, then a gust sways and flutters the flecks (the same states come and go within a
    # second or two). Alone: no event. A walker crossing the shade meanwhile: an event at once.
    for walker_from in (None, 30):
        scores = under_a_tree(gust_from=5, walker_from=walker_from)
        tracker = MotionTracker(10, 1.0, quiet=1.0)
        started = [e for s in scores for e in tracker.update(s) if isinstance(e, MotionStarted)]
        assert sum(1 for s in scores if s.shade) >= 30
        if walker_from:
            assert len(started) == 1 and 30 * 200_000 <= started[0].onset <= 32 * 200_000
        else:
            assert started == [], [(round(s.blocks), s.cells, s.shade) for s in scores]


def under_a_small_crown(walker_from: int | None, seed: int) -> list[Score]:
    """Scores of 50 frames (5 a second) under a small crown in deep shade (30 % of the light
    over a 160x60 px patch of ground): eleven sunflecks well apart, each fluttering on its
    own from frame 5 (shifting by up to 3 px, changing size); a walker in dark clothes
    crossing from frame ``walker_from``."""
    ground = textured().astype(float) * 0.6 + 90
    walker = (textured(9)[:48, :16] // 8).astype(float)
    rng = np.random.default_rng(seed)
    top, left = 150, 80
    flecks = [
        (top + 8 + 30 * r + int(rng.integers(-3, 4)), left + 8 + 32 * c + int(rng.integers(-3, 4)))
        for r in range(2)
        for c in range(5)
    ] + [(top + 23, left + 168)]
    a = analyzer()
    scores = []
    for i in range(50):
        scene = ground.copy()
        if walker_from is not None and i >= walker_from:
            x = 10 + 8 * (i - walker_from)
            scene[150:198, x : x + 16] = walker
        light = np.ones_like(scene)
        light[top : top + 60, left : left + 160] = 0.3
        t, gust = max(i - 5, 0) / 5, i >= 5
        for k, (y, x) in enumerate(flecks):
            dx = round(3 * np.sin(2 * np.pi * (1.1 + 0.1 * k) * t + k)) if gust else 0
            dy = round(2 * np.cos(2 * np.pi * (0.9 + 0.1 * k) * t + k)) if gust else 0
            r = 4 + (int(t * 3 + k) % 2 if gust else 0)
            light[y + dy : y + dy + 2 * r, x + dx : x + dx + 2 * r] = 1.0
        scores.append(a.analyse(noisy(scene * light, 1.5, rng), i * 200_000))
    return scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_small_crowns_flecks_fluttering_apart_are_not_motion(seed: int):
    # Under a tenth of the view moves, but in many small separate patches: the wind is
    # noticed, the flecks are ignored, and a walker through them is an event at once.
    for walker_from in (None, 30):
        scores = under_a_small_crown(walker_from, seed)
        tracker = MotionTracker(10, 1.0, quiet=1.0)
        started = [e for s in scores for e in tracker.update(s) if isinstance(e, MotionStarted)]
        assert sum(1 for s in scores if s.shade) >= 30
        assert max(s.cells for s in scores[:30]) < 0.1 * 1200
        if walker_from:
            assert [e.onset for e in started] == [30 * 200_000]
        else:
            assert started == [], [(round(s.blocks), s.cells, s.shade) for s in scores]


def test_someone_already_there_when_the_wind_gets_up_is_not_lost():
    # In the first second of a gust, what changes next to the shade is taken for it: but not
    # the walker who was there before (her score never drops).
    scores = under_a_tree(gust_from=10, walker_from=0, speed=6)
    assert sum(1 for s in scores if s.shade) >= 30
    assert min(s.blocks for s in scores[2:]) > 10, [round(s.blocks) for s in scores]
