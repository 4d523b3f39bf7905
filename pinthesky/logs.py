"""Local logging: one stderr handler for journald, the level, and secrets kept out of every log.

The daemon always logs to stderr (journald stamps each line under systemd); CloudWatch, when
enabled, is one more handler on the root logger (``pinthesky.cloud.cloudwatch``). ``Redact`` is
attached to every handler: whatever a message or a traceback holds, AWS secret keys, session
tokens, request signatures and PEM private keys never leave the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
from collections.abc import Callable

THIRD_PARTY = ("botocore", "boto3", "urllib3", "s3transfer", "awscrt", "awsiot")
"""Loggers held at WARNING: at DEBUG they print whole signed requests, and pinthesky's own
DEBUG lines are what a user debugging the camera wants."""

_SECRET_PATTERNS = (
    # key = value / "key": "value" forms of secret fields, whatever their spelling.
    re.compile(
        r"""(?ix)
        (?P<keep>
          (?: (?:aws_)?secret_?access_?key | (?:aws_)?session_?token | x-amz-security-token
            | security_?token | ["']token["'] | private_?key | password )
          ["']? \s* [:=] \s* ["']? )
        [^\s"',}]+
        """
    ),
    # SigV4 Authorization headers and presigned URLs: the access key id and the signature.
    re.compile(r"(?P<keep>Credential=)[A-Z0-9]{16,128}"),
    re.compile(r"(?P<keep>(?:X-Amz-)?Signature=)[0-9a-fA-F]{64}"),
    # Access key ids wherever they appear.
    re.compile(r"(?P<keep>)\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
)
_PEM_KEY = re.compile(
    r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.DOTALL
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with every secret it holds replaced by ``[redacted]``."""
    if "PRIVATE KEY-----" in text:
        text = _PEM_KEY.sub(f"-----{REDACTED} PRIVATE KEY-----", text)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\g<keep>" + REDACTED, text)
    return text


class Redact(logging.Filter):
    """Rewrites a record whose message or traceback holds a secret (before any handler
    formats it; the record is shared, so every handler gets the redacted text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def level_number(name: str) -> int:
    """The logging level of a settings name (``FATAL`` is ``CRITICAL``)."""
    return logging.CRITICAL if name == "FATAL" else logging.getLevelName(name)


def setup_logging(level: str) -> None:
    """stderr for journald, at ``level``; redacted; chatty AWS libraries at WARNING."""
    # Under systemd, journald stamps every line itself.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(Redact())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level_number(level))
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # It logs a traceback on every failed refresh; the uploader and CloudWatch already say
    # in one line that the credentials provider is unreachable, and retry.
    logging.getLogger("botocore.credentials").setLevel(logging.ERROR)


def set_level(level: str) -> None:
    """Change the level of every log, local and CloudWatch (they share the root logger)."""
    logging.getLogger().setLevel(level_number(level))


class Throttle:
    """At most ``burst`` lines per ``window`` seconds; the rest are counted and summed up in
    one line once the window is over, so a flood of bad input cannot flood the log (or
    CloudWatch) and the time spent writing it stays bounded."""

    def __init__(
        self,
        logger: logging.Logger,
        burst: int = 5,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._burst = burst
        self._window = window
        self._clock = clock
        self._start = -window
        self._lines = 0
        self.suppressed = 0

    def __call__(self, level: int, msg: str, *args: object, exc_info: bool = False) -> None:
        now = self._clock()
        if now - self._start >= self._window:
            self._summarise(level)
            self._start, self._lines = now, 0
        if self._lines < self._burst:
            self._lines += 1
            self._log.log(level, msg, *args, stacklevel=2, exc_info=exc_info)
            return
        if not self.suppressed:
            left = self._window - (now - self._start)
            self._log.log(
                level,
                "more lines like that are counted, not logged, for %.0f s",
                left,
                stacklevel=2,
            )
            # On the event loop, the count is said when the window ends even if the flood
            # has stopped by then; elsewhere (a thread) it is said with the next line.
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_later(left, self._summarise, level)
        self.suppressed += 1

    def _summarise(self, level: int) -> None:
        if self.suppressed:
            self._log.log(
                level,
                "%d more lines like that in %.0f s were not logged",
                self.suppressed,
                self._clock() - self._start,
            )
            self.suppressed = 0
