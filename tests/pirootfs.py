"""Debian bookworm ARM userlands for the emulated-Pi tests, run under qemu-user-static.

Each tree is built once with ``debootstrap --foreign --variant=minbase`` (the second stage and
apt run in a ``chroot`` through binfmt_misc) and cached under ``CACHE`` (outside the checkout),
so a warm run only copies nothing and starts using it. A tree is built in ``<name>.tmp`` and
renamed into place with a stamp naming its recipe: a run cut short leaves only a ``.tmp`` (or a
tree without the right stamp), which the next run throws away and builds again. A file lock per
tree keeps two runs from building it at once.

Commands run inside a private mount namespace (``unshare --mount``) that mounts ``/proc`` and
``/dev`` into the tree: when the command ends the namespace goes and so do the mounts, even if
the test is killed.

Run as a script it builds the trees (``python tests/pirootfs.py armhf arm64``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("PINTHESKY_ROOTFS_CACHE", "/var/cache/pinthesky-test"))
MIRROR = "http://deb.debian.org/debian"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class Flavour:
    """One Debian architecture and what apt installs into it."""

    arch: str
    qemu: str  # the binfmt handler in /usr/share/binfmts
    packages: tuple[str, ...]

    @property
    def recipe(self) -> str:
        text = f"{self.arch} bookworm minbase {' '.join(sorted(self.packages))} v1"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# What a Pi has from apt before pitsctl runs pip: Python with venv, numpy, and (on the 32-bit
# OS) the pure-Python paho-mqtt 1.6 that Raspberry Pi OS ships, so the sidecar's 1.6 code path
# runs on the emulated Pi too.
BASE = ("python3", "python3-venv", "python3-numpy", "ca-certificates")
FLAVOURS = {
    "armhf": Flavour("armhf", "qemu-arm", (*BASE, "python3-paho-mqtt")),
    "arm64": Flavour("arm64", "qemu-aarch64", BASE),
    # ARMv5TE soft-float: the one Debian userland an ARM1176 (Pi Zero W) core can run.
    "armel": Flavour("armel", "qemu-arm", ("python3", "python3-numpy")),
}


def missing_tools() -> list[str]:
    """Host packages the emulated tests need and do not have."""
    missing = []
    if not shutil.which("debootstrap"):
        missing.append("debootstrap")
    if not Path("/usr/share/binfmts/qemu-arm").exists():
        missing.append("qemu-user-static")
    if not shutil.which("unshare"):
        missing.append("util-linux")
    return missing


@contextlib.contextmanager
def _locked(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        os.close(fd)


def _handler_fields(name: str) -> dict[str, str]:
    fields = {}
    for line in Path(f"/usr/share/binfmts/{name}").read_text().splitlines():
        key, _, value = line.partition(" ")
        fields[key] = value.strip()
    return fields


@contextlib.contextmanager
def binfmt(names: Sequence[str] = ("qemu-arm", "qemu-aarch64")) -> Iterator[None]:
    """binfmt_misc mounted and the qemu handlers registered with the F flag (the kernel opens
    the interpreter now, so it runs inside a chroot that has no copy of it).

    Registration is global to the machine: every user holds a shared lock on ``binfmt.users``
    while it runs ARM code, and whoever leaves last (the exclusive lock is free) unregisters
    the handlers this module registered and unmounts binfmt_misc if this module mounted it.
    Registering and cleaning up both happen under ``binfmt.setup``, so a run starting cannot
    lose its handlers to a run ending."""
    marker = CACHE / "binfmt.ours"
    with _locked(CACHE / "binfmt.users", fcntl.LOCK_SH) as users:
        with _locked(CACHE / "binfmt.setup"):
            if not (BINFMT / "register").exists():
                subprocess.run(
                    ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True
                )
                marker.write_text("mounted\n")
            for name in names:
                if (BINFMT / name).exists():
                    continue
                f = _handler_fields(name)
                # P (argv[0] kept) is what Debian's *-binfmt-P interpreters expect.
                flags = "F" + ("P" if f.get("preserve") == "yes" else "")
                line = (
                    f":{name}:M:{f['offset']}:{f['magic']}:{f['mask']}:{f['interpreter']}:{flags}"
                )
                (BINFMT / "register").write_text(line)
                with marker.open("a") as out:
                    out.write(name + "\n")
        try:
            yield
        finally:
            # Whoever still runs ARM code holds its shared lock: the last user cleans up.
            with _locked(CACHE / "binfmt.setup"):
                if _last_user(users):
                    ours = marker.read_text().split() if marker.exists() else []
                    for name in ours:
                        if name != "mounted" and (BINFMT / name).exists():
                            (BINFMT / name).write_text("-1")
                    if "mounted" in ours:
                        subprocess.run(["umount", str(BINFMT)], check=False)
                    marker.unlink(missing_ok=True)


def _last_user(lock: int) -> bool:
    """Whether our shared lock on ``lock`` is the only one (it then becomes exclusive)."""
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def host_command(
    root: Path,
    argv: Sequence[str],
    *,
    overlay: Path | None = None,
    binds: Sequence[tuple[Path, str]] = (),
) -> list[str]:
    """The host command that runs ``argv`` inside ``root`` as root, with /proc, /dev, a fresh
    /tmp and ``binds`` (host path, path inside) mounted for the command's lifetime only.

    With ``overlay`` (a host directory), the tree is the read-only lower layer of an overlayfs
    whose changes go to ``overlay/upper``: the cached tree stays as built and every run starts
    from it, while commands of one run see each other's changes."""
    steps = []
    if overlay is not None:
        for name in ("upper", "work", "merged"):
            (overlay / name).mkdir(parents=True, exist_ok=True)
        options = f"lowerdir={root},upperdir={overlay}/upper,workdir={overlay}/work"
        steps.append(f"mount -t overlay overlay -o {options} {overlay}/merged")
        root = overlay / "merged"
    steps += [
        f"mount -t proc proc {root}/proc",
        f"mount --rbind /dev {root}/dev",
        f"mount -t tmpfs tmpfs {root}/tmp",
    ]
    for source, inside in binds:
        steps.append(f"mkdir -p {root}/{inside.lstrip('/')}")
        steps.append(f"mount --bind {source} {root}/{inside.lstrip('/')}")
    script = " && ".join(steps) + ' && exec chroot "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(root), *argv]


