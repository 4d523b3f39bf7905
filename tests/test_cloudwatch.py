"""Logs and EMF metrics in CloudWatch (moto in server mode), switched live from the shadow,
and never in the way of recording when CloudWatch is unreachable."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import OLD_ENV, REPO, eventually, settings_for, until
from servers import CredentialsProvider, Pki, aws_client, black_hole, free_port, moto_server
from test_shadow import documents, write

from pinthesky.cloud.cloudwatch import MAX_BYTES, MAX_RECORDS, CloudWatchLogs, stream_name
from pinthesky.cloud.metrics import METRICS, Sampler, emf_record
from pinthesky.daemon.app import Daemon
from pinthesky.logs import THIRD_PARTY, redact
from pinthesky.settings import defaults, merge

GROUP = "pinthesky-test"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLESESSIONTOKENvalue0123456789"


def today_stream(thing: str | None = "cam1") -> str:
    return stream_name(time.time(), thing, delineate=True)


def log_events(endpoint: str, group: str = GROUP) -> dict[str, list[str]]:
    """Every message in ``group``, by stream ({} while the group does not exist)."""
    client = aws_client("logs", endpoint)
    try:
        streams = client.describe_log_streams(logGroupName=group)["logStreams"]
    except client.exceptions.ResourceNotFoundException:
        return {}
    out: dict[str, list[str]] = {}
    for s in streams:
        name = s["logStreamName"]
        out[name] = []
        token = None
        while True:  # a page holds at most 10,000 events or 1 MB
            page = client.get_log_events(
                logGroupName=group,
                logStreamName=name,
                startFromHead=True,
                **({"nextToken": token} if token else {}),
            )
            out[name] += [e["message"] for e in page["events"]]
            if not page["events"] or page["nextForwardToken"] == token:
                break
            token = page["nextForwardToken"]
    return out


def emf_records(messages: list[str]) -> list[dict[str, Any]]:
    return [json.loads(m) for m in messages if m.startswith('{"_aws"')]


def plain_lines(messages: list[str]) -> list[str]:
    return [m for m in messages if not m.startswith('{"_aws"')]


@pytest.fixture
def logs_env(monkeypatch):
    """boto3 pointed at a local CloudWatch Logs; no credentials from the environment."""

    def point_at(endpoint: str, static_keys: bool = False) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", endpoint)
        if static_keys:  # no credentials provider: the SDK's own chain
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return point_at


def distinctive_credentials(provider: CredentialsProvider) -> None:
    expiry = datetime.now(UTC) + timedelta(hours=1)
    provider.body = json.dumps(
        {
            "credentials": {
                "accessKeyId": "ASIAEXAMPLEKEYID0001",
                "secretAccessKey": SECRET,
                "sessionToken": TOKEN,
                "expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        }
    ).encode()


def cloudwatch_flags(**extra: Any) -> dict[str, Any]:
    return {
        "source.source": "synthetic",
        "cloud_connection.thing_name": "cam1",
        "cloudwatch.enabled": "true",
        "cloudwatch.log_group_name": GROUP,
        "cloudwatch.send_interval": 0.2,
        "cloudwatch.metrics_interval": 1,
        **extra,
    }


# -- units ----------------------------------------------------------------------------------


def test_streams_are_named_by_utc_day_and_thing():
    t = datetime(2026, 3, 9, 23, 59, 59, tzinfo=UTC).timestamp()
    assert stream_name(t, "cam1", delineate=True) == "2026/03/09/cam1"
    assert stream_name(t + 1, "cam1", delineate=True) == "2026/03/10/cam1"
    assert stream_name(t, "cam1", delineate=False) == "2026/03/09"
    assert stream_name(t, None, delineate=True) == "2026/03/09"


def test_emf_record_declares_every_value_it_carries():
    values = {"MotionEvents": 2.0, "UploadBytes": 1e6, "CpuPercent": 1.5}
    record = emf_record("Pits/Device", {"ThingName": "cam1"}, values, 1700000000000)
    (directive,) = record["_aws"]["CloudWatchMetrics"]
    assert record["_aws"]["Timestamp"] == 1700000000000
    assert directive == {
        "Namespace": "Pits/Device",
        "Dimensions": [["ThingName"]],
        "Metrics": [
            {"Name": "MotionEvents", "Unit": "Count"},
            {"Name": "UploadBytes", "Unit": "Bytes"},
            {"Name": "CpuPercent", "Unit": "Percent"},
        ],
    }
    assert record["ThingName"] == "cam1" and record["UploadBytes"] == 1e6


def test_counters_report_their_gain_and_survive_a_reset():
    sampler = Sampler()
    assert sampler.values({"ClipsUploaded": 3, "UploadQueueDepth": 5}) == {
        "ClipsUploaded": 3,
        "UploadQueueDepth": 5,
    }
    assert sampler.values({"ClipsUploaded": 7, "UploadQueueDepth": 2})["ClipsUploaded"] == 4
    # The uploader was rebuilt and counts from zero again: its new count is the gain.
    assert sampler.values({"ClipsUploaded": 1})["ClipsUploaded"] == 1


def test_secrets_never_survive_redaction():
    lines = [
        f"aws_secret_access_key = {SECRET}",
        f'{{"accessKeyId": "ASIAEXAMPLEKEYID0001", "secretAccessKey": "{SECRET}"}}',
        f"headers: {{'X-Amz-Security-Token': '{TOKEN}'}}",
        "Authorization: AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEKEYID0001/20261121/us-east-1/"
        "logs/aws4_request, SignedHeaders=host;x-amz-date, Signature=" + "ab12" * 16,
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg\n-----END EC PRIVATE KEY-----",
        f"sessionToken={TOKEN}",
    ]
    for line in lines:
        clean = redact(line)
        for secret in (SECRET, TOKEN, "ASIAEXAMPLEKEYID0001", "ab12" * 16, "MHcCAQEEIBkg"):
            assert secret not in clean, (line, clean)
        assert "[redacted]" in clean
    assert redact("sensitivity=10 resolution=640x480") == "sensitivity=10 resolution=640x480"


def test_names_cloudwatch_would_refuse_are_refused_at_the_edge():
    s = defaults()
    bad = {"cloudwatch.log_group_name": "my group!", "cloudwatch.metric_namespace": "AWS/EC2"}
    new, errors = merge(s, bad, "shadow")
    assert new.cloudwatch == s.cloudwatch  # the last good settings stay
    assert len(errors) == 2
    assert "cloudwatch.log_group_name = 'my group!'" in errors[0] and "A-Z a-z 0-9" in errors[0]
    assert "'AWS/EC2'" in errors[1] and "not start with AWS/" in errors[1]
    good = {"cloudwatch.log_group_name": "/pits/cam-1", "cloudwatch.metric_namespace": "Pits/Cams"}
    new, errors = merge(s, good, "shadow")
    assert not errors and new.cloudwatch.log_group_name == "/pits/cam-1"


# -- the handler on its own -------------------------------------------------------------------


def isolated_logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"pinthesky.test.{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def test_a_hundred_thousand_records_while_down_keep_the_newest_in_bounded_memory(monkeypatch):
    """CloudWatch down: memory stays bounded, the oldest records go first and are counted;
    once it is back the newest records arrive (the group and stream created on the way)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"

    def make_client() -> Any:
        return aws_client("logs", endpoint)

    handler = CloudWatchLogs(make_client, GROUP, "cam1", True, send_interval=0.1)
    logger = isolated_logger(handler)
    logger.error("first")  # sent at once: the client is made and the first send fails
    eventually(lambda: handler.failures, 30)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(100_000):
            logger.info("record %06d %s", i, "x" * 80)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    records, size = handler.buffered()
    assert records <= MAX_RECORDS and size <= MAX_BYTES
    assert handler.dropped == 100_001 - records  # with "first"
    # Kept, the 100,000 records would take 30 MB; bounded, the buffer and a batch in flight
    # (its request being built) take a few.
    assert grown < 10 * 1024 * 1024, f"{grown / 1e6:.1f} MB for a buffer of {size / 1e6:.1f} MB"

    with moto_server(port):
        assert eventually(lambda: handler.buffered()[0] == 0 and handler.sent, 60)
        handler.close()
        (messages,) = log_events(endpoint).values()
    numbers = [int(m.split()[3]) for m in messages]
    assert numbers == list(range(100_000 - records, 100_000))
    assert messages[0].startswith("INFO") and "first" not in messages[0]  # the newest, in order


