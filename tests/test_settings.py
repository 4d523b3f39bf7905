"""Settings: the 0.9.1 flags and environment, the TOML file, validation and the frozen result.

Everything here runs in-process through ``cmdline.build_parser`` and ``settings.load``; the
command line as a user types it is exercised in ``test_cli.py``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import OLD_ENV
from intruder import HOSTILE_VALUES

from pinthesky import cmdline, settings
from pinthesky.errors import ConfigError
from pinthesky.settings import Rect, Resolution, Settings, Window

# The 0.9.1 daemon's flags (pinthesky/__main__.py of philcali/pits-device 0.9.1), each with a
# value to give it, the setting it feeds, the typed value expected, and the 0.9.1 default.
# The deliberate changes: --rotation defaults to 0 (it was 270) and --encoding-bitrate to
# auto (it was 17000000, several times what a 640x480 picture needs: see test_auto_bitrate_*).
OLD_VALUE_FLAGS: list[tuple[str, str, str, Any, Any]] = [
    ("--log-level", "DEBUG", "daemon.log_level", "DEBUG", "INFO"),
    ("--health-interval", "600", "health.interval", 600, 3600),
    ("--rotation", "270", "camera.rotation", 270, 0),
    ("--encoding-bitrate", "8000000", "camera.encoding_bitrate", 8_000_000, None),
    ("--encoding-profile", "main", "camera.encoding_profile", "main", "high"),
    ("--encoding-level", "4.2", "camera.encoding_level", "4.2", "4"),
    ("--resolution", "1280x720", "camera.resolution", Resolution(1280, 720), (640, 480)),
    ("--framerate", "30", "camera.framerate", 30, 20),
    ("--buffer", "20", "camera.buffer", 20, 15),
    ("--buffer-size", "1048576", "camera.buffer_size", 1_048_576, None),
    ("--sensitivity", "25", "camera.sensitivity", 25, 10),
    ("--recording-window", "08-18", "camera.recording_window", Window(8, 18), None),
    ("--event-input", "in.json", "events.event_input", Path("in.json"), Path("input.json")),
    ("--event-output", "out.json", "events.event_output", Path("out.json"), Path("output.json")),
    (
        "--configure-input",
        "cfg-in.json",
        "events.configure_input",
        Path("cfg-in.json"),
        Path("config-input.json"),
    ),
    (
        "--configure-output",
        "cfg-out.json",
        "events.configure_output",
        Path("cfg-out.json"),
        Path("config-output.json"),
    ),
    ("--thing-name", "porch-cam", "cloud_connection.thing_name", "porch-cam", None),
    ("--thing-cert", "thing.pem", "cloud_connection.cert_path", Path("thing.pem"), None),
    ("--thing-key", "thing.key", "cloud_connection.key_path", Path("thing.key"), None),
    ("--ca-cert", "root-ca.pem", "cloud_connection.cacert_path", Path("root-ca.pem"), None),
    (
        "--credentials-endpoint",
        "https://abc.credentials.iot.us-east-1.amazonaws.com",
        "cloud_connection.credentials_endpoint",
        "https://abc.credentials.iot.us-east-1.amazonaws.com",
        None,
    ),
    ("--role-alias", "pits-role", "cloud_connection.role_alias", "pits-role", None),
    ("--shadow-update", "always", "events.shadow_update", "always", "empty"),
    ("--bucket-name", "my-bucket", "storage.bucket_name", "my-bucket", None),
    ("--bucket-prefix", "videos", "storage.video_prefix", "videos", "motion_videos"),
    ("--capture-dir", "imgs", "storage.capture_dir", Path("imgs"), Path("capture_images")),
    ("--bucket-image-prefix", "images", "storage.image_prefix", "images", "capture_images"),
    ("--combine-dir", "clips", "storage.combine_dir", Path("clips"), Path("motion_videos")),
    ("--cloudwatch-region", "eu-west-1", "cloudwatch.region_name", "eu-west-1", None),
    ("--cloudwatch-event-type", "emf", "cloudwatch.event_type", "emf", "logs"),
    (
        "--cloudwatch-metric-namespace",
        "Home/Cams",
        "cloudwatch.metric_namespace",
        "Home/Cams",
        "Pits/Device",
    ),
    ("--cloudwatch-log-group", "cams", "cloudwatch.log_group_name", "cams", None),
    (
        "--dataplane-endpoint",
        "https://abc.execute-api.us-east-1.amazonaws.com/prod",
        "dataplane.endpoint_url",
        "https://abc.execute-api.us-east-1.amazonaws.com/prod",
        None,
    ),
    ("--dataplane-region", "eu-west-1", "dataplane.region_name", "eu-west-1", None),
]

# store_true flags of 0.9.1: (flag, setting, value with the flag, value without it).
OLD_SWITCHES: list[tuple[str, str, bool, bool]] = [
    ("--cloudwatch", "cloudwatch.enabled", True, False),
    ("--cloudwatch-thread", "cloudwatch.threaded", True, False),
    ("--disable-cloudwatch-stream-split", "cloudwatch.delineate_stream", False, True),
    ("--dataplane", "dataplane.enabled", True, False),
]

# Settings that follow --buffer when --pre-roll / --post-roll are absent (the old meaning).
DERIVED_FROM_BUFFER = {"recorder.pre_roll", "recorder.post_roll"}


@pytest.fixture(autouse=True)
def _no_old_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own environment must not leak into the expectations."""
    for name in OLD_ENV:
        monkeypatch.delenv(name, raising=False)


