"""Settings: every option once, validated once at the edge, then frozen.

One table (``OPTIONS``) names each setting by its key path (the TOML file and shadow section
names), its command-line flag (the 0.9.1 daemon's flags keep their names and defaults), its
default, what it accepts and what it means. The command line, the environment variables the
old daemon read, and the ``--config`` TOML file all feed the same table; a value is parsed and
checked by the same function whatever its origin, and every problem is reported as one line
naming the key, the value and what is allowed.

Precedence, lowest first: built-in defaults, the old daemon's environment variables, the TOML
file, the command line.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import re
import time
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from pinthesky.errors import ConfigError
from pinthesky.eventfiles import read_ours
from pinthesky.hardware import board
from pinthesky.hardware import camera as hardware

_log = logging.getLogger(__name__)


class Resolution(NamedTuple):
    width: int
    height: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


class Rect(NamedTuple):
    x: int
    y: int
    w: int
    h: int

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.w},{self.h}"


class Window(NamedTuple):
    """Recording window in local hours, end hour inclusive; may wrap midnight (22-6)."""

    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"

    def contains(self, hour: int) -> bool:
        if self.start <= self.end:
            return self.start <= hour <= self.end
        return hour >= self.start or hour <= self.end


# -- value parsers: each takes a raw value (a string from the CLI, or a TOML value) and returns
# the typed value or raises ValueError with the "what is allowed" part of the message.


_WHOLE = re.compile(r"[+-]?[0-9]{1,19}")
_REAL = re.compile(r"[+-]?(?:[0-9]{1,19}(?:\.[0-9]{0,19})?|\.[0-9]{1,19})(?:[eE][+-]?[0-9]{1,3})?")


def _number(v: Any, whole: bool) -> int | float:
    """A TOML or JSON number, or its text in ASCII digits; ValueError for anything else.

    Python's own ``int()`` and ``float()`` take what no later step expects: Unicode digits
    (``"١٢"``), ``"1_000"``, ``"nan"``, booleans, and integers of hundreds of digits that
    no float can hold (``OverflowError``, not ``ValueError``).
    """
    if isinstance(v, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(v, str):
        text = v.strip()
        if _WHOLE.fullmatch(text):
            return int(text)
        if not whole and _REAL.fullmatch(text):
            return float(text)
        raise ValueError(f"not a number: {text[:20]!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and (not whole or v.is_integer()):
        return int(v) if whole else v
    raise ValueError(f"not a {'whole ' if whole else ''}number: {type(v).__name__}")


def _int(lo: int, hi: int) -> Callable[[Any], int]:
    allowed = f"must be a whole number from {lo} to {hi}"

    def parse(v: Any) -> int:
        try:
            n = int(_number(v, whole=True))
        except (ValueError, OverflowError):  # OverflowError: int(inf)
            raise ValueError(allowed) from None
        if not lo <= n <= hi:
            raise ValueError(allowed)
        return n

    return parse


def _float(lo: float, hi: float) -> Callable[[Any], float]:
    allowed = f"must be a number from {lo:g} to {hi:g}"

    def parse(v: Any) -> float:
        try:
            x = float(_number(v, whole=False))
        except (ValueError, OverflowError):  # OverflowError: float(10**400)
            raise ValueError(allowed) from None
        if not lo <= x <= hi:  # also rejects NaN and infinities
            raise ValueError(allowed)
        return x

    return parse


def _optional(inner: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "null")):
            return None
        return inner(v)

    return parse


def _choice(*allowed: Any) -> Callable[[Any], Any]:
    def parse(v: Any) -> Any:
        for a in allowed:
            if isinstance(a, int):
                try:
                    if _number(v, whole=True) == a:
                        return a
                except ValueError:
                    continue
            elif isinstance(a, str) and isinstance(v, str) and v.strip().lower() == a.lower():
                return a
        raise ValueError("must be one of " + ", ".join(str(a) for a in allowed))

    return parse


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(v, str) and v.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError("must be true or false")


def _text(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ValueError("must be a non-empty string")
    return v.strip()


def _pattern(regex: str, allowed: str) -> Callable[[Any], str]:
    """Text matching ``regex`` (what AWS accepts), else ``allowed`` as the error."""
    compiled = re.compile(regex)

    def parse(v: Any) -> str:
        text = _text(v)
        if not compiled.fullmatch(text):
            raise ValueError(allowed)
        return text

    return parse


_log_group = _pattern(
    r"[A-Za-z0-9._/#-]{1,512}", "must be 1 to 512 of the characters A-Z a-z 0-9 . _ - / #"
)
_namespace = _pattern(
    r"(?!AWS/)[A-Za-z0-9 ._/#:-]{1,255}",
    "must be 1 to 255 of the characters A-Z a-z 0-9 space . _ - / # : and not start with AWS/",
)


def _resolution(lo: int, hi: int) -> Callable[[Any], Resolution]:
    def parse(v: Any) -> Resolution:
        m = re.fullmatch(r"\s*([0-9]{1,5})\s*[xX]\s*([0-9]{1,5})\s*", str(v))
        allowed = f"must be WIDTHxHEIGHT with even numbers from {lo} to {hi}, e.g. 640x480"
        if not m:
            raise ValueError(allowed)
        w, h = int(m.group(1)), int(m.group(2))
        if w % 2 or h % 2 or not (lo <= w <= hi and lo <= h <= hi):
            raise ValueError(allowed)
        return Resolution(w, h)

    return parse


def _window(v: Any) -> Window:
    m = re.fullmatch(r"\s*([0-9]{1,2})\s*-\s*([0-9]{1,2})\s*", str(v))
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 23:
        raise ValueError("must be START-END in hours 0-23 (end inclusive), e.g. 8-18 or 22-6")
    return Window(int(m.group(1)), int(m.group(2)))


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


MAX_BYTES = 1024**5
"""Largest size a setting takes (1024T): far beyond any disk or memory of a Pi."""


def _bytes(v: Any) -> int:
    allowed = "must be a size in bytes up to 1024T, optionally with K, M, G or T (e.g. 512M, 2G)"
    if isinstance(v, bool):
        raise ValueError(allowed)
    if isinstance(v, int):
        n = v
    else:
        m = re.fullmatch(r"\s*([0-9]{1,16}(?:\.[0-9]{1,9})?)\s*([kKmMgGtT]?)[iI]?[bB]?\s*", str(v))
        if not m:
            raise ValueError(allowed)
        n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if not 0 <= n <= MAX_BYTES:
        raise ValueError(allowed)
    return n


RESOLUTION_MAX = 4096
"""Longest side of a picture (``camera.resolution``), and so of a mask rectangle."""
MAX_RECTS = 64


def _rects(v: Any) -> tuple[Rect, ...]:
    allowed = (
        f"must be up to {MAX_RECTS} rectangles X,Y,W,H in pixels of the picture, separated by ';'"
    )
    if isinstance(v, str):
        items: list[Any] = [p for p in v.split(";") if p.strip()]
    elif isinstance(v, list | tuple):
        items = list(v)
    else:
        raise ValueError(allowed)
    if len(items) > MAX_RECTS:
        raise ValueError(allowed)
    out = []
    for item in items:
        parts = item.split(",") if isinstance(item, str) else item
        if not isinstance(parts, list | tuple) or len(parts) != 4:
            raise ValueError(allowed)
        try:
            x, y, w, h = (int(_number(p, whole=True)) for p in parts)
        except ValueError:
            raise ValueError(allowed) from None
        # Beyond the largest picture a rectangle means nothing: the picture check in
        # _verify says where it went wrong, this one keeps absurd numbers out of it.
        if not (0 <= x < RESOLUTION_MAX and 0 <= y < RESOLUTION_MAX):
            raise ValueError(allowed)
        if not (0 < w <= RESOLUTION_MAX and 0 < h <= RESOLUTION_MAX):
            raise ValueError(allowed)
        out.append(Rect(x, y, w, h))
    return tuple(out)


TIMESTAMP_DEFAULT = "%Y-%m-%d %H:%M:%S"
TIMESTAMP_CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
MAX_PRIVACY_MASKS = 16


def _timestamp(v: Any) -> str | None:
    """Off (None), on (the default format), or a strftime format of printable ASCII."""
    allowed = (
        "must be on, off, or a strftime format of at most 64 printable ASCII characters with "
        "a date or time field in it, e.g. '%d/%m/%Y %H:%M:%S'"
    )
    if v is None or v is False:
        return None
    if v is True:
        return TIMESTAMP_DEFAULT
    if not isinstance(v, str):
        raise ValueError(allowed)
    text = v.strip()
    if text.lower() in ("", "off", "none", "no", "false"):
        return None
    if text.lower() in ("on", "yes", "true"):
        return TIMESTAMP_DEFAULT
    if len(text) > 64 or not all(32 <= ord(c) < 127 for c in text):
        raise ValueError(allowed)
    if not re.search(r"%[A-Za-z]", text):  # text without the time is no timestamp
        raise ValueError(allowed)
    try:
        shown = time.strftime(text, time.localtime(0))
    except ValueError:
        raise ValueError(allowed) from None
    if not shown.strip() or not all(32 <= ord(c) < 127 for c in shown):
        raise ValueError(allowed)
    return text


def _text_size(v: Any) -> int | None:
    if v is None or (isinstance(v, str) and v.strip().lower() in ("auto", "none", "")):
        return None
    try:
        return _int(8, 200)(v)
    except ValueError:
        raise ValueError("must be auto or a height in pixels from 8 to 200") from None


def _source(v: Any) -> str:
    s = _text(v)
    return s.lower() if s.lower() in ("auto", "synthetic", "picamera2") else s


_LEVEL_ALIASES = {
    "WARN": "WARNING",
    "CRITICAL": "FATAL",
    "10": "DEBUG",
    "20": "INFO",
    "30": "WARNING",
    "40": "ERROR",
    "50": "FATAL",
}


def _log_level(v: Any) -> str:
    """A log level name; the numbers Python uses (the old daemon reported 20) are accepted."""
    name = str(v).strip().upper()
    name = _LEVEL_ALIASES.get(name, name)
    if name not in LOG_LEVELS:
        raise ValueError("must be one of " + ", ".join(LOG_LEVELS))
    return name


def _path(v: Any) -> Path:
    return Path(_text(v))


MAX_URL = 512


def https_url(v: Any) -> str:
    """An ``https://host[:port][/path]`` URL: no credentials, query or fragment in it.

    Endpoints the device signs requests for: plain HTTP would expose the signed requests, and
    they come from the cloud (or the shadow), so anything else is refused.
    """
    from urllib.parse import urlsplit

    allowed = f"must be an https:// URL of at most {MAX_URL} characters, without credentials"
    text = _text(v)
    if len(text) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in text):
        raise ValueError(allowed)
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError on a port that is not a number or out of range
    except ValueError:
        raise ValueError(allowed) from None
    if (
        parts.scheme.lower() != "https"
        or not parts.hostname
        or parts.username is not None
        or parts.query
        or parts.fragment
        or port == 0
    ):
        raise ValueError(allowed)
    return text


def _live_size(v: Any) -> Resolution | None:
    if v is None or (isinstance(v, str) and v.strip().lower() in ("auto", "none", "")):
        return None
    try:
        return _resolution(32, 1920)(v)
    except ValueError:
        raise ValueError(
            "must be auto or WIDTHxHEIGHT with even numbers from 32 to 1920, e.g. 640x480"
        ) from None


BITRATE_MIN, BITRATE_MAX = 64_000, 60_000_000


def _bitrate(v: Any) -> int | None:
    """Bits per second, or ``auto`` (``None``): picked by ``auto_bitrate``."""
    if v is None or (isinstance(v, str) and v.strip().lower() in ("auto", "none", "")):
        return None
    try:
        n: int = _int(BITRATE_MIN, BITRATE_MAX)(v)
    except ValueError:
        raise ValueError(
            f"must be auto or a whole number of bits per second from {BITRATE_MIN} to {BITRATE_MAX}"
        ) from None
    return n


def _focus(v: Any) -> str | float:
    """``default``, ``continuous`` or a lens position in dioptres (1 / metres; 0 is infinity)."""
    allowed = "must be default, continuous or a lens position in dioptres from 0 (infinity) to 32"
    if isinstance(v, str) and v.strip().lower() in hardware.FOCUS_WORDS:
        return v.strip().lower()
    try:
        return _float(0, 32)(v)
    except ValueError:
        raise ValueError(allowed) from None


def _tuning(v: Any) -> str:
    """``default``, the name of a libcamera tuning file (``imx219_noir.json``) or its path."""
    allowed = (
        "must be default, a tuning file name such as imx219_noir.json, or the absolute path of one"
    )
    text = _text(v)
    if text.lower() == "default":
        return "default"
    name = Path(text).name
    if len(text) > 255 or not hardware.TUNING_NAME.fullmatch(name):
        raise ValueError(allowed)
    if "/" in text and not text.startswith("/"):
        raise ValueError(allowed)
    return text


def _port(v: Any) -> int | None:
    """A TCP port; 0 (or none) means off."""
    port: int = _int(0, 65535)(v)
    return port or None


def _bind(v: Any) -> str:
    import ipaddress

    text = _text(v)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("must be an IP address to listen on, e.g. 0.0.0.0 or 127.0.0.1") from None
    return text


_NO_PASSWORD = ("", "none", "null")


def _password(v: Any) -> str | None:
    """A real password or nothing: words that read as "no password" are refused, so that a
    password setting never leaves the page and RTSP open without saying so."""
    if v is None:
        return None  # the default: the key is not set anywhere
    allowed = (
        "must be a password of 1 to 256 characters without control characters "
        '(leave http.password out for none; "", "none" and "null" are not passwords)'
    )
    if not isinstance(v, str) or v.strip().lower() in _NO_PASSWORD:
        raise ValueError(allowed)
    if len(v) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError(allowed)
    return v


_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
)
MAX_HOST_NAMES = 32


def _host_names(v: Any) -> tuple[str, ...]:
    """Host names (or addresses) the local page answers to, besides its own."""
    import ipaddress

    allowed = (
        f"must be up to {MAX_HOST_NAMES} host names or IP addresses, separated by commas "
        "(e.g. camera.example.net, 203.0.113.7)"
    )
    if isinstance(v, str):
        items: list[Any] = re.split(r"[,;\s]+", v.strip())
    elif isinstance(v, list | tuple):
        items = list(v)
    else:
        raise ValueError(allowed)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(allowed)
        name = item.strip().lower().removesuffix(".")
        if not name:
            continue
        try:
            name = str(ipaddress.ip_address(name.removeprefix("[").removesuffix("]")))
        except ValueError:
            if not _HOST_NAME.fullmatch(name):
                raise ValueError(allowed) from None
        if name not in names:
            names.append(name)
    if len(names) > MAX_HOST_NAMES:
        raise ValueError(allowed)
    return tuple(names)


_HOST = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_.:-]*[A-Za-z0-9_])?")


def _host(v: Any) -> str:
    """A host name or an IP address (no scheme, port or path)."""
    text = _text(v)
    if not _HOST.fullmatch(text):
        raise ValueError("must be a host name or an IP address, e.g. homeassistant.local")
    return text


def _topic(v: Any) -> str:
    """An MQTT topic to publish under: no wildcards, no empty level at either end."""
    text = _text(v)
    if (
        len(text) > 128
        or not re.fullmatch(r"[A-Za-z0-9_./-]+", text)
        or text.startswith("/")
        or text.endswith("/")
        or "//" in text
    ):
        raise ValueError(
            "must be 1 to 128 of A-Z a-z 0-9 _ . - and / between levels (no wildcards)"
        )
    return text


SENSITIVITY_RANGE = (1, 100_000)
"""Moving macroblocks that make motion: the least and the most ``camera.sensitivity`` takes."""
PROFILES = ("baseline", "main", "extended", "high", "constrained")
LEVELS = ("1", "1b", "1.1", "1.2", "1.3", "2", "2.1", "2.2", "3", "3.1", "3.2", "4", "4.1", "4.2")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "FATAL")


@dataclass(frozen=True)
class Option:
    key: str
    """Key path: ``section.name`` in TOML (and in the shadow where the section exists there)."""
    flag: str | None
    parse: Callable[[Any], Any]
    default: Any
    help: str
    env: str | None = None
    """An environment variable for this option (the 0.9.1 daemon's, or pinthesky's own)."""
    switch: bool = False
    """A flag without a value (``store_true``); ``invert`` flips its meaning."""
    invert: bool = False
    metavar: str | None = None


OPTIONS: tuple[Option, ...] = (
    # camera: the shadow's camera section
    Option(
        "camera.resolution",
        "--resolution",
        _resolution(64, RESOLUTION_MAX),
        "640x480",
        "main stream resolution WIDTHxHEIGHT",
    ),
    Option("camera.framerate", "--framerate", _int(1, 120), 20, "frames per second"),
    Option(
        "camera.rotation",
        "--rotation",
        _choice(0, 90, 180, 270),
        0,
        "rotation of the mounted camera: 0, 90, 180 or 270",
    ),
    Option(
        "camera.encoding_bitrate",
        "--encoding-bitrate",
        _bitrate,
        "auto",
        "H.264 bitrate in bits per second, or auto: chosen from the resolution and framerate "
        "(see docs/bitrate.md)",
    ),
    Option(
        "camera.encoding_profile", "--encoding-profile", _choice(*PROFILES), "high", "H.264 profile"
    ),
    Option(
        "camera.encoding_level",
        "--encoding-level",
        _choice(*LEVELS),
        "4",
        "H.264 level (raised automatically by the hardware encoder when needed)",
    ),
    Option(
        "camera.buffer",
        "--buffer",
        _int(1, 600),
        15,
        "seconds: pre-roll is buffer // 2 and post-roll is buffer, unless --pre-roll or "
        "--post-roll are given",
    ),
    Option(
        "camera.buffer_size",
        "--buffer-size",
        _optional(_bytes),
        None,
        "cap the pre-event buffer in bytes (K, M, G suffixes allowed)",
    ),
    Option(
        "camera.sensitivity",
        "--sensitivity",
        _int(*SENSITIVITY_RANGE),
        10,
        "moving 16x16 macroblocks (at the main resolution) that make motion; lower is "
        "more sensitive",
    ),
    Option(
        "camera.recording_window",
        "--recording-window",
        _optional(_window),
        None,
        "record motion only between these local hours, e.g. 8-18 or 22-6 (end inclusive)",
    ),
    Option(
        "camera.armed",
        "--armed",
        _bool,
        True,
        "record motion clips and send motion alerts; false (disarmed) records only what is "
        "asked for (a manual clip, a still)",
    ),
    Option(
        "camera.lores",
        "--lores",
        _resolution(32, 1280),
        "320x240",
        "size of the grayscale analysis stream",
    ),
    Option(
        "camera.keyframe_interval",
        "--keyframe-interval",
        _int(0, 600),
        0,
        "frames between keyframes; 0 means one per second (the framerate)",
    ),
    Option(
        "camera.min_framerate",
        "--min-framerate",
        _optional(_float(0.5, 120)),
        None,
        "slowest frames per second allowed in the dark, for longer exposures at night "
        "(e.g. 5); none keeps camera.framerate fixed",
    ),
    Option(
        "camera.focus",
        "--focus",
        _focus,
        "default",
        "focus of a camera with autofocus (Camera Module 3): default (its tuning's, about "
        "1 m), continuous, or a lens position in dioptres (0 is infinity, 2 is half a metre)",
    ),
    Option(
        "camera.privacy_masks",
        "--privacy-mask",
        _rects,
        (),
        "rectangles X,Y,W,H (pixels of the picture as the viewer sees it) filled black in "
        "everything recorded, streamed or captured, and never analysed; repeat the flag or "
        "separate them with ';'",
    ),
    Option(
        "camera.timestamp",
        "--timestamp",
        _timestamp,
        None,
        "burn the local date and time into the picture: on (YYYY-MM-DD HH:MM:SS), off, or a "
        "strftime format such as '%d/%m/%Y %H:%M:%S'",
        metavar="FORMAT",
    ),
    Option(
        "camera.timestamp_position",
        "--timestamp-position",
        _choice(*TIMESTAMP_CORNERS),
        "top-left",
        "corner of the timestamp: " + ", ".join(TIMESTAMP_CORNERS),
    ),
    Option(
        "camera.timestamp_size",
        "--timestamp-size",
        _text_size,
        "auto",
        "height of the timestamp in pixels of the picture; auto is a 24th of its height",
    ),
    Option(
        "camera.tuning",
        "--tuning",
        _tuning,
        "default",
        "libcamera tuning file: default (the camera module's own), or a file name such as "
        "imx219_noir.json for a NoIR camera, or its path",
    ),
    # motion analysis
    Option(
        "motion.analysis_fps",
        "--analysis-fps",
        _float(0.5, 30),
        5.0,
        "analysed frames per second, independent of the camera framerate",
    ),
    Option(
        "motion.min_time",
        "--motion-min-time",
        _float(0, 10),
        0.4,
        "seconds motion must persist before it counts",
    ),
    Option(
        "motion.noise_level",
        "--noise-level",
        _int(1, 255),
        12,
        "smallest luma change counted (raised automatically when the sensor is noisy)",
    ),
    Option(
        "motion.lightswitch",
        "--lightswitch",
        _float(0.05, 1.0),
        0.4,
        "fraction of the picture changing at once that is taken for a lighting change",
    ),
    Option(
        "motion.mask",
        "--mask",
        _optional(_path),
        None,
        "image file (PNG, PGM, JPEG) whose black pixels are ignored",
    ),
    Option(
        "motion.mask_rects",
        "--mask-rect",
        _rects,
        (),
        "ignore these rectangles X,Y,W,H (main-resolution pixels), separated by ';'",
    ),
    # recorder
    Option(
        "recorder.pre_roll",
        "--pre-roll",
        _optional(_float(0, 300)),
        None,
        "seconds of video kept before motion (default: buffer // 2)",
    ),
    Option(
        "recorder.post_roll",
        "--post-roll",
        _optional(_float(0, 600)),
        None,
        "seconds recorded after the last motion (default: buffer)",
    ),
    Option(
        "recorder.max_clip",
        "--max-clip",
        _float(5, 3600),
        120.0,
        "split clips longer than this many seconds",
    ),
    # source
    Option(
        "source.source",
        "--source",
        _source,
        "auto",
        "auto (Pi camera if present, else synthetic), picamera2, synthetic, or a video file",
    ),
    Option(
        "source.replay_speed",
        "--replay-speed",
        _float(0, 100),
        1.0,
        "replay speed of a video file; 0 replays as fast as possible",
    ),
    # storage: local clips, and the shadow's storage section
    Option(
        "storage.combine_dir",
        "--combine-dir",
        _path,
        "motion_videos",
        "directory of finished clips (the upload queue)",
    ),
    Option(
        "storage.capture_dir",
        "--capture-dir",
        _path,
        "capture_images",
        "directory of captured still images",
    ),
    Option(
        "storage.clip_format",
        "--clip-format",
        _choice("mp4", "h264"),
        "mp4",
        "mp4 (fragmented, plays in browsers) or h264 (raw Annex-B, as Pi In The Sky 0.9)",
    ),
    Option(
        "storage.max_bytes",
        "--clip-quota",
        _bytes,
        "1G",
        "most bytes of clips kept locally; the oldest are evicted first",
    ),
    Option(
        "storage.min_free",
        "--min-free",
        _bytes,
        "256M",
        "free space kept on the clip file system; the oldest clips are evicted first",
    ),
    Option(
        "storage.enabled",
        None,
        _bool,
        True,
        "upload to the bucket (false keeps every clip local and never deletes one)",
    ),
    Option(
        "storage.video_format",
        "--video-format",
        _choice("h264", "mp4"),
        "h264",
        "format of uploaded clips: h264 (Annex-B, what Pi In The Sky converts) or mp4",
    ),
    Option(
        "storage.bucket_name",
        "--bucket-name",
        _optional(_text),
        None,
        "S3 bucket for clips and images",
    ),
    Option("storage.video_prefix", "--bucket-prefix", _text, "motion_videos", "S3 prefix of clips"),
    Option(
        "storage.image_prefix",
        "--bucket-image-prefix",
        _text,
        "capture_images",
        "S3 prefix of images",
    ),
    # cloud_connection
    Option(
        "cloud_connection.thing_name", "--thing-name", _optional(_text), None, "AWS IoT thing name"
    ),
    Option(
        "cloud_connection.cert_path",
        "--thing-cert",
        _optional(_path),
        None,
        "AWS IoT certificate of the thing",
    ),
    Option(
        "cloud_connection.key_path",
        "--thing-key",
        _optional(_path),
        None,
        "private key of the thing's certificate",
    ),
    Option(
        "cloud_connection.cacert_path",
        "--ca-cert",
        _optional(_path),
        None,
        "root CA that signs the AWS endpoints",
    ),
    Option(
        "cloud_connection.credentials_endpoint",
        "--credentials-endpoint",
        _optional(_text),
        None,
        "AWS IoT credentials provider endpoint",
    ),
    Option(
        "cloud_connection.role_alias",
        "--role-alias",
        _optional(_text),
        None,
        "AWS IoT role alias to exchange the certificate for credentials",
    ),
    # health
    Option(
        "health.interval",
        "--health-interval",
        _int(60, 3600),
        3600,
        "seconds between health reports (at most an hour: the cloud flags older ones)",
    ),
    Option(
        "health.file",
        "--health-file",
        _optional(_path),
        None,
        "also keep the last health report, with the upload queue, in this JSON file "
        "(pitsctl reads it)",
        metavar="FILE",
    ),
    # cloudwatch
    Option(
        "cloudwatch.enabled",
        "--cloudwatch",
        _bool,
        False,
        "send logs to CloudWatch",
        env="CLOUDWATCH",
        switch=True,
    ),
    Option(
        "cloudwatch.region_name",
        "--cloudwatch-region",
        _optional(_text),
        None,
        "AWS region of CloudWatch",
        env="AWS_DEFAULT_REGION",
    ),
    Option(
        "cloudwatch.threaded",
        "--cloudwatch-thread",
        _bool,
        False,
        "accepted for compatibility: logs are always sent in the background",
        env="CLOUDWATCH_THREADED",
        switch=True,
    ),
    Option(
        "cloudwatch.event_type",
        "--cloudwatch-event-type",
        _choice("logs", "emf", "all"),
        "logs",
        "what to send: logs, emf or all",
    ),
    Option(
        "cloudwatch.metric_namespace",
        "--cloudwatch-metric-namespace",
        _namespace,
        "Pits/Device",
        "namespace of EMF metrics",
    ),
    Option(
        "cloudwatch.log_group_name",
        "--cloudwatch-log-group",
        _optional(_log_group),
        None,
        "CloudWatch log group",
    ),
    Option(
        "cloudwatch.delineate_stream",
        "--disable-cloudwatch-stream-split",
        _bool,
        True,
        "split log streams by thing name (the flag disables it)",
        env="CLOUDWATCH_DELINEATE_STREAM",
        switch=True,
        invert=True,
    ),
    Option(
        "cloudwatch.send_interval",
        "--cloudwatch-send-interval",
        _float(0.1, 300),
        10.0,
        "seconds log records wait to be sent in one batch (errors go at once)",
    ),
    Option(
        "cloudwatch.metrics_interval",
        "--cloudwatch-metrics-interval",
        _int(1, 3600),
        60,
        "seconds between EMF metric records",
    ),
    # dataplane
    Option(
        "dataplane.enabled",
        "--dataplane",
        _bool,
        False,
        "enable live streaming",
        env="DATAPLANE",
        switch=True,
    ),
    Option(
        "dataplane.endpoint_url",
        "--dataplane-endpoint",
        _optional(https_url),
        None,
        "API Gateway management endpoint of the data plane",
    ),
    Option(
        "dataplane.region_name",
        "--dataplane-region",
        _optional(_text),
        None,
        "AWS region of the data plane",
        env="AWS_DEFAULT_REGION",
    ),
    # live view: the data plane's record command and the local page
    Option(
        "live.size",
        "--live-size",
        _live_size,
        "auto",
        "size of live pictures (MJPEG and MPEG-1): WIDTHxHEIGHT, or auto for the camera's "
        "resolution halved until it fits 640x480",
    ),
    Option(
        "live.fps",
        "--live-fps",
        _int(1, 30),
        5,
        "live pictures per second (MJPEG viewers and data-plane streams)",
    ),
    Option(
        "live.bitrate",
        "--live-bitrate",
        _int(100_000, 8_000_000),
        800_000,
        "bits per second of the MPEG-1 stream to the data plane",
    ),
    Option(
        "live.max_sessions",
        "--live-max-sessions",
        _int(1, 4),
        1,
        "data-plane live streams at once; one more record command is refused",
    ),
    # alerts: motion_start with a picture
    Option(
        "alerts.cooldown",
        "--alert-cooldown",
        _float(0, 86400),
        60.0,
        "seconds after a motion_start alert before the next one (clips are never limited)",
        metavar="S",
    ),
    Option(
        "http.port",
        "--http-port",
        _optional(_port),
        None,
        "port of the local page and MJPEG stream; off when not set (or 0)",
    ),
    Option(
        "http.bind",
        "--http-bind",
        _bind,
        "0.0.0.0",
        "address the local page listens on (127.0.0.1: this machine only)",
    ),
    Option(
        "http.password",
        "--http-password",
        _password,
        None,
        "password of the local page and RTSP (HTTP basic auth, any user name); better set in "
        "the --config file than on the command line; leave it out for none",
    ),
    Option(
        "http.host_names",
        "--http-host-names",
        _host_names,
        (),
        "other names the page answers to, separated by commas (a reverse proxy's, a port "
        "forward's address); its addresses, localhost, its host name and HOSTNAME.local always "
        "work, and a request for any other name is refused (DNS rebinding)",
        metavar="NAMES",
    ),
    Option(
        "http.max_viewers",
        "--http-max-viewers",
        _int(1, 32),
        4,
        "MJPEG viewers at once (they share one encoder); one more is answered 503",
    ),
    Option(
        "http.local_settings",
        "--local-settings",
        _path,
        "local-settings.toml",
        "TOML file that keeps the changes made on the local page (read after --config; "
        "a relative path is in the working directory, the state directory under systemd)",
    ),
    # RTSP out: the camera's H.264 to players and NVRs on the home network
    Option(
        "rtsp.port",
        "--rtsp-port",
        _optional(_port),
        None,
        "serve the camera's H.264 stream over RTSP on this port (rtsp://HOST:PORT/live); off "
        "when not set (or 0); the password is http.password",
    ),
    Option(
        "rtsp.bind",
        "--rtsp-bind",
        _bind,
        "0.0.0.0",
        "address the RTSP server listens on (127.0.0.1: this machine only)",
    ),
    Option(
        "rtsp.max_clients",
        "--rtsp-max-clients",
        _int(1, 16),
        2,
        "RTSP streams at once; one more SETUP is answered 453",
    ),
    # Home Assistant: MQTT discovery to a broker on the home network
    Option(
        "mqtt.host",
        "--mqtt-host",
        _optional(_host),
        None,
        "MQTT broker on the home network (Home Assistant's): its name or address; off when not set",
    ),
    Option(
        "mqtt.port",
        "--mqtt-port",
        _optional(_int(1, 65535)),
        None,
        "port of the MQTT broker (default 1883, or 8883 with mqtt.tls)",
    ),
    Option(
        "mqtt.username",
        None,
        _optional(_text),
        None,
        "user name on the MQTT broker",
    ),
    Option(
        "mqtt.password",
        None,
        _optional(_text),
        None,
        "password on the MQTT broker (in the --config file only, or use mqtt.password_file)",
    ),
    Option(
        "mqtt.password_file",
        None,
        _optional(_path),
        None,
        "file whose first line is the password on the MQTT broker",
    ),
    Option(
        "mqtt.tls",
        None,
        _bool,
        False,
        "connect to the broker over TLS (the broker's certificate is checked)",
    ),
    Option(
        "mqtt.ca_file",
        None,
        _optional(_path),
        None,
        "CA certificate that signs the broker's certificate (default: the system's CAs)",
    ),
    Option(
        "mqtt.discovery_prefix",
        None,
        _topic,
        "homeassistant",
        "Home Assistant's MQTT discovery prefix",
    ),
    Option(
        "mqtt.topic_prefix",
        None,
        _optional(_topic),
        None,
        "where this camera's MQTT topics start, unique per camera (default: "
        "pinthesky/<camera name>)",
    ),
    # events: the files shared with the IoT sidecar
    Option(
        "events.event_input",
        "--event-input",
        _path,
        "input.json",
        "file the sidecar appends cloud commands to",
    ),
    Option(
        "events.event_output",
        "--event-output",
        _path,
        "output.json",
        "file of events for the sidecar to publish",
    ),
    Option(
        "events.configure_input",
        "--configure-input",
        _path,
        "config-input.json",
        "file of the reported shadow document",
    ),
    Option(
        "events.configure_output",
        "--configure-output",
        _path,
        "config-output.json",
        "file of shadow documents written by the sidecar",
    ),
    Option(
        "events.shadow_allow_identity",
        "--shadow-allow-identity",
        _bool,
        False,
        "let the shadow change cloud_connection and storage.bucket_name (refused by default)",
        switch=True,
    ),
    Option(
        "events.shadow_update",
        "--shadow-update",
        _choice("always", "never", "empty"),
        "empty",
        "when to report the configuration at start: always, never, empty",
    ),
    # the daemon itself
    Option("daemon.log_level", "--log-level", _log_level, "INFO", "log level"),
    Option(
        "daemon.state_dir",
        "--state-dir",
        _path,
        ".",
        "directory of what pinthesky writes (clips, stills, the four event files, the page's "
        "saved changes) where their paths are relative: the working directory by default "
        "(/var/lib/pinthesky under systemd)",
        env="PINTHESKY_STATE_DIR",
    ),
    # pinthesky-iot, the MQTT sidecar (its flags are on its own command line only)
    Option(
        "iot.endpoint",
        "--endpoint",
        _optional(_text),
        None,
        "AWS IoT data endpoint (iot:Data-ATS) host name",
    ),
    Option("iot.port", "--port", _int(1, 65535), 8883, "MQTT port"),
    Option(
        "iot.shadow_name",
        "--shadow-name",
        _pattern(r"[A-Za-z0-9:_-]{1,64}", "must be 1 to 64 of A-Z a-z 0-9 : _ -"),
        "pinthesky",
        "named shadow holding the configuration",
    ),
    Option(
        "iot.seed_desired",
        "--seed-desired",
        _bool,
        False,
        "when the shadow's desired state is empty, seed it from the first report"
        " (the console needs desired.camera)",
        switch=True,
    ),
)
SIDECAR_SECTIONS = ("iot",)
MAX_LOCAL_BYTES = 64 * 1024
"""Largest ``--local-settings`` file read (the page writes a few hundred bytes)."""

PAGE_KEYS = (
    "camera.resolution",
    "camera.framerate",
    "camera.rotation",
    "camera.sensitivity",
    "camera.recording_window",
    "camera.armed",
    "camera.buffer",
    "camera.encoding_bitrate",
    "camera.encoding_profile",
    "camera.encoding_level",
    "camera.min_framerate",
    "camera.focus",
    "camera.tuning",
    "camera.privacy_masks",
    "camera.timestamp",
    "camera.timestamp_position",
    "camera.timestamp_size",
    "motion.min_time",
    "motion.mask_rects",
    "recorder.pre_roll",
    "recorder.post_roll",
    "recorder.max_clip",
    "health.interval",
    "daemon.log_level",
)
"""Settings the local page may change (and its ``--local-settings`` file may hold): the
camera and detection, each applied live. Where clips, credentials and uploads go, and the
page's own password, stay in the ``--config`` file that only the operator writes."""
"""Sections whose flags belong to ``pinthesky-iot``, not to the daemon."""

