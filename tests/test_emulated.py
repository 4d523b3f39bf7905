"""pinthesky on emulated Raspberry Pis: Debian bookworm armhf (the 32-bit OS of a Pi 2/3/4/Zero 2)
and arm64 (the 64-bit OS of a Pi Zero 2/3/4/5) under qemu-user-static, trees from ``pirootfs``.

Each tree gets pinthesky the way ``pitsctl install`` puts it on a Pi: the same ``onpi`` code
(``_virtualenv``: a ``--system-site-packages`` virtualenv, pip with ``--only-binary=:all:`` and
apt's numpy pinned) with the wheel ``pitsctl`` builds. Then the daemon's and the sidecar's
commands run there: ``--version``, ``detect`` (events equal to this machine's), a replay whose
clip decodes, and the sidecar against mosquitto on this host (the chroot shares its network),
on paho-mqtt 1.6 from apt on armhf and on awscrt on arm64.

The Pi Zero W's own core (ARM1176, ``QEMU_CPU=arm1176``) cannot run Debian armhf (ARMv7
code); it runs Debian armel, where the motion analysis is run over the same frames and must
give the same result as here.

Trees are cached (first run: about 10-25 min per tree emulated; later runs start at once); the
installs go into an overlay per run, so the cache is never changed by a test.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pirootfs
import pytest
from conftest import REPO, eventually, pinthesky
from mqtt import Mosquitto, Peer
from servers import Pki
from test_sidecar import COMMANDS, THING

from pinthesky import __version__
from pinthesky.installer.pitsctl import build_wheel

VENV_BIN = "/opt/pinthesky/venv/bin"
INSTALL_TIMEOUT_S = 3600

pytestmark = pytest.mark.timeout(7200)


@dataclass
class Pi:
    """One emulated Pi: its cached tree, this run's overlay and the host directory it sees at
    /mnt/host."""

    arch: str
    tree: Path
    overlay: Path
    shared: Path
    install_s: float = 0.0
    install_log: list[dict[str, Any]] = field(default_factory=list)

    def binds(self) -> list[tuple[Path, str]]:
        return [(self.shared, "/mnt/host"), *_pip_binds(self.arch)]

    def env(self) -> dict[str, str]:
        env = {"PIP_CERT": "/mnt/ca/host.crt"} if pirootfs.HOST_CA.exists() else {}
        for name in ("PIP_INDEX_URL", "PIP_DEFAULT_TIMEOUT", "HTTPS_PROXY", "https_proxy"):
            if os.environ.get(name):
                env[name] = os.environ[name]
        return env

    def run(self, *argv: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return pirootfs.chroot(
            self.tree,
            argv,
            env=self.env(),
            timeout=timeout,
            check=False,
            overlay=self.overlay,
            binds=self.binds(),
        )

    def popen(self, *argv: str, stderr: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            pirootfs.host_command(self.tree, argv, overlay=self.overlay, binds=self.binds()),
            env=pirootfs.guest_env(**self.env()),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )


def _pip_binds(arch: str) -> list[tuple[Path, str]]:
    """This host's CA bundle for pip in the tree (the machines these tests run on may
    intercept TLS; a Pi needs nothing). pip downloads its wheels again on every run, as on a
    fresh Pi."""
    if not pirootfs.HOST_CA.exists():
        return []
    ca = pirootfs.CACHE / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    shutil.copy(pirootfs.HOST_CA, ca / "host.crt")
    return [(ca, "/mnt/ca")]


# The installer's own code, run by the tree's Python as pitsctl runs it on a Pi.
INSTALL = """
import json, sys
sys.path.insert(0, "/mnt/host")
import onpi
from pathlib import Path
try:
    onpi._virtualenv(onpi.Host("/"), Path(sys.argv[1]), (0, 0))
