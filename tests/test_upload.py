"""Clips and stills reach S3 under the contract's keys, and nothing is lost on the way.

S3 is moto in server mode on 127.0.0.1 (real HTTP); credentials come from a local AWS IoT
credentials provider with mutual TLS.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import av
import pytest
from conftest import DaemonProcess, clip_facts, run_daemon, settings_for
from servers import CredentialsProvider, Pki, Relay, free_port, moto_server, stalled_endpoint
from servers import s3_client as s3

from pinthesky.cloud import uploader as uploader_module
from pinthesky.cloud.uploader import Target, UploadEnded, Uploader, backoff, in_thread
from pinthesky.daemon.app import Daemon
from pinthesky.errors import PintheskyError
from pinthesky.record.clips import ClipStore

BUCKET = "pits-clips"


@pytest.fixture(scope="module")
def recorded(footage, tmp_path_factory) -> Path:
    """Clips (with their trigger sidecars) of two walk-ins, recorded once."""
    out = tmp_path_factory.mktemp("recorded")
    scenario = footage.scenario("walkers")
    settings = settings_for(
        out,
        **{
            "source.source": scenario.path,
            "source.replay_speed": 0,
            "recorder.pre_roll": 3,
            "recorder.post_roll": 4,
        },
    )
    run = run_daemon(settings)
    assert len(run.clips) == 2
    return out / "clips"


def copy_clips(src: Path, dst: Path) -> list[Path]:
    """The clips and what the recorder kept beside them, without their motion pictures
    (those are test_alerts.py's)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.motion.jpg"))
    return ClipStore(dst).clips()


def iot_settings(tmp: Path, pki: Pki, provider: CredentialsProvider, **extra: Any):  # type: ignore[no-untyped-def]
    return settings_for(
        tmp,
        **{
            "storage.bucket_name": BUCKET,
            "cloud_connection.thing_name": "cam1",
            "cloud_connection.credentials_endpoint": provider.endpoint,
            "cloud_connection.role_alias": "pits-role",
            "cloud_connection.cert_path": pki.cert_file,
            "cloud_connection.key_path": pki.key_file,
            "cloud_connection.cacert_path": pki.ca_file,
            "storage.capture_dir": tmp / "images",
            **extra,
        },
    )


async def drain(daemon: Daemon, expected: int, within: float = 60) -> list[UploadEnded]:
    """Run the daemon's uploader until ``expected`` uploads ended."""
    ended: list[UploadEnded] = []
    done = asyncio.Event()

    def on_upload(ev: UploadEnded) -> None:
        ended.append(ev)
        if len(ended) >= expected:
            done.set()

    daemon.bus.subscribe(UploadEnded, on_upload)
    uploader = daemon._make_uploader()
    assert uploader is not None
    task = asyncio.create_task(uploader.run())
    try:
        await asyncio.wait_for(done.wait(), within)
    finally:
        task.cancel()
    return ended


def test_clips_land_under_the_contract_keys_as_annexb_with_trigger(recorded, tmp_path, aws_env):
    pki = Pki(tmp_path / "certs")
    clips = copy_clips(recorded, tmp_path / "clips")
    frames = [clip_facts(c).frames for c in clips]
    with moto_server() as endpoint, CredentialsProvider(pki) as provider:
        aws_env(endpoint)
        s3(endpoint).create_bucket(Bucket=BUCKET)
        daemon = Daemon(iot_settings(tmp_path, pki, provider))
        ended = asyncio.run(drain(daemon, 2))
        assert [e.key for e in ended] == [
            f"motion_videos/cam1/{c.name.split('.')[0]}.motion.h264" for c in clips
        ]  # oldest first
        for ev, n in zip(ended, frames, strict=True):
            obj = s3(endpoint).get_object(Bucket=BUCKET, Key=ev.key)
            meta = obj["Metadata"]
            assert meta["trigger"] == "motion" and meta["start_time"] == str(ev.start_time)
            assert meta["image_key"] == f"capture_images/cam1/{ev.start_time}.motion.jpg"
            assert set(meta) == {  # the clip's facts (test_alerts.py checks their values)
                "trigger", "start_time", "end_time", "duration", "peak_score", "image_key"
            }  # fmt: skip
            body = obj["Body"].read()
            assert body.startswith(b"\x00\x00\x00\x01")
            with av.open(io.BytesIO(body), format="h264") as c:
                assert sum(1 for _ in c.decode(video=0)) == n  # remuxed, not re-encoded
        assert provider.requests and provider.requests[0]["thing"] == "cam1"
    assert ClipStore(tmp_path / "clips").clips() == []  # deleted after S3 confirmed
    assert not [p for p in (tmp_path / "clips").iterdir()]  # sidecars and temp files too


def test_mp4_video_format_uploads_the_clip_as_is(recorded, tmp_path, aws_env, monkeypatch):
    clips = copy_clips(recorded, tmp_path / "clips")
    data = clips[0].read_bytes()
    with moto_server() as endpoint:
        aws_env(endpoint)
        s3(endpoint).create_bucket(Bucket=BUCKET)
        settings = settings_for(
            tmp_path,
            **{
                "storage.bucket_name": BUCKET,
                "cloud_connection.thing_name": "cam1",
                "storage.video_format": "mp4",
                "storage.video_prefix": "clips",
            },
        )
        # No IoT provider configured: the SDK's own credentials (here the environment's).
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        ended = asyncio.run(drain(Daemon(settings), 2))
        first = s3(endpoint).get_object(Bucket=BUCKET, Key=ended[0].key)
        assert ended[0].key.endswith(".motion.mp4") and ended[0].key.startswith("clips/cam1/")
        assert first["Body"].read() == data


def test_s3_down_then_up_every_clip_arrives_oldest_first(recorded, tmp_path, aws_env, monkeypatch):
    pki = Pki(tmp_path / "certs")
    clips = copy_clips(recorded, tmp_path / "clips")
    port = free_port()
    waits: list[float] = []
    s3_up = threading.Event()

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        assert ClipStore(tmp_path / "clips").clips() == clips  # nothing deleted early
        if len(waits) == 3:
            s3_up.set()

    async def main(provider: CredentialsProvider) -> list[UploadEnded]:
        daemon = Daemon(iot_settings(tmp_path, pki, provider))
        monkeypatch.setattr(uploader_module.asyncio, "sleep", _fast_sleep(fake_sleep))
        return await drain(daemon, 2, within=120)

    def bring_s3_up() -> None:
        s3_up.wait(60)
        with moto_server(port) as endpoint:
            s3(endpoint).create_bucket(Bucket=BUCKET)
            up.set()
            stop.wait(120)

    up, stop = threading.Event(), threading.Event()
    aws_env(f"http://127.0.0.1:{port}")
    thread = threading.Thread(target=bring_s3_up, daemon=True)
    thread.start()
    try:
        with CredentialsProvider(pki) as provider:
            ended = asyncio.run(main(provider))
    finally:
        stop.set()
        thread.join(30)
    assert len(waits) >= 3 and waits[0] <= waits[1] <= waits[2]  # backing off
    assert [e.name for e in ended] == [c.name for c in clips]
    assert ClipStore(tmp_path / "clips").clips() == []


def _fast_sleep(fake: Any) -> Any:
    real = asyncio.sleep

    async def sleep(seconds: float, *args: Any) -> Any:
        if seconds >= 0.5:  # a backoff: record it instead of waiting
            return await fake(seconds)
        return await real(seconds, *args)

    return sleep


def test_backoff_grows_is_capped_and_jittered():
    waits = [backoff(n, identity=False, rand=lambda: 1.0) for n in range(1, 15)]
    assert waits[:4] == [1, 2, 4, 8] and max(waits) == 300
    assert backoff(3, identity=False, rand=lambda: 0.0) == 2  # half the ceiling at least
    assert backoff(1, identity=True, rand=lambda: 0.0) >= 60  # a refused identity: slowly


def test_refused_identity_keeps_clips_and_retries_slowly(
    recorded, tmp_path, aws_env, monkeypatch, caplog
):
    pki = Pki(tmp_path / "certs")
    copy_clips(recorded, tmp_path / "clips")
    waits: list[float] = []
    gave_up = asyncio.Event

    async def main(provider: CredentialsProvider) -> None:
        got_two = gave_up()

        async def fake_sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) >= 2:
                got_two.set()

        monkeypatch.setattr(uploader_module.asyncio, "sleep", _fast_sleep(fake_sleep))
        daemon = Daemon(iot_settings(tmp_path, pki, provider))
        uploader = daemon._make_uploader()
        assert uploader is not None
        task = asyncio.create_task(uploader.run())
        await asyncio.wait_for(got_two.wait(), 60)
        task.cancel()

    with moto_server() as endpoint, CredentialsProvider(pki) as provider:
        aws_env(endpoint)
        provider.status = 403
        asyncio.run(main(provider))
    assert all(w >= 60 for w in waits)
    assert "refused this device" in caplog.text
    assert len(ClipStore(tmp_path / "clips").clips()) == 2


