"""The named shadow through the sidecar's files: desired in, reported out, applied live."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from conftest import settings_for, until
from hypothesis import given, settings
from hypothesis import strategies as st

from pinthesky.control.shadow import SHADOW_KEYS, desired_changes, reported_document
from pinthesky.daemon.app import Daemon
from pinthesky.settings import defaults, merge


def documents(desired: dict[str, Any], version: int = 2) -> str:
    """What aws-iot-device-client writes on every /update/documents message."""
    state = {"state": {"desired": desired, "reported": {}}, "metadata": {}, "version": version}
    return json.dumps({"previous": state, "current": state, "timestamp": 1715700000.0})


def test_reported_document_keeps_the_console_working():
    doc = reported_document(defaults())
    assert set(doc) == {
        "camera",
        "cloud_connection",
        "health",
        "cloudwatch",
        "storage",
        "dataplane",
    }
    assert doc["camera"]["resolution"] == "640x480" and doc["camera"]["framerate"] == 20
    assert isinstance(doc["camera"]["recording_window"], str)  # the console splits it
    assert doc["cloudwatch"]["log_level"] == "INFO"  # a name, not 20


def test_console_strings_coerced_bad_values_named_protected_keys_refused():
    s = defaults()
    desired = {
        "camera": {
            "sensitivity": "25",
            "framerate": "20",
            "rotation": "45",
            "resolution": "640x480",
            "bogus": 1,
        },
        "storage": {"bucket_name": "attacker-bucket"},
        "cloud_connection": {"credentials_endpoint": "evil.example"},
        "health": {"interval": "600"},
    }
    changes, refused = desired_changes(s, desired, allow_identity=False)
    assert changes == {
        "camera.sensitivity": "25",
        "camera.rotation": "45",
        "health.interval": "600",
    }  # framerate "20" is the echo of 20
    assert len(refused) == 2 and all("--shadow-allow-identity" in r for r in refused)
    new, errors = merge(s, changes, "shadow")
    assert new.camera.sensitivity == 25 and new.health.interval == 600
    assert new.camera.rotation == 0  # kept: the bad value is left out, the rest applies
    (line,) = errors
    assert "camera.rotation" in line and "'45'" in line and "0, 90, 180, 270" in line


def test_auto_bitrate_is_reported_as_its_number_and_stays_auto_through_echoes():
    s = defaults()
    auto_640 = s.camera.bitrate
    doc = reported_document(s)
    assert doc["camera"]["encoding_bitrate"] == auto_640  # a real number for the console
    # The console writes back what it read, with a new resolution: the echo of the number is
    # no change, so the bitrate stays auto and follows the new size.
    echo = {"camera": {**doc["camera"], "resolution": "1280x720"}}
    changes, refused = desired_changes(s, echo, allow_identity=False)
    assert changes == {"camera.resolution": "1280x720"} and not refused
    s720, errors = merge(s, changes, "shadow")
    assert not errors and s720.camera.encoding_bitrate is None
    assert reported_document(s720)["camera"]["encoding_bitrate"] == s720.camera.bitrate
    assert s720.camera.bitrate > auto_640
    # A number set by the console is kept exactly, and reported as set; "auto" goes back.
    changes, _ = desired_changes(s720, {"camera": {"encoding_bitrate": "5000000"}}, False)
    fixed, errors = merge(s720, changes, "shadow")
    assert not errors and fixed.camera.encoding_bitrate == fixed.camera.bitrate == 5_000_000
    assert reported_document(fixed)["camera"]["encoding_bitrate"] == 5_000_000
    changes, _ = desired_changes(fixed, {"camera": {"encoding_bitrate": "auto"}}, False)
    back, errors = merge(fixed, changes, "shadow")
    assert not errors and back.camera.encoding_bitrate is None
    assert back.camera.bitrate == s720.camera.bitrate


async def running(tmp: Path, **flags: Any) -> tuple[Daemon, asyncio.Task[int]]:
    daemon = Daemon(settings_for(tmp, **{"source.source": "synthetic", **flags}))
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(daemon.started.wait(), 15)
    return daemon, task


def write(path: Path, text: str) -> None:
    with path.open("w") as fh:  # truncate + write, as the sidecar does
        fh.write(text)


async def until_reported(daemon: Daemon, count: int) -> dict[str, Any]:
    assert daemon.control is not None
    sync = daemon.control.shadow
    await until(lambda: sync.reports >= count)
    return json.loads(sync.input.read_text())


def test_sensitivity_applies_live_and_resolution_restarts_the_camera(tmp_path):
    async def main() -> None:
        daemon, task = await running(tmp_path)
        camera = daemon.camera
        assert daemon.control is not None
        reported = await until_reported(daemon, 1)  # the start-up report (shadow empty)
        assert reported["camera"]["sensitivity"] == 10
        out = daemon.settings.events.configure_output
        write(out, documents({"camera": {"sensitivity": "25"}}))
        reported = await until_reported(daemon, 2)
        assert reported["camera"]["sensitivity"] == 25
        assert daemon.camera is camera  # no restart for a sensitivity change
        assert daemon._tracker.sensitivity == 25
        # An echo of what is applied changes nothing and restarts nothing.
        write(out, documents({"camera": {"sensitivity": 25}}, version=3))
        write(out, documents({"camera": {"resolution": "320x240", "sensitivity": 25}}, 4))
        reported = await until_reported(daemon, 3)
        assert reported["camera"]["resolution"] == "320x240"
        assert daemon.camera is not camera and daemon.info is not None
        assert (daemon.info.width, daemon.info.height) == (320, 240)
        assert daemon.control.shadow.reports == 3
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(main())


def test_last_desired_state_applies_at_start(tmp_path):
    out = tmp_path / "configuration" / "output.json"
    out.parent.mkdir(parents=True)
    out.write_text(documents({"camera": {"sensitivity": 40, "recording_window": "22-6"}}))

    async def main() -> None:
        daemon, task = await running(tmp_path)
        reported = await until_reported(daemon, 1)
        assert reported["camera"]["sensitivity"] == 40
        assert reported["camera"]["recording_window"] == "22-6"
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(main())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=16,
)
SECTION_KEYS = st.sampled_from(
    ["camera", "storage", "cloudwatch", "health", "dataplane", "cloud_connection", "other"]
)
FIELDS = st.sampled_from(sorted({k for keys in SHADOW_KEYS.values() for k in keys} | {"x"}))
DESIRED = (
    st.dictionaries(SECTION_KEYS, st.dictionaries(FIELDS, JSON, max_size=5) | JSON, max_size=6)
    | JSON
)


# 3,000 documents: 10,000 took close to pytest-timeout's 300 s on a loaded 2-core machine.
@settings(max_examples=3_000, deadline=None)
@given(DESIRED)
def test_any_desired_document_applies_what_is_valid_and_never_raises(desired: Any) -> None:
    s = defaults()
    changes, refused = desired_changes(s, desired, allow_identity=False)
    new, errors = merge(s, changes, "shadow")
    assert all("\n" not in line for line in refused + errors)
    assert new.cloud_connection == s.cloud_connection  # never from the cloud by default
    assert new.storage.bucket_name == s.storage.bucket_name
    doc = reported_document(new)  # whatever was applied can be reported
    assert isinstance(doc["camera"]["resolution"], str)
    json.dumps(doc)


def test_hostile_shadow_files_leave_the_last_good_settings(tmp_path, caplog):
    attacks = [
        '{"current": {"state": {"desired": {"camera": {"sensitivity": NaN}}}}}',
        "[" * 100_000 + "]" * 100_000,
        '"just a string"',
        documents({"camera": "not an object", "health": {"interval": 10**30}}),
        "x" * (10 * 1024 * 1024),
    ]

    async def main() -> None:
        daemon, task = await running(tmp_path)
        await until_reported(daemon, 1)
        assert daemon.control is not None
        before = daemon.settings
        out = daemon.settings.events.configure_output
        sync = daemon.control.shadow
        for text in attacks:
            reads = sync.reads
            write(out, text)
            await until(lambda reads=reads: sync.reads > reads)  # each one really read
        # The sidecar rewrites the file for every message: only the latest counts. A valid
        # change after the attacks still applies, next to refused identity keys.
        write(
            out,
            documents(
                {
                    "camera": {"sensitivity": 33},
                    "cloud_connection": {"key_path": "/etc/shadow"},
                    "storage": {"bucket_name": "attacker"},
                },
                version=9,
            ),
        )
        reported = await until_reported(daemon, 2)
        assert reported["camera"]["sensitivity"] == 33
        assert daemon.settings.cloud_connection == before.cloud_connection
        assert daemon.settings.storage == before.storage
        assert daemon.ring is not None and daemon.ring.newest_ts() is not None
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0

    asyncio.run(main())
    assert "can only be changed on the device" in caplog.text
