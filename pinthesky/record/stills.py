"""The capture directory: stills taken on request (the local page, the cloud's
``capture_image``), kept until the uploader has them in S3 (or for good without a bucket).

A still the cloud names (the console asks for ``thumbnail_latest.jpg`` each time) replaces the
older one of that name, as its S3 object does. Without a name a still is ``img-EPOCH.jpg``, or
``img-EPOCH-N.jpg`` when another was taken in the same second: it is renamed into place under
a free name, never over another still, even when two are taken at once.

Every method touches the disk: call them on a worker thread. Only regular files of ours are
listed, served or removed: a link planted in the directory is none of them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from pinthesky.errors import PintheskyError
from pinthesky.eventfiles import write_atomically, write_new

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""What a still's name may be (it comes from the cloud: never a path)."""
SAME_SECOND = 1000
"""Stills named for one second at most (a camera takes a few a second at best)."""


def check_name(name: str | None) -> None:
    """PintheskyError (one line) unless ``name`` is a still's plain name, or none."""
    if name and (not NAME.fullmatch(name) or name.startswith(".")):
        raise PintheskyError(
            f"capture_image file_name {name!r}: must match "
            "[A-Za-z0-9._-]{1,64} and not start with a dot"
        )


@dataclass(frozen=True)
class Still:
    path: Path
    taken: float
    """Epoch seconds of its last change (when it was taken)."""
    size: int


class StillStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, data: bytes, epoch: int, name: str | None = None) -> Path:
        """Keep a JPEG taken at ``epoch`` under ``name``, or a name of its own; its path."""
        check_name(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        if name:
            path = self.directory / name
            # Its own name only, never through a link: a link planted under the name is
            # replaced (write_atomically renames over it), not followed out of the directory.
            write_atomically(path, data, 0o644)
            return path
        names = itertools.chain(
            [f"img-{epoch}.jpg"], (f"img-{epoch}-{n}.jpg" for n in range(1, SAME_SECOND))
        )
        return write_new(self.directory, names, data)

    def stills(self) -> list[Still]:
        """The stills kept here, newest first."""
        found = []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(".") or not entry.name.lower().endswith(".jpg"):
                    continue
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        found.append(Still(Path(entry.path), st.st_mtime, st.st_size))
        return sorted(found, key=lambda s: (s.taken, s.path.name), reverse=True)

    def find(self, name: str) -> Path | None:
        """The still of that name, if it is one listed here (no path from a URL is joined)."""
        return next((s.path for s in self.stills() if s.path.name == name), None)

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
