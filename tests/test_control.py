"""Commands through the sidecar's files, driven the way aws-iot-device-client drives them:
messages appended to the input file, the publish file read on each CLOSE_WRITE of its inode
and then a 500 ms sleep (so events written too close together would be lost)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import settings_for, until
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import moto_server
from test_upload import BUCKET, s3

from pinthesky.control.commands import Refused, parse_command
from pinthesky.daemon.app import Daemon
from pinthesky.jsonstream import parse_stream


class DeviceClient:
    """The publish side of aws-iot-device-client: a watch on the file's inode, read on
    CLOSE_WRITE, sleep 500 ms; and its subscribe side: append each message."""

    def __init__(self, events: Path) -> None:
        from inotify_simple import INotify, flags

        self.input = events / "input.json"
        self.output = events / "output.json"
        self.published: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._inotify = INotify()
        self._inotify.add_watch(str(self.output), flags.CLOSE_WRITE)
        # Like the client, publish what the file holds at start.
        self._publish()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._inotify.read(timeout=100):
                continue
            self._publish()
            self._stop.wait(0.5)  # the client's own pause after each publish

    def _publish(self) -> None:
        data = self.output.read_text()
        if data:
            with self.changed:
                self.published.append(json.loads(data))
                self.changed.notify_all()

    def send(self, *messages: Any) -> None:
        with self.input.open("a") as fh:  # std::ios::app, one message after another
            for m in messages:
                fh.write(m if isinstance(m, str) else json.dumps(m))

    def wait_for(self, predicate: Any, timeout: float = 30) -> list[dict[str, Any]]:
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self.published), timeout), self.published
            return list(self.published)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._inotify.close()


def named(name: str, **match: Any) -> Any:
    return lambda events: any(
        e["name"] == name and all(e.get(k) == v for k, v in match.items()) for e in events
    )


async def start(settings: Any) -> tuple[Daemon, asyncio.Task[int]]:
    daemon = Daemon(settings)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.started.wait(), 15)
    await asyncio.wait_for(daemon.first_frame.wait(), 15)
    assert daemon.control is not None
    return daemon, task


def test_every_command_answers_with_its_ids(tmp_path, aws_env, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    session = {"start": False, "stop": False}
    connection = {
        "id": "c1",
        "manager_id": "m1",
        "invoke_id": "i1",
        "management_endpoint": "https://example.invalid",
    }

    async def main(client_box: list[DeviceClient]) -> None:
        settings = settings_for(
            tmp_path,
            **{
                "source.source": "synthetic",
                "storage.bucket_name": BUCKET,
                "cloud_connection.thing_name": "cam1",
            },
        )
        daemon, task = await start(settings)
        client = DeviceClient(tmp_path / "events")
        client_box.append(client)
        await asyncio.to_thread(client.wait_for, named("health_end"))  # the one at start
        client.send(
            {"name": "health", "context": {"health_id": "h-1"}},
            {"name": "configuration", "context": {"session": session, "connection": connection}},
            {
                "name": "capture_image",
                "context": {"file_name": "thumbnail_latest.jpg", "capture_id": "img-1"},
            },
            {"name": "capture_video", "context": {"duration": 1, "capture_id": "vid-1"}},
            {"name": "record", "context": {"session": {"start": True}, "connection": connection}},
            {"name": "upload", "context": {"file": "/etc/passwd"}},
        )
        events = await asyncio.to_thread(
            client.wait_for, named("upload_end", capture_id="vid-1"), 60
        )
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        health = next(e for e in events if e.get("health_id") == "h-1")
        assert health["thing_name"] == "cam1" and isinstance(health["timestamp"], int)
        assert health["version"] and health["mem_total"] > 0 and health["up_time"] >= 0
        config = next(e for e in events if e["name"] == "configuration_end")
        assert config["session"] == session and config["connection"] == connection
        assert config["configuration"]["camera"]["resolution"] == "640x480"
        assert isinstance(config["configuration"]["camera"]["recording_window"], str)
        image = next(e for e in events if e.get("capture_id") == "img-1")
        assert image["upload"] == {
            "bucket_name": BUCKET,
            "bucket_key": "capture_images/cam1/thumbnail_latest.jpg",
        }
        video = next(e for e in events if e.get("capture_id") == "vid-1")
        assert video["trigger"] == "manual" and video["duration"] == 1
        assert video["upload"]["bucket_key"].startswith("motion_videos/cam1/")
        assert video["upload"]["bucket_key"].endswith(".motion.h264")
        assert daemon.control is not None and daemon.control.refused == 1

    clients: list[DeviceClient] = []
    with moto_server() as endpoint:
        aws_env(endpoint)
        s3(endpoint).create_bucket(Bucket=BUCKET)
        try:
            asyncio.run(main(clients))
        finally:
            for c in clients:
                c.close()


def test_a_capture_during_a_motion_clip_says_it_joined_it(tmp_path, aws_env, monkeypatch):
    """capture_video while the synthetic scene's motion clip is recorded: one clip, extended;
    its upload_end says the capture joined the motion clip, the clip's trigger stays motion
    (the contract's value) and its facts name both, in upload_end and in S3's metadata."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")

    async def main(endpoint: str, client_box: list[DeviceClient]) -> dict[str, Any]:
        settings = settings_for(
            tmp_path,
            **{
                "source.source": "synthetic",
                "storage.bucket_name": BUCKET,
                "cloud_connection.thing_name": "cam1",
                "recorder.pre_roll": 1,
                "recorder.post_roll": 1,
            },
        )
        daemon, task = await start(settings)
        client = DeviceClient(tmp_path / "events")
        client_box.append(client)
        assert daemon.recorder is not None
        await until(lambda: (clip := daemon.recorder.open_clip) and clip.trigger == "motion", 40)
        client.send({"name": "capture_video", "context": {"duration": 2, "capture_id": "v-j"}})
        events = await asyncio.to_thread(client.wait_for, named("upload_end", capture_id="v-j"), 60)
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        return next(e for e in events if e.get("capture_id") == "v-j")

    clients: list[DeviceClient] = []
    with moto_server() as endpoint:
        aws_env(endpoint)
        s3(endpoint).create_bucket(Bucket=BUCKET)
        try:
            ended = asyncio.run(main(endpoint, clients))
        finally:
            for c in clients:
                c.close()
        head = s3(endpoint).head_object(Bucket=BUCKET, Key=ended["upload"]["bucket_key"])
    assert ended["joined"] == "motion" and ended["duration"] == 2
    assert ended["trigger"] == "motion" and ended["triggers"] == "motion,manual"
    assert head["Metadata"]["trigger"] == "motion"
    assert head["Metadata"]["triggers"] == "motion,manual"


