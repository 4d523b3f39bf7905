"""The camera stack installed on this machine: which picamera2, whether pinthesky runs on it,
and why it does not import.

Asked without importing picamera2: its version comes from the package metadata apt and pip
both write. Importing it is what fails on a broken install (and before 0.3.34 it loads PyAV,
about 25 MB).
"""

from __future__ import annotations

import re
from importlib import metadata

MIN_PICAMERA2 = (0, 3, 30)
"""The oldest picamera2 we run on. Before it: no stills (YUV420 ``request.save`` before 0.3.26,
``captured_request(wait=...)`` before 0.3.20), no camera at all (``H264Encoder(profile=...)``
before 0.3.17, the V4L2 encoders do not import in 0.3.29), a camera-memory leak on every reopen
(before 0.3.18) and a hardware encoder that can stall (before 0.3.26)."""

LAZY_PYAV_PICAMERA2 = (0, 3, 34)
"""From this version ``import picamera2`` no longer imports PyAV."""

UPGRADE_HINT = "sudo apt update && sudo apt install python3-picamera2 python3-libcamera"


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.3.30"`` -> ``(0, 3, 30)``; a Debian suffix (``0.3.30-1``, ``+rpt1``) is ignored."""
    release = re.split(r"[-+~]", text, maxsplit=1)[0]
    return tuple(int(p) for p in re.findall(r"\d+", release)[:3])


def show(version: tuple[int, ...]) -> str:
    return ".".join(str(p) for p in version)


def picamera2_version() -> str | None:
    """The installed picamera2's version from its package metadata, without importing it;
    None when it is not installed."""
    try:
        return metadata.version("picamera2")
    except metadata.PackageNotFoundError:
        return None


def unsupported(version: str | None) -> str | None:
    """One line saying why ``version`` cannot be used, or None when it can."""
    if version is None:
        return None  # not installed: the import error says so
    if version_tuple(version) < MIN_PICAMERA2:
        return (
            f"picamera2 {version} is too old (pinthesky needs {show(MIN_PICAMERA2)} or later); "
            f"upgrade it: {UPGRADE_HINT}"
        )
    return None


def broken(version: str, exc: BaseException) -> str:
    """One line: picamera2 ``version`` is installed but does not import, and why."""
    text = str(exc).strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, ImportError) and exc.name and exc.name not in reason:
        reason = f"{reason} ({exc.name})"
    return (
        f"picamera2 {version} is installed but does not import: {type(exc).__name__}: {reason}; "
        f"reinstall it: {UPGRADE_HINT}"
    )
