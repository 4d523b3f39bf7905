"""Motion analysis in pure numpy, cheap enough for a Pi Zero.

Per analysed frame (``MotionAnalyzer.analyse``), on the small grayscale picture:

1. Compare with the previous analysed frame (at more than 6 analysed frames a second, the
   newest one at least ``REFERENCE_S`` older) pixel by pixel, without uint8 wrap-around. A
   still frame, whose largest change is within the noise, stops here. Otherwise a global
   brightness change (auto-exposure, dusk, a light switched on) is compensated first: the
   previous frame is mapped through a 256-entry table fitted, with medians, to the change of a
   sparse sample of pixels, and compared again.
2. Count pixels whose change exceeds the noise level. The level adapts to the sensor: the
   median absolute difference of a sparse sample estimates the noise (every ``NOISE_EVERY``
   frames), and pixels must change by ``NOISE_SIGMAS`` times that (never less than
   ``noise_level``).
3. Group changed pixels into cells of 8x8 picture pixels: eight boolean bytes are read as one
   64-bit word, the eight rows of a cell are added word-wise, and one multiplication sums
   the bytes of the word. A cell moves when enough of its pixels changed, so isolated noisy pixels
   never add up to motion. Masked cells are ignored.
4. Score the frame in moving 16x16 macroblocks *of the main resolution*, which is what
   ``sensitivity`` has always meant; motion is a score above ``sensitivity``.
5. Frames with change only go further, on the changed cells alone (see docs/motion.md):
   thin or speckled change (rain, snow, noise) is set aside (``_solid``); when solid change
   is seen and the change spans the view, camera shake is lined up and forgiven to a pixel
   (``_unshaken``, ``_tolerant_diff``); cells whose texture is the old texture under other
   light, smoothly across neighbours, are light, not content, and so is the rim of a light
   where its brightness ratio slopes across the cell (``_rim``); a frame mostly made of
   light is a lighting change that scores nothing; in clutter (thin change everywhere), a
   cell back as it was two frames ago held a one-frame flash, not content (``_undone``); in
   the dark, changes that glow and have no edge are things right at the lens, lit by the
   IR lamp and out of focus (insects, a spider's strand, drops on the window:
   ``_near_lens``); thin change that stays put frame after frame is compared with a frame
   a second older, where someone coming toward the camera has grown by a solid amount
   (``_slowly``); while the wind blows through a tree (much of the view moving), each
   pixel's range lately is learnt away from objects, and content whose pixels are back
   within it is dappled shade (``_shade``); content cells make objects when they group or
   persist from frame to frame, and the score is the area the objects covered over the
   last ``SWEEP_S`` seconds, or along their whole unbroken track up to ``TRACK_S`` (a
   small object: only the cells joined to it frame by frame), so a small, far, slow
   object adds up.

Cost: what a frame costs on a camera is mostly the number of numpy calls and the Python run
(each one's fixed cost, with caches cold after the decoder ran), not their size. So a still
frame is three full-resolution operations and one maximum; the per-cell tests take the
moving cells in one batch, read a 64-bit word (8 pixels) at a time; per-cell verdicts are
made in plain Python on the few cells that moved, in one pass; and the object stage works on
the cell grid as one Python integer (``_Cells``).

``MotionTracker`` turns scores into events: motion must persist ``min_time`` seconds (on frame
timestamps, not a frame count) to start an event, which ends once no motion was seen for
``quiet`` seconds. The event's onset is the first frame in which motion was seen, looking back
through the frames that led up to the decision.

Rotation needs no work per frame: motion in a rotated picture is the same motion, so only the
mask is turned into the sensor's orientation, once.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pinthesky.errors import ConfigError
from pinthesky.media import US
from pinthesky.settings import MotionSettings, Resolution

log = logging.getLogger(__name__)

CELL = 8
"""Cell size in analysis pixels (eight booleans make one 64-bit word)."""
CELL_MIN_CHANGED = 6
"""Changed pixels (of 64) that make a cell move."""
RELIT_SHARE = 0.25
"""After a global brightness change, this share of ``lightswitch`` already means lighting."""
NOISE_SIGMAS = 3.0
"""Pixels must change by this many noise standard deviations of a frame difference."""
NOISE_EVERY = 8
"""Re-estimate the noise every this many frames (a histogram of a sample is the costly part)."""
NOISE_WEIGHT = 0.51
"""Weight of each new noise estimate: the old one fades by half every ``NOISE_EVERY`` frames."""
LOOKBACK_S = 1.0
"""How far before the first frame over the threshold an event's onset may be dated back."""
GAIN_TRIGGER = 2.0
"""Median brightness change (luma levels) above which the previous frame is relit."""
SHAKE_MIN_CELLS = 3
"""Moving cells from which a frame is checked for camera shake."""
SHAKE_SPREAD = 0.55
"""Share of the rows and of the columns of cells that must move for a frame to be checked."""
SHAKE_MAX = 4
"""Largest shake between two analysed frames that is compensated, in analysis pixels."""
SHAKE_EXPLAINS = 0.5
"""Lining the view up must leave at most this share of the moving cells to be a shake."""
LIGHT_PEDESTAL = 8.0
"""Black level (luma) under the brightness ratio of a relit cell."""
LIGHT_RESIDUAL = 4.0
"""A cell is relit when its texture matches the old one within this many noise variances."""
LIGHT_STEP = float(np.log(1.6))
"""Largest change of the brightness ratio from a relit cell to its neighbours (log)."""
RIM_RESIDUAL = 1.0
"""A cell next to light is lit too when a brightness ratio that varies linearly across it
explains its change within this many noise variances (the rim of a pool of light)..."""
RIM_STEP = 0.15
"""... and its plane meets its neighbours' planes at their borders within this (log ratio)."""
NEAR_DARK = 80.0
"""Things at the lens are looked for while the scene's mean level (the darker frame's) is at
most this: the IR lamp is on, and what is right before it glows."""
NEAR_GLOW = 1.5
"""A cell glows when one of the two frames is there at least this many times as bright as the
scene's median level (over the black level)."""
NEAR_STRONG = 100.0
"""A cell changed strongly (enough for an edge to show) when its mean square change is this
many pixel noise variances..."""
NEAR_LEVEL = 24.0
"""... and at least this squared (luma levels, root mean square)."""
NEAR_CLEAR = 25.0
"""A glowing cell is judged from this many noise variances (and half ``NEAR_LEVEL``): smooth
and bright, it needs no edge to be told from a dim object."""
NEAR_SHARE = 0.01
"""A change is soft when a smooth overlay explains all but this share of it, noise aside
(see ``_near_lens``): an edge in focus leaves a few to tens of percent."""
NEAR_NOISE = 1.5
"""Noise variances a pixel that a smooth overlay leaves unexplained anyway (both frames')."""
NEAR_SHARP = 0.2
"""A group of changed cells is at the lens when at most this share of its strong cells is
sharp..."""
NEAR_GLOWING = 0.1
"""... and at least this share of its clearly changed cells glows and is soft."""
NEAR_FRAMES = 2
"""Faint change where glowing, soft cells were in this many last frames is that thing..."""
NEAR_REACH = 1
"""... or next to them (within this many cells)."""
SLOW_S = 1.0
"""Thin change that stays put is compared with a frame at least this much older..."""
SLOW_FRAMES = 2
"""... when this many frames before had thin change in (or next to) the same cells..."""
SLOW_BUSY = 8
"""... and the frame has fewer content cells than this (more: an object is seen anyway)."""
SOLID_MIN = 2
"""Pixels of a changed cell that must survive a 3x3 erosion for it to hold an object."""
REFERENCE_S = 0.15
"""Each frame is compared with the newest analysed frame at least this much older: at 5
analysed frames a second the previous one, at 10 the one before it. What moves has then moved
about as far between the two whatever the analysis rate (at 10 a second a walker's change
from one frame to the next is thin, and thin change does not count)."""
SWEEP_S = 1.5
"""The score is the area objects covered over this many seconds."""
TRACK_S = 4.0
"""While objects are seen without a break, the score is the area they covered over up to this
many seconds: someone far away and slow covers little ground in ``SWEEP_S``."""
TRACK_LINK = 16
"""An object of at most this many cells sweeps only the cells joined to it frame by frame (a
big one, a group above the sensitivity on its own, takes everything seen lately)."""
TRACK_GAP_S = 0.5
"""Frames with objects at most this far apart are one track, without a break."""
SHADE_REACH = 2
"""Dappled shade: each pixel's range is learnt with its neighbours this far (pixels) around,
as a fleck's edge sways across the ground..."""
SHADE_FADE = 5
"""... and forgets a state it has not seen again by a 2**-this share per analysed frame (the
range keeps a swaying crown's states over several of its swings)."""
SHADE_BUSY = 0.1
"""The wind blows when this share of the view moved in a frame, other than by light (the
ground under a tree)..."""
SHADE_SOLID = 0.05
"""... and, in the dark, this share is content (rain and snow change thinly)..."""
SHADE_PATCHES = 8
"""... or when the content lies in at least this many separate patches (a smaller crown's
flecks, each moving on its own)..."""
SHADE_PATCH_CELLS = 4
"""... of at most this many cells on average (a person, an animal, a car: a few big ones)..."""
SHADE_PATCHY_SOLID = 0.015
"""... together at least this share of the view..."""
SHADE_PATCHY_THIN = 4
"""... and at least a 1/this share of the cells that moved (rain and snow change thinly)..."""
SHADE_MEMORY_S = 5.0
"""... and until this long after the last such frame: the ranges are learnt meanwhile."""
SHADE_ONSET_S = 1.6
"""For this long after the wind got up, any content next to shade is shade too (the flecks
take new states all at once), unless it goes on from the last frame's content..."""
SHADE_ONSET_SHARE = 2.0
"""... when there are this many times more cells of shade (someone big coming close, who
moves much of the view, is mostly not explained)."""
SHADE_UNEXPLAINED = 0.25
"""A content cell is shade when at most this share of its changed pixels lies outside the
range its pixels took lately..."""
SHADE_SPECK = 3
"""... and so is a group of at most this many content cells next to shade (a fleck's state
not seen yet, amid flecks that were)."""
CLUTTER = 0.1
"""Thin change over more than this share of the view is clutter (rain, snow): it is not
counted in objects' extents, and a solid change must outlast a frame (see ``_undone``)."""

