"""Camera memory: how many buffers a configuration gets, counted the way the Pi spends it.

Where it lives: on a Pi 0-4 every camera buffer, libcamera's internal ones and the V4L2
encoders' are contiguous memory (CMA: 64 MB on a 512 MB Pi, 256 MB on a 1 GB Pi 3, 512 MB on
a Pi 4 with 2 GB or more). The Pi 5's camera and ISP sit behind an IOMMU and take system
memory; its CMA (64 MB) is for the display.

What a configuration costs:
- per buffer (picamera2 allocates ``buffer_count`` of each stream): the main and lores YUV420
  pictures (rows padded to 64 bytes) and the raw frame of the sensor mode (CSI-2 packed rows
  padded to 32 bytes on a Pi 0-4, 8 bits a pixel compressed on a Pi 5);
- libcamera's own buffers, allocated when the camera starts: Unicam keeps two raw frames and
  the ISP one main and one lores picture while it drops the first frames
  (``pipeline/rpi/vc4``, ``min_unicam_buffers``);
- each V4L2 encoder (H.264, and MJPEG while someone watches the page): picamera2 asks for 16
  capture buffers of 512 KiB.

How many buffers are needed: the sensor fills one, picamera2 hands one to our callback, and
each encoder holds the frame it encodes until the codec gives it back; picamera2 is
configured with ``queue=False`` so it parks none of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from pinthesky.hardware import board

BUFFERS = 6
"""picamera2's buffer count for video: what we ask for when memory allows."""
ENCODER_BYTES = 16 * 512 * 1024
"""One V4L2 encoder's capture buffers (picamera2's ``V4L2Encoder``: 16 of 512 KiB)."""
CMA_SHARE = 0.75
"""Of the CMA, what the camera plans to use on a Pi 0-4: the display's framebuffers, the
lens-shading table and other drivers take the rest."""
SYSTEM_SHARE = 0.25
"""Of the memory available, what the camera plans to use on a Pi 5."""


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def yuv420_bytes(width: int, height: int) -> int:
    return _align(width, 64) * height * 3 // 2


def raw_bytes(width: int, height: int, bit_depth: int, kind: str | None) -> int:
    """One raw frame: CSI-2 packed from Unicam on a Pi 0-4; the Pi 5's front end writes
    its compressed format (8 bits a pixel)."""
    if kind == board.PISP:
        return _align(width, 32) * height
    return _align(width * max(8, bit_depth) // 8, 32) * height


def min_buffers(encoders: int) -> int:
    """Buffers that keep the sensor fed while ``encoders`` encoders each hold a frame."""
    return 2 + encoders


@dataclass(frozen=True)
class Need:
    """Bytes a configuration takes."""

    per_buffer: int
    internal: int
    """libcamera's own, at start."""
    encoders: int
    """The V4L2 encoders' (``ENCODER_BYTES`` each)."""

    def at(self, buffers: int) -> int:
        return buffers * self.per_buffer + self.internal + self.encoders


def need(
    main: int,
    lores: int,
    raw: int,
    encoders: int,
) -> Need:
    """What a configuration of ``main``, ``lores`` and ``raw`` frame sizes (bytes) costs with
    ``encoders`` V4L2 encoders."""
    return Need(main + lores + raw, 2 * raw + main + lores, encoders * ENCODER_BYTES)


@dataclass(frozen=True)
class Budget:
    """What the camera may use, and where it comes from."""

    bytes: int | None
    """None: unknown (not a Pi, or a kernel that does not say): picamera2's default."""
    where: str
    """``camera memory (CMA)`` or ``memory``."""
    hint: str
    """What an owner can do when it is not enough."""


def budget(model: str | None, info: dict[str, int]) -> Budget:
    """The camera's share of ``model``'s memory, from ``/proc/meminfo`` (``info``)."""
    kind = board.platform(model)
    if kind == board.PISP:
        available = info.get("MemAvailable")
        return Budget(
            None if available is None else int(available * SYSTEM_SHARE),
            "memory",
            "lower camera.resolution or stop other programs",
        )
    cma = info.get("CmaTotal") if kind is not None else None
    return Budget(
        None if cma is None else int(cma * CMA_SHARE),
        "camera memory (CMA)",
        "lower camera.resolution or raise the CMA (dtoverlay=vc4-kms-v3d,cma-128 in "
        "/boot/firmware/config.txt)",
    )


@dataclass(frozen=True)
class Plan:
    """How many buffers the camera gets and what they cost."""

    buffers: int
    bytes: int
    """At ``buffers`` buffers, libcamera's and the encoders' included."""
    full: int
    """What ``BUFFERS`` would have cost."""


def plan(need: Need, budget: Budget, fewest: int) -> Plan | None:
    """The most buffers (``BUFFERS`` down to ``fewest``) that fit ``budget``; None when even
    the fewest do not."""
    full = need.at(BUFFERS)
    if budget.bytes is None:
        return Plan(BUFFERS, full, full)
    for n in range(BUFFERS, fewest - 1, -1):
        if need.at(n) <= budget.bytes:
            return Plan(n, need.at(n), full)
    return None


def too_little(size: tuple[int, int], need: Need, budget: Budget, fewest: int) -> str:
    """One line: ``size`` needs more than ``budget`` has."""
    have = budget.bytes or 0
    return (
        f"{size[0]}x{size[1]} needs {need.at(fewest) / 2**20:.1f} MB of {budget.where} even "
        f"with {fewest} buffers, and the camera may use {have / 2**20:.1f} MB here; {budget.hint}"
    )