OPTION_BY_KEY = {o.key: o for o in OPTIONS}

STATE_KEYS = (
    "storage.combine_dir",
    "storage.capture_dir",
    "events.event_input",
    "events.event_output",
    "events.configure_input",
    "events.configure_output",
    "http.local_settings",
    "health.file",
)
"""Paths of what the daemon writes: relative ones are in ``daemon.state_dir``."""
SECRET_KEYS = frozenset({"http.password"})
"""Settings whose values are never printed or logged (``--validate-config``, problems)."""


# -- the typed, frozen result ------------------------------------------------------------


@dataclass(frozen=True)
class CameraSettings:
    resolution: Resolution
    """Main stream size; clips are recorded at this size."""
    framerate: int
    """Frames per second of the camera."""
    rotation: int
    """Mounting rotation: 180 in the sensor, 90/270 in software and as clip metadata."""
    encoding_bitrate: int | None
    """H.264 bitrate in bits per second as set; ``None`` is auto (see ``bitrate``)."""
    encoding_profile: str
    """H.264 profile name (Pi In The Sky spelling)."""
    encoding_level: str
    """H.264 level; reported to the cloud, the hardware picks the level it needs."""
    buffer: int
    """Old meaning: pre-roll ``buffer // 2`` s, post-roll ``buffer`` s."""
    buffer_size: int | None
    """Byte cap on the pre-event ring."""
    sensitivity: int
    """Moving macroblocks (16x16 at the main resolution) that count as motion."""
    recording_window: Window | None
    """Local hours in which motion is recorded; ``None`` is always."""
    armed: bool
    """Motion makes clips and alerts; disarmed, only manual clips and stills are made."""
    lores: Resolution
    """Analysis stream size."""
    keyframe_interval: int
    """Frames between keyframes (0: the framerate)."""
    min_framerate: float | None
    """Slowest rate the camera may fall to in the dark; ``None``: ``framerate``, fixed."""
    focus: str | float
    """``default``, ``continuous`` or a lens position in dioptres."""
    tuning: str
    """``default``, or a libcamera tuning file's name or path."""
    privacy_masks: tuple[Rect, ...]
    """Filled black in every frame, in pixels of the main picture as the viewer sees it."""
    timestamp: str | None
    """The strftime format of the date and time burned into the picture; None is off."""
    timestamp_position: str
    """Its corner: top-left, top-right, bottom-left or bottom-right."""
    timestamp_size: int | None
    """Its height in pixels of the main picture; None is a 24th of the picture."""

    @property
    def iperiod(self) -> int:
        return self.keyframe_interval or self.framerate

    @property
    def bitrate(self) -> int:
        """The bitrate the encoder runs at: the one set, or auto's for this size and rate."""
        if self.encoding_bitrate is not None:
            return self.encoding_bitrate
        return auto_bitrate(self.resolution, self.framerate)

    def keyframe_seconds(self, fps: float) -> float:
        """The most seconds between keyframes when the camera delivers ``fps`` (a sensor may
        give less than ``framerate``; 0 keeps meaning one keyframe every ``fps`` frames),
        counted at the slowest rate the night allows."""
        slowest = min(fps, self.min_framerate) if self.min_framerate else fps
        return (self.keyframe_interval or fps) / slowest


