"""What RTSP out costs the daemon, and how our server compares with GStreamer's.

Requirement (issue 18): each RTSP client costs the daemon under 1 % of one core of this
machine.

Daemon: three daemons run side by side (bench/daemon.py's method: the same machine load for
all) on the synthetic source with defaults (640x480, 20 fps), each with ``--rtsp-port`` on
127.0.0.1: ``none`` has no client, ``one`` one client over TCP, ``two`` one over TCP and one
over UDP. A client is FFmpeg's RTSP client (PyAV, demuxing without decoding) in a process of
its own, so that only the server's work is counted. After ``--warmup`` seconds (default 20)
the CPU time of each daemon is read over ``--seconds`` (default 60); ``--rounds`` (default 2)
repeats it. A client's cost is the daemon's CPU minus the ``none`` daemon's, summed over the
rounds, per client, as a share of one core. Resident memory is the highest sample.

Library: the same H.264 (the synthetic scene's pre-encoded access units, looped at 20 fps) is
served side by side by (a) our ``RtspServer`` in a minimal process (a ``PacketRing`` fed by a
thread, as a camera feeds it) and (b) GStreamer's ``gst-rtsp-server`` with an ``appsrc`` and
``rtph264pay`` under Debian's Python with PyGObject (``bench/rtsp_gstreamer.py``; skipped
with a note when GStreamer's RTSP server is not installed), each once without a client and
once with one TCP client: resident memory and CPU over the same window.

Run (from the repository root; about three minutes)::

    .venv/bin/python bench/rtsp.py
    .venv/bin/python bench/rtsp.py --quick    # 10 s warm-up, 20 s window, one round

Prints ``client_cpu_percent=`` among other figures and ``result=PASS|FAIL``; writes
bench/out/rtsp.json. Exits 0 whether the requirement passes or fails (``--strict`` exits 1 on
FAIL); 2 if a run could not be measured.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import REPO, Check, event_flags, in_scratch, report, side_by_side, window_args
from daemon import cpu_seconds, measure, memory

sys.path.insert(0, str(REPO / "tests"))
from servers import free_port

NAME = "rtsp"
LIMIT_CLIENT_PERCENT = 1.0
FPS = 20
GST_PYTHON = "/usr/bin/python3"
RUNS = {"none": (), "one": ("tcp",), "two": ("tcp", "udp")}


# -- a client, in a process of its own ----------------------------------------------------------


def client_main(url: str, transport: str) -> int:
    """Demux (no decoding) until killed; print the packet count now and then."""
    import av

    deadline = time.monotonic() + 60
    while True:
        try:
            container = av.open(url, options={"rtsp_transport": transport}, timeout=10)
            break
        except (av.error.FFmpegError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    count = 0
    for packet in container.demux(video=0):
        if packet.size:
            count += 1
            if count % 20 == 0:
                print(f"packets={count}", flush=True)
    return 0


class Client:
    def __init__(self, url: str, transport: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--client", url, transport],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.packets = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("packets="):
                self.packets = int(line.split("=")[1])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return self.packets


# -- the daemon with 0, 1, 2 clients ----------------------------------------------------------


def daemon_rounds(
    warmup: float, seconds: float, rounds: int, scratch: Path
) -> list[dict[str, dict[str, Any]]]:
    done: list[dict[str, dict[str, Any]]] = []
    for n in range(rounds):
        print(f"# round {n + 1} of {rounds}: 0, 1 and 2 RTSP clients, side by side", flush=True)
        runs: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        clients: dict[str, list[Client]] = {}

        def run(
            label: str, n: int = n, runs: Any = runs, errors: Any = errors, clients: Any = clients
        ) -> None:
            work = scratch / f"round{n}-{label}"
            port = free_port()
            extra = ["--rtsp-port", str(port), "--rtsp-bind", "127.0.0.1"]
            extra += event_flags(work / "events")
            url = f"rtsp://127.0.0.1:{port}/live"
            clients[label] = [Client(url, t) for t in RUNS[label]]
            try:
                runs[label] = measure(warmup, seconds, work / "clips", extra)
            except RuntimeError as exc:
                errors.append(f"{label}: {exc}")

        side_by_side(RUNS, run)
        for label, group in clients.items():
            runs.setdefault(label, {})["client_packets"] = [c.stop() for c in group]
        if errors:
            raise RuntimeError("; ".join(errors))
        for label in clients:
            if any(p < FPS * seconds / 2 for p in runs[label]["client_packets"]):
                raise RuntimeError(f"{label}: a client got too few pictures: {runs[label]}")
        done.append(runs)
    return done


# -- our server and GStreamer's on the same packets -------------------------------------------


def write_packets(path: Path) -> int:
    from pinthesky.camera.synthetic import encode_scene

    args = {
        "width": 640,
        "height": 480,
        "fps": FPS,
        "bitrate": 10_000_000,
        "profile": "high",
        "gop": FPS,
        "cross_first": 5 * FPS,
        "cross_frames": 4 * FPS,
    }
    still, crossing = encode_scene(args)
    with path.open("wb") as fh:
        for pkt in [*still, *crossing]:
            fh.write(struct.pack(">IBq", len(pkt.data), pkt.keyframe, pkt.ts) + pkt.data)
    return len(still) + len(crossing)


def serve_ours(path: str, port: int) -> None:
    """A PacketRing fed at FPS by a thread, as a camera feeds it, served by RtspServer."""
    # What the daemon holds anyway (the ring, the settings, asyncio) comes first: the growth
    # from there is what RTSP adds to it.
    from pinthesky.media import US, Packet, monotonic_us
    from pinthesky.record.ring import PacketRing
    from pinthesky.settings import RtspSettings

    data = Path(path).read_bytes()
    packets: list[tuple[bytes, bool]] = []
    i = 0
    while i < len(data):
        size, key, _ = struct.unpack_from(">IBq", data, i)
        packets.append((data[i + 13 : i + 13 + size], bool(key)))
        i += 13 + size
    del data
    baseline = memory(os.getpid())["VmRSS"]
    from pinthesky.live.rtsp import RtspServer

    ring = PacketRing(3 * US)

    def feed() -> None:
        start, n = time.monotonic(), 0
        while True:
            payload, key = packets[n % len(packets)]
            ring.push(Packet(payload, key, monotonic_us()))
            n += 1
            time.sleep(max(0.0, start + n / FPS - time.monotonic()))

    async def main() -> None:
        server = RtspServer(
            RtspSettings(port, "127.0.0.1", 4), lambda: None, lambda: ring, lambda: FPS
        )
        await server.start()
        threading.Thread(target=feed, daemon=True).start()
        print(f"listening {baseline:.2f}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def gstreamer_available() -> str | None:
    """None when GStreamer's RTSP server can run here, else why not."""
    probe = (
        "import gi; gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
        "assert Gst.ElementFactory.find('rtph264pay')"
    )
    try:
        done = subprocess.run(
            [GST_PYTHON, "-c", probe], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode:
        return (done.stderr.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
    return None


def measure_server(argv: list[str], clients: int, warmup: float, seconds: float) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen(
        [*argv, str(port)] + ([str(FPS)] if argv[0] == GST_PYTHON else []),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    group: list[Client] = []
    try:
        assert proc.stdout is not None
        word, _, baseline = proc.stdout.readline().strip().partition(" ")
        if word != "listening":
            raise RuntimeError(f"{argv} did not start")
        group = [Client(f"rtsp://127.0.0.1:{port}/live", "tcp") for _ in range(clients)]
        time.sleep(warmup)
        stat = Path(f"/proc/{proc.pid}/stat")
        w0, c0 = time.monotonic(), cpu_seconds(stat)
        rss = [memory(proc.pid)["VmRSS"]]
        end = w0 + seconds
        while time.monotonic() < end:
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
            rss.append(memory(proc.pid)["VmRSS"])
        w1, c1 = time.monotonic(), cpu_seconds(stat)
        packets = [c.stop() for c in group]
    finally:
        proc.kill()
        proc.wait()
    if any(p < FPS * seconds / 2 for p in packets):
        raise RuntimeError(f"{argv[:2]}: a client got too few pictures ({packets})")
    return {
        "cpu_percent": (c1 - c0) / (w1 - w0) * 100,
        "rss_mb": max(rss),
        "added_rss_mb": max(rss) - float(baseline),
        "client_packets": packets,
    }


def library_comparison(warmup: float, seconds: float, scratch: Path) -> dict[str, Any]:
    path = scratch / "packets.bin"
    count = write_packets(path)
    servers = {"ours": [sys.executable, __file__, "--serve-ours", str(path)]}
    why_not = gstreamer_available()
    if why_not is None:
        servers["gstreamer"] = [GST_PYTHON, str(REPO / "bench" / "rtsp_gstreamer.py"), str(path)]
    print(f"# library: {', '.join(servers)} side by side, without and with one client", flush=True)
    results: dict[str, Any] = {}
    errors: list[str] = []

    def run(name: str, clients: int) -> None:
        try:
            results[f"{name}_{clients}"] = measure_server(servers[name], clients, warmup, seconds)
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [
        threading.Thread(target=run, args=(name, clients)) for name in servers for clients in (0, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    out: dict[str, Any] = {"library_packets_looped": count}
    for name in servers:
        out[f"{name}_rss_mb_no_client"] = results[f"{name}_0"]["rss_mb"]
        out[f"{name}_rss_mb_one_client"] = results[f"{name}_1"]["rss_mb"]
        out[f"{name}_added_rss_mb_no_client"] = results[f"{name}_0"]["added_rss_mb"]
        out[f"{name}_added_rss_mb_one_client"] = results[f"{name}_1"]["added_rss_mb"]
        out[f"{name}_cpu_percent_no_client"] = results[f"{name}_0"]["cpu_percent"]
        out[f"{name}_cpu_percent_one_client"] = results[f"{name}_1"]["cpu_percent"]
        out[f"{name}_client_cpu_percent"] = (
            results[f"{name}_1"]["cpu_percent"] - results[f"{name}_0"]["cpu_percent"]
        )
    if why_not is not None:
        out["gstreamer"] = f"not measured: {why_not}"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    window = window_args(__doc__.split("\n\n")[0], argv, 20.0, 2, quick=(10.0, 20.0, 1))
    warmup, seconds, rounds = window.warmup, window.seconds, window.rounds

    def measure(scratch: Path) -> tuple[list[dict[str, dict[str, Any]]], dict[str, Any]]:
        measured = daemon_rounds(warmup, seconds, rounds, scratch)
        return measured, library_comparison(min(warmup, 10.0), seconds, scratch)

    results = in_scratch("rtsp", measure)
    if results is None:
        return 2
    measured, library = results

    def percent(label: str) -> float:
        cpu = sum(r[label]["cpu_seconds"] for r in measured)
        return cpu / sum(r[label]["window_seconds"] for r in measured) * 100

    one = percent("one") - percent("none")
    two = (percent("two") - percent("none")) / 2
    figures: dict[str, Any] = {
        "settings": "synthetic 640x480 20 fps defaults; clients on 127.0.0.1 (TCP; TCP + UDP)",
        "window": f"t = {warmup:g} .. {warmup + seconds:g} s of each run",
        "rounds": len(measured),
        "cpu_percent_no_client": percent("none"),
        "cpu_percent_one_client": percent("one"),
        "cpu_percent_two_clients": percent("two"),
        "client_cpu_percent_one": one,
        "client_cpu_percent_each_of_two": two,
        "client_cpu_percent": max(one, two),
        "rss_mb_no_client": max(r["none"]["rss_mb"] for r in measured),
        "rss_mb_one_client": max(r["one"]["rss_mb"] for r in measured),
        "rss_mb_two_clients": max(r["two"]["rss_mb"] for r in measured),
        "client_packets_per_second": sum(p for r in measured for p in r["two"]["client_packets"])
        / (2 * len(measured) * (warmup + seconds)),
        **library,
    }
    checks = [
        Check(
            "client_cpu_percent",
            "daemon CPU per RTSP client (640x480 20 fps), % of one core",
            max(one, two),
            LIMIT_CLIENT_PERCENT,
            "%",
        )
    ]
    passed = report(NAME, figures, checks)
    return 1 if window.strict and not passed else 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--client":
        sys.exit(client_main(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-ours":
        sys.path.insert(0, str(REPO))
        serve_ours(sys.argv[2], int(sys.argv[3]))
        sys.exit(0)
    sys.exit(main())
