"""The ``pinthesky`` command: the daemon, ``--validate-config``, and ``pinthesky detect``.

Errors a user can fix (a bad flag or config value, an unreadable video, an unwritable clip
directory) print one line and exit non-zero, never a traceback. ``--version`` answers before
anything heavy is imported.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from pinthesky import __version__
from pinthesky.cmdline import PROG, build_parser, load_traced_settings


def main(argv: Sequence[str] | None = None) -> int:
    process_start = time.monotonic()
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--version"]:
        print(__version__)
        return 0
    if args[:1] == ["detect"]:
        from pinthesky.daemon.detect import main as detect_main

        return detect_main(args[1:])
    ns = build_parser().parse_args(args)
    from pinthesky.settings import Settings, Sources

    cfg, sources = load_traced_settings(ns)
    assert isinstance(cfg, Settings) and isinstance(sources, Sources)
    if ns.validate_config:
        print(cfg.to_toml(), end="")
        return 0
    import logging

    from pinthesky.logs import setup_logging

    setup_logging(cfg.daemon.log_level)
    # Which files are in force, and which keys each sets: the page's saved changes override
    # the --config file after a restart, and the log says so (keys only, never values).
    for line in sources.lines():
        logging.getLogger("pinthesky.settings").info("%s", line)
    import asyncio

    from pinthesky.daemon.app import run
    from pinthesky.errors import PintheskyError

    try:
        return asyncio.run(run(cfg, process_start=process_start))
    except PintheskyError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