@dataclass(frozen=True)
class MotionSettings:
    analysis_fps: float
    """Analysed frames per second."""
    min_time: float
    """Seconds motion must persist before it counts."""
    noise_level: int
    """Smallest luma change counted; raised automatically with sensor noise."""
    lightswitch: float
    """Changed fraction of the picture taken for a lighting change."""
    mask: Path | None
    """Mask image: black pixels are ignored."""
    mask_rects: tuple[Rect, ...]
    """Ignored rectangles in main-resolution pixels."""


@dataclass(frozen=True)
class RecorderSettings:
    pre_roll: float
    """Seconds before the first moving frame that a clip starts (rounded down to a keyframe)."""
    post_roll: float
    """Seconds after the last moving frame that a clip ends."""
    max_clip: float
    """Clips are split at this length, on a keyframe."""


@dataclass(frozen=True)
class SourceSettings:
    source: str
    """``auto``, ``picamera2``, ``synthetic`` or a path to a video file."""
    replay_speed: float
    """1 is real time; 0 is as fast as possible."""


@dataclass(frozen=True)
class StorageSettings:
    combine_dir: Path
    """Finished clips (and, later, the upload queue)."""
    capture_dir: Path
    """Captured still images."""
    clip_format: str
    """``mp4`` or ``h264``."""
    max_bytes: int
    """Byte quota of the clip directory (the upload queue)."""
    min_free: int
    """Free bytes kept on the clip file system."""
    enabled: bool
    """Upload to the bucket; False keeps everything local."""
    video_format: str
    """Format of uploaded clips: ``h264`` (remuxed from the local MP4) or ``mp4``."""
    bucket_name: str | None
    video_prefix: str
    image_prefix: str


