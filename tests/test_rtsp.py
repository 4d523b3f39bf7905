"""RTSP out of the real daemon (synthetic source or a replayed file), read as users read it:
FFmpeg's RTSP client through PyAV over TCP and over UDP, two at once; Digest and Basic
authentication with the page's password; malformed and hostile requests from raw sockets;
clients that stop reading or vanish; recording that never waits for any of them. Plus the
RTP packetizer and the SDP on their own."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest
from conftest import eventually, pinthesky, serve_daemon, settings_for
from intruder import Attack, guessed
from servers import free_port

from pinthesky.daemon.app import Daemon
from pinthesky.live import rtsp
from pinthesky.live.rtp import MAX_PAYLOAD, RtpStream, nal_units, parameter_sets, sdp
from pinthesky.media import US, split_annexb
from pinthesky.record.bus import ClipReady
from pinthesky.record.recorder import ClipInfo
from pinthesky.settings import Settings

PASSWORD = "s3cret pass"
SIZE = (640, 480)


def rtsp_settings(tmp_path: Path, **flags: Any) -> Settings:
    return settings_for(
        tmp_path,
        **{
            "source.source": "synthetic",
            "rtsp.port": free_port(),
            "rtsp.bind": "127.0.0.1",
            "http.password": PASSWORD,
            **flags,
        },
    )


def serve(settings: Settings, check: Callable[[Daemon, int], Any]) -> Daemon:
    """Run the daemon, call ``check(daemon, port)`` on a thread, stop the daemon."""
    return serve_daemon(settings, lambda d: d.rtsp.port if d.rtsp else None, check)


def url(port: int, password: str | None = PASSWORD, path: str = "/live") -> str:
    auth = f"viewer:{password.replace(' ', '%20')}@" if password is not None else ""
    return f"rtsp://{auth}127.0.0.1:{port}{path}"


def read_frames(
    address: str, transport: str, count: int = 20, between: Callable[[], None] | None = None
) -> list[tuple[int, int]]:
    """Sizes of the first ``count`` pictures FFmpeg's RTSP client decodes from ``address``;
    ``between`` runs after the first picture."""
    sizes: list[tuple[int, int]] = []
    with av.open(address, options={"rtsp_transport": transport}, timeout=20) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for frame in container.decode(stream):
            sizes.append((frame.width, frame.height))
            if len(sizes) == 1 and between is not None:
                between()
            if len(sizes) >= count:
                break
    return sizes


# -- a raw client, for what FFmpeg never sends ------------------------------------------------


class Raw:
    """One RTSP connection on a plain socket."""

    def __init__(self, port: int, rcvbuf: int | None = None, source: str | None = None) -> None:
        """``source``: the loopback address to come from (127.0.0.2 is another client)."""
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.settimeout(20)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.cseq = 0
        self.interleaved: list[tuple[int, bytes]] = []

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self, method: str, target: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        self.cseq += 1
        lines = [f"{method} {target or self.url} RTSP/1.0", f"CSeq: {self.cseq}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, got, body = self.response()
        assert got.get("cseq") == str(self.cseq)
        return status, got, body

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response, keeping interleaved packets that come before it."""
        while True:
            while len(self.buf) < 4:
                if not self._fill():
                    raise ConnectionError("closed")
            if self.buf[:1] == b"$":
                channel, size = struct.unpack(">BH", self.buf[1:4])
                while len(self.buf) < 4 + size:
                    if not self._fill():
                        raise ConnectionError("closed")
                self.interleaved.append((channel, self.buf[4 : 4 + size]))
                self.buf = self.buf[4 + size :]
                continue
            while b"\r\n\r\n" not in self.buf:
                if not self._fill():
                    raise ConnectionError("closed")
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            assert lines[0].startswith("RTSP/1.0 "), lines[0]
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                key = name.lower()
                headers[key] = (headers[key] + "\n" if key in headers else "") + value.strip()
            length = int(headers.get("content-length", "0"))
            while len(self.buf) < length:
                if not self._fill():
                    raise ConnectionError("closed")
            body, self.buf = self.buf[:length], self.buf[length:]
            return int(lines[0].split(" ")[1]), headers, body

    def interleaved_packet(self) -> tuple[int, bytes]:
        while not self.interleaved:
            if self.buf[:1] not in (b"", b"$"):
                raise AssertionError(f"expected interleaved data, got {self.buf[:20]!r}")
            if len(self.buf) >= 4:
                _, size = struct.unpack(">BH", self.buf[1:4])
                if len(self.buf) >= 4 + size:
                    self.interleaved.append((self.buf[1], self.buf[4 : 4 + size]))
                    self.buf = self.buf[4 + size :]
                    continue
            if not self._fill():
                raise ConnectionError("closed")
        return self.interleaved.pop(0)

    def closed_by_server(self) -> bool:
        """True once the server closed the connection (after any data still in flight)."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


def basic() -> str:
    return "Basic " + base64.b64encode(f"anyone:{PASSWORD}".encode()).decode()


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest(challenge: str, method: str, uri: str, password: str = PASSWORD) -> str:
    """An RFC 2617 Digest answer with qop=auth, computed here independently of the server."""
    nonce = re.search(r'nonce="([^"]+)"', challenge)
    realm = re.search(r'realm="([^"]+)"', challenge)
    assert nonce and realm
    ha1 = md5(f"cam:{realm.group(1)}:{password}")
    ha2 = md5(f"{method}:{uri}")
    cnonce, nc = "0a4f113b", "00000001"
    answer = md5(f"{ha1}:{nonce.group(1)}:{nc}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="cam", realm="{realm.group(1)}", nonce="{nonce.group(1)}", '
        f'uri="{uri}", qop=auth, nc={nc}, cnonce="{cnonce}", response="{answer}"'
    )


def setup_tcp(raw: Raw, auth: str) -> str:
    status, headers, _ = raw.request(
        "SETUP",
        raw.url + "/trackID=0",
        {"Transport": "RTP/AVP/TCP;unicast;interleaved=0-1", "Authorization": auth},
    )
    assert status == 200, status
    assert "interleaved=0-1" in headers["transport"]
    return headers["session"].split(";")[0]


# -- FFmpeg's client ----------------------------------------------------------------------------


def test_ffmpeg_plays_over_tcp_and_udp_at_the_camera_size_two_at_once(tmp_path):
    """Each of TCP and UDP decodes 20 pictures at 640x480 from the daemon's own H.264; then
    two clients play together, each decoding while the other has a session."""

    def check(daemon: Daemon, port: int) -> None:
        assert daemon.rtsp is not None
        for transport in ("tcp", "udp"):
            sizes = read_frames(url(port), transport)
            assert sizes == [SIZE] * 20, transport
        assert daemon.rtsp.frames_sent >= 40 and daemon.rtsp.frames_dropped == 0
        eventually(lambda: not daemon.rtsp.sessions, 10, "both sessions ended")

        both = threading.Barrier(2, timeout=30)
        results: dict[str, list[tuple[int, int]]] = {}

        def one(transport: str) -> None:
            results[transport] = read_frames(url(port), transport, 25, both.wait)

        threads = [threading.Thread(target=one, args=(t,)) for t in ("tcp", "udp")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == {"tcp": [SIZE] * 25, "udp": [SIZE] * 25}
        eventually(lambda: not daemon.rtsp.sessions, 10, "the two sessions ended")
        ring = daemon.ring
        assert ring is not None
        eventually(lambda: ring.on_packet is None, 10, "the ring unhooked once nobody plays")

    serve(rtsp_settings(tmp_path), check)


def test_wrong_or_no_password_is_refused_and_digest_and_basic_both_work(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        assert daemon.rtsp is not None
        for address in (url(port, None), url(port, "wrong"), url(port, PASSWORD + "x")):
            with pytest.raises(av.error.HTTPUnauthorizedError):
                av.open(address, options={"rtsp_transport": "tcp"}, timeout=20)
        assert daemon.rtsp.unauthorized >= 3 and not daemon.rtsp.sessions

        # Another client: the wrong passwords above slowed 127.0.0.1 down a little.
        raw = Raw(port, source="127.0.0.2")
        status, headers, _ = raw.request("OPTIONS")  # allowed without a password
        assert status == 200 and "DESCRIBE" in headers["public"]
        status, headers, body = raw.request("DESCRIBE")
        assert status == 401 and body == b""
        challenges = headers["www-authenticate"].split("\n")
        assert challenges[0].startswith("Digest ") and challenges[1].startswith("Basic ")
        wrong = digest(challenges[0], "DESCRIBE", raw.url, "guess")
        assert raw.request("DESCRIBE", headers={"Authorization": wrong})[0] == 401
        # A right answer for another method is not an answer for this one.
        other = digest(challenges[0], "PLAY", raw.url)
        assert raw.request("DESCRIBE", headers={"Authorization": other})[0] == 401
        forged = challenges[0].replace('nonce="', 'nonce="0')
        assert (
            raw.request("DESCRIBE", headers={"Authorization": digest(forged, "DESCRIBE", raw.url)})[
                0
            ]
            == 401
        )
        status, headers, body = raw.request(
            "DESCRIBE", headers={"Authorization": digest(challenges[0], "DESCRIBE", raw.url)}
        )
        assert status == 200 and headers["content-type"] == "application/sdp"
        assert b"sprop-parameter-sets=" in body
        status, _, body = raw.request("DESCRIBE", headers={"Authorization": basic()})
        assert status == 200 and b"m=video 0 RTP/AVP 96" in body
        # Latin-1 bytes where hex digits belong: refused like any wrong answer.
        right = digest(challenges[0], "DESCRIBE", raw.url)
        odd_nonce = 'Digest username="cam", realm="pinthesky", nonce="' + "\xe9" * 48
        for mangled in (
            right.replace('response="', 'response="\xe9'),
            odd_nonce + '", uri="x", response="y"',
        ):
            raw.cseq += 1
            head = f"DESCRIBE {raw.url} RTSP/1.0\r\nCSeq: {raw.cseq}\r\nAuthorization: {mangled}"
            raw.send((head + "\r\n\r\n").encode("latin-1"))
            assert raw.response()[0] == 401
        bad_basic = "Basic " + base64.b64encode(b"anyone:nope").decode()
        assert raw.request("DESCRIBE", headers={"Authorization": bad_basic})[0] == 401
        assert (
            raw.request(
                "SETUP", raw.url + "/trackID=0", {"Transport": "RTP/AVP/TCP;interleaved=0-1"}
            )[0]
            == 401
        )
        raw.close()
        assert not daemon.rtsp.sessions

    serve(rtsp_settings(tmp_path), check)


def test_the_sdp_describes_the_stream_the_camera_encodes(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        raw = Raw(port)
        for path in ("/live", "/live/", "/"):
            status, headers, body = raw.request(
                "DESCRIBE", f"rtsp://127.0.0.1:{port}{path}", {"Authorization": basic()}
            )
            assert status == 200, path
        assert headers["content-base"] == f"rtsp://127.0.0.1:{port}/"
        text = body.decode()
        fmtp = re.search(r"a=fmtp:96 (.*)\r\n", text)
        assert fmtp is not None
        params = dict(p.split("=", 1) for p in fmtp.group(1).split(";"))
        assert params["packetization-mode"] == "1"
        sps, pps = (base64.b64decode(x) for x in params["sprop-parameter-sets"].split(","))
        assert sps[0] & 0x1F == 7 and pps[0] & 0x1F == 8
        assert params["profile-level-id"] == sps[1:4].hex().upper()
        # The parameter sets are the ones in the ring's keyframes.
        assert daemon.ring is not None
        newest = daemon.ring.newest_ts()
        assert newest is not None
        key = daemon.ring.keyframe_before(newest)
        assert key is not None
        packets, _ = daemon.ring.read(key)
        assert sps in split_annexb(packets[0].data) and pps in split_annexb(packets[0].data)
        assert "a=rtpmap:96 H264/90000" in text and "a=control:trackID=0" in text
        assert (
            raw.request("DESCRIBE", f"rtsp://127.0.0.1:{port}/other", {"Authorization": basic()})[0]
            == 404
        )
        raw.close()

    serve(rtsp_settings(tmp_path), check)


# -- bad input ------------------------------------------------------------------------------------


def test_malformed_requests_get_an_answer_and_the_stream_plays_on(tmp_path, caplog):
    def check(daemon: Daemon, port: int) -> None:
        assert daemon.rtsp is not None
        auth = {"Authorization": basic()}
        # Unreadable: answered 400 (or what fits), then the connection closes.
        for data, status in [
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200) + b"\r\n\r\n", 400),
            (b"GARBAGE\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"OPTIONS * RTSP/1.0\r\n\r\n", 400),  # no CSeq
            (b"OPTIONS * RTSP/1.0\r\nCSeq: abc\r\n\r\n", 400),
            (b"OPTIONS * RTSP/1.0\r\nCSeq: -1\r\n\r\n", 400),
            (b"OPTIONS * RTSP/1.0\r\nCSeq: 99999999999999999999\r\n\r\n", 400),
            (b"OPTIONS * RTSP/1.0\r\nCSeq: \xb2\r\n\r\n", 400),  # a digit to str.isdigit
            (b"DESCRIBE rtsp://[::1/live RTSP/1.0\r\nCSeq: 1\r\n\r\n", 400),
            (b"OPTIONS * RTSP/2.0\r\nCSeq: 1\r\n\r\n", 505),
            (b"DESCRIBE http://127.0.0.1/live RTSP/1.0\r\nCSeq: 1\r\n\r\n", 400),
            (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nBad Header\r\n\r\n", 400),
            (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 400),
            (b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n", 400),
            (b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: 99999999\r\n\r\n", 413),
            (b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: -5\r\n\r\n", 413),
            (b"SET_PARAMETER * RTSP/1.0\r\nCSeq: 1\r\nContent-Length: \xb2\r\n\r\n", 413),
        ]:
            raw = Raw(port)
            raw.send(data)
            got, _, _ = raw.response()
            assert got == status, data[:60]
            assert raw.closed_by_server()
            raw.close()

        # Readable but wrong: answered, and the connection goes on.
        raw = Raw(port)
        assert raw.request("FOO")[0] == 501
        assert raw.request("ANNOUNCE", headers=auth)[0] == 405
        assert raw.request("RECORD", headers=auth)[0] == 405
        assert raw.request("PLAY", headers=auth)[0] == 454  # no session
        assert raw.request("PLAY", headers={**auth, "Session": "nope"})[0] == 454
        assert raw.request("TEARDOWN", headers={**auth, "Session": "nope"})[0] == 454
        assert raw.request("GET_PARAMETER", headers={**auth, "Session": "nope"})[0] == 454
        assert raw.request("SET_PARAMETER", headers=auth)[0] == 200
        track = raw.url + "/trackID=0"
        for transport in [
            "",
            "garbage",
            "RTP/AVP;multicast;port=5000-5001",
            "RTP/AVP;unicast;destination=203.0.113.9;client_port=5000-5001",
            "RTP/AVP;unicast",  # no client_port
            "RTP/AVP;unicast;client_port=70000-70001",
            "RTP/AVP;unicast;client_port=abc",
            "RTP/AVP/TCP;unicast;interleaved=300-301",
            "RTP/AVP/TCP;unicast;interleaved=0-1;mode=record",
            "RTP/SAVP;unicast;client_port=5000-5001",
        ]:
            status, _, _ = raw.request("SETUP", track, {**auth, "Transport": transport})
            assert status == 461, transport
        assert (
            raw.request("SETUP", raw.url + "/nope", {**auth, "Transport": "RTP/AVP/TCP"})[0] == 404
        )
        assert not daemon.rtsp.sessions
        # A list of alternatives: the first one this server serves is taken.
        status, headers, _ = raw.request(
            "SETUP",
            track,
            {**auth, "Transport": "RTP/AVP;multicast,RTP/AVP/TCP;unicast;interleaved=2-3"},
        )
        assert status == 200 and "interleaved=2-3" in headers["transport"]
        sid = headers["session"].split(";")[0]
        assert headers["session"].endswith(";timeout=60")
        # One track per session: a second SETUP in it is refused.
        status, _, _ = raw.request(
            "SETUP", track, {**auth, "Session": sid, "Transport": "RTP/AVP/TCP"}
        )
        assert status == 459
        assert raw.request("GET_PARAMETER", headers={**auth, "Session": sid})[0] == 200
        assert raw.request("TEARDOWN", headers={**auth, "Session": sid})[0] == 200
        assert not daemon.rtsp.sessions
        raw.close()

        # After all that the stream plays, and the camera never stopped.
        assert read_frames(url(port), "tcp") == [SIZE] * 20

    serve(rtsp_settings(tmp_path), check)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_the_client_limit_refuses_one_more(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        assert daemon.rtsp is not None
        first = Raw(port)
        setup_tcp(first, basic())
        second = Raw(port)
        status, _, body = second.request(
            "SETUP",
            second.url + "/trackID=0",
            {"Authorization": basic(), "Transport": "RTP/AVP/TCP"},
        )
        assert status == 453 and b"too many clients" in body
        assert daemon.rtsp.refused == 1 and len(daemon.rtsp.sessions) == 1
        first.close()
        eventually(lambda: not daemon.rtsp.sessions, 10, "the first session ended")
        assert setup_tcp(second, basic())
        second.close()

    serve(rtsp_settings(tmp_path, **{"rtsp.max_clients": 1}), check)


# -- clients that stop reading or vanish -------------------------------------------------------


def rtp_header(packet: bytes) -> tuple[int, bool, int, int, int]:
    """Version, marker, payload type, sequence number, timestamp."""
    first, second, seq, ts = struct.unpack(">BBHI", packet[:8])
    return first >> 6, bool(second & 0x80), second & 0x7F, seq, ts


def test_a_client_that_stops_reading_loses_whole_frames_and_then_its_connection(
    tmp_path, monkeypatch
):
    """A client that stops reading: its frames are dropped (the camera, the ring and another
    client go on), then it is disconnected; a client that resets its connection mid-stream
    ends its session at once."""
    monkeypatch.setattr(rtsp, "BACKLOG_LIMIT", 32 * 1024)
    monkeypatch.setattr(rtsp, "STALL_TIMEOUT_S", 3.0)

    def check(daemon: Daemon, port: int) -> None:
        assert daemon.rtsp is not None and daemon.ring is not None
        slow = Raw(port, rcvbuf=4096)
        sid = setup_tcp(slow, basic())
        status, headers, _ = slow.request(
            "PLAY", headers={"Authorization": basic(), "Session": sid}
        )
        assert status == 200 and "rtptime=" in headers["rtp-info"]
        seq0 = int(re.search(r"seq=(\d+)", headers["rtp-info"]).group(1))  # type: ignore[union-attr]
        channel, packet = slow.interleaved_packet()
        assert channel == 0 and rtp_header(packet)[0] == 2 and rtp_header(packet)[2] == 96
        assert rtp_header(packet)[3] == seq0
        # The first picture is a keyframe with its parameter sets (single NAL unit packets).
        assert packet[12] & 0x1F in (7, 28)
        # Now it reads nothing more.
        eventually(lambda: daemon.rtsp.frames_dropped > 0, 60, "frames dropped for the slow client")
        newest = daemon.ring.newest_ts()
        assert read_frames(url(port), "tcp") == [SIZE] * 20, "another client plays meanwhile"
        assert daemon.ring.newest_ts() != newest, "the camera went on"
        eventually(lambda: sid not in daemon.rtsp.sessions, 60, "the slow client dropped")
        assert slow.closed_by_server()
        slow.close()

        gone = Raw(port)
        sid = setup_tcp(gone, basic())
        assert gone.request("PLAY", headers={"Authorization": basic(), "Session": sid})[0] == 200
        gone.interleaved_packet()
        gone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()  # a reset, mid-stream
        eventually(lambda: not daemon.rtsp.sessions, 10, "the reset client's session ended")

    serve(rtsp_settings(tmp_path), check)


def test_udp_goes_to_the_client_and_a_silent_client_times_out(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        assert daemon.rtsp is not None
        daemon.rtsp.session_timeout_s = 2.0
        media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        media.bind(("127.0.0.1", 0))
        media.settimeout(20)
        rtp_port = media.getsockname()[1]
        raw = Raw(port)
        status, headers, _ = raw.request(
            "SETUP",
            raw.url + "/trackID=0",
            {
                "Authorization": basic(),
                "Transport": f"RTP/AVP;unicast;client_port={rtp_port}-{rtp_port + 1}",
            },
        )
        assert status == 200
        transport = headers["transport"]
        assert f"client_port={rtp_port}-{rtp_port + 1}" in transport
        server = re.search(r"server_port=(\d+)-(\d+)", transport)
        assert server and int(server.group(1)) % 2 == 0
        assert int(server.group(2)) == int(server.group(1)) + 1
        sid = headers["session"].split(";")[0]
        assert raw.request("PLAY", headers={"Authorization": basic(), "Session": sid})[0] == 200
        ssrc = int(re.search(r"ssrc=([0-9A-F]+)", transport).group(1), 16)  # type: ignore[union-attr]
        seqs = []
        for _ in range(30):
            packet, sender = media.recvfrom(2048)
            assert sender == ("127.0.0.1", int(server.group(1)))
            version, _, pt, seq, _ = rtp_header(packet)
            assert version == 2 and pt == 96 and struct.unpack(">I", packet[8:12])[0] == ssrc
            assert len(packet) <= 12 + MAX_PAYLOAD
            seqs.append(seq)
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(30)]
        # Nothing more from the client: no keep-alive, no RTCP. The session times out.
        eventually(lambda: not daemon.rtsp.sessions, 20, "the silent session timed out")
        assert raw.closed_by_server()
        raw.close()
        media.close()

    serve(rtsp_settings(tmp_path), check)


def test_a_client_plays_on_through_a_camera_restart_at_the_new_size(tmp_path):
    """A new resolution (from the shadow, say) reopens the camera with a new ring: a client
    that plays meanwhile goes on from the new ring's first keyframe, whose in-band SPS and PPS
    carry the new size, and a new client's SDP describes it."""

    async def main() -> tuple[list[tuple[int, int]], bytes, bytes]:
        daemon = Daemon(rtsp_settings(tmp_path))
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.started.wait(), 15)
        await asyncio.wait_for(daemon.first_frame.wait(), 15)
        assert daemon.rtsp is not None and daemon.rtsp.port is not None
        port = daemon.rtsp.port
        sizes: list[tuple[int, int]] = []
        loop = asyncio.get_running_loop()
        first_picture = asyncio.Event()

        def play() -> None:
            with av.open(url(port), options={"rtsp_transport": "tcp"}, timeout=20) as c:
                c.streams.video[0].codec_context.thread_count = 1
                for frame in c.decode(video=0):
                    sizes.append((frame.width, frame.height))
                    loop.call_soon_threadsafe(first_picture.set)
                    if sizes.count((320, 240)) >= 20:
                        return

        player = asyncio.create_task(asyncio.to_thread(play))
        await asyncio.wait_for(first_picture.wait(), 30)
        old_ring = daemon.ring
        assert await daemon.reconfigure({"camera.resolution": "320x240"}, "test")
        assert daemon.ring is not old_ring
        await asyncio.wait_for(player, 60)

        def describe() -> bytes:
            raw = Raw(port)
            status, _, body = raw.request("DESCRIBE", headers={"Authorization": basic()})
            raw.close()
            assert status == 200
            return body

        sdp_text = await asyncio.to_thread(describe)
        ring = daemon.ring
        newest = ring.newest_ts() if ring else None
        key = ring.keyframe_before(newest) if ring and newest else None
        assert ring is not None and key is not None
        sets = parameter_sets(ring.read(key)[0][0].data)
        daemon.request_stop()
        assert await asyncio.wait_for(task, 10) == 0
        assert sets is not None
        return sizes, sdp_text, sets[0]

    sizes, body, sps = asyncio.run(main())
    assert sizes[0] == SIZE and sizes[-1] == (320, 240)
    changed = sizes.index((320, 240))
    assert set(sizes[:changed]) == {SIZE} and set(sizes[changed:]) == {(320, 240)}
    sprop = re.search(rb"sprop-parameter-sets=([^,;\r]+)", body)
    assert sprop is not None
    assert base64.b64decode(sprop.group(1)) == sps, "the SDP has the reopened camera's SPS"


