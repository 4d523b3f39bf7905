"""Live view over the Pi In The Sky data plane: the ``record`` command streams MPEG-1 to a local
stand-in for API Gateway's management API (TLS; every request's SigV4 signature recomputed and
checked), signed with credentials from a local AWS IoT credentials provider (mutual TLS), while
the real daemon keeps recording; and the data-plane replies to health, configuration and
upload requests."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from conftest import settings_for, until
from servers import ApiGateway, CredentialsProvider, Pki, Post

from pinthesky.cloud.dataplane import CHUNK_BYTES, header
from pinthesky.control.commands import Refused, parse_command
from pinthesky.daemon.app import Daemon
from pinthesky.live.session import Limits
from pinthesky.media import US
from pinthesky.record.bus import ClipReady
from pinthesky.record.clips import ClipInfo
from pinthesky.settings import Settings

REGION = "eu-west-3"


@pytest.fixture
def cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Pki, ApiGateway]]:
    """The IoT credentials provider and API Gateway, both on TLS signed by a test CA that
    botocore trusts through AWS_CA_BUNDLE."""
    pki = Pki(tmp_path / "pki")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(pki.ca_file))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with CredentialsProvider(pki) as provider, ApiGateway(pki) as api:
        monkeypatch.setattr(pki, "provider", provider, raising=False)
        yield pki, api


def live_settings(tmp_path: Path, pki: Pki, api: ApiGateway, **flags: Any) -> Settings:
    provider: CredentialsProvider = pki.provider  # type: ignore[attr-defined]
    return settings_for(
        tmp_path,
        **{
            "source.source": "synthetic",
            "cloud_connection.thing_name": "cam1",
            "cloud_connection.credentials_endpoint": provider.endpoint,
            "cloud_connection.role_alias": provider.role_alias,
            "cloud_connection.cert_path": pki.cert_file,
            "cloud_connection.key_path": pki.key_file,
            "cloud_connection.cacert_path": pki.ca_file,
            "dataplane.enabled": "true",
            "dataplane.endpoint_url": api.endpoint,
            "dataplane.region_name": REGION,
            **flags,
        },
    )


def record(
    cid: str, manager: str | None, endpoint: str | None, start: bool = True, invoke: str = "i1"
) -> dict[str, Any]:
    connection: dict[str, Any] = {"id": cid, "invoke_id": invoke}
    if manager is not None:
        connection["manager_id"] = manager
    if endpoint is not None:
        connection["management_endpoint"] = endpoint
    return {
        "name": "record",
        "context": {"session": {"start": start, "stop": not start}, "connection": connection},
    }


def send(tmp_path: Path, *messages: Any) -> None:
    """Append to the event-input file, as the IoT sidecar does."""
    with (tmp_path / "events" / "input.json").open("a") as fh:
        for m in messages:
            fh.write(m if isinstance(m, str) else json.dumps(m))


async def start(settings: Settings) -> tuple[Daemon, asyncio.Task[int]]:
    daemon = Daemon(settings)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.started.wait(), 15)
    await asyncio.wait_for(daemon.first_frame.wait(), 15)
    return daemon, task


async def posted(api: ApiGateway, predicate: Any, within: float = 30) -> None:
    await asyncio.to_thread(api.wait_for, predicate, within)


def invoked(post: Post) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(post.body)["invoke"]
    return event


def stream(posts: list[Post]) -> tuple[bytes, list[bytes]]:
    """The header and the chunks of MPEG-1, decoded: every post's body is base64 text, the
    header's too (pits-device 0.9.1 posts both through ``b64encode``)."""
    head, *chunks = (base64.b64decode(p.body, validate=True) for p in posts)
    return head, chunks


def decode_mpeg1(data: bytes) -> list[tuple[int, int]]:
    """Sizes of the pictures PyAV decodes from an MPEG-1 video elementary stream."""
    with av.open(io.BytesIO(data), format="mpegvideo") as container:
        return [(f.width, f.height) for f in container.decode(video=0)]


# -- the whole path, on real footage ----------------------------------------------------------