_BYTE_SUM = np.uint64(0x0101010101010101)
"""Multiplying by this adds up the eight bytes of a word into its top byte."""
_MIN_CHANGED_TOP = np.uint64(CELL_MIN_CHANGED << 56)
"""``CELL_MIN_CHANGED`` in a word's top byte (see ``MotionAnalyzer._moving``)."""
_SOLID_MIN_TOP = np.uint64(SOLID_MIN << 56)
"""``SOLID_MIN`` in a word's top byte (see ``MotionAnalyzer._solid``)."""
_EIGHT = np.uint64(8)
"""A byte's width in bits: shifting a word by it moves each pixel to its neighbour's byte."""
_PIXELS = CELL * CELL
"""Pixels in a cell."""
_LOG = np.log(np.arange(256, dtype=np.float32) + np.float32(LIGHT_PEDESTAL))
"""Log of each luma level over the black level, to take brightness ratios as differences."""
_INV_SQ = 1 / (np.arange(256, dtype=np.float32) + np.float32(LIGHT_PEDESTAL)) ** 2
"""How much a unit of noise moves the log of each luma level, squared."""


def _plane_basis() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Orthonormal columns spanning what varies linearly across a cell (1, x and y, from
    its centre), and what turns coordinates on them into a level and slopes per pixel."""
    y, x = np.mgrid[0:CELL, 0:CELL].astype(np.float32) - np.float32((CELL - 1) / 2)
    basis = np.stack([np.ones(_PIXELS, np.float32), x.ravel(), y.ravel()], axis=1)
    norms = np.linalg.norm(basis, axis=0)
    return (basis / norms).astype(np.float32), (1 / norms).astype(np.float32)


_PLANE, _PLANE_SCALE = _plane_basis()


def _quadric_basis() -> npt.NDArray[np.float32]:
    """Orthonormal columns spanning what varies smoothly across a cell beyond its level: x,
    y, x*x, x*y, y*y from its centre (each orthogonal to the constant and to each other)."""
    y, x = np.mgrid[0:CELL, 0:CELL].astype(np.float64) - (CELL - 1) / 2
    x2, y2 = x * x - (x * x).mean(), y * y - (y * y).mean()
    basis = np.stack([v.ravel() for v in (x, y, x2, x * y, y2)], axis=1)
    basis /= np.linalg.norm(basis, axis=0)
    return basis.astype(np.float32)


_QUADRIC = _quadric_basis()
_SMOOTH_OUT = (
    np.eye(_PIXELS, dtype=np.float32)
    - np.concatenate([np.full((_PIXELS, 1), 1 / CELL, np.float32), _QUADRIC], axis=1)
    @ np.concatenate([np.full((_PIXELS, 1), 1 / CELL, np.float32), _QUADRIC], axis=1).T
)
"""Removes from a cell's 64 pixels what a quadric across the cell explains (a projector)."""
_SLOPES = np.concatenate(
    [np.ones((1, _PIXELS), np.float32), (np.mgrid[0:CELL, 0:CELL].reshape(2, _PIXELS) - 3.5) / 3.5]
).astype(np.float32)
"""1, y and x across a cell (-1 to 1): what a share that varies linearly is made of."""


def _overlay_residual(
    one: npt.NDArray[np.int32], other: npt.NDArray[np.int32]
) -> npt.NDArray[np.float32]:
    """Per cell, what a smooth overlay and the other picture seen through it, by a share
    that varies linearly across the cell, leave unexplained, either way round (sums of
    squares over the cell's pixels)."""
    a, b = one.astype(np.float32), other.astype(np.float32)
    best = np.full(len(a), np.inf, dtype=np.float32)
    for target, seen in ((a, b), (b, a)):
        t = target @ _SMOOTH_OUT
        o = (seen[:, None, :] * _SLOPES) @ _SMOOTH_OUT
        gram = o @ o.transpose(0, 2, 1) + np.eye(3, dtype=np.float32) * np.float32(1e-3)
        proj = o @ t[:, :, None]
        coef = np.linalg.solve(gram, proj)
        left = np.einsum("ij,ij->i", t, t) - (proj * coef).sum(axis=(1, 2))
        np.minimum(best, left, out=best)
    return best


_TO_BORDER = np.array([1, CELL / 2, CELL / 2], dtype=np.float32)[:, None]
"""A cell's level, and its slopes times the distance from its centre to its borders."""

U8 = npt.NDArray[np.uint8]


class _Past:
    """An analysed frame, kept while later frames may be compared with it, and what was
    worked out from it once (its brightness sample's sum, its profiles)."""

    __slots__ = ("image", "profiles", "sample_sum", "ts")

    def __init__(self, ts: int, image: U8) -> None:
        self.ts = ts
        self.image = image
        self.sample_sum: int | None = None
        self.profiles: tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]] | None = None


@dataclass(slots=True)
class Score:
    ts: int
    """Frame timestamp, microseconds."""
    blocks: float
    """Moving macroblocks at the main resolution."""
    cells: int
    """Analysis cells that changed (before the checks below)."""
    lighting: bool = False
    """The frame was a lighting change and scores nothing."""
    noise: int = 0
    """The pixel change threshold in force."""
    lit: int = 0
    """Changed cells whose change the light explains (same structure, other brightness)."""
    shake: bool = False
    """The whole view moved (camera shake); only what moved against it counts."""
    scattered: int = 0
    """Changed cells rejected as thin or scattered (rain, snow, insects, noise)."""
    objects: int = 0
    """Cells of objects in this frame (grouped, or seen there in the previous frame)."""
    swept: bool = False
    """The score is the area a persisting object covered lately, not one frame's group."""
    near: int = 0
    """Changed cells of things at the lens: smooth change, lit by the lamp (defocused)."""
    grown: int = 0
    """Cells of thin change that stayed put and proved solid over ``SLOW_S`` (something
    growing or creeping: a person walking toward the camera)."""
    shade: int = 0
    """Changed cells of dappled shade: back within the range their pixels took lately."""


