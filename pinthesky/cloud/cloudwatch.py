"""Log records to CloudWatch Logs, in the background, in bounded memory.

``CloudWatchLogs`` is a watchtower handler (its formatter, its group and stream creation calls,
its ``cwl_client``) with a different queue. watchtower keeps one unbounded queue and one thread
per stream name, and our streams are named by day, so a camera that runs for a year would
collect a thread a day, and a camera offline for a week would hold every record in memory; a
batch that fails five quick retries is dropped. Here:

- ``emit`` only formats the record and appends it to one buffer under a lock: it never waits
  for the network, whatever state CloudWatch is in.
- The buffer is bounded in records and bytes. When it is full the oldest records go first and
  are counted (``dropped``); the sender says how many when CloudWatch answers again.
- One sender thread sends a batch (one stream, at most 10,000 records or 1 MiB, as
  PutLogEvents allows) ``send_interval`` seconds after its first record arrived, at once for an
  ERROR or a full batch. Records leave the buffer only once CloudWatch accepted them; a failed
  send is retried with capped exponential backoff (minutes for a refused identity).
- The boto3 client is made on the sender thread at its first send: attaching the handler costs
  the event loop nothing, and a missing region or refused credentials are a logged, retried
  delivery failure rather than an exception in the daemon.
- Streams are ``{year}/{month}/{day}`` (UTC, from each record's time), followed by
  ``/{thing}`` unless ``delineate_stream`` is off. A missing stream (or group) is created on the
  first refusal, so the device needs no describe permissions.

Records that botocore or urllib3 log on the sender thread itself are not shipped (they would
feed back into the next batch); pinthesky's own lines from that thread are.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import watchtower

from pinthesky.cloud.uploader import backoff
from pinthesky.logs import Redact

log = logging.getLogger(__name__)

MAX_RECORDS = 5_000
MAX_BYTES = 1024 * 1024
"""The buffer's bounds (message bytes plus CloudWatch's 26 bytes of overhead per event): two
days of INFO lines. In Python objects that is about 3 MB, plus a batch in flight."""
MAX_EVENT_BYTES = 32 * 1024
"""A longer message (a huge traceback) is cut to this many bytes."""
BATCH_RECORDS = 10_000
BATCH_BYTES = 1024 * 1024
BATCH_SPAN_MS = 23 * 3600 * 1000
"""PutLogEvents: 10,000 events, 1,048,576 bytes, and less than 24 hours per call."""
EVENT_OVERHEAD = 26
CLOSE_TIMEOUT_S = 2.0
"""How long closing waits for the last records (a stopping daemon must exit within 5 s)."""

_IDENTITY_CODES = {
    "AccessDeniedException",
    "UnrecognizedClientException",
    "ExpiredTokenException",
    "InvalidSignatureException",
}


@dataclass(slots=True)
class _Event:
    seq: int
    stream: str
    timestamp: int
    """Milliseconds since the epoch."""
    message: str
    size: int


class _LazyClient:
    """Makes the boto3 client on first use (which is on the sender thread)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._client: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            self._client = self._make()
        return getattr(self._client, name)


def stream_name(epoch_s: float, thing: str | None, delineate: bool) -> str:
    day = time.strftime("%Y/%m/%d", time.gmtime(epoch_s))
    return f"{day}/{thing}" if delineate and thing else day


