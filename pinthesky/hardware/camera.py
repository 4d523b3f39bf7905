"""A camera configuration on a given Pi and camera module: the sensor mode, the rate it
delivers, how many buffers fit, and whether live view's hardware JPEG encoder fits too.

``setup`` is the one place this is decided: the camera source configures what it says, and
the settings refuse (in one line) a change the attached camera cannot take, before the camera
is touched. The focus and tuning-file rules are here for the same reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from pinthesky.hardware import board, memory, sensors

TUNING_DIRS = (
    Path("/usr/local/share/libcamera/ipa/rpi"),
    Path("/usr/share/libcamera/ipa/rpi"),
)
"""Where libcamera's Raspberry Pi tuning files live, one folder per platform (``vc4``,
``pisp``), as picamera2's ``load_tuning_file`` searches them."""


@dataclass(frozen=True)
class Attached:
    """The camera module on this Pi, as the camera source found it when it opened."""

    model: str
    """libcamera's ``Model``: ``imx708_wide_noir`` and the like."""
    modes: tuple[sensors.SensorMode, ...]
    autofocus: bool
    """Whether it has a lens it can move (``AfMode`` and ``LensPosition``)."""
    lens: tuple[float, float] = (0.0, 32.0)
    """``LensPosition``'s range in dioptres."""


@dataclass(frozen=True)
class Setup:
    """How the camera runs a configuration."""

    mode: sensors.SensorMode | None
    """None for a camera without raw modes (a USB camera): picamera2 picks."""
    fps: int
    """What the camera delivers: the rate asked for unless the mode is slower."""
    buffers: int
    bytes: int
    """Camera memory at ``buffers`` (see ``memory``)."""
    full: int
    """What ``memory.BUFFERS`` would have cost."""
    live_encoder: bool
    """Whether the Pi 0-4's MJPEG encoder fits beside the H.264 one for live view."""
    v4l2: int
    """V4L2 encoders counted (their capture buffers are camera memory)."""
    holders: int
    """Encoders that each hold a frame while they encode it."""
    budget: memory.Budget

    def with_buffers(self, buffers: int, need: memory.Need) -> Setup:
        return Setup(
            self.mode,
            self.fps,
            buffers,
            need.at(buffers),
            self.full,
            self.live_encoder,
            self.v4l2,
            self.holders,
            self.budget,
        )


def setup(
    model: str | None,
    info: dict[str, int],
    modes: tuple[sensors.SensorMode, ...] | list[sensors.SensorMode],
    main: tuple[int, int],
    lores: tuple[int, int],
    fps: int,
) -> Setup | str:
    """The configuration ``model`` (the Pi) runs for a ``main`` video at ``fps`` with a
    ``lores`` analysis stream, from the camera module's ``modes`` and ``/proc/meminfo``
    (``info``); or one line saying why it cannot."""
    kind = board.platform(model)
    mode = sensors.choose_mode(modes, main, fps)
    delivered = fps
    if mode is not None and mode.fps + 0.01 < fps:
        delivered = max(1, math.floor(mode.fps))
    raw = 0 if mode is None else memory.raw_bytes(*mode.size, mode.bit_depth, kind)
    frames = (memory.yuv420_bytes(*main), memory.yuv420_bytes(*lores), raw)
    budget = memory.budget(model, info)
    # The H.264 encoder holds a frame on every Pi (V4L2, or libx264's one-frame delay on a
    # Pi 5); on a Pi 0-4 the MJPEG encoder adds its memory and a held frame, if it fits.
    choices = [(2, 2, True), (1, 1, False)] if kind == board.VC4 else [(0, 1, False)]
    for v4l2, holders, live in choices:
        need = memory.need(*frames, encoders=v4l2)
        plan = memory.plan(need, budget, memory.min_buffers(holders))
        if plan is not None:
            return Setup(
                mode, delivered, plan.buffers, plan.bytes, plan.full, live, v4l2, holders, budget
            )
    return memory.too_little(main, need, budget, memory.min_buffers(holders))


# -- focus, tuning --------------------------------------------------------------------------

FOCUS_WORDS = ("default", "continuous")


def focus_problem(focus: str | float, camera: Attached | None) -> str | None:
    """Why ``focus`` (``default``, ``continuous`` or a lens position in dioptres) does not
    suit ``camera``; None when it does or the camera is not known yet."""
    if focus == "default" or camera is None:
        return None
    if not camera.autofocus:
        return f"the {camera.model} has a fixed-focus lens; use default"
    if isinstance(focus, float) and not camera.lens[0] <= focus <= camera.lens[1]:
        low, high = camera.lens
        return f"the {camera.model}'s lens goes from {low:g} to {high:g} dioptres (0 is infinity)"
    return None


TUNING_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.json$")


def tuning_dirs(kind: str | None) -> list[Path]:
    return [d / (kind or board.VC4) for d in TUNING_DIRS]


def tuning_path(tuning: str, kind: str | None) -> Path | None:
    """The file ``tuning`` names on this platform (a file name in libcamera's folder, or a
    path), or None when there is none."""
    candidates = [Path(tuning)] if "/" in tuning else [d / tuning for d in tuning_dirs(kind)]
    return next((p for p in candidates if p.is_file()), None)


def tuning_problem(tuning: str, model: str | None, camera: Attached | None) -> str | None:
    """Why ``tuning`` cannot be used on this Pi (``model``) with ``camera``; None when it can
    (or when this is not a Pi: nothing is loaded there)."""
    if tuning == "default" or board.platform(model) is None:
        return None
    kind = board.platform(model)
    if tuning_path(tuning, kind) is None:
        where = tuning if "/" in tuning else f"{tuning} in {tuning_dirs(kind)[-1]}"
        return f"no tuning file {where}"
    name = Path(tuning).name
    if camera is not None and not name.startswith(sensors.family(camera.model)):
        return f"{name} is not a tuning file for the {camera.model}"
    return None
