"""``pinthesky detect VIDEO``: run the daemon's motion analysis over a recorded video.

It is how a user tunes ``--sensitivity`` and friends: the same analyzer, tracker and analysis
rate as the daemon, reporting when motion events start and end. ``--json`` prints one JSON
document, ``--plot FILE.png`` draws the score over time with the threshold and the events.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from pinthesky.errors import PintheskyError, SourceError
from pinthesky.media import US, RateGate
from pinthesky.record.motion import (
    SLOW_S,
    SWEEP_S,
    TRACK_S,
    MotionAnalyzer,
    MotionEnded,
    MotionStarted,
    MotionTracker,
    Score,
)
from pinthesky.settings import Settings


@dataclass
class Event:
    start: float
    """Seconds from the start of the video to the first frame in which the motion was seen."""
    declared: float
    """When the motion had persisted long enough to count."""
    end: float
    """The last moment motion was seen."""
    peak: float = 0.0
    """Highest score while the event was on (moving macroblocks)."""
    reason: str = ""
    """Why the frame that confirmed the event counted."""


@dataclass
class Detection:
    events: list[Event] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)
    frames: int = 0
    analysis_us_per_frame: float = 0.0
    origin: int = 0
    sensitivity: int = 0
    """The ``--sensitivity`` the video was analysed with."""
    min_time: float = 0.0
    """The ``--motion-min-time`` it was analysed with."""

    def seconds(self, ts: int) -> float:
        return round((ts - self.origin) / US, 3)

    def peak(self) -> float:
        """The highest score of a frame that could count (lighting changes score nothing)."""
        return max((sc.blocks for sc in self.scores if not sc.lighting), default=0.0)

    def ignored(self) -> dict[str, int]:
        """For each reason a frame's change (or part of it) did not count, the frames."""
        scores = self.scores
        return {
            "lighting": sum(1 for sc in scores if sc.lighting),
            "light": sum(1 for sc in scores if sc.lit and not sc.lighting),
            "shake": sum(1 for sc in scores if sc.shake),
            "scattered": sum(1 for sc in scores if sc.scattered),
            "at_the_lens": sum(1 for sc in scores if sc.near),
            "shade": sum(1 for sc in scores if sc.shade),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "events": [
                {
                    "start": e.start,
                    "end": e.end,
                    "declared": e.declared,
                    "peak": round(e.peak, 1),
                    "reason": e.reason,
                }
                for e in self.events
            ],
            "frames": self.frames,
            "ignored": self.ignored(),
            "analysis_us_per_frame": round(self.analysis_us_per_frame, 2),
        }


