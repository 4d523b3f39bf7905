"""pitsctl end to end: a real sshd from Debian's openssh-server on 127.0.0.1 (root, with a
throwaway key), moto in server mode for IoT, IAM, S3, Logs and STS, and a target root
standing in for the Pi's file system (no systemd runs here: units are enabled with
``systemctl --root`` and the services are started as the service user by ``onpi.Direct``).

The install really creates the user, makes the key on the "Pi", installs this package into a
virtualenv with pip, starts the daemon and the sidecar from it, and waits for the daemon's
health report; ``remove --cloud`` must then leave the target root and moto as they were."""

from __future__ import annotations

import base64
import json
import os
import socket
import stat
import subprocess
import threading
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from conftest import eventually
from pitarget import account, snapshot
from servers import Sshd, aws_client, free_port, moto_server, sshd
from test_provision import assert_nothing_left, csr_pem, enforce_iam, sign_requests_like_aws

from pinthesky import __version__
from pinthesky.installer import onpi, pitsctl
from pinthesky.installer.provision import Names, Provisioner

REGION = "eu-west-1"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    with sshd(tmp_path_factory.mktemp("sshd")) as running:
        yield running


def point_aws_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Every AWS endpoint at ``endpoint``, with credentials a client sends."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    sign_requests_like_aws(monkeypatch)
    with moto_server() as endpoint:
        point_aws_at(monkeypatch, endpoint)
        yield endpoint


def pitsctl_run(
    capsys: pytest.CaptureFixture[str], server: Sshd, root: Path, *args: str
) -> tuple[int, Any, str]:
    """pitsctl in this process (moto's stand-in fix applies), as a user would run it."""
    argv = [args[0], "--host", "root@127.0.0.1", "--target-root", str(root), "--json"]
    for option in server.options:
        argv += ["-o", option]
    code = pitsctl.main([*argv, *args[1:]])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def service_pids(root: Path) -> dict[str, int]:
    return {p.stem: int(p.read_text()) for p in (root / "run/pinthesky").glob("*.pid")}


def uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def test_install_view_reinstall_and_remove_leave_nothing_behind(
    server: Sshd, aws: str, target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    before = snapshot(target)
    iot = aws_client("iot", aws, REGION)

    # Someone else's camera already holds the thing name: refused in one line, exit 1.
    Provisioner(
        __import__("boto3").Session(region_name=REGION),
        Names(thing="taken", bucket="theirs", region=REGION),
    ).install(csr_pem("taken"))
    code, _, err = pitsctl_run(capsys, server, target, "install", "--thing", "taken")
    assert code == 1
    message = err.strip().splitlines()[-1]
    assert message.startswith("pitsctl: thing taken already has a certificate for another key")
    Provisioner(
        __import__("boto3").Session(region_name=REGION),
        Names(thing="taken", bucket="theirs", region=REGION),
    ).remove()

    # The same Pi, installed as cam-a: the run that was refused left nothing a re-run trips on.
    code, result, err = pitsctl_run(
        capsys, server, target, "install", "--thing", "cam-a", "--bucket", "cams",
        "--with-cloudwatch",
    )  # fmt: skip
    assert code == 0, err
    assert result["thing"] == "cam-a" and result["health"]["recording_status"] is True
    assert "done in" in err and "pip install" in err  # the progress display
    uid, gid = account(target)
    pids = service_pids(target)
    assert set(pids) == {"pinthesky", "pinthesky-iot"}
    assert all(uid_of(pid) == uid for pid in pids.values())  # not root

    etc = target / "etc/pinthesky"
    key = etc / "certs/thing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == uid
    assert stat.S_IMODE((etc / "certs").stat().st_mode) == 0o700
    cert_pem = (etc / "certs/thing.cert.pem").read_bytes()
    # The certificate AWS made is for the key made on the Pi (which never left it).
    pi_key = serialization.load_pem_private_key(key.read_bytes(), None)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.public_key() == pi_key.public_key()
    [registered] = iot.list_certificates()["certificates"]
    assert iot.list_thing_principals(thingName="cam-a")["principals"] == [
        registered["certificateArn"]
    ]
    config = etc / "pinthesky.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640 and config.stat().st_gid == gid
    for name in ("input.json", "output.json"):
        events = target / "var/lib/pinthesky/events" / name
        assert events.stat().st_uid == uid and stat.S_IMODE(events.stat().st_mode) == 0o600
    wants = target / "etc/systemd/system/multi-user.target.wants"
    assert sorted(p.name for p in wants.iterdir()) == [
        "pinthesky-iot.service",
        "pinthesky.service",
        "ssh.service",
    ]
    assert (target / onpi.POLKIT_RULE.lstrip("/")).exists()
    # The installed daemon reads the settings pitsctl wrote as the user meant them.
    venv = target / "opt/pinthesky/venv/bin"
    checked = subprocess.run(
        [venv / "pinthesky", "--config", config, "--validate-config"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert 'thing_name = "cam-a"' in checked.stdout and 'bucket_name = "cams"' in checked.stdout
    assert 'log_group_name = "pinthesky"' in checked.stdout
    version = subprocess.run(
        [venv / "pinthesky", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == __version__

    # view: what is installed, the services, the last health report, the cloud.
    code, seen, err = pitsctl_run(capsys, server, target, "view")
    assert code == 0, err
    pi, cloud = seen["pi"], seen["cloud"]
    assert pi["version"] == __version__ and pi["installed"]["thing"] == "cam-a"
    assert pi["services"] == {"pinthesky": "active", "pinthesky-iot": "active"}
    assert pi["health"]["name"] == "health_end" and pi["health"]["age_s"] < 600
    assert pi["health"]["upload_queue"]["uploading"] is True
    assert cloud["thing"] is True and cloud["policy_attached"] is True
    assert cloud["bucket"] is True and cloud["role_alias"] is True

    # The owner tunes a setting by hand; a re-install (an upgrade) keeps it and the identity.
    config.write_text(config.read_text() + "\n[camera]\nsensitivity = 25  # windy garden\n")
    code, result, err = pitsctl_run(capsys, server, target, "install")
    assert code == 0, err
    assert "sensitivity = 25  # windy garden" in config.read_text()
    assert (etc / "certs/thing.cert.pem").read_bytes() == cert_pem
    assert len(iot.list_certificates()["certificates"]) == 1
    assert service_pids(target) != pids  # restarted on the new code

    # remove --cloud: nothing the install made is left, on the Pi or in AWS.
    code, removed, err = pitsctl_run(capsys, server, target, "remove", "--cloud")
    assert code == 0, err
    assert "user pinthesky" in removed["pi"]["removed"]
    assert "thing cam-a" in removed["cloud"]["removed"]
    assert "bucket cams" in removed["cloud"]["removed"]
    assert snapshot(target) == before
    assert not any(onpi.alive(pid) for pid in pids.values())
    assert_nothing_left(aws, REGION)


def test_an_unreachable_host_is_one_line_and_exit_1(
    target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nobody = Sshd(free_port(), [f"Port={free_port()}"], Path("/nonexistent"))
    code, _, err = pitsctl_run(capsys, nobody, target, "view")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "pitsctl: cannot reach root@127.0.0.1 over ssh: no ssh server answers there; enable "
        "ssh on the Pi (raspi-config, or Raspberry Pi Imager's settings)"
    )


def test_a_wrong_key_is_one_line_and_changes_nothing(
    server: Sshd, target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    before = snapshot(target)
    wrong = Sshd(
        server.port,
        [
            o if not o.startswith("IdentityFile=") else f"IdentityFile={other}"
            for o in server.options
        ],
        other,
    )
    code, _, err = pitsctl_run(capsys, wrong, target, "install", "--thing", "cam-a")
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("pitsctl: cannot reach root@127.0.0.1 over ssh: the ssh login was")
    assert snapshot(target) == before


def test_no_aws_credentials_is_one_line_before_the_pi_is_touched(
    server: Sshd, target: Path, capsys: pytest.CaptureFixture[str], monkeypatch, tmp_path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    before = snapshot(target)
    code, _, err = pitsctl_run(capsys, server, target, "install", "--region", REGION)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "pitsctl: AWS: Unable to locate credentials: run `aws configure` (or set AWS_PROFILE) "
        "on this computer"
    )
    assert snapshot(target) == before


def test_missing_aws_permissions_are_one_line_and_a_rerun_repairs(
    server: Sshd, aws: str, target: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """moto enforcing IAM: the workstation's user may not create IAM roles. pitsctl stops at
    the first refusal, naming the call; granted the permission, the same command finishes."""
    from moto import settings as moto_settings

    iam = aws_client("iam", aws)
    iam.create_user(UserName="laptop")
    allow = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:*", "sts:*", "logs:*", "iot:*"], "Resource": "*"},
    ]}  # fmt: skip
    iam.put_user_policy(UserName="laptop", PolicyName="p", PolicyDocument=json.dumps(allow))
    key = iam.create_access_key(UserName="laptop")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    enforce_iam(monkeypatch)
    code, _, err = pitsctl_run(capsys, server, target, "install", "--thing", "cam-a",
                               "--bucket", "cams")  # fmt: skip
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("pitsctl: GetRole failed: AccessDenied") and "docs/cloud.md" in line
    assert not (target / "etc/pinthesky/pinthesky.toml").exists()  # stopped before the Pi
    assert (target / "etc/pinthesky/certs/thing.key").exists()  # kept for the re-run
    key_before = (target / "etc/pinthesky/certs/thing.key").read_bytes()

    allow["Statement"][0]["Action"].append("iam:*")  # granted (by an administrator)
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", float("inf"))
    iam.put_user_policy(UserName="laptop", PolicyName="p", PolicyDocument=json.dumps(allow))
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    code, result, err = pitsctl_run(capsys, server, target, "install", "--thing", "cam-a",
                                    "--bucket", "cams")  # fmt: skip
    assert code == 0, err
    assert result["thing"] == "cam-a"
    assert (target / "etc/pinthesky/certs/thing.key").read_bytes() == key_before
    code, _, err = pitsctl_run(capsys, server, target, "remove", "--cloud")
    assert code == 0, err


def test_policy_documents_are_valid_json_with_no_trailing_commas() -> None:
    from pinthesky.installer.provision import role_policy, thing_policy

    names = Names(thing="cam-a", bucket="cams", region=REGION, log_group="pinthesky")
    for document in (role_policy(names, "123456789012"), thing_policy(REGION, "123456789012")):
        text = json.dumps(document)
        assert json.loads(text) == document and ",]" not in text and ",}" not in text


def test_the_wheel_pitsctl_ships_holds_this_version_and_the_units() -> None:
    import io
    import zipfile

    name, data = pitsctl.build_wheel()
    assert name == f"pinthesky-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        names = set(wheel.namelist())
        assert {
            "pinthesky/installer/onpi.py",
            "pinthesky/installer/units/pinthesky.service",
        } <= names
        meta = wheel.read(f"pinthesky-{__version__}.dist-info/METADATA").decode()
        assert f"Version: {__version__}" in meta and "Requires-Dist: boto3" in meta
        entry = wheel.read(f"pinthesky-{__version__}.dist-info/entry_points.txt").decode()
        assert "pitsctl = pinthesky.installer.pitsctl:main" in entry
    assert not any(n.endswith(".pyc") for n in names)
    assert os.path.basename(name) == name


def test_the_wheel_carries_the_metadata_of_an_in_tree_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkout installed with setuptools' in-tree build leaves ``pinthesky.egg-info``
    beside the package: its metadata is PKG-INFO, not METADATA, and the wheel still has it."""
    import io
    import zipfile
    from importlib import metadata

    info = tmp_path / "pinthesky.egg-info"
    info.mkdir()
    (info / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: pinthesky\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text("[console_scripts]\npitsctl = x:y\n")
    monkeypatch.setattr(metadata, "distribution", lambda name: metadata.PathDistribution(info))
    _, data = pitsctl.build_wheel()
    with zipfile.ZipFile(io.BytesIO(data)) as wheel:
        meta = wheel.read(f"pinthesky-{__version__}.dist-info/METADATA").decode()
    assert meta.startswith("Metadata-Version: 2.1\nName: pinthesky\n")
    assert f"Version: {__version__}" in meta


def test_view_says_what_is_installed_in_a_few_lines() -> None:
    pi = {
        "model": "Raspberry Pi Zero 2 W Rev 1.0",
        "os": "Raspbian GNU/Linux 12 (bookworm)",
        "python": "3.11.2",
        "picamera2": "0.3.25",
        "installed": {"thing": "cam-a", "region": REGION, "bucket": "cams", "log_group": None},
        "version": __version__,
        "services": {"pinthesky": "active", "pinthesky-iot": "failed"},
        "health": {
            "age_s": 12,
            "recording_status": True,
            "motion_captured": 3,
            "up_time": 3600,
            "cpu_used": 4.2,
            "mem_avail": 307200,
            "disk_free": 20 * 2**30,
            "upload_queue": {"clips": 2, "bytes": 41_000_000, "uploading": True},
        },
    }
    cloud = {"thing": True, "bucket": True, "role": "access denied", "certificates": ["arn"]}
    text = pitsctl._describe("pi@cam", pi, cloud)
    assert text.splitlines() == [
        "pi@cam: Raspberry Pi Zero 2 W Rev 1.0, Raspbian GNU/Linux 12 (bookworm), Python 3.11.2",
        f"installed: pinthesky {__version__}, thing cam-a, region {REGION}, bucket cams",
        "services: pinthesky active, pinthesky-iot failed",
        "camera stack: picamera2 0.3.25: pinthesky needs 0.3.30 or later (pitsctl install "
        "upgrades it)",
        "health (12 s ago): recording True, 3 clips since start, up 3600 s, CPU 4.2 %, "
        "memory available 300 MB, disk free 20480 MB",
        "upload queue: 2 files, 41.0 MB waiting",
        "cloud: thing yes, bucket yes, role access denied, certificates 1",
    ]
    pi["picamera2"] = "0.3.38"
    assert "camera stack: picamera2 0.3.38" in pitsctl._describe("pi@cam", pi, {}).splitlines()
    # A camera without AWS, on the home network.
    pi["installed"] = {"thing": None, "region": None, "bucket": None, "log_group": None}
    pi["access"] = {"hostname": "cam", "page": 8080, "rtsp": 8554, "mqtt": "ha.lan",
                    "mqtt_port": None}  # fmt: skip
    lines = pitsctl._describe("pi@cam", pi, {}).splitlines()
    assert f"installed: pinthesky {__version__}, without AWS" in lines
    assert (
        "on the network: page http://cam.local:8080/, RTSP rtsp://cam.local:8554/live, "
        "Home Assistant through ha.lan"
    ) in lines
    pi["access"] = {**pi["access"], "page": None, "mqtt": None}
    assert "on the network: no page, RTSP rtsp://192.0.2.9:8554/live, no MQTT" in (
        pitsctl._describe("pi@192.0.2.9", pi, {}).splitlines()
    )
    pi["installed"] = None
    assert pitsctl._describe("pi@cam", pi, {}).splitlines()[-1] == "pinthesky is not installed"


@contextmanager
def aws_that_fails_every_request(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every AWS endpoint pointed at a server that answers 500 and writes down each request
    (credentials set, so a client would really send them)."""
    seen: list[str] = []

    class Refuse(BaseHTTPRequestHandler):
        def _refuse(self) -> None:
            seen.append(f"{self.command} {self.headers.get('Host')}{self.path}")
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _refuse

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    with monkeypatch.context() as env:
        point_aws_at(env, f"http://127.0.0.1:{http.server_address[1]}")
        try:
            yield seen
        finally:
            http.shutdown()
            http.server_close()


def page(port: int, path: str, password: str, method: str = "GET", body: Any = None) -> Any:
    """A request to the camera's page as its owner's browser makes it."""
    token = base64.b64encode(f"owner:{password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Origin": f"http://127.0.0.1:{port}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers=headers, method=method
    )
    with urllib.request.urlopen(request, timeout=20) as response:
        return response.status, response.headers.get("Content-Type"), response.read()


def rtsp_status(port: int, request: str) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{request} rtsp://127.0.0.1:{port}/live RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
        return s.recv(4096).decode("latin-1").splitlines()[0]


def test_a_camera_without_aws_then_in_the_cloud_keeping_its_settings_and_clips(
    server: Sshd, target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from mqtt import HomeBroker, HomePeer

    (target / "etc/avahi/services").mkdir(parents=True)  # the Pi runs Avahi
    before = snapshot(target)
    # Servers in these tests listen on 127.0.0.1 only: the owner's own settings, which every
    # install keeps.
    (target / "etc/pinthesky").mkdir()
    (target / "etc/pinthesky/pinthesky.toml").write_text(
        '[http]\nbind = "127.0.0.1"\n\n[rtsp]\nbind = "127.0.0.1"\n'
    )
    page_port, rtsp_port = free_port(), free_port()
    etc = target / "etc/pinthesky"
    state = target / "var/lib/pinthesky"

    with aws_that_fails_every_request(monkeypatch) as aws_requests:
        code, local, err = pitsctl_run(
            capsys, server, target, "install", "--local",
            "--page", str(page_port), "--rtsp", str(rtsp_port),
        )  # fmt: skip
        assert code == 0, err
        assert local["local"] is True and local["health"]["recording_status"] is True
        assert local["access"]["page"] == page_port and local["access"]["rtsp"] == rtsp_port
        password = local["password"]
        assert len(password) >= 16
        # Only the daemon: no sidecar, no certificate, no key, no AWS region.
        assert set(service_pids(target)) == {"pinthesky"}
        wants = target / "etc/systemd/system/multi-user.target.wants"
        assert sorted(p.name for p in wants.iterdir()) == ["pinthesky.service", "ssh.service"]
        assert not (etc / "certs").exists() and not (etc / "pinthesky.env").exists()
        config = tomllib.loads((etc / "pinthesky.toml").read_text())
        assert "cloud_connection" not in config and "iot" not in config
        assert config["http"] == {"bind": "127.0.0.1", "port": page_port, "password": password}
        # The page, its snapshot and RTSP answer, with the password.
        status, kind, body = page(page_port, "/snapshot.jpg", password)
        assert (status, kind) == (200, "image/jpeg") and body.startswith(b"\xff\xd8")
        with pytest.raises(urllib.error.HTTPError) as refused:
            page(page_port, "/snapshot.jpg", "wrong")
        assert refused.value.code == 401
        assert rtsp_status(rtsp_port, "OPTIONS") == "RTSP/1.0 200 OK"
        assert rtsp_status(rtsp_port, "DESCRIBE") == "RTSP/1.0 401 Unauthorized"
        # Announced by the Pi's mDNS responder.
        announced = ElementTree.parse(target / "etc/avahi/services/pinthesky.service")
        services = {
            s.findtext("type"): int(s.findtext("port") or 0) for s in announced.iter("service")
        }
        assert services == {"_http._tcp": page_port, "_rtsp._tcp": rtsp_port}
        assert announced.findtext("name") == "%h"
        # The owner changes a setting on the page and records a clip.
        page(page_port, "/api/settings", password, "PATCH", {"camera": {"sensitivity": 25}})
        page(page_port, "/api/record", password, "POST", {"duration": 1})
        clip = eventually(
            lambda: next(iter((state / "motion_videos").glob("*.motion.mp4")), None), 60
        )

        # Home Assistant's broker, switched on without a hand edit; a new password too.
        secret = tmp_path / "mqtt-password"
        secret.write_text(HomeBroker.USERS["camera"] + "\n")
        with HomeBroker(tmp_path / "broker") as broker:
            ha = HomePeer(broker)
            ha.subscribe("homeassistant/#")
            ha.subscribe("pinthesky/#")
            code, switched, err = pitsctl_run(
                capsys, server, target, "set", "--mqtt-host", "127.0.0.1",
                "--mqtt-port", str(broker.port), "--mqtt-username", "camera",
                "--mqtt-password-file", str(secret), "--new-password",
            )  # fmt: skip
            assert code == 0, err
            assert switched["access"]["mqtt"] == "127.0.0.1"
            eventually(
                lambda: any(t.endswith("/availability") and p == b"online"
                            for t, p in list(ha.latest.items())),
                30, "the camera online in Home Assistant",
            )  # fmt: skip
            assert any(t.endswith("/motion/config") for t in ha.latest)
            ha.close()
        new_password = switched["password"]
        assert new_password and new_password != password
        assert page(page_port, "/snapshot.jpg", new_password)[0] == 200
        mqtt_secret = etc / "mqtt-password"
        assert stat.S_IMODE(mqtt_secret.stat().st_mode) == 0o640
        assert mqtt_secret.read_text() == "cam-secret\n"
        assert "cam-secret" not in (etc / "pinthesky.toml").read_text()

        code, seen, err = pitsctl_run(capsys, server, target, "view")
        assert code == 0, err
        assert seen["pi"]["installed"]["thing"] is None and seen["cloud"] == {}
        assert seen["pi"]["access"]["page"] == page_port
        assert seen["pi"]["services"] == {"pinthesky": "active"}
    assert aws_requests == []  # not one AWS request, from pitsctl or from the camera

    # The same camera into the cloud: its settings, password and clips stay.
    sign_requests_like_aws(monkeypatch)
    with moto_server() as endpoint:
        point_aws_at(monkeypatch, endpoint)
        code, cloud, err = pitsctl_run(
            capsys, server, target, "install", "--thing", "cam-a", "--bucket", "cams"
        )
        assert code == 0, err
        assert cloud["password"] is None  # kept: nothing new to show
        assert set(service_pids(target)) == {"pinthesky", "pinthesky-iot"}
        config = tomllib.loads((etc / "pinthesky.toml").read_text())
        assert config["cloud_connection"]["thing_name"] == "cam-a"
        assert config["iot"]["seed_desired"] is True
        assert config["http"]["port"] == page_port and config["rtsp"]["port"] == rtsp_port
        assert config["mqtt"]["host"] == "127.0.0.1"
        assert clip.exists()  # queued for the bucket now
        _, _, body = page(page_port, "/api/settings", new_password)
        assert json.loads(body)["settings"]["camera"]["sensitivity"] == 25
        announced = ElementTree.parse(target / "etc/avahi/services/pinthesky.service")
        assert announced.findtext("name") == "cam-a"

        code, removed, err = pitsctl_run(capsys, server, target, "remove", "--cloud")
        assert code == 0, err
        assert "/etc/avahi/services/pinthesky.service" in removed["pi"]["removed"]
        assert snapshot(target) == before
        assert_nothing_left(endpoint, REGION)


def test_switches_are_checked_before_the_pi_is_touched(
    target: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nobody = Sshd(free_port(), [f"Port={free_port()}"], Path("/nonexistent"))
    for args, line in (
        (["install", "--local", "--page", "80"], "--page '80': on, off or a port from 1024"),
        (["set", "--mqtt-host", "mqtt://ha"], "--mqtt-host 'mqtt://ha': must be a host name"),
        (["set", "--mqtt-port", "0"], "--mqtt-port '0': must be a whole number from 1 to"),
        (["set", "--mqtt-password-file", "/nonexistent"], "No such file or directory"),
        (["set"], "nothing to set: give --page, --rtsp, --mqtt-host"),
        (["install", "--local", "--thing", "cam-a"], "--thing is for a cloud camera"),
    ):
        code, _, err = pitsctl_run(capsys, nobody, target, *args)
        assert code == 1
        assert line in err.strip().splitlines()[-1], err


def test_the_owner_is_told_how_to_reach_the_camera_and_the_password_once() -> None:
    import io

    ways = {"hostname": "cam", "page": 8080, "rtsp": 8554, "mqtt": None, "mqtt_port": None}
    out = io.StringIO()
    pitsctl._tell_access(out, "pi@cam", {"access": ways, "password": "s3cr3t", "announced": True})
    assert out.getvalue().splitlines() == [
        "page: http://cam.local:8080/",
        "RTSP: rtsp://cam.local:8554/live",
        "password (any user name): s3cr3t",
        "  shown this once; `pitsctl set --host pi@cam --new-password` makes a new one",
    ]
    out = io.StringIO()
    ways = {**ways, "page": None, "mqtt": "ha.lan", "mqtt_port": 8883}
    pitsctl._tell_access(out, "pi@10.0.0.7", {"access": ways, "password": None})
    assert out.getvalue().splitlines() == [
        "RTSP: rtsp://10.0.0.7:8554/live",
        "password: the one you have (`pitsctl set --host pi@10.0.0.7 --new-password` makes a "
        "new one)",
        "Home Assistant: MQTT discovery through ha.lan:8883",
        "note: no Avahi on the Pi: the page and RTSP are not announced by mDNS",
    ]