def test_record_streams_mpeg1_while_the_daemon_records_motion(footage, tmp_path, cloud):
    """A console viewer (record start) watches the replayed footage while someone walks in: the
    stream is the jsmp header then MPEG-1 at the camera's size in chunks of at most 32768
    bytes, all signed for execute-api in the configured region; the motion still makes its
    clip; a second viewer is refused; a health request through the data plane is answered
    there; the console's stop ends the stream with record_end to its manager connection."""
    pki, api = cloud
    scene = footage.scenario("small_object")  # a patch slides on the lawn from 10 to 14 s
    settings = live_settings(
        tmp_path,
        pki,
        api,
        **{
            "source.source": scene.path,
            "source.replay_speed": 1,
            "recorder.pre_roll": 3,
            "recorder.post_roll": 4,
        },
    )
    clips: list[tuple[ClipInfo, bool]] = []

    async def main() -> Daemon:
        daemon, task = await start(settings)
        sessions = daemon.sessions
        assert sessions is not None
        daemon.bus.subscribe(
            ClipReady, lambda e: clips.append((e.clip, "viewer" in sessions.sessions))
        )
        send(tmp_path, record("viewer", "manager", api.endpoint, invoke="watch-1"))
        await posted(api, lambda: len(api.to("viewer")) >= 5)
        send(
            tmp_path,
            record("viewer-2", "manager-2", api.endpoint, invoke="watch-2"),
            {
                "name": "health",
                "context": {
                    "session": {"start": False, "stop": False},
                    "connection": {
                        "id": "console",
                        "manager_id": "manager",
                        "management_endpoint": api.endpoint,
                        "invoke_id": "health-1",
                    },
                },
            },
        )
        await posted(api, lambda: api.to("manager-2") and api.to("console"))
        await until(lambda: clips, 40)  # the walk-in's clip, recorded during the session
        send(tmp_path, record("viewer", "manager", api.endpoint, start=False, invoke="watch-1"))
        await posted(api, lambda: api.to("manager"))
        assert await asyncio.wait_for(task, 40) == 0  # the replay ends, as without a viewer
        return daemon

    daemon = asyncio.run(main())

    assert all(p.signed and p.region == REGION and p.service == "execute-api" for p in api.posts)
    head, chunks = stream(api.to("viewer"))
    assert head == header(640, 480) == b"jsmp\x02\x80\x01\xe0"
    assert chunks and max(len(c) for c in chunks) <= CHUNK_BYTES
    sizes = decode_mpeg1(b"".join(chunks))
    assert set(sizes) == {(640, 480)}
    assert len(sizes) >= 50, "about 18 s at 5 fps"

    (clip, streaming) = clips[0]
    assert streaming, "the clip was cut while the viewer watched"
    # The same bounds as without a viewer (test_pipeline): pre-roll 3 s, post-roll 4 s.
    (begin, end) = scene.events[0]
    origin = getattr(daemon.camera, "origin_us", 0)
    first, last = (clip.start_ts - origin) / US, (clip.end_ts - origin) / US
    assert begin - 4 - 1e-6 <= first <= begin - 3 + 1e-6, (first, begin)
    assert end + 4 <= last <= end + 6, (last, end)
    assert clip.trigger == "motion"

    (end,) = api.to("manager")
    event = invoked(end)
    assert event["name"] == "record_end" and event["thing_name"] == "cam1"
    assert event["session"] == {"stop": True}
    assert event["connection"]["id"] == "viewer" and event["connection"]["invoke_id"] == "watch-1"
    assert event["reason"] == "stopped by the console"

    (refusal,) = api.to("manager-2")
    refused = invoked(refusal)
    assert refused["name"] == "record_end" and refused["connection"]["invoke_id"] == "watch-2"
    assert refused["reason"].startswith("refused: 1 live stream(s) already running")
    assert api.to("viewer-2") == []

    (health,) = api.to("console")
    reply = invoked(health)
    assert reply["name"] == "health_end" and reply["connection"]["invoke_id"] == "health-1"
    assert reply["thing_name"] == "cam1" and reply["recording_status"] is True
    assert daemon.sessions is not None and daemon.sessions.started == 1
    assert daemon.sessions.refused == 1


# -- how a session ends -----------------------------------------------------------------------


def test_a_gone_connection_ends_the_session_and_the_daemon_records_on(tmp_path, cloud):
    pki, api = cloud
    api.gone_after["viewer"] = 4  # the header and three chunks, then the viewer has left

    async def main() -> None:
        daemon, task = await start(live_settings(tmp_path, pki, api))
        send(tmp_path, record("viewer", "manager", api.endpoint))
        await posted(api, lambda: api.to("manager"))
        assert daemon.sessions is not None
        await until(lambda: not daemon.sessions.sessions)  # type: ignore[union-attr]
        assert daemon.ring is not None
        newest = daemon.ring.newest_ts()
        await until(lambda: daemon.ring.newest_ts() != newest)  # type: ignore[union-attr]
        # The same viewer may come back: a new session starts.
        api.gone_after.clear()
        send(tmp_path, record("viewer", "manager", api.endpoint, invoke="again"))
        await posted(api, lambda: len(api.to("viewer")) >= 6)
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(main())
    ends = [invoked(p) for p in api.to("manager")]
    assert [e["reason"] for e in ends] == ["gone", "the daemon stopped"]
    assert len(api.to("viewer")) >= 6