def test_records_wait_for_the_interval_errors_go_at_once():
    with moto_server() as endpoint:
        handler = CloudWatchLogs(
            lambda: aws_client("logs", endpoint), GROUP, "cam1", True, send_interval=300
        )
        logger = isolated_logger(handler)
        logger.info("an info line waits for the batch")
        logger.error("an error goes at once")
        messages = eventually(lambda: log_events(endpoint).get(today_stream()), 30)
        assert messages == [
            f"INFO {logger.name}: an info line waits for the batch",
            f"ERROR {logger.name}: an error goes at once",
        ]
        handler.close()


# -- the daemon -------------------------------------------------------------------------------


def test_logs_and_emf_metrics_arrive_with_the_iot_credentials(tmp_path, logs_env, caplog):
    caplog.set_level(logging.INFO)
    pki = Pki(tmp_path / "certs")

    async def main(endpoint: str, provider: CredentialsProvider) -> None:
        settings = settings_for(
            tmp_path,
            **cloudwatch_flags(
                **{
                    "cloudwatch.event_type": "all",
                    "cloud_connection.credentials_endpoint": provider.endpoint,
                    "cloud_connection.role_alias": "pits-role",
                    "cloud_connection.cert_path": pki.cert_file,
                    "cloud_connection.key_path": pki.key_file,
                    "cloud_connection.cacert_path": pki.ca_file,
                }
            ),
        )
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.first_frame.wait(), 15)

        def arrived() -> bool:
            messages = log_events(endpoint).get(today_stream(), [])
            return len(emf_records(messages)) >= 2 and any(
                "first frame buffered" in m for m in messages
            )

        await asyncio.to_thread(eventually, arrived, 60)
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    with moto_server() as endpoint, CredentialsProvider(pki) as provider:
        distinctive_credentials(provider)
        logs_env(endpoint)
        asyncio.run(main(endpoint, provider))
        streams = log_events(endpoint)
    assert list(streams) == [today_stream()]
    messages = streams[today_stream()]
    lines = plain_lines(messages)
    assert any(line.startswith("INFO pinthesky.daemon.app: pinthesky started") for line in lines)
    assert lines[-1].startswith("INFO pinthesky.daemon.app: pinthesky stopped")  # sent at stop
    assert provider.requests and provider.requests[0]["thing"] == "cam1"
    records = emf_records(messages)
    for record in records:
        (directive,) = record["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "Pits/Device"
        assert directive["Dimensions"] == [["ThingName"]] and record["ThingName"] == "cam1"
        names = [m["Name"] for m in directive["Metrics"]]
        assert all(isinstance(record[n], int | float) for n in names)
        assert set(names) >= {m.name for m in METRICS} - {"UploadQueueDepth", "UploadQueueBytes"}
        assert record["MemoryResident"] > 10e6 and record["DiskFree"] > 0
    for secret in (SECRET, TOKEN, "ASIAEXAMPLEKEYID0001"):
        assert not any(secret in m for m in messages)


def test_the_shadow_switches_cloudwatch_live_without_touching_the_camera(
    tmp_path, logs_env, caplog
):
    caplog.set_level(logging.INFO)  # and back after the test: the shadow changes the level
    for name in THIRD_PARTY:  # as the command line has them
        caplog.set_level(logging.WARNING, logger=name)

    async def main(endpoint: str) -> None:
        settings = settings_for(
            tmp_path,
            **{
                "source.source": "synthetic",
                "cloud_connection.thing_name": "cam1",
                "cloudwatch.send_interval": 0.2,  # not in the shadow: the device's own
                "cloudwatch.metrics_interval": 1,
            },
        )
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.started.wait(), 15)
        camera = daemon.camera
        out = settings.events.configure_output
        section = {
            "enabled": True,
            "log_group_name": "group-one",
            "event_type": "logs",
            "log_level": "DEBUG",
        }
        write(out, documents({"cloudwatch": section}))
        await until(lambda: daemon.telemetry.handler is not None)
        assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
        logging.getLogger("pinthesky.test").debug("marker one")
        await asyncio.to_thread(
            eventually,
            lambda: (
                "DEBUG pinthesky.test: marker one"
                in log_events(endpoint, "group-one").get(today_stream(), [])
            ),
        )

        # Another group and metrics only: the next records go there, as EMF.
        first = daemon.telemetry.handler
        section.update(log_group_name="group-two", event_type="emf", log_level="INFO")
        write(out, documents({"cloudwatch": section}, version=3))
        await until(lambda: daemon.telemetry.handler not in (None, first))
        assert first is not None
        await until(lambda: not first._thread.is_alive())
        assert logging.getLogger().getEffectiveLevel() == logging.INFO
        logging.getLogger("pinthesky.test").warning("marker two")
        two = await asyncio.to_thread(
            eventually, lambda: log_events(endpoint, "group-two").get(today_stream()), 30
        )
        assert emf_records(two) and not plain_lines(two)

        # Off: the handler is closed and detached; nothing logged afterwards is sent.
        second = daemon.telemetry.handler
        section["enabled"] = False
        write(out, documents({"cloudwatch": section}, version=4))
        await until(lambda: daemon.telemetry.handler is None)
        assert second is not None
        await until(lambda: not second._thread.is_alive())
        assert not any(isinstance(h, CloudWatchLogs) for h in logging.getLogger().handlers)
        logging.getLogger("pinthesky.test").error("marker three")
        assert daemon.camera is camera and daemon.camera_restarts == 0
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    with moto_server() as endpoint:
        logs_env(endpoint, static_keys=True)
        asyncio.run(main(endpoint))
        one = log_events(endpoint, "group-one")[today_stream()]
        two = log_events(endpoint, "group-two")[today_stream()]
    assert not any("marker two" in m for m in one)
    assert not any("marker three" in m for m in one + two)


