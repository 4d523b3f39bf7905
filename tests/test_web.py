"""The local web server of the real daemon (synthetic source), over real HTTP: the page, clips
with byte ranges, no path from a URL ever reaching the disk, basic auth, the MJPEG stream that
every viewer shares, and the live tap that costs nothing while nobody watches."""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from conftest import eventually, pinthesky, serve_daemon, settings_for, until
from servers import free_port

from pinthesky.daemon.app import Daemon
from pinthesky.live.tap import YUV420, LiveTap, Picture
from pinthesky.settings import Resolution, Settings, defaults, live_size

CLIP = bytes(range(256)) * 4000  # 1,024,000 bytes; the server never looks inside


def web_settings(tmp_path: Path, **flags: Any) -> Settings:
    return settings_for(
        tmp_path, **{"source.source": "synthetic", "http.port": free_port(), **flags}
    )


def fetch(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    source: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request; ``source`` is the loopback address to come from (127.0.0.2 is a client
    other than 127.0.0.1)."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=20, source_address=(source, 0) if source else None
    )
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def serve(settings: Settings, check: Callable[[Daemon, int], Any]) -> Daemon:
    """Run the daemon, call ``check(daemon, port)`` on a thread, stop the daemon."""
    return serve_daemon(settings, lambda d: d.web.port if d.web else None, check)


def plant_clips(tmp_path: Path) -> Path:
    clips = tmp_path / "clips"
    clips.mkdir(parents=True)
    (clips / "1700000000.motion.mp4").write_bytes(CLIP)
    (clips / "1700000100.motion.mp4").write_bytes(CLIP[:1000])
    (clips / "1700000200.motion.h264").write_bytes(b"\x00\x00\x00\x01" * 10)
    return clips


def test_the_page_lists_the_last_clips_with_players_downloads_and_health(tmp_path):
    plant_clips(tmp_path)

    def check(daemon: Daemon, port: int) -> None:
        status, headers, body = fetch(port, "/")
        assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in headers["content-security-policy"]
        page = body.decode()
        # Newest first; MP4 plays in the page, raw H.264 can only be downloaded.
        names = ["1700000200.motion.h264", "1700000100.motion.mp4", "1700000000.motion.mp4"]
        positions = [page.index(f'href="clips/{n}?download=1"') for n in names]
        assert positions == sorted(positions)
        assert page.count("<video") == 2 and 'src="clips/1700000000.motion.mp4"' in page
        assert '<img id="live" src="stream.mjpg" width="640" height="480"' in page
        assert "<dt>recording</dt><dd>yes</dd>" in page
        # Nothing is fetched from elsewhere: no absolute or scheme-relative address at all.
        assert "http:" not in page and "https:" not in page and '="//' not in page
        assert '<script src="app.js"></script>' in page
        status, headers, body = fetch(port, "/health.json")
        assert status == 200 and b'"recording_status": true' in body
        assert fetch(port, "/", method="HEAD")[2] == b""
        assert fetch(port, "/nothing")[0] == 404
        assert fetch(port, "/", method="POST")[0] == 405

    serve(web_settings(tmp_path), check)