@dataclass(frozen=True)
class CloudConnectionSettings:
    thing_name: str | None
    cert_path: Path | None
    key_path: Path | None
    cacert_path: Path | None
    credentials_endpoint: str | None
    role_alias: str | None


@dataclass(frozen=True)
class HealthSettings:
    interval: int
    """Seconds between two health reports."""
    file: Path | None
    """The last report and the upload queue, rewritten atomically with every report."""


@dataclass(frozen=True)
class CloudWatchSettings:
    enabled: bool
    region_name: str | None
    threaded: bool
    event_type: str
    metric_namespace: str
    log_group_name: str | None
    delineate_stream: bool
    send_interval: float
    metrics_interval: int


@dataclass(frozen=True)
class DataplaneSettings:
    enabled: bool
    endpoint_url: str | None
    region_name: str | None


@dataclass(frozen=True)
class LiveSettings:
    size: Resolution | None
    """Size of live pictures; ``None`` follows the camera (see ``live_size``)."""
    fps: int
    """Live pictures per second."""
    bitrate: int
    """MPEG-1 bits per second to the data plane."""
    max_sessions: int
    """Data-plane streams at once."""


@dataclass(frozen=True)
class AlertSettings:
    cooldown: float
    """Least seconds between two ``motion_start`` events (their motion's confirmation)."""