def test_a_hanging_cloudwatch_never_slows_recording(tmp_path, logs_env, caplog):
    """CloudWatch takes connections and never answers; a thread logs 100,000 records."""
    caplog.set_level(logging.INFO)

    async def main() -> None:
        settings = settings_for(tmp_path, **cloudwatch_flags(**{"cloudwatch.send_interval": 0.1}))
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.first_frame.wait(), 15)
        await until(lambda: daemon.telemetry.handler is not None)
        handler = daemon.telemetry.handler
        assert handler is not None and daemon.ring is not None
        logger = isolated_logger(handler)
        spam = threading.Thread(
            target=lambda: [logger.info("spam %d", i) for i in range(100_000)], daemon=True
        )
        ts0, analysed0 = daemon.ring.newest_ts(), daemon.stats.frames_analysed
        t0 = time.monotonic()
        spam.start()
        # Frames and analysis go on while the thread logs and the sender hangs.
        await until(lambda: not spam.is_alive(), 60)
        await until(lambda: (daemon.ring.newest_ts() or 0) - (ts0 or 0) >= 2_000_000)
        elapsed = time.monotonic() - t0
        analysed = daemon.stats.frames_analysed - analysed0
        assert analysed >= 0.5 * elapsed * settings.motion.analysis_fps
        records, size = handler.buffered()
        assert records <= MAX_RECORDS and size <= MAX_BYTES and handler.dropped > 80_000
        stopping = time.monotonic()
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        assert time.monotonic() - stopping < 5  # closing CloudWatch is bounded

    with black_hole() as endpoint:
        logs_env(endpoint, static_keys=True)
        asyncio.run(main())


