"""The alternative bench/rtsp.py compares us with: GStreamer's RTSP server fed by an appsrc.

Runs under Debian's own Python (``/usr/bin/python3``, which has PyGObject from apt; our venv
does not), with ``gir1.2-gst-rtsp-server-1.0`` and ``gstreamer1.0-plugins-good`` installed.
It serves the same pre-encoded H.264 access units as ``bench/rtsp.py --serve-ours`` at the
same rate, the way the daemon would have to: an ``appsrc`` per shared media, pushed from a
feeder thread, then ``rtph264pay`` (nothing decoded or encoded). Usage::

    /usr/bin/python3 bench/rtsp_gstreamer.py PACKETS_FILE PORT FPS
"""

from __future__ import annotations

import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

PIPELINE = (
    "( appsrc name=src is-live=true format=time do-timestamp=true "
    "caps=video/x-h264,stream-format=byte-stream,alignment=au ! "
    "rtph264pay name=pay0 pt=96 config-interval=-1 )"
)


def read_packets(path: str) -> list[tuple[bytes, bool]]:
    with open(path, "rb") as fh:
        data = fh.read()
    out, i = [], 0
    while i < len(data):
        size, key, _ts = struct.unpack_from(">IBq", data, i)
        i += 13
        out.append((data[i : i + size], bool(key)))
        i += size
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def main() -> None:
    path, port, fps = sys.argv[1], sys.argv[2], float(sys.argv[3])
    packets = read_packets(path)
    # What the process holds before GStreamer: bench/rtsp.py reports the growth from here.
    baseline = rss_mb()
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(PIPELINE)
    factory.set_shared(True)
    sources: list[Any] = []
    lock = threading.Lock()

    def configured(_factory: object, media: Any) -> None:
        src = media.get_element().get_by_name_recurse_up("src")
        with lock:
            sources.append(src)

        def gone(_media: object) -> None:
            with lock:
                if src in sources:
                    sources.remove(src)

        media.connect("unprepared", gone)

    factory.connect("media-configure", configured)
    server.get_mount_points().add_factory("/live", factory)
    server.attach(None)

    def feed() -> None:
        period = 1.0 / fps
        start = time.monotonic()
        n = 0
        while True:
            data, _key = packets[n % len(packets)]
            with lock:
                targets = list(sources)
            for src in targets:
                # appsrc stamps it with the pipeline's running time (do-timestamp).
                src.emit("push-buffer", Gst.Buffer.new_wrapped(data))
            n += 1
            time.sleep(max(0.0, start + n * period - time.monotonic()))

    threading.Thread(target=feed, daemon=True).start()
    print(f"listening {baseline:.2f}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
