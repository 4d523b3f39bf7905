"""What is burned into the picture before anything sees it: privacy masks, filled black, and
the date and time.

Every source applies the overlay to each frame before it is encoded or copied anywhere (the
clips and the pre-event ring, RTSP, live view, stills and the pictures taken at motion start
all come from those frames), on every stream it makes: picamera2's main and lores streams in
its ``pre_callback``, the synthetic scene and a replayed file before their encoder. A change
of settings makes a new ``Overlay`` that the source takes from the next frame on; frames
already encoded keep what they had.

Coordinates are pixels of the main picture as the viewer sees it (turned by the stream's
display rotation), like the motion mask drawn on the page. The planes are in the sensor's
orientation and of any size (the lores stream, a live picture), so ``on`` works each
rectangle and the text's place out once per plane size, turned back and scaled; the text
itself is drawn again only when it changes (once a second), in the viewer's orientation and
then turned, so that it reads upright in the clips.

Thread contract: an ``Overlay`` and what ``on`` returns are used by one source thread at a
time (picamera2's camera thread, the synthetic or replay thread); the loop replaces the
source's overlay with a new object, never changes one in use.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pinthesky.camera import font
from pinthesky.settings import CameraSettings, Rect

BLACK = 16
"""Video black (limited range, what the camera's YUV is); full range has 0."""
WHITE = 235
NEUTRAL = 128
"""No colour: the chroma of black, white and grey."""

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


def turned_back(rect: Rect, turns: int, size: tuple[int, int]) -> tuple[Rect, tuple[int, int]]:
    """``rect`` of a picture of ``size`` as the viewer sees it, in the sensor's orientation:
    the viewer sees the sensor turned clockwise by ``turns`` quarters, so each quarter is
    undone anticlockwise (as ``np.rot90``). Returns the rectangle and the sensor's size."""
    x, y, w, h = rect
    width, height = size
    for _ in range(turns % 4):
        x, y, w, h = y, width - x - w, h, w
        width, height = height, width
    return Rect(x, y, w, h), (width, height)


def text_height(settings: CameraSettings, viewer_height: int) -> int:
    """The timestamp's height in pixels of the main picture: as set, or a 24th of it, and
    never less than glyphs of two pixels a dot (one-pixel strokes blur in the encoder)."""
    if settings.timestamp_size:
        return int(settings.timestamp_size)
    return max(2 * font.CELL_H + 2, viewer_height // 24)


@dataclass(frozen=True)
class Overlay:
    """Privacy masks and the timestamp for a camera's frames."""

    settings: CameraSettings
    epoch: Callable[[int], float]
    """Sensor time (microseconds) to the wall clock (epoch seconds), as clips are named."""
    rotation: int = 0
    """The turn the frames are shown with (the stream's display rotation: 0 when the sensor
    turned them itself)."""

    @property
    def active(self) -> bool:
        return bool(self.settings.privacy_masks or self.settings.timestamp)

    @property
    def viewer_size(self) -> tuple[int, int]:
        w, h = self.settings.resolution
        return (h, w) if self.rotation in (90, 270) else (w, h)

    def hidden(self) -> tuple[Rect, ...]:
        """What the motion analysis must ignore, as the viewer sees the main picture: the
        privacy masks, and the timestamp (whose digits change every second) with room for the
        widest text its format gives."""
        rects = list(self.settings.privacy_masks)
        if self.settings.timestamp:
            plane = Plane(self, self.viewer_size, turns=0)
            sample = time.strftime(self.settings.timestamp, time.localtime(0))
            widest = plane.place(font.bitmap("W" * (len(sample) + 2), plane.scale))
            rects.append(widest)
        return tuple(rects)

    def on(self, size: tuple[int, int]) -> Plane:
        """The overlay worked out for planes of ``size`` (sensor orientation, any scale)."""
        turns = (self.rotation // 90) % 4
        viewer = (size[1], size[0]) if turns % 2 else size
        return Plane(self, viewer, turns)


class Plane:
    """An overlay for one picture size: rectangles in that picture's pixels, and the text,
    drawn once a second."""

    def __init__(self, overlay: Overlay, viewer: tuple[int, int], turns: int) -> None:
        self.overlay = overlay
        self.viewer = viewer
        self.turns = turns
        main = overlay.viewer_size
        self.sx, self.sy = viewer[0] / main[0], viewer[1] / main[1]
        self.masks = [self._to_plane(r) for r in overlay.settings.privacy_masks]
        height = text_height(overlay.settings, main[1]) * self.sy
        self.outline = max(1, round(height / 20))
        self.scale = max(1, int((height - 2 * self.outline) // font.CELL_H))
        self._text: str | None = None
        self._drawn: tuple[Rect, npt.NDArray[np.bool_]] | None = None

    def _to_plane(self, rect: Rect) -> Rect:
        """A rectangle of the main picture (viewer's orientation) in this plane's pixels,
        rounded outward (a mask never leaves an edge of what it hides)."""
        x0 = max(0, math.floor(rect.x * self.sx))
        y0 = max(0, math.floor(rect.y * self.sy))
        x1 = min(self.viewer[0], math.ceil((rect.x + rect.w) * self.sx))
        y1 = min(self.viewer[1], math.ceil((rect.y + rect.h) * self.sy))
        turned, _ = turned_back(
            Rect(x0, y0, max(0, x1 - x0), max(0, y1 - y0)), self.turns, self.viewer
        )
        return turned

    def place(self, ink: npt.NDArray[np.bool_]) -> Rect:
        """Where text of this ``ink`` goes in the viewer's picture of this plane."""
        h, w = ink.shape[0] + 2 * self.outline, ink.shape[1] + 2 * self.outline
        margin = max(2, self.scale * 2)
        corner = self.overlay.settings.timestamp_position
        x = margin if corner.endswith("left") else self.viewer[0] - margin - w
        y = margin if corner.startswith("top") else self.viewer[1] - margin - h
        return Rect(max(0, x), max(0, y), min(w, self.viewer[0]), min(h, self.viewer[1]))

    def _draw(self, text: str) -> tuple[Rect, npt.NDArray[np.bool_]]:
        """The text's place in the plane (a black box, the text in white inside it, readable
        on any scene) and its ink, turned to the sensor."""
        ink = font.bitmap(text, self.scale)
        o = self.outline
        box = self.place(ink)
        padded = np.zeros((box.h, box.w), dtype=bool)
        inner = ink[: box.h - o, : box.w - o]
        padded[o : o + inner.shape[0], o : o + inner.shape[1]] = inner
        turned, _ = turned_back(box, self.turns, self.viewer)
        return turned, np.rot90(padded, k=self.turns)

    def apply(
        self,
        y: npt.NDArray[np.uint8],
        u: npt.NDArray[np.uint8] | None,
        v: npt.NDArray[np.uint8] | None,
        ts: int,
        limited: bool = True,
    ) -> None:
        """Burn the overlay into the I420 planes of the frame stamped ``ts``, in place (``u``
        and ``v`` may be None: a grey picture)."""
        black = BLACK if limited else 0
        chroma = [p for p in (u, v) if p is not None]
        for r in self.masks:
            y[r.y : r.y + r.h, r.x : r.x + r.w] = black
            for p in chroma:
                p[r.y // 2 : (r.y + r.h + 1) // 2, r.x // 2 : (r.x + r.w + 1) // 2] = NEUTRAL
        fmt = self.overlay.settings.timestamp
        if not fmt:
            return
        text = time.strftime(fmt, time.localtime(self.overlay.epoch(ts)))
        if text != self._text or self._drawn is None:
            self._text, self._drawn = text, self._draw(text)
        box, ink = self._drawn
        window = y[box.y : box.y + box.h, box.x : box.x + box.w]
        window[...] = black
        window[ink[: window.shape[0], : window.shape[1]]] = WHITE if limited else 255
        for p in chroma:
            p[box.y // 2 : (box.y + box.h + 1) // 2, box.x // 2 : (box.x + box.w + 1) // 2] = (
                NEUTRAL
            )


class Burn:
    """A source's current overlay, worked out per picture size as frames of that size come.

    ``set`` replaces the overlay whole (on the loop); ``plane`` and ``apply_i420`` run on the
    source's thread, which alone fills the per-size cache."""

    def __init__(self) -> None:
        self._current: tuple[Overlay, dict[tuple[int, int], Plane]] | None = None

    def set(self, overlay: Overlay) -> None:
        self._current = (overlay, {}) if overlay.active else None

    @property
    def active(self) -> bool:
        return self._current is not None

    def plane(self, size: tuple[int, int]) -> Plane | None:
        """The overlay for pictures of ``size``, or None when there is nothing to burn."""
        current = self._current
        if current is None:
            return None
        overlay, planes = current
        plane = planes.get(size)
        if plane is None:
            plane = planes[size] = overlay.on(size)
        return plane

    def apply_i420(
        self, yuv: npt.NDArray[np.uint8], ts: int, limited: bool = True
    ) -> npt.NDArray[np.uint8]:
        """Burn into an I420 array of shape ``(h * 3 // 2, w)`` in place; returns it."""
        h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
        plane = self.plane((w, h))
        if plane is not None:
            flat = yuv.reshape(-1)
            n = (h // 2) * (w // 2)
            u = flat[w * h : w * h + n].reshape(h // 2, w // 2)
            v = flat[w * h + n : w * h + 2 * n].reshape(h // 2, w // 2)
            plane.apply(yuv[:h], u, v, ts, limited)
        return yuv
