"""The Pi side of pitsctl, run here directly on a target root (as pitsctl runs it over ssh,
as root): the settings file merge that keeps the owner's edits, removal with
``--keep-clips``, and pip's failures as one line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pitarget import account, snapshot

from pinthesky.installer import onpi


def test_pitsctls_keys_are_set_and_every_other_line_stays():
    mine = (
        "# my camera\n"
        "[camera]\n"
        "sensitivity = 25  # windy garden\n"
        "\n"
        "[storage]\n"
        'bucket_name = "old"\n'
        'clip_quota = "2G"\n'
    )
    merged = onpi.merge_toml(
        mine,
        {
            "storage": {"bucket_name": "new", "combine_dir": "/var/lib/pinthesky/clips"},
            "iot": {"endpoint": 'a"b.example', "seed_desired": True, "port": 8883},
        },
    )
    assert merged.startswith("# my camera\n[camera]\nsensitivity = 25  # windy garden\n\n")
    doc = tomllib.loads(merged)
    assert doc["storage"] == {
        "bucket_name": "new",
        "clip_quota": "2G",
        "combine_dir": "/var/lib/pinthesky/clips",
    }
    assert doc["iot"] == {"endpoint": 'a"b.example', "seed_desired": True, "port": 8883}
    assert onpi.merge_toml(merged, {"storage": {"bucket_name": "new"}}) == merged  # stable


def test_remove_keeps_the_clips_owned_by_root_and_takes_everything_else(target):
    host = onpi.Host(str(target))
    before = snapshot(target)
    csr = onpi.prepare(host, {"thing": "cam-a"})["csr"]
    assert csr.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    uid, _ = account(target)
    key = target / "etc/pinthesky/certs/thing.key"
    assert key.read_text().startswith("-----BEGIN EC PRIVATE KEY-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == uid
    # A second prepare keeps the key: the camera's identity survives a re-run.
    first = key.read_bytes()
    onpi.prepare(host, {"thing": "cam-a"})
    assert key.read_bytes() == first

    clips = target / "var/lib/pinthesky/motion_videos"
    clips.mkdir(parents=True)
    (clips / "1700000000.motion.mp4").write_bytes(b"a clip")
    (target / "var/lib/pinthesky/health.json").write_text("{}")
    done = onpi.remove(host, {"keep_clips": True})
    assert done["kept"] == [str(clips)] and "user pinthesky" in done["removed"]
    assert (clips / "1700000000.motion.mp4").read_bytes() == b"a clip"
    assert clips.stat().st_uid == 0 and (clips / "1700000000.motion.mp4").stat().st_uid == 0
    assert not (target / "etc/pinthesky").exists()
    assert not (target / "var/lib/pinthesky/health.json").exists()
    left = {k: v for k, v in snapshot(target).items() if not k.startswith("var/lib/pinthesky")}
    assert left == before
    assert onpi.remove(host, {}) == {"removed": ["/var/lib/pinthesky"], "kept": []}
    assert snapshot(target) == before


def test_write_file_changes_nothing_when_the_file_is_already_right(tmp_path: Path):
    path = tmp_path / "a" / "b.conf"
    assert onpi.write_file(path, b"x", 0o640) is True
    assert onpi.write_file(path, b"x", 0o640) is False
    assert onpi.write_file(path, b"x", 0o600) is True and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["b.conf"]  # no temporary left


def test_picamera2_floor_is_the_daemons() -> None:
    from pinthesky.camera import stack

    assert stack.version_tuple(onpi.MIN_PICAMERA2) == stack.MIN_PICAMERA2
    assert onpi.too_old(None) and onpi.too_old("0.3.29") and onpi.too_old("0.3.25-1+rpt1")
    assert not onpi.too_old("0.3.30") and not onpi.too_old("0.3.38-1~bookworm")


def test_apt_brings_an_old_picamera2_up_to_the_floor(monkeypatch: Any) -> None:
    """On a Pi whose image carries picamera2 0.3.25, the installer asks apt for picamera2 and
    libcamera's bindings (install also upgrades), and checks the result."""
    versions = iter(["0.3.25", "0.3.38"])
    ran: list[tuple[str, ...]] = []

    class Done:
        returncode, stdout = 0, ""

    def run(*argv: str, **kwargs: Any) -> Done:
        ran.append(argv)
        return Done()

    monkeypatch.setattr(onpi, "pi_model", lambda: "Raspberry Pi Zero W Rev 1.1")
    monkeypatch.setattr(onpi, "picamera2_version", lambda: next(versions))
    monkeypatch.setattr(onpi, "run", run)
    monkeypatch.setattr(onpi, "emit", lambda **f: None)
    onpi._system_packages(onpi.Host("/"))
    assert ran[-1][:5] == ("apt-get", "install", "-y", "-qq", "--no-install-recommends")
    assert set(onpi.CAMERA_PACKAGES) <= set(ran[-1])

    # An archive that cannot give a recent enough one: one line, the install stops.
    versions = iter(["0.3.25", "0.3.25"])
    with pytest.raises(onpi.Refusal, match=r"^picamera2 0\.3\.25 after apt-get install"):
        onpi._system_packages(onpi.Host("/"))

    # Supported but loading PyAV at import: upgraded if the archive can, kept if not.
    ran.clear()
    versions = iter(["0.3.30", "0.3.30"])
    onpi._system_packages(onpi.Host("/"))
    assert "python3-picamera2" in ran[-1]

    # Recent enough: apt is not touched for picamera2.
    ran.clear()
    versions = iter(["0.3.34"])
    onpi._system_packages(onpi.Host("/"))
    assert not any("python3-picamera2" in a for a in ran)


@pytest.mark.parametrize(
    ("package", "hint"), [("awscrt", ""), ("numpy", "; install python3-numpy with apt")]
)
def test_a_package_without_a_wheel_is_one_line_naming_it_and_the_pi(tmp_path, package, hint):
    """pip's real answer when no wheel exists (no index, only wheels allowed), as one line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-index",
         "--find-links", str(tmp_path), *onpi.PIP_FLAGS, package],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert done.returncode != 0
    model = "Raspberry Pi Zero W Rev 1.1 (armv6l, Python 3.11.2)"
    line = onpi.pip_failure((done.stdout + done.stderr).splitlines(), model)
    assert line == (
        f"{package}: PyPI has no wheel of it for {model} and nothing is compiled on a Pi{hint}"
    )


def test_pip_sees_a_32_bit_arm_machine_when_a_32_bit_python_runs_on_a_64_bit_kernel(tmp_path):
    fake = tmp_path / "python"
    for machine, pointer, prefix in (
        ("aarch64", 4, ["setarch", "linux32"]),  # Raspberry Pi OS 32-bit on a Pi 4/5's kernel
        ("aarch64", 8, []),
        ("armv6l", 4, []),
        ("x86_64", 8, []),
    ):
        fake.write_text(f"#!/bin/sh\necho {machine} {pointer}\n")
        fake.chmod(0o755)
        assert onpi.pip_prefix(str(fake)) == prefix
