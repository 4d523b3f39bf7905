"""A hostile home network, all at once, against the daemon as a process: the page's settings
fuzzed with wrong types and huge numbers, idle and half-open sockets on both ports, password
guessing on both protocols, forged Host headers, links planted in every folder the daemon
reads. Meanwhile the owner gets in, the camera records its motion into clips that decode, and
the log grows by a bounded number of lines a minute.

The attackers come from other loopback addresses (127.0.0.2 guesses, 127.0.0.3 holds sockets)
than the owner (127.0.0.1), as other machines on the network would; their sockets are reset,
not closed, so that tens of thousands of tries leave no ports in TIME_WAIT on the machine.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import clip_facts, eventually
from servers import free_port, moto_server, s3_client
from test_local_api import FORGED_HOSTS, raw_status
from test_rtsp import knock, read_frames
from test_settings import HOSTILE_VALUES

from pinthesky.local import guard
from pinthesky.settings import PAGE_KEYS

PASSWORD = "campaign pass"
OWNER = {"Authorization": "Basic " + base64.b64encode(f"me:{PASSWORD}".encode()).decode()}
BUCKET = "pits-clips"
SECRET = b"root:x:0:0:SECRET-BYTES\n"
CLIPS_WANTED = 2
"""Motion clips the synthetic scene (a walk-in every 30 s) must give during the attack."""
LINES_PER_MINUTE = 60
"""The log's budget under attack (at rest the daemon logs a few lines a minute)."""


class Daemon:
    """``python -m pinthesky`` with its log collected line by line."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pinthesky", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.started = time.monotonic()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def logged(self, pattern: str) -> list[str]:
        return [line for line in list(self.lines) if re.search(pattern, line)]

    def stop(self) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took."""
        stopped = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        finally:
            self.proc.kill()
        self._reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code, time.monotonic() - stopped


def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, float]:
    """The owner's request from 127.0.0.1: status, body and seconds to the answer."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = {**OWNER, **({"Content-Type": "application/json"} if data else {})}
        conn.request(method, path, body=data, headers={**sent, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read(), time.monotonic() - started
    finally:
        conn.close()


class Attack:
    """The attackers' threads, and what they got."""

    def __init__(self, http_port: int, rtsp_port: int, dirs: dict[str, Path]) -> None:
        self.http, self.rtsp, self.dirs = http_port, rtsp_port, dirs
        self.stop = threading.Event()
        self.got: dict[str, Counter[Any]] = {}
        self._threads: list[threading.Thread] = []

    def start(self, name: str, run: Callable[[Counter[Any]], None]) -> None:
        got = self.got[name] = Counter()

        def guarded() -> None:
            try:
                run(got)
            except Exception as exc:  # an attacker that fails is a finding
                got[f"crashed: {exc!r}"] += 1

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(60)

    # -- the attacks ---------------------------------------------------------------------------

    def fuzz_settings(self, got: Counter[Any]) -> None:
        """Every key the page may change, with every hostile value (with the password: what
        a page the owner opened, or anyone who knows it, may send)."""
        same = {"Origin": f"http://127.0.0.1:{self.http}", "Sec-Fetch-Site": "same-origin"}
        for key in PAGE_KEYS:
            section, name = key.split(".")
            for value in HOSTILE_VALUES:
                if self.stop.is_set():
                    return
                status, _, _ = request(
                    self.http, "PATCH", "/api/settings", {section: {name: value}}, same
                )
                got[status] += 1

    def guess_page(self, got: Counter[Any]) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            token = base64.b64encode(f"admin:guess{n}".encode())
            head = b"GET /health.json HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic "
            got[tried(raw_status, self.http, head + token + b"\r\n\r\n", "127.0.0.2")] += 1

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
        paths = ("/", "/health.json", "/stream.mjpg", "/api/clips", "/clips/x.motion.mp4")
        while not self.stop.is_set():
            for host in FORGED_HOSTS:
                for path in paths:
                    status, body, _ = request(self.http, "GET", path, headers={"Host": host})
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