@dataclass(frozen=True)
class HttpSettings:
    port: int | None
    """Port of the local web server; ``None`` is off."""
    bind: str
    """Address it listens on."""
    password: str | None
    """Basic-auth password; ``None`` lets anyone who can reach the port in."""
    host_names: tuple[str, ...]
    """Names the page answers to besides its addresses, localhost and its own host name."""
    max_viewers: int
    """MJPEG viewers at once."""
    local_settings: Path
    """Where changes made on the local page are kept (read after ``--config``)."""


@dataclass(frozen=True)
class RtspSettings:
    port: int | None
    """Port of the RTSP server; ``None`` is off."""
    bind: str
    """Address it listens on."""
    max_clients: int
    """Streams at once."""


@dataclass(frozen=True)
class MqttSettings:
    host: str | None
    """The broker on the home network; ``None`` is off."""
    port: int | None
    """Its port; ``None`` is MQTT's (1883, or 8883 over TLS): see ``broker_port``."""
    username: str | None
    password: str | None
    """Given in the TOML file; or read from ``password_file`` when the client starts."""
    password_file: Path | None
    tls: bool
    """TLS to the broker, whose certificate is checked against ``ca_file`` or the system's."""
    ca_file: Path | None
    discovery_prefix: str
    """Where Home Assistant listens for discovery (its MQTT integration's setting)."""
    topic_prefix: str | None
    """Where this camera's topics start; ``None``: ``pinthesky/<camera name>``."""

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)


