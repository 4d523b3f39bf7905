"""The ``pinthesky`` command as a user runs it: one process per test, exit codes and output.

A mistake a user can fix (a bad flag, a bad config value, an unreadable video, an unusable clip
directory) must give one clear line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import random
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import pinthesky as run_pinthesky

import pinthesky

REPO = Path(__file__).resolve().parent.parent
# The daemon's log lines on a terminal: "<date> <time> LEVEL name: message".
LOG_LINE = re.compile(
    r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}[,.]\d+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: "
)


def pinthesky_cmd(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_pinthesky(*args, cwd=cwd, timeout=timeout)


def stderr_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return proc.stderr.splitlines()


def non_log_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in proc.stderr.splitlines() if not LOG_LINE.match(line)]


def assert_no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout


# -- --version ------------------------------------------------------------------------------


def test_version_prints_the_package_version(tmp_path: Path) -> None:
    proc = pinthesky_cmd(tmp_path, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == pinthesky.__version__ + "\n"
    assert proc.stderr == ""


def test_version_after_other_flags(tmp_path: Path) -> None:
    proc = pinthesky_cmd(tmp_path, "--log-level", "DEBUG", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == pinthesky.__version__ + "\n"


def test_version_is_a_release_number() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", pinthesky.__version__)


def test_version_is_single_sourced() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    assert "version" not in project
    assert "version" in project["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "pinthesky.__version__"
    }
    version = pinthesky.__version__
    init = REPO / "pinthesky" / "__init__.py"
    assert f'__version__ = "{version}"' in init.read_text(encoding="utf-8")
    candidates = [
        REPO / "pyproject.toml",
        REPO / "Makefile",
        *(REPO / "pinthesky").rglob("*.py"),
        *(p for p in (REPO / "service").rglob("*") if p.is_file()),
        *(REPO / name for name in ("setup.py", "setup.cfg") if (REPO / name).exists()),
    ]
    holders = [
        p.relative_to(REPO).as_posix()
        for p in candidates
        if p != init
        and p.is_file()
        and re.search(rf"\b{re.escape(version)}\b", p.read_text(encoding="utf-8"))
    ]
    assert holders == []


# -- --validate-config ----------------------------------------------------------------------


def test_validate_config_prints_the_effective_settings_as_toml(tmp_path: Path) -> None:
    proc = pinthesky_cmd(tmp_path, "--validate-config")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    doc = tomllib.loads(proc.stdout)
    assert doc["camera"]["framerate"] == 20
    assert doc["camera"]["rotation"] == 0
    assert doc["camera"]["resolution"] == "640x480"
    assert doc["camera"]["buffer"] == 15
    assert doc["recorder"]["pre_roll"] == 7.0
    assert doc["recorder"]["post_roll"] == 15.0
    assert doc["storage"]["combine_dir"] == "motion_videos"
    assert doc["cloudwatch"]["enabled"] is False
    assert doc["events"]["shadow_update"] == "empty"
    # Validating creates nothing (no clip directory, no event files).
    assert list(tmp_path.iterdir()) == []


def test_validate_config_shows_flags_and_file(tmp_path: Path) -> None:
    config = tmp_path / "pinthesky.toml"
    config.write_text('[camera]\nframerate = "25"\nrotation = 180\n', encoding="utf-8")
    proc = pinthesky_cmd(
        tmp_path, "--config", "pinthesky.toml", "--validate-config", "--rotation", "90"
    )
    assert proc.returncode == 0, proc.stderr
    doc = tomllib.loads(proc.stdout)
    assert doc["camera"]["framerate"] == 25
    assert doc["camera"]["rotation"] == 90


def test_validate_config_output_is_accepted_back(tmp_path: Path) -> None:
    first = pinthesky_cmd(tmp_path, "--validate-config", "--framerate", "30", "--cloudwatch")
    assert first.returncode == 0, first.stderr
    (tmp_path / "saved.toml").write_text(first.stdout, encoding="utf-8")
    second = pinthesky_cmd(tmp_path, "--config", "saved.toml", "--validate-config")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


SECRET = "Tr0ub4dor&3 horse"


def test_validate_config_never_prints_a_secret(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(f'[http]\npassword = "{SECRET}"\n', encoding="utf-8")
    proc = pinthesky_cmd(tmp_path, "--config", "c.toml", "--validate-config")
    assert proc.returncode == 0, proc.stderr
    assert SECRET not in proc.stdout and "Tr0ub4dor" not in proc.stdout
    assert "# password is set (not shown)" in proc.stdout
    assert "password" not in tomllib.loads(proc.stdout)["http"]
    # A refused password is named, not shown, wherever it came from.
    (tmp_path / "bad.toml").write_text('[http]\npassword = "Tr0ub4dor\\u0001"\n')
    for args in (
        ("--config", "bad.toml", "--validate-config"),
        ("--validate-config", "--http-password", "Tr0ub4dor\x7f"),
    ):
        proc = pinthesky_cmd(tmp_path, *args)
        assert proc.returncode == 2
        assert "Tr0ub4dor" not in proc.stderr + proc.stdout
        (line,) = stderr_lines(proc)
        assert "http.password = (not shown): must be a password of 1 to 256 characters" in line


def test_start_up_says_which_settings_files_are_in_force(tmp_path: Path) -> None:
    """The page's saved changes win over the --config file after a restart: the log says which
    files are in force and which keys each sets (never a value), and what the daemon writes
    goes into its state directory."""
    import os

    from conftest import OLD_ENV, DaemonProcess, eventually

    (tmp_path / "camera.toml").write_text(
        f'[camera]\nsensitivity = 20\nframerate = 15\n[http]\npassword = "{SECRET}"\n'
    )
    state = tmp_path / "state"
    state.mkdir()
    (state / "local-settings.toml").write_text("[camera]\nsensitivity = 33\n")
    env = {k: v for k, v in os.environ.items() if k not in OLD_ENV and k != "JOURNAL_STREAM"}
    env.update(PYTHONPATH=str(REPO), PINTHESKY_STATE_DIR="state")
    args = ["--config", "camera.toml", "--source", "synthetic", "--rotation", "180"]
    daemon = DaemonProcess(args, tmp_path, env)
    try:
        eventually(lambda: daemon.logged("first frame buffered"), 60, "the first frame")
    finally:
        code, _ = daemon.stop()
    assert code == 0
    log = "".join(daemon.lines)
    said = [line.split("pinthesky.settings: ", 1)[1] for line in daemon.logged("settings: ")]
    assert said == [
        "--config camera.toml sets camera.sensitivity, camera.framerate, http.password\n",
        f"the page's saved changes in {state}/local-settings.toml set camera.sensitivity "
        "(overriding the --config file's camera.sensitivity)\n",
        "the environment sets daemon.state_dir ($PINTHESKY_STATE_DIR)\n",
        "the command line sets source.source (--source), camera.rotation (--rotation)\n",
    ]
    assert "Tr0ub4dor" not in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camera.toml", "state"]
    assert {p.name for p in state.iterdir()} >= {
        "input.json",
        "output.json",
        "config-input.json",
        "config-output.json",
        "motion_videos",
        "local-settings.toml",
    }
    # Without saved changes, the log says there are none (and where they would be).
    (state / "local-settings.toml").unlink()
    daemon = DaemonProcess(["--source", "synthetic"], tmp_path, env)
    try:
        eventually(lambda: daemon.logged("first frame buffered"), 60, "the first frame")
    finally:
        daemon.stop()
    assert daemon.logged("pinthesky.settings: no --config file$")
    assert daemon.logged(f"no changes saved by the page \\({state}/local-settings.toml\\)")


def test_validate_config_reports_each_bad_value_on_one_line(tmp_path: Path) -> None:
    proc = pinthesky_cmd(tmp_path, "--validate-config", "--framerate", "abc", "--rotation", "45")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 2, proc.stderr
    framerate = [line for line in lines if "camera.framerate" in line]
    rotation = [line for line in lines if "camera.rotation" in line]
    assert len(framerate) == 1
    assert len(rotation) == 1
    assert "abc" in framerate[0]
    assert "120" in framerate[0]
    assert "45" in rotation[0]
    assert "0, 90, 180, 270" in rotation[0]


def test_validate_config_bad_file_value(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[camera]\nresolution = "641x480"\n', encoding="utf-8")
    proc = pinthesky_cmd(tmp_path, "--config", "c.toml", "--validate-config")
    assert proc.returncode == 2
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "camera.resolution" in lines[0]
    assert "641x480" in lines[0]


def test_unknown_flag_is_one_line_without_usage(tmp_path: Path) -> None:
    proc = pinthesky_cmd(tmp_path, "--bogus")
    assert proc.returncode == 2
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "--bogus" in lines[0]
    assert "usage:" not in proc.stderr
    assert proc.stdout == ""


def test_flag_missing_its_value_is_one_line(tmp_path: Path) -> None:
    proc = pinthesky_cmd(tmp_path, "--validate-config", "--framerate")
    assert proc.returncode == 2
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "--framerate" in lines[0]


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    proc = pinthesky_cmd(tmp_path, "--config", "missing.toml", "--validate-config")
    assert proc.returncode == 2
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "missing.toml" in lines[0]


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "broken.toml").write_text("[camera\nframerate = 25\n", encoding="utf-8")
    proc = pinthesky_cmd(tmp_path, "--config", "broken.toml", "--validate-config")
    assert proc.returncode == 2
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "broken.toml" in lines[0]


def test_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "latin1.toml").write_bytes('[storage]\nbucket_name = "café"\n'.encode("latin-1"))
    proc = pinthesky_cmd(tmp_path, "--config", "latin1.toml", "--validate-config")
    assert proc.returncode == 2
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "latin1.toml" in lines[0]


def test_missing_video_source_is_one_line(tmp_path: Path) -> None:
    proc = pinthesky_cmd(tmp_path, "--source", "/nonexistent.mp4", "--validate-config")
    assert proc.returncode == 2
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "source.source" in lines[0]
    assert "/nonexistent.mp4" in lines[0]


# -- the daemon's own start-up failures -----------------------------------------------------


def test_unreadable_video_is_one_line(tmp_path: Path) -> None:
    video = tmp_path / "x.mp4"
    video.write_bytes(random.Random(1).randbytes(64 * 1024))
    proc = pinthesky_cmd(
        tmp_path, "--source", str(video), "--combine-dir", str(tmp_path / "clips"), timeout=60
    )
    assert proc.returncode != 0
    assert_no_traceback(proc)
    errors = non_log_lines(proc)
    assert len(errors) == 1, proc.stderr
    assert "cannot read video" in errors[0]
    assert "x.mp4" in errors[0]


def test_unusable_clip_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("not a directory\n", encoding="utf-8")
    clips = tmp_path / "file.txt" / "clips"
    proc = pinthesky_cmd(tmp_path, "--source", "synthetic", "--combine-dir", str(clips), timeout=60)
    assert proc.returncode != 0
    assert_no_traceback(proc)
    errors = non_log_lines(proc)
    assert len(errors) == 1, proc.stderr
    assert "not writable" in errors[0] or "clip directory" in errors[0]
    assert str(clips) in errors[0]


# -- pinthesky detect -----------------------------------------------------------------------


def test_detect_without_a_video_is_one_line(tmp_path: Path) -> None:
    proc = pinthesky_cmd(tmp_path, "detect")
    assert proc.returncode == 2
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "video" in lines[0]
    assert "usage:" not in proc.stderr


def test_detect_missing_video_is_one_line(tmp_path: Path) -> None:
    proc = pinthesky_cmd(tmp_path, "detect", "/nonexistent.mp4")
    assert proc.returncode != 0
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "/nonexistent.mp4" in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize("flag", ["--framerate", "--sensitivity"])
def test_detect_bad_setting_is_one_line(tmp_path: Path, flag: str) -> None:
    video = tmp_path / "x.mp4"
    video.write_bytes(b"")
    proc = pinthesky_cmd(tmp_path, "detect", str(video), flag, "abc")
    assert proc.returncode == 2
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert "abc" in lines[0]


def test_a_picamera2_that_does_not_import_stops_the_daemon_in_one_line(tmp_path: Path) -> None:
    """picamera2 0.3.33 installed but failing to import (here for want of libcamera; on a Pi
    a broken PyAV, which 0.3.30-0.3.33 import at load, the misspelt module of 0.3.29, or a
    libcamera of another version): the default source never films a synthetic scene
    instead, it stops the daemon in one line naming picamera2, its version and the cause."""
    python = REPO / ".cache" / "picamera2-0.3.33" / "bin" / "python"
    if not python.exists():
        subprocess.run(["make", "-s", "-C", str(REPO / "tests"), "picamera2-envs"], check=True)
    proc = run_pinthesky(
        "--combine-dir", str(tmp_path / "clips"), cwd=tmp_path, timeout=60, python=python
    )
    assert proc.returncode != 0
    assert_no_traceback(proc)
    errors = non_log_lines(proc)
    assert len(errors) == 1, proc.stderr
    assert "picamera2 0.3.33 is installed but does not import" in errors[0]
    assert "libcamera" in errors[0]
    assert not (tmp_path / "clips").exists() or not any((tmp_path / "clips").iterdir())


def test_privacy_masks_and_the_timestamp_from_the_command_line(tmp_path: Path) -> None:
    proc = pinthesky_cmd(
        tmp_path,
        "--privacy-mask", "64,96,160,120",
        "--privacy-mask", "300,10,20,20",
        "--timestamp",
        "--timestamp-position", "bottom-right",
        "--validate-config",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    camera = tomllib.loads(proc.stdout)["camera"]
    assert camera["privacy_masks"] == "64,96,160,120;300,10,20,20"
    assert camera["timestamp"] == "%Y-%m-%d %H:%M:%S"
    assert camera["timestamp_position"] == "bottom-right"
    proc = pinthesky_cmd(tmp_path, "--timestamp", "%d/%m %H:%M", "--validate-config")
    assert tomllib.loads(proc.stdout)["camera"]["timestamp"] == "%d/%m %H:%M"
    proc = pinthesky_cmd(tmp_path, "--privacy-mask", "600,400,100,100", "--validate-config")
    assert proc.returncode == 2
    assert_no_traceback(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1 and "reaches out of the 640x480 picture" in lines[0]
