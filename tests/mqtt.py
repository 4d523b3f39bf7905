"""Local stand-ins for AWS IoT's MQTT side: Debian's mosquitto with a TLS listener that requires
client certificates, and a small process-local service that answers the named-shadow topics as
AWS IoT does (get/update accepted and rejected, documents, delta, versions, clientToken).
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Self

import trustme
from servers import Pki, free_port

from pinthesky.mqttclient import tls_context


class Mosquitto:
    """mosquitto on 127.0.0.1 with mutual TLS; persistent sessions survive ``restart``."""

    def __init__(self, pki: Pki, directory: Path) -> None:
        self._prepare(directory)
        server_cert, server_key = self._server_files(pki)
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"""user root
listener {self.port} 127.0.0.1
protocol mqtt
cafile {pki.ca_file}
certfile {server_cert}
keyfile {server_key}
require_certificate true
allow_anonymous true
persistence true
persistence_location {directory}/
autosave_interval 1
log_dest file {directory}/mosquitto.log
log_type error
log_type warning
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _prepare(self, directory: Path) -> None:
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            raise RuntimeError("mosquitto is not installed (make test installs it)")
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()

    def _server_files(self, pki: Pki) -> tuple[Path, Path]:
        """The broker's certificate (for 127.0.0.1, by the test CA) and key, as files."""
        server_cert, server_key = self.directory / "server.pem", self.directory / "server.key"
        pki.server.cert_chain_pems[0].write_to_path(str(server_cert))
        pki.server.private_key_pem.write_to_path(str(server_key))
        return server_cert, server_key

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not _port_open(self.port):
            assert self.proc.poll() is None, self.log()
            assert time.monotonic() < deadline, "mosquitto did not listen within 10 s"
            threading.Event().wait(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused broker must hear the SIGTERM
            self.proc.send_signal(signal.SIGTERM)  # saves the sessions and their messages
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pause(self) -> None:
        """A broker that hangs: connections stay open and nothing is read from them."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def client_files(pki: Pki, name: str) -> tuple[Path, Path]:
    """A client certificate and key issued by the test CA, as files."""
    ca: trustme.CA = pki.ca
    cert = ca.issue_cert(name)
    cert_file = pki.ca_file.parent / f"{name}.pem"
    key_file = pki.ca_file.parent / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return cert_file, key_file


class Peer:
    """A paho MQTT client on the broker (persistent session): the console, the cloud side."""

    def __init__(self, pki: Pki, broker: Mosquitto, name: str) -> None:
        import paho.mqtt.client as mqtt

        cert, key = client_files(pki, name)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=False)
        client.tls_set_context(tls_context(pki.ca_file, cert, key))
        client.on_message = lambda c, u, m: self.on_message(m.topic, m.payload)
        self._connect(client, broker.port)

    def _connect(self, client: Any, port: int) -> None:
        self.client = client
        self.received: list[tuple[str, bytes]] = []
        self.changed = threading.Condition()
        self.topics: list[str] = []
        client.on_connect = self._subscribe_all
        client.on_subscribe = self._on_subscribe
        self._subscribed: set[int] = set()
        client.reconnect_delay_set(0.2, 1)
        client.connect("127.0.0.1", port)
        client.loop_start()

    def _subscribe_all(self, *args: Any) -> None:
        for topic in self.topics:
            self.client.subscribe(topic, qos=1)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, *_: Any) -> None:
        with self.changed:
            self._subscribed.add(mid)
            self.changed.notify_all()

    def subscribe(self, topic: str) -> None:
        """Subscribe and return once the broker acknowledged it: a message published before
        that would not be delivered to this peer."""
        self.topics.append(topic)
        _, mid = self.client.subscribe(topic, qos=1)
        with self.changed:
            acked = self.changed.wait_for(lambda: mid in self._subscribed, 30)
        assert acked, f"{topic}: the broker did not acknowledge the subscription"

    def on_message(self, topic: str, payload: bytes) -> None:
        with self.changed:
            self.received.append((topic, payload))
            self.changed.notify_all()

    def publish(self, topic: str, message: Any, qos: int = 1) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.client.publish(topic, payload, qos=qos).wait_for_publish(10)

    def wait_for(self, predicate: Any, timeout: float = 30) -> list[tuple[str, bytes]]:
        with self.changed:
            ok = self.changed.wait_for(lambda: predicate(self.received), timeout)
            assert ok, f"timed out; received {[t for t, _ in self.received]}"
            return list(self.received)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _merge(into: dict[str, Any], change: dict[str, Any]) -> None:
    for key, value in change.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _delta(desired: Any, reported: Any) -> Any:
    if isinstance(desired, dict) and isinstance(reported, dict):
        out = {}
        for key, value in desired.items():
            d = _delta(value, reported.get(key))
            if d is not None:
                out[key] = d
        return out or None
    return None if desired == reported else desired


class ShadowService(Peer):
    """Answers ``$aws/things/+/shadow/name/+/{get,update}`` like the AWS IoT shadow service."""

    def __init__(self, pki: Pki, broker: Mosquitto) -> None:
        self.shadows: dict[str, dict[str, Any]] = {}
        self.lock = threading.Condition()
        super().__init__(pki, broker, "shadow-service")
        self.subscribe("$aws/things/+/shadow/name/+/get")
        self.subscribe("$aws/things/+/shadow/name/+/update")

    def on_message(self, topic: str, payload: bytes) -> None:
        base, _, op = topic.rpartition("/")
        try:
            request = json.loads(payload) if payload else {}
        except ValueError:
            self._answer(f"{base}/{op}/rejected", {"code": 400, "message": "Payload not JSON"})
            return
        token = {"clientToken": request["clientToken"]} if "clientToken" in request else {}
        now = int(time.time())
        with self.lock:
            shadow = self.shadows.get(base)
            if op == "get":
                if shadow is None:
                    self._answer(f"{base}/get/rejected", {"code": 404, "message": "No shadow"})
                else:
                    state = copy.deepcopy(shadow["state"])
                    delta = _delta(state.get("desired"), state.get("reported"))
                    if delta:
                        state["delta"] = delta
                    body = {"state": state, "metadata": {}, "version": shadow["version"]}
                    self._answer(f"{base}/get/accepted", {**body, "timestamp": now, **token})
                return
            state = request.get("state")
            if not isinstance(state, dict):
                self._answer(f"{base}/update/rejected", {"code": 400, "message": "No state"})
                return
            previous = copy.deepcopy(shadow) if shadow else None
            shadow = shadow or {"state": {}, "version": 0}
            for part in ("desired", "reported"):
                if isinstance(state.get(part), dict):
                    shadow["state"].setdefault(part, {})
                    _merge(shadow["state"][part], state[part])
            shadow["version"] += 1
            self.shadows[base] = shadow
            self.lock.notify_all()
            accepted = {"state": state, "metadata": {}, "version": shadow["version"]}
            self._answer(f"{base}/update/accepted", {**accepted, "timestamp": now, **token})
            current = {"state": copy.deepcopy(shadow["state"]), "metadata": {}}
            current["version"] = shadow["version"]
            prev = None
            if previous:
                prev = {"state": previous["state"], "metadata": {}, "version": previous["version"]}
            self._answer(
                f"{base}/update/documents",
                {"previous": prev, "current": current, "timestamp": now, **token},
            )
            delta = _delta(shadow["state"].get("desired"), shadow["state"].get("reported"))
            if delta and "desired" in state:
                self._answer(
                    f"{base}/update/delta",
                    {"state": delta, "version": shadow["version"], "timestamp": now},
                )

    def _answer(self, topic: str, body: dict[str, Any]) -> None:
        self.client.publish(topic, json.dumps(body).encode(), qos=1)

    def state(self, thing: str, shadow: str = "pinthesky") -> dict[str, Any]:
        with self.lock:
            doc = self.shadows.get(f"$aws/things/{thing}/shadow/name/{shadow}")
            return copy.deepcopy(doc["state"]) if doc else {}

    def wait_for(self, predicate: Any, timeout: float = 30) -> list[tuple[str, bytes]]:
        with self.lock:
            assert self.lock.wait_for(predicate, timeout), f"shadow now: {self.shadows}"
        return []


class JobsService(Peer):
    """Answers ``$aws/things/{thing}/jobs/start-next`` and records ``.../{jobId}/update``, as
    the AWS IoT Jobs service does for one thing; ``add`` queues a job and notifies."""

    def __init__(self, pki: Pki, broker: Mosquitto, thing: str) -> None:
        self.base = f"$aws/things/{thing}/jobs"
        self.queued: list[tuple[str, Any]] = []
        self.updates: dict[str, dict[str, Any]] = {}
        self.lock = threading.Condition()
        super().__init__(pki, broker, "jobs-service")
        self.subscribe(f"{self.base}/start-next")
        self.subscribe(f"{self.base}/+/update")

    def add(self, job_id: str, document: Any) -> None:
        with self.lock:
            self.queued.append((job_id, document))
        self.publish(f"{self.base}/notify-next", {"execution": self._execution(job_id, document)})

    @staticmethod
    def _execution(job_id: str, document: Any) -> dict[str, Any]:
        return {"jobId": job_id, "jobDocument": document, "status": "QUEUED", "versionNumber": 1}

    def on_message(self, topic: str, payload: bytes) -> None:
        body = json.loads(payload) if payload else {}
        token = {"clientToken": body["clientToken"]} if "clientToken" in body else {}
        with self.lock:
            if topic == f"{self.base}/start-next":
                answer: dict[str, Any] = {**token, "timestamp": int(time.time())}
                if self.queued:
                    job_id, document = self.queued.pop(0)
                    answer["execution"] = {
                        **self._execution(job_id, document),
                        "status": "IN_PROGRESS",
                    }
                self.client.publish(f"{topic}/accepted", json.dumps(answer).encode(), qos=1)
            else:
                job_id = topic[len(self.base) + 1 :].split("/", maxsplit=1)[0]
                self.updates[job_id] = body
                self.lock.notify_all()
                self.client.publish(
                    f"{self.base}/{job_id}/update/accepted", json.dumps(token).encode(), qos=1
                )

    def wait_for(self, predicate: Any, timeout: float = 30) -> list[tuple[str, bytes]]:
        with self.lock:
            assert self.lock.wait_for(lambda: predicate(self.updates), timeout), self.updates
        return []


class HomeBroker(Mosquitto):
    """Debian's mosquitto as a home network runs it for Home Assistant: no anonymous clients,
    users from a password file (made with ``mosquitto_passwd``), optionally TLS with a server
    certificate from ``pki`` (clients check it; they bring no certificate of their own)."""

    USERS: ClassVar[dict[str, str]] = {"camera": "cam-secret", "homeassistant": "ha-secret"}

    def __init__(self, directory: Path, pki: Pki | None = None) -> None:
        self._prepare(directory)
        self.tls = pki is not None
        passwords = directory / "passwords"
        passwords.write_text("")
        for user, password in self.USERS.items():
            subprocess.run(
                [shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b",
                 str(passwords), user, password],
                check=True, capture_output=True,
            )  # fmt: skip
        lines = [
            "user root",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {passwords}",
            "persistence false",
            f"log_dest file {directory}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages true",
        ]
        if pki is not None:
            server_cert, server_key = self._server_files(pki)
            lines += [f"certfile {server_cert}", f"keyfile {server_key}"]
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None


class HomePeer(Peer):
    """A client of the home broker with a user name and password, as Home Assistant's MQTT
    integration is: it records every message with its retain flag."""

    def __init__(
        self,
        broker: HomeBroker,
        name: str = "homeassistant",
        ca_file: Path | None = None,
        user: str = "homeassistant",
    ) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        client.username_pw_set(user, HomeBroker.USERS[user])
        if broker.tls:
            client.tls_set_context(tls_context(ca_file))
        client.on_message = lambda c, u, m: self.on_message(m.topic, m.payload, m.retain)
        self.retained: dict[str, bytes] = {}
        self.latest: dict[str, bytes] = {}
        self._connect(client, broker.port)

    def on_message(self, topic: str, payload: bytes, retain: bool = False) -> None:  # type: ignore[override]
        with self.changed:
            self.received.append((topic, payload))
            self.latest[topic] = payload
            if retain:
                self.retained[topic] = payload
            self.changed.notify_all()

    def value(self, topic: str) -> bytes | None:
        with self.changed:
            return self.latest.get(topic)

    def wait_value(self, topic: str, wanted: Any, timeout: float = 30) -> bytes:
        """Until the newest message on ``topic`` is ``wanted`` (bytes, or a predicate)."""
        test = wanted if callable(wanted) else (lambda v: v == wanted)
        with self.changed:
            ok = self.changed.wait_for(
                lambda: topic in self.latest and test(self.latest[topic]), timeout
            )
            assert ok, f"{topic}: {self.latest.get(topic)!r} after {timeout} s"
            return self.latest[topic]

    def count(self, topic: str, payload: bytes | None = None) -> int:
        with self.changed:
            return sum(1 for t, p in self.received if t == topic and payload in (None, p))
