"""The package as a user gets it: its license, its version, and an install that says nothing
alarming (``make run`` installs it into .venv with pip)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pinthesky

REPO = Path(__file__).resolve().parent.parent
PITS_RELEASE = (0, 9, 1)
"""The Pi In The Sky daemon this one replaces (the same package name on PyPI)."""


def _version(text: str) -> tuple[int, ...]:
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text)
    assert match, f"{text!r} is not MAJOR.MINOR.PATCH (the console compares it so)"
    return tuple(int(g) for g in match.groups())


def test_the_license_is_in_the_checkout_and_in_the_metadata() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_the_version_follows_the_release_it_replaces() -> None:
    version = _version(pinthesky.__version__)
    assert version > PITS_RELEASE  # pip and the console's update check see it as newer
    assert version[0] >= 1
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert f"## {pinthesky.__version__}" in changelog
    assert "0.9.1" in changelog.split(f"## {pinthesky.__version__}", 1)[1]
    assert "0.9.1" in (pinthesky.__doc__ or "")


def test_an_editable_install_prints_no_warning_box(tmp_path: Path) -> None:
    """What ``make run`` does in a fresh checkout: pip -q, editable, in a new venv. Before,
    setuptools printed three boxes of about a dozen lines (the license as a table, twice; the
    editable install's layout); now nothing but what pip itself says."""
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    # As the Makefile does: a current pip shows what the build backend warns about.
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--upgrade", "pip"],
        capture_output=True,
        timeout=300,
        check=True,
    )
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "-e", REPO],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    # Lines about this machine's pip configuration (index locations) are pip's, not ours.
    ours = [
        line
        for line in (install.stdout + install.stderr).splitlines()
        if line.strip() and not line.startswith("WARNING: Location ")
    ]
    assert ours == [], "\n".join(ours)
    version = subprocess.run(
        [venv / "bin" / "pinthesky", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert version.stdout == pinthesky.__version__ + "\n"
    metadata = subprocess.run(
        [python, "-c",
         "from importlib.metadata import metadata; print(metadata('pinthesky')"
         "['License-Expression'])"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert metadata.stdout.strip() == "Apache-2.0"


def test_make_run_installs_only_what_running_needs(tmp_path: Path) -> None:
    """Off a Pi, ``make run`` needs python3-venv and nothing else: the test tools' system
    packages (libcap-dev for python-prctl, chromium, mosquitto...) are ``make test``'s."""
    fresh = tmp_path / "checkout"
    fresh.mkdir()
    for name in ("pyproject.toml", "Makefile"):
        (fresh / name).write_bytes((REPO / name).read_bytes())

    def planned(target: str) -> str:
        dry = subprocess.run(
            ["make", "-n", "-C", fresh, target],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert dry.returncode == 0, dry.stderr
        return dry.stdout

    run, test = planned("run"), planned("lint")
    assert "python3-venv" in run and "pip install -q -e ." in run
    for package in ("libcap-dev", "chromium", "mosquitto", "debootstrap", "openssh-server"):
        assert package not in run
        assert package in test  # the check means something: the test target has them


def test_make_run_keeps_what_the_daemon_writes_in_one_folder(footage, tmp_path: Path) -> None:
    """``make run`` in a checkout: the clips and the four event files go into .run/, nothing
    else appears beside the sources. The Makefile runs here as it is, with this checkout's
    .venv (never remade from the test)."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(REPO / ".venv")
    (checkout / "pyproject.toml").symlink_to(REPO / "pyproject.toml")
    before = set(checkout.iterdir())
    video = footage.scenario("small_object").path
    args = f"--source {video} --replay-speed 0 --pre-roll 2 --post-roll 2"
    ran = subprocess.run(
        ["make", "-C", checkout, "-f", REPO / "Makefile",
         "-o", ".venv/.run-stamp", "-o", ".venv/bin/python", "run", f"ARGS={args}"],
        capture_output=True, text=True, timeout=300, check=False,
        env={k: v for k, v in os.environ.items() if k != "PINTHESKY_STATE_DIR"},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert set(checkout.iterdir()) - before == {checkout / ".run"}
    written = {p.name for p in (checkout / ".run").iterdir()}
    assert written == {
        "motion_videos",
        "input.json",
        "output.json",
        "config-input.json",
        "config-output.json",
    }
    assert list((checkout / ".run" / "motion_videos").glob("*.motion.mp4"))
    assert f"clips in {checkout / '.run' / 'motion_videos'}" in ran.stderr
