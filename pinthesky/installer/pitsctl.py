"""``pitsctl``: install, inspect and remove a pinthesky camera from a workstation.

    pitsctl install --host pi@camera.local [--thing NAME] [--bucket NAME] [--region R]
    pitsctl install --host pi@camera.local --local
    pitsctl set --host pi@camera.local [--page on|off|PORT] [--rtsp on|off|PORT]
                [--mqtt-host HOST|off] [--mqtt-port P] [--mqtt-username U]
                [--mqtt-password-file FILE] [--mqtt-tls] [--mqtt-ca-file FILE] [--new-password]
    pitsctl view --host pi@camera.local
    pitsctl remove --host pi@camera.local [--keep-clips] [--cloud]
    pitsctl alerts [--region R] [--bucket NAME] [--email ADDR]... [--sms NUMBER] [--https URL]
                   [--offline-after MIN] [--retention-days N] [--off]

The cloud side runs here, with the workstation's own AWS credentials (``provision``); the
Pi side runs there over ssh (``ssh`` and ``onpi``). An install goes: look at the Pi, make
its key and a signing request there, create or reuse the AWS resources, install the package
this pitsctl belongs to (built here as a wheel, so the Pi runs the same version) with the
settings, certificates and units, start both services, and wait for the daemon's health
report before saying done. Every step can be run again: a failed install is finished by the
same command. ``--local`` installs a camera that touches no AWS service (no AWS call is made
from here either): the daemon alone, its page and RTSP on with a password made on the Pi; a
later install without it makes the same camera a cloud one, keeping its settings and clips.
``set`` turns the page, RTSP and Home Assistant's MQTT on and off on an installed camera.
``alerts`` (and ``install`` with the same options) sets up who is told of motion and of a
camera gone offline, and how long the bucket keeps clips (``alerts.cloud``).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import re
import sys
import time
import uuid
import zipfile
from collections.abc import Sequence
from importlib import metadata, resources
from pathlib import Path
from typing import Any, TextIO

from pinthesky import __version__
from pinthesky.cmdline import OneLineParser
from pinthesky.errors import PintheskyError

PROG = "pitsctl"
THING_NAME = re.compile(r"[A-Za-z0-9:_-]{1,128}")
BUCKET_NAME = re.compile(r"(?!xn--)(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
DEFAULT_LOG_GROUP = "pinthesky"


class Progress:
    """Steps with their duration; on a terminal the current detail (pip's lines, the cloud
    steps) is shown on one line that is rewritten in place."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._step: str | None = None
        self._started = 0.0
        self._detail = False

    def step(self, text: str) -> None:
        self.end()
        self._step, self._started = text, time.monotonic()
        self._write(f"- {text}")

    def detail(self, text: str) -> None:
        if self.tty:
            width = max(20, os.get_terminal_size(self.stream.fileno()).columns - 6)
            self.stream.write(f"\r\x1b[K    {text[:width]}")
            self.stream.flush()
            self._detail = True
        else:
            self._write(f"    {text}")

    def end(self, ok: bool = True) -> None:
        if self._step is not None:
            self._write(
                f"  {'done' if ok else 'FAILED'} in {time.monotonic() - self._started:.1f} s"
            )
        self._step = None

    def on_event(self, kind: str, text: str) -> None:
        (self.step if kind == "step" else self.detail)(text)

    def _write(self, line: str) -> None:
        if self._detail:
            self.stream.write("\r\x1b[K")
            self._detail = False
        self.stream.write(line + "\n")
        self.stream.flush()


