"""What the camera tells Home Assistant about itself: MQTT discovery configurations and topics.

The camera is one Home Assistant device; each entity is one retained configuration on
``<discovery_prefix>/<component>/<node>/<object>/config``, naming the device (so they group),
the availability topic (the connection's last will) and its own state and command topics under
``<topic_prefix>``:

=================  =============  ====================================  ========================
entity             component      state                                 command
=================  =============  ====================================  ========================
Motion             binary_sensor  ``motion``: ON / OFF                  -
Motion picture     image          ``motion/picture``: the JPEG          -
Still              image          ``still/picture``: the JPEG           -
Armed              switch         ``armed``: ON / OFF                   ``armed/set``
Sensitivity        number         ``sensitivity``: macroblocks          ``sensitivity/set``
Record             button         -                                     ``record/press``
Take still         button         -                                     ``still/press``
Upload queue       sensor         ``state``: JSON ``upload_queue``      -
Free disk          sensor         ``state``: JSON ``disk_free_gb``      -
Last clip          sensor         ``state``: JSON ``last_clip``         -
CPU temperature    sensor         ``state``: JSON ``cpu_temperature``   -
=================  =============  ====================================  ========================

Pure functions of the settings and a few facts about the camera: nothing here touches the
network.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any

from pinthesky import __version__
from pinthesky.settings import SENSITIVITY_RANGE, Settings

PRESS = "PRESS"
ON, OFF = "ON", "OFF"


def camera_name(s: Settings) -> str:
    """The camera's name: its AWS IoT thing's, else the machine's host name."""
    return s.cloud_connection.thing_name or socket.gethostname().split(".")[0] or "pinthesky"


def node_id(name: str) -> str:
    """``name`` as Home Assistant's discovery topics and unique ids take it."""
    return re.sub(r"[^a-z0-9_-]+", "_", name.lower()).strip("_") or "pinthesky"


@dataclass(frozen=True)
class Topics:
    """Every topic of one camera."""

    prefix: str
    discovery: str
    node: str

    @classmethod
    def of(cls, s: Settings) -> Topics:
        node = node_id(camera_name(s))
        prefix = s.mqtt.topic_prefix or f"pinthesky/{node}"
        return cls(prefix, s.mqtt.discovery_prefix, node)

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    @property
    def motion(self) -> str:
        return f"{self.prefix}/motion"

    @property
    def motion_picture(self) -> str:
        return f"{self.prefix}/motion/picture"

    @property
    def still_picture(self) -> str:
        return f"{self.prefix}/still/picture"

    @property
    def armed(self) -> str:
        return f"{self.prefix}/armed"

    @property
    def sensitivity(self) -> str:
        return f"{self.prefix}/sensitivity"

    @property
    def state(self) -> str:
        return f"{self.prefix}/state"

    @property
    def last_clip(self) -> str:
        return f"{self.prefix}/last_clip"

    @property
    def set_armed(self) -> str:
        return f"{self.prefix}/armed/set"

    @property
    def set_sensitivity(self) -> str:
        return f"{self.prefix}/sensitivity/set"

    @property
    def press_record(self) -> str:
        return f"{self.prefix}/record/press"

    @property
    def press_still(self) -> str:
        return f"{self.prefix}/still/press"

    @property
    def status(self) -> str:
        """Home Assistant's own birth and will: ``online`` when it (re)starts."""
        return f"{self.discovery}/status"

    def commands(self) -> list[str]:
        return [self.set_armed, self.set_sensitivity, self.press_record, self.press_still]

    def config(self, component: str, obj: str) -> str:
        return f"{self.discovery}/{component}/{self.node}/{obj}/config"


def _json_sensor(key: str, **extra: Any) -> dict[str, Any]:
    return {
        "value_template": f"{{{{ value_json.{key} }}}}",
        "entity_category": "diagnostic",
    } | extra


def configs(s: Settings, model: str | None, page_url: str | None) -> dict[str, dict[str, Any]]:
    """Discovery topic -> configuration, for every entity of the camera."""
    t = Topics.of(s)
    device: dict[str, Any] = {
        "identifiers": [f"pinthesky_{t.node}"],
        "name": camera_name(s),
        "manufacturer": "pinthesky",
        "model": model or "pinthesky camera",
        "sw_version": __version__,
    }
    if page_url:
        device["configuration_url"] = page_url
    common = {
        "device": device,
        "availability_topic": t.availability,
        "origin": {"name": "pinthesky", "sw_version": __version__},
    }
    low, high = SENSITIVITY_RANGE
    entities: list[tuple[str, str, dict[str, Any]]] = [
        (
            "binary_sensor",
            "motion",
            {"name": "Motion", "device_class": "motion", "state_topic": t.motion},
        ),
        (
            "image",
            "motion_picture",
            {
                "name": "Motion picture",
                "image_topic": t.motion_picture,
                "content_type": "image/jpeg",
            },
        ),
        (
            "image",
            "still",
            {"name": "Still", "image_topic": t.still_picture, "content_type": "image/jpeg"},
        ),
        (
            "switch",
            "armed",
            {
                "name": "Armed",
                "icon": "mdi:shield-home",
                "state_topic": t.armed,
                "command_topic": t.set_armed,
            },
        ),
        (
            "number",
            "sensitivity",
            {
                "name": "Sensitivity",
                "icon": "mdi:motion-sensor",
                "state_topic": t.sensitivity,
                "command_topic": t.set_sensitivity,
                "min": low,
                "max": high,
                "step": 1,
                "mode": "box",
                "unit_of_measurement": "macroblocks",
                "entity_category": "config",
            },
        ),
        (
            "button",
            "record",
            {
                "name": "Record",
                "icon": "mdi:record-rec",
                "command_topic": t.press_record,
                "payload_press": PRESS,
            },
        ),
        (
            "button",
            "take_still",
            {
                "name": "Take still",
                "icon": "mdi:camera",
                "command_topic": t.press_still,
                "payload_press": PRESS,
            },
        ),
        (
            "sensor",
            "upload_queue",
            _json_sensor(
                "upload_queue",
                name="Upload queue",
                icon="mdi:cloud-upload",
                state_topic=t.state,
                unit_of_measurement="files",
                state_class="measurement",
            ),
        ),
        (
            "sensor",
            "disk_free",
            _json_sensor(
                "disk_free_gb",
                name="Free disk",
                state_topic=t.state,
                device_class="data_size",
                unit_of_measurement="GB",
                state_class="measurement",
            ),
        ),
        (
            "sensor",
            "last_clip",
            {
                "name": "Last clip",
                "icon": "mdi:filmstrip",
                "state_topic": t.last_clip,
                "value_template": "{{ value_json.start }}",
                "json_attributes_topic": t.last_clip,
                "device_class": "timestamp",
            },
        ),
        (
            "sensor",
            "cpu_temperature",
            _json_sensor(
                "cpu_temperature",
                name="CPU temperature",
                state_topic=t.state,
                device_class="temperature",
                unit_of_measurement="°C",
                state_class="measurement",
            ),
        ),
    ]
    return {
        t.config(component, obj): {**body, "unique_id": f"pinthesky_{t.node}_{obj}", **common}
        for component, obj, body in entities
    }