def test_missing_bucket_is_a_clear_error_and_clips_stay(
    recorded, tmp_path, aws_env, monkeypatch, caplog
):
    copy_clips(recorded, tmp_path / "clips")
    pki = Pki(tmp_path / "certs")
    waits: list[float] = []

    async def main(provider: CredentialsProvider) -> None:
        seen = asyncio.Event()

        async def fake_sleep(seconds: float) -> None:
            waits.append(seconds)
            seen.set()

        monkeypatch.setattr(uploader_module.asyncio, "sleep", _fast_sleep(fake_sleep))
        uploader = Daemon(iot_settings(tmp_path, pki, provider))._make_uploader()
        assert uploader is not None
        task = asyncio.create_task(uploader.run())
        await asyncio.wait_for(seen.wait(), 60)
        task.cancel()

    with moto_server() as endpoint, CredentialsProvider(pki) as provider:
        aws_env(endpoint)  # no bucket created
        asyncio.run(main(provider))
    assert "NoSuchBucket" in caplog.text
    assert len(ClipStore(tmp_path / "clips").clips()) == 2


def test_stills_upload_under_the_image_prefix_and_bad_names_are_refused(tmp_path, aws_env):
    pki = Pki(tmp_path / "certs")

    async def main(provider: CredentialsProvider) -> list[UploadEnded]:
        settings = iot_settings(tmp_path, pki, provider, **{"source.source": "synthetic"})
        daemon = Daemon(settings)
        ended: list[UploadEnded] = []
        got = asyncio.Event()
        daemon.bus.subscribe(UploadEnded, lambda e: (ended.append(e), got.set()))
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.started.wait(), 15)
        for bad in ("../x.jpg", "..", ".hidden.jpg", "a/b.jpg", "x" * 65):
            with pytest.raises(PintheskyError):
                await daemon.capture_image(bad)
        path = await daemon.capture_image("thumbnail_latest.jpg")
        assert path.parent == tmp_path / "images"
        await asyncio.wait_for(got.wait(), 30)
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        return ended

    with moto_server() as endpoint, CredentialsProvider(pki) as provider:
        aws_env(endpoint)
        s3(endpoint).create_bucket(Bucket=BUCKET)
        (ended,) = asyncio.run(main(provider))
        assert ended.key == "capture_images/cam1/thumbnail_latest.jpg" and ended.kind == "image"
        body = s3(endpoint).get_object(Bucket=BUCKET, Key=ended.key)["Body"].read()
        assert body[:2] == b"\xff\xd8"
    assert not (tmp_path / "images" / "thumbnail_latest.jpg").exists()
    assert not (tmp_path / "x.jpg").exists()