def build_wheel() -> tuple[str, bytes]:
    """A wheel of the pinthesky package this pitsctl runs from (its files, its metadata and
    entry points), so the Pi gets exactly this version, whether it came from PyPI or a
    checkout. Returns its file name and bytes."""
    import pinthesky

    dist = metadata.distribution("pinthesky")
    package = Path(pinthesky.__file__).parent
    info = f"pinthesky-{__version__}.dist-info"
    files: dict[str, bytes] = {}
    for directory, dirs, names in os.walk(package, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(names):
            if not name.endswith(".pyc"):
                path = Path(directory) / name
                files[path.relative_to(package.parent).as_posix()] = path.read_bytes()
    # An installed wheel has METADATA; an egg-info (setuptools' in-tree build) has PKG-INFO.
    known = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    meta = re.sub(r"^Version: .*$", f"Version: {__version__}", known, count=1, flags=re.M)
    files[f"{info}/METADATA"] = meta.encode()
    files[f"{info}/entry_points.txt"] = (dist.read_text("entry_points.txt") or "").encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: pitsctl\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return f"pinthesky-{__version__}-py3-none-any.whl", buffer.getvalue()


def unit_texts() -> dict[str, str]:
    units = resources.files("pinthesky.installer") / "units"
    return {
        name: (units / f"{name}.service").read_text() for name in ("pinthesky", "pinthesky-iot")
    }


# -- commands ----------------------------------------------------------------------------------


def _session(region: str | None) -> Any:
    import boto3

    return boto3.Session(region_name=region) if region else boto3.Session()


def _provisioner(session: Any, names: Any, progress: Progress | None = None) -> Any:
    from pinthesky.installer.provision import Provisioner

    return Provisioner(session, names, progress.detail if progress else None)


def _remote(ns: argparse.Namespace) -> Any:
    from pinthesky.installer.ssh import Remote

    return Remote(ns.host, ns.ssh_option, ns.target_root)


def _default_thing(hostname: str) -> str:
    name = re.sub(r"[^A-Za-z0-9:_-]", "-", hostname.split(".", maxsplit=1)[0]) or "pinthesky"
    return name[:128]


def install(ns: argparse.Namespace, out: TextIO, progress: Progress) -> int:
    from pinthesky.installer.provision import Names

    switches = read_switches(ns)
    if ns.local:
        return install_local(ns, switches, out, progress)
    options = _alert_options(ns)
    options.check()  # a mistyped option is one line before the Pi or AWS is asked anything
    remote = _remote(ns)
    progress.step(f"connecting to {ns.host}")
    pi = remote.call("probe")
    before = pi["installed"] or {}
    region = ns.region or before.get("region") or _session(None).region_name
    if not region:
        raise PintheskyError("no AWS region: pass --region, or set one in your AWS config")
    for what in ("thing", "region"):
        given, have = getattr(ns, what), before.get(what)
        if given and have and given != have:
            raise PintheskyError(
                f"{ns.host} is already installed with {what} {have}: run the same command "
                f"with --{what} {have}, or `pitsctl remove --host {ns.host} --cloud` first"
            )
    ca_pem = None
    if ns.ca_cert:
        try:
            ca_pem = Path(ns.ca_cert).read_text()
        except OSError as exc:
            raise PintheskyError(f"--ca-cert {ns.ca_cert}: {exc.strerror}") from None
    thing = ns.thing or before.get("thing") or _default_thing(pi["hostname"])
    if not THING_NAME.fullmatch(thing):
        raise PintheskyError(f"--thing {thing!r}: use 1-128 of A-Z a-z 0-9 : _ -")
    session = _session(region)
    progress.detail(f"{pi['model'] or 'not a Raspberry Pi'}, {pi['os']}, Python {pi['python']}")
    # The workstation's AWS credentials work (or fail in one line) before the Pi is touched.
    account = session.client("sts").get_caller_identity()["Account"]
    bucket = ns.bucket or before.get("bucket") or f"pinthesky-{account}-{region}"
    if not BUCKET_NAME.fullmatch(bucket):
        raise PintheskyError(f"--bucket {bucket!r}: not a valid S3 bucket name")
    log_group = (ns.log_group or DEFAULT_LOG_GROUP) if ns.with_cloudwatch else None
    log_group = log_group or before.get("log_group")
    names = Names(thing=thing, bucket=bucket, region=region, log_group=log_group)

    progress.step("the Pi: service user, directories, private key")
    csr = remote.call("prepare", {"thing": thing}, progress.on_event)["csr"]
    progress.step(f"AWS ({region}): thing, certificate, policies, role alias, bucket")
    cloud = _provisioner(session, names, progress).install(csr)
    progress.step(f"AWS ({region}): alerts and the bucket's lifecycle")
    alerts = _alerts(session, region, bucket, progress).apply(options, also=(thing,))
    progress.step("building the pinthesky package")
    wheel_name, wheel = build_wheel()
    args = {
        "thing": thing,
        "bucket": bucket,
        "region": region,
        "log_group": log_group,
        "certificate": cloud.certificate_pem,
        "data_endpoint": cloud.data_endpoint,
        "credentials_endpoint": cloud.credentials_endpoint,
        "role_alias": cloud.role_alias,
        "wheel_name": wheel_name,
        "wheel": base64.b64encode(wheel).decode(),
        "units": unit_texts(),
        "ca_pem": ca_pem,
        "switches": switches,
    }
    installed = remote.call("install", args, progress.on_event)
    report = _healthy(ns, remote, progress)
    if ns.json:
        out.write(
            json.dumps(
                {
                    "thing": thing,
                    "names": vars(names),
                    "health": report,
                    "alerts": vars(alerts),
                    "password": installed["password"],
                    "access": installed["access"],
                }
            )
            + "\n"
        )
        return 0
    made = ", ".join(cloud.created + alerts.done) or "nothing new"
    out.write(
        f"pinthesky {installed['version']} is running on {ns.host} as thing {thing} "
        f"(region {region}, bucket {bucket}); created in AWS: {made}\n"
    )
    for note in alerts.notes:
        out.write(f"note: {note}\n")
    _tell_access(out, ns.host, installed)
    return 0


def install_local(
    ns: argparse.Namespace, switches: dict[str, Any], out: TextIO, progress: Progress
) -> int:
    """A camera without AWS: no AWS call from here, no certificate, no sidecar on the Pi."""
    for flag, given in (
        ("--thing", ns.thing), ("--bucket", ns.bucket), ("--region", ns.region),
        ("--with-cloudwatch", ns.with_cloudwatch), ("--ca-cert", ns.ca_cert),
        ("--email", ns.email), ("--sms", ns.sms), ("--https", ns.https),
        ("--offline-after", ns.offline_after), ("--retention-days", ns.retention_days),
        ("--log-group", ns.log_group),
    ):  # fmt: skip
        if given:
            raise PintheskyError(f"{flag} is for a cloud camera: leave it out with --local")
    remote = _remote(ns)
    progress.step(f"connecting to {ns.host}")
    pi = remote.call("probe")
    thing = (pi["installed"] or {}).get("thing")
    if thing:
        raise PintheskyError(
            f"{ns.host} is a cloud camera (thing {thing}): upgrade it with `pitsctl install "
            f"--host {ns.host}`, or `pitsctl remove --host {ns.host} --cloud` first"
        )
    progress.detail(f"{pi['model'] or 'not a Raspberry Pi'}, {pi['os']}, Python {pi['python']}")
    progress.step("building the pinthesky package")
    wheel_name, wheel = build_wheel()
    args = {
        "local": True,
        "wheel_name": wheel_name,
        "wheel": base64.b64encode(wheel).decode(),
        "units": {"pinthesky": unit_texts()["pinthesky"]},
        "switches": switches,
    }
    installed = remote.call("install", args, progress.on_event)
    report = _healthy(ns, remote, progress)
    if ns.json:
        out.write(json.dumps({"local": True, "health": report, **installed}) + "\n")
        return 0
    out.write(f"pinthesky {installed['version']} is running on {ns.host}, without AWS\n")
    _tell_access(out, ns.host, installed)
    return 0


def set_switches(ns: argparse.Namespace, out: TextIO, progress: Progress) -> int:
    """The page, RTSP and MQTT on an installed camera, then its daemon restarted."""
    switches = read_switches(ns)
    if not switches:
        raise PintheskyError(
            "nothing to set: give --page, --rtsp, --mqtt-host (and its options) or --new-password"
        )
    remote = _remote(ns)
    progress.step(f"setting {', '.join(sorted(switches))} on {ns.host}")
    done = remote.call("configure", {"switches": switches}, progress.on_event)
    report = _healthy(ns, remote, progress)
    if ns.json:
        out.write(json.dumps({"health": report, **done}) + "\n")
        return 0
    out.write(f"pinthesky on {ns.host} is running with the new settings\n")
    _tell_access(out, ns.host, done)
    return 0


def _healthy(ns: argparse.Namespace, remote: Any, progress: Progress) -> dict[str, Any]:
    """The daemon's answer to a health request, with every service running and the camera
    recording; else one line saying what to look at."""
    progress.step("waiting for the camera's health report")
    health_id = f"pitsctl-{uuid.uuid4().hex[:12]}"
    answer = remote.call("health", {"health_id": health_id, "timeout": ns.health_timeout})
    progress.end()
    report, services = answer["report"], answer["services"]
    down = [unit for unit, state in services.items() if state != "active"]
    if down or not report.get("recording_status"):
        raise PintheskyError(
            f"installed, but not healthy yet: services {services}, camera recording "
            f"{report.get('recording_status')}; see `pitsctl view --host {ns.host}` and "
            "`journalctl -u pinthesky` on the Pi"
        )
    checked: dict[str, Any] = report
    return checked


def _address(host: str, hostname: str) -> str:
    """How the workstation names the Pi: the ssh address when it is a name with a domain or
    an IP address, else the Pi's own host name on mDNS (``name.local``)."""
    address = host.rpartition("@")[2]
    if "." in address or ":" in address:
        return f"[{address}]" if ":" in address else address
    return f"{hostname}.local"


def _tell_access(out: TextIO, host: str, done: dict[str, Any]) -> None:
    ways = done["access"]
    address = _address(host, ways["hostname"])
    password = done.get("password")
    if ways["page"]:
        out.write(f"page: http://{address}:{ways['page']}/\n")
    if ways["rtsp"]:
        out.write(f"RTSP: rtsp://{address}:{ways['rtsp']}/live\n")
    if password:
        out.write(
            f"password (any user name): {password}\n"
            f"  shown this once; `pitsctl set --host {host} --new-password` makes a new one\n"
        )
    elif ways["page"] or ways["rtsp"]:
        out.write(
            f"password: the one you have (`pitsctl set --host {host} --new-password` makes "
            "a new one)\n"
        )
    if ways["mqtt"]:
        port = f":{ways['mqtt_port']}" if ways.get("mqtt_port") else ""
        out.write(f"Home Assistant: MQTT discovery through {ways['mqtt']}{port}\n")
    if (ways["page"] or ways["rtsp"]) and not done.get("announced"):
        out.write("note: no Avahi on the Pi: the page and RTSP are not announced by mDNS\n")


def read_switches(ns: argparse.Namespace) -> dict[str, Any]:
    """The page, RTSP and MQTT switches given, checked here (one line each), with the files
    they name read here: the password and the CA go to the Pi over ssh, never on a command
    line there."""
    from pinthesky.settings import OPTION_BY_KEY

    switches: dict[str, Any] = {}
    for name in ("page", "rtsp"):
        value = getattr(ns, name, None)
        if value is None:
            continue
        value = value.strip().lower()
        if value not in ("on", "off") and not (value.isdigit() and 1024 <= int(value) <= 65535):
            raise PintheskyError(f"--{name} {value!r}: on, off or a port from 1024 to 65535")
        switches[name] = value if value in ("on", "off") else int(value)
    if getattr(ns, "new_password", False):
        switches["new_password"] = True
    mqtt: dict[str, Any] = {}
    if ns.mqtt_host is not None:
        if ns.mqtt_host.strip().lower() == "off":
            mqtt["host"] = None
        else:
            mqtt["host"] = _checked("mqtt.host", "--mqtt-host", ns.mqtt_host, OPTION_BY_KEY)
    if ns.mqtt_port is not None:
        mqtt["port"] = _checked("mqtt.port", "--mqtt-port", ns.mqtt_port, OPTION_BY_KEY)
    if ns.mqtt_username is not None:
        mqtt["username"] = _checked(
            "mqtt.username", "--mqtt-username", ns.mqtt_username, OPTION_BY_KEY
        )
    if ns.mqtt_tls is not None:
        mqtt["tls"] = ns.mqtt_tls
    if ns.mqtt_password_file is not None:
        lines = _read_file("--mqtt-password-file", ns.mqtt_password_file).splitlines()
        if not lines or not lines[0].strip():
            raise PintheskyError(f"--mqtt-password-file {ns.mqtt_password_file}: it is empty")
        mqtt["password"] = lines[0].strip()
    if ns.mqtt_ca_file is not None:
        pem = _read_file("--mqtt-ca-file", ns.mqtt_ca_file)
        if "-----BEGIN CERTIFICATE-----" not in pem:
            raise PintheskyError(f"--mqtt-ca-file {ns.mqtt_ca_file}: not a PEM certificate")
        mqtt["ca_pem"] = pem
    if mqtt:
        switches["mqtt"] = mqtt
    return switches


def _checked(key: str, flag: str, value: str, options: dict[str, Any]) -> Any:
    try:
        return options[key].parse(value)
    except ValueError as exc:
        raise PintheskyError(f"{flag} {value!r}: {exc}") from None


def _read_file(flag: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PintheskyError(f"{flag} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def view(ns: argparse.Namespace, out: TextIO, progress: Progress) -> int:
    from pinthesky.installer.provision import Names

    progress.step(f"looking at {ns.host}")
    pi = _remote(ns).call("view")
    progress.end()
    cloud: dict[str, Any] = {}
    ident = pi["installed"]
    if ident and ident.get("thing") and ident.get("region"):
        names = Names(
            thing=ident["thing"],
            bucket=ident.get("bucket") or "",
            region=ident["region"],
            log_group=ident.get("log_group"),
        )
        session = _session(ident["region"])
        cloud = _provisioner(session, names).view()
        cloud["alerts"] = _alerts(session, names.region, names.bucket or None).view(names.thing)
    if ns.json:
        out.write(json.dumps({"pi": pi, "cloud": cloud}) + "\n")
        return 0
    out.write(_describe(ns.host, pi, cloud))
    return 0


def _describe(host: str, pi: dict[str, Any], cloud: dict[str, Any]) -> str:
    lines = [f"{host}: {pi['model'] or 'not a Raspberry Pi'}, {pi['os']}, Python {pi['python']}"]
    ident = pi["installed"]
    if not ident:
        return "\n".join([*lines, "pinthesky is not installed"]) + "\n"
    if ident.get("thing"):
        lines.append(
            f"installed: pinthesky {pi['version'] or '(missing)'}, thing {ident['thing']}, "
            f"region {ident['region']}, bucket {ident['bucket']}"
            + (f", log group {ident['log_group']}" if ident.get("log_group") else "")
        )
    else:
        lines.append(f"installed: pinthesky {pi['version'] or '(missing)'}, without AWS")
    ways = pi.get("access")
    if ways:
        address = _address(host, ways["hostname"])
        on = [f"page http://{address}:{ways['page']}/" if ways["page"] else "no page"]
        on.append(f"RTSP rtsp://{address}:{ways['rtsp']}/live" if ways["rtsp"] else "no RTSP")
        on.append(f"Home Assistant through {ways['mqtt']}" if ways["mqtt"] else "no MQTT")
        lines.append("on the network: " + ", ".join(on))
    lines.append("services: " + ", ".join(f"{u} {s}" for u, s in pi["services"].items()))
    if pi.get("model"):
        from pinthesky.installer import onpi

        version = pi.get("picamera2")
        lines.append(
            f"camera stack: picamera2 {version or '(missing)'}"
            + (
                f": pinthesky needs {onpi.MIN_PICAMERA2} or later (pitsctl install upgrades it)"
                if onpi.too_old(version)
                else ""
            )
        )
    h = pi["health"]
    if h:
        queue = h.get("upload_queue", {})
        lines.append(
            f"health ({h['age_s']} s ago): recording {h.get('recording_status')}, "
            f"{h.get('motion_captured')} clips since start, up {h.get('up_time')} s, "
            f"CPU {h.get('cpu_used')} %, memory available {h.get('mem_avail', 0) // 1024} MB, "
            f"disk free {h.get('disk_free', 0) // 2**20} MB"
        )
        lines.append(
            f"upload queue: {queue.get('clips', '?')} files, "
            f"{queue.get('bytes', 0) / 1e6:.1f} MB waiting"
        )
    else:
        lines.append("health: no report yet")
    if cloud:
        state = ", ".join(
            f"{k} {'yes' if v is True else 'no' if v is False else v}"
            for k, v in cloud.items()
            if k not in ("certificates", "alerts")
        )
        lines.append(f"cloud: {state}, certificates {len(cloud.get('certificates', []))}")
        if "alerts" in cloud:
            lines.append(_describe_alerts(cloud["alerts"]))
    return "\n".join(lines) + "\n"


def _describe_alerts(a: dict[str, Any]) -> str:
    subs = ", ".join(
        f"{s['protocol']} {s['endpoint']}{'' if s['confirmed'] else ' (unconfirmed)'}"
        for s in a.get("subscriptions", [])
    )
    motion = f"motion to {subs}" if a.get("topic") and a.get("motion_rule") else "no motion alerts"
    offline = (
        f"offline after {a['offline_after']} min" if a.get("offline_after") else "no offline alert"
    )
    keep = (
        f"bucket keeps clips {a['retention_days']} days"
        if a.get("retention_days")
        else "bucket keeps clips forever"
    )
    if not a.get("abort_incomplete_uploads"):
        keep += ", incomplete uploads not cleaned"
    return f"alerts: {motion}; {offline}; {keep}"


def remove(ns: argparse.Namespace, out: TextIO, progress: Progress) -> int:
    from pinthesky.installer.provision import Names

    ident: dict[str, Any] = {}
    on_pi: dict[str, Any] = {}
    if ns.host:
        remote = _remote(ns)
        progress.step(f"connecting to {ns.host}")
        ident = remote.call("probe")["installed"] or {}
        progress.step(f"removing pinthesky from {ns.host}")
        on_pi = remote.call("remove", {"keep_clips": ns.keep_clips}, progress.on_event)
    removal = None
    if ns.cloud:
        thing = ns.thing or ident.get("thing")
        region = ns.region or ident.get("region") or _session(None).region_name
        if not thing or not region:
            raise PintheskyError(
                "--cloud: which camera? pass --thing (and --region) for one that is not on "
                "the Pi any more"
            )
        names = Names(
            thing=thing,
            bucket=ns.bucket or ident.get("bucket") or "",
            region=region,
            log_group=ns.log_group or ident.get("log_group"),
        )
        progress.step(f"removing the AWS resources of {thing} ({region})")
        session = _session(region)
        removal = _provisioner(session, names, progress).remove()
        forgotten = _alerts(session, region, names.bucket or None).forget(thing)
        removal.removed += forgotten.done
        removal.kept += forgotten.notes
    progress.end()
    result = {
        "pi": on_pi,
        "cloud": vars(removal) if removal is not None else None,
    }
    if ns.json:
        out.write(json.dumps(result) + "\n")
        return 0
    if on_pi:
        out.write(f"removed from {ns.host}: {', '.join(on_pi['removed']) or 'nothing'}\n")
        for kept in on_pi["kept"]:
            out.write(f"kept on {ns.host}: {kept}\n")
    if removal is not None:
        out.write(f"removed from AWS: {', '.join(removal.removed) or 'nothing'}\n")
        for kept in removal.kept:
            out.write(f"kept in AWS: {kept}\n")
    return 0


def _alerts(session: Any, region: str, bucket: str | None, progress: Progress | None = None) -> Any:
    from pinthesky.installer.alerts import Alerts

    return Alerts(session, region, bucket, progress=progress.detail if progress else None)


def _alert_options(ns: argparse.Namespace) -> Any:
    from pinthesky.installer.alerts import AlertOptions, local_zone

    return AlertOptions(
        emails=tuple(ns.email),
        sms=ns.sms,
        https=ns.https,
        offline_after=ns.offline_after,
        retention_days=ns.retention_days,
        off=getattr(ns, "off", False),
        zone=local_zone(),
    )


def alerts(ns: argparse.Namespace, out: TextIO, progress: Progress) -> int:
    """Set up, change or remove the alerts (cloud only: no Pi is touched)."""
    options = _alert_options(ns)
    options.check()  # a mistyped option is one line before AWS credentials are looked for
    session = _session(ns.region)
    region = ns.region or session.region_name
    if not region:
        raise PintheskyError("no AWS region: pass --region, or set one in your AWS config")
    account = session.client("sts").get_caller_identity()["Account"]
    bucket = ns.bucket or f"pinthesky-{account}-{region}"
    if not BUCKET_NAME.fullmatch(bucket):
        raise PintheskyError(f"--bucket {bucket!r}: not a valid S3 bucket name")
    progress.step(f"AWS ({region}): alerts and the lifecycle of bucket {bucket}")
    cloud = _alerts(session, region, bucket, progress)
    changes = cloud.apply(options)
    state = cloud.view()
    progress.end()
    if ns.json:
        out.write(json.dumps({"changed": changes.done, "notes": changes.notes, "alerts": state}))
        out.write("\n")
        return 0
    out.write(f"changed in AWS: {', '.join(changes.done) or 'nothing'}\n")
    for note in changes.notes:
        out.write(f"note: {note}\n")
    out.write(_describe_alerts(state) + "\n")
    return 0


def add_alert_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--email",
        action="append",
        default=[],
        metavar="ADDR",
        help="tell this address of motion (repeat for more; the address confirms first)",
    )
    p.add_argument("--sms", metavar="NUMBER", help="text this number, e.g. +4915123456789")
    p.add_argument("--https", metavar="URL", help="post alerts to this https:// endpoint")
    p.add_argument(
        "--offline-after",
        type=int,
        metavar="MIN",
        help="also tell when a camera has been offline this many minutes (0: off)",
    )
    p.add_argument(
        "--retention-days",
        type=int,
        metavar="N",
        help="the bucket deletes clips and pictures after N days (0: keep them)",
    )


def add_switch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--page", metavar="on|off|PORT", help="the camera's page (on: port 8080)")
    p.add_argument("--rtsp", metavar="on|off|PORT", help="RTSP out (on: port 8554)")
    p.add_argument(
        "--mqtt-host",
        metavar="HOST|off",
        help="Home Assistant's MQTT broker on the home network (off: no MQTT)",
    )
    p.add_argument("--mqtt-port", metavar="PORT", help="its port (1883, or 8883 with TLS)")
    p.add_argument("--mqtt-username", metavar="USER", help="the camera's user on the broker")
    p.add_argument(
        "--mqtt-password-file",
        metavar="FILE",
        help="a file here whose first line is that user's password (copied to the Pi)",
    )
    p.add_argument(
        "--mqtt-tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TLS to the broker",
    )
    p.add_argument(
        "--mqtt-ca-file", metavar="FILE", help="the CA of the broker's certificate (copied)"
    )


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG, description="Install, inspect and remove pinthesky cameras over ssh."
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    def common(p: argparse.ArgumentParser, host_required: bool = True) -> None:
        p.add_argument(
            "--host",
            required=host_required,
            help="the Pi, as for ssh: user@address or a Host of your ssh config",
        )
        p.add_argument(
            "-o",
            "--ssh-option",
            action="append",
            default=[],
            metavar="OPTION",
            help="an ssh option (as ssh -o), e.g. Port=2222 or IdentityFile=~/.ssh/pi",
        )
        p.add_argument("--region", help="AWS region (default: the installed camera's, or yours)")
        p.add_argument("--json", action="store_true", help="print the result as JSON")
        # Tests only: install into this directory of the target instead of /, start the
        # services without systemd.
        p.add_argument("--target-root", default="/", help=argparse.SUPPRESS)

    p = sub.add_parser("install", help="install or upgrade a camera (and its AWS resources)")
    common(p)
    p.add_argument("--thing", help="AWS IoT thing name (default: the Pi's host name)")
    p.add_argument("--bucket", help="S3 bucket for clips (default: pinthesky-ACCOUNT-REGION)")
    p.add_argument(
        "--with-cloudwatch", action="store_true", help="send logs and metrics to CloudWatch"
    )
    p.add_argument("--log-group", help=f"CloudWatch log group (default: {DEFAULT_LOG_GROUP})")
    p.add_argument("--ca-cert", help="AWS IoT's root CA (default: the Pi's own Amazon Root CA 1)")
    p.add_argument(
        "--health-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for the daemon's first health report",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="a camera without AWS: page and RTSP on, a password made on the Pi, no AWS call",
    )
    add_switch_options(p)
    add_alert_options(p)
    p.set_defaults(run=install)

    p = sub.add_parser("set", help="turn the page, RTSP and Home Assistant's MQTT on or off")
    common(p)
    add_switch_options(p)
    p.add_argument(
        "--new-password",
        action="store_true",
        help="make a new password for the page and RTSP on the Pi (shown once)",
    )
    p.add_argument(
        "--health-timeout", type=float, default=120.0, metavar="S", help=argparse.SUPPRESS
    )
    p.set_defaults(run=set_switches)

    p = sub.add_parser("view", help="what is installed, its services, health and AWS resources")
    common(p)
    p.set_defaults(run=view)

    p = sub.add_parser("remove", help="remove a camera from the Pi (and with --cloud from AWS)")
    common(p, host_required=False)
    p.add_argument("--keep-clips", action="store_true", help="leave the clips on the Pi")
    p.add_argument("--cloud", action="store_true", help="also remove the camera's AWS resources")
    p.add_argument("--thing", help="with --cloud and no --host: the camera to remove")
    p.add_argument("--bucket", help="with --cloud and no --host: its bucket (removed if empty)")
    p.add_argument("--log-group", help="with --cloud and no --host: its log group")
    p.set_defaults(run=remove)

    p = sub.add_parser(
        "alerts", help="who is told of motion and of a camera offline; how long clips are kept"
    )
    p.add_argument("--region", help="AWS region (default: yours)")
    p.add_argument("--bucket", help="the cameras' bucket (default: pinthesky-ACCOUNT-REGION)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_alert_options(p)
    p.add_argument("--off", action="store_true", help="remove every alert and lifecycle rule")
    p.set_defaults(run=alerts)
    return parser


def _hint(exc: Exception) -> str:
    """What to do about an AWS error from this workstation's own setup."""
    from botocore.exceptions import NoCredentialsError, NoRegionError

    if isinstance(exc, NoCredentialsError):
        return ": run `aws configure` (or set AWS_PROFILE) on this computer"
    if isinstance(exc, NoRegionError):
        return ": pass --region, or run `aws configure`"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "remove" and not ns.host and not (ns.cloud and ns.thing):
        sys.stderr.write(f"{PROG}: remove needs --host, or --cloud with --thing\n")
        return 2
    progress = Progress()
    try:
        code: int = ns.run(ns, sys.stdout, progress)
        return code
    except PintheskyError as exc:
        progress.end(ok=False)
        sys.stderr.write(f"{PROG}: {exc}\n")
        return 1
    except Exception as exc:
        if not type(exc).__module__.startswith("botocore"):
            raise
        progress.end(ok=False)  # no credentials, no network, a refusal outside provision
        sys.stderr.write(f"{PROG}: AWS: {' '.join(str(exc).split())}{_hint(exc)}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted; run the same command again to finish\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