def detect(path: Path, settings: Settings) -> Detection:
    """Analyse ``path`` exactly as the daemon would; SourceError if it cannot be read."""
    import av

    s = settings
    lw, lh = s.camera.lores
    analyzer = MotionAnalyzer(s.camera.lores, s.camera.resolution, s.motion, s.camera.rotation)
    tracker = MotionTracker(s.camera.sensitivity, s.motion.min_time, quiet=s.recorder.post_roll)
    result = Detection(sensitivity=s.camera.sensitivity, min_time=s.motion.min_time)
    spent = 0.0
    open_event: Event | None = None
    try:
        container: Any = av.open(str(path))
    except (av.FFmpegError, OSError) as exc:
        raise SourceError(f"{path}: cannot read video: {exc}") from None
    with container:
        if not container.streams.video:
            raise SourceError(f"{path}: cannot read video: no video stream in the file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or Fraction(s.camera.framerate)
        gate = RateGate(s.motion.analysis_fps, round(US / rate))
        t0: float | None = None
        n = 0
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else n / float(rate)
                n += 1
                if t0 is None:
                    t0 = t
                ts = round((t - t0) * US)
                if not gate.due(ts):
                    continue
                luma = frame.reformat(width=lw, height=lh, format="gray").to_ndarray()
                c0 = time.perf_counter()
                score = analyzer.analyse(luma, ts)
                spent += time.perf_counter() - c0
                result.scores.append(score)
                result.frames += 1
                for ev in tracker.update(score):
                    open_event = _apply(result, ev, open_event, score, tracker.sensitivity)
                if open_event is not None:
                    open_event.peak = max(open_event.peak, score.blocks)
        except av.FFmpegError as exc:
            if n == 0:
                raise SourceError(f"{path}: cannot read video: {exc}") from None
            print(f"{path}: stopped reading at frame {n}: {exc}", file=sys.stderr)
        if n == 0:
            raise SourceError(f"{path}: cannot read video: no frames")
    for ev in tracker.finish():
        open_event = _apply(result, ev, open_event, None, tracker.sensitivity)
    result.analysis_us_per_frame = spent / max(1, result.frames) * 1e6
    return result


def _apply(
    result: Detection,
    ev: object,
    open_event: Event | None,
    score: Score | None,
    sensitivity: int,
) -> Event | None:
    if isinstance(ev, MotionStarted):
        e = Event(
            result.seconds(ev.onset),
            result.seconds(ev.declared),
            result.seconds(ev.declared),
            reason="" if score is None else reason(score, sensitivity),
        )
        result.events.append(e)
        return e
    if isinstance(ev, MotionEnded) and open_event is not None:
        open_event.end = result.seconds(ev.last_seen)
        return None
    return open_event


def reason(score: Score, sensitivity: int) -> str:
    """Why a frame's score counted, in words a user can act on."""
    if score.swept:
        why = (
            f"a small object persisted: it covered {score.blocks:.0f} macroblocks over the "
            f"last {SWEEP_S:g} s, or up to {TRACK_S:g} s while seen without a break "
            f"(> sensitivity {sensitivity})"
        )
    else:
        why = f"an object of {score.blocks:.0f} macroblocks (> sensitivity {sensitivity})"
    extras = []
    if score.grown:
        extras.append(
            f"{score.grown} cells growing or creeping (compared with {SLOW_S:g} s before)"
        )
    if score.shake:
        extras.append("moving against a shaken view")
    if score.lit:
        extras.append(f"{score.lit} cells of light change ignored")
    if score.scattered:
        extras.append(f"{score.scattered} cells of scattered change ignored")
    if score.near:
        extras.append(f"{score.near} cells of things at the lens ignored")
    if score.shade:
        extras.append(f"{score.shade} cells of dappled shade ignored")
    return why + ("; " + ", ".join(extras) if extras else "")


def timeline(result: Detection) -> str:
    lines = [f"{result.frames} frames analysed, {result.analysis_us_per_frame:.0f} us each"]
    if not result.events:
        lines.append("no motion")
    for i, e in enumerate(result.events, 1):
        lines.append(
            f"event {i}: {_clock(e.start)} - {_clock(e.end)} ({e.end - e.start:.1f} s; "
            f"confirmed at {_clock(e.declared)}; peak {e.peak:.0f}; {e.reason})"
        )
    lighting = sum(1 for sc in result.scores if sc.lighting)
    if lighting:
        lines.append(f"{lighting} frames ignored as lighting changes")
    shaken = sum(1 for sc in result.scores if sc.shake)
    if shaken:
        lines.append(f"{shaken} frames with camera shake (the view lined up first)")
    scattered = sum(1 for sc in result.scores if sc.scattered and not sc.blocks)
    if scattered:
        lines.append(f"{scattered} frames with only scattered change (rain, snow, noise)")
    lens = result.ignored()["at_the_lens"]
    if lens:
        lines.append(
            f"{lens} frames with things at the lens ignored (blurred and lit by the IR lamp: "
            "insects, a spider's strand, drops on the window)"
        )
    shade = result.ignored()["shade"]
    if shade:
        lines.append(
            f"{shade} frames with dappled shade ignored (sunflecks under a tree shifting in "
            "the wind, back within the range they took lately)"
        )
    lines.append(verdict(result))
    return "\n".join(lines)


def verdict(result: Detection) -> str:
    """The highest score against the sensitivity, in words that agree with the events."""
    peak, sens, least = result.peak(), result.sensitivity, result.min_time
    said = f"highest score {peak:.0f} macroblocks"
    if result.events:
        return (
            f"{said}; motion is a score above the sensitivity ({sens}) for at least "
            f"{least:g} s (--motion-min-time)"
        )
    if peak <= sens:
        return (
            f"{said}, not above the sensitivity ({sens}): nothing counted as motion "
            "(a lower --sensitivity counts smaller changes)"
        )
    return (
        f"{said}, above the sensitivity ({sens}) but never for {least:g} s in a row "
        "(--motion-min-time): nothing counted as motion"
    )


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m):02d}:{s:05.2f}"


