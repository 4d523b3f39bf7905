"""The composition root: builds every component from the settings, runs them, stops them.

Event flow (one asyncio loop owns all state; the camera's threads only push into the ring
and hand analysis frames over through the ``AnalysisPort``):

    camera thread --packets--> PacketRing <--reads-- Recorder --writer thread--> ClipStore
    camera thread --analysis frames--> MotionAnalyzer -> MotionTracker -> Recorder
    Recorder --ClipReady--> EventBus --> Uploader --UploadEnded--> EventBus --> (event output)
    Recorder --MotionClip--> MotionAlerts --picture--> Uploader (first) --> motion_start
    camera thread --live pictures, while watched--> LiveTap --> MJPEG viewers, LiveSessions
    PacketRing --the same H.264, while played--> RtspServer --RTP--> RTSP clients
    EventBus (motion, pictures, clips, settings) --> HomeAssistant --MQTT--> a home broker

Start order: clip directory checked, camera opened, crash leftovers salvaged, camera started,
then the control files, the local web server, the RTSP server and Home Assistant's MQTT. Stop
order (SIGTERM/SIGINT, end of a replayed file, or a failure): end the live sessions
(``record_end``), the web server, the RTSP clients and MQTT (``offline``), stop taking
frames, stop the camera, finish the open clip, wait for the disk. A failure exits non-zero
so systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pinthesky.alerts.motion import MotionAlerts
from pinthesky.camera import AnalysisPort, Camera, make_camera
from pinthesky.camera.overlay import Overlay
from pinthesky.cloud.credentials import (
    IotCredentialsProvider,
    IotIdentity,
    boto_session,
    check_key_permissions,
    refreshable,
)
from pinthesky.cloud.dataplane import DataPlane
from pinthesky.cloud.telemetry import Telemetry
from pinthesky.cloud.uploader import Target, Uploader
from pinthesky.control.controller import Control
from pinthesky.control.health import Health
from pinthesky.control.shadow import RESTART_KEYS
from pinthesky.errors import PintheskyError
from pinthesky.eventfiles import Watcher
from pinthesky.hardware.board import meminfo
from pinthesky.live.mjpeg import MjpegBroadcaster
from pinthesky.live.rtsp import RtspServer
from pinthesky.live.session import LiveSessions
from pinthesky.live.tap import LiveTap
from pinthesky.local.api import LocalApi
from pinthesky.local.changes import LocalChanges
from pinthesky.local.web import WebServer
from pinthesky.logs import set_level
from pinthesky.media import US, AnalysisFrame, Clock, StreamInfo, monotonic_us, release_memory
from pinthesky.notify import Notifier
from pinthesky.record.bus import (
    ClipReady,
    EventBus,
    ImageReady,
    MotionDetected,
    MotionStopped,
    PictureTaken,
    SettingsChanged,
)
from pinthesky.record.clips import ClipStore
from pinthesky.record.motion import (
    LOOKBACK_S,
    MotionAnalyzer,
    MotionEnded,
    MotionEvent,
    MotionStarted,
    MotionTracker,
)
from pinthesky.record.recorder import Recorder
from pinthesky.record.ring import PacketRing, byte_caps
from pinthesky.record.stills import StillStore, check_name
from pinthesky.settings import MotionSettings, Resolution, Settings, flatten, live_size, merge

if TYPE_CHECKING:
    from pinthesky.homeassistant.bridge import HomeAssistant

log = logging.getLogger(__name__)

STALL_SECONDS = 10.0
"""A live camera that delivers no frame for this long is broken (loose ribbon, dead ISP)."""
STATUS_EVERY = 60.0
WATCHDOG_FRAME_AGE_S = 3.0
"""systemd's watchdog is fed only if the newest frame is at most this old."""
"""Seconds between status lines in the log."""


@dataclass
class Stats:
    """Counters for the status line (and, later, health and metrics)."""

    first_frame_after: float | None = None
    frames_analysed: int = 0
    analysis_seconds: float = 0.0
    motion_events: int = 0
    lighting_frames: int = 0