# -- recording never waits --------------------------------------------------------------------


def test_motion_is_recorded_as_without_clients_while_clients_play_and_stall(
    footage, tmp_path, monkeypatch
):
    """The replayed footage's walk-in makes the same clip (pre-roll 3 s, post-roll 4 s, as in
    test_pipeline) while one client plays over TCP and another has stopped reading."""
    monkeypatch.setattr(rtsp, "BACKLOG_LIMIT", 32 * 1024)
    scene = footage.scenario("small_object")
    settings = rtsp_settings(
        tmp_path,
        **{
            "source.source": scene.path,
            "source.replay_speed": 1,
            "recorder.pre_roll": 3,
            "recorder.post_roll": 4,
        },
    )
    clips: list[tuple[ClipInfo, int]] = []
    decoded: list[tuple[int, int]] = []

    async def main() -> Daemon:
        daemon = Daemon(settings)
        daemon.bus.subscribe(
            ClipReady,
            lambda e: clips.append((e.clip, len(daemon.rtsp.sessions) if daemon.rtsp else 0)),
        )
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.first_frame.wait(), 15)
        await asyncio.wait_for(daemon.started.wait(), 15)
        assert daemon.rtsp is not None and daemon.rtsp.port is not None
        port = daemon.rtsp.port

        def slow_client() -> Raw:
            slow = Raw(port, rcvbuf=4096)
            sid = setup_tcp(slow, basic())
            assert (
                slow.request("PLAY", headers={"Authorization": basic(), "Session": sid})[0] == 200
            )
            return slow

        slow = await asyncio.to_thread(slow_client)
        stop = threading.Event()

        def player() -> None:
            with av.open(url(port), options={"rtsp_transport": "tcp"}, timeout=20) as c:
                c.streams.video[0].codec_context.thread_count = 1
                try:
                    for frame in c.decode(video=0):
                        decoded.append((frame.width, frame.height))
                        if stop.is_set():
                            return
                except (av.error.FFmpegError, OSError):
                    assert stop.is_set(), "the stream broke before the daemon stopped"

        playing = asyncio.create_task(asyncio.to_thread(player))
        try:
            assert await asyncio.wait_for(task, 60) == 0
        finally:
            stop.set()
            slow.close()
        # The daemon's stop closed the player's connection: FFmpeg ends the stream.
        await asyncio.wait_for(playing, 30)
        return daemon

    daemon = asyncio.run(main())
    assert daemon.info is not None
    assert len(decoded) >= 100 and set(decoded) == {(daemon.info.width, daemon.info.height)}
    assert clips, "the walk-in made its clip"
    clip, watching = clips[0]
    assert watching == 2, "both clients had sessions while the clip was cut"
    (begin, end) = scene.events[0]
    origin = getattr(daemon.camera, "origin_us", 0)
    first, last = (clip.start_ts - origin) / US, (clip.end_ts - origin) / US
    assert begin - 4 - 1e-6 <= first <= begin - 3 + 1e-6, (first, begin)
    assert end + 4 <= last <= end + 6, (last, end)
    assert clip.trigger == "motion"