@dataclass(frozen=True)
class EventSettings:
    event_input: Path
    event_output: Path
    configure_input: Path
    configure_output: Path
    shadow_allow_identity: bool
    """The shadow may change where credentials and uploads go (off: refused and logged)."""
    shadow_update: str


@dataclass(frozen=True)
class DaemonSettings:
    log_level: str
    state_dir: Path
    """Where the relative paths of ``STATE_KEYS`` were placed at start (``load``)."""


@dataclass(frozen=True)
class IotSettings:
    endpoint: str | None
    port: int
    shadow_name: str
    seed_desired: bool


@dataclass(frozen=True)
class Settings:
    camera: CameraSettings
    motion: MotionSettings
    recorder: RecorderSettings
    source: SourceSettings
    storage: StorageSettings
    cloud_connection: CloudConnectionSettings
    health: HealthSettings
    cloudwatch: CloudWatchSettings
    dataplane: DataplaneSettings
    live: LiveSettings
    alerts: AlertSettings
    http: HttpSettings
    rtsp: RtspSettings
    mqtt: MqttSettings
    events: EventSettings
    daemon: DaemonSettings
    iot: IotSettings

    def to_toml(self) -> str:
        """The effective settings as a TOML document that ``--config`` accepts back."""
        lines: list[str] = []
        for section in fields(self):
            lines.append(f"[{section.name}]")
            obj = getattr(self, section.name)
            for f in fields(obj):
                value = getattr(obj, f.name)
                if value is None and not _takes_none(f"{section.name}.{f.name}"):
                    lines.append(f"# {f.name} is not set")  # "none" would be refused
                    continue
                if f"{section.name}.{f.name}" in SECRET_KEYS:
                    lines.append(f"# {f.name} is set (not shown)")
                    continue
                lines.append(f"{f.name} = {_toml_value(value)}")
            lines.append("")
        return "\n".join(lines)


def _takes_none(key: str) -> bool:
    try:
        OPTION_BY_KEY[key].parse("none")
    except ValueError:
        return False
    return True


def _toml_value(v: Any) -> str:
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float) and not isinstance(v, tuple):
        return repr(v)
    if isinstance(v, tuple) and not isinstance(v, Resolution | Window):
        return '"' + ";".join(str(r) for r in v) + '"'
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


_SECTIONS: dict[str, type[Any]] = {
    "camera": CameraSettings,
    "motion": MotionSettings,
    "recorder": RecorderSettings,
    "source": SourceSettings,
    "storage": StorageSettings,
    "cloud_connection": CloudConnectionSettings,
    "health": HealthSettings,
    "cloudwatch": CloudWatchSettings,
    "dataplane": DataplaneSettings,
    "live": LiveSettings,
    "alerts": AlertSettings,
    "http": HttpSettings,
    "rtsp": RtspSettings,
    "mqtt": MqttSettings,
    "events": EventSettings,
    "daemon": DaemonSettings,
    "iot": IotSettings,
}


# -- loading -------------------------------------------------------------------------------


def add_arguments(
    parser: argparse.ArgumentParser, keys: Callable[[str], bool] | None = None
) -> None:
    """Add the flags of the options whose key ``keys`` accepts (by default the daemon's: all
    but the sidecar's) to ``parser``; values stay raw strings until ``load``."""
    if keys is None:
        keys = lambda key: key.split(".")[0] not in SIDECAR_SECTIONS  # noqa: E731
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in OPTIONS:
        if opt.flag is None or not keys(opt.key):
            continue
        text = opt.help.replace("%", "%%")  # argparse formats help with %: a strftime example
        section = opt.key.split(".")[0]
        group = groups.get(section) or parser.add_argument_group(section)
        groups[section] = group
        default = "" if opt.default is None or opt.switch else f" (default {opt.default})"
        kwargs: dict[str, Any] = {"dest": opt.key, "default": argparse.SUPPRESS}
        if opt.switch:
            group.add_argument(
                opt.flag, action="store_const", const=not opt.invert, help=text, **kwargs
            )
        elif opt.key in ("motion.mask_rects", "camera.privacy_masks"):
            group.add_argument(opt.flag, action="append", metavar="X,Y,W,H", help=text, **kwargs)
        elif opt.key == "camera.timestamp":
            group.add_argument(
                opt.flag, nargs="?", const="on", metavar="FORMAT", help=text, **kwargs
            )
        else:
            group.add_argument(
                opt.flag,
                metavar=opt.metavar or opt.flag.lstrip("-").upper(),
                help=text + default.replace("%", "%%"),
                **kwargs,
            )


def read_toml(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Flatten a TOML file into key paths, with one line per unknown key.

    Raises ConfigError with one line when the file cannot be read at all.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"--config {path}: cannot read: {exc.strerror}"]) from None
    return parse_toml(data, path, "--config ")


def parse_toml(data: bytes, path: Path, what: str = "") -> tuple[dict[str, Any], list[str]]:
    """``read_toml`` for the bytes of ``path``, already read."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{what}{path}: not valid UTF-8: {exc.reason} at byte {exc.start}"]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{what}{path}: not valid TOML: {exc}"]) from None
    flat: dict[str, Any] = {}
    errors: list[str] = []
    for section, body in doc.items():
        if not isinstance(body, dict):
            errors.append(
                f"{section} = {body!r}: not allowed at top level; "
                f"sections are {', '.join(_SECTIONS)}"
            )
            continue
        for name, value in body.items():
            key = f"{section}.{name}"
            if key not in OPTION_BY_KEY:
                errors.append(f"{key}: unknown setting in {path}")
            else:
                flat[key] = value
    return flat, errors


def load(
    cli: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults, environment, TOML file and command line; validate; freeze.

    ``cli`` maps key paths to the raw values argparse collected. Raises ``ConfigError`` with
    every problem found, one line each.
    """
    return load_traced(cli, config_file, environ)[0]


@dataclass(frozen=True)
class Sources:
    """Where the settings in force came from, key by key (never their values)."""

    config_file: Path | None
    config_keys: tuple[str, ...]
    """Every key the ``--config`` file sets (some may be overridden)."""
    local_file: Path
    local_keys: tuple[str, ...]
    """Keys the page's saved changes set (those that passed)."""
    environment: tuple[tuple[str, str], ...]
    """(key, variable) set from the environment."""
    command_line: tuple[tuple[str, str], ...]
    """(key, flag) set on the command line."""

    def lines(self) -> list[str]:
        """What a start-up log says: which files are in force and which keys each sets."""
        out = []
        config = set(self.config_keys)
        if self.config_file is None:
            out.append("no --config file")
        else:
            keys = ", ".join(self.config_keys) or "nothing"
            out.append(f"--config {self.config_file} sets {keys}")
        if self.local_keys:
            over = [k for k in self.local_keys if k in config]
            out.append(
                f"the page's saved changes in {self.local_file} set "
                f"{', '.join(self.local_keys)}"
                + (f" (overriding the --config file's {', '.join(over)})" if over else "")
            )
        else:
            out.append(f"no changes saved by the page ({self.local_file})")
        if self.environment:
            named = ", ".join(f"{k} (${v})" for k, v in self.environment)
            out.append(f"the environment sets {named}")
        if self.command_line:
            named = ", ".join(f"{k} ({flag})" for k, flag in self.command_line)
            out.append(f"the command line sets {named}")
        return out


