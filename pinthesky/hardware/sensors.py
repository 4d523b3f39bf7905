"""Camera modules: the modes each sensor offers, and the mode that sees the whole field.

libcamera lists a sensor's modes by size and bit depth only; how fast each runs and which part
of the pixel array it reads come from configuring the camera in that mode, which is what
``Picamera2.sensor_modes`` does: every mode at four full-size buffers, 62-76 MB for the
Camera Module 3, the AI Camera and the HQ Camera, more than a 512 MB Pi's camera memory. So
the modes of the Raspberry Pi camera modules are known here (as ``rpicam-hello
--list-cameras`` reports them on Raspberry Pi OS 12), checked against the list libcamera gives,
and a sensor that is not here, or whose driver lists other modes, is measured at one small
buffer instead (``pinthesky.camera.picam``).

The field: libcamera's ISP crops each mode, centred, to the output's aspect ratio. A 4:3
video from the Camera Module 3's 16:9 modes sees 75 % of the sensor's width; the same modes
give a 16:9 video all of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SensorMode:
    """One sensor mode, reduced to what the choice needs."""

    size: tuple[int, int]
    bit_depth: int
    fps: float
    """Its highest frame rate."""
    crop: tuple[int, int, int, int]
    """The part of the pixel array it reads (x, y, width, height)."""

    @property
    def raw_pixels(self) -> int:
        return self.size[0] * self.size[1]


@dataclass(frozen=True)
class Field:
    """What a mode sees once the ISP has cropped it to the output's aspect ratio, as shares of
    the sensor's pixel array."""

    width: float
    height: float
    scale: float
    """Output pixels per mode pixel across (above 1: the ISP scales the mode up)."""

    @property
    def area(self) -> float:
        return self.width * self.height


def _mode(
    size: tuple[int, int], bits: int, fps: float, crop: tuple[int, int, int, int]
) -> SensorMode:
    return SensorMode(size, bits, fps, crop)


SENSORS: dict[str, tuple[tuple[int, int], tuple[SensorMode, ...]]] = {
    # Camera Module v1
    "ov5647": (
        (2592, 1944),
        (
            _mode((640, 480), 10, 58.92, (16, 0, 2560, 1920)),
            _mode((1296, 972), 10, 43.25, (0, 0, 2592, 1944)),
            _mode((1920, 1080), 10, 30.62, (348, 434, 1928, 1080)),
            _mode((2592, 1944), 10, 15.63, (0, 0, 2592, 1944)),
        ),
    ),
    # Camera Module v2 (also 8-bit)
    "imx219": (
        (3280, 2464),
        tuple(
            _mode(size, bits, fps, crop)
            for bits in (10, 8)
            for size, fps, crop in (
                ((640, 480), 206.65, (1000, 752, 1280, 960)),
                ((1640, 1232), 41.85 if bits == 10 else 83.70, (0, 0, 3280, 2464)),
                ((1920, 1080), 47.57, (680, 692, 1920, 1080)),
                ((3280, 2464), 21.19, (0, 0, 3280, 2464)),
            )
        ),
    ),
    # HQ Camera
    "imx477": (
        (4056, 3040),
        (
            _mode((1332, 990), 10, 120.05, (696, 528, 2664, 1980)),
            _mode((2028, 1080), 12, 50.03, (0, 440, 4056, 2160)),
            _mode((2028, 1520), 12, 40.01, (0, 0, 4056, 3040)),
            _mode((4056, 3040), 12, 10.00, (0, 0, 4056, 3040)),
        ),
    ),
    # Camera Module 3, standard and wide, with and without the IR filter
    "imx708": (
        (4608, 2592),
        (
            _mode((1536, 864), 10, 120.13, (768, 432, 3072, 1728)),
            _mode((2304, 1296), 10, 56.03, (0, 0, 4608, 2592)),
            _mode((4608, 2592), 10, 14.35, (0, 0, 4608, 2592)),
        ),
    ),
    # AI Camera
    "imx500": (
        (4056, 3040),
        (
            _mode((2028, 1520), 10, 30.02, (0, 0, 4056, 3040)),
            _mode((4056, 3040), 10, 10.00, (0, 0, 4056, 3040)),
        ),
    ),
    # Global Shutter Camera
    "imx296": ((1456, 1088), (_mode((1456, 1088), 10, 60.38, (0, 0, 1456, 1088)),)),
}

