"""CloudWatch for the daemon: its log handler and its metrics, switched live by the settings.

``apply`` compares the ``cloudwatch`` section and the device identity with what runs and, when
they differ, closes the running handler and builds the new one: no restart of the daemon or of
the camera. ``event_type`` decides what is sent: ``logs`` attaches the handler to the root
logger (local logs on stderr are untouched), ``emf`` runs the metrics task, ``all`` both.

Nothing here waits for the network on the event loop: boto3 is imported on a worker thread,
the client is made by the handler's sender thread, and records wait in the handler's bounded
buffer. Records logged while the first handler is being built are held (a thousand at most)
and handed to it, so the start-up lines reach CloudWatch too.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import platform
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pinthesky.cloud.metrics import METRICS, Sampler, emf_record
from pinthesky.settings import CloudConnectionSettings, CloudWatchSettings, Settings

if TYPE_CHECKING:
    from pinthesky.cloud.cloudwatch import CloudWatchLogs

log = logging.getLogger(__name__)

EARLY_RECORDS = 1000


class _Held(logging.Handler):
    """Keeps the last records until the CloudWatch handler is ready for them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: deque[logging.LogRecord] = deque(maxlen=EARLY_RECORDS)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Telemetry:
    """Owns the CloudWatch handler and the metrics task of one daemon (on the loop)."""

    def __init__(
        self,
        make_session: Callable[[str | None], Any],
        readings: Callable[[], dict[str, float]],
        gauges: Callable[[], dict[str, float]],
        disk: Callable[[], Path],
    ) -> None:
        """``make_session(region)``: a boto3 session on the device's credentials;
        ``readings()``: the daemon's counters (on the loop); ``gauges()``: figures that need
        the disk (called on a worker thread); ``disk()``: where clips are kept."""
        self._make_session = make_session
        self._readings = readings
        self._gauges = gauges
        self._disk = disk
        self._lock = asyncio.Lock()
        self._running: tuple[CloudWatchSettings, CloudConnectionSettings] | None = None
        self.handler: CloudWatchLogs | None = None
        self._metrics: asyncio.Task[None] | None = None
        self._held: _Held | None = None
        self.dropped_before = 0
        """Records dropped by handlers that were replaced."""
        self.records_sent = 0
        self._sampler = Sampler()
        self._namespace = ""
        self._dimensions: dict[str, str] = {}

    def hold(self, settings: Settings) -> None:
        """Keep the records logged from now on, if CloudWatch is wanted (before ``apply``)."""
        cw = settings.cloudwatch
        if cw.enabled and cw.event_type != "emf" and self._held is None:
            self._held = _Held()
            logging.getLogger().addHandler(self._held)

    @property
    def dropped(self) -> int:
        return self.dropped_before + (self.handler.dropped if self.handler else 0)

    async def apply(self, settings: Settings) -> None:
        """Make CloudWatch match ``settings`` (a no-op when nothing it uses changed)."""
        async with self._lock:
            wanted = (settings.cloudwatch, settings.cloud_connection)
            if wanted == self._running:
                self._release_held()
                return
            await self._stop(final_metrics=False)
            self._running = wanted
            try:
                await self._start(settings)
            finally:
                self._release_held()

    async def close(self) -> None:
        """Send a last metrics record and the last log records (bounded), then detach."""
        async with self._lock:
            await self._stop(final_metrics=True)
            self._running = None
            self._release_held()

    async def _start(self, settings: Settings) -> None:
        cw = settings.cloudwatch
        if not cw.enabled:
            log.info("CloudWatch off (cloudwatch.enabled is false)")
            return
        if not cw.log_group_name:
            log.error("cloudwatch.enabled is true but cloudwatch.log_group_name is not set: off")
            return
        thing = settings.cloud_connection.thing_name

        def build() -> CloudWatchLogs | None:
            module = importlib.import_module("pinthesky.cloud.cloudwatch")  # boto3: off the loop
            session = self._make_session(cw.region_name)
            if session.region_name is None:
                log.error(
                    "CloudWatch: no region (set cloudwatch.region_name or AWS_DEFAULT_REGION): off"
                )
                return None

            def make_client() -> Any:
                from botocore.config import Config

                config = Config(
                    connect_timeout=5,
                    read_timeout=15,
                    retries={"max_attempts": 2, "mode": "standard"},
                )
                return session.client("logs", config=config)

            handler: CloudWatchLogs = module.CloudWatchLogs(
                make_client, cw.log_group_name, thing, cw.delineate_stream, cw.send_interval
            )
            return handler

        handler = await asyncio.to_thread(build)
        if handler is None:
            return
        self.handler = handler
        sends = []
        if cw.event_type in ("logs", "all"):
            if self._held is not None:
                for record in self._held.records:
                    handler.handle(record)
                self._held.records.clear()
            logging.getLogger().addHandler(handler)
            sends.append("logs")
        if cw.event_type in ("emf", "all"):
            self._sampler = Sampler()
            self._namespace = cw.metric_namespace
            self._dimensions = {"ThingName": thing or platform.node()}
            self._sampler.values(await self._read())  # counting starts now
            self._metrics = asyncio.create_task(
                self._report(handler, cw.metrics_interval), name="cloudwatch metrics"
            )
            sends.append(f"EMF metrics every {cw.metrics_interval} s in {cw.metric_namespace}")
        log.info(
            "CloudWatch on: %s to log group %s, stream %s (a new one each UTC day)",
            " and ".join(sends),
            cw.log_group_name,
            handler.stream_for(time.time()),
        )

    async def _stop(self, final_metrics: bool) -> None:
        handler, self.handler = self.handler, None
        task, self._metrics = self._metrics, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if handler is None:
            return
        if task is not None and final_metrics:
            await self._emit(handler)
        logging.getLogger().removeHandler(handler)
        await asyncio.to_thread(handler.close)
        self.dropped_before += handler.dropped
        self.records_sent += handler.sent

    def _release_held(self) -> None:
        if self._held is not None:
            logging.getLogger().removeHandler(self._held)
            self._held = None

    # -- metrics ------------------------------------------------------------------------------

    async def _report(self, handler: CloudWatchLogs, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self._emit(handler)
            except Exception:
                log.exception("building the metrics record failed")

    async def _read(self) -> dict[str, float]:
        # Every counter in every record, zero included: dashboards get unbroken series.
        readings = {m.name: 0.0 for m in METRICS if m.counter}
        readings.update(self._readings())
        readings["LogRecordsDropped"] = self.dropped

        def slow() -> dict[str, float]:
            return {**self._gauges(), **self._sampler.system(self._disk())}

        readings.update(await asyncio.to_thread(slow))
        return readings

    async def _emit(self, handler: CloudWatchLogs) -> None:
        values = self._sampler.values(await self._read())
        now = time.time()
        record = emf_record(self._namespace, self._dimensions, values, int(now * 1000))
        handler.put(json.dumps(record, separators=(",", ":")), now)