def test_clips_are_served_with_byte_ranges(tmp_path):
    plant_clips(tmp_path)
    size = len(CLIP)

    def check(daemon: Daemon, port: int) -> None:
        url = "/clips/1700000000.motion.mp4"
        status, headers, body = fetch(port, url)
        assert (status, body) == (200, CLIP)
        assert headers["accept-ranges"] == "bytes" and headers["content-type"] == "video/mp4"
        cases = {
            "bytes=0-99": (0, 99),
            "bytes=1000-": (1000, size - 1),
            "bytes=-100": (size - 100, size - 1),
            f"bytes=5-{size + 50}": (5, size - 1),
        }
        for value, (first, last) in cases.items():
            status, headers, body = fetch(port, url, {"Range": value})
            assert status == 206, value
            assert headers["content-range"] == f"bytes {first}-{last}/{size}"
            assert body == CLIP[first : last + 1]
        for value in (f"bytes={size}-", "bytes=9-3", "bytes=-0"):
            status, headers, _ = fetch(port, url, {"Range": value})
            assert status == 416 and headers["content-range"] == f"bytes */{size}", value
        # Several ranges, or units this server does not know: the whole file (RFC 9110).
        for value in ("bytes=0-1,5-9", "items=0-1", "bytes=x-y"):
            assert fetch(port, url, {"Range": value})[:1] == (200,)
        status, headers, body = fetch(port, url + "?download=1", method="HEAD")
        assert status == 200 and body == b"" and headers["content-length"] == str(size)
        assert headers["content-disposition"] == 'attachment; filename="1700000000.motion.mp4"'
        status, headers, _ = fetch(port, "/clips/1700000200.motion.h264")
        assert status == 200 and headers["content-type"] == "video/h264"

    serve(web_settings(tmp_path), check)


def raw_get(port: int, target: bytes) -> bytes:
    """A request line sent as it is, whatever a client library would make of the path."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_no_path_from_a_url_reaches_the_disk(tmp_path):
    clips = plant_clips(tmp_path)
    (tmp_path / "secret.mp4").write_bytes(b"SECRET-OUTSIDE")
    (clips / ".1700000300.motion.mp4.partial").write_bytes(b"SECRET-PARTIAL")
    (clips / ".1700000000.motion.mp4.json").write_bytes(b'{"SECRET": "META"}')
    (clips / "sub").mkdir()
    (clips / "sub" / "1700000400.motion.mp4").write_bytes(b"SECRET-NESTED")
    attacks = [
        b"/clips/../secret.mp4",
        b"/clips/..%2Fsecret.mp4",
        b"/clips/%2e%2e/secret.mp4",
        b"/clips/%2e%2e%2fsecret.mp4",
        b"/clips/.1700000300.motion.mp4.partial",
        b"/clips/.1700000000.motion.mp4.json",
        b"/clips/sub/1700000400.motion.mp4",
        b"/clips/sub%2F1700000400.motion.mp4",
        b"/clips/" + str(tmp_path / "secret.mp4").encode(),
        b"/clips/" + str(tmp_path / "secret.mp4").replace("/", "%2F").encode(),
        b"/clips/1700000000.motion.mp4%00.txt",
        b"/clips/1700000000.motion.mp4/../../secret.mp4",
        b"/clips//etc/passwd",
        b"/../../../../etc/passwd",
        b"//etc/passwd",
        b"http://evil/clips/../secret.mp4",
        b"/clips/" + b"A" * 20000,
    ]

    def check(daemon: Daemon, port: int) -> None:
        for target in attacks:
            answer = raw_get(port, target)
            status = answer.split(b" ", 2)[1]
            assert status in (b"400", b"404"), (target, answer[:100])
            assert b"SECRET" not in answer and b"root:" not in answer, target
        assert raw_get(port, b"/clips/1700000000.motion.mp4").endswith(CLIP)

    serve(web_settings(tmp_path), check)


def test_basic_auth_guards_every_route(tmp_path):
    plant_clips(tmp_path)

    def basic(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def check(daemon: Daemon, port: int) -> None:
        paths = ("/", "/stream.mjpg", "/clips/1700000000.motion.mp4", "/health.json")
        for n, path in enumerate(paths):
            status, headers, body = fetch(port, path)
            assert status == 401 and headers["www-authenticate"].startswith("Basic realm=")
            assert b"SECRET" not in body and CLIP[:100] not in body
            # Each path from a client of its own: wrong passwords slow their address down.
            source = f"127.0.0.{n + 2}"
            assert fetch(port, path, basic("admin", "wrong"), source=source)[0] == 401
            assert fetch(port, path, {"Authorization": "Basic !!!"}, source=source)[0] == 401
            bearer = {"Authorization": "Bearer s3cr3t pw"}
            assert fetch(port, path, bearer, source=source)[0] == 401
        assert fetch(port, "/", basic("anyone", "s3cr3t pw"))[0] == 200
        status, _, body = fetch(port, "/clips/1700000000.motion.mp4", basic("admin", "s3cr3t pw"))
        assert (status, body) == (200, CLIP)
        assert daemon.web is not None and daemon.web.unauthorized == 16

    serve(web_settings(tmp_path, **{"http.password": "s3cr3t pw"}), check)


def read_parts(port: int, count: int, out: list[bytes], started: threading.Barrier) -> None:
    """Read ``count`` JPEGs of /stream.mjpg into ``out``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/stream.mjpg")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=FRAME"
        started.wait(10)
        for _ in range(count):
            assert response.readline() == b"--FRAME\r\n"
            headers = {}
            while (line := response.readline()) != b"\r\n":
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            out.append(response.read(int(headers["content-length"])))
            assert response.read(2) == b"\r\n"
    finally:
        conn.close()