def test_the_command_line_logs_to_stderr_and_cloudwatch_until_sigterm(tmp_path):
    """A real process at DEBUG: every line on stderr (journald) and in CloudWatch, the last
    ones sent after SIGTERM, and no secret anywhere."""
    with moto_server() as endpoint:
        env = {k: v for k, v in os.environ.items() if k not in OLD_ENV}
        env.update(
            PYTHONPATH=str(REPO),
            AWS_ENDPOINT_URL_CLOUDWATCH_LOGS=endpoint,
            AWS_ACCESS_KEY_ID="ASIAEXAMPLEKEYID0001",
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_SESSION_TOKEN=TOKEN,
        )
        args = [
            "--source",
            "synthetic",
            "--thing-name",
            "cam1",
            "--cloudwatch",
            "--cloudwatch-region",
            "us-east-1",
            "--cloudwatch-log-group",
            GROUP,
            "--cloudwatch-event-type",
            "all",
            "--cloudwatch-send-interval",
            "0.2",
            "--log-level",
            "DEBUG",
            "--combine-dir",
            str(tmp_path / "clips"),
            "--event-input",
            str(tmp_path / "in.json"),
            "--event-output",
            str(tmp_path / "out.json"),
            "--configure-input",
            str(tmp_path / "cin.json"),
            "--configure-output",
            str(tmp_path / "cout.json"),
        ]
        proc = subprocess.Popen(
            [sys.executable, "-m", "pinthesky", *args],
            env=env,
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            eventually(
                lambda: any(
                    "first frame buffered" in m
                    for m in log_events(endpoint).get(today_stream(), [])
                ),
                60,
            )
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=15)
        finally:
            proc.kill()
        assert proc.returncode == 0
        messages = log_events(endpoint)[today_stream()]
    assert any("pinthesky stopped" in m for m in plain_lines(messages))  # sent after SIGTERM
    for line in plain_lines(messages):
        assert line in stderr  # everything CloudWatch has, the local log has too
    for secret in (SECRET, TOKEN, "ASIAEXAMPLEKEYID0001"):
        assert secret not in stderr and not any(secret in m for m in messages)