class MotionAnalyzer:
    """Scores each analysis frame in moving macroblocks. Not thread-safe: one caller."""

    def __init__(
        self,
        lores: Resolution,
        main: Resolution,
        settings: MotionSettings,
        rotation: int = 0,
    ) -> None:
        self.settings = settings
        self.rows = lores.height // CELL
        self.cols = lores.width // CELL
        self._h = self.rows * CELL
        self._w = self.cols * CELL
        # One analysis cell covers this many 16x16 macroblocks of the main picture.
        self.blocks_per_cell = (CELL * main.width / lores.width / 16) * (
            CELL * main.height / lores.height / 16
        )
        self._geometry = (lores, main, rotation)
        self.cell_mask = build_cell_mask(settings, lores, main, rotation, self.rows, self.cols)
        self.live_cells = int(self.cell_mask.sum())
        self._byte_sum = _byte_sum(self.cell_mask)
        # The row of ones beside each cell's pixels in _classify's batched product.
        self._ones = np.ones((self.rows * self.cols, 1, CELL * CELL), dtype=np.uint8)
        # The analysed frames later ones may still be compared with, oldest first.
        self._past: deque[_Past] = deque()
        self._reference_us = round(REFERENCE_S * US)
        self._sample_size = len(range(4, self._h, 8)) * len(range(4, self._w, 8))
        # The frame compared with now, as it was (see _unshaken).
        self._ref: _Past | None = None
        self._noise = float(settings.noise_level)
        # The pixel change threshold: the noise estimate, rounded (see _update_noise).
        self.noise_level = settings.noise_level
        self._frames = 0
        # Fewer moving cells cannot span SHAKE_SPREAD of the rows and of the columns.
        self._spread_min = max(SHAKE_MIN_CELLS, SHAKE_SPREAD * max(self.rows, self.cols))
        # The object stage works on cell bitboards (see _Cells): a handful of integer
        # operations instead of dozens of numpy calls on a 40x30 grid.
        self._cells = _Cells(self.rows, self.cols)
        # The extents of objects (bitboards) over the last SWEEP_S seconds, by frame
        # timestamp (µs): the swept area follows time whatever the analysis rate.
        self._seen: deque[tuple[int, int]] = deque()
        self._sweep_us = round(SWEEP_S * US)
        self._track_us = round(TRACK_S * US)
        self._gap_us = round(TRACK_GAP_S * US)
        # Where things at the lens were in the last NEAR_FRAMES frames, and next to it.
        self._near_seen: deque[int] = deque(maxlen=NEAR_FRAMES)
        self._near_zone = self._near_now = 0
        # Thin change in the last frames, and frames SLOW_S and more older (see _slowly).
        self._thin_seen: deque[int] = deque(maxlen=SLOW_FRAMES)
        self._thin_now = 0
        self._slow_ref: _Past | None = None
        self._slow_next: _Past | None = None
        self._slow_us = round(SLOW_S * US)
        # The scene's mean level (the darker of the two frames compared, see _analyse).
        self._level = 0.0
        # When the objects seen lately were first seen without a break (see _scored).
        self._track_from = 0
        # Cells next to the previous frame's content and candidates (see _scored).
        self._near_content = self._near_candidates = 0
        # The frame being analysed (its profiles are kept in it, see _unshaken).
        self._now: _Past | None = None
        # Indices of the windows of a column and of a row profile at each shift (_unshaken).
        self._windows = tuple(
            np.arange(2 * SHAKE_MAX + 1)[:, None] + np.arange(size - 1 - 2 * SHAKE_MAX)
            for size in (self._w, self._h)
        )
        # The log brightness ratio of still cells (0), framed by NaN: outside the picture,
        # nothing to compare with (see _smooth_light).
        self._no_gain = np.full((self.rows + 2, self.cols + 2), np.nan, dtype=np.float32)
        self._no_gain[1:-1, 1:-1] = 0
        # Dappled shade (see _shade): the range each pixel (with its neighbours) took
        # lately, while the wind blows (until _shade_until).
        self._shade_hi = self._shade_lo = np.zeros((self._h, self._w), dtype=np.uint8)
        self._shade_until = self._shade_since = -1
        self._shade_onset_us = round(SHADE_ONSET_S * US)
        self._shade_memory_us = round(SHADE_MEMORY_S * US)

    def update_mask(self, settings: MotionSettings) -> None:
        """Take a new mask (image or rectangles) without losing the reference picture."""
        lores, main, rotation = self._geometry
        self.cell_mask = build_cell_mask(settings, lores, main, rotation, self.rows, self.cols)
        self.live_cells = int(self.cell_mask.sum())
        self._byte_sum = _byte_sum(self.cell_mask)
        self.settings = settings

    def analyse(self, luma: U8, ts: int) -> Score:
        self._near_now = self._thin_now = 0
        score = self._analyse(luma, ts)
        if self._thin_now or self._thin_seen:
            self._thin_seen.append(self._thin_now)
            if not any(self._thin_seen):
                self._thin_seen.clear()
        # The frame compared with for slow change: between SLOW_S and twice that older.
        if self._slow_next is None or ts - self._slow_next.ts >= self._slow_us:
            self._slow_ref, self._slow_next = self._slow_next, self._now
        if self._near_now or self._near_zone:
            # Remember where things at the lens were (see _near_groups).
            self._near_seen.append(self._near_now)
            seen = 0
            for bits in self._near_seen:
                seen |= bits
            for _ in range(NEAR_REACH):
                seen = self._cells.near(seen)
            self._near_zone = seen
        return score

    def _analyse(self, luma: U8, ts: int) -> Score:
        cur = luma[: self._h, : self._w]
        if not cur.flags.c_contiguous:
            # Cells are read a 64-bit word at a time (see _cell_words).
            cur = np.ascontiguousarray(cur)
        self._frames += 1
        now = _Past(ts, cur)
        past, last = self._past, self._now
        # The frame compared with, and the one that frame was compared with: a change that
        # undid the last one (_classify). Commonly the last frame and its own.
        ref: _Past | None
        if last is not None and ts - last.ts >= self._reference_us:
            ref, earlier = last, self._ref
        else:
            ref = self._reference(ts)
            earlier = None if ref is None else self._reference(ref.ts)
        self._now, self._ref = now, ref
        past.append(now)
        if ref is None:
            return Score(ts, 0.0, 0, noise=self.noise_level)
        # Older frames will never be compared with again.
        while past[0] is not (earlier or ref):
            past.popleft()
        prev = ref.image
        before = None if earlier is None else earlier.image
        # |cur - prev| without wrapping around in uint8. (Fresh arrays: numpy hands back
        # the memory just freed, still in cache, where kept buffers would have gone cold.)
        diff = np.maximum(cur, prev)
        diff -= np.minimum(cur, prev)
        noise_due = self._frames % NOISE_EVERY == 0
        if diff.max() <= self.noise_level:
            # The common case on a still scene: no pixel changed beyond the noise (one
            # maximum instead of the changed pixels and their cells).
            if noise_due:
                self._update_noise(diff)
            return self._scored(ts, 0, 0)
        # A sparse sample tells whether the whole picture got brighter or darker: its median
        # change ignores a moving object that covers less than half of the picture. Its
        # mean change is cheap, and kept as a sum per frame: only when the mean moved by
        # more than GAIN_TRIGGER / 2 can the (costlier) median have moved by GAIN_TRIGGER.
        sample_sum = now.sample_sum = _sample_sum(cur)
        prev_sum = ref.sample_sum
        if prev_sum is None:
            prev_sum = ref.sample_sum = _sample_sum(prev)
        # The scene's level: the darker of the two (a big thing at the lens brightens the
        # frame it is in).
        self._level = min(sample_sum, prev_sum) / self._sample_size
        relit = False
        if abs(sample_sum - prev_sum) > GAIN_TRIGGER / 2 * self._sample_size:
            prev_s = prev[4::8, 4::8].astype(np.int16)
            step = cur[4::8, 4::8] - prev_s
            relit = abs(_median(step)) > GAIN_TRIGGER
        raw_prev = prev
        if relit:
            # Exposure or light level moved: compare against the previous frame brought to
            # today's brightness, so that only changes of the picture's content count.
            prev = self._relight(prev, prev_s, step)
            diff = np.maximum(cur, prev)
            diff -= np.minimum(cur, prev)
        if noise_due:
            self._update_noise(diff)
        changed, moving = self._moving(diff)
        # The moving cells' rows and columns, found once for the checks below.
        where = np.nonzero(moving)
        n = len(where[0])
        if n == 0:
            # Some pixels changed, never enough of them in one cell (noise).
            return self._scored(ts, 0, n)
        solid = self._solid(changed, where)
        shake = False
        # Lining up a shaken view matters only to solid change: rain and snow, thin change
        # everywhere, would pay for it on every frame.
        if (
            n >= self._spread_min
            and np.count_nonzero(solid) >= SHAKE_MIN_CELLS
            and self._spread(*where)
        ):
            # A shift fools the brightness fit too (the sample's pixels moved): when the
            # previous frame was relit, lining up the frame as it was is tried as well.
            for base in (prev, raw_prev) if relit else (prev,):
                aligned = self._unshaken(cur, base)
                still_changed, still_moving = self._moving(_tolerant_diff(cur, aligned))
                still_where = np.nonzero(still_moving)
                left = len(still_where[0])
                # The view moved if lining it up explains most of the change. Objects
                # moved by more than a pixel and stay; a pool of light sliding across the
                # picture stays too (and is told from objects below).
                if left <= SHAKE_EXPLAINS * n:
                    shake = True
                    prev, changed, moving, where = aligned, still_changed, still_moving, still_where
                    if left == 0:
                        return self._scored(ts, 0, n, shake=True)
                    solid = self._solid(still_changed, where)
                    break
        if relit or shake:
            before = None  # not comparable with a relit or lined-up frame
        lit, scattered, content, near = self._classify(cur, prev, moving, where, solid, before)
        n_lit = lit.bit_count()
        slow = 0
        if scattered and not (relit or shake):
            slow = self._slowly(cur, scattered, content, lit)
            content |= slow
            scattered &= ~slow
        shade = 0
        if content:
            # Rain and snow at night change much of the view, thinly: not a gust of wind.
            busy = n - n_lit >= SHADE_BUSY * self.live_cells and (
                self._level > NEAR_DARK or content.bit_count() >= SHADE_SOLID * self.live_cells
            )
            # A smaller crown's shade: many small patches at once.
            busy = busy or self._patchy(content, n - n_lit)
            shade = self._shade(cur, prev, changed, content, near, busy, ts)
            content &= ~shade
        # Most of the picture changed and the light explains it: the frame is a lighting
        # change (a lamp, an IR switch) and what little remains is not trusted.
        lightswitch = self.settings.lightswitch * (RELIT_SHARE if relit else 1.0)
        if self.live_cells and n_lit > lightswitch * self.live_cells:
            self._near_content = self._near_candidates = 0
            return Score(ts, 0.0, n, lighting=True, noise=self.noise_level, lit=n_lit, shake=shake)
        return self._scored(
            ts,
            content,
            n,
            scattered,
            lit=n_lit,
            shake=shake,
            near=near.bit_count(),
            grown=slow.bit_count(),
            shade=shade.bit_count(),
        )

    def _shade(
        self,
        cur: U8,
        prev: U8,
        changed: npt.NDArray[np.bool_],
        content: int,
        near: int,
        busy: bool,
        ts: int,
    ) -> int:
        """The ``content`` cells (bits) of dappled shade: back within the range of states
        their pixels (and their neighbours) took lately, while the wind blows.

        Sunlight through a tree falls on the ground in flecks between the leaves' shadows;
        in a gust the leaves flutter and the crown sways, and the flecks shift by a few
        pixels and back, change shape, come and go. What the ground shows at a pixel is its
        own texture lit by between the sky's light (in the shade) and full sun: a range that
        a few seconds of gusts cover, at the pixel and at the neighbours a fleck's edge
        swaying by a pixel or two brings over. So each pixel's range (with its neighbours
        ``SHADE_REACH`` around) is learnt, as Motion and OpenCV's subtractors learn a waving
        tree's, widening at once and narrowing slowly; a change whose pixels (almost) all
        fall within it is the shade again. Someone walking through it brings their own
        colours, darker than the shade or brighter than the sun, where they never were:
        outside the range. Cells next to an object do not learn (its colours never become
        the ground).

        The range is kept only while the wind blows: from a frame in which a large part of
        the view moved (``SHADE_BUSY``, the ground under a tree in a gust), or the content
        lay in many small separate patches (``_patchy``, a smaller crown's flecks), until
        ``SHADE_MEMORY_S`` without one; a still picture or a walker costs nothing.
        """
        if busy:
            if self._shade_until < ts:
                # The wind got up: the ground as it was is the range to begin with.
                self._shade_hi = _dilated(prev, np.maximum)
                self._shade_lo = _dilated(prev, np.minimum)
                self._shade_since = ts
            self._shade_until = ts + self._shade_memory_us
        if self._shade_until < ts:
            return 0
        shade = specks = 0
        if content:
            cells = self._cells_at(content)
            hi = _cell_pixels(self._shade_hi, cells).astype(np.int16)
            lo = _cell_pixels(self._shade_lo, cells).astype(np.int16)
            now = _cell_pixels(cur, cells).astype(np.int16)
            words = _cell_words(changed, self.rows)[cells[0], :, cells[1]]
            moved = words.view(np.bool_).reshape(hi.shape)
            hi += self.noise_level
            lo -= self.noise_level
            outside = (now > hi) | (now < lo)
            outside &= moved
            unexplained = np.count_nonzero(outside, axis=2)[:, 0]
            limit = SHADE_UNEXPLAINED * np.count_nonzero(moved, axis=2)[:, 0]
            shade = self._pick(cells, (unexplained <= limit).tolist())
            if shade:
                # While the wind gets up, the flecks take states not seen yet all over the
                # shade at once: what newly changed among them is the shade too. (Not
                # learnt: if it was someone after all, their colours stay out of the range.)
                left = content & ~shade
                onset = (
                    ts - self._shade_since < self._shade_onset_us
                    and shade.bit_count() >= SHADE_ONSET_SHARE * left.bit_count()
                )
                specks = self._specks(left, shade, onset)
                shade |= specks
        keep = self._cells.near((content & ~shade) | near) | specks
        self._shade_learn(cur, keep)
        return shade

    def _patchy(self, content: int, moved: int) -> bool:
        """Whether the ``content`` cells lie in many small separate patches (``SHADE_PATCHES``
        of ``SHADE_PATCH_CELLS`` cells on average at most), as the shade of a crown too small
        to move ``SHADE_BUSY`` of the view changes in a gust: every fleck moves on its own.
        People, animals and vehicles are a few big patches; rain and snow change thinly
        (``moved``, the cells that moved other than by light, outnumber the content cells by
        more than ``SHADE_PATCHY_THIN`` to 1)."""
        cells = content.bit_count()
        if cells < SHADE_PATCHY_SOLID * self.live_cells or moved > SHADE_PATCHY_THIN * cells:
            return False
        need = max(SHADE_PATCHES, cells / SHADE_PATCH_CELLS)
        grid = self._cells
        rest, patches = content, 0
        while rest and patches < need:
            rest &= ~grid.grow(rest & -rest, content)
            patches += 1
        return patches >= need

    def _specks(self, left: int, shade: int, onset: bool) -> int:
        """The groups of ``left`` cells of at most ``SHADE_SPECK`` cells next to ``shade``;
        at the ``onset`` of a gust, any such group but one that goes on from the last
        frame's content (someone already there when the wind got up)."""
        grid = self._cells
        specks = 0
        seeds = left & grid.near(shade)
        while seeds:
            group = grid.grow(seeds & -seeds, left)
            seeds &= ~group
            if group.bit_count() <= SHADE_SPECK or (onset and not group & self._near_content):
                specks |= group
        return specks

    def _shade_learn(self, cur: U8, keep: int) -> None:
        """Widen each pixel's range by ``cur`` (with its neighbours) and narrow it by a share
        towards it, except in the ``keep`` cells (next to objects)."""
        top, bottom = _dilated(cur, np.maximum), _dilated(cur, np.minimum)
        old_hi, old_lo = self._shade_hi, self._shade_lo
        # In uint8 without wrapping around: how far above (below) the frame the range
        # reaches, a share of it forgotten, then widened by the frame.
        fade = old_hi - np.minimum(old_hi, top)
        fade >>= SHADE_FADE
        new_hi = old_hi - fade
        np.maximum(new_hi, top, out=new_hi)
        fade = np.maximum(old_lo, bottom)
        fade -= old_lo
        fade >>= SHADE_FADE
        new_lo = old_lo + fade
        np.minimum(new_lo, bottom, out=new_lo)
        if keep:
            r, c = self._cells_at(keep)
            for new, old in ((new_hi, old_hi), (new_lo, old_lo)):
                _cell_words(new, self.rows)[r, :, c] = _cell_words(old, self.rows)[r, :, c]
        self._shade_hi, self._shade_lo = new_hi, new_lo

    def _cells_at(self, bits: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """The rows and columns of the cells of ``bits``."""
        at = []
        while bits:
            low = bits & -bits
            at.append(low.bit_length() - 1)
            bits ^= low
        flat = np.array(at, dtype=np.intp)
        return flat // self.cols, flat % self.cols

    def _slowly(self, cur: U8, thin: int, content: int, lit: int) -> int:
        """The ``thin`` cells (bits) where something grows or creeps: solid change since a
        frame ``SLOW_S`` or more older.

        Someone walking toward the camera barely moves sideways: they grow, and between two
        frames only their outline moves, by a pixel or less: thin change, as rain's. But
        rain is in new places every frame, while the outline stays where it was (give or
        take a cell) frame after frame; over a second it has moved by a solid amount.
        Checked only on frames with little other content, when thin change is not clutter
        (rain, snow: there the last frames' thin cells are everywhere), and never next to
        light (a light moving or changing over that second is not something growing) or
        where something at the lens just was.
        """
        older, last = self._thin_seen if len(self._thin_seen) == SLOW_FRAMES else (0, 0)
        self._thin_now = thin
        slow_ref = self._slow_ref
        if (
            content.bit_count() >= SLOW_BUSY
            or not older
            or slow_ref is None
            or thin.bit_count() > CLUTTER * self.live_cells
        ):
            return 0
        grid = self._cells
        kept = thin & grid.near(last) & grid.near(older) & ~self._near_zone
        if lit:
            kept &= ~grid.near(lit)
        kept &= grid.crowded(kept)
        if not kept:
            return 0
        cells = self._cells_at(kept)
        then = _cell_pixels(slow_ref.image, cells)
        now = _cell_pixels(cur, cells)
        changed = np.maximum(now, then)
        changed -= np.minimum(now, then)
        solid = _eroded_solid((changed > self.noise_level).view(np.uint64).reshape(-1, CELL))
        return self._pick(cells, solid.tolist())

    def _moving(self, diff: U8) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Changed pixels, and the cells in which enough of them changed.

        ``diff`` is spent: the changed pixels are written over it.
        """
        changed = np.greater(diff, self.noise_level, out=diff.view(np.bool_))
        # Each uint64 holds the 0/1 bytes of 8 neighbouring pixels; summing the 8 rows of a
        # cell keeps every byte <= 8, and the multiply adds the bytes up into the top byte
        # (a count <= 64). The bytes below it hold partial sums (< 2**56), so the count
        # is compared in place, unshifted; masked cells multiply by 0 and never move.
        words = _cell_words(changed, self.rows)
        cells = np.add.reduce(words, axis=1)
        cells *= self._byte_sum
        moving: npt.NDArray[np.bool_] = cells >= _MIN_CHANGED_TOP
        return changed, moving

    def _scored(
        self,
        ts: int,
        content: int,
        n: int,
        scattered: int = 0,
        **why: bool | int,
    ) -> Score:
        """Objects among the content cells, and the score: the area they swept lately.

        ``content`` and ``scattered`` are cell bitboards (see ``_Cells``).

        A candidate is a group of content cells (a cell with two content neighbours), or a
        content cell next to where content was in the previous frame. An object is a
        candidate next to a candidate of the previous frame: it persisted. Rain and snow
        light cells in new places every frame; a person, even a small and far one, is
        still there one frame later. While objects are seen, the score is the area they
        (with the thin changes attached to them) covered over the last ``SWEEP_S`` seconds,
        or since they were first seen if they were seen without a break (up to ``TRACK_S``),
        so a distant walker whose every frame shows a few cells adds up to the metres she
        walked, even slowly; something that only sways covers the same cells again and adds
        nothing. A group big enough to pass the sensitivity on its own counts at once.
        """
        n_scattered = scattered.bit_count()
        if not content:
            self._near_content = self._near_candidates = 0
            return Score(ts, 0.0, n, noise=self.noise_level, scattered=n_scattered, **why)  # type: ignore[arg-type]
        grid = self._cells
        found = content
        # "With two content neighbours": three or more content cells in its 3x3 box.
        grouped = grid.crowded(found) & found
        candidates = (self._near_content & found) | grouped
        objects = self._near_candidates & candidates
        self._near_content, self._near_candidates = grid.near(found), grid.near(candidates)
        if objects:
            # The object's extent: its cells and the changed cells touching them, unless
            # thin change is everywhere (rain): then it tells nothing of the object.
            extent = found
            if n_scattered <= CLUTTER * self.live_cells:
                extent |= scattered
            extent &= grid.near(objects)
            seen = self._seen
            if not seen or ts - seen[-1][0] > self._gap_us:
                self._track_from = ts
            seen.append((ts, extent))
            # The last SWEEP_S seconds, or the whole track up to TRACK_S.
            horizon = ts - max(self._sweep_us, min(ts - self._track_from, self._track_us))
            while seen[0][0] < horizon:
                seen.popleft()
            swept_cells = 0
            if extent.bit_count() <= TRACK_LINK:
                # A small object adds up only its own path: what it covered frame by frame
                # back from where it is, not what others (gone now) covered meanwhile.
                linked = extent
                for _, cells in reversed(seen):
                    linked = cells & grid.near(linked)
                    if not linked:
                        break
                    swept_cells |= linked
            else:
                for _, cells in seen:
                    swept_cells |= cells
            swept = swept_cells.bit_count()
        else:
            swept = 0
        group = grouped.bit_count()
        return Score(
            ts,
            max(swept, group) * self.blocks_per_cell,
            n,
            noise=self.noise_level,
            scattered=n_scattered,
            objects=objects.bit_count(),
            swept=swept > group,
            **why,  # type: ignore[arg-type]
        )

    def _spread(self, r: npt.NDArray[np.intp], c: npt.NDArray[np.intp]) -> bool:
        """Whether the moving cells reach across the picture, as a shaken view's edges do.

        A cheap gate before the shake check: one object, however close, moves in a part of
        the rows or the columns of the picture, not in most of both.
        """
        rows = len(set(r.tolist()))
        cols = len(set(c.tolist()))
        return rows >= SHAKE_SPREAD * self.rows and cols >= SHAKE_SPREAD * self.cols

    def _unshaken(self, cur: U8, prev: U8) -> U8:
        """``prev`` moved by the whole pixels that best line it up with ``cur``.

        The slopes of the column and row profiles of the two frames are compared at shifts
        of up to ``SHAKE_MAX`` pixels: a moving object changes the profiles where it is, a
        shaking camera shifts all of them. What is left below a pixel is absorbed by the
        tolerant difference that follows.
        """
        shifts: list[int] = []
        cur_p = self._profile_of(self._now, cur)
        prev_p = self._profile_of(self._ref, prev)
        for pc, pp, windows in zip(cur_p, prev_p, self._windows, strict=True):
            # Row k of pc[windows] is the current profile moved by k - SHAKE_MAX.
            sad = np.abs(pc[windows] - pp[SHAKE_MAX : len(pp) - SHAKE_MAX]).sum(axis=1)
            shifts.append(int(np.argmin(sad)) - SHAKE_MAX)
        dx, dy = shifts
        if dx == 0 and dy == 0:
            return prev
        return _shifted(prev, dy, dx)

    @staticmethod
    def _profile_of(
        past: _Past | None, image: U8
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
        """The profiles of ``image``, kept in ``past`` when it is that frame as it was."""
        if past is None or past.image is not image:
            return (_profile(image, 0), _profile(image, 1))
        if past.profiles is None:
            past.profiles = (_profile(image, 0), _profile(image, 1))
        return past.profiles

    def _reference(self, ts: int) -> _Past | None:
        """The newest kept frame at least ``REFERENCE_S`` older than ``ts``; the oldest kept
        one if none is that old yet (at the start); None if there is none before ``ts``."""
        oldest = None
        for past in reversed(self._past):
            if past.ts >= ts:
                continue
            if ts - past.ts >= self._reference_us:
                return past
            oldest = past
        return oldest

    def _solid(
        self, changed: npt.NDArray[np.bool_], where: tuple[npt.NDArray[np.intp], ...]
    ) -> npt.NDArray[np.bool_]:
        """Which moving cells hold a solid change, not thin lines and specks.

        A change made of thin lines and specks (rain streaks, snowflakes, noise, the edges of
        a view shifted by a pixel or two) leaves (almost) nothing after a 3x3 erosion.
        """
        r, c = where
        return _eroded_solid(_cell_words(changed, self.rows)[r, :, c])

    def _classify(
        self,
        cur: U8,
        prev: U8,
        moving: npt.NDArray[np.bool_],
        where: tuple[npt.NDArray[np.intp], ...],
        solid: npt.NDArray[np.bool_],
        before: U8 | None = None,
    ) -> tuple[int, int, int, int]:
        """Split the moving cells into lit, scattered, content and things at the
        lens (bitboards; see ``_near_lens``).

        Only the moving cells are gathered (a few percent of the picture on a busy frame),
        so these checks cost in proportion to what moved.

        Scattered: the cells without a solid change (``_solid``), and, in clutter, the cells
        whose change undid the last one: back to how they were in the frame ``before`` the
        previous one, they held something for one frame only (a raindrop lit by the IR lamp).
        A frame difference shows such a flash twice, as it comes and as it goes, in the same
        place: it would look like something that stayed. Lit: light multiplies what is
        there, so the cell's texture is the old texture times the brightness ratio of the two
        cells, within the sensor noise (a headlight pool, a cloud's shadow, an IR lamp), and
        at the rim of a light that ratio slopes across the cell (``_rim``); only solid cells
        are tested for light.
        """
        r, c = where
        solid_list = solid.tolist()
        n_solid = sum(solid_list)
        cols = self.cols
        if not n_solid:
            return 0, _bits(moving), 0, 0
        if len(solid_list) - n_solid <= CLUTTER * self.live_cells:
            before = None  # few flashes to tell from objects: not worth the extra frame
        # Each tested cell's pixels in cur and prev, and ones, as the rows of a 3x64 matrix;
        # one batched product gives every cell's sums, sums of squares and of products, in
        # int32 (exact: below 64 * 255**2), by numpy's own loop rather than a BLAS call a cell.
        # Mostly solid cells (an object) are all taken: picking the solid ones out costs
        # more calls than the sums of a few others. Mostly thin ones (rain) are picked out.
        every = 2 * n_solid >= len(solid_list)
        tested = (r, c) if every else (r[solid], c[solid])
        n = len(tested[0])
        # The rows are cur, prev, ones (and the frame before last, in clutter).
        parts = [_cell_pixels(cur, tested), _cell_pixels(prev, tested), self._ones[:n]]
        if before is not None:
            parts.append(_cell_pixels(before, tested))
        pixels = np.concatenate(parts, axis=1, dtype=np.int32)
        sums = (pixels[:, :3] @ pixels[:, :2].transpose(0, 2, 1)).reshape(n, 6)
        moments = iter(sums.tolist())
        inv = 1 / _PIXELS
        pedestal = LIGHT_PEDESTAL
        # Noise of one pixel (the change threshold is NOISE_SIGMAS sigmas of a difference).
        pixel_var = (self._noise / NOISE_SIGMAS) ** 2 / 2
        limit = LIGHT_RESIDUAL * pixel_var
        # One pass over the cells, in plain Python (cheaper than the numpy calls that would
        # scatter the verdicts): thin cells are scattered; solid ones are content unless the
        # brightness ratio explains their change (then smoothness decides, below).
        scattered = content = 0
        gains: list[float] = []
        lit: list[tuple[int, int]] = []
        if every:
            cells = zip(r.tolist(), c.tolist(), solid_list, strict=True)
        else:
            # Mostly thin cells (rain lights hundreds) are not visited one by one: they are
            # the moving cells that are not solid (below).
            cells = zip(tested[0].tolist(), tested[1].tolist(), repeat(True))
        for row, col, is_solid in cells:
            at = row * cols + col
            if not is_solid:
                scattered |= 1 << at
                next(moments)
                continue
            syy, sxy, _, sxx, sy, sx = next(moments)
            my, mx = sy * inv, sx * inv
            # The brightness ratio; a small pedestal stands for the sensor's black level.
            gain = (my + pedestal) / (mx + pedestal)
            # Variance of y - gain * x: what the brightness ratio does not explain.
            offset = my - gain * mx
            gain2 = gain * gain
            residual = (syy - 2 * gain * sxy + gain2 * sxx) * inv - offset * offset
            if residual <= limit * (1 + gain2):
                lit.append((len(gains), at))
            else:
                content |= 1 << at
            gains.append(gain)
        if not every:
            # Every tested cell is solid: content, or explained by the light.
            solid_cells = content
            for _, at in lit:
                solid_cells |= 1 << at
            scattered = _bits(moving) & ~solid_cells
        lit_cells = 0
        if lit:
            # Explained cells are lit only where the light varies smoothly (_smooth_light).
            smooth = self._smooth_light(r[solid], c[solid], np.array(gains, dtype=np.float32))
            smooth_list = smooth.tolist()
            for index, at in lit:
                if smooth_list[index]:
                    lit_cells |= 1 << at
                else:
                    content |= 1 << at
        if before is not None and content:
            flashes = self._undone(pixels, tested)
            scattered |= content & flashes
            content &= ~flashes
        if lit_cells and content:
            # The rim of a light, where its brightness falls off across a cell, grows from
            # the lit cells through content cells that a sloping brightness ratio explains.
            rim = self._rim(pixels, tested, content, RIM_RESIDUAL * pixel_var)
            if rim:
                grown = self._cells.grow(lit_cells, rim)
                content &= ~grown
                lit_cells = grown
        near = 0
        if content and self._level <= NEAR_DARK:
            # The IR lamp is on in the dark only: by day nothing at the lens glows.
            near = self._near_lens(cur, pixels, sums, tested, content, pixel_var)
            content &= ~near
        return lit_cells, scattered, content, near

    def _near_lens(
        self,
        cur: U8,
        pixels: npt.NDArray[np.int32],
        sums: npt.NDArray[np.int32],
        tested: tuple[npt.NDArray[np.intp], ...],
        content: int,
        pixel_var: float,
    ) -> int:
        """The ``content`` cells (bits) of things right at the lens: defocused and bright.

        Something a few centimetres from the lens (an insect at the IR lamp, a spider's
        strand, a drop on the window) is blurred over many pixels, and the lamp beside the
        lens lights it far more than the scene: a strong change without an edge. Within a
        cell such a change is a smooth overlay (quadric across the cell) plus the old picture
        seen through it, scaled (either way round: it came or it went). An object in focus
        has edges and texture of its own that no such overlay explains. A flat object on a
        flat ground is explained too (nothing tells them apart inside it), but not at its
        outline: so the verdict is given per group of cells (``_near_groups``).
        """
        zone = self._near_zone & content
        syy, sxy, sxx = (sums[:, k].astype(np.float32) for k in (0, 1, 3))
        energy = syy - 2 * sxy + sxx
        strong = energy >= _PIXELS * max(NEAR_STRONG * pixel_var, NEAR_LEVEL**2)
        # Lit by the lamp a few centimetres away, it outshines the scene (in one frame).
        clear = energy >= _PIXELS * max(NEAR_CLEAR * pixel_var, (NEAR_LEVEL / 2) ** 2)
        # The scene's level: the median of a sparse sample (what glows is a small part).
        level = _median(cur[4::8, 4::8])
        bright = _PIXELS * NEAR_GLOW * (level + LIGHT_PEDESTAL)
        glowing = clear & (np.maximum(sums[:, 4], sums[:, 5]) >= bright)
        if not glowing.any():
            return self._near_groups(zone, 0, 0, content, 0) if zone else 0
        n = len(sums)
        # Each cell's cur and prev on the quadric shapes (orthonormal), and on the constant.
        shaped = (pixels[:, :2].astype(np.float32).reshape(2 * n, _PIXELS) @ _QUADRIC).reshape(
            n, 2, -1
        )
        mean_c, mean_p = sums[:, 4] * np.float32(1 / CELL), sums[:, 5] * np.float32(1 / CELL)
        cc = syy - mean_c * mean_c - np.einsum("ik,ik->i", shaped[:, 0], shaped[:, 0])
        pp = sxx - mean_p * mean_p - np.einsum("ik,ik->i", shaped[:, 1], shaped[:, 1])
        cp = sxy - mean_c * mean_p - np.einsum("ik,ik->i", shaped[:, 0], shaped[:, 1])
        # What the overlay and a non-negative share of the other picture leave unexplained:
        # the thing came (cur is prev seen through it) or went (prev is cur seen through
        # it).
        np.maximum(cp, 0, out=cp)
        cp *= cp
        residual = np.minimum(cc - cp / np.maximum(pp, 1.0), pp - cp / np.maximum(cc, 1.0))
        # Less what the noise of the two frames leaves anyway.
        residual -= _PIXELS * NEAR_NOISE * pixel_var
        soft_array = residual <= NEAR_SHARE * energy
        # Where both frames see the scene through it (it moved a little), how much of the
        # scene shows through varies across the cell: try that on the glowing rest.
        retry = np.flatnonzero(glowing & ~soft_array)
        if len(retry):
            again = _overlay_residual(pixels[retry, 0], pixels[retry, 1])
            again -= _PIXELS * NEAR_NOISE * pixel_var
            soft_array[retry] = again <= NEAR_SHARE * energy[retry]
        soft = soft_array.tolist()
        strong_list, glowing_list = strong.tolist(), glowing.tolist()
        soft_bits = self._pick(tested, [a and b for a, b in zip(glowing_list, soft, strict=True)])
        soft_bits &= content
        if not soft_bits and not zone:
            return 0
        sharp = [a and not b for a, b in zip(strong_list, soft, strict=True)]
        sharp_bits = self._pick(tested, sharp) & content
        clear_bits = self._pick(tested, clear.tolist()) & content
        return self._near_groups(zone | soft_bits, soft_bits, sharp_bits, content, clear_bits)

    def _near_groups(self, seeds: int, soft: int, sharp: int, content: int, clear: int) -> int:
        """The groups of ``content`` cells from ``seeds`` that are at the lens (bits).

        A group is when (almost) none of its strong cells is sharp and a share of its
        clearly changed cells is soft and glows; or, with neither (too faint to tell an
        edge from noise), when it lies where glowing, soft cells were in the last frames:
        the faint end of a swinging strand, the tail of a running drop.
        """
        near = 0
        zone = self._near_zone
        while seeds:
            group = self._cells.grow(seeds & -seeds, content)
            seeds &= ~group
            n_soft, n_sharp = (group & soft).bit_count(), (group & sharp).bit_count()
            if n_soft + n_sharp:
                glows = n_soft >= NEAR_GLOWING * (group & clear).bit_count()
                if glows and n_sharp <= NEAR_SHARP * (n_soft + n_sharp):
                    near |= group
                    # Only the cells seen at the lens by their own change mark where it is.
                    self._near_now |= group & soft
            elif not group & ~zone:
                near |= group
        return near

    def _undone(
        self, pixels: npt.NDArray[np.int32], tested: tuple[npt.NDArray[np.intp], ...]
    ) -> int:
        """The tested cells that are back as they were in the frame before last (bits).

        ``pixels`` holds, per cell, the rows cur, prev, ones and before. Back means that
        what still differs from ``before`` is thin or specks (noise, other raindrops): no
        solid change, as ``_solid`` tells it.
        """
        changed = np.abs(pixels[:, 0] - pixels[:, 3]) > self.noise_level
        # A cell's 64 booleans are its 8 rows' words, as _solid reads them.
        solid = _eroded_solid(changed.view(np.uint64))
        return self._pick(tested, (~solid).tolist())

    def _rim(
        self,
        pixels: npt.NDArray[np.int32],
        tested: tuple[npt.NDArray[np.intp], ...],
        content: int,
        limit: float,
    ) -> int:
        """Which ``content`` cells (bits) changed as light falling off across them would.

        Light multiplies what is there; near the edge of a pool the factor falls off across
        the cell. The log of the brightness ratio then is a plane over the cell's pixels, up
        to noise (weighed per pixel: a dark pixel's ratio is noisier; ``limit`` is the
        variance allowed per pixel), and the plane meets its neighbours' planes at the
        cells' borders: light has no edges. An object puts its own texture in the ratio,
        or, flat on a flat background, its ratio jumps at the borders of the cells.
        """
        r, c = tested
        ratio = _LOG[pixels[:, 0]] - _LOG[pixels[:, 1]]
        coef = ratio @ _PLANE
        off = ratio - coef @ _PLANE.T
        off *= off
        off /= _INV_SQ[pixels[:, 0]] + _INV_SQ[pixels[:, 1]]
        planar = off.sum(axis=1) <= limit * _PIXELS
        # Each cell's plane as (level, slope across, slope down) on the grid; a cell that
        # did not change is level 0, flat; outside the picture NaN, never compared.
        planes = np.zeros((3, self.rows + 2, self.cols + 2), dtype=np.float32)
        planes[0] = self._no_gain
        planes[:, r + 1, c + 1] = (coef * _PLANE_SCALE).T
        planes *= _TO_BORDER[:, :, None]
        level, across, down = planes[:, r + 1, c + 1]
        step = np.zeros_like(level)
        for dy, dx, here in (
            (1, 2, level + across),
            (1, 0, level - across),
            (2, 1, level + down),
            (0, 1, level - down),
        ):
            there = planes[:, r + dy, c + dx]
            # The neighbour's plane at the shared border: its level, less its slope
            # towards us.
            meet = there[0] - (dx - 1) * there[1] - (dy - 1) * there[2]
            np.fmax(step, np.abs(here - meet), out=step)
        within = (planar & (step <= RIM_STEP)).tolist()
        return self._pick(tested, within) & content

    def _pick(self, cells: tuple[npt.NDArray[np.intp], ...], flags: list[bool]) -> int:
        """The cells at (rows, cols) ``cells`` whose flag is set, as bits."""
        bits = 0
        cols = self.cols
        for row, col, flag in zip(cells[0].tolist(), cells[1].tolist(), flags, strict=True):
            if flag:
                bits |= 1 << (row * cols + col)
        return bits

    def _smooth_light(
        self, r: npt.NDArray[np.intp], c: npt.NDArray[np.intp], gain: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.bool_]:
        """Which of the cells at (r, c) brightened by about as much as their four neighbours.

        A flat cell that changed brightness has no texture to tell light from an object.
        Light varies smoothly across the picture (a pool, a shadow, a lamp); an object
        replaces neighbouring cells of different brightness by its own, so their brightness
        ratios jump from cell to cell and to the unchanged cells around it.
        """
        log_gain = self._no_gain.copy()
        log_gain[r + 1, c + 1] = np.log(gain)
        centre = log_gain[r + 1, c + 1]
        step = np.zeros_like(centre)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            # fmax passes over the NaN of a neighbour outside the picture.
            np.fmax(step, np.abs(centre - log_gain[r + dy, c + dx]), out=step)
        smooth: npt.NDArray[np.bool_] = step <= LIGHT_STEP
        return smooth

    @staticmethod
    def _relight(prev: U8, prev_s: npt.NDArray[np.int16], step: npt.NDArray[np.int16]) -> U8:
        """``prev`` mapped through the brightness change seen in the sample.

        Light changes are gain and offset: dark and bright pixels move by different amounts.
        The median change of the darker and of the brighter half of the sample gives two
        points of that line, robust to whatever moved meanwhile.
        """
        p = prev_s.ravel()
        d = step.ravel()
        split = _median(p)
        dark, bright = p <= split, p > split
        if not dark.any() or not bright.any():
            levels = np.arange(256) + _median(d)
        else:
            x0, x1 = _median(p[dark]), _median(p[bright])
            y0, y1 = _median(d[dark]), _median(d[bright])
            slope = (y1 - y0) / (x1 - x0) if x1 > x0 else 0.0
            levels = np.arange(256) + y0 + slope * (np.arange(256) - x0)
        table = np.clip(levels + 0.5, 0, 255).astype(np.uint8)
        relit: U8 = table[prev]
        return relit

    def _update_noise(self, diff: U8) -> None:
        sample = diff[2::4, 2::4].ravel()
        # The middle value of the sample: the first level whose running count of pixels
        # passes the middle index. A histogram costs less than a partition, and the noise
        # levels are few: plain Python walks them for less than numpy's cumsum and search.
        half = sample.size // 2
        running = 0
        median = 0.0
        for level, count in enumerate(np.bincount(sample).tolist()):
            running += count
            if running > half:
                median = float(level)
                break
        # For Gaussian noise the median absolute value is 0.6745 sigma; smooth over time so
        # one busy frame does not swing the threshold.
        estimate = max(float(self.settings.noise_level), NOISE_SIGMAS * median / 0.6745)
        self._noise += NOISE_WEIGHT * (estimate - self._noise)
        self.noise_level = round(self._noise)


def _sample_sum(image: U8) -> int:
    """The sum of a sparse sample of ``image``: every 8th pixel of every 8th row."""
    return int(np.add.reduce(image[4::8, 4::8], axis=None, dtype=np.int64))


def _median(values: npt.NDArray[np.int16] | U8) -> float:
    """The median of ``values``, as ``np.median`` gives it, for one partition of them."""
    k = values.size // 2
    if values.size % 2:
        return float(np.partition(values, k, axis=None)[k])
    low, high = np.partition(values, (k - 1, k), axis=None)[k - 1 : k + 1].tolist()
    return float(low + high) / 2


def _profile(image: U8, axis: int) -> npt.NDArray[np.int32]:
    """Slope of the picture's profile along one axis (sum of every 2nd line across ``axis``)."""
    lines = image[::2] if axis == 0 else image[:, ::2]
    profile = np.add.reduce(lines, axis=axis, dtype=np.int32)
    # Its slope, not its level: edges move with the camera, a broad light pool hardly
    # changes the slope.
    slope: npt.NDArray[np.int32] = np.diff(profile)
    return slope


def _shifted(image: U8, dy: int, dx: int) -> U8:
    """``image`` moved by (dx, dy), edges repeated: ``image[y - dy, x - dx]`` lands on (y, x)."""
    h, w = image.shape
    out = np.empty_like(image)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    if dy > 0:
        out[:dy] = out[dy]
    elif dy < 0:
        out[dy:] = out[dy - 1]
    if dx > 0:
        out[:, :dx] = out[:, dx : dx + 1]
    elif dx < 0:
        out[:, dx:] = out[:, dx - 1 : dx]
    return out


def _outside(cur: U8, prev: U8) -> U8:
    """How far each pixel of ``cur`` lies outside the range of its 3x3 neighbours in ``prev``.

    The frame's one-pixel border is not compared (0).
    """
    hi = np.maximum(prev[:, :-2], prev[:, 1:-1])
    np.maximum(hi, prev[:, 2:], out=hi)
    lo = np.minimum(prev[:, :-2], prev[:, 1:-1])
    np.minimum(lo, prev[:, 2:], out=lo)
    hi3 = np.maximum(hi[:-2], hi[1:-1])
    np.maximum(hi3, hi[2:], out=hi3)
    lo3 = np.minimum(lo[:-2], lo[1:-1])
    np.minimum(lo3, lo[2:], out=lo3)
    inner = cur[1:-1, 1:-1]
    # (cur - hi)+ and (lo - cur)+ in uint8 without wrapping; one of them is 0.
    above = np.maximum(inner, hi3)
    above -= hi3
    below = lo3 - np.minimum(inner, lo3)
    out = np.zeros_like(cur)
    np.maximum(above, below, out=out[1:-1, 1:-1])
    return out


def _tolerant_diff(cur: U8, prev: U8) -> U8:
    """A difference that forgives moves of up to a pixel, both ways.

    After a shake is compensated to the nearest pixel, up to a pixel of sway remains, and an
    edge moved by less than a pixel takes a value between its neighbours: it does not count.
    Anything that moved further does, whether it appeared (``cur`` outside ``prev``'s range)
    or went away (``prev`` outside ``cur``'s range: a snowflake that fell on).
    """
    diff = _outside(cur, prev)
    np.maximum(diff, _outside(prev, cur), out=diff)
    return diff


def _cell_words(
    image: npt.NDArray[np.uint8] | npt.NDArray[np.bool_], rows: int
) -> npt.NDArray[np.uint64]:
    """``image`` as (cell row, row in the cell, cell column) 64-bit words of 8 pixels each.

    ``[r, :, c]`` on it picks cells' pixels a word at a time: far cheaper than a byte at a
    time. ``image`` must be C-contiguous (see ``MotionAnalyzer.analyse``).
    """
    return image.view(np.uint64).reshape(rows, CELL, -1)


def _eroded_solid(m: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """Per cell, given as 8 words (one per row of the cell, a 0/1 byte per pixel), whether
    ``SOLID_MIN`` pixels survive a 3x3 erosion inside the cell."""
    # Each row with the rows above and below, then each byte with its neighbours in the
    # word. A cell's border pixels never survive.
    core = m[:, :-2] & m[:, 1:-1]
    core &= m[:, 2:]
    side = core << _EIGHT
    side &= core >> _EIGHT
    core &= side
    # The survivors' bytes of the six rows added up, then the bytes of the sum (as in
    # _moving): the top byte counts the pixels that survived.
    kept = np.add.reduce(core, axis=1)
    kept *= _BYTE_SUM
    solid: npt.NDArray[np.bool_] = kept >= _SOLID_MIN_TOP
    return solid


def _cell_pixels(image: U8, cells: tuple[npt.NDArray[np.intp], ...]) -> U8:
    """The 64 pixels of each cell at (rows, cols) ``cells``, as (cells, 1, 64)."""
    rows = image.shape[0] // CELL
    words = _cell_words(image, rows)[cells[0], :, cells[1]]
    return words.view(np.uint8).reshape(len(words), 1, _PIXELS)


def _dilated(image: U8, op: np.ufunc) -> U8:
    """``image`` at the most (``np.maximum``) or least (``np.minimum``) of each pixel's
    neighbours ``SHADE_REACH`` around (the window is cut at the picture's edges)."""
    out = image.copy()
    for d in range(1, SHADE_REACH + 1):
        op(out[d:], image[:-d], out=out[d:])
        op(out[:-d], image[d:], out=out[:-d])
    rows = out.copy()
    for d in range(1, SHADE_REACH + 1):
        op(out[:, d:], rows[:, :-d], out=out[:, d:])
        op(out[:, :-d], rows[:, d:], out=out[:, :-d])
    return out


def _bits(grid: npt.NDArray[np.bool_]) -> int:
    """A grid of cells as a bitboard (see ``_Cells``): bit ``row * cols + col``."""
    return int.from_bytes(np.packbits(grid, bitorder="little").tobytes(), "little")


def _byte_sum(cell_mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint64]:
    """Per cell, the multiplier that adds up a word's bytes: 0 where the cell is masked."""
    return np.where(cell_mask, _BYTE_SUM, np.uint64(0))


class _Cells:
    """A grid of cells as one Python integer: bit ``row * cols + col`` is a cell.

    Neighbourhoods are shifts and masks of the whole grid at once, which costs far less
    than numpy calls on a grid this small.
    """

    def __init__(self, rows: int, cols: int) -> None:
        self.rows, self.cols = rows, cols
        self.size = rows * cols
        self.full = (1 << self.size) - 1
        first_col = sum(1 << (r * cols) for r in range(rows))
        # Moving the grid a cell right (left) wraps each row's last (first) cell onto the
        # next (previous) row's first (last) one: those bits are cleared.
        self.not_first_col = self.full & ~first_col
        self.not_last_col = self.full & ~(first_col << (cols - 1))

    def _rows3(self, x: int) -> tuple[int, int, int]:
        """Each cell, and its left and right neighbour moved onto it."""
        return x, (x << 1) & self.not_first_col, (x >> 1) & self.not_last_col

    def near(self, x: int) -> int:
        """Cells in or next to (8 neighbours) a cell of ``x``."""
        mid, left, right = self._rows3(x)
        row = mid | left | right
        return row | ((row << self.cols) & self.full) | (row >> self.cols)

    def grow(self, seed: int, within: int) -> int:
        """``seed`` and the cells of ``within`` joined to it through each other."""
        while more := self.near(seed) & within & ~seed:
            seed |= more
        return seed

    def crowded(self, x: int) -> int:
        """Cells whose 3x3 box holds at least three cells of ``x``."""
        one = two = three = 0
        for row in self._rows3(x):
            for b in (row, (row << self.cols) & self.full, row >> self.cols):
                three |= two & b
                two |= one & b
                one |= b
        return three


def build_cell_mask(
    settings: MotionSettings,
    lores: Resolution,
    main: Resolution,
    rotation: int,
    rows: int,
    cols: int,
) -> npt.NDArray[np.bool_]:
    """Which analysis cells count: False where the mask image is dark or a rectangle covers.

    The mask image and rectangles are drawn on the picture as the viewer sees it (rotated);
    the analysis runs on the sensor's orientation, so the mask is turned back once here.
    """
    turns = (rotation // 90) % 4
    # Viewer's picture size at the main resolution.
    vw, vh = (main.height, main.width) if turns % 2 else (main.width, main.height)
    keep = np.ones((vh, vw), dtype=bool)
    if settings.mask is not None:
        keep &= load_mask_image(settings.mask, vw, vh)
    for r in settings.mask_rects:
        keep[r.y : r.y + r.h, r.x : r.x + r.w] = False
    # Back to sensor orientation: the viewer sees the sensor turned clockwise by `rotation`.
    keep = np.rot90(keep, k=turns)
    sensor_h, sensor_w = keep.shape
    # A cell counts when most of the main-resolution pixels it covers are kept.
    ys = (np.arange(rows) + 0.5) * CELL * sensor_h / lores.height
    xs = (np.arange(cols) + 0.5) * CELL * sensor_w / lores.width
    cell = keep[np.clip(ys.astype(int), 0, sensor_h - 1)][
        :, np.clip(xs.astype(int), 0, sensor_w - 1)
    ]
    return np.ascontiguousarray(cell)


def load_mask_image(path: Path, width: int, height: int) -> npt.NDArray[np.bool_]:
    """A mask image scaled to ``width`` x ``height``: True where the picture is analysed."""
    import av

    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            gray = frame.reformat(width=width, height=height, format="gray").to_ndarray()
    except (av.FFmpegError, OSError, StopIteration) as exc:
        raise ConfigError([f"motion.mask = '{path}': cannot read image: {exc}"]) from None
    return np.asarray(gray >= 128)


@dataclass(frozen=True, slots=True)
class MotionStarted:
    """Motion persisted long enough: an event starts."""

    onset: int
    """Timestamp of the first frame in which this motion was seen (µs)."""
    declared: int
    """Timestamp of the frame that confirmed it (µs)."""


@dataclass(frozen=True, slots=True)
class MotionSeen:
    """Motion seen in a frame while an event is on."""

    ts: int


@dataclass(frozen=True, slots=True)
class MotionEnded:
    """No motion for ``quiet`` seconds: the event is over."""

    last_seen: int
    """Timestamp of the last frame with motion (µs)."""


MotionEvent = MotionStarted | MotionSeen | MotionEnded


class MotionTracker:
    """Turns per-frame scores into motion events, on frame timestamps only."""

    def __init__(self, sensitivity: int, min_time: float, quiet: float) -> None:
        self.sensitivity = sensitivity
        self.min_time_us = round(min_time * US)
        self.quiet_us = round(quiet * US)
        self._candidate: int | None = None
        self._active = False
        self._last_seen = 0
        # Recent (ts, blocks) to find where a confirmed motion really started.
        self._recent: deque[tuple[int, float]] = deque(maxlen=64)

    def update(self, score: Score) -> list[MotionEvent]:
        moving = not score.lighting and score.blocks > self.sensitivity
        # While an event is on, half the sensitivity keeps it going (hysteresis), so a
        # walker who is briefly small in the picture does not split the event.
        ongoing = not score.lighting and score.blocks > self.sensitivity / 2
        events: list[MotionEvent] = []
        if self._active:
            if ongoing:
                self._last_seen = score.ts
                events.append(MotionSeen(score.ts))
            elif score.ts - self._last_seen >= self.quiet_us:
                self._active = False
                events.append(MotionEnded(self._last_seen))
        elif self._candidate is not None and (ongoing or moving):
            if score.ts - self._candidate >= self.min_time_us:
                events.append(self._start(score.ts))
        elif moving:
            self._candidate = score.ts
            if self.min_time_us == 0:
                events.append(self._start(score.ts))
        else:
            self._candidate = None
        self._recent.append((score.ts, 0.0 if score.lighting else score.blocks))
        return events

    def _start(self, ts: int) -> MotionStarted:
        assert self._candidate is not None
        onset = self._candidate
        # Walk back over the frames just before the candidate that already showed some
        # movement (a walker entering the picture is small at first).
        for past_ts, blocks in reversed(self._recent):
            if past_ts >= onset:
                continue
            if blocks <= self.sensitivity / 4 or onset - past_ts > LOOKBACK_S * US:
                break
            onset = past_ts
        self._candidate = None
        self._active = True
        self._last_seen = ts
        return MotionStarted(onset, ts)

    def finish(self) -> list[MotionEvent]:
        """End an open event (end of a replayed file)."""
        if self._active:
            self._active = False
            return [MotionEnded(self._last_seen)]
        return []