class Daemon:
    """One running camera daemon. ``run`` returns the process exit code."""

    def __init__(
        self,
        settings: Settings,
        camera: Camera | None = None,
        bus: EventBus | None = None,
        process_start: float | None = None,
    ) -> None:
        self.settings = settings
        self.camera = camera
        self.bus = bus or EventBus()
        self.stats = Stats()
        self.process_start = process_start or time.monotonic()
        self.store = ClipStore(
            settings.storage.combine_dir,
            settings.storage.clip_format,
            settings.storage.max_bytes,
            settings.storage.min_free,
        )
        self._stop = asyncio.Event()
        self._exit_code = 0
        self._last_frame_ts: int | None = None
        self.recorder: Recorder | None = None
        self.uploader: Uploader | None = None
        self._uploader_task: asyncio.Task[None] | None = None
        self.control: Control | None = None
        self.bus.subscribe(ClipReady, self._notify_uploader)
        self.bus.subscribe(ImageReady, self._notify_uploader)
        self.bus.subscribe(PictureTaken, self._picture_taken)
        self.alerts = MotionAlerts(
            self.bus,
            self._capture_jpeg,
            self._alert,
            lambda: self.settings.alerts,
            self._alert_target,
        )
        self._retired: Counter[str] = Counter()
        """Counts of the recorders and uploaders that were replaced (restarts)."""
        self.camera_restarts = 0
        self._credentials: tuple[IotIdentity, Any] | None = None
        self._credentials_lock = threading.Lock()
        self.telemetry = Telemetry(
            self.aws_session,
            self.readings,
            self.queue_gauges,
            lambda: self.settings.storage.combine_dir,
        )
        self.ring: PacketRing | None = None
        self.info: StreamInfo | None = None
        self.started = asyncio.Event()
        self._restarting = False
        self.first_frame = asyncio.Event()
        self.notifier = Notifier()
        self._vital: list[asyncio.Task[Any]] = []
        self.live: LiveTap | None = None
        self.dataplane = DataPlane(self.aws_session, lambda: self.settings.dataplane)
        self.sessions: LiveSessions | None = None
        self.web: WebServer | None = None
        self.rtsp: RtspServer | None = None
        self._page_health = Health()
        self._reconfiguring = asyncio.Lock()
        self.changes = LocalChanges(self)
        self.homeassistant: HomeAssistant | None = None

    def request_stop(self, code: int = 0, why: str = "") -> None:
        if not self._stop.is_set():
            if why:
                (log.error if code else log.info)("stopping: %s", why)
            self._exit_code = code
            self._stop.set()
            self.notifier.stopping()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        # CloudWatch comes up beside the camera; what is logged meanwhile is held for it.
        self.telemetry.hold(self.settings)
        telemetry = asyncio.create_task(self._apply_telemetry(self.settings))
        await asyncio.to_thread(self.store.prepare)
        self.live = LiveTap(loop, self.settings.live.fps)
        self.sessions = LiveSessions(self.live, self.dataplane, lambda: self.settings, self._size)
        await self._start_pipeline(first=True)
        self.uploader = self._make_uploader()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, 0, f"signal {sig.name}")
        tasks = [asyncio.create_task(self._watch(), name="watchdog"), telemetry]
        if self.uploader is not None:
            self._uploader_task = self._supervise(self.uploader.run, "uploader")
        watcher = Watcher(loop)
        self.control = Control(self)
        for name, run in self.control.start(watcher).items():
            tasks.append(self._supervise(run, name))
        self._vital = [t for t in tasks if t is not telemetry]
        tasks.append(asyncio.create_task(self._announce_ready(), name="ready"))
        await self._start_web()
        await self._start_rtsp()
        await self._start_homeassistant()
        self.started.set()
        try:
            await self._stop.wait()
        finally:
            # Alerts under way go out while the uploader still runs.
            await self.alerts.close()
            # Live viewers first: the console hears record_end while the camera still runs.
            await self.sessions.close()
            if self.web is not None:
                await self.web.close()
            if self.rtsp is not None:
                await self.rtsp.close()
            if self.homeassistant is not None:
                await self.homeassistant.close()
            self.dataplane.close()
            if self._uploader_task is not None:
                tasks.append(self._uploader_task)
            for task in tasks:
                task.cancel()
            # An upload in flight is abandoned: its file stays queued for the next start.
            await asyncio.gather(*tasks, return_exceptions=True)
            watcher.close()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self._stop_pipeline()
            log.info(
                "pinthesky stopped: %d clips recorded, %d motion events, %d frames analysed",
                self.motion_captured,
                self.stats.motion_events,
                self.stats.frames_analysed,
            )
            await self.telemetry.close()
        return self._exit_code

    async def _start_pipeline(self, first: bool) -> None:
        """Open the camera and build ring, analysis and recorder around it; start it."""
        loop = asyncio.get_running_loop()
        s = self.settings
        camera = self.camera if first and self.camera is not None else make_camera(s)
        self.camera = camera
        info = await asyncio.to_thread(camera.open)
        self.info = info
        if first:
            release_memory()
            await asyncio.to_thread(self.store.recover, info)
            await asyncio.to_thread(self.store.enforce_quota)
        rec = s.recorder
        # How far back a clip may need to reach from the newest frame when motion is confirmed:
        # the pre-roll, the time to confirm motion and the look-back for its onset, two
        # analysis intervals (the onset slack and the loop's lag), and one keyframe interval
        # to round down to a keyframe.
        iperiod_s = s.camera.keyframe_seconds(float(info.framerate))
        interval_s = 1 / s.motion.analysis_fps
        retain = rec.pre_roll + s.motion.min_time + LOOKBACK_S + 2 * interval_s + iperiod_s
        max_bytes, hard_max_bytes = self._ring_caps()
        ring = PacketRing(round(retain * US), max_bytes=max_bytes, hard_max_bytes=hard_max_bytes)
        clock = Clock.now(monotonic_us())
        # Privacy masks and the timestamp are burnt into every frame the camera makes, and the
        # analysis ignores both.
        overlay = Overlay(s.camera, clock.epoch, info.rotation)
        camera.set_overlay(overlay)
        analyzer = MotionAnalyzer(
            s.camera.lores, s.camera.resolution, _analysed(s, overlay), info.rotation
        )
        tracker = MotionTracker(s.camera.sensitivity, s.motion.min_time, quiet=rec.post_roll)
        port = AnalysisPort(
            loop,
            handler=lambda frame: self._on_frame(frame, analyzer, tracker),
            analysis_fps=s.motion.analysis_fps,
            frame_period_us=round(US / info.framerate),
            lossless=camera.name == "file",
            on_end=self._on_source_end,
        )
        recorder = Recorder(
            rec,
            ring,
            self.store,
            info,
            clock,
            self.bus,
            s.camera.recording_window,
            analysis_interval_us=port.interval_us,
            armed=s.camera.armed,
        )
        if self.recorder is not None:
            # The stopped recorder's counts are kept once, here, as it is replaced (counting
            # them when it stops as well counted every clip twice in the stop line).
            self._retired["ClipsRecorded"] += self.recorder.clips_recorded
            self._retired["ClipWriteErrors"] += self.recorder.write_errors
        self.ring, self.recorder, self.clock = ring, recorder, clock
        self._tracker, self._port, self._analyzer = tracker, port, analyzer

        def first_packet() -> None:
            # Encoder thread: cross into the loop.
            loop.call_soon_threadsafe(self._first_frame)

        ring.on_first_packet = first_packet
        assert self.live is not None
        self.live.reset(
            live_size(s.live, Resolution(info.width, info.height)),
            round(US / info.framerate),
            info.rotation,
        )
        log.info(
            "pinthesky started: %s source %dx%d at %.3g fps, H.264 at %.2f Mb/s%s,"
            " pre-roll %.1f s, post-roll %.1f s, clips in %s",
            camera.name,
            info.width,
            info.height,
            float(info.framerate),
            s.camera.bitrate / 1e6,
            " (auto)" if s.camera.encoding_bitrate is None else "",
            rec.pre_roll,
            rec.post_roll,
            s.storage.combine_dir,
        )
        await asyncio.to_thread(camera.start, ring, port, self.live)

    def _ring_caps(self) -> tuple[int, int]:
        """The pre-event buffer's byte caps: ``camera.buffer_size`` where set, never beyond
        what this Pi's memory can spare (``ring.byte_caps``)."""
        soft, hard = byte_caps(meminfo().get("MemTotal"))
        asked = self.settings.camera.buffer_size
        if asked is not None and asked > hard:
            log.warning(
                "camera.buffer_size %d is more than the %d bytes this Pi can spare for the "
                "buffer (an eighth of its memory): capped",
                asked,
                hard,
            )
        return (soft if asked is None else min(asked, hard)), hard

    async def _stop_pipeline(self) -> None:
        """Stop taking frames, finish the open clip with what the ring holds, wait for the
        disk, then stop the camera: a wedged camera (whose stop waits up to its own timeout)
        cannot cost the clip's end to systemd's kill."""
        assert self.camera is not None and self.recorder is not None and self.ring is not None
        self._port.close()
        if self._last_frame_ts is not None:
            events = self._tracker.finish()
            self._tell(events)
            self.recorder.on_motion(events, self._last_frame_ts)
        await self.recorder.close()
        await asyncio.to_thread(self.camera.stop)
        dropped = self.ring.stats().dropped_unread
        if dropped:
            log.error("%d packets were dropped before the clip writer could save them", dropped)

    def _make_uploader(self) -> Uploader | None:
        """The uploader the settings ask for, or None when clips stay local."""
        s = self.settings
        st, cc = s.storage, s.cloud_connection
        if not st.bucket_name or not st.enabled:
            log.info(
                "no upload (%s): clips stay in %s under the quota",
                "storage disabled" if st.bucket_name else "no bucket",
                st.combine_dir,
            )
            return None
        if not cc.thing_name:
            log.error(
                "storage.bucket_name is set but cloud_connection.thing_name is not: "
                "uploads are off and clips stay in %s",
                st.combine_dir,
            )
            return None
        identity = self._iot_identity()
        if identity is not None:
            if identity.key.exists():  # one others can read: refuse to start (a missing one
                check_key_permissions(identity.key)  # may be installed later: retried)
        else:
            log.info(
                "no AWS IoT credentials provider configured: using the AWS SDK's own "
                "credentials (environment, profile)"
            )

        def make_client() -> object:
            from botocore.config import Config

            config = Config(
                connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}
            )
            return self.aws_session(None).client("s3", config=config)

        target = Target(
            st.bucket_name, cc.thing_name, st.video_prefix, st.image_prefix, st.video_format
        )
        return Uploader(target, self.store, st.capture_dir, make_client, self.bus.publish)

    async def _start_web(self) -> None:
        """The local page, when ``http.port`` is set. A port that cannot be used is one
        error line: the camera goes on recording without the page."""
        s = self.settings.http
        if s.port is None:
            return
        assert self.live is not None
        live = self.live
        mjpeg = MjpegBroadcaster(live, s.max_viewers)
        web = WebServer(
            s,
            self.store,
            mjpeg,
            self.health_report,
            lambda: self.settings.cloud_connection.thing_name or "pinthesky",
            lambda: live.view_size,
            LocalApi(self),
            self._capture_jpeg,
            lambda: self.stills,
        )
        if await _listening(web, "http", s.bind, s.port, "no local page"):
            self.web = web

    async def _start_rtsp(self) -> None:
        """RTSP out, when ``rtsp.port`` is set; like the page, a port that cannot be used is
        one error line and the camera goes on recording."""
        s = self.settings.rtsp
        if s.port is None:
            return
        rtsp = RtspServer(
            s,
            lambda: self.settings.http.password,
            lambda: self.ring,
            lambda: float(self.info.framerate if self.info else self.settings.camera.framerate),
        )
        if await _listening(rtsp, "rtsp", s.bind, s.port, "no RTSP"):
            self.rtsp = rtsp

    async def _start_homeassistant(self) -> None:
        """Home Assistant through MQTT discovery, when ``mqtt.host`` is set. paho-mqtt is
        imported only then. The camera never waits for the broker: it may be down, refuse
        the login or come and go, and recording goes on."""
        if self.settings.mqtt.host is None:
            return
        from pinthesky.homeassistant.bridge import HomeAssistant

        bridge = HomeAssistant(self)
        if await bridge.start():
            self.homeassistant = bridge

    def health_report(self) -> dict[str, Any]:
        """The health figures for the local page (reads /proc: call on a worker thread)."""
        return self._page_health.report(self.motion_captured, self.recording)

    def _size(self) -> Resolution:
        """The camera's resolution as opened (the settings' before it is)."""
        if self.info is not None:
            return Resolution(self.info.width, self.info.height)
        return self.settings.camera.resolution

    @property
    def recording(self) -> bool:
        """The camera delivers and the recorder runs (health's ``recording_status``)."""
        return (
            self.recorder is not None
            and self.ring is not None
            and self.ring.newest_ts() is not None
        )

    def _iot_identity(self) -> IotIdentity | None:
        cc = self.settings.cloud_connection
        if (
            not (cc.credentials_endpoint and cc.role_alias and cc.cert_path and cc.key_path)
            or not cc.thing_name
        ):
            return None
        return IotIdentity(
            cc.credentials_endpoint,
            cc.role_alias,
            cc.thing_name,
            cc.cert_path,
            cc.key_path,
            cc.cacert_path,
        )

    def aws_session(self, region: str | None) -> Any:
        """A boto3 session on the device's AWS IoT credentials (the SDK's own chain when no
        credentials provider is configured). One set of credentials serves S3 and CloudWatch:
        it is fetched once and refreshed before it expires. Imports boto3: call it on a worker
        thread."""
        identity = self._iot_identity()
        credentials = None
        if identity is not None:
            with self._credentials_lock:
                if self._credentials is None or self._credentials[0] != identity:
                    provider = IotCredentialsProvider(identity)
                    self._credentials = (identity, refreshable(provider))
                credentials = self._credentials[1]
        return boto_session(credentials, region)

    async def _apply_telemetry(self, settings: Settings) -> None:
        try:
            await self.telemetry.apply(settings)
        except PintheskyError as exc:
            log.error("CloudWatch stays off: %s", exc)
        except Exception:
            # Losing CloudWatch must never stop the camera: the local log has everything.
            log.exception("CloudWatch could not be set up; local logs continue")

    def readings(self) -> dict[str, float]:
        """Every counter of the daemon since it started (for the metrics)."""
        totals = Counter(self._retired)
        if self.recorder is not None:
            totals["ClipsRecorded"] += self.recorder.clips_recorded
            totals["ClipWriteErrors"] += self.recorder.write_errors
        if self.uploader is not None:
            totals.update(_uploader_totals(self.uploader))
        if self.control is not None:
            totals["CommandsHandled"] += self.control.commands
            totals["CommandsRejected"] += self.control.refused
            totals["ShadowUpdatesApplied"] += self.control.shadow.applied
            totals["ShadowUpdatesRejected"] += self.control.shadow.rejected
        totals["MotionEvents"] = self.stats.motion_events
        totals["ClipsEvicted"] = self.store.evicted
        totals["CameraRestarts"] = self.camera_restarts
        return {k: float(v) for k, v in totals.items()}

    def queue_gauges(self) -> dict[str, float]:
        """Upload queue depth and bytes (lists the directories: call on a worker thread)."""
        uploader = self.uploader
        if uploader is None:
            return {}
        sizes = []
        for path in uploader.pending():
            with contextlib.suppress(OSError):
                sizes.append(path.stat().st_size)
        return {"UploadQueueDepth": len(sizes), "UploadQueueBytes": sum(sizes)}

    def _notify_uploader(self, _: object) -> None:
        if self.uploader is not None:
            self.uploader.notify()

    def _picture_taken(self, taken: PictureTaken) -> None:
        if self.recorder is not None:
            self.recorder.picture_taken(taken)
        self._notify_uploader(taken)

    def _alert_target(self) -> Target | None:
        """Where a motion picture goes before its alert; None when the alert should not wait
        for S3: no bucket, or uploads failing now (the picture follows with the clip)."""
        uploader = self.uploader
        if uploader is None or uploader.failures:
            return None
        return uploader.target

    def _capture_jpeg(self) -> bytes:
        """A JPEG from the running camera (worker thread)."""
        camera = self.camera
        if camera is None:
            raise PintheskyError("no camera")
        return camera.capture_jpeg()

    def _alert(self, name: str, **fields: Any) -> dict[str, Any] | None:
        """Write an alert to the event output; returns the event (None if not open yet)."""
        if self.control is None:
            log.warning("%s not sent: the event output is not open yet", name)
            return None
        return self.control.answer(name, **fields)

    def _supervise(
        self, run: Callable[[], Coroutine[Any, Any, None]], name: str
    ) -> asyncio.Task[None]:
        """A task that must not die: if it does, the daemon exits non-zero."""

        async def guarded() -> None:
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", name)
                self.request_stop(1, f"the {name} task died")

        return asyncio.create_task(guarded(), name=name)

    async def capture_image(self, file_name: str | None = None) -> Path:
        """Take a still into the capture directory (and the upload queue); returns its path.

        ``file_name`` must be a plain name (``^[A-Za-z0-9._-]{1,64}$``, not hidden): it comes
        from the cloud and must never lead outside the capture directory. Without one the
        still gets a name of its own, never another still's (``record.stills``).
        """
        stills = self.stills
        check_name(file_name)  # before the camera is asked for a picture
        jpeg = await asyncio.to_thread(self._capture_jpeg)
        path = await asyncio.to_thread(stills.add, jpeg, int(time.time()), file_name)
        self.bus.publish(ImageReady(path))
        return path

    @property
    def stills(self) -> StillStore:
        """The capture directory the settings name now."""
        return StillStore(self.settings.storage.capture_dir)

    # -- loop callbacks ---------------------------------------------------------------------

    def _first_frame(self) -> None:
        self.stats.first_frame_after = time.monotonic() - self.process_start
        self.first_frame.set()
        log.info("first frame buffered %.2f s after start", self.stats.first_frame_after)

    def _on_frame(
        self, frame: AnalysisFrame, analyzer: MotionAnalyzer, tracker: MotionTracker
    ) -> None:
        try:
            t0 = time.perf_counter()
            score = analyzer.analyse(frame.luma, frame.ts)
            self.stats.analysis_seconds += time.perf_counter() - t0
            self.stats.frames_analysed += 1
            self.stats.lighting_frames += score.lighting
            self._last_frame_ts = frame.ts
            events = tracker.update(score)
            self._tell(events)
            assert self.recorder is not None
            self.recorder.on_motion(events, frame.ts, score.blocks)
        except Exception:
            log.exception("analysing a frame failed")
            self.request_stop(1, "the analysis pipeline failed")

    def _tell(self, events: list[MotionEvent]) -> None:
        """The tracker's events that others hear of, on the bus."""
        for ev in events:
            if isinstance(ev, MotionStarted):
                self.stats.motion_events += 1
                self.bus.publish(
                    MotionDetected(self.clock.epoch(ev.onset), self.clock.epoch(ev.declared))
                )
            elif isinstance(ev, MotionEnded):
                self.bus.publish(MotionStopped(self.clock.epoch(ev.last_seen)))

    def _on_source_end(self, exc: BaseException | None) -> None:
        if exc is None:
            self.request_stop(0, "end of the video")
        else:
            self.request_stop(1, f"camera failed: {exc}")

    async def _announce_ready(self) -> None:
        await self.first_frame.wait()
        self.notifier.ready(f"recording from the {self.camera.name if self.camera else ''} source")

    def _healthy(self, since_last_frame: float) -> bool:
        """Frames advance (or the camera is being reopened) and every long-running task runs."""
        vital = [*self._vital, *([self._uploader_task] if self._uploader_task else [])]
        frames = since_last_frame <= WATCHDOG_FRAME_AGE_S or self._restarting
        return frames and all(not t.done() for t in vital)

    async def _watch(self) -> None:
        """Exit (for systemd to restart us) when a live camera stops delivering frames, tell
        systemd's watchdog we are alive only while we are, and log a status line now and then."""
        last_status = last_ping = time.monotonic()
        last_seen = self.ring.newest_ts() if self.ring else None
        last_change = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            newest = self.ring.newest_ts() if self.ring else None
            if newest != last_seen:
                last_seen, last_change = newest, now
            every = self.notifier.watchdog_s
            if every and now - last_ping >= every / 3 and self._healthy(now - last_change):
                self.notifier.watchdog()
                last_ping = now
            elif (
                self.camera is not None
                and self.camera.name != "file"
                and not self._restarting
                and now - last_change > STALL_SECONDS
            ):
                self.request_stop(1, f"camera delivered no frame for {STALL_SECONDS:.0f} s")
                return
            if now - last_status >= STATUS_EVERY:
                last_status = now
                self._log_status()
                release_memory()

    async def reconfigure(self, changes: dict[str, Any], origin: str) -> set[str]:
        """Apply setting changes live; returns the keys that changed.

        Values are checked like on the command line; a bad one is logged and left out while
        the rest applies. The camera is reopened only for what it cannot change running
        (resolution, frame rate, rotation, encoder); everything else applies in place.
        """
        # The shadow and the local page may both change settings: one change at a time, so
        # that neither works from settings the other is replacing (a camera restart awaits).
        async with self._reconfiguring:
            return await self._reconfigure(changes, origin)

    async def _reconfigure(self, changes: dict[str, Any], origin: str) -> set[str]:
        old = self.settings
        # Checked against the camera module attached, known once the Pi camera has opened.
        new, errors = merge(old, changes, origin, getattr(self.camera, "attached", None))
        for line in errors:
            log.warning("%s", line)
        before, after = flatten(old), flatten(new)
        diff = {k for k, v in after.items() if before[k] != v}
        if not diff:
            return diff
        self.settings = new
        log.info("%s: applied %s", origin, ", ".join(f"{k}={after[k]}" for k in sorted(diff)))
        if "daemon.log_level" in diff:
            set_level(new.daemon.log_level)
        if diff & RESTART_KEYS:
            await self._restart_camera(old)
        else:
            self._apply_live(new)
        if any(k.startswith(("storage.", "cloud_connection.")) for k in diff):
            await self._restart_uploader()
        if any(k.startswith(("cloudwatch.", "cloud_connection.")) for k in diff):
            await self._apply_telemetry(new)
        self.bus.publish(SettingsChanged(frozenset(diff), origin))
        return diff

    def _apply_live(self, s: Settings) -> None:
        rec = s.recorder
        if self.recorder is not None:
            self.recorder.update(rec, s.camera.recording_window, s.camera.armed)
        self._tracker.sensitivity = s.camera.sensitivity
        self._tracker.min_time_us = round(s.motion.min_time * US)
        self._tracker.quiet_us = round(rec.post_roll * US)
        motion = s.motion
        if self.camera is not None and self.clock is not None and self.info is not None:
            # New privacy masks or timestamp settings: burnt from the next frame on.
            overlay = Overlay(s.camera, self.clock.epoch, self.info.rotation)
            self.camera.set_overlay(overlay)
            motion = _analysed(s, overlay)
        if motion != self._analyzer.settings:
            # A new mask (drawn on the local page) takes effect on the next analysed frame;
            # the analyzer keeps its reference picture and noise estimate.
            self._analyzer.update_mask(motion)
        if self.ring is not None and self.info is not None:
            iperiod_s = s.camera.keyframe_seconds(float(self.info.framerate))
            retain = rec.pre_roll + s.motion.min_time + LOOKBACK_S + 2 / s.motion.analysis_fps
            self.ring.retain_us = round((retain + iperiod_s) * US)

    async def _restart_camera(self, previous: Settings) -> None:
        self._restarting = True
        self.camera_restarts += 1
        try:
            await self._stop_pipeline()
            try:
                await self._start_pipeline(first=False)
            except PintheskyError as exc:
                log.error(
                    "camera cannot take the new settings (%s): back to the last good ones", exc
                )
                self.settings = previous
                await self._start_pipeline(first=False)
        finally:
            self._restarting = False

    async def _restart_uploader(self) -> None:
        if self._uploader_task is not None:
            self._uploader_task.cancel()
            await asyncio.gather(self._uploader_task, return_exceptions=True)
            self._uploader_task = None
        if self.uploader is not None:
            self._retired.update(_uploader_totals(self.uploader))
        self.uploader = self._make_uploader()
        if self.uploader is not None:
            self._uploader_task = self._supervise(self.uploader.run, "uploader")

    @property
    def motion_captured(self) -> int:
        """Clips recorded since the daemon started (all pipelines)."""
        live = self.recorder.clips_recorded if self.recorder else 0
        return self._retired["ClipsRecorded"] + live

    def _log_status(self) -> None:
        assert self.ring is not None and self.recorder is not None
        r = self.ring.stats()
        per_frame = self.stats.analysis_seconds / max(1, self.stats.frames_analysed)
        log.info(
            "status: buffer %.1f s / %.1f MB, %d frames analysed (%.0f us each), "
            "%d motion events, %d clips, %d clips evicted",
            r.seconds,
            r.bytes / 1e6,
            self.stats.frames_analysed,
            per_frame * 1e6,
            self.stats.motion_events,
            self.recorder.clips_recorded,
            self.store.evicted,
        )


