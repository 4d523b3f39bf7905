"""Short-lived AWS credentials from the AWS IoT credentials provider, refreshed by botocore.

The device proves who it is with its X.509 certificate (mutual TLS) and gets temporary
credentials for the IoT role alias: ``GET https://{endpoint}/role-aliases/{alias}/credentials``
with the ``x-amzn-iot-thingname`` header. The TLS client is the standard library's, with a
bounded timeout; the result is handed to botocore's ``RefreshableCredentials``, which fetches new
credentials well before expiry (15 minutes advisory, 10 minutes mandatory) on whatever thread
makes the next AWS call, so every boto3 client built on the session refreshes itself.

Failures are one-line ``CredentialsError``s; ``identity`` marks the ones that retrying soon
cannot fix (401/403: the certificate, its policy or the role alias is wrong).
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pinthesky.errors import PintheskyError

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
"""Connect and read timeout for one credentials request."""


class CredentialsError(PintheskyError):
    """Credentials could not be had; ``identity`` is True when the device identity is broken."""

    def __init__(self, message: str, identity: bool = False) -> None:
        super().__init__(message)
        self.identity = identity


@dataclass(frozen=True)
class IotIdentity:
    """What the device needs to ask for credentials (the shadow's ``cloud_connection``)."""

    endpoint: str
    role_alias: str
    thing_name: str
    cert: Path
    key: Path
    ca: Path | None


def check_key_permissions(key: Path) -> None:
    """Refuse a private key that others may read (as aws-iot-device-client does)."""
    try:
        mode = key.stat().st_mode
    except OSError as exc:
        raise CredentialsError(f"private key {key}: cannot read: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(
            f"private key {key}: readable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {key}"
        )


def _host_port(endpoint: str) -> tuple[str, int]:
    host = endpoint.strip()
    for scheme in ("https://", "http://"):
        if host.startswith(scheme):
            host = host[len(scheme) :]
    host = host.rstrip("/")
    if ":" in host:
        name, _, port = host.rpartition(":")
        return name, int(port)
    return host, 443


class IotCredentialsProvider:
    """Fetches credentials; ``fetch`` blocks (call it off the event loop)."""

    def __init__(self, identity: IotIdentity, timeout: float = TIMEOUT_S) -> None:
        # A key others can read is refused at once (the daemon does not start). Files that
        # are missing or unreadable are not: they may be installed later, so fetch() reports
        # them and the uploader keeps retrying.
        if identity.key.exists():
            check_key_permissions(identity.key)
        self.identity = identity
        self.timeout = timeout
        self.fetches = 0
        self._ctx: ssl.SSLContext | None = None

    def _context(self) -> ssl.SSLContext:
        if self._ctx is None:
            ident = self.identity
            check_key_permissions(ident.key)
            try:
                ctx = ssl.create_default_context(
                    cafile=str(ident.ca) if ident.ca is not None else None
                )
                ctx.load_cert_chain(str(ident.cert), str(ident.key))
            except (OSError, ssl.SSLError) as exc:
                raise CredentialsError(
                    f"certificate {ident.cert} / key {ident.key}: cannot load: {exc}",
                    identity=True,
                ) from None
            self._ctx = ctx
        return self._ctx

    def fetch(self) -> dict[str, str]:
        """One request; botocore's metadata dict (access_key, secret_key, token, expiry_time)."""
        ident = self.identity
        host, port = _host_port(ident.endpoint)
        path = f"/role-aliases/{ident.role_alias}/credentials"
        where = f"credentials provider {host}:{port}"
        self.fetches += 1
        conn = http.client.HTTPSConnection(
            host, port, context=self._context(), timeout=self.timeout
        )
        try:
            conn.request("GET", path, headers={"x-amzn-iot-thingname": ident.thing_name})
            response = conn.getresponse()
            body = response.read(64 * 1024)
        except ssl.SSLError as exc:
            # Unknown CA, a certificate the endpoint does not accept, ...: nothing a retry fixes
            # soon, but the endpoint may be the one that is wrong, so keep retrying slowly.
            raise CredentialsError(f"{where}: TLS failed: {exc.reason or exc}", True) from None
        except (OSError, http.client.HTTPException) as exc:
            raise CredentialsError(f"{where}: unreachable: {exc}") from None
        finally:
            conn.close()
        if response.status in (401, 403):
            raise CredentialsError(
                f"{where}: refused this device ({response.status}): check the certificate is "
                f"active and attached to thing {ident.thing_name!r}, and role alias "
                f"{ident.role_alias!r}",
                identity=True,
            )
        if response.status != 200:
            raise CredentialsError(f"{where}: HTTP {response.status} for {path}")
        return _parse(body, where)


def _parse(body: bytes, where: str) -> dict[str, str]:
    try:
        creds = json.loads(body)["credentials"]
        expiry = creds["expiration"]
        datetime.fromisoformat(expiry.replace("Z", "+00:00"))
        return {
            "access_key": creds["accessKeyId"],
            "secret_key": creds["secretAccessKey"],
            "token": creds["sessionToken"],
            "expiry_time": expiry,
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CredentialsError(f"{where}: answer is not AWS IoT credentials") from None


def refreshable(
    provider: IotCredentialsProvider, time_fetcher: Callable[[], datetime] | None = None
) -> Any:
    """botocore ``RefreshableCredentials`` that call the provider again before expiry.

    Nothing is fetched here: the first AWS call fetches, on its own (executor) thread.
    """
    from botocore.credentials import DeferredRefreshableCredentials, _local_now

    return DeferredRefreshableCredentials(
        refresh_using=provider.fetch,
        method="iot-credentials-provider",
        time_fetcher=time_fetcher or _local_now,
    )


def boto_session(credentials: Any | None, region: str | None) -> Any:
    """A boto3 session on the given credentials (None: the SDK's own chain, e.g. env vars)."""
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    if credentials is not None:
        core._credentials = credentials
    return boto3.Session(botocore_session=core, region_name=region)