# -- settings ---------------------------------------------------------------------------------


def test_rtsp_settings_are_checked_at_the_edge(tmp_path):
    result = pinthesky(
        "--rtsp-port", "8554", "--rtsp-max-clients", "0", "--validate-config", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "--rtsp-max-clients rtsp.max_clients = '0'" in result.stderr
    result = pinthesky(
        "--rtsp-port", "8554", "--rtsp-bind", "127.0.0.1", "--validate-config", cwd=tmp_path
    )
    assert result.returncode == 0
    assert '[rtsp]\nport = 8554\nbind = "127.0.0.1"\nmax_clients = 2\n' in result.stdout


def test_a_port_in_use_is_one_line_and_the_camera_records_on(tmp_path, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = rtsp_settings(tmp_path, **{"rtsp.port": port})

        async def main() -> Daemon:
            daemon = Daemon(settings)
            task = asyncio.create_task(daemon.run())
            await asyncio.wait_for(daemon.started.wait(), 15)
            await asyncio.wait_for(daemon.first_frame.wait(), 15)
            daemon.request_stop()
            assert await asyncio.wait_for(task, 10) == 0
            return daemon

        daemon = asyncio.run(main())
    assert daemon.rtsp is None
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rtsp: cannot")]
    assert len(lines) == 1 and f"port {port}" in lines[0]


# -- RTP and SDP on their own --------------------------------------------------------------------


def test_fu_a_fragments_rebuild_each_nal_unit_and_the_marker_ends_the_picture():
    sps = bytes([0x67, 0x42, 0xC0, 0x1E]) + bytes(range(10))
    pps = bytes([0x68, 0xCE, 0x3C, 0x80])
    idr = bytes([0x65]) + bytes((i * 7) & 0xFF for i in range(5000))
    unit = b"".join(b"\x00\x00\x00\x01" + n for n in (b"\x09\xf0", sps, pps, idr))
    stream = RtpStream(ssrc=0x1234, first_seq=65534, ts_offset=1000)
    packets = stream.packetize(nal_units(unit), 2 * US)
    assert [rtp_header(p)[3] for p in packets] == [
        (65534 + i) & 0xFFFF for i in range(len(packets))
    ]
    assert {rtp_header(p)[4] for p in packets} == {(2 * 90_000 + 1000) & 0xFFFFFFFF}
    assert [rtp_header(p)[1] for p in packets] == [False] * (len(packets) - 1) + [True]
    payloads = [p[12:] for p in packets]
    assert payloads[0] == sps and payloads[1] == pps  # the delimiter is not sent
    rebuilt = b""
    for i, payload in enumerate(payloads[2:]):
        assert payload[0] == (0x65 & 0xE0) | 28 and len(payload) <= MAX_PAYLOAD
        assert bool(payload[1] & 0x80) == (i == 0)
        assert bool(payload[1] & 0x40) == (i == len(payloads) - 3)
        assert payload[1] & 0x1F == 5
        rebuilt += payload[2:]
    assert bytes([0x65]) + rebuilt == idr
    # Over the RTSP connection: the same packets, each behind its $-channel-length prefix.
    again = RtpStream(ssrc=0x1234, first_seq=65534, ts_offset=1000)
    (interleaved,) = again.packetize(nal_units(unit), 2 * US, channel=6)
    assert interleaved == b"".join(struct.pack(">cBH", b"$", 6, len(p)) + p for p in packets)
    assert (again.seq, again.packets, again.octets) == (stream.seq, stream.packets, stream.octets)
    report = stream.sender_report(2 * US + US // 10)
    assert report is not None and len(report) == 28 and report[1] == 200
    assert struct.unpack(">I", report[16:20])[0] == (2 * 90_000 + 9_000 + 1000)
    assert struct.unpack(">II", report[20:28]) == (len(packets), sum(len(p) for p in payloads))


def test_sdp_from_parameter_sets():
    sps = bytes([0x67, 0x64, 0x00, 0x28, 0xAC, 0xD9])
    pps = bytes([0x68, 0xEB, 0xE3, 0xCB])
    access_unit = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x01" + pps + b"\x00\x00\x01\x65\x88"
    assert parameter_sets(access_unit) == (sps, pps)
    assert parameter_sets(b"\x00\x00\x01\x41\x9a") is None
    text = sdp(sps, pps, "192.0.2.7", 42, 20.0)
    assert text.endswith("\r\n") and "o=- 42 1 IN IP4 192.0.2.7\r\n" in text
    expected = f"profile-level-id=640028;sprop-parameter-sets={base64.b64encode(sps).decode()},"
    assert expected + base64.b64encode(pps).decode() in text
    assert "c=IN IP6 ::" in sdp(sps, pps, "::1", 1, 25.0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("RTP/AVP/TCP;unicast;interleaved=4-5", rtsp.Transport(True, channels=(4, 5))),
        ("RTP/AVP/TCP", rtsp.Transport(True, channels=(0, 1))),
        ("RTP/AVP;unicast;client_port=5000-5001", rtsp.Transport(False, client_ports=(5000, 5001))),
        ("RTP/AVP/UDP;unicast;client_port=6000", rtsp.Transport(False, client_ports=(6000, 6001))),
        ("RTP/AVP;unicast;client_port=0-1", None),
        ("RTP/AVP;unicast;client_port=5000-5001;destination=10.0.0.1", None),
        ("RTP/AVP/TCP;interleaved=a-b", None),
    ],
)
def test_transport_headers(value: str, expected: rtsp.Transport | None) -> None:
    assert rtsp.parse_transport(value) == expected


# -- a hostile home network ---------------------------------------------------------------------


def test_idle_and_half_open_sockets_never_shut_the_owners_player_out(tmp_path):
    """Three times the connection slots held by sockets that send nothing, ``$``, half a
    request, or a request without the password: the owner's player still gets in at once,
    and the idle ones are let go after a few seconds."""

    def check(daemon: Daemon, port: int) -> None:
        assert daemon.rtsp is not None
        idle: list[Raw] = []
        try:
            for n in range(36):
                raw = Raw(port, source="127.0.0.3")
                kind = n % 4
                if kind == 1:
                    raw.send(b"$")
                elif kind == 2:
                    raw.send(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n")
                elif kind == 3:
                    assert raw.request("DESCRIBE")[0] == 401  # then silence
                idle.append(raw)
            started = time.monotonic()
            assert read_frames(url(port), "tcp", 10) == [SIZE] * 10
            assert time.monotonic() - started < 10
            assert daemon.rtsp.evicted > 0
            for raw in idle:  # every one closed: evicted, refused, or timed out
                assert raw.closed_by_server()
            assert time.monotonic() - started < rtsp.UNTRUSTED_IDLE_S + 12
        finally:
            for raw in idle:
                raw.close()

    serve(rtsp_settings(tmp_path), check)


def test_garbage_is_answered_at_once_and_half_a_request_within_seconds(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        for data in (b"\x00\x01\x02garbage", b"\x16\x03\x01", b"$\x00\x00\x10", b" OPTIONS"):
            raw = Raw(port)
            started = time.monotonic()
            raw.send(data)
            assert raw.response()[0] == 400, data
            assert time.monotonic() - started < 1.0, data
            raw.close()
        raw = Raw(port)
        started = time.monotonic()
        raw.send(b"OPTIONS * RTSP/1.0\r\nCSeq: 1\r\n")  # and nothing more
        assert raw.response()[0] == 408
        assert time.monotonic() - started < rtsp.HEAD_TIMEOUT_S + 2
        raw.close()

    serve(rtsp_settings(tmp_path), check)


def test_a_captured_digest_login_cannot_be_replayed(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        assert daemon.rtsp is not None
        raw = Raw(port)
        status, headers, _ = raw.request("DESCRIBE")
        challenge = headers["www-authenticate"].split("\n")[0]
        login = {"Authorization": digest(challenge, "DESCRIBE", raw.url)}
        assert raw.request("DESCRIBE", headers=login)[0] == 200
        # The same answer again, on this connection or another: refused, as stale.
        status, headers, _ = raw.request("DESCRIBE", headers=login)
        assert status == 401 and "stale=TRUE" in headers["www-authenticate"]
        again = Raw(port)
        assert again.request("DESCRIBE", headers=login)[0] == 401
        again.close()
        # An answer for one URL is no answer for another (both name the stream).
        other = {"Authorization": digest(challenge, "DESCRIBE", raw.url + "/")}
        assert raw.request("DESCRIBE", headers=other)[0] == 401
        # A nonce given to one address does not work from another.
        elsewhere = Raw(port, source="127.0.0.4")
        login = {"Authorization": digest(challenge, "DESCRIBE", elsewhere.url)}
        assert elsewhere.request("DESCRIBE", headers=login)[0] == 401
        # A nonce expires; the client is told it is stale, and a fresh one works.
        status, headers, _ = raw.request("DESCRIBE")
        challenge = headers["www-authenticate"].split("\n")[0]
        auth = daemon.rtsp._auth
        now = auth._clock()
        auth._clock = lambda: now + rtsp.NONCE_LIFETIME_S + 1
        login = {"Authorization": digest(challenge, "DESCRIBE", raw.url)}
        status, headers, _ = raw.request("DESCRIBE", headers=login)
        assert status == 401 and "stale=TRUE" in headers["www-authenticate"]
        fresh = headers["www-authenticate"].split("\n")[0]
        login = {"Authorization": digest(fresh, "DESCRIBE", raw.url)}
        assert raw.request("DESCRIBE", headers=login)[0] == 200
        # None of that counts as a wrong password.
        assert daemon.rtsp.guard.wrong == 2  # the other URL and the other address
        raw.close()
        elsewhere.close()

    serve(rtsp_settings(tmp_path), check)


def test_password_guessing_is_slowed_per_address_and_logged_in_a_few_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    def check(daemon: Daemon, port: int) -> None:
        assert daemon.rtsp is not None
        attack = Attack(0, port, PASSWORD, {})

        def owner() -> None:  # elsewhere on the network
            started = time.monotonic()
            assert read_frames(url(port), "tcp", 5) == [SIZE] * 5
            assert time.monotonic() - started < 10

        statuses = guessed(attack.guess_rtsp, attack, owner)
        checked = statuses[401]
        # The rest turned away unchecked (503), or closed unread for opening too many.
        assert set(statuses) <= {401, 503, "reset"} and statuses[503] + statuses["reset"] > 0
        assert daemon.rtsp.guard.wrong == checked

    serve(rtsp_settings(tmp_path), check)
    lines = [r.getMessage() for r in caplog.records if "wrong password" in r.getMessage()]
    assert len(lines) == 2, lines  # the first, then the summary when the server stopped
    assert "127.0.0.2" in lines[-1]