def test_daemon_stop_ends_the_session_with_record_end_quickly(tmp_path, cloud):
    pki, api = cloud

    async def main() -> float:
        daemon, task = await start(live_settings(tmp_path, pki, api))
        send(tmp_path, record("viewer", "manager", None))  # record_end via the configured API
        await posted(api, lambda: len(api.to("viewer")) >= 3)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        return loop.time() - t0

    took = asyncio.run(main())
    assert took < 5
    (end,) = api.to("manager")
    assert invoked(end)["reason"] == "the daemon stopped"


def test_session_limits_end_the_stream(tmp_path, cloud):
    """API Gateway's limits, shortened: the two hours become 1.5 s."""
    pki, api = cloud

    async def main() -> None:
        daemon, task = await start(live_settings(tmp_path, pki, api))
        assert daemon.sessions is not None
        daemon.sessions.limits = Limits(max_seconds=1.5)
        send(tmp_path, record("viewer", "manager", api.endpoint))
        await posted(api, lambda: api.to("manager"))
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(main())
    (end,) = api.to("manager")
    assert invoked(end)["reason"] == "time limit"
    head, chunks = stream(api.to("viewer"))
    assert head == header(640, 480) and decode_mpeg1(b"".join(chunks))


def test_a_session_without_pictures_ends_idle(tmp_path, cloud):
    """Ten minutes without a picture (here 0.5 s): the camera stopped handing any over."""
    pki, api = cloud

    async def main() -> None:
        daemon, task = await start(live_settings(tmp_path, pki, api))
        assert daemon.sessions is not None and daemon.live is not None
        daemon.sessions.limits = Limits(idle_seconds=0.5)
        daemon.live.fps = 1
        daemon.live.due = lambda ts: False  # type: ignore[method-assign]
        send(tmp_path, record("viewer", "manager", api.endpoint))
        await posted(api, lambda: api.to("manager"))
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(main())
    (end,) = api.to("manager")
    assert invoked(end)["reason"] == "idle"
    assert stream(api.to("viewer")) == (header(640, 480), [])


# -- bad input --------------------------------------------------------------------------------

HOSTILE = [
    {"name": "record", "context": {"session": {"start": True}}},
    {"name": "record", "context": {"session": {"start": True}, "connection": "c1"}},
    {"name": "record", "context": {"session": {"start": True}, "connection": {"id": ""}}},
    {"name": "record", "context": {"session": {"start": True}, "connection": {"id": "a/../b"}}},
    {"name": "record", "context": {"session": {"start": True}, "connection": {"id": "x" * 5000}}},
    {"name": "record", "context": {"session": {"start": True}, "connection": {"id": 12}}},
    {
        "name": "record",
        "context": {"session": {"start": True, "stop": True}, "connection": {"id": "c"}},
    },
    {"name": "record", "context": {"session": {"start": "yes"}, "connection": {"id": "c"}}},
    {
        "name": "record",
        "context": {"session": {"start": True}, "connection": {"id": "c", "manager_id": ["m"]}},
    },
    {
        "name": "record",
        "context": {
            "session": {"start": True},
            "connection": {"id": "c", "management_endpoint": "http://127.0.0.1:9/prod"},
        },
    },
    {
        "name": "record",
        "context": {
            "session": {"start": True},
            "connection": {"id": "c", "management_endpoint": "https://user:pw@example.com/"},
        },
    },
    {
        "name": "record",
        "context": {
            "session": {"start": True},
            "connection": {"id": "c", "management_endpoint": "https://" + "a" * 5000},
        },
    },
    {
        "name": "record",
        "context": {
            "session": {"start": True},
            "connection": {"id": "c", "management_endpoint": "file:///etc/passwd"},
        },
    },
]


@pytest.mark.parametrize("message", HOSTILE)
def test_hostile_record_contexts_are_one_refusal(message: dict[str, Any]) -> None:
    with pytest.raises(Refused) as refusal:
        parse_command(message, default_duration=30)
    text = str(refusal.value)
    assert "\n" not in text and len(text) < 200 and text.startswith("record: ")


