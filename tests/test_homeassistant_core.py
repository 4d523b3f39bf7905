"""The camera in a real Home Assistant Core: the newest release that runs on Python 3.11
(2024.3.3, in its own virtualenv under ``.cache/homeassistant``, built by ``make -C tests
homeassistant``), its MQTT integration set up through its own config flow against Debian's
mosquitto with a password file, and everything checked through its REST API as a user of
Home Assistant would see it: the entities of one device, their states following the camera,
the pictures through Home Assistant's image proxy, the switch, number and buttons acting on
the camera, and every entity unavailable after ``kill -9``.

Home Assistant starts with ``--skip-pip`` (what its integrations need is installed with it) on
127.0.0.1 only; onboarding and the MQTT set-up go through the same REST calls its own
frontend makes.

The same virtualenv holds paho-mqtt 1.6.1 (Home Assistant 2024.3 pins it), the version
Raspberry Pi OS 12 ships: the camera's MQTT connection runs on it too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, eventually
from mqtt import HomeBroker
from servers import free_port
from test_homeassistant import JPEG, Camera

VENV = REPO / ".cache" / "homeassistant"
PYTHON = VENV / "bin" / "python"
ENTITIES = {
    "binary_sensor.garden_motion",
    "image.garden_motion_picture",
    "image.garden_still",
    "switch.garden_armed",
    "number.garden_sensitivity",
    "button.garden_record",
    "button.garden_take_still",
    "sensor.garden_upload_queue",
    "sensor.garden_free_disk",
    "sensor.garden_last_clip",
    "sensor.garden_cpu_temperature",
}


class HomeAssistant:
    """Home Assistant Core on 127.0.0.1, its configuration in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        (directory / "configuration.yaml").write_text(
            "homeassistant:\n  name: test\n  unit_system: metric\n  time_zone: UTC\n"
            "  latitude: 0\n  longitude: 0\n  elevation: 0\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\n"
            "api:\nconfig:\nonboarding:\n"
            "logger:\n  default: warning\n  logs:\n    homeassistant.components.mqtt: debug\n"
        )
        self.log_file = directory / "ha.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL"))}
        with self.log_file.open("w") as log:
            self.proc = subprocess.Popen(
                [str(PYTHON), "-m", "homeassistant", "-c", str(directory), "--skip-pip"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.token: str | None = None
        eventually(self._up, 180, "Home Assistant's HTTP server")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.log()[-3000:]
        try:
            self.call("/api/onboarding")
        except (urllib.error.URLError, ConnectionError):
            return False
        return True

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def call(self, path: str, body: Any = None, form: bool = False, raw: bool = False) -> Any:
        headers = {}
        data = None
        if body is not None:
            if form:
                data = urllib.parse.urlencode(body).encode()
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = response.read()
        return answer if raw else json.loads(answer or b"null")

    def onboard(self) -> None:
        """The owner's account (as the first page of a new Home Assistant makes it), a token."""
        client = f"{self.base}/"
        code = self.call(
            "/api/onboarding/users",
            {"client_id": client, "name": "Owner", "username": "owner",
             "password": "owner-secret", "language": "en"},
        )["auth_code"]  # fmt: skip
        self.token = self.call(
            "/auth/token",
            {"grant_type": "authorization_code", "code": code, "client_id": client},
            form=True,
        )["access_token"]

    def add_mqtt(self, broker: HomeBroker) -> None:
        """Settings > Devices & services > Add integration > MQTT, with the broker's login."""
        flow = self.call("/api/config/config_entries/flow", {"handler": "mqtt"})
        assert flow["step_id"] == "broker", flow
        done = self.call(
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"broker": "127.0.0.1", "port": broker.port, "username": "homeassistant",
             "password": HomeBroker.USERS["homeassistant"]},
        )  # fmt: skip
        assert done["type"] == "create_entry" and done["result"]["state"] == "loaded", done

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.call("/api/states")}

    def state(self, entity: str) -> str:
        return str(self.states()[entity]["state"])

    def wait_state(self, entity: str, wanted: Any, timeout: float = 30) -> dict[str, Any]:
        test = wanted if callable(wanted) else (lambda v: v == wanted)

        def check() -> dict[str, Any] | None:
            found = self.states().get(entity)
            return found if found is not None and test(found["state"]) else None

        result: dict[str, Any] = eventually(check, timeout, f"{entity} {wanted}")
        return result

    def service(self, domain: str, name: str, **data: Any) -> None:
        self.call(f"/api/services/{domain}/{name}", data)

    def picture(self, entity: str) -> bytes:
        data: bytes = self.call(f"/api/image_proxy/{entity}", raw=True)
        return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="module")
