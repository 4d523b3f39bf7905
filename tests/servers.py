"""Local stand-ins for AWS, started and stopped by the tests: an S3 server (moto, real HTTP)
and an AWS IoT credentials provider (TLS with client-certificate auth, certificates by trustme).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
