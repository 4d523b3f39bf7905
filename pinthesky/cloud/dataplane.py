"""The Pi In The Sky data plane: API Gateway's WebSocket management API, posted to with the
device's AWS IoT credentials.

What goes on the wire is what pits-device 0.9.1 sent: a live stream posts the 8-byte ``jsmp``
header, then the MPEG-1 stream in chunks of at most 32768 bytes, every post base64-encoded
(API Gateway delivers the console a text message; the console decodes it); replies and
``record_end`` are the JSON ``{"invoke": <event>}``. Live streams go through
``dataplane.endpoint_url``, replies and ``record_end`` through the command's
``connection.management_endpoint`` (the configured endpoint when it has none). Requests are
signed (SigV4) for ``execute-api`` in ``dataplane.region_name``, or the region in the endpoint's
host name.

Every function that talks to AWS blocks: call it on a worker thread. botocore's errors become
``DataPlaneError`` here, with one line to log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import struct
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pinthesky.control.commands import Connection
from pinthesky.errors import PintheskyError
from pinthesky.live.worker import Worker
from pinthesky.settings import DataplaneSettings

log = logging.getLogger(__name__)

CHUNK_BYTES = 32768
"""API Gateway's WebSocket frame limit is 32 KB: the most raw video bytes in one post."""
HEADER = struct.Struct(">4sHH")
"""jsmpeg's stream header: magic, width, height (big-endian)."""
_REGION_IN_HOST = re.compile(r"\.execute-api\.([a-z]{2}(?:-[a-z]+)+-\d+)\.amazonaws\.com(?:\.cn)?$")
_REPLY_CLIENTS = 4
"""Management endpoints whose client is kept for replies (one per API in practice)."""


class DataPlaneError(PintheskyError):
    """A post did not go through, or the data plane is not usable; the text says why."""

    def __init__(self, message: str, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone
        """The connection is gone (410): the viewer left."""


def header(width: int, height: int) -> bytes:
    return HEADER.pack(b"jsmp", width, height)


def invoke_body(event: dict[str, Any]) -> bytes:
    return json.dumps({"invoke": event}, separators=(",", ":")).encode()


def region_of(endpoint: str, configured: str | None) -> str | None:
    """The region to sign for: the configured one, else the one in an AWS host name."""
    if configured:
        return configured
    match = _REGION_IN_HOST.search(urlsplit(endpoint).hostname or "")
    return match.group(1) if match else None


def post(client: Any, connection_id: str, data: bytes) -> None:
    """One ``post_to_connection`` (blocks)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.post_to_connection(ConnectionId=connection_id, Data=data)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "")) or str(exc)
        raise DataPlaneError(
            f"post to connection {connection_id}: {code}", gone=code == "GoneException"
        ) from None
    except BotoCoreError as exc:
        raise DataPlaneError(f"post to connection {connection_id}: {exc}") from None
    except PintheskyError as exc:  # the credentials could not be fetched
        raise DataPlaneError(f"post to connection {connection_id}: {exc}") from None


class DataPlane:
    """Clients of the management API on the device's credentials, and the replies."""

    def __init__(
        self,
        session: Callable[[str | None], Any],
        settings: Callable[[], DataplaneSettings],
    ) -> None:
        self._session = session
        self._settings = settings
        self._reply_clients: dict[tuple[str, str], Any] = {}
        self._replies: Worker | None = None
        self.replies = 0
        self.reply_failures = 0

    def target(self, endpoint: str | None = None) -> tuple[str, str]:
        """(endpoint, region) to post to: ``endpoint``, else the configured one. Raises
        ``DataPlaneError`` naming what is missing."""
        s = self._settings()
        if not s.enabled:
            raise DataPlaneError("the data plane is off (dataplane.enabled, --dataplane)")
        url = endpoint or s.endpoint_url
        if not url:
            raise DataPlaneError("no data-plane endpoint (dataplane.endpoint_url)")
        region = region_of(url, s.region_name)
        if not region:
            raise DataPlaneError(f"no region to sign requests to {url} for (dataplane.region_name)")
        return url, region

    def client(self, endpoint: str, region: str) -> Any:
        """A new ``apigatewaymanagementapi`` client (imports boto3: worker thread)."""
        from botocore.config import Config

        config = Config(
            connect_timeout=5, read_timeout=10, retries={"max_attempts": 2, "mode": "standard"}
        )
        try:
            return self._session(region).client(
                "apigatewaymanagementapi", endpoint_url=endpoint, region_name=region, config=config
            )
        except PintheskyError as exc:  # a private key that others can read, ...
            raise DataPlaneError(str(exc)) from None

    def _reply_client(self, endpoint: str, region: str) -> Any:
        key = (endpoint, region)
        if key not in self._reply_clients:
            if len(self._reply_clients) >= _REPLY_CLIENTS:
                self._reply_clients.pop(next(iter(self._reply_clients)))
            self._reply_clients[key] = self.client(endpoint, region)
        return self._reply_clients[key]

    async def invoke(self, connection_id: str, endpoint: str | None, event: dict[str, Any]) -> None:
        """Post ``{"invoke": event}`` to a connection through ``endpoint`` (the configured one
        when None), on the replies' worker thread. Raises ``DataPlaneError``."""
        url, region = self.target(endpoint)
        if self._replies is None:
            self._replies = Worker("dataplane-replies")
        body = invoke_body(event)

        def send() -> None:
            post(self._reply_client(url, region), connection_id, body)

        await self._replies.run(send)
        self.replies += 1

    def reply(self, connection: Connection, event: dict[str, Any]) -> asyncio.Task[None]:
        """Answer a data-plane request (``health_end``, ``upload_end``, ``configuration_end``)
        on its connection, in the background; a failure is one log line."""

        async def send() -> None:
            try:
                await self.invoke(connection.id, connection.management_endpoint, event)
            except DataPlaneError as exc:
                self.reply_failures += 1
                log.warning("data plane: %s not posted: %s", event.get("name"), exc)
            else:
                log.info("data plane: %s posted to connection %s", event.get("name"), connection.id)

        return asyncio.get_running_loop().create_task(send(), name="dataplane-reply")

    def close(self) -> None:
        if self._replies is not None:
            self._replies.close()
            self._replies = None
