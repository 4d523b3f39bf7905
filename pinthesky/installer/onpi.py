"""The Pi side of ``pitsctl``: what it runs on the camera, as root, with the Pi's own Python.

This module uses the standard library only and imports nothing from pinthesky, because it
runs before pinthesky is installed there. ``pitsctl`` sends its source and one request on
ssh's standard input (one JSON line: ``{"source", "action", "root", "args"}``, see
``BOOTSTRAP``); nothing is copied to the Pi beforehand and nothing is left behind. The
answer is JSON lines on standard output: ``{"step": ...}`` and ``{"progress": ...}`` while it
works (pip can take minutes on a Pi Zero), then one ``{"result": ...}`` or ``{"error": ...}``.

Every action can be repeated: each step looks at what is there and does only what is
missing, so a run cut short by a lost connection is finished by running it again.

A camera is a cloud one (AWS IoT, both services) or, installed with ``local``, one that
touches no AWS service: the daemon alone, with its page and RTSP on, a password made here. The
same settings file serves both, so a later cloud install keeps the local camera's settings.
``switches`` (either install, or ``configure`` on an installed camera) turn the page, RTSP and
Home Assistant's MQTT on or off; the page and RTSP are announced on the network through the
Pi's own mDNS responder (Avahi, where it is installed).

``root`` relocates every file into a directory: the installer's tests install into a target
root on a machine where systemd does not run. There, units are enabled with
``systemctl --root`` and the services are started by ``Direct``, which runs each unit's
``ExecStart`` as the unit's user, in place of systemd.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

USER = "pinthesky"
UNITS = ("pinthesky", "pinthesky-iot")
VENV = "/opt/pinthesky/venv"
OPT = "/opt/pinthesky"
ETC = "/etc/pinthesky"
CONFIG = f"{ETC}/pinthesky.toml"
ENV_FILE = f"{ETC}/pinthesky.env"
CERTS = f"{ETC}/certs"
KEY = f"{CERTS}/thing.key"
CSR = f"{CERTS}/thing.csr"
CERT = f"{CERTS}/thing.cert.pem"
CA = f"{CERTS}/AmazonRootCA1.pem"
SYSTEM_CA = "/etc/ssl/certs/Amazon_Root_CA_1.pem"
STATE = "/var/lib/pinthesky"
CLIPS = f"{STATE}/motion_videos"
STILLS = f"{STATE}/capture_images"
HEALTH_FILE = f"{STATE}/health.json"
EVENT_FILES = {
    "event_input": f"{STATE}/events/input.json",
    "event_output": f"{STATE}/events/output.json",
    "configure_input": f"{STATE}/configuration/input.json",
    "configure_output": f"{STATE}/configuration/output.json",
}
MQTT_PASSWORD = f"{ETC}/mqtt-password"
MQTT_CA = f"{ETC}/mqtt-ca.pem"
PAGE_PORT, RTSP_PORT = 8080, 8554
"""Where ``--page on`` and ``--rtsp on`` put them (above 1023: the service has no capability to
bind lower ports)."""
AVAHI_DIR = "/etc/avahi/services"
AVAHI_SERVICE = f"{AVAHI_DIR}/pinthesky.service"
UNIT_DIR = "/etc/systemd/system"
POLKIT_RULE = "/etc/polkit-1/rules.d/50-pinthesky.rules"
SYSTEM_PYTHON = "/usr/bin/python3"
MIN_PICAMERA2 = "0.3.30"
"""The oldest picamera2 the daemon runs on (pinthesky.camera.stack.MIN_PICAMERA2; this module
imports nothing from pinthesky)."""
LEAN_PICAMERA2 = "0.3.34"
"""From this version ``import picamera2`` no longer loads PyAV (about 25 MB): an older one is
upgraded when the archive has better, though the daemon runs on it."""
CAMERA_PACKAGES = ("python3-picamera2", "python3-libcamera")
"""picamera2 and the libcamera bindings it is built against: upgraded together."""
FROM_APT = ("numpy", "av", "picamera2")
"""Compiled packages a Pi takes from apt (numpy from Debian, av and picamera2 Raspberry Pi's
own builds): pip keeps the system's copy and never puts a second one into the virtualenv (a
PyPI ``av`` shadowing Raspberry Pi's breaks picamera2's encoders: picamera2 issues 1080, 1202)."""
PIP_FLAGS = ("--progress-bar", "off", "--upgrade", "--only-binary=:all:")
"""Wheels only: on a Pi a missing wheel is one line naming the package, never a compile."""

# The console's reboot and shutdown jobs run `systemctl reboot|poweroff` as the service user.
POLKIT_TEXT = """// Installed by pitsctl: the pinthesky service user may reboot and power off the
// camera (the console's reboot and shutdown jobs), and nothing else.
polkit.addRule(function (action, subject) {
    if (subject.user == "pinthesky" &&
        (action.id == "org.freedesktop.login1.reboot" ||
         action.id == "org.freedesktop.login1.reboot-multiple-sessions" ||
         action.id == "org.freedesktop.login1.power-off" ||
         action.id == "org.freedesktop.login1.power-off-multiple-sessions")) {
        return polkit.Result.YES;
    }
});
"""

BOOTSTRAP = (
    "import json,sys;r=json.loads(sys.stdin.readline());"
    'exec(compile(r.pop("source"),"pitsctl-onpi","exec"),{"__name__":"__pitsctl__","REQUEST":r})'
)
"""The one-liner ssh runs: read the request, run this module's source with it."""


