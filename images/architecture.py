"""Draw the camera daemon's architecture and event flow, and the package map, to
``images/architecture.png``.

Run with ``.venv/bin/python images/architecture.py``. The canvas is 140 x 131 units (y from
-51 to 80; the live-view band is below 0, the package map below -22), one unit being 10 px of
the 1400 x 1310 px output (100 dpi). Each component's box names its package at its top right.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.patches import FancyBboxPatch

OUT = Path(__file__).with_suffix(".png")
Point = tuple[float, float]
FILL = {"thread": "#e8f0fb", "loop": "#e9f6ec", "shared": "#fff4dc", "disk": "#eeeeee"}
PACKAGE_COLOR = "#7a3e9d"


def region(ax: Axes, x: float, y: float, w: float, h: float, label: str, color: str) -> None:
    """A dashed area standing for a thread or the event loop, labelled at its top left."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y), w, h, "round,pad=0,rounding_size=1.5", fc="none", ec=color, ls="--", lw=1.4
        )
    )
    ax.text(x + 1, y + h - 1, label, ha="left", va="top", fontsize=11, color=color, style="italic")


def box(
    ax: Axes,
    x: float,
    y: float,
    w: float,
    h: float,
    title: str,
    body: str = "",
    kind: str = "loop",
    dashed: bool = False,
    package: str = "",
) -> None:
    """A component: bold title over a few lines of detail, centred in the box; ``package``
    (the subpackage that owns it) small at the top right."""
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            "round,pad=0,rounding_size=0.8",
            fc="white" if dashed else FILL[kind],
            ec="#888888" if dashed else "#333333",
            ls="--" if dashed else "-",
            lw=1.2,
        )
    )
    text = "\n".join(filter(None, [title if dashed or not title else f"$\\bf{{{title}}}$", body]))
    color = "#666666" if dashed else "black"
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=10, color=color)
    if package:
        ax.text(x + w - 0.5, y + h - 0.4, package, ha="right", va="top", fontsize=8,
                color=PACKAGE_COLOR, family="monospace")  # fmt: skip


def arrow(ax: Axes, points: list[Point], label: str = "", at: Point | None = None) -> None:
    """A (possibly bent) arrow through ``points``; ``label`` is written at ``at``."""
    if len(points) > 2:
        xs, ys = zip(*points[:-1], strict=True)
        ax.plot(xs, ys, color="#333333", lw=1.4)
    ax.annotate(
        "",
        xy=points[-1],
        xytext=points[-2],
        arrowprops={"arrowstyle": "-|>", "color": "#333333", "lw": 1.4, "mutation_scale": 14},
    )
    if label and at:
        ax.text(*at, label, ha="center", va="center", fontsize=10, color="#1a4f8b")


def package_map(ax: Axes) -> None:
    """The packages in their layers: programs on top, then the concerns their composition root
    wires, then the shared modules; imports only go down (tests/test_layout.py checks it)."""
    ax.plot([1, 139], [-23.2, -23.2], color="#bbbbbb", lw=1)
    ax.text(70, -25, "packages of pinthesky/: imports flow down only, no circles",
            ha="center", va="center", fontsize=12, weight="bold")  # fmt: skip
    rows = [
        ("programs", -32.5, 5.5, [
            ("daemon/", "pinthesky: cli · detect\napp = the composition root"),
            ("iot/", "pinthesky-iot: the MQTT sidecar\nsidecar · jobs · mqtt/ (crt, paho)"),
            ("installer/", "pitsctl: pitsctl · ssh · onpi (on the Pi)\nprovision · alerts · units"),
        ]),
        ("concerns", -41.5, 5.5, [
            ("camera/", "picam · replay · synthetic\nx264 · overlay · stack"),
            ("record/", "ring · motion · recorder\nclips · stills · mp4 · bus"),
            ("cloud/", "credentials · uploader\ntelemetry · dataplane"),
            ("control/", "controller · commands\nshadow · health"),
            ("live/", "tap · mjpeg · session\nrtsp · encoders"),
            ("local/", "web · page · api\nscript · guard · changes"),
            ("alerts/", "motion: the\nmotion_start picture"),
            ("homeassistant/", "MQTT discovery\nbridge · discovery · client"),
        ]),
        ("shared", -50.5, 5.5, [
            ("pinthesky/", "settings · errors · logs · media · cmdline · eventfiles\n"
             "jsonstream · notify · mqttclient · __main__"),
            ("hardware/", "board · sensors · memory · camera: what a Pi can do"),
        ]),
    ]  # fmt: skip
    left, right = 14.0, 139.0
    for label, y, h, packages in rows:
        ax.text(1.5, y + h / 2, label, ha="left", va="center", fontsize=11, style="italic",
                color=PACKAGE_COLOR)  # fmt: skip
        gap = 1.2
        width = (right - left - gap * (len(packages) - 1)) / len(packages)
        for n, (name, body) in enumerate(packages):
            x = left + n * (width + gap)
            shape = "round,pad=0,rounding_size=0.6"
            ax.add_patch(FancyBboxPatch((x, y), width, h, shape, fc="#f4ecf8", ec=PACKAGE_COLOR))
            title = "$\\bf{" + name.replace("_", "\\_") + "}$"
            sep = "  " if len(packages) == 1 else "\n"
            ax.text(x + width / 2, y + h / 2, title + sep + body, ha="center", va="center",
                    fontsize=9 if len(packages) < 8 else 8)  # fmt: skip
    for y in (-34.2, -42.7):
        arrow(ax, [(76.5, y + 1.2), (76.5, y - 1.0)])


