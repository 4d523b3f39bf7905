"""The ``pinthesky`` command: the daemon, ``--validate-config``, and ``pinthesky detect``.

Errors a user can fix (a bad flag or config value, an unreadable video, an unwritable clip
directory) print one line and exit non-zero, never a traceback. ``--version`` answers before
anything heavy is imported.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pinthesky import __version__

PROG = "pinthesky"


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(prog: str = PROG, description: str | None = None) -> OneLineParser:
    from pinthesky import settings

    parser = OneLineParser(
        prog=prog,
        description=description
        or "Motion-triggered security camera daemon (Pi In The Sky compatible).",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="TOML file of settings (sections as printed by --validate-config)",
    )
    parser.add_argument(
        "--validate-config",
        action="store_true",
        help="print the effective settings and exit (2 when invalid)",
    )
    settings.add_arguments(parser)
    return parser


def load_settings(ns: argparse.Namespace, prog: str = PROG) -> object:
    """Settings from parsed flags; prints one line per problem and exits 2 when invalid."""
    from pinthesky import settings
    from pinthesky.errors import ConfigError

    raw = {k: v for k, v in vars(ns).items() if "." in k}
    try:
        return settings.load(raw, config_file=ns.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"{prog}: {line}", file=sys.stderr)
        raise SystemExit(2) from None


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
    from pinthesky.settings import Settings

    cfg = load_settings(ns)
    assert isinstance(cfg, Settings)
    if ns.validate_config:
        print(cfg.to_toml(), end="")
        return 0
    from pinthesky.logs import setup_logging

    setup_logging(cfg.daemon.log_level)
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