def home_assistant_env() -> Path:
    """Home Assistant's virtualenv (``make test`` builds it first; this makes sure)."""
    subprocess.run(["make", "-s", "-C", str(REPO / "tests"), "homeassistant"], check=True)
    assert PYTHON.exists()
    return PYTHON


@pytest.fixture
def home_assistant(tmp_path: Path, home_assistant_env: Path) -> Iterator[HomeAssistant]:
    ha = HomeAssistant(tmp_path / "homeassistant")
    try:
        yield ha
    finally:
        ha.stop()


def test_home_assistant_core_shows_the_camera_and_drives_it(
    tmp_path: Path, home_assistant: HomeAssistant
) -> None:
    ha = home_assistant
    with HomeBroker(tmp_path / "broker") as broker:
        ha.onboard()
        ha.add_mqtt(broker)
        camera = Camera(tmp_path, broker)
        try:
            eventually(lambda: set(ha.states()) >= ENTITIES, 60, "the camera's entities")
            states = ha.states()
            # One device: every entity's name starts with the device's.
            names = {states[e]["attributes"]["friendly_name"] for e in ENTITIES}
            assert all(n.startswith("garden ") for n in names), names
            assert states["binary_sensor.garden_motion"]["attributes"]["device_class"] == "motion"
            ha.wait_state("switch.garden_armed", "on")
            ha.wait_state(
                "number.garden_sensitivity", lambda v: v != "unavailable" and float(v) == 10
            )
            ha.wait_state("sensor.garden_upload_queue", "0")
            disk = ha.wait_state("sensor.garden_free_disk", lambda v: _number(v) > 0)
            assert disk["attributes"]["unit_of_measurement"] == "GB"
            # This machine's kernel has no thermal zone: unknown, as Home Assistant says it.
            temperature = ha.state("sensor.garden_cpu_temperature")
            assert temperature == "unknown" or 0 < _number(temperature) < 120

            # The object crosses: motion on, the picture, motion off, the clip.
            ha.wait_state("binary_sensor.garden_motion", "on", timeout=40)
            ha.wait_state("image.garden_motion_picture", lambda v: v not in ("unknown", ""))
            assert ha.picture("image.garden_motion_picture").startswith(JPEG)
            ha.wait_state("binary_sensor.garden_motion", "off", timeout=20)
            last = ha.wait_state("sensor.garden_last_clip", lambda v: v not in ("unknown", ""))
            assert last["attributes"]["trigger"] == "motion"
            assert (camera.dir / "motion_videos" / last["attributes"]["clip"]).exists()

            # The user turns the switch off and types a sensitivity: the camera takes them.
            ha.service("switch", "turn_off", entity_id="switch.garden_armed")
            ha.service("number", "set_value", entity_id="number.garden_sensitivity", value=25)
            ha.wait_state("switch.garden_armed", "off")
            ha.wait_state("number.garden_sensitivity", lambda v: float(v) == 25)
            eventually(
                lambda: (
                    camera.local_settings().get("camera") == {"armed": False, "sensitivity": 25}
                ),
                10,
                "the camera's local settings",
            )
            # The buttons: a manual clip, a still that shows in Home Assistant.
            ha.service("button", "press", entity_id="button.garden_record")
            camera.wait_log("recording manual clip")
            ha.service("button", "press", entity_id="button.garden_take_still")
            ha.wait_state("image.garden_still", lambda v: v not in ("unknown", ""))
            still = ha.picture("image.garden_still")
            assert still.startswith(JPEG)
            assert still in [p.read_bytes() for p in (camera.dir / "capture_images").iterdir()]

            # kill -9: the broker's last will, and Home Assistant marks everything unavailable.
            camera.kill()
            eventually(
                lambda: all(ha.states()[e]["state"] == "unavailable" for e in ENTITIES),
                30,
                "every entity unavailable",
            )
            # Home Assistant took every payload without a complaint (checked while the broker
            # still runs: its stop is a warning of Home Assistant's own).
            problems = [
                line
                for line in ha.log().splitlines()
                if ("ERROR" in line or "WARNING" in line) and ("mqtt" in line or "garden" in line)
            ]
            assert not problems, "\n".join(problems)
        finally:
            if camera.proc.poll() is None:
                camera.kill()


