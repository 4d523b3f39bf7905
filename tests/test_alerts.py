"""motion_start: the picture reaches S3 and the event is written before the clip is finished;
the cooldown limits events, never clips or pictures; without a bucket, or with S3 down, the
event still goes out (without ``image``) and the picture follows with the clip.

S3 is moto in server mode on 127.0.0.1; the camera's credentials come from the local AWS IoT
credentials provider with mutual TLS; the camera replays the walkers footage (two walk-ins,
at 10-18 s and 30-36 s of the file).
"""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

import av
import pytest
from conftest import settings_for
from servers import CredentialsProvider, Pki, free_port, moto_server
from servers import s3_client as s3
from test_upload import BUCKET, drain, iot_settings

from pinthesky.daemon.app import Daemon
from pinthesky.record.bus import ClipReady, PictureTaken
from pinthesky.record.clips import ClipInfo, ClipStore
from pinthesky.settings import Settings


class Watched(Daemon):
    """The daemon, with the moments its alerts went out and its clips were finished."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self.ready: list[tuple[float, ClipInfo]] = []
        self.pictures: list[Path] = []
        self.bus.subscribe(ClipReady, lambda e: self.ready.append((time.monotonic(), e.clip)))
        self.bus.subscribe(PictureTaken, lambda e: self.pictures.append(e.path))

    def _alert(self, name: str, **fields: Any) -> dict[str, Any] | None:
        event = super()._alert(name, **fields)
        assert event is not None
        self.sent.append((time.monotonic(), event))
        return event


def replay(settings: Settings) -> Watched:
    async def main() -> Watched:
        daemon = Watched(settings)
        assert await asyncio.wait_for(daemon.run(), 180) == 0
        return daemon

    return asyncio.run(main())


def walkers(footage: Any, speed: float, **extra: Any) -> dict[str, Any]:
    return {
        "source.source": footage.scenario("walkers").path,
        "source.replay_speed": speed,
        "recorder.pre_roll": 3,
        "recorder.post_roll": 4,
        **extra,
    }


def is_jpeg(data: bytes) -> bool:
    with av.open(io.BytesIO(data), format="mjpeg") as c:
        frame = next(c.decode(video=0))
    return data[:2] == b"\xff\xd8" and frame.width > 0


def test_picture_in_s3_and_event_before_the_clip_is_finished(footage, tmp_path, aws_env):
    pki = Pki(tmp_path / "certs")
    with moto_server() as endpoint, CredentialsProvider(pki) as provider:
        aws_env(endpoint)
        s3(endpoint).create_bucket(Bucket=BUCKET)
        # Real time, halved: the walk-in lasts 4 s of wall time, the post-roll 2 s more.
        settings = iot_settings(tmp_path, pki, provider, **walkers(footage, 2))
        daemon = replay(settings)
        assert len(daemon.ready) == 2 and len(daemon.pictures) == 2
        # The default cooldown (60 s) holds the second walk-in's alert back, not its clip.
        assert len(daemon.sent) == 1
        sent_at, event = daemon.sent[0]
        ready_at, clip = daemon.ready[0]
        assert sent_at < ready_at  # the alert came before the clip was finished
        key = f"capture_images/cam1/{clip.start_epoch}.motion.jpg"
        assert event["name"] == "motion_start" and event["thing_name"] == "cam1"
        assert isinstance(event["timestamp"], int)
        assert event["start_time"] == clip.start_epoch and event["trigger"] == "motion"
        assert event["image"] == {"bucket_name": BUCKET, "bucket_key": key}
        obj = s3(endpoint).get_object(Bucket=BUCKET, Key=key)
        assert obj["ContentType"] == "image/jpeg" and is_jpeg(obj["Body"].read())
        assert daemon.alerts.held_back == 1

        # The clips went after the pictures; each carries its facts.
        left = ClipStore(tmp_path / "clips").clips()
        ended = asyncio.run(drain(Daemon(settings), len(left))) if left else []
        for ev in ended:
            assert ev.kind == "video"
        listing = s3(endpoint).list_objects_v2(Bucket=BUCKET)["Contents"]
        videos = sorted(o["Key"] for o in listing if o["Key"].startswith("motion_videos/"))
        assert len(videos) == 2
        for n, video in enumerate(videos):
            meta = s3(endpoint).head_object(Bucket=BUCKET, Key=video)["Metadata"]
            info = daemon.ready[n][1]
            assert meta["trigger"] == "motion"
            assert meta["start_time"] == str(info.start_epoch)
            assert meta["image_key"] == f"capture_images/cam1/{info.start_epoch}.motion.jpg"
            assert abs(float(meta["duration"]) - info.duration) < 0.01
            assert int(meta["end_time"]) - int(meta["start_time"]) in (
                int(info.duration),
                int(info.duration) + 1,
            )
            assert int(meta["peak_score"]) > 10  # above the default sensitivity
            s3(endpoint).head_object(Bucket=BUCKET, Key=meta["image_key"])


def test_without_a_bucket_pictures_stay_beside_the_clips(footage, tmp_path):
    settings = settings_for(tmp_path, **walkers(footage, 0, **{"alerts.cooldown": 5}))
    daemon = replay(settings)
    store = ClipStore(tmp_path / "clips")
    clips = store.clips()
    assert len(clips) == 2 and len(daemon.sent) == 2  # 20 s apart: past a 5 s cooldown
    for clip, (_, event) in zip(clips, daemon.sent, strict=True):
        assert "image" not in event
        assert event["start_time"] == int(clip.name.split(".")[0])
        picture = store.picture(clip)
        assert picture is not None and picture.name == f"{event['start_time']}.motion.jpg"
        assert is_jpeg(picture.read_bytes())
    assert store.pictures() == [store.picture(c) for c in clips]
    # Evicting a clip takes its picture along.
    store.max_bytes = 0
    store.enforce_quota()
    assert store.clips() == clips[1:] and store.pictures() == [store.picture(clips[1])]


def test_s3_down_the_event_goes_out_and_the_picture_follows_the_clip(
    footage, tmp_path, aws_env, monkeypatch
):
    aws_env(f"http://127.0.0.1:{free_port()}")  # nobody listens: S3 is down
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    flags = walkers(
        footage,
        0,
        **{
            "storage.bucket_name": BUCKET,
            "cloud_connection.thing_name": "cam1",
            "alerts.cooldown": 600,
        },
    )
    daemon = replay(settings_for(tmp_path, **flags))
    assert len(daemon.sent) == 1 and "image" not in daemon.sent[0][1]
    store = ClipStore(tmp_path / "clips")
    clips, pictures = store.clips(), store.pictures()
    assert len(clips) == 2 and len(pictures) == 2  # nothing lost: both still queued
    with moto_server() as endpoint:
        aws_env(endpoint)
        s3(endpoint).create_bucket(Bucket=BUCKET)
        ended = asyncio.run(drain(Daemon(settings_for(tmp_path, **flags)), 4))
        stems = [c.name.split(".")[0] for c in clips]
        assert [e.key for e in ended] == [
            *(f"capture_images/cam1/{s}.motion.jpg" for s in stems),
            *(f"motion_videos/cam1/{s}.motion.h264" for s in stems),
        ]  # pictures first
        for picture, clip in zip(ended[:2], ended[2:], strict=True):
            assert clip.image_key == picture.key
            meta = s3(endpoint).head_object(Bucket=BUCKET, Key=clip.key)["Metadata"]
            assert meta["image_key"] == picture.key
    assert store.clips() == [] and store.pictures() == []


def test_the_cooldown_is_a_setting_of_the_toml_file_and_the_shadow(tmp_path):
    from pinthesky.control.shadow import desired_changes, reported_document
    from pinthesky.errors import ConfigError
    from pinthesky.settings import load, merge

    toml = tmp_path / "pinthesky.toml"
    toml.write_text("[alerts]\ncooldown = 15\n")
    settings = load({}, toml, environ={})
    assert settings.alerts.cooldown == 15.0
    assert load({"alerts.cooldown": "90"}, toml, environ={}).alerts.cooldown == 90.0
    with pytest.raises(ConfigError) as bad:
        load({"alerts.cooldown": "soon"}, environ={})
    assert "--alert-cooldown alerts.cooldown = 'soon'" in str(bad.value)
    assert reported_document(settings)["camera"]["alert_cooldown"] == 15.0
    changes, refused = desired_changes(settings, {"camera": {"alert_cooldown": "120"}}, False)
    assert changes == {"alerts.cooldown": "120"} and refused == []
    changed, errors = merge(settings, changes, "shadow")
    assert changed.alerts.cooldown == 120.0 and errors == []
    _, errors = merge(settings, {"alerts.cooldown": "-1"}, "shadow")
    assert len(errors) == 1 and "alerts.cooldown" in errors[0]