except onpi.Refusal as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(1)
"""


@pytest.fixture(scope="module")
def emulation() -> Iterator[dict[str, Future[Path]]]:
    """binfmt_misc set up, and the three trees being made ready side by side (a cold cache
    builds them in parallel: most of it is emulated dpkg, one core each)."""
    missing = pirootfs.missing_tools()
    assert not missing, f"install {' '.join(missing)} (make test does)"
    assert os.geteuid() == 0, "the emulated-Pi tests build and enter chroots: run them as root"
    with pirootfs.binfmt(), ThreadPoolExecutor(max_workers=3) as pool:
        yield {name: pool.submit(pirootfs.ensure, name) for name in pirootfs.FLAVOURS}


@pytest.fixture(scope="module", params=["armhf", "arm64"])
def pi(
    request: pytest.FixtureRequest, emulation: dict[str, Future[Path]], tmp_path_factory: Any
) -> Pi:
    arch = request.param
    tree = emulation[arch].result()
    work = tmp_path_factory.mktemp(f"pi-{arch}")
    shared = work / "host"
    shared.mkdir()
    shutil.copy(REPO / "pinthesky" / "installer" / "onpi.py", shared / "onpi.py")
    name, data = build_wheel()
    (shared / name).write_bytes(data)
    (shared / "install.py").write_text(INSTALL)
    box = Pi(arch, tree, work / "overlay", shared)
    started = time.monotonic()
    done = box.run(
        "/usr/bin/python3", "/mnt/host/install.py", f"/mnt/host/{name}", timeout=INSTALL_TIMEOUT_S
    )
    box.install_s = time.monotonic() - started
    box.install_log = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    print(f"\n{arch}: wheels-only install {box.install_s:.0f} s emulated", file=sys.stderr)
    return box


def where(pi: Pi, module: str) -> str:
    done = pi.run(f"{VENV_BIN}/python", "-c", f"import {module}; print({module}.__file__)")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_wheels_only_install_keeps_apts_numpy_and_picks_the_mqtt_client_for_the_arch(pi):
    steps = [e.get("progress", "") for e in pi.install_log]
    assert any(s.startswith("Successfully installed") for s in steps), steps
    # numpy is apt's (1.24.2), not a second copy in the virtualenv.
    assert where(pi, "numpy").startswith("/usr/lib/python3/dist-packages/")
    assert not list(
        (pi.overlay / "upper/opt/pinthesky/venv/lib").glob("python3*/site-packages/numpy")
    )
    has_crt = pi.run(f"{VENV_BIN}/python", "-c", "import awscrt").returncode == 0
    if pi.arch == "armhf":
        # No awscrt wheel for 32-bit ARM: paho-mqtt, here apt's 1.6.1 (pure Python).
        assert not has_crt
        assert where(pi, "paho.mqtt").startswith("/usr/lib/python3/dist-packages/")
    else:
        assert has_crt
    chosen = pi.run(
        f"{VENV_BIN}/python", "-c", "from pinthesky.iot.mqtt import choose; print(choose())"
    )
    assert chosen.stdout.strip() == ("paho" if pi.arch == "armhf" else "crt"), chosen.stderr


def test_the_commands_run(pi):
    version = pi.run(f"{VENV_BIN}/pinthesky", "--version")
    assert version.returncode == 0 and __version__ in version.stdout, version.stderr
    helped = pi.run(f"{VENV_BIN}/pinthesky-iot", "--help")
    assert helped.returncode == 0 and "--endpoint" in helped.stdout, helped.stderr


def test_detect_finds_the_same_events_as_this_machine(pi, footage, tmp_path):
    scenario = footage.scenario("walkers")
    shutil.copy(scenario.path, pi.shared / "walkers.mp4")
    flags = ["--json", "--post-roll", "4"]  # the two walk-ins apart
    here = pinthesky("detect", str(scenario.path), *flags, cwd=tmp_path)
    there = pi.run(f"{VENV_BIN}/pinthesky", "detect", "/mnt/host/walkers.mp4", *flags)
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    ours, theirs = json.loads(here.stdout), json.loads(there.stdout)
    assert theirs["events"] == ours["events"]
    assert theirs["frames"] == ours["frames"]
    assert len(theirs["events"]) == len(scenario.events)


def replay_flags(state: str) -> list[str]:
    flags = ["--replay-speed", "0", "--pre-roll", "3", "--post-roll", "4"]
    flags += ["--combine-dir", f"{state}/clips", "--capture-dir", f"{state}/images"]
    for flag, name in (
        ("--event-input", "events/input.json"),
        ("--event-output", "events/output.json"),
        ("--configure-input", "configuration/input.json"),
        ("--configure-output", "configuration/output.json"),
        ("--health-file", "health.json"),
    ):
        flags += [flag, f"{state}/{name}"]
    return flags


@pytest.fixture(scope="module")
def camera_clip(footage: Any, tmp_path_factory: Any) -> Path:
    """A clip recorded here from the small-object footage: H.264 at 640x480 with a keyframe a
    second, as a Pi's camera encoder gives it, so a replay there passes it through. (The
    armv7l PyAV wheel on PyPI has no libx264 to re-encode with; on a Pi, Raspberry Pi's
    python3-av has it, and the camera encodes in hardware anyway.)"""
    work = tmp_path_factory.mktemp("camera-clip")
    source = footage.scenario("small_object").path
    done = pinthesky("--source", str(source), *replay_flags(str(work)), cwd=work)
    assert done.returncode == 0, done.stderr[-2000:]
    clips = sorted((work / "clips").glob("*.motion.mp4"))
    assert clips, done.stderr[-2000:]
    return clips[0]


def test_a_replay_records_a_clip_that_decodes(pi, camera_clip):
    import av

    shutil.copy(camera_clip, pi.shared / "replay.mp4")
    with av.open(str(camera_clip)) as container:
        source_frames = sum(1 for _ in container.decode(video=0))
    done = pi.run(
        f"{VENV_BIN}/pinthesky",
        "--source",
        "/mnt/host/replay.mp4",
        *replay_flags("/mnt/host/replay"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "passed through" in done.stderr
    clips = sorted((pi.shared / "replay" / "clips").glob("*.motion.mp4"))
    assert len(clips) == 1, done.stderr[-2000:]
    with av.open(str(clips[0])) as container:
        frames = sum(1 for _ in container.decode(video=0))
    # The motion with its pre- and post-roll: most of the source, every frame decoding.
    assert source_frames // 2 < frames <= source_frames, (frames, source_frames)


def test_the_sidecar_delivers_commands_from_a_broker_on_this_host(pi, tmp_path):
    pki = Pki(pi.shared / "certs")
    pki.key_file.chmod(0o600)
    flags = []
    for flag, name in (
        ("--event-input", "events/input.json"),
        ("--event-output", "events/output.json"),
        ("--configure-input", "configuration/input.json"),
        ("--configure-output", "configuration/output.json"),
    ):
        flags += [flag, f"/mnt/host/iot/{name}"]
    inside = {p: "/mnt/host/certs/" + p.name for p in (pki.cert_file, pki.key_file, pki.ca_file)}
    log_path = tmp_path / "sidecar.log"
    with Mosquitto(pki, tmp_path / "broker") as broker, log_path.open("w") as log:
        console = Peer(pki, broker, "console")
        proc = pi.popen(
            f"{VENV_BIN}/pinthesky-iot",
            "--endpoint",
            "127.0.0.1",
            "--port",
            str(broker.port),
            "--thing-name",
            THING,
            "--thing-cert",
            inside[pki.cert_file],
            "--thing-key",
            inside[pki.key_file],
            "--ca-cert",
            inside[pki.ca_file],
            *flags,
            stderr=log,
        )
        try:
            eventually(lambda: "subscribed to" in log_path.read_text(), 300, "subscribed")
            for i in range(3):
                console.publish(COMMANDS, {"name": "health", "context": {"health_id": f"e-{i}"}})
            inbox = pi.shared / "iot" / "events" / "input.json"
            eventually(lambda: inbox.read_bytes().count(b"\n") >= 3, 120, "three commands")
        finally:
            proc.terminate()
            code = proc.wait(120)
            console.close()
    text = log_path.read_text()
    assert code == 0, text
    transport = "paho" if pi.arch == "armhf" else "crt"
    assert f"MQTT on {transport}" in text, text
    ids = [json.loads(line)["context"]["health_id"] for line in inbox.read_bytes().splitlines()]
    assert ids == ["e-0", "e-1", "e-2"]


# -- the Pi Zero W's own core -------------------------------------------------------------------


def frames_with_a_walker(count: int = 60) -> np.ndarray:
    """A still scene with sensor noise, and a bright block crossing it in frames 20-40."""
    rng = np.random.default_rng(13)
    y, x = np.mgrid[0:120, 0:160]
    scene = (60 + x * 0.6 + y * 0.3).astype(np.float64)
    frames = np.empty((count, 120, 160), dtype=np.uint8)
    for i in range(count):
        image = scene + rng.normal(0, 2.5, scene.shape)
        if 20 <= i < 40:
            left = 10 + (i - 20) * 6
            image[40:80, left : left + 24] = 230
        frames[i] = np.clip(image, 0, 255).astype(np.uint8)
    return frames


def test_the_motion_analysis_on_a_pi_zero_w_core_gives_this_machines_result(emulation, tmp_path):
    """Debian armel under ``QEMU_CPU=arm1176``: the analyzer's digest equals this machine's."""
    tree = emulation["armel"].result()
    shared = tmp_path / "host"
    shutil.copytree(REPO / "pinthesky", shared / "pinthesky")
    script = (REPO / "tests" / "motion_digest.py").read_text()
    (shared / "digest.py").write_text(script)
    np.save(shared / "frames.npy", frames_with_a_walker())
    here = subprocess.run(
        [sys.executable, str(shared / "digest.py"), str(shared), str(shared / "frames.npy")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    uname = pirootfs.chroot(
        tree, ["uname", "-m"], cpu="arm1176", binds=[(shared, "/mnt/host")], check=True
    )
    there = pirootfs.chroot(
        tree,
        ["python3", "/mnt/host/digest.py", "/mnt/host", "/mnt/host/frames.npy"],
        cpu="arm1176",
        binds=[(shared, "/mnt/host")],
        check=True,
    ).stdout
    assert uname.stdout.strip().startswith("armv")
    result = json.loads(here)
    assert result["events"][:1] == ["MotionStarted"] and "MotionEnded" in result["events"]
    assert json.loads(there) == result
    assert hashlib.sha256(there.encode()).hexdigest() == hashlib.sha256(here.encode()).hexdigest()