def parse(*argv: str, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for a command line, as the daemon builds them."""
    ns = cmdline.build_parser().parse_args(list(argv))
    raw = {k: v for k, v in vars(ns).items() if "." in k}
    return settings.load(raw, config_file=ns.config, environ={} if environ is None else environ)


def flat(s: Settings) -> dict[str, Any]:
    """``{"section.name": value}`` for every setting."""
    out: dict[str, Any] = {}
    for section in dataclasses.fields(s):
        obj = getattr(s, section.name)
        for f in dataclasses.fields(obj):
            out[f"{section.name}.{f.name}"] = getattr(obj, f.name)
    return out


def errors_of(*argv: str, environ: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(*argv, environ=environ)
    return info.value.errors


def write(tmp_path: Path, text: str, name: str = "pinthesky.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_file(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    return settings.load({}, config_file=path, environ={} if environ is None else environ)


def file_errors(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_file(path)
    return info.value.errors


# -- the 0.9.1 flags ----------------------------------------------------------------------


def test_every_old_flag_is_still_a_flag() -> None:
    parser = cmdline.build_parser()
    ours = {s for action in parser._actions for s in action.option_strings}
    old = {row[0] for row in OLD_VALUE_FLAGS} | {row[0] for row in OLD_SWITCHES} | {"--version"}
    assert old - ours == set()


@pytest.mark.parametrize(
    ("flag", "key", "default"),
    [(row[0], row[2], row[4]) for row in OLD_VALUE_FLAGS]
    + [(row[0], row[1], row[3]) for row in OLD_SWITCHES],
)
def test_old_default_is_kept(flag: str, key: str, default: Any) -> None:
    assert flat(parse())[key] == default


def test_rotation_default_is_an_exception() -> None:
    assert parse().camera.rotation == 0
    assert settings.defaults().camera.rotation == 0


def test_auto_bitrate_is_the_default_and_follows_the_picture() -> None:
    s = settings.defaults().camera
    assert s.encoding_bitrate is None  # auto
    assert s.bitrate == settings.auto_bitrate(Resolution(640, 480), 20)
    assert s.bitrate <= 17_000_000 // 4  # a fraction of the old default
    assert parse("--encoding-bitrate", "AUTO").camera.encoding_bitrate is None
    # More pixels or more frames never get fewer bits; every size stays in the allowed range.
    for fps in (1, 5, 10, 15, 20, 25, 30, 60, 120):
        rates = [
            settings.auto_bitrate(Resolution(w, h), fps)
            for w, h in ((64, 64), (320, 240), (640, 480), (1280, 720), (1920, 1080), (4096, 4096))
        ]
        assert rates == sorted(rates)
        assert all(settings.BITRATE_MIN <= r <= settings.BITRATE_MAX for r in rates)
    for w, h in ((640, 480), (1920, 1080)):
        by_fps = [settings.auto_bitrate(Resolution(w, h), f) for f in (5, 10, 20, 30)]
        assert by_fps == sorted(by_fps) and by_fps[0] < by_fps[-1]


def test_an_explicit_bitrate_is_used_exactly() -> None:
    s = parse("--encoding-bitrate", "17000000", "--resolution", "1920x1080").camera
    assert s.encoding_bitrate == s.bitrate == 17_000_000


@pytest.mark.parametrize("bad", ["fast", "-1", "63999", "60000001", "1.5e6", "true"])
def test_a_bad_bitrate_is_one_line(bad: str) -> None:
    (line,) = errors_of("--encoding-bitrate", bad)
    assert line.startswith("--encoding-bitrate camera.encoding_bitrate = ")
    assert "must be auto or a whole number of bits per second from 64000 to 60000000" in line


@pytest.mark.parametrize(
    ("flag", "value", "key", "expected"),
    [row[:4] for row in OLD_VALUE_FLAGS],
)
def test_old_flag_sets_its_setting_and_nothing_else(
    flag: str, value: str, key: str, expected: Any
) -> None:
    before = flat(parse())
    after = flat(parse(flag, value))
    assert after[key] == expected
    assert type(after[key]) is type(expected)
    changed = {k for k in after if after[k] != before[k]}
    allowed = {key} | (DERIVED_FROM_BUFFER if key == "camera.buffer" else set())
    assert changed == allowed


@pytest.mark.parametrize(("flag", "key", "on", "off"), OLD_SWITCHES)
def test_old_store_true_flags_are_switches(flag: str, key: str, on: bool, off: bool) -> None:
    assert flat(parse())[key] is off
    after = flat(parse(flag))
    assert after[key] is on
    changed = {k for k, v in after.items() if v != flat(parse())[k]}
    assert changed == {key}


@pytest.mark.parametrize("flag", [row[0] for row in OLD_SWITCHES])
def test_switches_take_no_value(flag: str) -> None:
    # "--cloudwatch true" leaves "true" as a stray argument: argparse refuses it (exit 2).
    with pytest.raises(SystemExit) as info:
        cmdline.build_parser().parse_args([flag, "true"])
    assert info.value.code == 2


def test_old_flags_parse_old_spellings() -> None:
    s = parse("--log-level", "warning", "--encoding-profile", "BASELINE", "--rotation", "180")
    assert s.daemon.log_level == "WARNING"
    assert s.camera.encoding_profile == "baseline"
    assert s.camera.rotation == 180


# -- the 0.9.1 environment variables -------------------------------------------------------


def test_no_environment_means_old_defaults() -> None:
    s = parse(environ={})
    assert s.cloudwatch.enabled is False
    assert s.cloudwatch.threaded is False
    assert s.cloudwatch.delineate_stream is True
    assert s.dataplane.enabled is False
    assert s.cloudwatch.region_name is None
    assert s.dataplane.region_name is None


def test_old_environment_variables_are_honoured() -> None:
    env = {
        "CLOUDWATCH": "true",
        "CLOUDWATCH_THREADED": "true",
        "DATAPLANE": "true",
        "CLOUDWATCH_DELINEATE_STREAM": "false",
        "AWS_DEFAULT_REGION": "eu-central-1",
    }
    s = parse(environ=env)
    assert s.cloudwatch.enabled is True
    assert s.cloudwatch.threaded is True
    assert s.dataplane.enabled is True
    assert s.cloudwatch.delineate_stream is False
    assert s.cloudwatch.region_name == "eu-central-1"
    assert s.dataplane.region_name == "eu-central-1"


@pytest.mark.parametrize(
    ("name", "value", "key", "expected"),
    [
        ("CLOUDWATCH", "false", "cloudwatch.enabled", False),
        ("CLOUDWATCH", "no", "cloudwatch.enabled", False),
        ("CLOUDWATCH_THREADED", "false", "cloudwatch.threaded", False),
        ("DATAPLANE", "false", "dataplane.enabled", False),
        ("CLOUDWATCH_DELINEATE_STREAM", "true", "cloudwatch.delineate_stream", True),
        ("CLOUDWATCH_DELINEATE_STREAM", "", "cloudwatch.delineate_stream", True),
    ],
)
def test_old_environment_values_other_than_the_magic_word(
    name: str, value: str, key: str, expected: bool
) -> None:
    # 0.9.1 compared with == "true" (== "false" for the delineate switch): anything else is off.
    assert flat(parse(environ={name: value}))[key] is expected


def test_switch_on_the_command_line_wins_over_environment() -> None:
    s = parse(
        "--cloudwatch",
        "--disable-cloudwatch-stream-split",
        environ={"CLOUDWATCH": "false", "CLOUDWATCH_DELINEATE_STREAM": "true"},
    )
    assert s.cloudwatch.enabled is True
    assert s.cloudwatch.delineate_stream is False


def test_region_flags_override_aws_default_region_separately() -> None:
    s = parse("--cloudwatch-region", "us-west-2", environ={"AWS_DEFAULT_REGION": "eu-west-3"})
    assert s.cloudwatch.region_name == "us-west-2"
    assert s.dataplane.region_name == "eu-west-3"


def test_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUDWATCH", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    s = settings.load({})
    assert s.cloudwatch.enabled is True
    assert s.cloudwatch.region_name == "ap-south-1"
    # defaults() is the embedded table only, whatever the environment says.
    assert settings.defaults().cloudwatch.enabled is False


# -- the old meaning of --buffer -----------------------------------------------------------


@pytest.mark.parametrize(
    ("buffer", "pre", "post"), [(15, 7.0, 15.0), (20, 10.0, 20.0), (1, 0.0, 1.0), (7, 3.0, 7.0)]
)
def test_buffer_sets_pre_and_post_roll(buffer: int, pre: float, post: float) -> None:
    s = parse("--buffer", str(buffer))
    assert (s.recorder.pre_roll, s.recorder.post_roll) == (pre, post)


def test_default_buffer_gives_old_rolls() -> None:
    s = parse()
    assert s.camera.buffer == 15
    assert (s.recorder.pre_roll, s.recorder.post_roll) == (7.0, 15.0)


def test_explicit_pre_roll_wins_over_buffer() -> None:
    s = parse("--buffer", "20", "--pre-roll", "3")
    assert (s.recorder.pre_roll, s.recorder.post_roll) == (3.0, 20.0)


def test_explicit_post_roll_wins_over_buffer() -> None:
    s = parse("--buffer", "20", "--post-roll", "5")
    assert (s.recorder.pre_roll, s.recorder.post_roll) == (10.0, 5.0)


def test_explicit_zero_pre_roll_is_kept() -> None:
    s = parse("--buffer", "20", "--pre-roll", "0")
    assert s.recorder.pre_roll == 0.0


def test_buffer_from_toml_drives_the_rolls(tmp_path: Path) -> None:
    s = load_file(write(tmp_path, '[camera]\nbuffer = "30"\n'))
    assert (s.recorder.pre_roll, s.recorder.post_roll) == (15.0, 30.0)


# -- precedence: default < environment < TOML < command line -------------------------------


def test_precedence_of_a_value(tmp_path: Path) -> None:
    env = {"AWS_DEFAULT_REGION": "env-region"}
    config = write(tmp_path, '[cloudwatch]\nregion_name = "toml-region"\n')
    assert parse().cloudwatch.region_name is None
    assert parse(environ=env).cloudwatch.region_name == "env-region"
    assert parse("--config", str(config), environ=env).cloudwatch.region_name == "toml-region"
    s = parse("--config", str(config), "--cloudwatch-region", "cli-region", environ=env)
    assert s.cloudwatch.region_name == "cli-region"
    # The TOML only named cloudwatch's region: the data plane's still comes from the env.
    assert s.dataplane.region_name == "env-region"


def test_precedence_of_a_switch(tmp_path: Path) -> None:
    env = {"CLOUDWATCH": "true", "CLOUDWATCH_DELINEATE_STREAM": "false"}
    config = write(tmp_path, "[cloudwatch]\nenabled = false\ndelineate_stream = true\n")
    s = parse("--config", str(config), environ=env)
    assert s.cloudwatch.enabled is False
    assert s.cloudwatch.delineate_stream is True
    s = parse("--config", str(config), "--cloudwatch", "--disable-cloudwatch-stream-split")
    assert s.cloudwatch.enabled is True
    assert s.cloudwatch.delineate_stream is False


def test_precedence_of_a_number(tmp_path: Path) -> None:
    config = write(tmp_path, "[camera]\nframerate = 25\n")
    assert parse().camera.framerate == 20
    assert parse("--config", str(config)).camera.framerate == 25
    assert parse("--config", str(config), "--framerate", "30").camera.framerate == 30
    assert parse("--framerate", "30", "--config", str(config)).camera.framerate == 30


# -- the TOML file -------------------------------------------------------------------------


def test_toml_file_with_several_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[camera]
resolution = "1280x720"
framerate = 25
rotation = 180
recording_window = "22-6"

[storage]
bucket_name = "my-bucket"
max_bytes = "2G"

[cloudwatch]
enabled = true
event_type = "all"

[daemon]
log_level = "DEBUG"
""",
    )
    s = load_file(path)
    assert s.camera.resolution == Resolution(1280, 720)
    assert s.camera.framerate == 25
    assert s.camera.rotation == 180
    assert s.camera.recording_window == Window(22, 6)
    assert s.storage.bucket_name == "my-bucket"
    assert s.storage.max_bytes == 2 * 1024**3
    assert s.cloudwatch.enabled is True
    assert s.cloudwatch.event_type == "all"
    assert s.daemon.log_level == "DEBUG"
    # Untouched settings keep their defaults.
    assert s.camera.sensitivity == 10
    assert s.storage.video_prefix == "motion_videos"