def _number(state: str) -> float:
    try:
        return float(state)
    except ValueError:
        return float("nan")


PAHO_16 = """
import asyncio, json, logging, sys
sys.path.insert(0, sys.argv[1])
import paho.mqtt
from pinthesky.homeassistant.client import Broker, BrokerClient

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")


async def main(port: int, password: str) -> None:
    connected = asyncio.Event()
    got: asyncio.Queue = asyncio.Queue()
    broker = Broker("127.0.0.1", port, "paho16", "paho16/availability", "camera", password,
                    max_reconnect_s=2)
    client = BrokerClient(broker, connected.set, got.put_nowait)
    client.start()
    result = {"version": paho.mqtt.__version__, "connected": False}
    try:
        await asyncio.wait_for(connected.wait(), 8)
    except TimeoutError:
        pass
    else:
        result["connected"] = True
        client.publish("paho16/state", b"hello")
        client.subscribe(["paho16/state"])
        batch = await asyncio.wait_for(got.get(), 10)
        result["received"] = {k: v.decode() for k, v in batch.items()}
    await client.stop()
    print(json.dumps(result))


asyncio.run(main(int(sys.argv[2]), sys.argv[3]))
"""


@pytest.mark.parametrize("right", [True, False], ids=["password", "wrong-password"])
def test_the_connection_speaks_paho_1_6_as_raspberry_pi_os_ships_it(
    tmp_path: Path, home_assistant_env: Path, right: bool
) -> None:
    """Raspberry Pi OS 12's python3-paho-mqtt is 1.6.1, and so is Home Assistant 2024.3's: the
    camera's MQTT connection, run on that virtualenv's paho."""
    from mqtt import HomePeer

    with HomeBroker(tmp_path / "broker") as broker:
        ha = HomePeer(broker)
        ha.subscribe("paho16/#")
        password = HomeBroker.USERS["camera"] if right else "not-it"
        done = subprocess.run(
            [str(home_assistant_env), "-c", PAHO_16, str(REPO), str(broker.port), password],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["version"] == "1.6.1"
        if right:
            assert result["connected"] is True
            assert result["received"] == {"paho16/state": "hello"}
            assert ha.wait_value("paho16/availability", b"offline")  # said at stop
            assert "INFO mqtt: connected to 127.0.0.1" in done.stderr
        else:
            assert result["connected"] is False
            assert broker.log().count("not authorised") >= 2  # refused again and again
            refused = [line for line in done.stderr.splitlines() if "refused" in line]
            assert refused == [
                f"ERROR mqtt: the broker 127.0.0.1:{broker.port} refused the login: Connection "
                "Refused: not authorised. (check mqtt.username and the password); retrying "
                "(at most every 2 s)"
            ]
        ha.close()
