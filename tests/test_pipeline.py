"""The whole pipeline on real footage: replay a video, get the clips a user expects.

The footage is Debian's opencv-doc vtest.avi (people walking) cut into scenarios with known
motion events, plus light switches, dusk and night-time noise that must give no clip.
"""

from __future__ import annotations

import hashlib
import itertools
from fractions import Fraction
from pathlib import Path

import pytest
from conftest import clip_facts, mp4_boxes, run_daemon, settings_for

REPLAY = {"source.replay_speed": 0, "recorder.pre_roll": 3, "recorder.post_roll": 4}


def replay(footage: object, name: str, tmp_path: Path, **flags: object):  # type: ignore[no-untyped-def]
    scenario = footage.scenario(name)  # type: ignore[attr-defined]
    settings = settings_for(tmp_path, **{"source.source": scenario.path, **REPLAY, **flags})
    return scenario, run_daemon(settings)


@pytest.mark.parametrize(
    "name",
    [
        "walkers",
        "night_walkers",
        "small_object",
        "distant_person",
        "rain_night",
        "animal",
        "downpour",
        "distant_creeper",
        "moths_walkers",
        "approach",
    ],
)
def test_one_clip_per_event_with_pre_and_post_roll(footage, tmp_path, name):
    scenario, run = replay(footage, name, tmp_path)
    assert run.code == 0
    assert len(run.clips) == len(scenario.events), run.clips
    for clip, (begin, end) in zip(run.clips, scenario.events, strict=True):
        start = run.video_time(clip.start_ts)
        stop = run.video_time(clip.end_ts)
        # At least the pre-roll before motion began, and at most one keyframe interval more.
        assert begin - 3 - 1.0 - 1e-6 <= start <= begin - 3 + 1e-6, (start, begin)
        assert end + 4 <= stop <= end + 6, (stop, end)
        assert clip.trigger == "motion"
        assert clip.path.name == f"{clip.start_epoch}.motion.mp4"
        facts = clip_facts(clip.path)
        # The clip plays to its end: every frame decodes, it starts on a keyframe.
        assert facts.first_keyframe
        assert facts.frames == clip.packets
        assert (facts.width, facts.height) == (640, 480)
        assert facts.fragmented
        assert abs(facts.duration - clip.duration) < 0.15
        assert abs(clip.duration - (stop - start)) < 0.15
    assert not list((tmp_path / "clips").glob(".*partial"))


@pytest.mark.parametrize(
    "name", ["lights", "dusk", "night_noise", "sway", "headlights", "headlights_near", "moths"]
)
def test_no_clip_for_light_changes_or_noise(footage, tmp_path, name):
    _, run = replay(footage, name, tmp_path)
    assert run.code == 0
    assert run.clips == []
    assert run.daemon.stats.frames_analysed > 100


def test_same_clips_at_real_time_and_full_speed(footage, tmp_path):
    # small_object is 26 s long: the real-time run takes that long.
    digests = []
    for speed in (0, 1):
        out = tmp_path / f"speed{speed}"
        _, run = replay(footage, "small_object", out, **{"source.replay_speed": speed})
        assert len(run.clips) == 1
        clip = run.clips[0]
        digests.append(
            (
                round(run.video_time(clip.start_ts), 3),
                round(run.video_time(clip.end_ts), 3),
                clip.packets,
                hashlib.sha256(clip.path.read_bytes()).hexdigest(),
            )
        )
    assert digests[0] == digests[1]


def test_long_motion_is_split_on_keyframes_without_gaps(footage, tmp_path):
    _, run = replay(footage, "walkers", tmp_path, **{"recorder.max_clip": 5})
    first_event = [c for c in run.clips if run.video_time(c.start_ts) < 20]
    assert len(first_event) >= 3
    for a, b in itertools.pairwise(first_event):
        assert a.end_ts == b.start_ts  # the next part starts where the last one stopped
        assert a.duration <= 5 + 1.0 + 1e-6
        assert clip_facts(b.path).first_keyframe


def test_raw_h264_clips_for_pits_pipelines(footage, tmp_path):
    _, run = replay(footage, "small_object", tmp_path, **{"storage.clip_format": "h264"})
    (clip,) = run.clips
    assert clip.path.name == f"{clip.start_epoch}.motion.h264"
    data = clip.path.read_bytes()
    assert data.startswith(b"\x00\x00\x00\x01") or data.startswith(b"\x00\x00\x01")
    facts = clip_facts(clip.path)
    assert facts.frames == clip.packets
    assert facts.first_keyframe


def test_rotation_90_is_a_display_rotation_in_the_clip(footage, tmp_path):
    _, run = replay(footage, "small_object", tmp_path, **{"camera.rotation": 90})
    (clip,) = run.clips
    data = clip.path.read_bytes()
    assert mp4_boxes(data)[:2] == [b"ftyp", b"moov"]
    import av

    with av.open(str(clip.path)) as c:
        frame = next(c.decode(video=0))
        assert frame.rotation in (90, -90, 270)


def test_h264_at_the_camera_size_is_passed_through_untouched(footage, tmp_path):
    import av

    # A file as a Pi would record it: H.264 640x480, no B-frames, a keyframe per second.
    src = tmp_path / "pi.mp4"
    with av.open(str(footage.scenario("small_object").path)) as inp, av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.options = {"x264-params": "bframes=0:keyint=10:min-keyint=10:scenecut=0"}
        for i, frame in enumerate(inp.decode(video=0)):
            small = frame.reformat(width=640, height=480, format="yuv420p")
            small.pts = i
            small.time_base = Fraction(1, 10)
            for p in stream.encode(small):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    with av.open(str(src)) as c:
        source_packets = {bytes(p) for p in c.demux(video=0) if p.size}
    _, run = replay(footage, "small_object", tmp_path, **{"source.source": src})
    assert run.daemon.camera.passthrough  # type: ignore[union-attr]
    (clip,) = run.clips
    with av.open(str(clip.path)) as c:
        ours = [(bytes(p), p.is_keyframe) for p in c.demux(video=0) if p.size]
    inter = [data for data, key in ours if not key]
    assert inter and all(data in source_packets for data in inter)
    assert clip_facts(clip.path).frames == clip.packets
