"""A stand-in for a Pi's file system, for installing into with onpi's target root: its
account files and the directories Raspberry Pi OS has (copied from this machine)."""

from __future__ import annotations

import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ACCOUNT_FILES = ("passwd", "group", "shadow", "gshadow")


@contextmanager
def target_root() -> Iterator[Path]:
    """A fresh "Pi": its account files (copied from this machine), the directories a
    Raspberry Pi OS install has, traversable by the service user."""
    root = Path(tempfile.mkdtemp(prefix="pitsctl-root-"))
    root.chmod(0o755)
    (root / "etc").mkdir()
    for name in ACCOUNT_FILES:
        for suffix in ("", "-"):
            source = Path("/etc") / f"{name}{suffix}"
            if source.exists():
                shutil.copy2(source, root / "etc" / source.name)
    shutil.copy2("/etc/login.defs", root / "etc")
    for directory in (
        "etc/systemd/system/multi-user.target.wants",
        "etc/polkit-1/rules.d",
        "opt",
        "run",
        "var/lib",
        "var/log",
    ):
        (root / directory).mkdir(parents=True)
    # As on a Pi, other services are enabled too (systemctl removes an empty .wants).
    wants = root / "etc/systemd/system/multi-user.target.wants"
    (wants / "ssh.service").symlink_to("/lib/systemd/system/ssh.service")
    try:
        yield root
    finally:
        for pidfile in (root / "run/pinthesky").glob("*.pid"):  # a failed test's services
            subprocess.run(["pkill", "-F", str(pidfile)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def snapshot(root: Path) -> dict[str, Any]:
    """Every path under ``root`` with its type, mode, owner and content (account backups
    ``passwd-`` and the like are rewritten by useradd and userdel: their names only)."""
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        content = None
        if stat.S_ISREG(st.st_mode) and not rel.endswith("-"):
            content = path.read_bytes()
        out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, content)
    return out


def account(root: Path) -> tuple[int, int]:
    line = next(
        entry
        for entry in (root / "etc/passwd").read_text().splitlines()
        if entry.startswith("pinthesky:")
    )
    fields = line.split(":")
    return int(fields[2]), int(fields[3])