def test_storage_disabled_or_no_bucket_keeps_clips_local(tmp_path):
    for extra in (
        {},
        {
            "storage.bucket_name": BUCKET,
            "cloud_connection.thing_name": "cam1",
            "storage.enabled": "false",
        },
    ):
        assert Daemon(settings_for(tmp_path, **extra))._make_uploader() is None


def test_key_readable_by_others_refuses_to_start(tmp_path):
    pki = Pki(tmp_path / "certs")
    pki.key_file.chmod(0o640)
    with CredentialsProvider(pki) as provider:
        daemon = Daemon(iot_settings(tmp_path, pki, provider))
        with pytest.raises(PintheskyError, match="chmod 600"):
            daemon._make_uploader()


def test_a_slow_upload_never_stalls_the_camera_loop(tmp_path, aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")

    async def main(started: threading.Event) -> None:
        settings = settings_for(
            tmp_path,
            **{
                "source.source": "synthetic",
                "storage.bucket_name": BUCKET,
                "cloud_connection.thing_name": "cam1",
                "storage.capture_dir": tmp_path / "images",
            },
        )
        daemon = Daemon(settings)
        analysed = asyncio.Event()
        frames: list[int] = []
        on_frame = daemon._on_frame

        def counting(frame: Any, *args: Any) -> None:
            on_frame(frame, *args)
            frames.append(frame.ts)
            if started.is_set() and len(frames) >= 10:
                analysed.set()

        daemon._on_frame = counting  # type: ignore[method-assign]
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.started.wait(), 15)
        await asyncio.wait_for(daemon.first_frame.wait(), 15)
        await daemon.capture_image("a.jpg")
        assert await asyncio.to_thread(started.wait, 30)
        frames.clear()
        # While the upload hangs, frames keep flowing and being analysed.
        await asyncio.wait_for(analysed.wait(), 10)
        assert frames == sorted(frames) and frames[-1] - frames[0] >= 1_500_000
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0  # and it still stops at once

    with stalled_endpoint() as (endpoint, started):  # a link that died mid-upload
        aws_env(endpoint)
        asyncio.run(main(started))
    assert (tmp_path / "images" / "a.jpg").exists()  # kept for the next start


