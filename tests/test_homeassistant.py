"""Home Assistant through MQTT discovery, against Debian's mosquitto as a home network runs it
(users in a password file; once with TLS), with the daemon as a subprocess on the synthetic
scene, where an object crosses from 10 to 14 s of every 30 s, and a client that does on the
wire what Home Assistant's MQTT integration does (``tests/test_homeassistant_core.py`` runs
the real one).

The camera here is named ``garden`` (its thing name), so its topics are under
``pinthesky/garden`` and its discovery configurations under ``homeassistant/*/garden/``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import OLD_ENV, REPO, eventually
from mqtt import HomeBroker, HomePeer
from servers import Pki

from pinthesky.control.health import cpu_temperature
from pinthesky.homeassistant.bridge import read_password
from pinthesky.homeassistant.discovery import Topics, configs, node_id
from pinthesky.settings import defaults, load

T = Topics("pinthesky/garden", "homeassistant", "garden")
ENTITIES = {
    ("binary_sensor", "motion"),
    ("image", "motion_picture"),
    ("image", "still"),
    ("switch", "armed"),
    ("number", "sensitivity"),
    ("button", "record"),
    ("button", "take_still"),
    ("sensor", "upload_queue"),
    ("sensor", "disk_free"),
    ("sensor", "last_clip"),
    ("sensor", "cpu_temperature"),
}
JPEG = b"\xff\xd8"


class Camera:
    """``pinthesky`` on the synthetic scene with its MQTT settings in a TOML file, its log in
    a file (read while it runs)."""

    def __init__(
        self,
        tmp: Path,
        broker: HomeBroker,
        name: str = "garden",
        password: str | None = HomeBroker.USERS["camera"],
        flags: tuple[str, ...] = (),
        **mqtt: Any,
    ) -> None:
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        section = {"username": "camera", **mqtt}
        if password is not None and "password_file" not in mqtt:
            section["password"] = password
        lines = ["[cloud_connection]", f'thing_name = "{name}"', "", "[mqtt]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in section.items()]
        self.config = self.dir / "camera.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.log_file = self.dir / "daemon.log"
        env = {k: v for k, v in os.environ.items() if k not in OLD_ENV and k != "JOURNAL_STREAM"}
        env["PYTHONPATH"] = str(REPO)
        args = [
            sys.executable, "-m", "pinthesky", "--config", str(self.config),
            "--source", "synthetic", "--pre-roll", "1", "--post-roll", "2",
            "--mqtt-host", "127.0.0.1", "--mqtt-port", str(broker.port), *flags,
        ]  # fmt: skip
        with self.log_file.open("w") as log:
            self.proc = subprocess.Popen(args, cwd=self.dir, env=env, stderr=log)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.log().splitlines() if needle in line]

    def wait_log(self, needle: str, timeout: float = 60, count: int = 1) -> list[str]:
        def seen() -> list[str] | None:
            assert self.proc.poll() is None, f"the daemon ended:\n{self.log()}"
            found = self.lines(needle)
            return found if len(found) >= count else None

        result: list[str] = eventually(seen, timeout, what=f"{needle!r} in the daemon's log")
        return result

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(20)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def local_settings(self) -> dict[str, Any]:
        path = self.dir / "local-settings.toml"
        return tomllib.loads(path.read_text()) if path.exists() else {}

    def reported(self) -> dict[str, Any]:
        text = (self.dir / "config-input.json").read_text()
        return json.loads(text) if text.strip() else {}


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with HomeBroker(tmp_path / "broker") as running:
        yield running


def listen(broker: HomeBroker, name: str = "homeassistant", **kwargs: Any) -> HomePeer:
    peer = HomePeer(broker, name, **kwargs)
    peer.subscribe("homeassistant/#")
    peer.subscribe("pinthesky/garden/#")
    return peer


def discovery(peer: HomePeer, retained: bool = True) -> dict[tuple[str, str], dict[str, Any]]:
    """The discovery configurations the peer holds (retained ones only, by default)."""
    held = peer.retained if retained else peer.latest
    found = {}
    for topic, payload in list(held.items()):
        parts = topic.split("/")
        if len(parts) == 5 and parts[0] == "homeassistant" and parts[-1] == "config":
            assert parts[2] == "garden", topic
            found[(parts[1], parts[3])] = json.loads(payload)
    return found


def test_home_assistant_sees_the_camera_and_drives_it(tmp_path: Path, broker: HomeBroker) -> None:
    ha = listen(broker)
    camera = Camera(tmp_path, broker)
    try:
        ha.wait_value(T.availability, b"online")
        # A Home Assistant that starts later finds everything retained on the broker.
        late = listen(broker, "homeassistant-late")
        states = {T.availability, T.armed, T.sensitivity, T.motion}
        eventually(
            lambda: len(discovery(late)) == len(ENTITIES) and states <= set(late.retained),
            10,
            "retained configs and states",
        )
        found = discovery(late)
        assert set(found) == ENTITIES
        assert late.retained[T.availability] == b"online"
        assert late.retained[T.armed] == b"ON" and late.retained[T.sensitivity] == b"10"
        devices = {json.dumps(c["device"], sort_keys=True) for c in found.values()}
        assert len(devices) == 1  # one device with every entity
        device = found[("switch", "armed")]["device"]
        assert device["identifiers"] == ["pinthesky_garden"] and device["name"] == "garden"
        assert len({c["unique_id"] for c in found.values()}) == len(ENTITIES)
        for config in found.values():
            assert config["availability_topic"] == T.availability
            for key, value in config.items():
                if key.endswith("_topic"):
                    assert value.startswith("pinthesky/garden/"), (key, value)
        late.close()

        # The first crossing (10-14 s): the sensor turns ON, the motion picture comes, OFF.
        ha.wait_value(T.motion, b"ON", timeout=40)
        picture = ha.wait_value(T.motion_picture, lambda v: v.startswith(JPEG), timeout=15)
        assert len(picture) > 2000
        ha.wait_value(T.motion, b"OFF", timeout=20)
        clip = json.loads(ha.wait_value(T.last_clip, lambda v: b'"motion"' in v))
        assert clip["trigger"] == "motion" and clip["clip"].endswith(".motion.mp4")
        assert (camera.dir / "motion_videos" / clip["clip"]).exists()

        # The number and the switch act on the daemon, are kept like the page's changes and
        # reported to the shadow.
        ha.publish(T.set_sensitivity, b"25")
        ha.wait_value(T.sensitivity, b"25")
        ha.publish(T.set_armed, b"OFF")
        ha.wait_value(T.armed, b"OFF")
        eventually(
            lambda: camera.local_settings().get("camera") == {"sensitivity": 25, "armed": False},
            10,
            "the local settings file",
        )
        assert camera.reported()["camera"]["sensitivity"] == 25
        assert camera.reported()["camera"]["armed"] is False
        assert camera.lines("home assistant: applied camera.sensitivity=25")
        clips_before = camera.lines("recording motion clip")

        # Disarmed, a manual record still works; the next crossing (40-44 s) still turns the
        # sensor on and off, but makes no motion clip and no motion picture.
        ha.publish(T.press_record, b"PRESS")
        camera.wait_log("recording manual clip")
        ha.publish(T.press_still, b"PRESS")
        still = ha.wait_value(T.still_picture, lambda v: v.startswith(JPEG))
        assert still in [p.read_bytes() for p in (camera.dir / "capture_images").iterdir()]
        pictures = ha.count(T.motion_picture)
        ha.wait_value(T.motion, b"ON", timeout=40)
        ha.wait_value(T.motion, b"OFF", timeout=20)
        assert camera.lines("recording motion clip") == clips_before
        assert ha.count(T.motion_picture) == pictures

        # kill -9: the broker says offline for the camera (its last will).
        camera.kill()
        ha.wait_value(T.availability, b"offline", timeout=10)
        assert "Traceback" not in camera.log()
    finally:
        if camera.proc.poll() is None:
            camera.kill()
        ha.close()


def test_tls_a_wrong_password_and_an_untrusted_broker(tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    with HomeBroker(tmp_path / "broker", pki) as broker:
        ha = listen(broker, ca_file=pki.ca_file)
        good = Camera(tmp_path, broker, tls=True, ca_file=str(pki.ca_file))
        wrong = Camera(tmp_path, broker, "shed", password="not-it", tls=True,
                       ca_file=str(pki.ca_file))  # fmt: skip
        untrusted = Camera(tmp_path, broker, "gate", tls=True)  # the system's CAs
        try:
            ha.wait_value(T.availability, b"online", timeout=40)
            eventually(lambda: len(discovery(ha, retained=False)) == len(ENTITIES), 10)
            good.wait_log("connected to 127.0.0.1")
            # The wrong password: the broker refuses it again and again, the log says it once.
            eventually(
                lambda: broker.log().count("not authorised") >= 3, 40, "three refused logins"
            )
            refused = wrong.lines("refused the login")
            assert len(refused) == 1, refused
            assert "check mqtt.username and the password" in refused[0]
            failed = untrusted.wait_log("cannot reach the broker")
            assert len(failed) == 1 and "certificate verify failed" in failed[0]
            # None of them stops recording.
            for camera in (good, wrong, untrusted):
                camera.wait_log("trigger motion", timeout=40)
            assert wrong.proc.poll() is None and untrusted.proc.poll() is None
        finally:
            for camera in (good, wrong, untrusted):
                camera.stop()
            ha.close()
        assert good.proc.returncode == 0
        for camera in (good, wrong, untrusted):
            assert "Traceback" not in camera.log()


def test_a_broker_that_hangs_then_goes_away_costs_the_camera_nothing(
    tmp_path: Path, broker: HomeBroker
) -> None:
    ha = listen(broker)
    camera = Camera(tmp_path, broker, flags=("--log-level", "DEBUG"))
    try:
        ha.wait_value(T.availability, b"online")
        ha.close()
        # The broker hangs (reads nothing, answers nothing) while the object crosses: the
        # motion clip is recorded as ever.
        broker.pause()
        ready = camera.wait_log("trigger motion", timeout=40)
        assert "ready: 7.0 s" in ready[0]  # 1 s pre-roll, 4 s crossing, 2 s post-roll
        # Then it goes away while the camera keeps trying: several attempts, one line.
        broker.stop()
        camera.wait_log("mqtt: connection to 127.0.0.1", timeout=60)
        camera.wait_log("mqtt: cannot reach the broker", count=4, timeout=60)
        said = [line for line in camera.lines("cannot reach the broker") if " ERROR " in line]
        assert len(said) == 1 and "ConnectionRefusedError" in said[0], said
        assert len(camera.lines("mqtt: connection to 127.0.0.1")) == 1
        # Back: the camera reconnects and publishes everything again, the picture and the
        # clip made while the broker was gone included (this broker kept nothing).
        broker.start()
        camera.wait_log("mqtt: connected to", count=2, timeout=90)
        back = listen(broker, "homeassistant-back")
        eventually(lambda: len(discovery(back)) == len(ENTITIES), 15, "configs again")
        back.wait_value(T.availability, b"online")
        assert back.wait_value(T.motion_picture, lambda v: v.startswith(JPEG))
        clip = json.loads(back.wait_value(T.last_clip, lambda v: b"motion" in v))
        assert (camera.dir / "motion_videos" / clip["clip"]).exists()
        back.close()
    finally:
        assert camera.stop() == 0
    assert "Traceback" not in camera.log()


def test_a_flood_and_commands_of_the_wrong_type_are_a_line_each(
    tmp_path: Path, broker: HomeBroker
) -> None:
    ha = listen(broker)
    camera = Camera(tmp_path, broker)
    try:
        ha.wait_value(T.availability, b"online")
        wrong = [
            (T.set_armed, b"MAYBE", "camera.armed = 'MAYBE': must be true or false"),
            (T.set_sensitivity, b"abc", "camera.sensitivity = 'abc': must be a whole number"),
            (T.set_sensitivity, b"0", "camera.sensitivity = '0': must be a whole number"),
            (T.set_sensitivity, b"2.5", "camera.sensitivity = '2.5': must be a whole number"),
            (T.press_record, b"NOW", "'NOW' is not PRESS"),
            (T.press_still, b"x" * 1000, "1000 bytes, more than 64"),
            (T.set_sensitivity, b"\xff\xfe", "not UTF-8 text"),
        ]
        for topic, payload, line in wrong:
            ha.publish(topic, payload)
            found = camera.wait_log(line, timeout=10)
            assert len(found) == 1, found
        assert camera.proc.poll() is None
        assert ha.value(T.armed) == b"ON" and ha.value(T.sensitivity) == b"10"

        # A flood: thousands of commands as fast as the broker takes them. The newest value
        # wins, every press is one clip, and the log stays short.
        before = len(camera.log().splitlines())
        for n in range(2000):
            ha.client.publish(T.set_sensitivity, str(11 + n).encode(), qos=0)
            if n % 4 == 0:
                ha.client.publish(T.press_record, b"PRESS", qos=0)
                ha.client.publish(T.set_armed, b"MAYBE", qos=0)
        ha.publish(T.set_sensitivity, b"9")
        ha.wait_value(T.sensitivity, b"9", timeout=30)
        eventually(lambda: camera.local_settings().get("camera", {}).get("sensitivity") == 9, 10)
        camera.wait_log("recording manual clip")
        camera.wait_log("camera.armed = 'MAYBE'", count=2)  # the newest of each topic is done
        assert len(camera.lines("recording manual clip")) == 1
        flood_lines = len(camera.log().splitlines()) - before
        assert flood_lines < 40, camera.log()
        # Meanwhile the object crossed: motion was recorded as ever (a manual clip holds it).
        ha.wait_value(T.motion, b"ON", timeout=40)
        assert camera.proc.poll() is None
    finally:
        assert camera.stop() == 0
        ha.close()
    assert "Traceback" not in camera.log()


def test_a_password_file_others_can_read_is_refused_and_the_camera_records_on(
    tmp_path: Path, broker: HomeBroker
) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text(HomeBroker.USERS["camera"] + "\n")
    secret.chmod(0o644)
    camera = Camera(tmp_path, broker, password=None, password_file=str(secret))
    try:
        line = camera.wait_log("cannot be used (others may read it")
        assert line[0].endswith(
            "cannot be used (others may read it: chmod o-r it); Home Assistant is off"
        )
        camera.wait_log("first frame buffered")
        assert camera.proc.poll() is None
    finally:
        assert camera.stop() == 0
    secret.chmod(0o600)
    assert read_password(secret) == "cam-secret"


def test_discovery_configurations_name_one_device_and_its_topics() -> None:
    s = load({"cloud_connection.thing_name": "Front Door", "http.port": "8080"}, environ={})
    found = configs(s, "Raspberry Pi Zero W Rev 1.1", "http://192.0.2.7:8080/")
    prefix = "homeassistant"
    assert set(found) == {f"{prefix}/{c}/front_door/{o}/config" for c, o in ENTITIES}
    motion = found[f"{prefix}/binary_sensor/front_door/motion/config"]
    assert motion["device_class"] == "motion"
    assert motion["state_topic"] == "pinthesky/front_door/motion"
    assert motion["device"]["configuration_url"] == "http://192.0.2.7:8080/"
    assert motion["device"]["model"] == "Raspberry Pi Zero W Rev 1.1"
    number = found[f"{prefix}/number/front_door/sensitivity/config"]
    assert (number["min"], number["max"], number["step"]) == (1, 100_000, 1)
    # Prefixes from the settings; a camera without a thing takes the host name.
    custom = load({"mqtt.topic_prefix": "cams/door", "mqtt.discovery_prefix": "ha"}, environ={})
    topics = Topics.of(custom)
    assert topics.prefix == "cams/door" and topics.status == "ha/status"
    assert all(t.startswith("ha/") for t in configs(custom, None, None))
    assert node_id("Garden Cam #2") == "garden_cam_2"
    assert Topics.of(defaults()).node == node_id(os.uname().nodename.split(".")[0])


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (["--mqtt-host", "mqtt://x"], "mqtt.host = 'mqtt://x': must be a host name"),
        (["--mqtt-port", "70000"], "mqtt.port = '70000': must be a whole number from 1 to"),
        (["--mqtt-password", "x"], "unrecognized arguments: --mqtt-password"),
    ],
)
def test_bad_mqtt_settings_are_one_line(tmp_path: Path, flags: list[str], line: str) -> None:
    from conftest import pinthesky

    done = pinthesky(*flags, "--validate-config", cwd=tmp_path)
    assert done.returncode == 2 and line in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_mqtt_settings_that_do_not_fit_together_are_one_line_each(tmp_path: Path) -> None:
    from conftest import pinthesky

    config = tmp_path / "c.toml"
    config.write_text(
        '[mqtt]\nhost = "broker.lan"\npassword = "x"\npassword_file = "/p"\nca_file = "/ca"\n'
        'topic_prefix = "cams/#"\n'
    )
    done = pinthesky("--config", str(config), "--validate-config", cwd=tmp_path)
    assert done.returncode == 2
    assert sorted(done.stderr.strip().splitlines()) == sorted(
        [
            "pinthesky: mqtt.topic_prefix = 'cams/#': must be 1 to 128 of A-Z a-z 0-9 _ . - and "
            "/ between levels (no wildcards)",
            "pinthesky: mqtt.password_file: set either mqtt.password or mqtt.password_file",
            "pinthesky: mqtt.username: must be set with a password (MQTT sends both or neither)",
            "pinthesky: mqtt.ca_file: is only used with mqtt.tls = true",
        ]
    )


def test_the_cpu_temperature_comes_from_the_cpu_thermal_zone(tmp_path: Path) -> None:
    for n, (kind, milli) in enumerate([("acpitz", "30000"), ("cpu-thermal", "48312")]):
        zone = tmp_path / f"thermal_zone{n}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(milli + "\n")
    assert cpu_temperature(tmp_path) == 48.3
    assert cpu_temperature(tmp_path / "none") is None


def test_a_failed_tls_handshake_leaves_no_socket_open(tmp_path: Path) -> None:
    """A broker behind a certificate the camera does not trust: each attempt fails its TLS
    handshake. paho drops that socket without closing it, so a camera retrying for hours would
    hold a file descriptor per attempt until a garbage collection. The camera's TLS sockets
    (``tls_context``, used by Home Assistant's connection and the sidecar) close themselves.
    With paho's own ``tls_set`` in its place this test finds the socket left open."""
    import contextlib
    import gc
    import socket
    import ssl
    import threading
    import warnings

    import trustme

    from pinthesky.mqttclient import mqtt, new_client, tls_context

    broker_ca, trusted_ca = trustme.CA(), trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    broker_ca.issue_cert("127.0.0.1").configure_cert(server)
    trusted = tmp_path / "trusted-ca.pem"
    trusted_ca.cert_pem.write_to_path(str(trusted))

    def attempt(port: int) -> str:
        client = new_client("camera", mqtt.MQTTv311)
        client.tls_set_context(tls_context(trusted))
        try:
            client.connect("127.0.0.1", port)
        except ssl.SSLError as exc:
            return type(exc).__name__
        return "connected"

    with socket.create_server(("127.0.0.1", 0)) as listener:

        def broker() -> None:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError):
                server.wrap_socket(conn, server_side=True).close()

        thread = threading.Thread(target=broker, daemon=True)
        thread.start()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            assert attempt(listener.getsockname()[1]) == "SSLCertVerificationError"
            gc.collect()
        thread.join(10)
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
