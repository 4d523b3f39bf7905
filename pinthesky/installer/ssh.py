"""pitsctl's way onto the Pi: the system's ``ssh`` client, so the user's ssh config (host
aliases, ports, jump hosts) and keys work as they do on the command line.

Each call runs ``onpi`` there as root (directly, or through ``sudo -n``), sending its source
and the request on standard input and reading its JSON lines back. ssh's own failures (no
route, refused login, unknown host key) and sudo's become one ``RemoteError`` line saying
what to do.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pinthesky.errors import PintheskyError
from pinthesky.installer import onpi

CONNECT_TIMEOUT_S = 10


class RemoteError(PintheskyError):
    """The Pi could not be reached, or a step on it failed."""


# ssh's messages (stderr, exit 255) and what the user can do about them.
_SSH_FAILURES = (
    ("Could not resolve hostname", "unknown host name; check the name, or use the Pi's address"),
    (
        "Connection refused",
        "no ssh server answers there; enable ssh on the Pi (raspi-config, or Raspberry Pi "
        "Imager's settings)",
    ),
    ("Connection timed out", "no answer; is the Pi on, and on this network?"),
    ("Operation timed out", "no answer; is the Pi on, and on this network?"),
    ("No route to host", "no route to it; is the Pi on, and on this network?"),
    ("Network is unreachable", "this machine has no network route to it"),
    (
        "Permission denied",
        "the ssh login was refused (wrong user or key); check that `ssh HOST` works without "
        "a password, e.g. after `ssh-copy-id HOST`",
    ),
    (
        "Host key verification failed",
        "its host key is not the one this machine knows for it; if the Pi was reinstalled, "
        "run `ssh-keygen -R HOST` and try again",
    ),
)


def _ssh_failure(host: str, stderr: str) -> str:
    for needle, advice in _SSH_FAILURES:
        if needle in stderr:
            return f"cannot reach {host} over ssh: {advice.replace('HOST', host)}"
    last = stderr.strip().splitlines()[-1] if stderr.strip() else "ssh failed"
    return f"cannot reach {host} over ssh: {last}"


class Remote:
    """Runs ``onpi`` actions on one host. ``options``: extra ``ssh -o`` options, which come
    first and so take precedence over this module's defaults."""

    def __init__(self, host: str, options: Sequence[str] = (), root: str = "/") -> None:
        self.host = host
        self.options = list(options)
        self.root = root
        self._source = Path(onpi.__file__).read_text()

    def _command(self) -> list[str]:
        script = shlex.quote(onpi.BOOTSTRAP)
        remote = (
            f'if [ "$(id -u)" -eq 0 ]; then exec {onpi.SYSTEM_PYTHON} -c {script}; '
            f"else exec sudo -n {onpi.SYSTEM_PYTHON} -c {script}; fi"
        )
        argv = ["ssh"]
        for option in self.options:
            argv += ["-o", option]
        argv += [
            "-o",
            "BatchMode=yes",  # never a password prompt: a refused login is an error at once
            "-o",
            f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-T",
            self.host,
            remote,
        ]
        return argv

    @staticmethod
    def _exchange(
        child: subprocess.Popen[str],
        request: dict[str, Any],
        on_event: Callable[[str, str], None] | None,
    ) -> tuple[dict[str, Any], list[str]]:
        """Send the request, read the answer lines (stderr drained by a thread, so neither
        pipe can fill up and stall the other)."""
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        errors: list[str] = []
        drain = threading.Thread(target=lambda: errors.extend(child.stderr or []), daemon=True)
        drain.start()
        with contextlib.suppress(BrokenPipeError):  # the connection failed: ssh says why
            child.stdin.write(json.dumps(request) + "\n")
            child.stdin.close()
        answer: dict[str, Any] = {}
        for line in child.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue  # a login banner or a stray line: not ours
            if not isinstance(message, dict):
                continue
            for kind in ("step", "progress"):
                if kind in message and on_event is not None:
                    on_event(kind, str(message[kind]))
            answer.update({k: v for k, v in message.items() if k in ("result", "error")})
        drain.join(10)
        return answer, errors

    def call(
        self,
        action: str,
        args: dict[str, Any] | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ) -> Any:
        """Run ``action`` on the Pi; ``on_event(kind, text)`` sees its steps and progress
        lines as they come. Returns its result or raises ``RemoteError``."""
        request = {"source": self._source, "action": action, "root": self.root, "args": args}
        try:
            child = subprocess.Popen(
                self._command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as exc:
            raise RemoteError(f"cannot run ssh: {exc.strerror}; install OpenSSH's client") from None
        with child:
            answer, errors = self._exchange(child, request, on_event)
            code = child.wait()
        stderr = "".join(errors)
        if "result" in answer:
            return answer["result"]
        if "error" in answer:
            raise RemoteError(f"on {self.host}: {answer['error']}")
        if code == 255:
            raise RemoteError(_ssh_failure(self.host, stderr))
        if "sudo:" in stderr:
            raise RemoteError(
                f"on {self.host}: this user may not use sudo without a password; log in as a "
                "user who can (Raspberry Pi OS's first user can), or as root"
            )
        if code == 127:
            raise RemoteError(f"on {self.host}: {onpi.SYSTEM_PYTHON} is missing; is it Linux?")
        last = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
        raise RemoteError(f"on {self.host}: {action} ended without an answer: {last}")
