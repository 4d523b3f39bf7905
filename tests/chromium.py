"""Debian's Chromium, headless, driven over the DevTools protocol through a pipe.

``--remote-debugging-pipe`` makes Chromium read protocol messages from its file descriptor 3
and write to 4, each a JSON object ended by a NUL byte: no WebSocket client, no Node, nothing
to install beyond the ``chromium`` package. ``evaluate`` runs an expression in the page and
awaits the promise it returns; the page's own script does the waiting (with its deadlines),
this side only waits for the answer.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

HEADLESS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Headless on a machine with no network but loopback (without the last four, Chromium
keeps trying to reach Google's hosts)."""
FLAGS = (*HEADLESS, "--autoplay-policy=no-user-gesture-required", "--remote-debugging-pipe")


class Chromium:
    def __init__(self, profile: Path) -> None:
        binary = shutil.which("chromium")
        assert binary, "make test installs Debian's chromium"
        profile.mkdir(parents=True, exist_ok=True)
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        devnull = os.open(os.devnull, os.O_WRONLY)
        argv = [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
        self.pid = os.posix_spawn(
            binary,
            argv,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, to_browser_r, 3),
                (os.POSIX_SPAWN_DUP2, from_browser_w, 4),
                (os.POSIX_SPAWN_DUP2, devnull, 1),
                (os.POSIX_SPAWN_DUP2, devnull, 2),
            ],
        )
        for fd in (to_browser_r, from_browser_w, devnull):
            os.close(fd)
        self._next_id = 0
        self._answers: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="chromium-pipe", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_browser, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._cond:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self._events.append(message)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 60,
    ) -> dict[str, Any]:
        with self._cond:
            self._next_id += 1
            mid = self._next_id
        message: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        with self._cond:
            ok = self._cond.wait_for(lambda: mid in self._answers or self._closed, timeout)
            assert ok and mid in self._answers, f"no answer to {method} within {timeout} s"
            answer = self._answers.pop(mid)
        assert "error" not in answer, f"{method}: {answer['error']}"
        result: dict[str, Any] = answer.get("result", {})
        return result

    def open(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        size: tuple[int, int] = (1000, 1400),
        mobile: bool = False,
    ) -> str:
        """A new tab on ``url`` (every request of it sending ``headers``), ``size`` CSS pixels
        wide and high (``mobile``: as a phone lays pages out, at its pixel density and with
        touch); its session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session: str = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        if headers:
            self.call("Network.enable", session=session)
            self.call("Network.setExtraHTTPHeaders", {"headers": headers}, session=session)
        self.call("Page.enable", session=session)
        width, height = size
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 3 if mobile else 1,
            "mobile": mobile,
        }, session=session)  # fmt: skip
        if mobile:
            self.call("Emulation.setTouchEmulationEnabled", {"enabled": True}, session=session)
        with self._cond:
            seen = len(self._events)
        self.call("Page.navigate", {"url": url}, session=session)
        # The new document is parsed (its elements exist) once DOMContentLoaded fired.
        self.wait_event("Page.domContentEventFired", session, after=seen)
        return session

    def wait_event(self, method: str, session: str, after: int = 0, timeout: float = 60) -> None:
        def fired() -> bool:
            return any(
                e.get("method") == method and e.get("sessionId") == session
                for e in self._events[after:]
            )

        with self._cond:
            assert self._cond.wait_for(fired, timeout), f"no {method} within {timeout} s"

    def evaluate(self, session: str, expression: str, timeout: float = 60) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=session,
            timeout=timeout,
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def screenshot(self, session: str, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):  # it may exit before answering
            self.call("Browser.close", timeout=10)
        with self._cond:  # the pipe closes when Chromium has exited
            exited = self._cond.wait_for(lambda: self._closed, 10)
        if not exited:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self._to_browser)
        self._reader.join(10)
        os.close(self._from_browser)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
