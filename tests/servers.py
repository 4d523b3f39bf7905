"""Local stand-ins for AWS, started and stopped by the tests: an S3 server (moto, real HTTP),
an AWS IoT credentials provider (TLS with client-certificate auth, certificates by trustme) and
API Gateway's WebSocket management API (TLS, SigV4 signatures checked).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import trustme


def _below_ephemeral() -> range:
    """Ports the kernel never hands to an outgoing connection: those below its ephemeral
    range (32768-60999 on Linux by default)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(1024, low - 12000), max(2048, low))


_PORTS = _below_ephemeral()
_next_port = [_PORTS.start + (os.getpid() * 97) % len(_PORTS)]
_ports_lock = threading.Lock()


def free_port() -> int:
    """A port free now that no other call in this process has been given, for a server
    started next. Bound to port 0 and let go, a port from the ephemeral range could be given
    to any outgoing connection (boto3's, a browser's) before the server binds it: "address
    already in use" by chance. These come from below that range, in turn; processes start
    apart, so test runs side by side rarely meet."""
    with _ports_lock:
        for _ in range(len(_PORTS)):
            port = _next_port[0]
            _next_port[0] = port + 1 if port + 1 < _PORTS.stop else _PORTS.start
            with socket.socket() as s:
                try:
                    s.bind(("0.0.0.0", port))  # the daemon's page and RTSP bind every address
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1}")


@contextmanager
def moto_server(port: int | None = None) -> Iterator[str]:
    """moto in server mode on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    # moto's web server logs every request: the CloudWatch tests would ship those lines too.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    # moto keeps its state in the process: start every server empty.
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"))
    try:
        yield url
    finally:
        server.stop()


def aws_client(service: str, endpoint: str, region: str = "us-east-1") -> Any:
    """A boto3 client of ``service`` for a local moto server."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def s3_client(endpoint: str) -> Any:
    return aws_client("s3", endpoint)


@contextmanager
def black_hole() -> Iterator[str]:
    """An endpoint that takes connections and never answers (a network that hangs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1024)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


class Relay:
    """A TCP relay to ``127.0.0.1:target`` that passes the first ``hold_after`` bytes each
    client sends, then holds the rest until ``release`` is set: a network that stalls in the
    middle of an upload. ``holding`` is set once it holds something back."""

    def __init__(self, target: int, hold_after: int) -> None:
        self.target = target
        self.hold_after = hold_after
        self.release = threading.Event()
        self.holding = threading.Event()
        self._listener = socket.socket()
        # A small receive buffer (not autotuned) on every accepted socket: the client's
        # sends block soon after the relay stops reading, as they would on a slow link.
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._sockets: list[socket.socket] = [self._listener]
        self._closing = threading.Event()

    def __enter__(self) -> Relay:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self.release.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close does not)
        for s in self._sockets:
            s.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
            threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def _forward(self, client: socket.socket, upstream: socket.socket) -> None:
        passed = 0
        try:
            while data := client.recv(65536):
                if passed + len(data) > self.hold_after and not self.release.is_set():
                    self.holding.set()
                    self.release.wait(120)
                upstream.sendall(data)
                passed += len(data)
        except OSError:
            pass
        finally:
            upstream.close()


@contextmanager
def stalled_endpoint() -> Iterator[tuple[str, threading.Event]]:
    """An endpoint that takes connections, reads the start of a request and then neither reads
    nor answers (a link that died mid-upload); the event is set at the first request."""
    started = threading.Event()
    held: list[socket.socket] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            with contextlib.suppress(OSError):
                if conn.recv(4096):
                    started.set()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", started
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close does not)
        listener.close()
        for conn in held:
            conn.close()


class Pki:
    """A CA, a server certificate for 127.0.0.1 and a device certificate, as files."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.server = self.ca.issue_cert("127.0.0.1", "localhost")
        device = self.ca.issue_cert("cam1-device")
        self.ca_file = directory / "AmazonRootCA1.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file = directory / "thing.cert.pem"
        self.key_file = directory / "thing.key"
        device.cert_chain_pems[0].write_to_path(str(self.cert_file))
        device.private_key_pem.write_to_path(str(self.key_file))
        os.chmod(self.key_file, 0o600)