def test_unknown_key_names_its_key_path(tmp_path: Path) -> None:
    errors = file_errors(write(tmp_path, "[camera]\nframrate = 25\n"))
    assert len(errors) == 1
    assert "camera.framrate" in errors[0]


def test_unknown_section_names_its_key_path(tmp_path: Path) -> None:
    errors = file_errors(write(tmp_path, "[cameras]\nframerate = 25\n"))
    assert len(errors) == 1
    assert "cameras.framerate" in errors[0]


def test_top_level_value_is_an_error(tmp_path: Path) -> None:
    errors = file_errors(write(tmp_path, "framerate = 25\n"))
    assert len(errors) == 1
    assert "framerate" in errors[0]
    assert "camera" in errors[0]  # it tells which sections exist


def test_invalid_toml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[camera\nframerate = 25\n", name="broken.toml")
    errors = file_errors(path)
    assert len(errors) == 1
    assert str(path) in errors[0]
    assert "\n" not in errors[0]


def test_missing_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    errors = file_errors(path)
    assert len(errors) == 1
    assert str(path) in errors[0]


def test_config_file_that_is_not_utf8_is_one_line_naming_the_file(tmp_path: Path) -> None:
    # A file saved as UTF-16 or Latin-1 by an editor must be reported, not crash.
    path = tmp_path / "latin1.toml"
    path.write_bytes('[storage]\nbucket_name = "café"\n'.encode("latin-1"))
    errors = file_errors(path)
    assert len(errors) == 1
    assert str(path) in errors[0]


def test_shadow_style_strings_are_coerced(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[camera]
framerate = "20"
rotation = "90"
buffer = "30"
buffer_size = "1048576"
sensitivity = "12"
encoding_bitrate = "8000000"

[health]
interval = "600"

[cloudwatch]
enabled = "true"
threaded = "false"

[motion]
analysis_fps = "2.5"
""",
    )
    s = load_file(path)
    assert s.camera.framerate == 20
    assert type(s.camera.framerate) is int
    assert s.camera.rotation == 90
    assert type(s.camera.rotation) is int
    assert s.camera.buffer == 30
    assert s.camera.buffer_size == 1_048_576
    assert s.camera.sensitivity == 12
    assert s.camera.encoding_bitrate == 8_000_000
    assert s.health.interval == 600
    assert s.cloudwatch.enabled is True
    assert s.cloudwatch.threaded is False
    assert s.motion.analysis_fps == 2.5


def test_shadow_nulls_spelled_as_none(tmp_path: Path) -> None:
    # TOML has no null; "none" (what --validate-config prints) stands for it.
    path = write(tmp_path, '[camera]\nbuffer_size = "none"\nrecording_window = "none"\n')
    s = load_file(path)
    assert s.camera.buffer_size is None
    assert s.camera.recording_window is None


@pytest.mark.parametrize("value", ["641x480", "640x481", "640", "640x480x3", "x480", "0x0"])
def test_bad_resolution_is_rejected(tmp_path: Path, value: str) -> None:
    errors = file_errors(write(tmp_path, f'[camera]\nresolution = "{value}"\n'))
    assert len(errors) == 1
    assert "camera.resolution" in errors[0]
    assert value in errors[0]
    assert "WIDTHxHEIGHT" in errors[0]


@pytest.mark.parametrize("lores", ["800x600", "704x240", "320x482"])
def test_lores_larger_than_main_names_both_keys(tmp_path: Path, lores: str) -> None:
    path = write(tmp_path, f'[camera]\nresolution = "640x480"\nlores = "{lores}"\n')
    errors = file_errors(path)
    assert len(errors) == 1
    assert "camera.lores" in errors[0]
    assert "camera.resolution" in errors[0]
    assert lores in errors[0]


def test_lores_equal_to_main_is_fine(tmp_path: Path) -> None:
    s = load_file(write(tmp_path, '[camera]\nresolution = "640x480"\nlores = "640x480"\n'))
    assert s.camera.lores == s.camera.resolution


def test_lores_check_uses_the_effective_main_resolution() -> None:
    # Only --resolution given: the default lores (320x240) no longer fits in 256x192.
    errors = errors_of("--resolution", "256x192")
    assert len(errors) == 1
    assert "camera.lores" in errors[0]
    assert "camera.resolution" in errors[0]


def test_recording_window_across_midnight(tmp_path: Path) -> None:
    s = load_file(write(tmp_path, '[camera]\nrecording_window = "22-6"\n'))
    window = s.camera.recording_window
    assert window == Window(22, 6)
    assert isinstance(window, Window)
    inside = {22, 23, 0, 1, 2, 3, 4, 5, 6}
    for hour in range(24):
        assert window.contains(hour) is (hour in inside), hour


def test_recording_window_end_hour_is_inclusive() -> None:
    window = parse("--recording-window", "8-18").camera.recording_window
    assert window == Window(8, 18)
    assert window is not None
    assert not window.contains(7)
    assert window.contains(8)
    assert window.contains(18)
    assert not window.contains(19)
    assert [h for h in range(24) if window.contains(h)] == list(range(8, 19))


def test_recording_window_single_hour() -> None:
    window = parse("--recording-window", "5-5").camera.recording_window
    assert window is not None
    assert [h for h in range(24) if window.contains(h)] == [5]


@pytest.mark.parametrize("value", ["24-6", "8-25", "8", "8-", "eight-six", "8:00-18:00"])
def test_bad_recording_window(value: str) -> None:
    errors = errors_of(f"--recording-window={value}")
    assert len(errors) == 1
    assert "camera.recording_window" in errors[0]
    assert value in errors[0]
    assert "0-23" in errors[0]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("storage.max_bytes", "512M", 512 * 1024**2),
        ("storage.max_bytes", "2G", 2 * 1024**3),
        ("storage.min_free", "512M", 512 * 1024**2),
        ("camera.buffer_size", "2G", 2 * 1024**3),
        ("camera.buffer_size", "64K", 64 * 1024),
        ("storage.max_bytes", "1000", 1000),
    ],
)
def test_sizes_parse_to_bytes(tmp_path: Path, key: str, value: str, expected: int) -> None:
    section, name = key.split(".")
    s = load_file(write(tmp_path, f'[{section}]\n{name} = "{value}"\n'))
    assert flat(s)[key] == expected
    assert type(flat(s)[key]) is int


def test_default_sizes_are_bytes() -> None:
    s = parse()
    assert s.storage.max_bytes == 1024**3
    assert s.storage.min_free == 256 * 1024**2


def test_size_as_toml_integer(tmp_path: Path) -> None:
    s = load_file(write(tmp_path, "[storage]\nmax_bytes = 5000000\n"))
    assert s.storage.max_bytes == 5_000_000


@pytest.mark.parametrize("value", ["lots", "-1", "2X", "1e9"])
def test_bad_size(value: str) -> None:
    errors = errors_of(f"--clip-quota={value}")
    assert len(errors) == 1
    assert "storage.max_bytes" in errors[0]
    assert value in errors[0]


def test_mask_rects_from_toml(tmp_path: Path) -> None:
    s = load_file(write(tmp_path, '[motion]\nmask_rects = "0,0,10,10;5,5,2,2"\n'))
    assert s.motion.mask_rects == (Rect(0, 0, 10, 10), Rect(5, 5, 2, 2))
    assert all(isinstance(r, Rect) for r in s.motion.mask_rects)


def test_mask_rects_from_repeated_flags() -> None:
    s = parse("--mask-rect", "0,0,10,10", "--mask-rect", "5,5,2,2")
    assert s.motion.mask_rects == (Rect(0, 0, 10, 10), Rect(5, 5, 2, 2))


def test_mask_rects_default_is_empty() -> None:
    assert parse().motion.mask_rects == ()


@pytest.mark.parametrize("value", ["0,0,10", "0,0,10,0", "a,b,c,d", "-1,0,10,10"])
def test_bad_mask_rect(value: str) -> None:
    errors = errors_of(f"--mask-rect={value}")
    assert len(errors) == 1
    assert "motion.mask_rects" in errors[0]
    assert value in errors[0]


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_toml_number_for_a_whole_number_setting(tmp_path: Path, value: str) -> None:
    # TOML has inf and nan floats; they must be refused like any other bad number.
    errors = file_errors(write(tmp_path, f"[camera]\nframerate = {value}\n"))
    assert len(errors) == 1
    assert "camera.framerate" in errors[0]
    assert "1 to 120" in errors[0]


def test_fractional_number_for_a_whole_number_setting(tmp_path: Path) -> None:
    errors = file_errors(write(tmp_path, "[camera]\nframerate = 20.5\n"))
    assert len(errors) == 1
    assert "camera.framerate" in errors[0]
    assert "20.5" in errors[0]


def test_whole_float_for_a_whole_number_setting(tmp_path: Path) -> None:
    s = load_file(write(tmp_path, "[camera]\nframerate = 25.0\n"))
    assert s.camera.framerate == 25
    assert type(s.camera.framerate) is int


def test_boolean_is_not_a_number(tmp_path: Path) -> None:
    errors = file_errors(write(tmp_path, "[camera]\nframerate = true\n"))
    assert len(errors) == 1
    assert "camera.framerate" in errors[0]


# -- every problem at once, one line each --------------------------------------------------


def test_several_bad_values_give_one_line_each() -> None:
    errors = errors_of(
        "--framerate",
        "abc",
        "--rotation",
        "45",
        "--encoding-profile",
        "ultra",
        "--resolution",
        "641x480",
        "--cloudwatch-event-type",
        "xml",
        "--health-interval",
        "30",
        "--shadow-update",
        "sometimes",
    )
    expected = {
        "camera.framerate": ["abc", "1", "120"],
        "camera.rotation": ["45", "0, 90, 180, 270"],
        "camera.encoding_profile": ["ultra", *settings.PROFILES],
        "camera.resolution": ["641x480", "WIDTHxHEIGHT"],
        "cloudwatch.event_type": ["xml", "logs", "emf", "all"],
        "health.interval": ["30", "60", "3600"],
        "events.shadow_update": ["sometimes", "always", "never", "empty"],
    }
    assert len(errors) == len(expected), errors
    for key, parts in expected.items():
        lines = [e for e in errors if f"{key} " in e or e.startswith(f"{key}:")]
        assert len(lines) == 1, (key, errors)
        for part in parts:
            assert part in lines[0], (key, part, lines[0])
    assert all("\n" not in e for e in errors)


def test_bad_values_from_the_file_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[camera]\nframerate = 500\nrotation = "45"\n[health]\ninterval = 10\n',
    )
    errors = file_errors(path)
    assert len(errors) == 3, errors
    framerate, rotation, interval = sorted(errors, key=lambda e: e.split(" ")[0])
    assert "camera.framerate" in framerate
    assert "500" in framerate
    assert "120" in framerate
    assert "camera.rotation" in rotation
    assert "45" in rotation
    assert "270" in rotation
    assert "health.interval" in interval
    assert "10" in interval
    assert "3600" in interval


def test_unknown_key_does_not_hide_bad_values_in_the_same_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[camera]\nframrate = 25\nrotation = 45\n")
    errors = file_errors(path)
    assert len(errors) == 2, errors
    assert any("camera.framrate" in e for e in errors)
    assert any("camera.rotation" in e and "45" in e for e in errors)


def test_bad_value_does_not_hide_a_missing_video_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    errors = errors_of("--framerate", "abc", "--source", str(missing))
    assert len(errors) == 2, errors
    assert any("camera.framerate" in e and "abc" in e for e in errors)
    assert any("source.source" in e and str(missing) in e for e in errors)


def test_missing_video_file_names_source(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    errors = errors_of("--source", str(missing))
    assert len(errors) == 1
    assert "source.source" in errors[0]
    assert str(missing) in errors[0]


def test_existing_video_file_and_keywords_are_sources(tmp_path: Path) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    assert parse("--source", str(video)).source.source == str(video)
    assert parse("--source", "SYNTHETIC").source.source == "synthetic"
    assert parse().source.source == "auto"


# -- frozen and typed ----------------------------------------------------------------------


def test_settings_are_frozen() -> None:
    s = parse()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.camera.framerate = 30  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.camera = s.camera  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.cloudwatch.enabled = True  # type: ignore[misc]
    assert s.camera.framerate == 20


def test_settings_are_hashable_values() -> None:
    assert parse() == parse()
    assert hash(parse()) == hash(parse())
    assert parse("--framerate", "30") != parse()


def test_settings_are_typed(tmp_path: Path) -> None:
    s = parse("--framerate", "30", "--resolution", "1280x720", "--buffer-size", "2M")
    assert type(s.camera.framerate) is int
    assert isinstance(s.camera.resolution, Resolution)
    assert (s.camera.resolution.width, s.camera.resolution.height) == (1280, 720)
    assert s.camera.lores.width == 320
    assert s.camera.lores.height == 240
    assert type(s.camera.rotation) is int
    assert type(s.camera.encoding_level) is str
    assert type(s.camera.buffer_size) is int
    assert type(s.motion.analysis_fps) is float
    assert type(s.recorder.pre_roll) is float
    assert type(s.recorder.post_roll) is float
    assert isinstance(s.storage.combine_dir, Path)
    assert isinstance(s.events.event_input, Path)
    assert type(s.storage.max_bytes) is int
    assert type(s.cloudwatch.enabled) is bool
    assert isinstance(s.motion.mask_rects, tuple)


# -- round trip through to_toml -----------------------------------------------------------


def roundtrip(s: Settings, tmp_path: Path) -> Settings:
    text = s.to_toml()
    tomllib.loads(text)  # valid TOML on its own
    path = write(tmp_path, text, name="roundtrip.toml")
    return load_file(path)


def test_defaults_round_trip(tmp_path: Path) -> None:
    s = parse()
    assert roundtrip(s, tmp_path) == s


def test_to_toml_sections_are_the_settings_sections() -> None:
    doc = tomllib.loads(parse().to_toml())
    assert set(doc) == {f.name for f in dataclasses.fields(Settings)}
    assert doc["camera"]["framerate"] == 20
    assert doc["camera"]["rotation"] == 0
    assert doc["camera"]["resolution"] == "640x480"
    assert doc["cloudwatch"]["enabled"] is False
    for section, body in doc.items():
        for name in body:
            assert f"{section}.{name}" in settings.OPTION_BY_KEY


def test_non_default_settings_round_trip(tmp_path: Path) -> None:
    video = tmp_path / "porch clip.mp4"
    video.write_bytes(b"")
    s = parse(
        "--resolution",
        "1280x720",
        "--lores",
        "640x360",
        "--framerate",
        "25",
        "--rotation",
        "90",
        "--buffer",
        "20",
        "--pre-roll",
        "2.5",
        "--buffer-size",
        "512M",
        "--recording-window",
        "22-6",
        "--mask-rect",
        "0,0,10,10",
        "--mask-rect",
        "5,5,2,2",
        "--source",
        str(video),
        "--combine-dir",
        str(tmp_path / "my clips"),
        "--bucket-name",
        "bucket",
        "--bucket-prefix",
        'we"ird\\prefix',
        "--clip-quota",
        "2G",
        "--thing-name",
        "cam-1",
        "--cloudwatch",
        "--disable-cloudwatch-stream-split",
        "--dataplane",
        "--analysis-fps",
        "2.5",
        "--log-level",
        "DEBUG",
        environ={"AWS_DEFAULT_REGION": "eu-west-1"},
    )
    back = roundtrip(s, tmp_path)
    assert back == s
    assert back.camera.recording_window == Window(22, 6)
    assert back.motion.mask_rects == (Rect(0, 0, 10, 10), Rect(5, 5, 2, 2))
    assert back.storage.video_prefix == 'we"ird\\prefix'
    assert back.recorder.pre_roll == 2.5
    assert back.recorder.post_roll == 20.0


@pytest.mark.parametrize(
    ("model", "size", "refused"),
    [
        ("Raspberry Pi Zero W Rev 1.1", "1920x1080", False),
        ("Raspberry Pi Zero W Rev 1.1", "2592x1944", True),
        ("Raspberry Pi 4 Model B Rev 1.5", "1920x1200", True),
        ("Raspberry Pi 4 Model B Rev 1.5", "2048x1024", True),
        ("Raspberry Pi 5 Model B Rev 1.0", "2592x1944", False),
        (None, "4096x2160", False),
    ],
)
def test_resolution_the_pis_encoder_cannot_take(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model: str | None, size: str, refused: bool
) -> None:
    from pinthesky.hardware import board

    model_file = tmp_path / "model"
    if model is not None:
        model_file.write_bytes(model.encode() + b"\0")
    monkeypatch.setattr(board, "MODEL_FILE", model_file)
    # At 5 fps: 4096x2160 at the default 20 is more than H.264 level 4.2 (see below), and
    # more than the Pi's encoder's macroblock rate.
    raw = {"camera.resolution": size, "camera.framerate": 5}
    if not refused:
        assert str(settings.load(raw, environ={}).camera.resolution) == size
        return
    with pytest.raises(ConfigError) as err:
        settings.load(raw, environ={})
    assert str(err.value) == (
        f"camera.resolution = '{size}': the {model}'s H.264 encoder takes at most 1920x1080 "
        "(8192 macroblocks, no side over 1920)"
    )
    # A change from the cloud is refused the same way and the last good size is kept.
    s = settings.load({}, environ={})
    s2, errors = settings.merge(s, {"camera.resolution": size}, "shadow")
    assert errors == [f"shadow {err.value}"]
    assert s2.camera.resolution == s.camera.resolution
    # A replayed file is not encoded by the Pi: no limit.
    replay = tmp_path / "clip.mp4"
    replay.write_bytes(b"")
    assert settings.load({**raw, "source.source": str(replay)}, environ={})


@pytest.mark.parametrize(
    ("model", "size", "fps", "top"),
    [
        ("Raspberry Pi 4 Model B Rev 1.5", "1920x1080", 31, 30),
        ("Raspberry Pi 4 Model B Rev 1.5", "1920x1080", 60, 30),
        ("Raspberry Pi Zero W Rev 1.1", "1280x720", 120, 68),
        ("Raspberry Pi 3 Model B Plus Rev 1.3", "640x480", 120, None),
        ("Raspberry Pi 4 Model B Rev 1.5", "1280x720", 60, None),
        ("Raspberry Pi 5 Model B Rev 1.0", "1920x1080", 60, 40),
        ("Raspberry Pi 5 Model B Rev 1.0", "3840x2160", 15, 10),
        ("Raspberry Pi 5 Model B Rev 1.0", "1920x1080", 40, None),
        (None, "3840x2160", 15, None),
    ],
)
def test_a_rate_the_pis_encoder_cannot_keep_up_with_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    model: str | None,
    size: str,
    fps: int,
    top: int | None,
) -> None:
    """The Pi 0-4's encoder is rated 1080p30; a Pi 5 encodes in software (bench/
    pi5_encoder.py): past what each keeps up with the camera would drop frames, so the
    setting is refused in one line naming the highest rate at that size."""
    from pinthesky.hardware import board

    model_file = tmp_path / "model"
    if model is not None:
        model_file.write_bytes(model.encode() + b"\0")
    monkeypatch.setattr(board, "MODEL_FILE", model_file)
    raw = {"camera.resolution": size, "camera.framerate": fps}
    if top is None:
        assert settings.load(raw, environ={}).camera.framerate == fps
        return
    with pytest.raises(ConfigError) as err:
        settings.load(raw, environ={})
    what = "H.264 encoder" if "Pi 5" not in str(model) else "software H.264 encoder (libx264)"
    assert str(err.value) == (
        f"camera.framerate = {fps}: the {model}'s {what} keeps up with at most {top} fps at {size}"
    )
    s = settings.load({}, environ={})
    s2, errors = settings.merge(s, {"camera.resolution": size, "camera.framerate": fps}, "page")
    assert errors == [f"page {err.value}"]
    assert (s2.camera.resolution, s2.camera.framerate) == (s.camera.resolution, s.camera.framerate)


@pytest.mark.parametrize(
    ("interval", "fps", "seconds"),
    [(0, 20.0, 1.0), (0, 14.0, 1.0), (40, 20.0, 2.0), (40, 14.0, 40 / 14)],
)
def test_keyframe_seconds_follow_the_delivered_rate(
    interval: int, fps: float, seconds: float
) -> None:
    """A camera that gives 14 fps where 30 were asked spaces its keyframes by what it gives."""
    camera = dataclasses.replace(
        settings.load({}, environ={}).camera, framerate=30, keyframe_interval=interval
    )
    assert camera.keyframe_seconds(fps) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("raw", "value"),
    [("default", "default"), ("Continuous", "continuous"), ("2", 2.0), (0, 0.0), ("0.5", 0.5)],
)
def test_focus_values(raw: Any, value: Any) -> None:
    assert settings.load({"camera.focus": raw}, environ={}).camera.focus == value


@pytest.mark.parametrize("raw", ["far", "-1", 33, "", True, "nan"])
def test_a_bad_focus_is_one_line(raw: Any) -> None:
    with pytest.raises(ConfigError) as err:
        settings.load({"camera.focus": raw}, environ={})
    assert str(err.value).startswith("--focus camera.focus = ")
    assert str(err.value).endswith(
        "must be default, continuous or a lens position in dioptres from 0 (infinity) to 32"
    )


def test_the_tuning_file_must_exist_on_a_pi(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pinthesky.hardware import board, camera

    (tmp_path / "vc4").mkdir()
    (tmp_path / "vc4" / "imx219_noir.json").write_text("{}")
    monkeypatch.setattr(camera, "TUNING_DIRS", (tmp_path,))
    raw = {"camera.tuning": "imx219_noir.json"}
    # Off a Pi nothing is loaded: the name is only checked for its form.
    monkeypatch.setattr(board, "MODEL_FILE", tmp_path / "no-model")
    assert settings.load({"camera.tuning": "imx477_noir.json"}, environ={}).camera.tuning == (
        "imx477_noir.json"
    )
    model = tmp_path / "model"
    model.write_text("Raspberry Pi 4 Model B Rev 1.5\0")
    monkeypatch.setattr(board, "MODEL_FILE", model)
    assert settings.load(raw, environ={}).camera.tuning == "imx219_noir.json"
    with pytest.raises(ConfigError) as err:
        settings.load({"camera.tuning": "imx477_noir.json"}, environ={})
    assert str(err.value) == (
        f"camera.tuning = 'imx477_noir.json': no tuning file imx477_noir.json in {tmp_path}/vc4"
    )
    for bad in ("../../etc/passwd.json", "noir", "relative/x.json", "a" * 300 + ".json"):
        with pytest.raises(ConfigError, match=r"^--tuning camera.tuning = .*: must be default, a "):
            settings.load({"camera.tuning": bad}, environ={})
    path = tmp_path / "vc4" / "imx219_noir.json"
    assert settings.load({"camera.tuning": str(path)}, environ={}).camera.tuning == str(path)


def test_the_slowest_night_rate_is_below_the_frame_rate() -> None:
    s = settings.load({"camera.min_framerate": "5"}, environ={})
    assert s.camera.min_framerate == 5.0
    assert settings.load({}, environ={}).camera.min_framerate is None
    with pytest.raises(ConfigError) as err:
        settings.load({"camera.min_framerate": 25, "camera.framerate": 20}, environ={})
    assert str(err.value) == "camera.min_framerate = 25: must not be above camera.framerate (20)"
    # Keyframes one a second at the day's rate come four seconds apart at 5 fps: the ring
    # keeps enough for a clip that starts at night.
    assert s.camera.keyframe_seconds(20.0) == 4.0


def test_focus_tuning_and_night_go_through_the_shadow_and_the_page() -> None:
    from pinthesky.control import shadow

    s = settings.load({}, environ={})
    doc = shadow.reported_document(s)["camera"]
    assert (doc["focus"], doc["tuning"], doc["min_framerate"]) == ("default", "default", None)
    changes, refused = shadow.desired_changes(
        s, {"camera": {"focus": "continuous", "min_framerate": "4", "tuning": "default"}}, False
    )
    assert refused == []
    assert changes == {"camera.focus": "continuous", "camera.min_framerate": "4"}
    s2, errors = settings.merge(s, changes, "shadow")
    assert errors == [] and s2.camera.focus == "continuous" and s2.camera.min_framerate == 4.0
    assert {"camera.focus", "camera.tuning", "camera.min_framerate"} <= set(settings.PAGE_KEYS)
    assert {"camera.focus", "camera.tuning", "camera.min_framerate"} <= shadow.RESTART_KEYS


def test_privacy_masks_and_the_timestamp_go_through_the_shadow_and_apply_live() -> None:
    from pinthesky.control import shadow

    s = settings.load({}, environ={})
    doc = shadow.reported_document(s)["camera"]
    assert (doc["privacy_masks"], doc["timestamp"]) == ([], None)
    desired = {"camera": {"privacy_masks": [[64, 96, 160, 120]], "timestamp": "%H:%M"}}
    changes, refused = shadow.desired_changes(s, desired, False)
    assert refused == [] and set(changes) == {"camera.privacy_masks", "camera.timestamp"}
    s2, errors = settings.merge(s, changes, "shadow")
    assert errors == [] and s2.camera.privacy_masks == (settings.Rect(64, 96, 160, 120),)
    assert shadow.reported_document(s2)["camera"]["privacy_masks"] == [[64, 96, 160, 120]]
    # Applied from the next frame, not by reopening the camera.
    assert not {"camera.privacy_masks", "camera.timestamp"} & shadow.RESTART_KEYS
    _, errors = settings.merge(s, {"camera.privacy_masks": [[0, 0, 640, 480]]}, "shadow")
    assert len(errors) == 1 and "hide the whole picture" in errors[0]


# -- hostile values: what the page, the shadow or a file may send -------------------------------


def usable(s: Settings) -> list[str]:
    """Where ``s`` holds something its own types do not allow (what a later step would trip
    on: a None where a number belongs, a number that is not finite)."""
    import math
    import types
    import typing

    wrong = []
    for section in dataclasses.fields(s):
        obj = getattr(s, section.name)
        hints = typing.get_type_hints(type(obj), vars(settings))
        for f in dataclasses.fields(obj):
            value, hint = getattr(obj, f.name), hints[f.name]
            kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
            kinds = tuple(typing.get_origin(k) or k for k in kinds)
            if not isinstance(value, kinds) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                wrong.append(f"{section.name}.{f.name} = {value!r}")
    return wrong


@pytest.mark.parametrize("key", settings.PAGE_KEYS)
def test_every_page_key_refuses_wrong_types_and_huge_numbers_in_one_line(key: str) -> None:
    s = settings.defaults()
    for value in HOSTILE_VALUES:
        changed, errors = settings.merge(s, {key: value}, "page")  # never raises
        assert usable(changed) == [], (key, value)
        if errors:
            assert len(errors) == 1 and errors[0].startswith(f"page {key} = "), errors
            assert len(errors[0]) < 400, errors[0]
            assert settings.flatten(changed)[key] == settings.flatten(s)[key]
        elif key in ("camera.timestamp", "camera.armed"):  # switches: True turns them on
            assert value in ("", "  ", None, True), f"{key} took {value!r}"
        else:  # the empty ones mean the default (or no mask); 0.5 s is a fine roll
            assert value in ("", "  ", None, [], 0.5), f"{key} took {value!r}"
        if isinstance(value, str) and any(c.isdigit() and not c.isascii() for c in value):
            assert errors, f"{key} took Unicode digits {value!r}"


def test_an_emptied_roll_follows_buffer_again_as_at_start() -> None:
    s = settings.defaults()
    s2, errors = settings.merge(
        s, {"recorder.pre_roll": "", "recorder.post_roll": None, "camera.buffer": 20}, "page"
    )
    assert errors == []
    assert (s2.recorder.pre_roll, s2.recorder.post_roll) == (10.0, 20.0)
    s3, errors = settings.merge(s2, {"camera.resolution": "320x240"}, "page")
    assert errors == [] and s3.recorder.pre_roll == 10.0


@pytest.mark.parametrize("value", ["", "none", "None", "NULL", " null ", "   "])
def test_a_password_that_reads_as_no_password_is_refused(tmp_path: Path, value: str) -> None:
    errors = errors_of("--http-password", value)
    assert len(errors) == 1 and "http.password" in errors[0]
    assert '"none" and "null" are not passwords' in errors[0]
    errors = file_errors(write(tmp_path, f'[http]\npassword = "{value}"\n'))
    assert len(errors) == 1 and "http.password" in errors[0]


def test_a_password_is_text_without_control_characters(tmp_path: Path) -> None:
    assert file_errors(write(tmp_path, "[http]\npassword = 1234\n"))
    assert errors_of("--http-password", "a\nb")
    assert parse("--http-password", " my pass ").http.password == " my pass "
    assert parse().http.password is None  # left out: no password
    # --validate-config's output is a config file that gives the same settings back.
    assert "# password is not set" in parse().to_toml()


@pytest.mark.parametrize(
    "value",
    ["5000,0,10,10", "0,0,9999999999,10", "1" * 400 + ",0,1,1", "0,0,1,1;" * 65],
    ids=["x", "width", "digits", "count"],
)
def test_mask_rectangles_far_outside_any_picture_are_refused(value: str) -> None:
    errors = errors_of("--mask-rect", value)
    assert len(errors) == 1 and "motion.mask_rects" in errors[0] and len(errors[0]) < 300


def test_a_mask_rectangle_must_lie_in_the_picture_as_seen() -> None:
    s = settings.defaults()  # 640x480
    for rect, rotation, ok in (
        ([0, 0, 640, 480], 0, True),
        ([600, 0, 41, 10], 0, False),
        ([0, 400, 10, 81], 0, False),
        ([0, 600, 480, 40], 90, True),  # turned: the picture is 480x640
        ([600, 0, 40, 10], 90, False),
    ):
        s1, _ = settings.merge(s, {"camera.rotation": rotation}, "page")
        s2, errors = settings.merge(s1, {"motion.mask_rects": [rect]}, "page")
        assert (errors == []) == ok, (rect, rotation, errors)
        assert s2.motion.mask_rects == ((Rect(*rect),) if ok else ())
    # A mask drawn before stays when the picture changes under it (the analyzer clips it).
    s1, _ = settings.merge(s, {"motion.mask_rects": [[600, 400, 40, 80]]}, "page")
    s2, errors = settings.merge(s1, {"camera.resolution": "320x240"}, "page")
    assert errors == [] and s2.camera.resolution == Resolution(320, 240)


def test_a_picture_rate_no_pi_encodes_is_refused_and_the_camera_keeps_its_own() -> None:
    s = settings.defaults()
    s2, errors = settings.merge(
        s, {"camera.resolution": "4096x4096", "camera.framerate": 120}, "page"
    )
    assert len(errors) == 1 and "H.264 level 4.2" in errors[0]
    assert (s2.camera.resolution, s2.camera.framerate) == (Resolution(640, 480), 20)
    s3, errors = settings.merge(s, {"camera.resolution": "1920x1080", "camera.framerate": 60}, "")
    assert errors == [] and s3.camera.framerate == 60


@pytest.mark.parametrize(
    "value", ["9" * 400, 10**400, "1" * 30 + "T"], ids=["digits", "int", "terabytes"]
)
def test_a_size_of_hundreds_of_digits_is_one_line(tmp_path: Path, value: Any) -> None:
    s, errors = settings.merge(settings.defaults(), {"camera.buffer_size": value}, "shadow")
    assert len(errors) == 1 and "camera.buffer_size" in errors[0]
    assert s.camera.buffer_size is None


def test_saved_page_changes_that_no_longer_pass_are_left_out_and_the_camera_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = tmp_path / "local.toml"
    local.write_text(
        '[camera]\nsensitivity = 30\nresolution = "6400x480"\n'
        '[recorder]\npre_roll = "١٢"\n[motion]\nmask_rects = "0,0,9999,10"\n'
    )
    with caplog.at_level("WARNING"):
        s = parse("--local-settings", str(local))
    assert s.camera.sensitivity == 30  # the good one applies
    assert s.camera.resolution == Resolution(640, 480)
    assert s.recorder.pre_roll == 7.0 and s.motion.mask_rects == ()
    left_out = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(left_out) == 3, left_out


def test_a_link_in_place_of_the_saved_page_changes_is_not_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text("[camera]\nsensitivity = 77\n")
    local = tmp_path / "local.toml"
    local.symlink_to(elsewhere)
    with caplog.at_level("WARNING"):
        s = parse("--local-settings", str(local))
    assert s.camera.sensitivity == 10
    assert "not a regular file" in caplog.text


def test_host_names_are_names_or_addresses() -> None:
    s = parse("--http-host-names", "Cam.Example.NET., 203.0.113.7,[2001:db8::1]")
    assert s.http.host_names == ("cam.example.net", "203.0.113.7", "2001:db8::1")
    assert parse().http.host_names == ()
    for bad in ("evil.com/x", "a..b", "-a.com", "x" * 300):
        assert errors_of(f"--http-host-names={bad}"), bad