def test_credentials_endpoint_down_then_up(recorded, tmp_path, aws_env, monkeypatch):
    pki = Pki(tmp_path / "certs")
    copy_clips(recorded, tmp_path / "clips")
    provider = CredentialsProvider(pki)  # not serving yet: its port refuses connections
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            provider.__enter__()  # the endpoint comes back

    async def main() -> list[UploadEnded]:
        monkeypatch.setattr(uploader_module.asyncio, "sleep", _fast_sleep(fake_sleep))
        return await drain(Daemon(iot_settings(tmp_path, pki, provider)), 2, within=120)

    with moto_server() as endpoint:
        aws_env(endpoint)
        s3(endpoint).create_bucket(Bucket=BUCKET)
        try:
            ended = asyncio.run(main())
        finally:
            provider.__exit__()
    assert len(waits) >= 2 and len(ended) == 2
    assert provider.requests  # credentials were fetched once it was back


def test_file_source_ending_with_uploads_pending_exits_0_and_keeps_them(
    footage, tmp_path, aws_env, monkeypatch
):
    aws_env(f"http://127.0.0.1:{free_port()}")  # S3 is down for the whole run
    settings = settings_for(
        tmp_path,
        **{
            "source.source": footage.scenario("walkers").path,
            "source.replay_speed": 0,
            "recorder.pre_roll": 3,
            "recorder.post_roll": 4,
            "storage.bucket_name": BUCKET,
            "cloud_connection.thing_name": "cam1",
            "storage.capture_dir": tmp_path / "images",
            # A quota that holds one clip: the outage makes the queue evict, recording goes on
            # (at the old default bitrate, so that the two clips are several MB each).
            "storage.max_bytes": "9M",
            "camera.encoding_bitrate": 17_000_000,
        },
    )
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    run = run_daemon(settings)
    assert run.code == 0 and len(run.clips) == 2
    left = ClipStore(tmp_path / "clips").clips()
    assert [p.name for p in left] == [run.clips[1].path.name]  # the newest is kept
    assert run.daemon.store.evicted == 1


def test_a_damaged_clip_is_uploaded_as_mp4_and_never_blocks_the_queue(
    recorded, tmp_path, aws_env, monkeypatch
):
    clips = copy_clips(recorded, tmp_path / "clips")
    clips[0].write_bytes(clips[0].read_bytes()[:2000])  # the header cut short: no avcC
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with moto_server() as endpoint:
        aws_env(endpoint)
        s3(endpoint).create_bucket(Bucket=BUCKET)
        settings = settings_for(
            tmp_path, **{"storage.bucket_name": BUCKET, "cloud_connection.thing_name": "cam1"}
        )
        ended = asyncio.run(drain(Daemon(settings), 2))
    assert ended[0].key.endswith(".motion.mp4") and ended[1].key.endswith(".motion.h264")


# -- a hostile home network: links in the queue, deletes and stops mid-upload ----------------


def stub_uploader(clips: Path, images: Path, ended: list[Any], fmt: str = "mp4") -> Any:
    """An uploader of ``clips`` and ``images`` to BUCKET through the S3 of the environment."""
    import boto3

    target = Target(BUCKET, "cam1", "videos", "images", fmt)
    client = lambda: boto3.client("s3", region_name="us-east-1")  # noqa: E731
    return Uploader(target, ClipStore(clips), images, client, ended.append)