FIELD_TOLERANCE = 0.12
"""Fields within this share of the widest count as the same: a mode that sees 6 % less each
way is hard to tell apart on a picture, while its smaller raw frames save camera memory and
allow a higher rate (the HQ Camera's 2028x1080 against its 2028x1520 for a 16:9 video)."""
UPSCALE = 0.8
"""The ISP may scale a mode up by this much (1/0.8 = 1.25x) rather than read a larger one."""


def family(model: str) -> str:
    """``imx708_wide_noir`` -> ``imx708``: the variants share their sensor's modes."""
    return model.split("_", 1)[0]


def known_modes(
    model: str, listed: Iterable[tuple[int, tuple[int, int]]]
) -> list[SensorMode] | None:
    """The modes of ``model`` that libcamera ``listed`` (bit depth, size), with their rates and
    crops; None when this sensor, or one of the modes its driver offers, is not known here."""
    known = SENSORS.get(family(model))
    if known is None:
        return None
    table = {(m.bit_depth, m.size): m for m in known[1]}
    modes = []
    for bits, size in listed:
        mode = table.get((bits, tuple(size)))  # type: ignore[arg-type]
        if mode is None:
            return None
        modes.append(mode)
    return modes or None


def pixel_array(modes: Sequence[SensorMode]) -> tuple[int, int]:
    """The sensor's field as its modes read it: the largest crop."""
    return max(((m.crop[2], m.crop[3]) for m in modes), key=lambda s: s[0] * s[1])


def field(mode: SensorMode, output: tuple[int, int], array: tuple[int, int]) -> Field:
    """What ``mode`` sees of ``array`` once cropped, centred, to ``output``'s aspect ratio."""
    _, _, cw, ch = mode.crop
    ow, oh = output
    if cw * oh > ch * ow:  # the mode is wider than the output: its sides go
        fw, fh = ch * ow / oh, float(ch)
    else:
        fw, fh = float(cw), cw * oh / ow
    used = mode.size[0] * fw / cw  # mode pixels across that reach the output
    return Field(fw / array[0], fh / array[1], ow / used)


def choose_mode(
    modes: Sequence[SensorMode], size: tuple[int, int], fps: float
) -> SensorMode | None:
    """The mode for a ``size`` video at ``fps``: among those fast enough, one that sees the
    widest field at that aspect ratio (a security camera wants all it can see); of those, the
    smallest raw frame the ISP need not scale up by more than ``1/UPSCALE`` (camera memory is
    what a Pi Zero lacks), then more bits (better in the dark). When no mode is fast enough,
    the fastest."""
    if not modes:
        return None
    array = pixel_array(modes)
    fast = [m for m in modes if m.fps + 0.01 >= fps] or [max(modes, key=lambda m: m.fps)]
    widest = max(field(m, size, array).area for m in fast)
    wide = [m for m in fast if field(m, size, array).area >= widest * (1 - FIELD_TOLERANCE)]
    enough = [m for m in wide if field(m, size, array).scale <= 1 / UPSCALE]
    if not enough:  # all smaller than asked: the biggest of them
        return max(wide, key=lambda m: (m.raw_pixels, m.bit_depth, m.fps))
    return min(
        enough, key=lambda m: (m.raw_pixels, -m.bit_depth, -field(m, size, array).area, -m.fps)
    )


def describe(mode: SensorMode, output: tuple[int, int], array: tuple[int, int]) -> str:
    """``2304x1296 10-bit up to 56.0 fps: 75% of the sensor's width, 100% of its height``."""
    f = field(mode, output, array)
    return (
        f"{mode.size[0]}x{mode.size[1]} {mode.bit_depth}-bit up to {mode.fps:.1f} fps: "
        f"{f.width:.0%} of the sensor's width, {f.height:.0%} of its height"
    )