def test_ten_messages_in_one_burst_are_all_answered_in_order(tmp_path):
    async def main() -> list[dict[str, Any]]:
        daemon, task = await start(settings_for(tmp_path, **{"source.source": "synthetic"}))
        client = DeviceClient(tmp_path / "events")
        try:
            await asyncio.to_thread(client.wait_for, named("health_end"))
            burst = "".join(
                json.dumps({"name": "health", "context": {"health_id": f"h{i}"}}) for i in range(10)
            )
            client.send(burst)  # {...}{...}... in one append, as the old daemon choked on
            events = await asyncio.to_thread(
                client.wait_for, named("health_end", health_id="h9"), 30
            )
        finally:
            client.close()
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        return events

    events = asyncio.run(main())
    ids = [e["health_id"] for e in events if "health_id" in e]
    assert ids == [f"h{i}" for i in range(10)]  # every one published, none coalesced


def test_the_health_file_keeps_the_last_report_and_the_upload_queue(tmp_path, caplog):
    """pitsctl reads the last health report from ``--health-file``: each report, periodic or
    asked for, replaces it whole, with the upload queue beside it; reports that come
    together (a burst of requests) are written one at a time, the newest last."""
    health_file = tmp_path / "state" / "health.json"
    health_file.parent.mkdir()

    def report() -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            return dict(json.loads(health_file.read_text()))
        return None

    async def main() -> dict[str, Any]:
        settings = settings_for(
            tmp_path, **{"source.source": "synthetic", "health.file": str(health_file)}
        )
        daemon, task = await start(settings)
        await until(lambda: report() is not None)  # the report at start
        with (tmp_path / "events" / "input.json").open("a") as fh:
            for i in range(5):
                fh.write(json.dumps({"name": "health", "context": {"health_id": f"pitsctl-{i}"}}))
        await until(lambda: (report() or {}).get("health_id") == "pitsctl-4")
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        return report() or {}

    last = asyncio.run(main())
    assert last["name"] == "health_end" and last["recording_status"] is True
    assert last["upload_queue"] == {"clips": 0, "bytes": 0, "uploading": False}
    assert health_file.stat().st_mode & 0o077 == 0
    assert not list(health_file.parent.glob(".*"))  # written atomically: no temporary left
    assert "health file" not in caplog.text