def test_hostile_records_through_the_file_post_nothing_and_recording_goes_on(
    tmp_path, cloud, caplog
):
    pki, api = cloud

    async def main() -> Daemon:
        daemon, task = await start(live_settings(tmp_path, pki, api))
        send(tmp_path, *HOSTILE)
        assert daemon.control is not None
        await until(lambda: daemon.control.refused == len(HOSTILE))  # type: ignore[union-attr]
        assert daemon.ring is not None
        newest = daemon.ring.newest_ts()
        await until(lambda: daemon.ring.newest_ts() != newest)  # type: ignore[union-attr]
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        return daemon

    with caplog.at_level(logging.WARNING, logger="pinthesky.control.controller"):
        daemon = asyncio.run(main())
    assert api.posts == []
    # One line each, until the log's flood guard (logs.Throttle, 5 lines in 10 s) counts the
    # rest instead: the daemon counted every refusal (above) and says that it stopped logging.
    lines = [r.getMessage() for r in caplog.records]
    refusals = [m for m in lines if m.startswith("refused a message: record")]
    assert len(refusals) == min(len(HOSTILE), 5)
    assert any(m.startswith("more lines like that are counted, not logged") for m in lines)
    assert all("\n" not in m for m in lines)
    assert daemon.sessions is not None and daemon.sessions.started == 0


def test_record_is_refused_while_the_data_plane_is_off(tmp_path, cloud, caplog):
    pki, api = cloud

    async def main() -> None:
        daemon, task = await start(
            live_settings(tmp_path, pki, api, **{"dataplane.enabled": "false"})
        )
        send(tmp_path, record("viewer", "manager", api.endpoint))
        assert daemon.sessions is not None
        await until(lambda: daemon.sessions.refused == 1)  # type: ignore[union-attr]
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert api.posts == []
    assert "record refused for connection viewer: the data plane is off" in caplog.text


def test_configuration_and_upload_answers_go_back_over_the_data_plane(tmp_path, cloud, monkeypatch):
    """configuration_end and upload_end of requests that came with a connection are posted to
    that connection as {"invoke": event}, as well as written to the event-output file."""
    from servers import moto_server, s3_client

    pki, api = cloud

    def connection(cid: str) -> dict[str, Any]:
        return {"id": cid, "management_endpoint": api.endpoint, "invoke_id": f"{cid}-invoke"}

    async def main() -> None:
        settings = live_settings(
            tmp_path, pki, api, **{"storage.bucket_name": "clips", "storage.enabled": "true"}
        )
        daemon, task = await start(settings)
        send(
            tmp_path,
            {"name": "configuration", "context": {"connection": connection("conf")}},
            {
                "name": "capture_image",
                "context": {"file_name": "thumb.jpg", "connection": connection("image")},
            },
        )
        await posted(api, lambda: api.to("conf") and api.to("image"), 60)
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    with moto_server() as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        s3_client(endpoint).create_bucket(Bucket="clips")
        asyncio.run(main())
    (conf,) = api.to("conf")
    configuration = invoked(conf)
    assert configuration["name"] == "configuration_end"
    assert configuration["connection"]["invoke_id"] == "conf-invoke"
    assert configuration["configuration"]["dataplane"]["endpoint_url"] == api.endpoint
    (image,) = api.to("image")
    upload = invoked(image)
    assert upload["name"] == "upload_end" and upload["connection"]["invoke_id"] == "image-invoke"
    assert upload["upload"] == {
        "bucket_name": "clips",
        "bucket_key": "capture_images/cam1/thumb.jpg",
    }
    written = json.loads((tmp_path / "events" / "output.json").read_text())
    assert written["name"] in ("upload_end", "configuration_end", "health_end")


def test_a_turned_camera_streams_turned_pictures(tmp_path, cloud):
    """--rotation 270: the header and the pictures are 480x640, as the clips are shown."""
    pki, api = cloud

    async def main() -> None:
        daemon, task = await start(live_settings(tmp_path, pki, api, **{"camera.rotation": 270}))
        send(tmp_path, record("viewer", "manager", api.endpoint))
        await posted(api, lambda: len(api.to("viewer")) >= 4)
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(main())
    head, chunks = stream(api.to("viewer"))
    assert head == header(480, 640)
    assert set(decode_mpeg1(b"".join(chunks))) == {(480, 640)}
