"""A hostile home network, for the tests and the benches: what an attacker on the network
sends (hostile setting values, forged Host headers, wrong passwords, idle and half-open
sockets, links planted in the daemon's folders), and the owner's own requests beside it.

Attackers come from other loopback addresses than the owner (127.0.0.1), as other machines on
the network would. Their sockets are reset, not closed, at the end: tens of thousands of tries
would otherwise leave as many ports in TIME_WAIT on the machine.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import eventually

from pinthesky.local import guard
from pinthesky.settings import PAGE_KEYS

HOSTILE_VALUES: list[Any] = [
    "",
    "  ",
    None,
    True,
    [],
    {},
    [[]],
    {"a": 1},
    "x" * 10_000,
    10**400,
    -(10**400),
    "9" * 400,
    2**63,
    1e308,
    -1e308,
    "1e400",
    "NaN",
    "-Infinity",
    "١٢",  # Arabic-Indic digits: int() and float() take them
    "\uff11\uff12",  # full-width digits
    "1_0",  # int() and float() take the underscore too
    "²",  # str.isdigit() says yes, int() says no
    "0x10",
    "\x00",
    -1,
    0.5,
    [[10**18, 0, 1, 1]],
    "1" * 400 + ",0,1,1",
]
"""Wrong types and huge numbers: every one is refused with one line, or (``""`` and None for
a setting that may be unset) means the default; none ever raises."""


FORGED_HOSTS = (
    "evil.example",
    "evil.example:8080",
    "localhost.evil.example",
    "127.0.0.1.evil.example",
    "camera.local.evil.example",
    "10.254.254.254",
    "[2001:db8::1]:8080",
    "0.0.0.0",
    "localhost:80@evil.example",
    "localhost:abc",
    "::1",
    "",
)


def knock(port: int, data: bytes, source: str | None = None) -> int:
    """The status of one request (HTTP or RTSP) sent as these bytes on a new connection from
    ``source`` (what http.client will not send)."""
    return _send(port, data, source, whole=False)[0]


def exchange(port: int, data: bytes, source: str | None = None) -> tuple[int, bytes]:
    """``knock``, with the whole answer (the page closes the connection after it)."""
    return _send(port, data, source, whole=True)


def _send(port: int, data: bytes, source: str | None, whole: bool) -> tuple[int, bytes]:
    with socket.create_connection(
        ("127.0.0.1", port), timeout=20, source_address=(source, 0) if source else None
    ) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(data)
        got = b""
        while whole or b"\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    if not got:
        raise ConnectionResetError("closed without an answer")
    return int(got.split(b" ")[1]), got


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"me:{password}".encode()).decode()}


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    password: str = "",
) -> tuple[int, bytes, float]:
    """The owner's request from 127.0.0.1: status, body and seconds to the answer."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = {**basic(password), **({"Content-Type": "application/json"} if data else {})}
        conn.request(method, path, body=data, headers={**sent, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read(), time.monotonic() - started
    finally:
        conn.close()


class Attack:
    """The attackers' threads, and what they got."""

    def __init__(
        self, http_port: int, rtsp_port: int, password: str, dirs: dict[str, Path]
    ) -> None:
        """``password``: the owner's (the settings fuzz and the forged hosts use it);
        ``dirs``: the daemon's ``clips`` and ``images`` folders, and a ``secret`` file."""
        self.http, self.rtsp, self.password, self.dirs = http_port, rtsp_port, password, dirs
        self.stop = threading.Event()
        self.got: dict[str, Counter[Any]] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, run: Callable[[Counter[Any]], None]) -> threading.Thread:
        """``run(got)`` on a thread of its own until ``stop`` (or until it is done)."""
        got = self.got[name] = Counter()

        def guarded() -> None:
            try:
                run(got)
            except Exception as exc:  # an attacker that fails is a finding
                got[f"crashed: {exc!r}"] += 1

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)

    def tally(self, prefix: str) -> Counter[Any]:
        """What the attackers whose names begin with ``prefix`` got, together."""
        total: Counter[Any] = Counter()
        for name, got in list(self.got.items()):
            if name.startswith(prefix):
                total.update(got)
        return total

    # -- the attacks ---------------------------------------------------------------------------

    def fuzz_settings(self, got: Counter[Any]) -> None:
        """Every key the page may change, with every hostile value, from 127.0.0.5 (with the
        password: what a page the owner opened, or anyone who knows it, may send)."""
        token = base64.b64encode(f"me:{self.password}".encode()).decode()
        head = (
            f"PATCH /api/settings HTTP/1.1\r\nHost: 127.0.0.1:{self.http}\r\n"
            f"Authorization: Basic {token}\r\nOrigin: http://127.0.0.1:{self.http}\r\n"
            "Sec-Fetch-Site: same-origin\r\nContent-Type: application/json\r\n"
        )
        for key in PAGE_KEYS:
            section, name = key.split(".")
            for value in HOSTILE_VALUES:
                body = json.dumps({section: {name: value}}).encode()
                data = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
                while not self.stop.is_set():
                    status = tried(knock, self.http, data, "127.0.0.5")
                    if status != "reset":  # refused at once for opening too many: again
                        got[status] += 1
                        break
                    got["reset"] += 1
                    self.stop.wait(0.1)  # this client's pace after a refusal

    def guess_page(self, got: Counter[Any]) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            token = base64.b64encode(f"admin:guess{n}".encode())
            head = b"GET /health.json HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic "
            got[tried(knock, self.http, head + token + b"\r\n\r\n", "127.0.0.2")] += 1

    def guess_rtsp(self, got: Counter[Any]) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            token = base64.b64encode(f"admin:guess{n}".encode()).decode()
            req = (
                f"DESCRIBE rtsp://127.0.0.1:{self.rtsp}/live RTSP/1.0\r\nCSeq: 1\r\n"
                f"Authorization: Basic {token}\r\n\r\n"
            )
            got[tried(knock, self.rtsp, req.encode(), "127.0.0.2")] += 1

    def idle_page(self, got: Counter[Any]) -> None:
        """Sockets on the page's port: silent, or in the middle of a request head."""
        self.hold_sockets(self.http, [b"", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: ", b"G"], got)

    def idle_rtsp(self, got: Counter[Any]) -> None:
        """Sockets on the RTSP port: silent, ``$``, half a request, a request without the
        password and then silence."""
        describe = f"DESCRIBE rtsp://127.0.0.1:{self.rtsp}/live RTSP/1.0\r\nCSeq: 1\r\n\r\n"
        openings = [b"", b"$", b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n", describe.encode()]
        self.hold_sockets(self.rtsp, openings, got)

    def hold_sockets(self, port: int, openings: list[bytes], got: Counter[Any]) -> None:
        """Keep many more sockets open than the port has slots, each sending one of
        ``openings`` and then nothing; replace the ones the server lets go."""
        held: list[socket.socket] = []
        n = 0
        while not self.stop.is_set():
            for s in list(held):  # the ones the server closed
                try:
                    if s.recv(65536, socket.MSG_DONTWAIT) == b"":
                        raise ConnectionResetError
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                held.remove(s)
                s.close()
                got["let go"] += 1
            while len(held) < 100:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.bind(("127.0.0.3", 0))
                try:
                    s.connect(("127.0.0.1", port))
                    s.sendall(openings[n % len(openings)])
                except OSError:
                    s.close()
                    got["refused"] += 1
                    continue
                n += 1
                held.append(s)
                got["opened"] += 1
            self.stop.wait(0.5)  # the pace of a patient attacker, not a wait for the daemon
        for s in held:
            s.close()

    def forge_hosts(self, got: Counter[Any]) -> None:
        """Requests with the password under names that are not the camera's, from 127.0.0.4
        (what a page on another site makes the owner's browser send)."""
        paths = ("/", "/health.json", "/stream.mjpg", "/api/clips", "/clips/x.motion.mp4")
        auth = basic(self.password)["Authorization"]
        while not self.stop.is_set():
            for host in FORGED_HOSTS:
                for path in paths:
                    data = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: {auth}\r\n\r\n"
                    try:
                        status, body = exchange(self.http, data.encode(), "127.0.0.4")
                    except OSError:
                        got["reset"] += 1
                        continue
                    got[status] += 1
                    got["leaked"] += b"uptime" in body or b"days" in body

    def plant_links(self, got: Counter[Any]) -> None:
        """Links (and a hard link) to a secret under every name the daemon reads in its
        clip and capture folders, made and removed again and again."""
        secret = self.dirs["secret"]
        clips, images = self.dirs["clips"], self.dirs["images"]
        n = 0
        while not self.stop.is_set():
            n += 1
            stem = f"16{n:08d}"
            names = [
                clips / f"{stem}.motion.mp4",
                clips / f"{stem}.motion.jpg",
                clips / f".{stem}.motion.mp4.json",
                images / f"planted{n}.jpg",
            ]
            for path in names:
                path.symlink_to(secret)
            os.link(secret, images / f"hard{n}.jpg")
            got["planted"] += len(names) + 1
            self.stop.wait(0.2)
            for path in [*names[:2], images / f"hard{n}.jpg"]:
                path.unlink(missing_ok=True)  # the rest stay, as an attacker's leftovers


def tried(send: Callable[[int, bytes, str], int], port: int, data: bytes, source: str) -> Any:
    """The status of one try, or "reset" when the server closed the connection first (the
    address opened too many, or its slot went to someone the server trusts more)."""
    try:
        return send(port, data, source)
    except OSError:
        return "reset"


def guessed(
    run: Callable[[Counter[Any]], None], attack: Attack, owner: Callable[[], None]
) -> Counter[Any]:
    """Four guessers (``run``, one of ``attack``'s) at once while the owner does ``owner()``;
    what they got together, once checked against the guard's schedule: however many guess at
    once, one address has no more passwords checked than one guesser in turn would."""
    began = time.monotonic()
    for n in range(4):
        attack.start(f"guess {n}", run)
    try:
        eventually(lambda: attack.tally("guess")[401] >= 3, 10, "the guessing under way")
        owner()
    finally:
        attack.join()
    statuses = attack.tally("guess")
    assert 3 <= statuses[401] <= most_guesses(time.monotonic() - began), statuses
    return statuses


def most_guesses(seconds: float) -> int:
    """The most wrong passwords one address can have checked in ``seconds``."""
    n, t = 0, 0.0
    while t <= seconds:
        n += 1
        t += guard.penalty(n)
    return n