def test_a_link_swapped_into_the_queue_is_never_uploaded(tmp_path, aws_env, monkeypatch, caplog):
    """Links planted under our names after the queue was listed (and a hard link, a link
    named like a motion picture): nothing of the secret reaches S3, the queue goes on."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    clips, images = tmp_path / "clips", tmp_path / "images"
    clips.mkdir()
    images.mkdir()
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:x:0:0:SECRET\n")
    for name in ("1700000000.motion.mp4", "1700000000.motion.jpg"):
        (clips / name).write_bytes(b"\xff\xd8ours")
    (images / "still.jpg").write_bytes(b"\xff\xd8ours")
    (images / "other.jpg").write_bytes(b"\xff\xd8ours")
    (clips / "1690000000.motion.jpg").symlink_to(secret)  # named like a motion picture
    ended: list[Any] = []

    async def main() -> Any:
        uploader = stub_uploader(clips, images, ended)
        queue = uploader.pending()
        assert "1690000000.motion.jpg" not in [p.name for p in queue]
        for path in queue:  # swapped after the listing: a link, or a hard link
            if path.name == "other.jpg":
                path.unlink()
                os.link(secret, path)
            elif path.name != "still.jpg":
                path.unlink()
                path.symlink_to(secret)
        for path in queue:
            done = await in_thread(lambda p=path: uploader._upload(p))  # type: ignore[misc]
            if done is not None:
                ended.append(done)
        return uploader

    with moto_server() as endpoint, caplog.at_level(logging.ERROR):
        aws_env(endpoint)
        s3(endpoint).create_bucket(Bucket=BUCKET)
        uploader = asyncio.run(main())
        objects = s3(endpoint).list_objects_v2(Bucket=BUCKET).get("Contents", [])
        bodies = [
            s3(endpoint).get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in objects
        ]
    assert bodies == [b"\xff\xd8ours"]  # the still alone
    assert [e.name for e in ended] == ["still.jpg"]
    assert {"other.jpg", "1700000000.motion.mp4", "1700000000.motion.jpg"} <= uploader._refused
    assert "SECRET" not in caplog.text
    assert secret.read_bytes() == b"root:x:0:0:SECRET\n"


def test_a_clip_deleted_while_it_uploads_never_reaches_the_bucket(tmp_path, aws_env, monkeypatch):
    """The owner deletes a clip on the page while its upload is half way: the upload stops
    and S3 never gets the object (the camera cannot delete from the bucket afterwards)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    clips = tmp_path / "clips"
    clips.mkdir()
    clip = clips / "1700000000.motion.mp4"
    clip.write_bytes(os.urandom(15 * 1024 * 1024))  # one PUT, beyond every socket buffer
    ended: list[Any] = []

    async def main(relay: Relay) -> Any:
        uploader = stub_uploader(clips, tmp_path / "images", ended)
        task = asyncio.create_task(uploader.run())
        await asyncio.to_thread(relay.holding.wait, 30)
        uploader.store.remove(clip)  # what DELETE /api/clips/NAME does
        relay.release.set()
        await asyncio.wait_for(uploader.idle.wait(), 60)  # the upload ended, one way or another
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return uploader

    with moto_server() as endpoint:
        s3(endpoint).create_bucket(Bucket=BUCKET)
        with Relay(int(endpoint.rsplit(":", 1)[1]), hold_after=1024 * 1024) as relay:
            aws_env(relay.url)
            uploader = asyncio.run(main(relay))
        assert s3(endpoint).list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    assert ended == [] and uploader.given_up == 1


def test_a_stop_during_a_slow_upload_gives_it_up_at_once_and_keeps_the_clip(recorded, tmp_path):
    """SIGTERM while an upload hangs on a stalled link: the daemon exits within a second or
    two (systemd kills it at 15), and the clip waits for the next start."""
    clips = copy_clips(recorded, tmp_path / "clips")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with stalled_endpoint() as (endpoint, started):
        env["AWS_ENDPOINT_URL_S3"] = endpoint
        args = ["--source", "synthetic", "--combine-dir", str(tmp_path / "clips")]
        args += ["--bucket-name", BUCKET, "--thing-name", "cam1"]
        args += ["--capture-dir", str(tmp_path / "images"), "--video-format", "mp4"]
        daemon = DaemonProcess(args, tmp_path, env)
        try:
            assert started.wait(60), "the upload never began"
        finally:
            code, took = daemon.stop()
    assert code == 0 and took < 5, (code, took, "".join(daemon.lines)[-2000:])
    assert [p.name for p in ClipStore(tmp_path / "clips").clips()] == [c.name for c in clips]