def _analysed(s: Settings, overlay: Overlay) -> MotionSettings:
    """The motion settings the analyzer runs with: the mask, plus what the overlay hides or
    draws (privacy masks are black, the timestamp changes every second)."""
    hidden = overlay.hidden()
    if not hidden:
        return s.motion
    return dataclasses.replace(s.motion, mask_rects=(*s.motion.mask_rects, *hidden))


def _uploader_totals(uploader: Uploader) -> dict[str, float]:
    return {
        "ClipsUploaded": uploader.uploaded["video"],
        "ImagesUploaded": uploader.uploaded["image"],
        "UploadsFailed": uploader.failed,
        "UploadBytes": uploader.bytes_uploaded,
        "UploadSeconds": uploader.seconds,
    }


async def _listening(server: Any, name: str, bind: str, port: int, without: str) -> bool:
    """Start ``server``; a port that cannot be used is one error line (the camera goes on)."""
    try:
        await server.start()
    except OSError as exc:
        log.error("%s: cannot listen on %s port %d: %s; %s", name, bind, port, exc, without)
        return False
    return True


async def run(settings: Settings, process_start: float | None = None, **kwargs: Any) -> int:
    """Run the daemon until stopped; returns the exit code."""
    return await Daemon(settings, process_start=process_start, **kwargs).run()