PLOT_EXTRA = (
    "--plot needs matplotlib: pip install 'pinthesky[plot]' (or apt install python3-matplotlib)"
)


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing to files; PintheskyError (one line) when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PintheskyError(PLOT_EXTRA) from None
    return plt


@dataclass(frozen=True)
class Plotted:
    labels: list[str]
    """The legend's labels."""
    threshold_at: float
    """Height of the sensitivity line, as a fraction of the plot's height."""


def plot(result: Detection, settings: Settings, out: Path) -> Plotted:
    """Draw the score over time, the threshold and the events into a PNG."""
    plt = _pyplot()
    xs = [result.seconds(sc.ts) for sc in result.scores]
    ys = [sc.blocks for sc in result.scores]
    fig, ax = plt.subplots(figsize=(12, 4), dpi=100)
    for e in result.events:
        ax.axvspan(e.start, e.end, color="tab:orange", alpha=0.25)
    ax.plot(xs, ys, color="tab:blue", linewidth=1, label="moving macroblocks")
    sens = settings.camera.sensitivity
    # Scores span from a few macroblocks to thousands: on a linear axis the sensitivity line
    # (10 by default) lies on zero. Logarithmic above one macroblock, linear below it, so
    # that frames scoring nothing still show (on zero, with the reasons they did not count).
    ax.set_yscale("symlog", linthresh=1)
    ax.axhline(sens, color="tab:red", linestyle="--", label=f"sensitivity {sens}")
    # Why frames did not count: a marker on the axis for each kind of rejected change.
    marks: tuple[tuple[str, str, str, Callable[[Score], bool]], ...] = (
        ("lighting change", "v", "gold", lambda sc: sc.lighting),
        ("light explained part", "1", "orange", lambda sc: sc.lit > 0 and not sc.lighting),
        ("camera shake", "|", "tab:purple", lambda sc: sc.shake),
        ("scattered (rain, snow, noise)", ".", "tab:gray", lambda sc: sc.scattered > 0),
        ("at the lens (insects, strand, drops)", "x", "tab:cyan", lambda sc: sc.near > 0),
        ("dappled shade (sunflecks in wind)", "+", "tab:olive", lambda sc: sc.shade > 0),
    )
    for label, marker, colour, hit in marks:
        xs_hit = [x for x, sc in zip(xs, result.scores, strict=True) if hit(sc)]
        if xs_hit:
            ax.plot(xs_hit, [0] * len(xs_hit), marker, color=colour, label=label)
    swept = [(x, sc.blocks) for x, sc in zip(xs, result.scores, strict=True) if sc.swept]
    if swept:
        ax.plot(
            *zip(*swept, strict=True),
            "o",
            color="tab:green",
            markersize=3,
            label=f"persisting small object (area over {SWEEP_S:g} s or more)",
        )
    ax.set_xlabel("seconds")
    ax.set_ylabel("moving macroblocks (log)")
    ax.set_ylim(bottom=0, top=max(result.peak(), sens) * 2)
    n = len(result.events)
    ax.set_title(f"motion score ({n} event{'' if n == 1 else 's'} shaded)")
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    fig.savefig(out)
    _, threshold_at = ax.transAxes.inverted().transform(ax.transData.transform((0, sens)))
    plt.close(fig)
    return Plotted([text.get_text() for text in legend.get_texts()], float(threshold_at))


def main(argv: Sequence[str]) -> int:
    from pinthesky.cmdline import PROG, build_parser, load_settings

    parser = build_parser(
        f"{PROG} detect",
        "Run the motion analysis over a recorded video, to tune the settings.",
    )
    parser.add_argument("video", type=Path, help="the video file to analyse")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="draw the score over time with the threshold and the events "
        "(needs matplotlib: pinthesky[plot])",
    )
    ns = parser.parse_args(list(argv))
    cfg = load_settings(ns)
    assert isinstance(cfg, Settings)
    try:
        if ns.plot is not None:
            _pyplot()  # said before minutes of analysis, not after
        result = detect(ns.video, cfg)
        if ns.plot is not None:
            plot(result, cfg, ns.plot)
    except PintheskyError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps(result.to_json()))
    else:
        print(timeline(result))
    return 0