def load_traced(
    cli: Mapping[str, Any],
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, Sources]:
    """``load``, and where each setting came from."""
    environ = os.environ if environ is None else environ
    raw: dict[str, tuple[Any, str]] = {}
    for opt in OPTIONS:
        raw[opt.key] = (opt.default, "default")
        if opt.env and opt.env in environ:
            value: Any = environ[opt.env]
            if opt.switch and opt.invert:
                value = str(value).lower() != "false"
            elif opt.switch:
                value = str(value).lower() == "true"
            raw[opt.key] = (value, f"${opt.env}")
    errors: list[str] = []
    config_keys: tuple[str, ...] = ()
    if config_file is not None:
        try:
            flat, unknown = read_toml(config_file)
        except ConfigError as exc:
            raise ConfigError([*exc.errors]) from None
        errors.extend(unknown)
        for key, value in flat.items():
            raw[key] = (value, str(config_file))
        config_keys = tuple(flat)
    for key, value in cli.items():
        if key in OPTION_BY_KEY:
            joined = ";".join(value) if isinstance(value, list) else value
            raw[key] = (joined, OPTION_BY_KEY[key].flag or key)
    local = _placed(raw, "http.local_settings")
    # The page's saved changes come after the file and before the command line. One that does
    # not pass (a hand edit, a rule tightened since it was saved) is left out with a warning:
    # the operator's settings hold and the camera starts.
    saved = {k: (v, str(local)) for k, v in read_local(local).items() if k not in cli}
    while True:
        values, problems = _resolve({**raw, **saved})
        refused = {k for keys, _ in problems for k in keys if k in saved}
        if not refused:
            break
        for keys, line in problems:
            if refused & set(keys):
                _log.warning("%s (a change saved by the page; left out)", line)
        for key in refused:
            del saved[key]
    errors.extend(line for _, line in problems)
    if errors:
        raise ConfigError(errors)
    for key in STATE_KEYS:
        if values[key] is not None:
            values[key] = _in_state_dir(values["daemon.state_dir"], values[key])
    sources = Sources(
        config_file,
        config_keys,
        local,
        tuple(saved),
        tuple((k, o[1:]) for k, (_, o) in raw.items() if o.startswith("$") and k not in saved),
        tuple((k, OPTION_BY_KEY[k].flag or k) for k in cli if k in OPTION_BY_KEY),
    )
    return _freeze(values), sources


def _in_state_dir(state_dir: Path, path: Path) -> Path:
    """``path`` as the daemon uses it: a relative one in ``state_dir``. Placed once, at load:
    a state directory other than the working directory is made absolute, so that what
    ``--validate-config`` prints reads back the same."""
    if path.is_absolute() or state_dir == Path("."):
        return path
    return state_dir.absolute() / path


def _placed(raw: Mapping[str, tuple[Any, str]], key: str) -> Path:
    """The path ``key`` has in ``raw``, placed in the state directory ``raw`` has (values not
    checked yet: a bad one is refused later, with the others)."""
    try:
        state_dir = _path(raw["daemon.state_dir"][0])
        path = _path(raw[key][0])
    except ValueError:
        return Path(str(raw[key][0]))
    return _in_state_dir(state_dir, path)


Problem = tuple[tuple[str, ...], str]
"""The keys a problem involves, and its one line."""


def _resolve(raw: Mapping[str, tuple[Any, str]]) -> tuple[dict[str, Any], list[Problem]]:
    """Every raw value (and its origin) parsed, derived and checked together."""
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    for key, (value, origin) in raw.items():
        try:
            values[key] = OPTION_BY_KEY[key].parse(value)
        except ValueError as exc:
            where = f"{origin} " if origin.startswith("-") else ""
            problems.append(((key,), f"{where}{key} = {_show(value, key)}: {exc}"))
    if "camera.buffer" in values:
        _derive(values)
    problems += _verify(values, set(values))
    return values, problems


