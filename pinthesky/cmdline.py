"""Command-line pieces the three programs share: a parser that reports a bad flag in one line,
the settings flags (``--config``, ``--validate-config`` and one flag per setting), and settings
loaded from them with one line per problem.

Shared by ``pinthesky`` (``daemon.cli``, ``daemon.detect``), ``pinthesky-iot`` and ``pitsctl``,
so that none of them imports another program. Imports nothing heavy at module level:
``--version`` answers before the settings table is loaded.
"""

from __future__ import annotations

import argparse
import sys
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
    return load_traced_settings(ns, prog)[0]


def load_traced_settings(ns: argparse.Namespace, prog: str = PROG) -> tuple[object, object]:
    """``load_settings``, and where they came from (``settings.Sources``)."""
    from pinthesky import settings
    from pinthesky.errors import ConfigError

    raw = {k: v for k, v in vars(ns).items() if "." in k}
    try:
        return settings.load_traced(raw, config_file=ns.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"{prog}: {line}", file=sys.stderr)
        raise SystemExit(2) from None