def guest_env(cpu: str | None = None, **extra: str) -> dict[str, str]:
    """A clean environment for commands in a tree (``QEMU_CPU`` picks the emulated core)."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        **extra,
    }
    if cpu:
        env["QEMU_CPU"] = cpu
    return env


def chroot(
    root: Path,
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cpu: str | None = None,
    timeout: float = 3600,
    check: bool = True,
    overlay: Path | None = None,
    binds: Sequence[tuple[Path, str]] = (),
) -> subprocess.CompletedProcess[str]:
    """``argv`` run to its end inside ``root`` (see ``host_command``)."""
    done = subprocess.run(
        host_command(root, argv, overlay=overlay, binds=binds),
        env=guest_env(cpu, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        what = f"in {root.name}: {' '.join(argv)} -> {done.returncode}"
        raise RuntimeError("\n".join([what, *tail]))
    return done


def _build(flavour: Flavour, tmp: Path) -> None:
    subprocess.run(
        [
            "debootstrap",
            "--foreign",
            f"--arch={flavour.arch}",
            "--variant=minbase",
            "bookworm",
            str(tmp),
            MIRROR,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    chroot(tmp, ["/debootstrap/debootstrap", "--second-stage"])
    shutil.copy("/etc/resolv.conf", tmp / "etc/resolv.conf")
    (tmp / "etc/apt/sources.list").write_text(
        f"deb {MIRROR} bookworm main\ndeb {MIRROR} bookworm-updates main\n"
    )
    chroot(tmp, ["apt-get", "update", "-qq"])
    chroot(
        tmp,
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *flavour.packages],
    )
    chroot(tmp, ["apt-get", "clean"])


def ensure(name: str) -> Path:
    """The cached tree for ``name`` (a key of ``FLAVOURS``), built first if it is missing or
    half-built. Call inside ``binfmt()``."""
    flavour = FLAVOURS[name]
    tree, tmp, stamp = CACHE / name, CACHE / f"{name}.tmp", CACHE / f"{name}.stamp"
    with _locked(CACHE / f"{name}.lock"):
        if tree.is_dir() and stamp.exists() and stamp.read_text().strip() == flavour.recipe:
            return tree
        for leftover in (tmp, tree):
            if leftover.exists():
                shutil.rmtree(leftover)
        stamp.unlink(missing_ok=True)
        _build(flavour, tmp)
        tmp.rename(tree)
        stamp.write_text(flavour.recipe + "\n")  # last: only a finished tree gets a stamp
        return tree


if __name__ == "__main__":
    with binfmt():
        for arg in sys.argv[1:]:
            print(arg, ensure(arg), flush=True)