def read_local(path: Path) -> dict[str, Any]:
    """The page's saved changes (key path -> raw value); nothing when there are none.

    A problem in this file never stops the camera: it is one warning line and the file's
    values are left out (the ``--config`` file's apply)."""
    try:
        # Written by the daemon in its state directory: read without following a link
        # planted under its name (the operator's --config file may well be a link).
        data, size = read_ours(path, MAX_LOCAL_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as exc:
        _log.warning("%s: %s; the page's saved changes are not applied", path, exc.strerror)
        return {}
    try:
        if size > MAX_LOCAL_BYTES:
            raise ConfigError([f"{path}: larger than {MAX_LOCAL_BYTES} bytes"])
        flat, unknown = parse_toml(data, path)
    except ConfigError as exc:
        _log.warning("%s; the page's saved changes are not applied", exc.errors[0])
        return {}
    for line in unknown:
        _log.warning("%s", line)
    kept = {}
    for key, value in flat.items():
        if key in PAGE_KEYS:
            kept[key] = value
        else:
            _log.warning("%s in %s: not a setting the page may change; left out", key, path)
    return kept


def _show(value: Any, key: str = "") -> str:
    if key in SECRET_KEYS:
        return "(not shown)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _derive(values: dict[str, Any]) -> None:
    """Fill defaults that depend on other settings (the old meaning of ``buffer``)."""
    if "recorder.pre_roll" in values and values["recorder.pre_roll"] is None:
        values["recorder.pre_roll"] = float(values["camera.buffer"] // 2)
    if "recorder.post_roll" in values and values["recorder.post_roll"] is None:
        values["recorder.post_roll"] = float(values["camera.buffer"])


MAX_MACROBLOCK_RATE = 522_240
"""16x16 macroblocks a second at most: H.264 level 4.2, the highest the Pi's encoder takes
(1920x1080 at 60 fps). Beyond it no Pi keeps up, and a camera asked for it stalls."""


def _verify(
    values: Mapping[str, Any],
    changed: Collection[str],
    camera: hardware.Attached | None = None,
) -> list[Problem]:
    """Rules that involve more than one setting, or the Pi and the camera module attached
    (``camera``, once the camera has opened). ``changed`` are the keys just set: a motion mask
    is checked against the picture when it is drawn, not each time the picture changes."""
    problems: list[Problem] = []
    main: Resolution | None = values.get("camera.resolution")
    lores: Resolution | None = values.get("camera.lores")
    fps: int | None = values.get("camera.framerate")
    if main and lores and (lores.width > main.width or lores.height > main.height):
        problems.append(
            (
                ("camera.lores", "camera.resolution"),
                f"camera.lores = '{lores}': must not be larger than camera.resolution ({main})",
            )
        )
    slowest = values.get("camera.min_framerate")
    if slowest is not None and fps is not None and slowest > fps:
        problems.append(
            (
                ("camera.min_framerate", "camera.framerate"),
                f"camera.min_framerate = {slowest:g}: must not be above camera.framerate ({fps})",
            )
        )
    problems.extend(_verify_privacy(values))
    source: str = values.get("source.source", "auto")
    encoded_here = source in ("auto", "synthetic", "picamera2")
    if source in ("auto", "picamera2"):
        problems.extend(_verify_camera(values, camera))
    if main and fps and encoded_here:
        rate = ((main.width + 15) // 16) * ((main.height + 15) // 16) * fps
        if rate > MAX_MACROBLOCK_RATE:
            problems.append(
                (
                    ("camera.resolution", "camera.framerate"),
                    f"camera.resolution = '{main}' at camera.framerate = {fps}: {rate} "
                    f"macroblocks a second, more than the {MAX_MACROBLOCK_RATE} of H.264 "
                    "level 4.2 (1920x1080 at 60 fps)",
                )
            )
    rects: tuple[Rect, ...] = values.get("motion.mask_rects", ())
    if main and rects and "motion.mask_rects" in changed:
        width, height = _as_seen(main, values)
        for r in rects:
            if r.x + r.w > width or r.y + r.h > height:
                problems.append(
                    (
                        ("motion.mask_rects",),
                        f"motion.mask_rects = '{r}': reaches outside the {width}x{height} "
                        "picture (pixels of the picture as seen)",
                    )
                )
                break
    if not encoded_here and not Path(source).is_file():
        problems.append(
            (
                ("source.source",),
                f"source.source = {source!r}: no such video file; "
                "use auto, picamera2, synthetic or the path of a video file",
            )
        )
    problems.extend(_verify_mqtt(values))
    return problems


def _verify_mqtt(values: Mapping[str, Any]) -> list[Problem]:
    """The broker's login and TLS settings fit together."""
    problems: list[Problem] = []
    if values.get("mqtt.password") and values.get("mqtt.password_file"):
        problems.append(
            (
                ("mqtt.password", "mqtt.password_file"),
                "mqtt.password_file: set either mqtt.password or mqtt.password_file",
            )
        )
    has_password = values.get("mqtt.password") or values.get("mqtt.password_file")
    if has_password and not values.get("mqtt.username"):
        problems.append(
            (
                ("mqtt.username", "mqtt.password", "mqtt.password_file"),
                "mqtt.username: must be set with a password (MQTT sends both or neither)",
            )
        )
    if values.get("mqtt.ca_file") and not values.get("mqtt.tls"):
        problems.append(
            (("mqtt.ca_file", "mqtt.tls"), "mqtt.ca_file: is only used with mqtt.tls = true")
        )
    return problems


def _as_seen(main: Resolution, values: Mapping[str, Any]) -> tuple[int, int]:
    """The picture's width and height as the viewer sees it: a quarter turn swaps its sides."""
    turned = values.get("camera.rotation") in (90, 270)
    return (main.height, main.width) if turned else (main.width, main.height)


_PRIVACY_KEYS = ("camera.privacy_masks", "camera.resolution", "camera.rotation")


def _verify_privacy(values: Mapping[str, Any]) -> list[Problem]:
    """Privacy masks that hide part of the picture: inside it, not all of it. Checked whenever
    the picture changes too: a mask reaching out of a smaller picture would hide less."""
    masks: tuple[Rect, ...] = values.get("camera.privacy_masks", ())
    main: Resolution | None = values.get("camera.resolution")
    if not masks or main is None:
        return []
    shown = ";".join(str(r) for r in masks)
    where = f"camera.privacy_masks = '{_show(shown)[1:-1]}'"
    w, h = _as_seen(main, values)
    if len(masks) > MAX_PRIVACY_MASKS:
        return [(("camera.privacy_masks",), f"{where}: at most {MAX_PRIVACY_MASKS} rectangles")]
    for r in masks:
        if r.x + r.w > w or r.y + r.h > h:
            return [(_PRIVACY_KEYS, f"{where}: {r} reaches out of the {w}x{h} picture")]
    if _covered(masks, w, h):
        return [
            (
                _PRIVACY_KEYS,
                f"{where}: the rectangles hide the whole picture; nothing would be left to record",
            )
        ]
    return []


def _covered(rects: tuple[Rect, ...], w: int, h: int) -> bool:
    """Whether ``rects`` cover all of a ``w`` x ``h`` picture: each piece of the grid their
    edges make is checked once (no picture-sized array)."""
    xs = sorted({0, w, *(r.x for r in rects), *(min(w, r.x + r.w) for r in rects)})
    ys = sorted({0, h, *(r.y for r in rects), *(min(h, r.y + r.h) for r in rects)})
    for x0, x1 in itertools.pairwise(xs):
        for y0, y1 in itertools.pairwise(ys):
            if x0 >= w or y0 >= h:
                continue
            if not any(
                r.x <= x0 and x1 <= r.x + r.w and r.y <= y0 and y1 <= r.y + r.h for r in rects
            ):
                return False
    return True


_PICTURE_KEYS = ("camera.resolution", "camera.lores", "camera.framerate")


def _verify_camera(values: Mapping[str, Any], camera: hardware.Attached | None) -> list[Problem]:
    """What this Pi's encoder, camera memory and camera module can take."""
    problems: list[Problem] = []
    model = board.pi_model()
    main: Resolution | None = values.get("camera.resolution")
    lores: Resolution | None = values.get("camera.lores")
    fps: int | None = values.get("camera.framerate")
    if main:
        size_limit = board.encoder_limit(model, main.width, main.height)
        rate_limit = board.encoder_limit(model, main.width, main.height, fps)
        if size_limit:
            problems.append((("camera.resolution",), f"camera.resolution = '{main}': {size_limit}"))
        elif rate_limit:
            problems.append(
                (
                    ("camera.framerate", "camera.resolution"),
                    f"camera.framerate = {fps}: {rate_limit}",
                )
            )
        elif camera is not None and lores and fps:
            found = hardware.setup(model, board.meminfo(), camera.modes, main, lores, fps)
            if isinstance(found, str):
                problems.append((_PICTURE_KEYS, f"camera.resolution = '{main}': {found}"))
    focus = values.get("camera.focus", "default")
    problem = hardware.focus_problem(focus, camera)
    if problem:
        problems.append((("camera.focus",), f"camera.focus = {focus}: {problem}"))
    tuning = values.get("camera.tuning", "default")
    problem = hardware.tuning_problem(tuning, model, camera)
    if problem:
        problems.append((("camera.tuning",), f"camera.tuning = {tuning!r}: {problem}"))
    return problems


def _freeze(values: Mapping[str, Any]) -> Settings:
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        kwargs = {f.name: values[f"{name}.{f.name}"] for f in fields(cls)}
        sections[name] = cls(**kwargs)
    return Settings(**sections)


def defaults() -> Settings:
    """The embedded defaults (what ``make run`` uses), ignoring the environment."""
    return load({}, environ={})


def flatten(s: Settings) -> dict[str, Any]:
    """Key path -> typed value, for every setting."""
    out: dict[str, Any] = {}
    for section in fields(s):
        obj = getattr(s, section.name)
        for f in fields(obj):
            out[f"{section.name}.{f.name}"] = getattr(obj, f.name)
    return out


def merge(
    s: Settings,
    changes: Mapping[str, Any],
    origin: str,
    camera: hardware.Attached | None = None,
) -> tuple[Settings, list[str]]:
    """``s`` with ``changes`` (key path -> raw value) applied, each checked by the same rules
    as at start (``load``), and against the camera module attached (``camera``, when the
    camera has opened). A value that does not pass is left out with one line naming the
    key, the value and what is allowed; the others still apply."""
    before = flatten(s)
    values = dict(before)
    errors: list[str] = []
    old_buffer = values["camera.buffer"]
    for key, raw in changes.items():
        try:
            values[key] = OPTION_BY_KEY[key].parse(raw)
        except ValueError as exc:
            errors.append(f"{origin} {key} = {_show(raw, key)}: {exc}")
    # The old meaning of buffer carries over when the rolls were following it.
    if values["camera.buffer"] != old_buffer:
        if "recorder.pre_roll" not in changes and s.recorder.pre_roll == old_buffer // 2:
            values["recorder.pre_roll"] = float(values["camera.buffer"] // 2)
        if "recorder.post_roll" not in changes and s.recorder.post_roll == old_buffer:
            values["recorder.post_roll"] = float(values["camera.buffer"])
    _derive(values)  # a roll set to none follows buffer again, as at start
    # A rule the changes break reverts the changed keys it involves to their last good
    # values; reverting may break another rule, hence the loop (each turn reverts a key).
    pending = {k for k in changes if k in values}
    while True:
        broken = [
            (keys, line) for keys, line in _verify(values, pending, camera) if pending & set(keys)
        ]
        if not broken:
            break
        keys, line = broken[0]
        errors.append(f"{origin} {line}")
        for key in pending & set(keys):
            values[key] = before[key]
            pending.discard(key)
        _derive(values)
    return _freeze(values), errors


LIVE_MAX = Resolution(640, 480)
"""What ``live.size = auto`` fits into: enough for a phone, cheap enough for a Pi Zero."""


def live_size(live: LiveSettings, camera: Resolution) -> Resolution:
    """The size of live pictures for a camera of size ``camera``.

    ``auto`` halves the camera's resolution until it fits ``LIVE_MAX`` (so the aspect ratio
    stays, and scaling is a cheap 2:1); a size larger than the camera's is not upscaled.
    """
    if (
        live.size is not None
        and live.size.width <= camera.width
        and live.size.height <= camera.height
    ):
        return live.size
    w, h = camera
    while w > LIVE_MAX.width or h > LIVE_MAX.height:
        w, h = w // 2, h // 2
    return Resolution(max(2, w - w % 2), max(2, h - h % 2))


# -- auto bitrate ----------------------------------------------------------------------------
# Measured with bench/bitrate.py --curves (docs/bitrate.md has the curves): real
# footage encoded as the Pi encodes (libx264 superfast, High profile, no B-frames, a keyframe a
# second, the bitrate held by the VBV) reaches SSIM 0.98 against its source, the knee of every
# curve, at about 2 Mb/s for the hardest scene (a tree in wind) at 640x480 and 15 fps. Beyond
# it a doubling buys less than 0.01 of SSIM. The bits needed grow more slowly than the pixels
# (larger pictures are smoother per pixel: exponent 0.6, fitted from 640x480 to 1920x1080)
# and much more slowly than the frame rate (closer frames differ less: exponent 0.45, the
# walkers at 5 and 10 fps).
AUTO_ANCHOR = (640 * 480, 15, 2_000_000)
"""Pixels, frames per second and bits per second of the measured anchor point."""
AUTO_PIXEL_EXPONENT = 0.6
AUTO_FPS_EXPONENT = 0.45


def auto_bitrate(size: Resolution, framerate: float) -> int:
    """The bitrate ``--encoding-bitrate auto`` runs at: the knee of the quality curve for a
    picture of ``size`` at ``framerate``, rounded to 100 kb/s."""
    pixels, fps, bps = AUTO_ANCHOR
    rate: float = (
        bps
        * (size.width * size.height / pixels) ** AUTO_PIXEL_EXPONENT
        * (framerate / fps) ** AUTO_FPS_EXPONENT
    )
    return min(BITRATE_MAX, max(BITRATE_MIN, int(round(rate, -5))))