def test_viewers_share_one_encoder_and_the_tap_idles_without_them(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        live, web = daemon.live, daemon.web
        assert live is not None and web is not None
        assert live.consumers(YUV420) == 0 and live.offered == 0, "nothing made unwatched"
        received: list[list[bytes]] = [[], [], []]
        barrier = threading.Barrier(3)
        readers = [
            threading.Thread(target=read_parts, args=(port, 10, out, barrier)) for out in received
        ]
        for r in readers:
            r.start()
        eventually(lambda: web.mjpeg.viewers == 3, 10, "three viewers")
        # A fourth viewer is one too many (http.max_viewers = 3).
        status, _, body = fetch(port, "/stream.mjpg")
        assert status == 503 and b"3 viewers" in body
        for r in readers:
            r.join(30)
        assert all(len(out) == 10 for out in received)
        for jpeg in (received[0][0], received[2][-1]):
            with av.open(io.BytesIO(jpeg), format="mjpeg") as c:
                frame = next(c.decode(video=0))
                assert (frame.width, frame.height) == (640, 480)
        # One encoder for all: about 10 pictures encoded for 30 sent.
        assert web.mjpeg.encoded <= 10 + 3, web.mjpeg.encoded
        assert len({bytes(j) for out in received for j in out}) <= web.mjpeg.encoded
        # The synthetic room has sensor noise: the picture changes.
        assert received[0][0] != received[0][-1]
        eventually(lambda: not (live.consumers(YUV420) or web.mjpeg.viewers), 5, "no viewer")
        assert not live.wants(YUV420)
        offered = live.offered
        ring = daemon.ring
        assert ring is not None
        newest = ring.newest_ts() or 0
        eventually(lambda: (ring.newest_ts() or 0) > newest + 500_000, 5, "half a second more")
        assert live.offered == offered, "no picture is made once the last viewer left"

    serve(web_settings(tmp_path, **{"http.max_viewers": 3}), check)


def test_the_web_server_is_off_by_default_and_a_busy_port_is_one_error_line(tmp_path, caplog):
    assert defaults().http.port is None

    async def main(settings: Settings) -> Daemon:
        daemon = Daemon(settings)
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.first_frame.wait(), 15)
        await asyncio.wait_for(daemon.started.wait(), 15)
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        return daemon

    assert asyncio.run(main(settings_for(tmp_path, **{"source.source": "synthetic"}))).web is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        settings = settings_for(
            tmp_path,
            **{"source.source": "synthetic", "http.port": port, "http.bind": "127.0.0.1"},
        )
        with caplog.at_level(logging.ERROR):
            assert asyncio.run(main(settings)).web is None
    (line,) = [r.getMessage() for r in caplog.records if r.name == "pinthesky.daemon.app"]
    assert line.startswith(f"http: cannot listen on 127.0.0.1 port {port}:")