class CredentialsProvider:
    """An AWS IoT credentials provider: checks the client certificate, the path and the
    thing-name header, and answers credentials valid for ``lifetime``."""

    def __init__(self, pki: Pki, role_alias: str = "pits-role", lifetime_s: int = 3600) -> None:
        self.pki = pki
        self.role_alias = role_alias
        self.lifetime_s = lifetime_s
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.body: bytes | None = None
        self.served = threading.Event()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.requests.append(
                    {"path": self.path, "thing": self.headers.get("x-amzn-iot-thingname")}
                )
                expected = f"/role-aliases/{provider.role_alias}/credentials"
                status = provider.status if self.path == expected else 404
                expiry = datetime.now(UTC) + timedelta(seconds=provider.lifetime_s)
                body = (
                    provider.body
                    or json.dumps(
                        {
                            "credentials": {
                                "accessKeyId": f"ASIA{len(provider.requests):016d}",
                                "secretAccessKey": "secret",
                                "sessionToken": "token",
                                "expiration": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
                            }
                        }
                    ).encode()
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                provider.served.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        pki.server.configure_cert(ctx)
        pki.ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as AWS IoT
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.endpoint = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> CredentialsProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Sshd:
    """A running sshd: log in as root with ``options`` (ssh ``-o`` values)."""

    port: int
    options: list[str]
    key: Path


@contextmanager
def sshd(directory: Path) -> Iterator[Sshd]:
    """Debian's OpenSSH server on 127.0.0.1, for root with a throwaway key only."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key, client_key = directory / "host_key", directory / "client_key"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (directory / "authorized_keys").write_text(client_key.with_suffix(".pub").read_text())
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\nPidFile none\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation directory
    with (directory / "sshd.log").open("w") as log:
        server = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        wait_for_port(port, server)
        yield Sshd(
            port,
            [
                f"Port={port}",
                f"IdentityFile={client_key}",
                "IdentitiesOnly=yes",
                f"UserKnownHostsFile={directory / 'known_hosts'}",
            ],
            client_key,
        )
    finally:
        server.terminate()
        server.wait(10)


def wait_for_port(port: int, process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """Until something accepts connections on 127.0.0.1:``port`` (the process must live)."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert process.poll() is None, f"exited with {process.returncode}"
        assert time.monotonic() < deadline, f"nothing listens on port {port}"
        threading.Event().wait(0.05)


@dataclass
class Post:
    """One ``post_to_connection`` as the stand-in received it."""

    connection_id: str
    body: bytes
    region: str
    service: str
    signed: bool
    """The SigV4 signature matches the request, recomputed with the expected secret."""


def sigv4_check(
    method: str, path: str, headers: dict[str, str], body: bytes, secret: str
) -> tuple[bool, str, str]:
    """(signature valid, region, service) of a SigV4-signed request without a query string,
    computed here from AWS's published algorithm (not with botocore, which signed it)."""
    found = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=[^/]+/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
        headers.get("authorization", ""),
    )
    if not found:
        return False, "", ""
    date, region, service, signed, signature = found.groups()
    names = signed.split(";")
    if "host" not in names or any(n not in headers for n in names):
        return False, region, service
    canonical = "\n".join(
        [
            method,
            quote(path, safe="/~"),  # non-S3 services: the path is encoded once more
            "",
            "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
            signed,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            headers.get("x-amz-date", ""),
            f"{date}/{region}/{service}/aws4_request",
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature), region, service


class ApiGateway:
    """API Gateway's WebSocket management API over TLS: ``POST /{stage}/@connections/{id}``.

    Every request's signature is checked against ``secret`` (what ``CredentialsProvider``
    hands out). A connection in ``gone`` answers 410 ``GoneException``, as API Gateway does
    once the viewer left; ``gone_after[id] = n`` makes it go after ``n`` posts.
    """

    def __init__(self, pki: Pki, stage: str = "prod", secret: str = "secret") -> None:
        self.posts: list[Post] = []
        self.gone: set[str] = set()
        self.gone_after: dict[str, int] = {}
        self.changed = threading.Condition()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                prefix = f"/{stage}/@connections/"
                if not self.path.startswith(prefix):
                    self._answer(404, b'{"message":"Not Found"}')
                    return
                cid = unquote(self.path[len(prefix) :])
                headers = {k.lower(): v for k, v in self.headers.items()}
                signed, region, service = sigv4_check("POST", self.path, headers, body, secret)
                with api.changed:
                    post = Post(cid, body, region, service, signed)
                    count = sum(1 for p in api.posts if p.connection_id == cid)
                    gone = cid in api.gone or count >= api.gone_after.get(cid, count + 1)
                    if not gone:
                        api.posts.append(post)
                    api.changed.notify_all()
                if not signed:
                    self._answer(403, b'{"message":"Forbidden"}', "ForbiddenException")
                elif gone:
                    self._answer(410, b'{"message":null}', "GoneException")
                else:
                    self._answer(200, b"")

            def _answer(self, status: int, body: bytes, error: str | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if error:
                    self.send_header("x-amzn-ErrorType", error)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        pki.server.configure_cert(ctx)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.endpoint = f"https://127.0.0.1:{self.httpd.server_address[1]}/{stage}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def to(self, connection_id: str) -> list[Post]:
        with self.changed:
            return [p for p in self.posts if p.connection_id == connection_id]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, timeout), f"timed out; {len(self.posts)} posts"

    def __enter__(self) -> ApiGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