def test_a_hostile_home_network_does_not_get_in_flood_the_log_or_stop_the_camera(tmp_path):
    http_port, rtsp_port = free_port(), free_port()
    dirs = {name: tmp_path / name for name in ("clips", "images", "events", "state")}
    for d in dirs.values():
        d.mkdir()
    dirs["secret"] = tmp_path / "secret"
    dirs["secret"].write_bytes(SECRET)
    # The page's saved changes swapped for a link before the start: never read.
    planted = tmp_path / "planted.toml"
    planted.write_text("[camera]\nsensitivity = 99\n")
    (dirs["state"] / "local-settings.toml").symlink_to(planted)
    config = tmp_path / "pinthesky.toml"
    config.write_text(
        f'[http]\npassword = "{PASSWORD}"\nport = {http_port}\nbind = "127.0.0.1"\n'
        f'host_names = "cam.example.net"\nlocal_settings = "{dirs["state"]}/local-settings.toml"\n'
        f'[rtsp]\nport = {rtsp_port}\nbind = "127.0.0.1"\n'
        f'[recorder]\npre_roll = 2\npost_roll = 2\n[source]\nsource = "synthetic"\n'
        f'[storage]\nbucket_name = "{BUCKET}"\nvideo_format = "mp4"\n'
        f'combine_dir = "{dirs["clips"]}"\ncapture_dir = "{dirs["images"]}"\n'
        f'[cloud_connection]\nthing_name = "cam1"\n'
        f'[events]\nevent_input = "{dirs["events"]}/in.json"\n'
        f'event_output = "{dirs["events"]}/out.json"\n'
        f'configure_input = "{dirs["events"]}/cfg-in.json"\n'
        f'configure_output = "{dirs["events"]}/cfg-out.json"\n'
    )
    with moto_server() as endpoint:
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLOUDWATCH"))}
        env.update(
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL_S3=endpoint,
        )
        env.pop("JOURNAL_STREAM", None)
        daemon = Daemon(["--config", str(config)], tmp_path, env)
        try:
            eventually(lambda: daemon.logged("first frame buffered"), 60, "the first frame")
            eventually(lambda: daemon.logged("rtsp: the camera's stream is at"), 30, "RTSP")
            began = time.monotonic()
            status, body, _ = request(http_port, "GET", "/api/settings")
            assert status == 200 and json.loads(body)["settings"]["camera"]["sensitivity"] == 10

            attack = Attack(http_port, rtsp_port, dirs)
            attack.start("settings", attack.fuzz_settings)
            for n in range(2):  # two at once: one waits for its answer, the other tries
                attack.start(f"guess page {n}", attack.guess_page)
                attack.start(f"guess rtsp {n}", attack.guess_rtsp)
            http_openings = [b"", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: ", b"G"]
            rtsp_openings = [
                b"",
                b"$",
                b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n",
                f"DESCRIBE rtsp://127.0.0.1:{rtsp_port}/live RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode(),
            ]
            attack.start(
                "idle page", lambda got: attack.hold_sockets(http_port, http_openings, got)
            )
            attack.start(
                "idle rtsp", lambda got: attack.hold_sockets(rtsp_port, rtsp_openings, got)
            )
            attack.start("hosts", attack.forge_hosts)
            attack.start("links", attack.plant_links)

            # The owner, meanwhile: the page answers at once, the stream plays, a still taken
            # and swapped for a link at once is never uploaded as the link's target.
            slowest = 0.0
            stills = 0

            def owner_round() -> bool:
                nonlocal slowest, stills
                status, _, took = request(http_port, "GET", "/health.json")
                assert status == 200
                slowest = max(slowest, took)
                status, body, _ = request(http_port, "GET", "/api/clips")
                assert status == 200 and b"SECRET" not in body
                if stills < 3:
                    status, body, _ = request(http_port, "POST", "/api/still", {})
                    assert status == 200, (body, "".join(daemon.lines)[-3000:])
                    still = dirs["images"] / json.loads(body)["name"]
                    still.unlink(missing_ok=True)
                    still.symlink_to(dirs["secret"])
                    stills += 1
                uploaded = daemon.logged(r"uploaded \d+(-\d+)?\.motion\.mp4 ")
                return len(uploaded) >= CLIPS_WANTED

            eventually(lambda: attack.got["guess rtsp 0"][401] >= 2, 30, "the guessing")
            frames = read_frames(
                f"rtsp://me:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{rtsp_port}/live", "tcp", 10
            )
            assert len(frames) == 10
            eventually(owner_round, 180, f"{CLIPS_WANTED} motion clips recorded and uploaded")
            attack.join()
            attacked = time.monotonic() - began
            status, body, _ = request(http_port, "GET", "/api/settings")
            assert status == 200 and json.loads(body)["settings"]["camera"] == {
                **json.loads(body)["settings"]["camera"],
                "resolution": "640x480",
                "framerate": 20,
                "sensitivity": 10,
            }
        finally:
            code, took = daemon.stop()
        log = "".join(daemon.lines)

        # The camera recorded through all of it, and stopped at once.
        assert code == 0 and took < 5, (code, took, log[-3000:])
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        videos = [k for k in keys if k.endswith(".motion.mp4")]
        assert len(videos) >= CLIPS_WANTED, keys
        for key in videos:
            path = tmp_path / Path(key).name
            path.write_bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            facts = clip_facts(path)
            assert facts.first_keyframe and facts.frames >= 20, (key, facts)
        for key in keys:
            assert SECRET not in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key
    assert dirs["secret"].read_bytes() == SECRET and planted.read_text().endswith("= 99\n")
    # The page's saved changes went to a file of its own, in place of the planted link.
    assert not (dirs["state"] / "local-settings.toml").is_symlink()

    # The attackers got nowhere.
    got = attack.got
    crashed = [(name, k) for name, c in got.items() for k in c if str(k).startswith("crashed")]
    assert not crashed, crashed
    assert set(got["settings"]) <= {200, 400} and got["settings"].total() == len(PAGE_KEYS) * len(
        HOSTILE_VALUES
    ), got["settings"]
    assert set(got["hosts"]) <= {403, "leaked"} and got["hosts"]["leaked"] == 0, got["hosts"]
    allowed = most_guesses(attacked)
    for name, refused in (("guess page", 429), ("guess rtsp", 503)):
        tries = got[f"{name} 0"] + got[f"{name} 1"]
        assert set(tries) <= {401, refused, "reset"}, (name, tries)
        assert tries[401] <= allowed, (name, tries, allowed)  # one address, both threads
        assert tries[refused] > 0  # tried while slowed: turned away unchecked
    assert got["idle page"]["let go"] > 0 and got["idle rtsp"]["let go"] > 0
    assert slowest < 2.0, slowest  # the owner's page, under all of it

    # The log: a bounded number of lines a minute, no traceback.
    assert "Traceback" not in log
    minutes = (time.monotonic() - daemon.started) / 60
    assert len(daemon.lines) <= LINES_PER_MINUTE * minutes + 30, (len(daemon.lines), log)
    assert re.search(r"local-settings.toml: not a regular file", log)


def tried(send: Callable[[int, bytes, str], int], port: int, data: bytes, source: str) -> Any:
    """The status of one try, or "reset" when the server closed the connection first (a
    connection slot it needed for someone it trusts more)."""
    try:
        return send(port, data, source)
    except (OSError, IndexError):
        return "reset"


def most_guesses(seconds: float) -> int:
    """The most wrong passwords one address can have checked in ``seconds``."""
    n, t = 0, 0.0
    while t <= seconds:
        n += 1
        t += guard.penalty(n)
    return n