ATTACKS = [
    '{"name": "capture_image", "context": {"file_name": "../../etc/x.jpg"}}',
    '{"name": "capture_image", "context": {"file_name": ".."}}',
    '{"name": "capture_image_end", "context": {"image_file": "KEY"}}',
    '{"name": "combine_end", "context": {"combine_video": "KEY", "start_time": 1}}',
    '{"name": "upload_end", "context": {}}',
    '{"name": "health", "context": {"health_id": NaN}}',
    "[" * 100_000 + "]" * 100_000,
    '{"name": "capture_video", "context": {"duration": 1' + "0" * 5000 + "}}",
    "DC-Publish",
    '{"name": "capture_video", "context": {"duration": -5}}',
    "garbage that is not json at all {",
]


def test_known_attacks_are_refused_and_the_daemon_keeps_recording(tmp_path, caplog):
    key = tmp_path / "thing.key"
    key.write_text("PRIVATE KEY")

    async def main() -> Daemon:
        daemon, task = await start(settings_for(tmp_path, **{"source.source": "synthetic"}))
        client = DeviceClient(tmp_path / "events")
        try:
            await asyncio.to_thread(client.wait_for, named("health_end"))
            client.send(*(a.replace("KEY", str(key)) for a in ATTACKS))
            client.send({"name": "health", "context": {"health_id": "after-attacks"}})
            await asyncio.to_thread(
                client.wait_for, named("health_end", health_id="after-attacks"), 30
            )
            client.send("x" * (10 * 1024 * 1024))  # a 10 MB file
            client.send({"name": "health", "context": {"health_id": "after-flood"}})
            await asyncio.to_thread(
                client.wait_for, named("health_end", health_id="after-flood"), 30
            )
        finally:
            client.close()
        assert daemon.ring is not None and daemon.ring.newest_ts() is not None
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        return daemon

    daemon = asyncio.run(main())
    assert key.read_text() == "PRIVATE KEY"  # never uploaded, moved or deleted
    assert not (tmp_path / "etc").exists() and not list(tmp_path.glob("x.jpg"))
    assert daemon.control is not None and daemon.control.refused >= 6
    assert "nested too deeply" in caplog.text and "NaN is not allowed" in caplog.text
    assert "more than 1048576 bytes waiting" in caplog.text


@settings(max_examples=10_000, deadline=None)
@given(st.text(max_size=400))
def test_any_text_in_the_input_file_never_raises(text: str) -> None:
    parsed = parse_stream(text)
    for value in parsed.values:
        assert isinstance(value, dict)
        with contextlib.suppress(Refused):
            parse_command(value, default_duration=30)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=10_000, deadline=None)
@given(
    st.sampled_from(
        [
            "capture_video",
            "capture_image",
            "health",
            "configuration",
            "record",
            "upload",
            "capture_image_end",
        ]
    ),
    JSON,
)
def test_any_context_for_any_name_is_a_command_or_one_refusal(name: str, context: Any) -> None:
    message = {"name": name, "context": context}
    text = json.dumps(message)
    (value,) = (
        parse_stream(text).values or [None]
        if "NaN" not in text and "Infinity" not in text
        else [None]
    )
    if value is None:
        return
    try:
        command = parse_command(value, default_duration=30)
    except Refused as exc:
        assert "\n" not in str(exc)
        return
    file_name = getattr(command, "file_name", None)
    if file_name is not None:
        assert "/" not in file_name and not file_name.startswith(".")


@pytest.fixture
def aws_env(monkeypatch):
    def point_at(endpoint: str) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return point_at