@pytest.mark.parametrize(
    ("flag", "value", "line"),
    [
        ("--http-port", "70000", "http.port = '70000': must be a whole number from 0 to 65535"),
        ("--http-bind", "my-pi", "http.bind = 'my-pi': must be an IP address to listen on"),
        ("--live-size", "641x480", "live.size = '641x480': must be auto or WIDTHxHEIGHT"),
        ("--live-fps", "0", "live.fps = '0': must be a whole number from 1 to 30"),
        ("--live-max-sessions", "9", "live.max_sessions = '9': must be a whole number from 1 to 4"),
        (
            "--dataplane-endpoint",
            "http://abc.execute-api.eu-west-1.amazonaws.com/prod",
            "dataplane.endpoint_url = 'http://abc.execute-api.eu-west-1.amazonaws.com/prod': "
            "must be an https:// URL",
        ),
    ],
)
def test_bad_live_settings_are_one_line_and_exit_2(tmp_path, flag, value, line):
    done = pinthesky(flag, value, "--validate-config", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"pinthesky: {flag} {line}"), done.stderr


def test_live_size_follows_the_camera():
    live = defaults().live
    assert live.size is None and live.fps == 5
    assert live_size(live, Resolution(640, 480)) == (640, 480)
    assert live_size(live, Resolution(1920, 1080)) == (480, 270)
    assert live_size(live, Resolution(1280, 720)) == (640, 360)
    assert live_size(live, Resolution(320, 240)) == (320, 240)
    explicit = type(live)(Resolution(320, 240), 5, 800_000, 1)
    assert live_size(explicit, Resolution(640, 480)) == (320, 240)
    assert live_size(explicit, Resolution(160, 120)) == (160, 120), "never larger than the camera"


def test_the_tap_never_blocks_the_camera_and_keeps_one_picture_per_consumer():
    async def main() -> None:
        tap = LiveTap(asyncio.get_running_loop(), 5)
        feed = tap.subscribe(YUV420)
        picture = np.zeros((720, 640), np.uint8)

        def camera() -> float:
            t0 = time.perf_counter()
            for ts in range(1000):
                tap.offer(Picture(YUV420, picture, 640, 480, ts))
            return time.perf_counter() - t0

        # The loop is busy (not awaiting the feed) while the camera offers 1000 pictures.
        took = await asyncio.to_thread(camera)
        assert took < 0.5
        got = await feed.get(1)
        assert got is not None and got.ts == 999, "the newest one"
        assert feed.dropped == 999 and await feed.get(0.05) is None
        feed.close()
        assert not tap.wants(YUV420)
        tap.offer(Picture(YUV420, picture, 640, 480, 1000))  # nobody to hand it to
        assert await feed.get(0.05) is None

    asyncio.run(main())


def test_the_live_rate_follows_sensor_time():
    async def main() -> list[int]:
        tap = LiveTap(asyncio.get_running_loop(), 5)
        tap.reset(Resolution(640, 480), 50_000)  # a 20 fps camera
        jitter = [0, 900, -700, 300]
        return [i for i in range(40) if tap.due(i * 50_000 + jitter[i % 4])]

    assert asyncio.run(main()) == list(range(0, 40, 4))


def test_live_pictures_are_turned_like_the_clips(tmp_path):
    """--rotation 90 is a display rotation in the clips; live pictures are turned to match:
    the synthetic room's bright window, top left on the sensor, shows at the top right."""

    def check(daemon: Daemon, port: int) -> None:
        page = fetch(port, "/")[2]
        assert b'<img id="live" src="stream.mjpg" width="480" height="640"' in page
        parts: list[bytes] = []
        read_parts(port, 2, parts, threading.Barrier(1))
        with av.open(io.BytesIO(parts[-1]), format="mjpeg") as c:
            gray = next(c.decode(video=0)).to_ndarray(format="gray")
        assert gray.shape == (640, 480)
        window, elsewhere = gray[80:200, 280:370].mean(), gray[80:200, 110:200].mean()
        assert window > 180 > elsewhere + 10, (window, elsewhere)

    serve(web_settings(tmp_path, **{"camera.rotation": 90}), check)