class CloudWatchLogs(watchtower.CloudWatchLogHandler):
    """A logging handler (and a ``put`` for ready-made messages such as EMF records)."""

    def __init__(
        self,
        make_client: Callable[[], Any],
        log_group: str,
        thing: str | None,
        delineate: bool,
        send_interval: float,
        max_records: int = MAX_RECORDS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        super().__init__(
            log_group_name=log_group,
            # watchtower's notation, for its repr: the name is made per record by stream_for.
            log_stream_name="{strftime:%Y/%m/%d}" + (f"/{thing}" if delineate and thing else ""),
            use_queues=False,
            boto3_client=_LazyClient(make_client),
            create_log_group=False,
            max_message_size=MAX_EVENT_BYTES + EVENT_OVERHEAD,
        )
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.addFilter(Redact())
        self.thing = thing
        self.delineate = delineate
        self.interval = send_interval
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._cond = threading.Condition(threading.Lock())
        self._events: deque[_Event] = deque()
        self._bytes = 0
        self._seq = 0
        self._pending_since: float | None = None
        self._urgent = False
        self._taken_at = 0
        self._closing = False
        self._day: tuple[float, float, str] = (0.0, -1.0, "")
        self.dropped = 0
        """Records dropped because the buffer was full (oldest first)."""
        self.sent = 0
        self.rejected = 0
        """Records CloudWatch refused (too old, too far in the future)."""
        self.failures = 0
        """Failed sends in a row."""
        self._thread = threading.Thread(target=self._run, name="cloudwatch-logs", daemon=True)
        self._thread.start()

    # -- any thread -----------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self._thread.ident and not record.name.startswith("pinthesky"):
            return
        try:
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.put(message, record.created, urgent=record.levelno >= logging.ERROR)

    def put(self, message: str, created: float, urgent: bool = False) -> None:
        """Queue one message (never blocks on the network)."""
        data = message.encode("utf-8", errors="replace")
        if len(data) > MAX_EVENT_BYTES:
            message = data[: MAX_EVENT_BYTES - 16].decode("utf-8", errors="ignore") + " [truncated]"
            data = message.encode()
        if not message.strip():
            return  # CloudWatch refuses empty events
        size = len(data) + EVENT_OVERHEAD
        stream = self.stream_for(created)
        with self._cond:
            if self._closing:
                return
            self._seq += 1
            self._events.append(_Event(self._seq, stream, int(created * 1000), message, size))
            self._bytes += size
            while len(self._events) > self.max_records or self._bytes > self.max_bytes:
                old = self._events.popleft()
                self._bytes -= old.size
                self.dropped += 1
            if self._pending_since is None:
                self._pending_since = time.monotonic()
            if urgent or self._bytes >= BATCH_BYTES or len(self._events) >= BATCH_RECORDS:
                self._urgent = True
            self._cond.notify_all()

    def stream_for(self, created: float) -> str:
        start, end, name = self._day
        if not start <= created < end:
            start = created - created % 86400
            name = stream_name(created, self.thing, self.delineate)
            self._day = (start, start + 86400, name)
        return name

    def buffered(self) -> tuple[int, int]:
        """Records and bytes waiting to be sent."""
        with self._cond:
            return len(self._events), self._bytes

    def flush(self) -> None:
        self.drain()

    def drain(self, timeout: float = CLOSE_TIMEOUT_S) -> bool:
        """Send what is buffered now; True when all of it went before ``timeout``."""
        with self._cond:
            last = self._seq
            self._urgent = True
            self._cond.notify_all()
            return self._cond.wait_for(
                lambda: not self._events or self._events[0].seq > last or self._closing,
                timeout,
            )

    def close(self) -> None:
        """Send the last records (for ``CLOSE_TIMEOUT_S`` at most, once), stop the sender."""
        if not self._closing:
            deadline = time.monotonic() + CLOSE_TIMEOUT_S
            sent = self.drain(CLOSE_TIMEOUT_S) if self.failures == 0 else False
            with self._cond:
                self._closing = True
                left = len(self._events)
                self._cond.notify_all()
            # A send in flight may hang on the network: the thread is a daemon, leave it.
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if not sent and left:
                log.warning(
                    "CloudWatch Logs: %d records not sent at close (they are in the local log)",
                    left,
                )
        logging.Handler.close(self)

    # -- the sender thread ------------------------------------------------------------------

    def _run(self) -> None:
        retry_at = 0.0
        while True:
            with self._cond:
                batch = self._wait_for_batch(retry_at)
                if batch is None:
                    return
            error, identity = self._send(batch)
            with self._cond:
                if error is None:
                    while self._events and self._events[0].seq <= batch[-1].seq:
                        self._bytes -= self._events.popleft().size
                    self._pending_since = time.monotonic() if self._events else None
                    # What was already waiting when this batch left goes at once (a backlog).
                    self._urgent = bool(self._events) and self._events[0].seq <= self._taken_at
                    self.sent += len(batch)
                    failed, self.failures = self.failures, 0
                    self._cond.notify_all()
                else:
                    self.failures += 1
                    failed = self.failures
                    retry_at = time.monotonic() + backoff(self.failures, identity)
            if error is None and failed:
                log.info(
                    "CloudWatch Logs reachable again after %d failed sends (%d records dropped"
                    " so far while the buffer was full)",
                    failed,
                    self.dropped,
                )
            elif error is not None and failed == 1:
                log.warning(
                    "CloudWatch Logs group %s: %s; keeping up to %d records and retrying",
                    self.log_group_name,
                    error,
                    self.max_records,
                )

    def _wait_for_batch(self, retry_at: float) -> list[_Event] | None:
        """Under the lock: the next batch to send, or None when closing."""
        while True:
            if self._closing:
                return None
            now = time.monotonic()
            due = None
            if self._events and self._pending_since is not None:
                due = now if self._urgent else self._pending_since + self.interval
                due = max(due, retry_at)
            if due is not None and now >= due:
                self._urgent = False
                return self._take()
            self._cond.wait(None if due is None else due - now)

    def _take(self) -> list[_Event]:
        self._taken_at = self._seq
        first = self._events[0]
        batch: list[_Event] = []
        total = 0
        for ev in self._events:
            if (
                ev.stream != first.stream
                or len(batch) >= BATCH_RECORDS
                or total + ev.size > BATCH_BYTES
                or abs(ev.timestamp - first.timestamp) > BATCH_SPAN_MS
            ):
                break
            batch.append(ev)
            total += ev.size
        return batch

    def _send(self, batch: list[_Event]) -> tuple[str | None, bool]:
        """One PutLogEvents (two if the stream had to be created): (error, identity refused)."""
        stream = batch[0].stream
        events = [
            {"timestamp": e.timestamp, "message": e.message}
            for e in sorted(batch, key=lambda e: e.timestamp)  # threads log slightly out of order
        ]
        request = {"logGroupName": self.log_group_name, "logStreamName": stream}
        try:
            client = self.cwl_client
            try:
                response = client.put_log_events(**request, logEvents=events)
            except client.exceptions.ResourceNotFoundException:
                self._create_stream(stream)
                response = client.put_log_events(**request, logEvents=events)
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            identity = code in _IDENTITY_CODES or bool(getattr(exc, "identity", False))
            return f"{code or type(exc).__name__}: {exc}", identity
        info = response.get("rejectedLogEventsInfo")
        if info:
            rejected = sum(
                n
                for n in (
                    info.get("tooOldLogEventEndIndex", -1) + 1,
                    info.get("expiredLogEventEndIndex", -1) + 1,
                    len(events) - info.get("tooNewLogEventStartIndex", len(events)),
                )
                if n > 0
            )
            self.rejected += rejected
        return None, False

    def _create_stream(self, stream: str) -> None:
        group = self.log_group_name
        try:
            self._create("create_log_stream", logGroupName=group, logStreamName=stream)
        except self.cwl_client.exceptions.ResourceNotFoundException:
            # The group is missing too (the installer normally creates it).
            self._create("create_log_group", logGroupName=group)
            self._create("create_log_stream", logGroupName=group, logStreamName=stream)

    def _create(self, method: str, **kwargs: str) -> None:
        """watchtower's call that takes "already exists" for success."""
        self._idempotent_call(method, **kwargs)  # type: ignore[no-untyped-call]