class Refusal(Exception):
    """A step that cannot be done; the message is one line saying what to do."""


def emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def run(*argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A command; a failure is a ``Refusal`` naming it, with the last line it printed."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    except OSError as exc:
        raise Refusal(f"{argv[0]}: {exc.strerror}") from None
    if check and done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise Refusal(f"{' '.join(argv[:3])} failed: {lines[-1] if lines else done.returncode}")
    return done


class Host:
    """Paths and accounts on the camera, relocated under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = Path(root or "/")
        self.relocated = self.root != Path("/")
        self.services: Systemd | Direct = Direct(self) if self.relocated else Systemd()

    def path(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def _prefix(self) -> list[str]:
        return ["--prefix", str(self.root)] if self.relocated else []

    def account(self) -> tuple[int, int] | None:
        """The service user's uid and gid, from the target's own passwd file."""
        with contextlib.suppress(OSError):
            for line in self.path("/etc/passwd").read_text().splitlines():
                fields = line.split(":")
                if len(fields) > 3 and fields[0] == USER:
                    return int(fields[2]), int(fields[3])
        return None

    def ensure_account(self) -> tuple[int, int]:
        if self.account() is None:
            run(
                "useradd",
                *self._prefix(),
                "--system",
                "--user-group",
                "--home-dir",
                STATE,
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "pinthesky camera",
                USER,
            )
        account = self.account()
        if account is None:
            raise Refusal(f"useradd did not create the user {USER}")
        return account

    def remove_account(self) -> bool:
        removed = False
        if self.account() is not None:
            run("userdel", *self._prefix(), USER)
            removed = True
        # userdel keeps the user's group where login.defs does not say USERGROUPS_ENAB.
        groups = self.path("/etc/group").read_text().splitlines()
        if any(line.startswith(f"{USER}:") for line in groups):
            run("groupdel", *self._prefix(), USER)
            removed = True
        return removed


def owned_dir(path: Path, mode: int, owner: tuple[int, int] | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)


def write_file(path: Path, data: bytes, mode: int, owner: tuple[int, int] | None = None) -> bool:
    """Atomically (temporary name, fsync, rename) with its mode and owner; False when the
    file already held exactly this."""
    with contextlib.suppress(OSError):
        st = path.stat()
        same_owner = owner is None or (st.st_uid, st.st_gid) == owner
        if path.read_bytes() == data and (st.st_mode & 0o7777) == mode and same_owner:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            os.fchmod(fh.fileno(), mode)
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # nothing half-written is left behind
        raise
    return True


def remove_path(path: Path) -> bool:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if path.is_dir():
        shutil.rmtree(path)
        return True
    return False


# -- TOML --------------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string uses JSON's escapes


def merge_toml(text: str, values: dict[str, dict[str, Any]]) -> str:
    """``text`` with ``values`` (section -> key -> value) set, line by line: every other
    line, the owner's own settings and comments, stays as it was."""
    pending = {section: dict(keys) for section, keys in values.items()}
    out: list[str] = []
    section: str | None = None

    def close(name: str | None) -> None:
        keys = pending.pop(name, {}) if name is not None else {}
        at = len(out)
        while at > 0 and not out[at - 1].strip():
            at -= 1  # before the blank lines that separate sections
        out[at:at] = [f"{k} = {toml_value(v)}" for k, v in keys.items()]

    for line in text.splitlines():
        header = re.match(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?$", line)
        if header:
            close(section)
            section = header.group(1)
            out.append(line)
            continue
        key = re.match(r"\s*([A-Za-z0-9_-]+)\s*=", line)
        if key and section in pending and key.group(1) in pending[section]:
            name = key.group(1)
            out.append(f"{name} = {toml_value(pending[section].pop(name))}")
            continue
        out.append(line)
    close(section)
    for name, keys in pending.items():
        if keys:
            out += ["", f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in keys.items())]
    return "\n".join(out).strip("\n") + "\n"


def read_config(host: Host) -> dict[str, Any] | None:
    try:
        return tomllib.loads(host.path(CONFIG).read_text())
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise Refusal(
            f"{CONFIG}: {exc}; fix it or remove it and run pitsctl install again"
        ) from None


def read_env(host: Host) -> dict[str, str]:
    out = {}
    with contextlib.suppress(OSError):
        for line in host.path(ENV_FILE).read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not name.startswith("#"):
                out[name.strip()] = value.strip()
    return out


# -- services ----------------------------------------------------------------------------------


class Systemd:
    """The services through systemd (a real camera)."""

    def install(self, units: list[str]) -> None:
        run("systemctl", "daemon-reload")
        run("systemctl", "enable", *(f"{u}.service" for u in units))
        run("systemctl", "restart", *(f"{u}.service" for u in units))

    def remove(self, units: list[str]) -> None:
        run("systemctl", "disable", "--now", *(f"{u}.service" for u in units), check=False)

    def restart(self, unit: str) -> None:
        run("systemctl", "restart", f"{unit}.service")

    def reload(self) -> None:
        run("systemctl", "daemon-reload", check=False)

    def state(self, unit: str) -> str:
        done = run("systemctl", "is-active", f"{unit}.service", check=False)
        return done.stdout.strip() or "unknown"

    def log_tail(self, unit: str, lines: int = 15) -> list[str]:
        done = run(
            "journalctl", "-u", f"{unit}.service", "-n", str(lines), "--no-pager", "-o", "cat",
            check=False,
        )  # fmt: skip
        return done.stdout.splitlines()


class Direct:
    """The services without systemd, for an install into a target root: each unit's
    ``ExecStart`` is run as its ``User=`` (``setpriv``), its paths relocated under the root,
    with a pid file in ``/run/pinthesky`` and its output in ``/var/log/pinthesky``."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def _unit(self, unit: str) -> dict[str, str]:
        fields: dict[str, str] = {}
        text = self.host.path(f"{UNIT_DIR}/{unit}.service").read_text()
        for line in text.splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                fields.setdefault(name.strip(), value.strip())
        return fields

    def _pidfile(self, unit: str) -> Path:
        return self.host.path(f"/run/pinthesky/{unit}.pid")

    def _log(self, unit: str) -> Path:
        return self.host.path(f"/var/log/pinthesky/{unit}.log")

    def _pid(self, unit: str) -> int | None:
        try:
            pid = int(self._pidfile(unit).read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def install(self, units: list[str]) -> None:
        run("systemctl", f"--root={self.host.root}", "enable", *(f"{u}.service" for u in units))
        for unit in units:
            self._stop(unit)
            self._start(unit)

    def _start(self, unit: str) -> None:
        fields = self._unit(unit)
        account = self.host.account()
        if account is None:
            raise Refusal(f"{unit}: the user {USER} does not exist")
        argv = [self._relocate(a) for a in fields["ExecStart"].split()]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.host.path(STATE))}
        env_file = fields.get("EnvironmentFile", "").lstrip("-")
        if env_file:
            env.update(read_env(self.host))
        for path in (self._pidfile(unit), self._log(unit)):
            path.parent.mkdir(parents=True, exist_ok=True)
        with self._log(unit).open("ab") as log:
            child = subprocess.Popen(
                [
                    "setpriv",
                    f"--reuid={account[0]}",
                    f"--regid={account[1]}",
                    "--clear-groups",
                    *argv,
                ],
                cwd=self.host.path(fields.get("WorkingDirectory", STATE)),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._pidfile(unit).write_text(str(child.pid))

    def _relocate(self, arg: str) -> str:
        return str(self.host.path(arg)) if arg.startswith("/") else arg

    def _stop(self, unit: str) -> None:
        pid = self._pid(unit)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._pidfile(unit).unlink(missing_ok=True)

    def restart(self, unit: str) -> None:
        self._stop(unit)
        self._start(unit)

    def remove(self, units: list[str]) -> None:
        for unit in units:
            self._stop(unit)
            self._log(unit).unlink(missing_ok=True)
        for directory in ("/run/pinthesky", "/var/log/pinthesky"):
            remove_path(self.host.path(directory))
        run("systemctl", f"--root={self.host.root}", "disable", *(f"{u}.service" for u in units))

    def reload(self) -> None:
        pass

    def state(self, unit: str) -> str:
        return "active" if self._pid(unit) is not None else "inactive"

    def log_tail(self, unit: str, lines: int = 15) -> list[str]:
        with contextlib.suppress(OSError):
            return self._log(unit).read_text(errors="replace").splitlines()[-lines:]
        return []


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent to reap it has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# -- actions -----------------------------------------------------------------------------------


def pi_model() -> str | None:
    with contextlib.suppress(OSError):
        model = Path("/proc/device-tree/model").read_text().strip("\0\n ")
        if model.startswith("Raspberry Pi"):
            return model
    return None


def picamera2_version() -> str | None:
    """The system Python's picamera2 (from apt), read from its package metadata."""
    done = run(
        SYSTEM_PYTHON,
        "-c",
        "import importlib.metadata as m; print(m.version('picamera2'))",
        check=False,
        timeout=60,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def _parts(text: str) -> tuple[int, ...]:
    release = re.split(r"[-+~]", text, maxsplit=1)[0]
    return tuple(int(p) for p in re.findall(r"\d+", release)[:3])


def too_old(version: str | None, least: str = MIN_PICAMERA2) -> bool:
    return version is None or _parts(version) < _parts(least)


def installed_version(host: Host) -> str | None:
    exe = host.path(f"{VENV}/bin/pinthesky")
    if not exe.exists():
        return None
    done = run(str(exe), "--version", check=False, timeout=60)
    return done.stdout.strip() or None


def probe(host: Host, args: dict[str, Any]) -> dict[str, Any]:
    """What is on the camera: the system, and an earlier install's identity."""
    release = {}
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            name, _, value = line.partition("=")
            release[name] = value.strip('"')
    config = read_config(host)
    identity = None
    if config is not None:
        cc, storage = config.get("cloud_connection", {}), config.get("storage", {})
        identity = {
            "thing": cc.get("thing_name"),
            "bucket": storage.get("bucket_name"),
            "region": read_env(host).get("AWS_DEFAULT_REGION"),
            "log_group": config.get("cloudwatch", {}).get("log_group_name"),
        }
    return {
        "model": pi_model(),
        "os": release.get("PRETTY_NAME", "unknown"),
        "python": sys.version.split()[0],
        "hostname": os.uname().nodename,
        "installed": identity,
        "version": installed_version(host),
        "picamera2": picamera2_version(),
        "picamera2_min": MIN_PICAMERA2,
        "has_key": host.path(KEY).exists(),
    }


def prepare(host: Host, args: dict[str, Any]) -> dict[str, Any]:
    """The service user, the state directories and the camera's private key, generated here:
    it never leaves the Pi. Returns a signing request for the cloud to make a certificate."""
    thing = args["thing"]
    emit(step="user and directories")
    owner = host.ensure_account()
    owned_dir(host.path(STATE), 0o700, owner)
    owned_dir(host.path(ETC), 0o755, None)
    owned_dir(host.path(CERTS), 0o700, owner)
    key = host.path(KEY)
    if not key.exists():
        emit(step="private key (generated on the Pi, never leaves it)")
        with tempfile.TemporaryDirectory(dir=key.parent) as tmp:
            fresh = Path(tmp) / "key"
            run(
                "openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(fresh)
            )
            os.chmod(fresh, 0o600)
            os.chown(fresh, *owner)
            os.replace(fresh, key)
    os.chmod(key, 0o600)
    os.chown(key, *owner)
    csr = run("openssl", "req", "-new", "-key", str(key), "-subj", f"/CN={thing}").stdout
    write_file(host.path(CSR), csr.encode(), 0o644, owner)
    return {"csr": csr}


def _system_packages(host: Host) -> None:
    """python3-venv where the Pi's Python lacks it; on a Pi, picamera2 from apt (its libcamera
    bindings are not on PyPI), installed or brought up to ``MIN_PICAMERA2`` with the libcamera
    it is built for: an image a year old carries one whose stills or encoder fail."""
    wanted = []
    if run(SYSTEM_PYTHON, "-c", "import ensurepip, venv", check=False).returncode != 0:
        wanted.append("python3-venv")
    on_pi = pi_model() is not None
    before = picamera2_version() if on_pi else None
    if on_pi and too_old(before, LEAN_PICAMERA2):
        wanted += CAMERA_PACKAGES
    if not wanted:
        return
    emit(
        step=f"apt packages: {' '.join(wanted)}" + (f" (picamera2 was {before})" if before else "")
    )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run("apt-get", "update", "-qq", env=env)
    # install also upgrades an installed package to the archive's version.
    run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *wanted, env=env)
    after = picamera2_version() if on_pi else None
    if on_pi and too_old(after):
        raise Refusal(
            f"picamera2 {after or '(missing)'} after apt-get install; pinthesky needs "
            f"{MIN_PICAMERA2} or later: check /etc/apt/sources.list.d/raspi.list"
        )


_VERSIONS = """
import importlib.metadata as m, json, sys
found = {}
for name in sys.argv[1:]:
    try:
        dist = m.distribution(name)
    except m.PackageNotFoundError:
        continue
    found[name] = [dist.version, str(dist.locate_file(""))]
print(json.dumps(found))
"""


def installed(python: str, names: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """``{name: (version, where)}`` of the distributions ``python`` sees among ``names``."""
    done = run(python, "-c", _VERSIONS, *names)
    return {name: (v, where) for name, (v, where) in json.loads(done.stdout).items()}


def pip_prefix(python: str) -> list[str]:
    """``setarch linux32`` where a 32-bit Python runs on a 64-bit kernel (Raspberry Pi OS
    32-bit on a Pi 4 or 5 boots one): the kernel says ``aarch64``, so pip's environment
    markers would choose packages that have no 32-bit wheel."""
    done = run(
        python, "-c", "import platform, struct; print(platform.machine(), struct.calcsize('P'))"
    )
    machine, pointer = done.stdout.split()
    return ["setarch", "linux32"] if machine == "aarch64" and pointer == "4" else []


_MISSING = re.compile(r"(?:No matching distribution found for|satisfies the requirement) ([\w.-]+)")


def pip_failure(output: list[str], model: str) -> str:
    """One line for a failed pip run: the package without a wheel (and where to get it), or
    the conflict, else pip's last lines."""
    text = "\n".join(output)
    missing = _MISSING.search(text)
    if missing:
        name = missing.group(1)
        hint = f"; install python3-{name} with apt" if name in FROM_APT else ""
        return f"{name}: PyPI has no wheel of it for {model} and nothing is compiled on a Pi{hint}"
    conflict = [
        line.strip()
        for line in output
        if line.strip().startswith(("The user requested", "The conflict is caused by"))
        or " depends on " in line
    ]
    tail = conflict or [line.strip() for line in output[-4:]]
    return f"pip install failed on {model}: {' / '.join(t for t in tail if t)}"


def _virtualenv(host: Host, wheel: Path, owner: tuple[int, int]) -> None:
    venv = host.path(VENV)
    python = venv / "bin" / "python"
    if python.exists() and run(str(python), "-c", "pass", check=False).returncode != 0:
        emit(progress="the virtualenv no longer runs (Python upgraded?): making it again")
        remove_path(venv)
    if not python.exists():
        emit(step="virtualenv (with the system's picamera2)")
        run(SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv))
    # What apt gave the system stays the only copy: pinned, and an earlier install's copy in
    # the virtualenv taken out.
    from_apt = installed(SYSTEM_PYTHON, FROM_APT)
    shadows = [
        name
        for name, (_, where) in installed(str(python), tuple(from_apt)).items()
        if Path(where).resolve().is_relative_to(venv.resolve())
    ]
    if shadows:
        emit(progress=f"removing the virtualenv's own {', '.join(shadows)} (apt has them)")
        run(str(python), "-m", "pip", "uninstall", "-y", *shadows)
    machine = os.uname().machine
    model = f"{pi_model() or 'this machine'} ({machine}, Python {sys.version.split()[0]})"
    emit(step=f"pip install {wheel.name} and what it needs (minutes on a Pi Zero)")
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "from-apt.txt"
        constraints.write_text("".join(f"{n}=={v}\n" for n, (v, _) in from_apt.items()))
        pip = [*pip_prefix(str(python)), str(python), "-m", "pip", "install", *PIP_FLAGS]
        pip += ["--constraint", str(constraints)]
        for extra in ([], ["--force-reinstall", "--no-deps"]):  # same version, new code
            child = subprocess.Popen(
                [*pip, *extra, str(wheel)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )
            output: list[str] = []
            assert child.stdout is not None
            for line in child.stdout:
                output.append(line.rstrip())
                if line.startswith(("Collecting", "Installing", "Successfully")):
                    emit(progress=line.strip())
            if child.wait() != 0:
                raise Refusal(pip_failure(output, model))
    # The console's update job upgrades pinthesky as the service user, into this virtualenv.
    for directory, _, files in os.walk(host.path(OPT)):
        os.chown(directory, *owner)
        for name in files:
            os.lchown(os.path.join(directory, name), *owner)


HEADER = (
    "# pinthesky settings (pinthesky --help lists them). Written by pitsctl, which\n"
    "# sets only the keys it manages when it runs again: your own settings stay.\n"
)


def _config(host: Host, args: dict[str, Any]) -> str | None:
    """The settings file: pitsctl's keys set, everything else the owner wrote kept. Returns
    the page's password when one was made."""
    p = host.path
    local = bool(args.get("local"))
    values: dict[str, dict[str, Any]] = {
        "storage": {"combine_dir": str(p(CLIPS)), "capture_dir": str(p(STILLS))},
        "events": {name: str(p(path)) for name, path in EVENT_FILES.items()},
        "health": {"file": str(p(HEALTH_FILE))},
    }
    before, current = _read_settings(host)
    switches = dict(args.get("switches") or {})
    if local:
        # The page and RTSP are how a camera without the cloud is used: on, unless the owner
        # turned them off before.
        for name, section in (("page", "http"), ("rtsp", "rtsp")):
            if "port" not in current.get(section, {}):
                switches.setdefault(name, "on")
    else:
        values["cloud_connection"] = {
            "thing_name": args["thing"],
            "cert_path": str(p(CERT)),
            "key_path": str(p(KEY)),
            "cacert_path": str(p(CA)),
            "credentials_endpoint": args["credentials_endpoint"],
            "role_alias": args["role_alias"],
        }
        values["storage"]["bucket_name"] = args["bucket"]
        values["iot"] = {"endpoint": args["data_endpoint"]}
        if not current.get("iot", {}).get("endpoint"):
            # New in the cloud (a new camera, or a local one): the console needs a desired
            # state to edit.
            values["iot"]["seed_desired"] = True
        if args.get("log_group"):
            values["cloudwatch"] = {
                "enabled": True,
                "log_group_name": args["log_group"],
                "region_name": args["region"],
            }
    password = _switch(host, current, switches, values)
    _write_settings(host, before, values)
    if not local:
        env = f"# Written by pitsctl.\nAWS_DEFAULT_REGION={args['region']}\n"
        write_file(host.path(ENV_FILE), env.encode(), 0o644)
    return password


def _read_settings(host: Host) -> tuple[str, dict[str, Any]]:
    """The settings file's text (a header for a new one) and what it holds."""
    try:
        before = host.path(CONFIG).read_text()
    except FileNotFoundError:
        return HEADER, {}
    try:
        return before, tomllib.loads(before)
    except tomllib.TOMLDecodeError as exc:
        raise Refusal(f"{CONFIG}: {exc}; fix it or remove it and run pitsctl again") from None


def _write_settings(host: Host, before: str, values: dict[str, dict[str, Any]]) -> None:
    text = merge_toml(before, values)
    parsed = tomllib.loads(text)  # what we write must read back as what we meant
    for section, keys in values.items():
        for name, value in keys.items():
            if parsed[section][name] != value:
                raise Refusal(f"{CONFIG}: could not set {section}.{name}; check the file by hand")
    owner = host.account()
    assert owner is not None
    group_readable = (0, owner[1])  # root writes it, the service's group reads it
    write_file(host.path(CONFIG), text.encode(), 0o640, group_readable)


def _port(value: Any, current: Any, default: int) -> int:
    """``on`` (the port it has, else ``default``), ``off`` (0) or a port number."""
    if value == "off":
        return 0
    if value == "on":
        return current if isinstance(current, int) and current > 0 else default
    return int(value)


def _switch(
    host: Host,
    current: dict[str, Any],
    switches: dict[str, Any],
    values: dict[str, dict[str, Any]],
) -> str | None:
    """The page, RTSP and MQTT as ``switches`` asks, into ``values``; returns the page's
    password when one was made (the page and RTSP never run without one)."""
    http, rtsp = current.get("http", {}), current.get("rtsp", {})
    if "page" in switches:
        values.setdefault("http", {})["port"] = _port(switches["page"], http.get("port"), PAGE_PORT)
    if "rtsp" in switches:
        values.setdefault("rtsp", {})["port"] = _port(switches["rtsp"], rtsp.get("port"), RTSP_PORT)
    page_on = values.get("http", {}).get("port", http.get("port"))
    rtsp_on = values.get("rtsp", {}).get("port", rtsp.get("port"))
    password = None
    has_one = http.get("password") not in (None, "", "none")
    if switches.get("new_password") or ((page_on or rtsp_on) and not has_one):
        password = secrets.token_urlsafe(12)
        values.setdefault("http", {})["password"] = password
    mqtt = switches.get("mqtt") or {}
    if mqtt:
        owner = host.account()
        assert owner is not None
        section = values.setdefault("mqtt", {})
        for key in ("host", "port", "username", "tls"):
            if key in mqtt:
                section[key] = "none" if mqtt[key] is None else mqtt[key]
        if "password" in mqtt:
            secret = host.path(MQTT_PASSWORD)
            write_file(secret, (mqtt["password"] + "\n").encode(), 0o640, (0, owner[1]))
            section["password_file"] = str(secret)
            if current.get("mqtt", {}).get("password") not in (None, "none"):
                section["password"] = "none"  # one or the other: the file wins
        if "ca_pem" in mqtt:
            write_file(host.path(MQTT_CA), mqtt["ca_pem"].encode(), 0o644)
            section["ca_file"] = str(host.path(MQTT_CA))
    return password


def _check_settings(host: Host) -> None:
    """The installed daemon reads the settings as meant, or one line says what is wrong."""
    exe = host.path(f"{VENV}/bin/pinthesky")
    done = run(
        str(exe), "--config", str(host.path(CONFIG)), "--validate-config",
        check=False, cwd=host.path(STATE), timeout=120,
    )  # fmt: skip
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise Refusal(f"{CONFIG}: {lines[0] if lines else 'not valid'}; fix it by hand")


def access(host: Host) -> dict[str, Any]:
    """How the camera is reached on the home network, from its settings."""
    config = read_config(host) or {}
    http, rtsp, mqtt = (config.get(k, {}) for k in ("http", "rtsp", "mqtt"))
    return {
        "hostname": os.uname().nodename,
        "page": _on(http.get("port")),
        "rtsp": _on(rtsp.get("port")),
        "mqtt": None if mqtt.get("host") in (None, "none") else mqtt.get("host"),
        "mqtt_port": mqtt.get("port"),
    }


def _on(port: Any) -> int | None:
    return port if isinstance(port, int) and port > 0 else None


def announce(host: Host) -> bool:
    """The page and RTSP as mDNS services (``_http._tcp``, ``_rtsp._tcp``) through Avahi, the
    mDNS responder Raspberry Pi OS runs (it answers for ``<hostname>.local`` already); it
    reads its service directory by itself. False where Avahi is not installed."""
    directory = host.path(AVAHI_DIR)
    path = host.path(AVAHI_SERVICE)
    if not directory.is_dir():
        return False
    ways = access(host)
    services = []
    if ways["page"]:
        services.append(("_http._tcp", ways["page"], "path=/"))
    if ways["rtsp"]:
        services.append(("_rtsp._tcp", ways["rtsp"], "path=/live"))
    if not services:
        remove_path(path)
        return False
    thing = (read_config(host) or {}).get("cloud_connection", {}).get("thing_name")
    # %h is the host name, kept current by Avahi itself; a cloud camera goes by its thing.
    name = _xml(thing) if thing else "%h"
    lines = [
        '<?xml version="1.0" standalone="no"?>',
        '<!DOCTYPE service-group SYSTEM "avahi-service.dtd">',
        "<!-- Written by pitsctl: the pinthesky camera's page and RTSP stream. -->",
        "<service-group>",
        f'  <name replace-wildcards="yes">{name}</name>',
    ]
    for kind, port, txt in services:
        lines += [
            "  <service>",
            f"    <type>{kind}</type>",
            f"    <port>{port}</port>",
            f"    <txt-record>{txt}</txt-record>",
            "  </service>",
        ]
    lines.append("</service-group>")
    write_file(path, ("\n".join(lines) + "\n").encode(), 0o644)
    return True


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def install(host: Host, args: dict[str, Any]) -> dict[str, Any]:
    """Everything on the Pi, given the cloud's answer (none for a local camera); then (re)start
    the services."""
    local = bool(args.get("local"))
    owner = host.ensure_account()
    for directory, mode in ((STATE, 0o700), (ETC, 0o755)):
        owned_dir(host.path(directory), mode, owner if directory == STATE else None)
    _system_packages(host)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = Path(tmp) / args["wheel_name"]
        wheel.write_bytes(base64.b64decode(args["wheel"]))
        _virtualenv(host, wheel, owner)
    emit(step="settings and the four files" if local else "certificates, settings, the four files")
    if not local:
        write_file(host.path(CERT), args["certificate"].encode(), 0o644, owner)
        try:
            ca_pem = args.get("ca_pem") or Path(SYSTEM_CA).read_text()
        except OSError as exc:
            raise Refusal(
                f"{SYSTEM_CA}: {exc.strerror}; install the ca-certificates package or pass "
                "--ca-cert"
            ) from None
        write_file(host.path(CA), ca_pem.encode(), 0o644, owner)
    password = _config(host, args)
    _check_settings(host)
    for directory in (CLIPS, STILLS, f"{STATE}/events", f"{STATE}/configuration"):
        owned_dir(host.path(directory), 0o700, owner)
    for path in EVENT_FILES.values():
        target = host.path(path)
        # Created here, owned by the service user: a file the sidecar made as root would be
        # unreadable to the daemon.
        if not target.exists():
            write_file(target, b"", 0o600, owner)
    emit(step="systemd units")
    for unit, text in args["units"].items():
        write_file(host.path(f"{UNIT_DIR}/{unit}.service"), text.encode(), 0o644)
    if not local and host.path("/etc/polkit-1").is_dir():
        write_file(host.path(POLKIT_RULE), POLKIT_TEXT.encode(), 0o644)
    announced = announce(host)
    emit(step=f"starting {' and '.join(args['units'])}")
    host.services.install(list(args["units"]))
    return {
        "version": installed_version(host),
        "password": password,
        "access": access(host),
        "announced": announced,
    }


def configure(host: Host, args: dict[str, Any]) -> dict[str, Any]:
    """Turn the page, RTSP and MQTT on or off on an installed camera, then restart the daemon."""
    if read_config(host) is None or installed_version(host) is None:
        raise Refusal("pinthesky is not installed there: run pitsctl install first")
    before, current = _read_settings(host)
    values: dict[str, dict[str, Any]] = {}
    password = _switch(host, current, dict(args.get("switches") or {}), values)
    _write_settings(host, before, values)
    _check_settings(host)
    announced = announce(host)
    emit(step="restarting pinthesky")
    host.services.restart("pinthesky")
    return {"password": password, "access": access(host), "announced": announced}


def health(host: Host, args: dict[str, Any]) -> dict[str, Any]:
    """Ask the daemon for a health report through its command file and wait for it (or for
    any report made since: the one a starting daemon makes may come last and take its
    place in the file)."""
    config = read_config(host) or {}
    inbox = Path(
        config.get("events", {}).get("event_input") or host.path(EVENT_FILES["event_input"])
    )
    report_file = Path(config.get("health", {}).get("file") or host.path(HEALTH_FILE))
    owner = host.account()
    request = {"name": "health", "context": {"health_id": args["health_id"]}}
    asked = int(time.time())
    fd = os.open(inbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)  # the daemon renames the file aside and reads it
        os.write(fd, json.dumps(request).encode())
    finally:
        os.close(fd)
    deadline = time.monotonic() + float(args.get("timeout", 90))
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            report = json.loads(report_file.read_text())
            if report.get("health_id") == args["health_id"] or report["timestamp"] >= asked:
                return {"report": report, "services": _states(host)}
        if host.services.state("pinthesky") not in ("active", "activating", "reloading"):
            break
        time.sleep(0.25)
    lines = host.services.log_tail("pinthesky")
    raise Refusal(
        "the camera daemon did not answer a health request ("
        + f"service {host.services.state('pinthesky')}); its last log lines: "
        + " | ".join(lines[-5:])
    )


def _states(host: Host) -> dict[str, str]:
    """The installed services' states (a local camera has no sidecar)."""
    units = [u for u in UNITS if host.path(f"{UNIT_DIR}/{u}.service").exists()]
    return {unit: host.services.state(unit) for unit in units}


def view(host: Host, args: dict[str, Any]) -> dict[str, Any]:
    info = probe(host, args)
    config = read_config(host) or {}
    report = None
    report_file = Path(config.get("health", {}).get("file") or host.path(HEALTH_FILE))
    with contextlib.suppress(OSError, ValueError):
        report = json.loads(report_file.read_text())
        report["age_s"] = max(0, int(time.time()) - int(report.get("timestamp", 0)))
    info.update(
        services=_states(host) if info["version"] else {},
        health=report,
        config=str(host.path(CONFIG)) if config else None,
        units=[u for u in UNITS if host.path(f"{UNIT_DIR}/{u}.service").exists()],
        access=access(host) if config else None,
    )
    return info


def remove(host: Host, args: dict[str, Any]) -> dict[str, Any]:
    """Stop and remove everything ``install`` put on the Pi; clips stay with ``keep_clips``."""
    removed, kept = [], []
    emit(step="stopping the services")
    units = [u for u in UNITS if host.path(f"{UNIT_DIR}/{u}.service").exists()]
    if units:
        host.services.remove(units)
    emit(step="removing files")
    for name in [f"{UNIT_DIR}/{u}.service" for u in UNITS] + [POLKIT_RULE, AVAHI_SERVICE, OPT, ETC]:
        if remove_path(host.path(name)):
            removed.append(name)
    host.services.reload()
    state = host.path(STATE)
    if args.get("keep_clips") and state.is_dir():
        for path in state.iterdir():
            if str(path) in (str(host.path(CLIPS)), str(host.path(STILLS))):
                for part in [path, *path.rglob("*")]:
                    os.lchown(part, 0, 0)  # the user they belonged to goes
                kept.append(str(path))
            elif remove_path(path):
                removed.append(str(path))
    elif remove_path(state):
        removed.append(STATE)
    if host.remove_account():
        removed.append(f"user {USER}")
    return {"removed": removed, "kept": kept}


ACTIONS = {
    "probe": probe,
    "prepare": prepare,
    "install": install,
    "configure": configure,
    "health": health,
    "view": view,
    "remove": remove,
}


@contextlib.contextmanager
def _answer() -> Iterator[None]:
    try:
        yield
    except Refusal as exc:
        emit(error=str(exc))
        sys.exit(1)
    except Exception as exc:  # one line for pitsctl; the details go to stderr
        import traceback

        traceback.print_exc()
        emit(error=f"unexpected {type(exc).__name__} on the Pi: {exc}")
        sys.exit(1)


def serve(request: dict[str, Any]) -> None:
    with _answer():
        if os.geteuid() != 0:
            raise Refusal("this needs root on the Pi")
        action = ACTIONS[request["action"]]
        emit(result=action(Host(request.get("root", "/")), request.get("args", {})))


if __name__ == "__pitsctl__":
    serve(globals()["REQUEST"])