def test_a_clip_opened_for_a_request_that_goes_away_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request cancelled (its connection closed, the server stopping) while its clip is
    being opened on a thread: the file the thread opens is closed, not left to the collector
    (whose ResourceWarning once surfaced in whichever test ran next)."""
    import os

    from pinthesky.local import web

    clip = tmp_path / "1700000000.motion.mp4"
    clip.write_bytes(b"\0" * 100)
    entered, release = threading.Event(), threading.Event()
    fds: list[int] = []
    real = web.open_ours

    def slow(path: Path) -> int:
        entered.set()
        assert release.wait(10)
        fds.append(real(path))
        return fds[-1]

    monkeypatch.setattr(web, "open_ours", slow)
    shut = threading.Event()

    class Watched(io.BufferedReader):
        def close(self) -> None:
            super().close()
            shut.set()

    monkeypatch.setattr(web.os, "fdopen", lambda fd, mode: Watched(io.FileIO(fd, mode)))

    async def main() -> None:
        request = asyncio.create_task(web._opened(clip))
        assert await asyncio.to_thread(entered.wait, 10)
        request.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await request
        closed = await asyncio.to_thread(shut.wait, 10)
        assert closed, "the clip opened for a cancelled request stays open"
        with pytest.raises(OSError):
            os.fstat(fds[0])

    asyncio.run(main())
    # Without the cancellation the caller gets the file and its size.
    monkeypatch.setattr(web, "open_ours", real)
    fh, size = asyncio.run(web._opened(clip))
    with fh:
        assert size == 100 and fh.read() == b"\0" * 100


def test_the_snapshot_is_the_cameras_picture_behind_the_pages_password(tmp_path):
    from PIL import Image

    token = base64.b64encode(b"anyone:s3cr3t pw").decode()

    def check(daemon: Daemon, port: int) -> None:
        assert fetch(port, "/snapshot.jpg")[0] == 401
        status, headers, body = fetch(port, "/snapshot.jpg", {"Authorization": f"Basic {token}"})
        assert status == 200 and headers["content-type"] == "image/jpeg"
        assert headers["cache-control"] == "no-store"
        assert Image.open(io.BytesIO(body)).size == (640, 480)
        status, headers, body = fetch(
            port, "/snapshot.jpg", {"Authorization": f"Basic {token}"}, method="HEAD"
        )
        assert status == 200 and body == b"" and int(headers["content-length"]) > 1000

    serve(web_settings(tmp_path, **{"http.password": "s3cr3t pw"}), check)


def test_snapshot_requests_share_one_picture_and_a_failing_camera_is_one_line(monkeypatch):
    from pinthesky.local import web

    async def main() -> None:
        calls = 0
        gate = threading.Event()

        def capture() -> bytes:
            nonlocal calls
            calls += 1
            if not gate.wait(5):
                raise RuntimeError("no frame")
            return b"\xff\xd8" + bytes([calls])

        snaps = web.Snapshots(capture)
        waiting = [asyncio.create_task(snaps.get()) for _ in range(6)]
        await until(lambda: calls == 1)
        gate.set()
        assert await asyncio.gather(*waiting) == [b"\xff\xd8\x01"] * 6
        assert await snaps.get() == b"\xff\xd8\x01" and calls == 1  # within a second
        monkeypatch.setattr(web, "SNAPSHOT_MAX_AGE_S", 0.0)
        assert await snaps.get() == b"\xff\xd8\x02" and snaps.taken == 2

        def broken() -> bytes:
            raise RuntimeError("camera stalled")

        with pytest.raises(RuntimeError, match="camera stalled"):
            await web.Snapshots(broken).get()

    asyncio.run(main())