def main() -> None:
    fig = plt.figure(figsize=(14, 13.1), dpi=100, facecolor="white")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 140)
    ax.set_ylim(-51.5, 79.5)
    ax.axis("off")
    ax.text(70, 77, "pinthesky camera daemon: architecture and event flow", ha="center",
            va="center", fontsize=14, weight="bold")  # fmt: skip

    # Camera sources, on their own threads.
    region(ax, 1, 3, 25, 70, "camera / encoder threads", "#2f5d9e")
    box(ax, 2.5, 5, 22, 62, "", "", kind="thread", package="camera/")
    ax.text(13.5, 63.5, "$\\bf{Camera}$ interface\nopen · start · stop\nset_overlay: masks, time",
            ha="center", va="center", fontsize=10)  # fmt: skip
    sources = [
        ("picamera2", "H.264 hardware encoder\n+ YUV420 lores stream", 45),
        ("file\\ replay", "PyAV decode\n+ libx264 encode", 26),
        ("synthetic\\ scene", "pre-encoded GOPs\n+ rendered frames", 7),
    ]
    for title, body, y in sources:
        box(ax, 4, y, 19, 13, title, body, kind="disk")

    # Objects shared between the camera threads and the loop.
    box(ax, 35, 50, 22, 20, "PacketRing", "pre-event ring buffer\nwhole GOPs\n"
        "outputframe() contract\nthreading.Lock", kind="shared", package="record/")  # fmt: skip
    box(ax, 35, 7, 22, 15, "AnalysisPort",
        "call_soon_threadsafe\ninto the loop", kind="shared", package="camera/")  # fmt: skip
    arrow(ax, [(24.5, 60), (35, 60)], "packets", (30.5, 61.8))
    arrow(ax, [(24.5, 14.5), (35, 14.5)], "analysis\nframes", (30.5, 18))
    ax.text(30.5, 12.5, "5 fps, gray", ha="center", va="center", fontsize=9, color="#555555")

    # The asyncio event loop: analysis, tracking, recording, events.
    region(ax, 60, 3, 79, 44, "asyncio event loop", "#2e7d3e")
    box(ax, 63, 6, 27, 17, "MotionAnalyzer", "numpy frame difference\nadaptive noise level\n"
        "8x8 cells → moving macroblocks\nlighting-change filter", package="record/")  # fmt: skip
    box(ax, 97, 6, 25, 17, "MotionTracker", "persistence (seconds)\nonset look-back\n"
        "quiet = post-roll", package="record/")  # fmt: skip
    box(ax, 95, 28, 41, 15, "Recorder", "idle / recording / post-roll state machine\n"
        "reads packets from the ring by sequence number\nmanual capture API",
        package="record/")  # fmt: skip
    box(ax, 63, 28, 18, 15, "EventBus", "publish / subscribe\non the loop", package="record/")
    arrow(ax, [(57, 14.5), (63, 14.5)])
    arrow(ax, [(90, 14.5), (97, 14.5)], "scores", (93.5, 16.3))
    arrow(ax, [(109, 23), (109, 28)], "motion events", (116, 25.5))
    arrow(ax, [(95, 35.5), (81, 35.5)], "ClipReady", (88, 37.3))

    # Fed by the bus: the uploader (S3 calls on upload threads) and cloud control.
    box(ax, 35, 37, 22, 8, "Uploader", "queue = clip dir -> S3\n(upload threads)", package="cloud/")
    box(ax, 35, 26, 22, 8, "Control",
        "sidecar files (inotify)\ncommands, events, shadow", package="control/")  # fmt: skip
    arrow(ax, [(63, 37.5), (57, 41)])
    arrow(ax, [(63, 33.5), (57, 30)])

    # CloudWatch: the log handler's buffer is filled from any thread, emptied by its sender.
    box(ax, 124, 6, 13.5, 17, "Telemetry", "logs + EMF\nbounded buffer\n→ CloudWatch\n"
        "(sender thread)", package="cloud/")  # fmt: skip

    # The clip writer and the clip directory.
    arrow(ax, [(57, 57), (102, 57), (102, 43)], "read by seq", (68, 58.8))
    region(ax, 112, 51, 27, 23, "clip-writer thread", "#8a5a00")
    box(ax, 114, 53, 23, 17, "ClipStore", "fragmented MP4 or Annex-B\ntemp name + fsync + rename\n"
        "salvage at start\nquota eviction", kind="thread", package="record/")  # fmt: skip
    arrow(ax, [(128, 43), (128, 53)], "write / close", (121, 49))
    clips = "clip directory\n{start_epoch}.motion.mp4"
    box(ax, 82, 62, 22, 10, "motion\\_videos/", clips, kind="disk")
    arrow(ax, [(114, 67), (104, 67)])

    # Live view: pictures only while someone watches; encoders and posts on worker threads.
    region(ax, 60, -20.5, 79, 22.5, "asyncio event loop: live view (encoding and posts on "
           "worker threads)", "#2e7d3e")  # fmt: skip
    box(ax, 35, -15, 22, 12, "LiveTap", "YUV420 (or camera JPEG)\nonly while watched\n"
        "newest picture wins", kind="shared", package="live/")  # fmt: skip
    arrow(ax, [(13.5, 5), (13.5, -9), (35, -9)], "live pictures", (24.5, -7.2))
    box(ax, 63, -8.5, 22, 6, "MjpegBroadcaster", "one JPEG encoder, all viewers", package="live/")
    box(ax, 63, -18.5, 22, 7, "LiveSession",
        "record: MPEG-1 encoder\n≤ 32 KB base64 posts", package="live/")  # fmt: skip
    arrow(ax, [(57, -6), (63, -6)])
    arrow(ax, [(57, -12), (63, -14)])
    box(ax, 90, -8.5, 21, 6, "WebServer", "/ · /stream.mjpg · /clips · auth", package="local/")
    arrow(ax, [(85, -5.5), (90, -5.5)])
    box(ax, 90, -18.5, 21, 7, "DataPlane",
        "apigatewaymanagementapi\nreplies, record_end", package="cloud/")  # fmt: skip
    arrow(ax, [(85, -15), (90, -15)])
    box(ax, 116, -8.5, 21, 6, "browser\\ (LAN)", "the local page", kind="disk")
    arrow(ax, [(111, -5.5), (116, -5.5)])
    box(ax, 116, -18.5, 21, 7, "API\\ Gateway", "Pi In The Sky console\n(WebSocket, SigV4)",
        kind="disk")  # fmt: skip
    arrow(ax, [(111, -15), (116, -15)])
    # Control starts sessions and sends the data-plane replies.
    arrow(ax, [(57, 28), (59, 28), (59, -17), (63, -17)], "record", (61.6, 24))

    package_map(ax)

    ax.text(139, -21.6, "yellow: shared by camera threads and loop",
            ha="right", va="center", fontsize=9, color="#555555")  # fmt: skip
    fig.savefig(OUT, facecolor="white")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
