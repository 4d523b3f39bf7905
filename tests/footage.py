"""Deterministic test videos built from real footage, with ground-truth motion events.

The source is OpenCV's ``vtest.avi`` (768x576, 10 fps, 795 frames of people walking
across a campus), shipped in Debian's ``opencv-doc`` package.  From it we derive an
empty-scene background (per-pixel temporal median) and compose short H.264 MP4 clips:
stretches of the still scene with temporal sensor noise, segments of the real footage,
lighting changes, dusk, night noise and a small sliding object; the same package's
``tree.avi`` (a real tree in wind) gives the foliage of dappled shade, and things at the lens
(insects at the IR lamp, a spider's strand, drops on the window) are modelled from the optics
of a Pi camera.  Each clip is described by a :class:`Scenario` whose ``events`` are the spans
of real motion.

Everything is seeded and cached in :data:`CACHE_DIR` (``$PINTHESKY_FOOTAGE_CACHE`` or
``<repo root>/.cache/footage``), keyed by :data:`FOOTAGE_VERSION`; bump it whenever the
generated content changes.  To work offline, drop a copy of ``vtest.avi`` there.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
import numpy.typing as npt

__all__ = [
    "CACHE_DIR",
    "FOOTAGE_VERSION",
    "FPS",
    "HEIGHT",
    "WIDTH",
    "Scenario",
    "all_scenarios",
    "background",
    "scenario",
    "vtest_path",
]

FOOTAGE_VERSION = 1
CACHE_DIR: Path = Path(
    os.environ.get("PINTHESKY_FOOTAGE_CACHE")
    or Path(__file__).resolve().parent.parent / ".cache" / "footage"
)

WIDTH, HEIGHT = 768, 576
FPS = 10
GOP = 10
CRF = 20
VTEST_FRAMES = 795
VTEST_PACKAGE = "opencv-doc"
OPENCV_DATA = Path("usr/share/doc/opencv-doc/examples/data")

U8Image = npt.NDArray[np.uint8]
F32Image = npt.NDArray[np.float32]
Rng = np.random.Generator


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock shared between processes (e.g. pytest-xdist workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _tmp_name(dest: Path) -> Path:
    """A sibling of ``dest`` for writing before an atomic ``os.replace``."""
    return dest.with_name(f".{dest.stem}.{os.getpid()}.tmp{dest.suffix}")


def _run(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=900, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot obtain vtest.avi: `{' '.join(cmd)}` failed: {exc}") from exc


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _download_sample(dest: Path) -> None:
    """Fetch ``opencv-doc`` and copy its sample video named like ``dest`` there."""
    member = OPENCV_DATA / dest.name
    with tempfile.TemporaryDirectory(prefix=".sample-", dir=dest.parent) as tmp_str:
        tmp = Path(tmp_str)
        download = ["apt-get", "download", VTEST_PACKAGE]
        result = _run(download, tmp)
        if result.returncode != 0 and os.geteuid() == 0:
            # Typically a fresh container without apt lists (or stale ones): refresh once.
            update = _run(["apt-get", "update"], tmp)
            if update.returncode != 0:
                raise RuntimeError(
                    f"cannot obtain {dest.name}: `apt-get update` failed: "
                    f"{_last_line(update.stderr)}"
                )
            result = _run(download, tmp)
        if result.returncode != 0:
            raise RuntimeError(
                f"cannot obtain {dest.name}: `apt-get download {VTEST_PACKAGE}` failed: "
                f"{_last_line(result.stderr)}"
            )
        debs = sorted(tmp.glob(f"{VTEST_PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError(f"cannot obtain {dest.name}: no {VTEST_PACKAGE} .deb was downloaded")
        extract = _run(["dpkg-deb", "-x", str(debs[0]), "x"], tmp)
        source = tmp / "x" / member
        if extract.returncode != 0 or not source.is_file():
            raise RuntimeError(
                f"cannot obtain {dest.name}: `dpkg-deb -x` gave no {member}: "
                f"{_last_line(extract.stderr)}"
            )
        partial = _tmp_name(dest)
        try:
            shutil.copyfile(source, partial)
            os.replace(partial, dest)
        finally:
            partial.unlink(missing_ok=True)


def vtest_path() -> Path:
    """Path to ``vtest.avi``, fetched once into :data:`CACHE_DIR`.

    Runs ``apt-get download opencv-doc`` in a temporary directory (after one
    ``apt-get update`` if that fails and we are root), extracts it with ``dpkg-deb -x``
    and atomically copies the video into the cache; the rest is deleted.  A file lock
    keeps concurrent test workers from downloading twice.  Raises ``RuntimeError``
    with a one-line reason if the file cannot be had.
    """
    return _sample("vtest.avi")


def tree_path() -> Path:
    """Path to ``tree.avi`` (a real tree in wind, 320x240 at 15 fps), fetched like vtest."""
    return _sample("tree.avi")


def _sample(name: str) -> Path:
    dest = CACHE_DIR / name
    if dest.is_file():
        return dest
    with _file_lock(CACHE_DIR / ".vtest.lock"):
        if not dest.is_file():
            _download_sample(dest)
    return dest


def _vtest_reader(
    wanted: Iterable[int], size: tuple[int, int] | None = None
) -> Generator[U8Image, None, None]:
    """Yield the vtest frames with the given increasing indices, in one decoding pass."""
    indices = iter(wanted)
    target = next(indices, None)
    width, height = size or (WIDTH, HEIGHT)
    with av.open(str(vtest_path())) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if target is None:
                break
            if index == target:
                rgb = frame.to_ndarray(format="rgb24", width=width, height=height)
                yield cast(U8Image, rgb)
                target = next(indices, None)
    if target is not None:
        raise RuntimeError(f"vtest.avi has no frame {target}")


def _save_npy_atomic(dest: Path, array: npt.NDArray[np.generic]) -> None:
    partial = _tmp_name(dest)
    try:
        with open(partial, "wb") as handle:
            np.save(handle, array)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


@functools.lru_cache(maxsize=4)
def _background_cached(size: tuple[int, int]) -> U8Image:
    width, height = size
    dest = CACHE_DIR / f"background-v{FOOTAGE_VERSION}-{width}x{height}.npy"
    with _file_lock(CACHE_DIR / f".{dest.stem}.lock"):
        if not dest.is_file():
            # People are in every frame but rarely stay on one pixel, so the median
            # over every 5th frame (159 frames, ~80 s) is the empty scene.
            stack = np.stack(list(_vtest_reader(range(0, VTEST_FRAMES, 5), size)))
            median = np.median(stack, axis=0)
            del stack
            _save_npy_atomic(dest, np.rint(median).astype(np.uint8))
    image: U8Image = np.load(dest)
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise RuntimeError(f"corrupt background cache {dest}; delete it")
    image.setflags(write=False)
    return image


def background(size: tuple[int, int] = (WIDTH, HEIGHT)) -> U8Image:
    """The empty scene, ``uint8`` RGB of shape ``(height, width, 3)`` for ``size=(width, height)``.

    Per-pixel temporal median of every 5th vtest frame, cached as ``.npy`` in :data:`CACHE_DIR`.
    """
    return _background_cached((int(size[0]), int(size[1]))).copy()


@dataclass(frozen=True)
class Scenario:
    """A generated clip and its ground truth."""

    path: Path
    fps: int
    duration: float  # seconds
    events: tuple[tuple[float, float], ...]  # (start_s, end_s) of real motion from video start
    description: str

    def matches(self, found: Sequence[tuple[float, float]], within: float = 1.0) -> bool:
        """Whether ``found`` (start_s, end_s) are exactly the labelled events, each starting
        and ending within ``within`` seconds of its label."""
        return len(found) == len(self.events) and all(
            abs(start - begin) <= within and abs(end - finish) <= within
            for (start, end), (begin, finish) in zip(found, self.events, strict=True)
        )


class _Noise:
    """Gaussian temporal sensor noise.

    Drawing 1.3 M normals per frame costs more than encoding it, so each frame takes a
    randomly offset window into a small bank of pre-drawn fields instead; consecutive
    frames never share a window, so still frames are never bit-identical.
    """

    def __init__(self, rng: Rng, bank: int = 6, pad: int = 64) -> None:
        self._pad = pad
        self._bank = rng.standard_normal((bank, HEIGHT + pad, WIDTH + pad, 3), dtype=np.float32)
        self._last = (-1, -1, -1)

    def field(self, rng: Rng) -> F32Image:
        """A unit-sigma noise field of shape (HEIGHT, WIDTH, 3) (a view; do not modify)."""
        pick = self._last
        while pick == self._last:
            pick = (
                int(rng.integers(len(self._bank))),
                int(rng.integers(self._pad)),
                int(rng.integers(self._pad)),
            )
        self._last = pick
        k, dy, dx = pick
        return self._bank[k, dy : dy + HEIGHT, dx : dx + WIDTH]


class _Renderer:
    """Turns float scene images into noisy uint8 camera frames."""

    def __init__(self, rng: Rng) -> None:
        self.rng = rng
        self.noise = _Noise(rng)
        self._scratch = np.empty((HEIGHT, WIDTH, 3), np.float32)

    def __call__(self, scene: F32Image, sigma: float, salt: float = 0.0) -> U8Image:
        """Add noise of ``sigma`` levels (and, with probability ``salt``, hot pixels), clip.

        ``scene`` is used as scratch space and overwritten.
        """
        np.multiply(self.noise.field(self.rng), np.float32(sigma), out=self._scratch)
        scene += self._scratch
        np.rint(scene, out=scene)
        np.clip(scene, 0, 255, out=scene)
        frame = scene.astype(np.uint8)
        if salt and self.rng.random() < salt:
            count = HEIGHT * WIDTH // 1000  # 0.1 % of the pixels, for this frame only
            ys = self.rng.integers(HEIGHT, size=count)
            xs = self.rng.integers(WIDTH, size=count)
            frame[ys, xs] = 255
        return frame


def _f32(image: U8Image) -> F32Image:
    return image.astype(np.float32)


def _smoothstep(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3.0 - 2.0 * u)


def _times(seconds: float) -> Iterator[float]:
    for i in range(round(seconds * FPS)):
        yield i / FPS


# Frame generators: each yields uint8 RGB frames for one scenario from a seeded rng.
FrameGen = Callable[[Rng], Iterator[U8Image]]


def _gen_walkers(rng: Rng) -> Iterator[U8Image]:
    render = _Renderer(rng)
    bg = _f32(_background_cached((WIDTH, HEIGHT)))
    segments = [(None, 10.0), (100, 8.0), (None, 12.0), (400, 6.0), (None, 10.0)]
    wanted = [s + i for s, d in segments if s is not None for i in range(round(d * FPS))]
    with contextlib.closing(_vtest_reader(wanted)) as real:
        for start, seconds in segments:
            for _ in _times(seconds):
                scene = bg.copy() if start is None else _f32(next(real))
                yield render(scene, 1.5)


def _light_gain_map() -> F32Image:
    """Gain 1.7 at the top-left corner falling linearly with distance to 1.3 at the far corner."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    distance = np.hypot(xs, ys) / np.float32(np.hypot(WIDTH - 1, HEIGHT - 1))
    gain: F32Image = (1.7 - 0.4 * distance).astype(np.float32)
    return gain[:, :, None]


def _gen_lights(rng: Rng) -> Iterator[U8Image]:
    render = _Renderer(rng)
    bg = _f32(_background_cached((WIDTH, HEIGHT)))
    light = _light_gain_map()
    lit = bg * light + np.float32(15.0)
    # Auto-exposure settles where the mean gain of the lit scene is 1.15.
    settled = 1.15 / float(light.mean())
    for t in _times(30.0):
        if t < 8.0:
            scene = bg.copy()
        elif t < 20.0:
            exposure = 1.0 + (settled - 1.0) * _smoothstep((t - 8.0) / 1.0)
            scene = lit * np.float32(exposure)
        else:
            scene = bg * np.float32(0.6 + 0.4 * _smoothstep((t - 20.0) / 1.2))
        yield render(scene, 1.5)


def _gen_dusk(rng: Rng) -> Iterator[U8Image]:
    render = _Renderer(rng)
    bg = _f32(_background_cached((WIDTH, HEIGHT)))
    count = round(40.0 * FPS)
    for i in range(count):
        p = i / (count - 1)
        brightness = 0.12**p  # geometric: a constant 0.5 % dimming per frame
        yield render(bg * np.float32(brightness), 1.5 + 3.5 * p)


NIGHT_BRIGHTNESS = 0.2
SALT_PROBABILITY = 0.05  # chance that a frame gets 0.1 % hot pixels


def _gen_night_noise(rng: Rng) -> Iterator[U8Image]:
    render = _Renderer(rng)
    dark = _f32(_background_cached((WIDTH, HEIGHT))) * np.float32(NIGHT_BRIGHTNESS)
    for _ in _times(30.0):
        yield render(dark.copy(), 6.0, SALT_PROBABILITY)


def _gen_night_walkers(rng: Rng) -> Iterator[U8Image]:
    render = _Renderer(rng)
    dim = np.float32(NIGHT_BRIGHTNESS)
    dark = _f32(_background_cached((WIDTH, HEIGHT))) * dim
    with contextlib.closing(_vtest_reader(range(100, 180))) as real:
        for t in _times(30.0):
            scene = _f32(next(real)) * dim if 10.0 <= t < 18.0 else dark.copy()
            yield render(scene, 5.0, SALT_PROBABILITY)


# Small object: the front of the white van (top right of the scene), 48x48 with a
# 1-px dark border, resting on the lawn and sliding 200 px right from 10.0 to 14.0 s.
OBJECT_SIZE = 48
OBJECT_SOURCE_XY = (664, 46)
OBJECT_START_XY = (90, 400)
OBJECT_TRAVEL = 200


def _object_patch(bg: U8Image) -> F32Image:
    x, y = OBJECT_SOURCE_XY
    patch = _f32(bg[y : y + OBJECT_SIZE, x : x + OBJECT_SIZE])
    patch[[0, -1], :] = 20.0
    patch[:, [0, -1]] = 20.0
    return patch


def _gen_small_object(rng: Rng) -> Iterator[U8Image]:
    render = _Renderer(rng)
    bg_u8 = _background_cached((WIDTH, HEIGHT))
    bg = _f32(bg_u8)
    patch = _object_patch(bg_u8)
    x0, y0 = OBJECT_START_XY
    for i in range(round(26.0 * FPS)):
        # The frame shown during [i, i + 1) / FPS is already moved, so every frame in
        # [10.0, 14.0) differs from its predecessor and none outside does.
        progress = min(max((i - 10 * FPS + 1) / (4 * FPS), 0.0), 1.0)
        x = x0 + round(OBJECT_TRAVEL * progress)
        scene = bg.copy()
        scene[y0 : y0 + OBJECT_SIZE, x : x + OBJECT_SIZE] = patch
        yield render(scene, 1.5)


# Outdoor cases (issue 15): real backgrounds and real people from vtest, with physically
# plausible perturbations laid over them. Sizes are in 768x576 footage pixels; the daemon
# sees them at 640x480 (main) and 320x240 (analysis), i.e. 5/6 and 5/12 of these.


def _resize(image: F32Image, width: int, height: int) -> F32Image:
    """Area-averaged resize of a float image (H, W) or (H, W, 3), by libswscale."""
    planes = image if image.ndim == 3 else image[:, :, None].repeat(3, axis=2)
    rgb = np.clip(np.rint(planes), 0, 255).astype(np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    out = frame.reformat(width=width, height=height, interpolation="AREA").to_ndarray()
    small = _f32(cast(U8Image, out))
    return small if image.ndim == 3 else small[:, :, 0].copy()


# A lone walker in vtest frame 0 (a 30x111-pixel person), cut out with a soft alpha from
# its difference with the empty scene.
SPRITE_FRAME = 0
SPRITE_BOX = (246, 190, 46, 126)  # x, y, w, h


@functools.lru_cache(maxsize=1)
def _person() -> tuple[F32Image, F32Image]:
    """The lone walker's RGB and alpha (0..1), full size."""
    x, y, w, h = SPRITE_BOX
    frame = _f32(next(_vtest_reader([SPRITE_FRAME])))[y : y + h, x : x + w]
    bg = _f32(_background_cached((WIDTH, HEIGHT)))[y : y + h, x : x + w]
    alpha = np.clip((np.abs(frame - bg).max(axis=2) - 20.0) / 30.0, 0.0, 1.0)
    return frame, alpha.astype(np.float32)


def _sprite(height: int) -> tuple[F32Image, F32Image]:
    """The walker scaled so that the person's box is ``height`` pixels tall."""
    rgb, alpha = _person()
    scale = height / 111.0
    w, h = max(2, round(rgb.shape[1] * scale)), max(2, round(rgb.shape[0] * scale))
    return _resize(rgb, w, h), np.clip(_resize(alpha * 255.0, w, h) / 255.0, 0.0, 1.0)


def _paste(scene: F32Image, sprite: tuple[F32Image, F32Image], x: float, y: int) -> None:
    """Alpha-blend ``sprite`` into ``scene`` with its left edge at sub-pixel ``x``."""
    rgb, alpha = sprite
    ix = int(np.floor(x))
    frac = np.float32(x - ix)
    # Sub-pixel placement: blend the sprite with itself shifted by one pixel.
    pad_rgb = np.pad(rgb, ((0, 0), (1, 1), (0, 0)))
    pad_a = np.pad(alpha, ((0, 0), (1, 1)))
    rgb_s = pad_rgb[:, 1:] * (1 - frac) + pad_rgb[:, :-1] * frac
    a_s = (pad_a[:, 1:] * (1 - frac) + pad_a[:, :-1] * frac)[:, :, None]
    h, w = min(a_s.shape[0], HEIGHT - y), a_s.shape[1]
    rgb_s, a_s = rgb_s[:h], a_s[:h]
    x0, x1 = max(ix, 0), min(ix + w, WIDTH)
    if x1 <= x0:
        return
    region = scene[y : y + h, x0:x1]
    a = a_s[:, x0 - ix : x1 - ix]
    region *= 1 - a
    region += rgb_s[:, x0 - ix : x1 - ix] * a


def _walk(
    rng: Rng, seconds: float, sprite_height: int, y: int, span: tuple[float, float, float, float]
) -> Iterator[U8Image]:
    """Still campus; a person of ``sprite_height`` px walks x0 -> x1 between t0 and t1."""
    render = _Renderer(rng)
    bg = _f32(_background_cached((WIDTH, HEIGHT)))
    sprite = _sprite(sprite_height)
    t0, t1, x0, x1 = span
    for i in range(round(seconds * FPS)):
        # As in small_object: the frame shown during [i, i + 1) / FPS has already moved.
        u = (i + 1) / FPS
        scene = bg.copy()
        if t0 < u <= t1 + 1 / FPS:
            _paste(scene, sprite, x0 + (x1 - x0) * min((u - t0) / (t1 - t0), 1.0), y)
        yield render(scene, 1.5)


def _gen_distant_person(rng: Rng) -> Iterator[U8Image]:
    # 16x44 px at 640x480 is a person about 30 m away; walking 1.4 m/s is ~40 px/s there.
    yield from _walk(rng, 30.0, 53, 150, (10.0, 22.0, 120.0, 680.0))


def _gen_creeper(rng: Rng) -> Iterator[U8Image]:
    # A full-size person creeping at 25 px/s (about 0.4 m/s at their distance).
    yield from _walk(rng, 34.0, 111, 300, (10.0, 28.0, 150.0, 600.0))


def _gen_distant_creeper(rng: Rng) -> Iterator[U8Image]:
    # The distant person (16x44 px at 640x480) at 20 px/s, about 0.7 m/s at 30 m: in 1.5 s
    # she covers less than her own width.
    yield from _walk(rng, 34.0, 53, 150, (10.0, 28.0, 120.0, 480.0))


def _night_walkers_in(
    rng: Rng, weather: Callable[[F32Image, int], None], walk: tuple[int, float, float]
) -> Iterator[U8Image]:
    """Night scene with ``weather`` drawn on every frame and real walkers in a time span."""
    render = _Renderer(rng)
    dim = np.float32(NIGHT_BRIGHTNESS)
    dark = _f32(_background_cached((WIDTH, HEIGHT))) * dim
    first, t0, t1 = walk
    count = round((t1 - t0) * FPS)
    with contextlib.closing(_vtest_reader(range(first, first + count))) as real:
        for i, t in enumerate(_times(30.0)):
            scene = _f32(next(real)) * dim if t0 <= t < t1 else dark.copy()
            weather(scene, i)
            yield render(scene, 5.0)


def _rain(rng: Rng, streaks: int) -> Callable[[F32Image, int], None]:
    """IR-lit rain: drops near the camera, motion-blurred over the exposure into streaks
    12-40 px long, 1-2 px wide, slightly slanted, ``streaks`` a frame in new places."""
    steps = np.linspace(0.0, 1.0, 40, dtype=np.float32)

    def rain(scene: F32Image, _: int) -> None:
        length = rng.uniform(12, 40, streaks).astype(np.float32)
        x = rng.uniform(0, WIDTH, streaks).astype(np.float32)
        y = rng.uniform(-20, HEIGHT, streaks).astype(np.float32)
        gain = rng.uniform(50, 110, streaks).astype(np.float32)
        wide = rng.random(streaks) < 0.3
        ys = (y[:, None] + length[:, None] * steps).astype(np.int32)
        xs = (x[:, None] + 0.15 * length[:, None] * steps).astype(np.int32)
        vals = np.broadcast_to(gain[:, None], ys.shape)
        for dx, pick in ((0, slice(None)), (1, wide)):
            yy, xx, vv = ys[pick].ravel(), (xs[pick] + dx).ravel(), vals[pick].ravel()
            ok = (yy >= 0) & (yy < HEIGHT) & (xx >= 0) & (xx < WIDTH)
            # Overlapping samples of one streak must not add up: assign, not accumulate.
            level = np.zeros((HEIGHT, WIDTH), np.float32)
            level[yy[ok], xx[ok]] = vv[ok]
            scene += level[:, :, None]

    return rain


def _gen_rain_night(rng: Rng) -> Iterator[U8Image]:
    yield from _night_walkers_in(rng, _rain(rng, 120), (100, 12.0, 20.0))


def _gen_downpour(rng: Rng) -> Iterator[U8Image]:
    # Twice as much rain: thin change in over 40 % of the cells on every frame.
    yield from _night_walkers_in(rng, _rain(rng, 250), (100, 12.0, 20.0))


def _gen_snow_night(rng: Rng) -> Iterator[U8Image]:
    # IR-lit snow: 500 flakes of 1-4 px falling 6-20 px per frame with some drift; each
    # flake persists and moves on every frame, re-entering at the top when it falls out.
    flakes = 500
    x = rng.uniform(0, WIDTH, flakes)
    y = rng.uniform(0, HEIGHT, flakes)
    vy = rng.uniform(6, 20, flakes)
    vx = rng.uniform(-3, 3, flakes)
    size = rng.choice([1, 2, 2, 3, 4], flakes)
    gain = rng.uniform(60, 120, flakes).astype(np.float32)

    def snow(scene: F32Image, _: int) -> None:
        nonlocal x, y
        x = (x + vx + rng.normal(0, 1, flakes)) % WIDTH
        y = y + vy
        y[y >= HEIGHT] -= HEIGHT
        level = np.zeros((HEIGHT, WIDTH), np.float32)
        for s in (1, 2, 3, 4):
            pick = size == s
            for dy in range(s):
                for dx in range(s):
                    yy = np.minimum((y[pick] + dy).astype(np.int32), HEIGHT - 1)
                    xx = np.minimum((x[pick] + dx).astype(np.int32), WIDTH - 1)
                    level[yy, xx] = gain[pick]
        scene += level[:, :, None]

    yield from _night_walkers_in(rng, snow, (400, 15.0, 21.0))


def _shifted(image: F32Image, dx: float, dy: float) -> F32Image:
    """``image`` moved by a sub-pixel (dx, dy), bilinear, edges repeated."""
    pad = 4
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    ix, iy = int(np.floor(dx)), int(np.floor(dy))
    fx, fy = np.float32(dx - ix), np.float32(dy - iy)

    def win(oy: int, ox: int) -> F32Image:
        return padded[pad - oy : pad - oy + HEIGHT, pad - ox : pad - ox + WIDTH]

    top = win(iy, ix) * (1 - fx) + win(iy, ix + 1) * fx
    bottom = win(iy + 1, ix) * (1 - fx) + win(iy + 1, ix + 1) * fx
    out: F32Image = top * (1 - fy) + bottom * fy
    return out


# Gusts: (start s, end s, sway frequency Hz, amplitude in 640x480 pixels).
GUSTS = ((4.0, 10.0, 1.0, 3.0), (14.0, 20.0, 2.0, 2.0), (24.0, 29.0, 3.0, 1.5))


def _swaying(
    rng: Rng,
    gusts: Sequence[tuple[float, float, float, float]],
    walk: tuple[int, float, float] | None = None,
) -> Iterator[U8Image]:
    """The campus on a swaying pole, 32 s; with ``walk`` (first vtest frame, t0, t1) real
    walkers cross it meanwhile."""
    render = _Renderer(rng)
    bg = _f32(_background_cached((WIDTH, HEIGHT)))
    first, t0, t1 = walk or (0, 0.0, 0.0)
    to_footage = WIDTH / 640
    with contextlib.closing(_vtest_reader(range(first, first + round((t1 - t0) * FPS)))) as real:
        for t in _times(32.0):
            dx = dy = 0.0
            for start, end, freq, amp in gusts:
                if start <= t < end:
                    # The pole bends mostly one way and swings: a smooth onset and fade.
                    env = np.sin(np.pi * (t - start) / (end - start))
                    dx = amp * to_footage * env * np.sin(2 * np.pi * freq * (t - start))
                    dy = 0.4 * dx * np.cos(2 * np.pi * freq * (t - start))
            scene = _f32(next(real)) if t0 <= t < t1 else bg
            yield render(_shifted(scene, dx, dy), 1.5)


def _gen_sway(rng: Rng) -> Iterator[U8Image]:
    yield from _swaying(rng, GUSTS)


def _gen_wind_walkers(rng: Rng) -> Iterator[U8Image]:
    # A 2 Hz, 2 px gust from 8 to 22 s; real walkers cross at 12-20 s, while the view shakes.
    yield from _swaying(rng, ((8.0, 22.0, 2.0, 2.0),), (100, 12.0, 20.0))


def _headlights(
    passes: Sequence[tuple[float, float, float, float]],
    size: tuple[float, float] = (160.0, 110.0),
    strength: float = 3.0,
    y: float = 380.0,
) -> Callable[[F32Image, int], None]:
    """Headlights sweeping a pool of light over the scene: ``passes`` of (t0, t1, x0, x1),
    the pool's centre moving from x0 to x1 at height ``y``; its Gaussian radii are ``size``
    and it multiplies the scene by up to ``1 + strength``."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)

    def lights(scene: F32Image, i: int) -> None:
        t = i / FPS
        for t0, t1, x0, x1 in passes:
            if t0 <= t < t1:
                cx = x0 + (x1 - x0) * (t - t0) / (t1 - t0)
                pool = np.exp(-(((xs - cx) / size[0]) ** 2) - ((ys - y) / size[1]) ** 2)
                # Light multiplies the reflectance; a little of it is scattered (offset).
                scene *= 1 + strength * pool[:, :, None]
                scene += 25.0 * pool[:, :, None]

    return lights


def _night(rng: Rng, weather: Callable[[F32Image, int], None]) -> Iterator[U8Image]:
    """The night campus, 30 s, with ``weather`` drawn on every frame; nobody there."""
    render = _Renderer(rng)
    dark = _f32(_background_cached((WIDTH, HEIGHT))) * np.float32(NIGHT_BRIGHTNESS)
    for i, _ in enumerate(_times(30.0)):
        scene = dark.copy()
        weather(scene, i)
        yield render(scene, 5.0)


def _gen_headlights(rng: Rng) -> Iterator[U8Image]:
    # Two cars pass out of view; their headlights sweep a pool of light over the dark
    # campus (left to right at 6-10 s, right to left at 18-22 s). No object enters.
    passes = ((6.0, 10.0, -250.0, WIDTH + 250.0), (18.0, 22.0, WIDTH + 250.0, -250.0))
    yield from _night(rng, _headlights(passes))


def _gen_headlights_near(rng: Rng) -> Iterator[U8Image]:
    # A car close by: a small, bright pool (6x the light at its centre, burnt out) with a
    # steep rim, crossing in 4 s from the left edge of the picture to the right one.
    yield from _night(
        rng, _headlights(((6.0, 10.0, -100.0, WIDTH + 100.0),), (80.0, 56.0), 5.0, 300.0)
    )


def _gen_walkers_in_headlights(rng: Rng) -> Iterator[U8Image]:
    # Real walkers at night (14-22 s), lit up by a car's headlights passing at 11-17 s.
    lights = _headlights(((11.0, 17.0, -250.0, WIDTH + 250.0),))
    yield from _night_walkers_in(rng, lights, (100, 14.0, 22.0))


def _gen_cloud_shadow(rng: Rng) -> Iterator[U8Image]:
    # A sunny campus; a cloud's soft shadow (45 % less light at its core, 260 px across)
    # drifts over it at 150 px/s from 5 s on. No object moves.
    render = _Renderer(rng)
    bg = _f32(_background_cached((WIDTH, HEIGHT)))
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    for t in _times(30.0):
        cx = -520.0 + 150.0 * (t - 5.0)
        shade = np.exp(-(((xs - cx) / 260.0) ** 2) - ((ys - HEIGHT / 2) / 390.0) ** 2)
        yield render(bg * (1 - 0.55 * shade[:, :, None]), 1.5)


def _gen_ir_switch(rng: Rng) -> Iterator[U8Image]:
    # Dusk: the IR cut filter lifts at 10 s (colour -> IR-lit grey, brighter in the middle
    # where the IR lamp points) and drops back at 20 s.
    render = _Renderer(rng)
    bg = _f32(_background_cached((WIDTH, HEIGHT))) * np.float32(0.35)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    lamp = 1.2 + 0.8 * np.exp(-(((xs - WIDTH / 2) / 300) ** 2) - ((ys - HEIGHT / 2) / 250) ** 2)
    grey = bg.mean(axis=2, keepdims=True) * lamp[:, :, None] + np.float32(10.0)
    ir = np.repeat(grey, 3, axis=2).astype(np.float32)
    for t in _times(30.0):
        yield render(ir.copy() if 10.0 <= t < 20.0 else bg.copy(), 4.0)


def _gen_animal(rng: Rng) -> Iterator[U8Image]:
    # A cat at the camera: out of focus and huge, it covers more than 40 % of the view,
    # moves about for 3 s (10-13 s) and leaves. The view shows it from the first frame.
    render = _Renderer(rng)
    bg = _f32(_background_cached((WIDTH, HEIGHT)))
    rgb, _ = _person()
    # Out of focus and close, it is a soft dark blob as big as the view's height with the
    # walker's clothes as texture (scaled 10x, blurred, darkened: it is in its own shadow).
    w, h = 600, 760
    blurred = _resize(_resize(rgb, 23, 63), w, h) * np.float32(0.6)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((xs - w / 2) / (0.48 * w), (ys - h / 2) / (0.5 * h))
    soft = np.clip((1.0 - r) / 0.15, 0.0, 1.0).astype(np.float32)
    body = (blurred, soft)
    for i in range(round(24.0 * FPS)):
        u = (i + 1) / FPS
        scene = bg.copy()
        if 10.0 < u <= 13.0 + 1 / FPS:
            k = (u - 10.0) / 3.0
            x = -60 + 260 * k + 60 * np.sin(2 * np.pi * 1.3 * k)
            _paste(scene, body, x, 0)
        yield render(scene, 1.5)


# Garden-at-night and garden-in-sun cases: things at the lens, dappled shade, a person walking
# toward the camera. Optics of a Pi camera (3 mm lens at f/2, about 62 degrees across): in
# footage pixels the focal length is about 640 px and the entrance pupil 1.5 mm, so something
# z cm from the lens, focused far away, is blurred over a disc of about 96 / z px, and one of
# size s cm is 640 * s / z px across. The IR lamp beside the lens lights it by 1 / z**2: at a
# few centimetres, 10,000 times brighter than the garden a few metres away (burnt out).
FOCAL_PX = 640.0
BLUR_PX_CM = 96.0
"""Blur disc (px) of a point 1 cm from the lens: FOCAL_PX times the pupil (0.15 cm)."""
EXPOSURE_S = 1 / 15
"""A night exposure: what moves during it is smeared."""


def _disc(x: float, y: float, radius: float, blur: float) -> F32Image | None:
    """A defocused disc: the coverage (0..1) of a disc of ``radius`` seen through a blur of
    ``blur`` px, over the picture, or None when it is off the picture."""
    reach = radius + blur
    x0, x1 = max(int(x - reach), 0), min(int(x + reach) + 1, WIDTH)
    y0, y1 = max(int(y - reach), 0), min(int(y + reach) + 1, HEIGHT)
    if x1 <= x0 or y1 <= y0:
        return None
    ys, xs = np.ogrid[y0:y1, x0:x1]
    r = np.sqrt((xs - np.float32(x)) ** 2 + (ys - np.float32(y)) ** 2)
    cover = np.clip((radius - r) / max(blur, 1.0) + 0.5, 0.0, 1.0).astype(np.float32)
    out = np.zeros((HEIGHT, WIDTH), np.float32)
    out[y0:y1, x0:x1] = cover * cover * (3 - 2 * cover)
    return out


def _glow(scene: F32Image, cover: F32Image, level: float) -> None:
    """Something lit by the lamp in front of the scene: ``level`` where ``cover`` is 1."""
    a = cover[:, :, None]
    scene *= 1 - a
    scene += a * np.float32(level)


class _Insect:
    """One insect at the lamp: its distance, size, brightness and flight."""

    def __init__(self, rng: Rng, t: float, mode: str) -> None:
        self.mode = mode
        self.z = float(rng.uniform(3.0, 14.0))  # cm from the lens
        size = float(rng.uniform(0.4, 2.0))  # cm: midges to moths
        self.radius = min(FOCAL_PX * size / self.z / 2, 160.0)
        self.blur = BLUR_PX_CM / self.z
        # Lit by the lamp at z cm: far past white for most (burnt out); wing beats flicker.
        self.level = 255.0 * float(rng.uniform(1.2, 4.0)) * min(1.0, (8.0 / self.z) ** 2 + 0.4)
        self.born = t
        self.x, self.y = float(rng.uniform(0, WIDTH)), float(rng.uniform(0, HEIGHT))
        speed = {"hover": 400.0, "dart": 500.0, "cross": 0.0}[mode]
        self.vx, self.vy = rng.normal(0, speed, 2)
        if mode == "cross":
            # Straight across the whole picture in 0.1-0.25 s, from one edge to the other.
            angle = float(rng.uniform(-0.6, 0.6))
            span = WIDTH + 2 * self.radius
            velocity = span / float(rng.uniform(0.1, 0.25))
            direction = 1.0 if rng.random() < 0.5 else -1.0
            self.x = -self.radius if direction > 0 else WIDTH + self.radius
            self.vx, self.vy = direction * velocity * np.cos(angle), velocity * np.sin(angle)
            self.life = span / velocity
        else:
            self.life = float(rng.uniform(2.0, 8.0))
        self.anchor = (float(rng.uniform(0.2, 0.8)) * WIDTH, float(rng.uniform(0.2, 0.8)) * HEIGHT)

    def fly(self, rng: Rng, dt: float) -> None:
        """Erratic flight about the lamp: a pull to a wandering anchor, random turns, and
        for darters sudden bursts; crossers fly straight."""
        if self.mode != "cross":
            ax, ay = self.anchor
            turn = 1400.0 if self.mode == "hover" else 900.0
            self.vx += (ax - self.x) * 4.0 * dt + float(rng.normal(0, turn)) * np.sqrt(dt)
            self.vy += (ay - self.y) * 4.0 * dt + float(rng.normal(0, turn)) * np.sqrt(dt)
            self.vx *= 1 - 2.0 * dt
            self.vy *= 1 - 2.0 * dt
            if self.mode == "dart" and rng.random() < 1.5 * dt:
                burst = float(rng.uniform(2500, 6000))
                angle = float(rng.uniform(0, 2 * np.pi))
                self.vx, self.vy = burst * np.cos(angle), burst * np.sin(angle)
            if rng.random() < 0.5 * dt:
                self.anchor = (
                    float(rng.uniform(0.1, 0.9)) * WIDTH,
                    float(rng.uniform(0.1, 0.9)) * HEIGHT,
                )
        self.x += self.vx * dt
        self.y += self.vy * dt


def _insects(rng: Rng, rate: float = 0.6) -> Callable[[F32Image, int], None]:
    """Insects drawn to the IR lamp beside the lens: defocused, burnt-out blobs that hover,
    dart, or cross the whole picture in a fifth of a second, smeared over the exposure.

    New ones come at ``rate`` a second (a third of them crossers); two hover from the start.
    """
    flying = [_Insect(rng, 0.0, "hover"), _Insect(rng, 0.0, "dart")]

    def insects(scene: F32Image, i: int) -> None:
        t = i / FPS
        if i and rng.random() < rate / FPS:
            mode = ("hover", "dart", "cross")[int(rng.integers(3))]
            flying.append(_Insect(rng, t, mode))
        flying[:] = [b for b in flying if t - b.born <= b.life]
        for bug in flying:
            # The exposure integrates the flight: the coverage averaged over sub-steps.
            cover = np.zeros(scene.shape[:2], np.float32)
            smear = float(np.hypot(bug.vx, bug.vy)) * EXPOSURE_S
            steps = int(np.clip(smear / (0.3 * bug.radius + 1), 4, 40))
            for _ in range(steps):
                bug.fly(rng, EXPOSURE_S / steps)
                disc = _disc(bug.x, bug.y, bug.radius, bug.blur)
                if disc is not None:
                    cover += disc
            # The rest of the frame period passes unseen.
            bug.fly(rng, 1 / FPS - EXPOSURE_S)
            if cover.any():
                flap = float(rng.uniform(0.6, 1.0))
                _glow(scene, cover / steps, bug.level * flap)

    return insects


def _gen_moths(rng: Rng) -> Iterator[U8Image]:
    yield from _night(rng, _insects(rng))


def _gen_moths_walkers(rng: Rng) -> Iterator[U8Image]:
    # Walkers at night under the lamp, while insects fly at it.
    yield from _night_walkers_in(rng, _insects(rng), (100, 12.0, 20.0))


def _strand(rng: Rng) -> Callable[[F32Image, int], None]:
    """A spider's strand hanging from the housing 2-5 cm before the lens: blurred into a soft
    band (the blur disc across), glowing in the IR, swinging like a pendulum in the wind
    (0.4-1.2 Hz, a few degrees, in gusts) and bending with it."""
    z = float(rng.uniform(2.0, 5.0))
    sigma = BLUR_PX_CM / z / 2.5
    anchor = float(rng.uniform(0.2, 0.8)) * WIDTH
    length = float(rng.uniform(0.5, 1.2)) * HEIGHT
    glow = float(rng.uniform(70.0, 160.0))
    freq = float(rng.uniform(0.4, 1.2))
    swing = np.radians(float(rng.uniform(3.0, 9.0)))
    phase = float(rng.uniform(0, 2 * np.pi))
    ys = np.arange(HEIGHT, dtype=np.float32)[:, None]
    xs = np.arange(WIDTH, dtype=np.float32)[None, :]
    # Dew beads make the strand brighter in places; it fades out at its loose end.
    beads = 0.6 + 0.4 * np.cos(ys / float(rng.uniform(20, 60)) + float(rng.uniform(0, 6)))
    along = beads * np.clip((length - ys) / 40.0, 0.0, 1.0)
    gusts = rng.uniform(0.3, 1.0, 8)

    def strand(scene: F32Image, i: int) -> None:
        t = i / FPS
        wind = float(np.interp(t, np.linspace(0, 30, len(gusts)), gusts))
        bend = 40.0 * wind * np.sin(2 * np.pi * freq * 0.5 * t)
        # Smeared over the exposure: the band averaged over two instants.
        band = np.zeros((HEIGHT, WIDTH), np.float32)
        for dt in (0.0, EXPOSURE_S):
            th = swing * wind * np.sin(2 * np.pi * freq * (t + dt) + phase)
            x = anchor + ys * np.tan(th) + bend * (ys / length) ** 2
            band += np.exp(-(((xs - x) / sigma) ** 2) / 2)
        scene += (glow / 2 * band * along)[:, :, None]

    return strand


def _gen_strand(rng: Rng) -> Iterator[U8Image]:
    yield from _night_walkers_in(rng, _strand(rng), (100, 12.0, 20.0))


class _Drop:
    """A raindrop on the window 1-3 cm before the lens: a blurred blob that refracts the
    scene and catches the lamp's light; it clings, then runs down in fits and starts."""

    def __init__(self, rng: Rng, top: bool = False) -> None:
        z = float(rng.uniform(1.0, 3.0))
        self.radius = FOCAL_PX * float(rng.uniform(0.05, 0.15)) / z
        self.blur = BLUR_PX_CM / z / 2
        self.x = float(rng.uniform(0, WIDTH))
        self.y = (
            float(rng.uniform(-self.radius, 0.3 * HEIGHT)) if top else float(rng.uniform(0, HEIGHT))
        )
        # A few centimetres from the lamp, it catches far more of its light than the scene.
        self.glow = float(rng.uniform(60.0, 160.0))
        self.speed = 0.0
        self.trail: list[tuple[float, float, float]] = []  # (x, y, age)

    def move(self, rng: Rng, dt: float) -> None:
        if self.speed == 0.0 and rng.random() < 0.15 * dt:
            self.speed = float(rng.uniform(40.0, 250.0))  # starts to run
        elif self.speed and rng.random() < 0.4 * dt:
            self.speed = 0.0  # caught on the glass
        if self.speed:
            # The trail is left behind in beads a third of the drop's size apart.
            last = self.trail[-1] if self.trail else None
            if last is None or abs(self.y - last[1]) >= self.radius / 3:
                self.trail.append((self.x, self.y, 0.0))
            self.y += self.speed * dt * float(rng.uniform(0.5, 1.5))
            self.x += float(rng.normal(0, 4.0))
        self.trail = [(x, y, a + dt) for x, y, a in self.trail if a < 6.0]


def _window_drops(rng: Rng, count: int = 14) -> Callable[[F32Image, int], None]:
    """Drops on the window (after rain): clinging, now and then running down."""
    drops = [_Drop(rng) for _ in range(count)]

    def window(scene: F32Image, _: int) -> None:
        for k in range(len(drops)):
            drop = drops[k]
            drop.move(rng, 1 / FPS)
            if drop.y - drop.radius > HEIGHT:
                drops[k] = drop = _Drop(rng, top=True)
            # The wet trail: a faint glow that dries up.
            for x, y, age in drop.trail:
                trail = _disc(x, y, drop.radius * 0.35, drop.blur)
                if trail is not None:
                    scene += (trail * drop.glow * 0.25 * (1 - age / 6.0))[:, :, None]
            cover = _disc(drop.x, drop.y, drop.radius, drop.blur)
            if cover is None:
                continue
            # A drop is a small lens: it shows the scene behind it blurred, and the lamp.
            box = cover > 0
            seen = float(scene[box].mean()) if box.any() else 0.0
            _glow(scene, cover, 0.8 * seen + drop.glow)

    return window


def _gen_wet_window(rng: Rng) -> Iterator[U8Image]:
    yield from _night_walkers_in(rng, _window_drops(rng), (100, 12.0, 20.0))


PAD = 20
"""Margin of the fleck map, for the crown's sway."""
TREE_FRAMES = 51
"""tree.avi's frames before a hand comes into view (only 68 of its 444 decode)."""


@functools.lru_cache(maxsize=1)
def _foliage() -> F32Image:
    """Sunflecks through a real tree in wind: tree.avi's gaps between leaves (bright sky)
    as 0..1, frame by frame, without the door post at its left edge."""
    frames: list[F32Image] = []
    with av.open(str(tree_path())) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= TREE_FRAMES:
                break
            gray = _f32(cast(U8Image, frame.to_ndarray(format="gray")))[:, 40:]
            frames.append(np.clip((gray - 175.0) / 30.0, 0.0, 1.0))
    return np.stack(frames)


@dataclass(frozen=True)
class _Canopy:
    """What a tree's dappled shade is drawn from (ranges are drawn per seed)."""

    top: tuple[float, float] = (0.3, 0.45)
    """Where the shade on the ground begins, as a share of the picture's height."""
    sky: tuple[float, float] = (0.25, 0.45)
    """The light left in the shade (the sky's share of full sun)."""
    sway: tuple[float, float] = (6.0, 16.0)
    """How far the crown sways the pattern in a gust (pixels at 768 across)."""
    freq: tuple[float, float] = (0.7, 2.0)
    """How fast it sways (Hz)."""
    zoom: tuple[float, float] = (0.5, 0.8)
    """The part of tree.avi's crown that spans the ground: smaller is nearer, bigger flecks."""
    flutter: float = 1.0
    """How fast the leaves move in a gust: the real tree's frames play at this times 15 fps."""
    heave: float = 0.0
    """The crown's up-and-down sway, as a share of the sideways one (a quarter turn apart)."""


TREE = _Canopy()
"""A tree a few metres up: small flecks, a light to moderate wind."""
LOW_BRANCH = _Canopy(
    top=(0.2, 0.3),
    sky=(0.2, 0.35),
    sway=(8.0, 16.0),
    freq=(0.8, 2.0),
    zoom=(0.35, 0.5),
    flutter=1.25,
    heave=0.3,
)
"""A lower branch over the path: flecks half as big again, deeper shade, the crown swaying up
and down as well as sideways, the leaves fluttering faster."""


def _dapple(
    rng: Rng, gusts: Sequence[tuple[float, float]], tree: _Canopy = TREE
) -> Callable[[F32Image, int], None]:
    """Dappled shade: sunlight through a tree (real foliage from tree.avi) on the ground.

    Sunflecks are the gaps between leaves, projected on the ground below (squashed: seen at
    a slant, and smoothed by the resize: a pixel or two of penumbra); in the shade only the
    sky's light is left (``tree.sky`` of full sun). In a gust the leaves flutter (the real
    tree's frames play) and the crown sways, moving the whole pattern a few pixels; between
    gusts it is still.
    """
    flecks = _foliage()
    top = int(rng.uniform(*tree.top) * HEIGHT)
    sky = float(rng.uniform(*tree.sky))
    sway = float(rng.uniform(*tree.sway))
    freq = float(rng.uniform(*tree.freq))
    # A part of the crown, nearer the ground than the whole: bigger flecks.
    zoom = float(rng.uniform(*tree.zoom))
    ch, cw = round(flecks.shape[1] * zoom), round(flecks.shape[2] * zoom)
    oy = int(rng.integers(flecks.shape[1] - ch + 1))
    ox0 = int(rng.integers(flecks.shape[2] - cw + 1))
    first = int(rng.integers(TREE_FRAMES))
    # The tree's shadow as a whole: soft-edged (its outline), over most of the ground.
    ys, xs = np.mgrid[top:HEIGHT, 0:WIDTH].astype(np.float32)
    cx, cy = float(rng.uniform(0.3, 0.7)) * WIDTH, (top + HEIGHT) / 2
    outline = np.hypot((xs - cx) / (0.6 * WIDTH), (ys - cy) / (0.75 * (HEIGHT - top)))
    canopy = np.clip((1.0 - outline) / 0.15, 0.0, 1.0) * np.clip((ys - top) / 40.0, 0.0, 1.0)
    pad = max(PAD, int(np.ceil(tree.sway[1])) + 1)
    cache: dict[int, F32Image] = {}

    def fleck_map(index: int) -> F32Image:
        if index not in cache:
            crop = flecks[index, oy : oy + ch, ox0 : ox0 + cw] * 255.0
            cache[index] = _resize(crop, WIDTH + 2 * pad, HEIGHT - top + 2 * pad) / 255.0
        return cache[index]

    def dapple(scene: F32Image, i: int) -> None:
        t = i / FPS
        played = sum(max(0.0, min(t, t1) - t0) for t0, t1 in gusts)
        # Ping-pong through the real frames at their own 15 fps (times the flutter) while
        # the wind blows.
        k = (first + int(played * 15 * tree.flutter)) % (2 * TREE_FRAMES - 2)
        index = k if k < TREE_FRAMES else 2 * TREE_FRAMES - 2 - k
        blowing = any(t0 <= t < t1 for t0, t1 in gusts)
        phase = 2 * np.pi * freq * t
        dx = sway * np.sin(phase) if blowing else 0.0
        dy = tree.heave * sway * np.cos(phase) if blowing else 0.0
        ox, oy_ = int(pad + round(dx)), int(pad + round(dy))
        sun = fleck_map(index)[oy_ : oy_ + HEIGHT - top, ox : ox + WIDTH]
        light = 1.0 - canopy * (1.0 - sun) * (1.0 - sky)
        scene[top:] *= light[:, :, None]

    return dapple


def _sunny(
    rng: Rng, weather: Callable[[F32Image, int], None], walk: tuple[int, float, float] | None
) -> Iterator[U8Image]:
    """The campus in sun, 30 s, ``weather`` on every frame; real walkers in ``walk``'s span."""
    render = _Renderer(rng)
    bg = _f32(_background_cached((WIDTH, HEIGHT)))
    first, t0, t1 = walk or (0, 0.0, 0.0)
    with contextlib.closing(_vtest_reader(range(first, first + round((t1 - t0) * FPS)))) as real:
        for i, t in enumerate(_times(30.0)):
            scene = _f32(next(real)) if t0 <= t < t1 else bg.copy()
            weather(scene, i)
            yield render(scene, 1.5)


def _gen_dappled_shade(rng: Rng) -> Iterator[U8Image]:
    yield from _sunny(rng, _dapple(rng, ((4.0, 12.0), (16.0, 28.0))), None)


def _gen_shade_walkers(rng: Rng) -> Iterator[U8Image]:
    # A gust from 6 s on, before the walkers come (12-20 s), and on after they left.
    yield from _sunny(rng, _dapple(rng, ((6.0, 28.0),)), (100, 12.0, 20.0))


def _gen_branch_gusts(rng: Rng) -> Iterator[U8Image]:
    yield from _sunny(rng, _dapple(rng, ((3.0, 9.0), (12.0, 19.0), (22.0, 29.0)), LOW_BRANCH), None)


def _gen_branch_walkers(rng: Rng) -> Iterator[U8Image]:
    # The wind gets up at 4 s, before the walkers come (12-20 s), and blows on after.
    yield from _sunny(rng, _dapple(rng, ((4.0, 28.0),), LOW_BRANCH), (100, 12.0, 20.0))


# A person walking toward a camera at eye height, at an angle: they come into view at a side
# edge, then mostly grow (little sideways motion) until they pass beside the camera.
APPROACHES = {
    # Far off to the right, aiming a metre left of the camera: in slowly, from 80 px tall.
    "approach": (13.5, 21.0, -1.0, 1.4, 2.0),
    # Close on the left, at a steeper angle: in fast, from 250 px tall.
    "approach_left": (-8.5, 11.0, 1.2, 1.1, 2.0),
}
"""Start (X m to the right, Z m ahead), the point aimed at (X m at the camera), speed (m/s),
and when they set off (s, out of view)."""
HORIZON_Y = 200.0
PERSON_M = 1.75
Route = tuple[float, float, float, float, float]


def _approach_at(path: Route, t: float) -> tuple[float, float, float]:
    """The walker's box at ``t`` s after setting off: (centre x, top y, height) in px."""
    x0, z0, aim, speed, _ = path
    dx, dz = aim - x0, -z0
    run = float(np.hypot(dx, dz))
    s = min(speed * t, run - 0.3)
    x, z = x0 + dx * s / run, z0 + dz * s / run
    height = FOCAL_PX * PERSON_M / z
    # The camera is at eye height: the eyes stay on the horizon, the feet come down.
    return WIDTH / 2 + FOCAL_PX * x / z, HORIZON_Y - 0.07 * height, height


def _approach_visible(path: Route, t: float) -> float:
    """Share of the walker's box inside the picture at ``t`` (0 before setting off)."""
    if t < 0:
        return 0.0
    cx, top, height = _approach_at(path, t)
    width = height * SPRITE_BOX[2] / SPRITE_BOX[3]
    inside_x = max(0.0, min(cx + width / 2, WIDTH) - max(cx - width / 2, 0.0)) / width
    inside_y = max(0.0, min(top + height, HEIGHT) - max(top, 0.0)) / height
    return inside_x * inside_y


def _approach_events(path: Route) -> tuple[tuple[float, float], ...]:
    """From half in view to the moment less than half is left in view."""
    start = path[4]
    ts = [start + k / 100 for k in range(2600)]
    half = [t for t in ts if _approach_visible(path, t - start) >= 0.5]
    return ((round(half[0], 1), round(half[-1], 1)),)


def _approach(rng: Rng, path: Route) -> Iterator[U8Image]:
    """The campus, the walker on ``path``."""
    render = _Renderer(rng)
    bg = _f32(_background_cached((WIDTH, HEIGHT)))
    rgb, alpha = _person()
    for i in range(round(30.0 * FPS)):
        u = (i + 1) / FPS - path[4]
        scene = bg.copy()
        if u > 0 and _approach_visible(path, u) > 0:
            cx, top, height = _approach_at(path, u)
            h = max(2, round(height))
            w = max(2, round(h * rgb.shape[1] / rgb.shape[0]))
            sprite = (
                _resize(rgb, w, h),
                np.clip(_resize(alpha * 255.0, w, h) / 255.0, 0.0, 1.0),
            )
            y = round(top)
            if y < 0:  # the head above the picture: cut it off
                sprite = (sprite[0][-y:], sprite[1][-y:])
                y = 0
            if y < HEIGHT:
                _paste(scene, sprite, cx - w / 2, y)
        yield render(scene, 1.5)


def _gen_approach(rng: Rng) -> Iterator[U8Image]:
    yield from _approach(rng, APPROACHES["approach"])


def _gen_approach_left(rng: Rng) -> Iterator[U8Image]:
    yield from _approach(rng, APPROACHES["approach_left"])


@dataclass(frozen=True)
class _Spec:
    duration: float
    events: tuple[tuple[float, float], ...]
    description: str
    frames: FrameGen


_SPECS: dict[str, _Spec] = {
    "walkers": _Spec(
        46.0,
        ((10.0, 18.0), (30.0, 36.0)),
        "Still campus; real walkers (vtest 100-179) at 10-18 s and (vtest 400-459) at 30-36 s.",
        _gen_walkers,
    ),
    "lights": _Spec(
        30.0,
        (),
        "Still campus; a light switches on at 8 s (gain 1.7 top-left to 1.3, +15, auto-exposure "
        "back to 1.15 over 1 s) and off at 20 s (gain 0.6 ramping to 1.0 over 1.2 s).",
        _gen_lights,
    ),
    "dusk": _Spec(
        40.0,
        (),
        "Still campus fading to 12 % brightness while noise sigma grows from 1.5 to 5.",
        _gen_dusk,
    ),
    "night_noise": _Spec(
        30.0,
        (),
        "Still campus at 20 % brightness, noise sigma 6, occasional single-frame hot pixels.",
        _gen_night_noise,
    ),
    "night_walkers": _Spec(
        30.0,
        ((10.0, 18.0),),
        "Night (20 % brightness, sigma 5, occasional hot pixels); real walkers "
        "(vtest 100-179) at 10-18 s.",
        _gen_night_walkers,
    ),
    "small_object": _Spec(
        26.0,
        ((10.0, 14.0),),
        "Still campus; a 48x48 patch (van front) on the lawn slides 200 px right "
        "from 10 to 14 s, then rests.",
        _gen_small_object,
    ),
    "distant_person": _Spec(
        30.0,
        ((10.0, 22.0),),
        "Still campus; a real walker scaled to 16x44 px at 640x480 (about 30 m away) "
        "crosses at 10-22 s.",
        _gen_distant_person,
    ),
    "creeper": _Spec(
        34.0,
        ((10.0, 28.0),),
        "Still campus; a real walker creeps 450 px at 25 px/s from 10 to 28 s.",
        _gen_creeper,
    ),
    "rain_night": _Spec(
        30.0,
        ((12.0, 20.0),),
        "Night (20 % brightness, sigma 5); IR-lit rain streaks (120 a frame, 12-40 px, new "
        "places every frame); real walkers (vtest 100-179) at 12-20 s.",
        _gen_rain_night,
    ),
    "snow_night": _Spec(
        30.0,
        ((15.0, 21.0),),
        "Night (20 % brightness, sigma 5); 500 IR-lit flakes of 1-4 px falling 6-20 px a "
        "frame; real walkers (vtest 400-459) at 15-21 s.",
        _gen_snow_night,
    ),
    "sway": _Spec(
        32.0,
        (),
        "Still campus on a swaying pole: gusts at 4-10 s (1 Hz, 3 px at 640x480), 14-20 s "
        "(2 Hz, 2 px) and 24-29 s (3 Hz, 1.5 px).",
        _gen_sway,
    ),
    "headlights": _Spec(
        30.0,
        (),
        "Night campus; headlight pools sweep across at 6-10 s and 18-22 s, no object.",
        _gen_headlights,
    ),
    "ir_switch": _Spec(
        30.0,
        (),
        "Dim campus; the IR cut filter lifts at 10 s (grey, IR lamp brighter in the "
        "middle) and drops at 20 s.",
        _gen_ir_switch,
    ),
    "animal": _Spec(
        24.0,
        ((10.0, 13.0),),
        "Still campus; an out-of-focus animal at the camera covers over 40 % of the view "
        "from 10 to 13 s.",
        _gen_animal,
    ),
    # Harder variants of the outdoor cases, each one step past the ones above.
    "distant_creeper": _Spec(
        34.0,
        ((10.0, 28.0),),
        "Still campus; the distant walker (16x44 px at 640x480) crosses slowly, 360 px at "
        "20 px/s from 10 to 28 s.",
        _gen_distant_creeper,
    ),
    "downpour": _Spec(
        30.0,
        ((12.0, 20.0),),
        "Night (20 % brightness, sigma 5); IR-lit rain as in rain_night but 250 streaks a "
        "frame; real walkers (vtest 100-179) at 12-20 s.",
        _gen_downpour,
    ),
    "wind_walkers": _Spec(
        32.0,
        ((12.0, 20.0),),
        "Campus on a swaying pole, one gust at 8-22 s (2 Hz, 2 px at 640x480); real walkers "
        "(vtest 100-179) at 12-20 s.",
        _gen_wind_walkers,
    ),
    "headlights_near": _Spec(
        30.0,
        (),
        "Night campus; a small bright headlight pool (6x at its burnt-out centre, steep rim) "
        "crosses from edge to edge at 6-10 s, no object.",
        _gen_headlights_near,
    ),
    "walkers_in_headlights": _Spec(
        30.0,
        ((14.0, 22.0),),
        "Night; real walkers (vtest 100-179) at 14-22 s, lit up by headlights sweeping "
        "across at 11-17 s.",
        _gen_walkers_in_headlights,
    ),
    "cloud_shadow": _Spec(
        30.0,
        (),
        "Sunny campus; a cloud's soft shadow (45 % less light at its core) drifts across at "
        "150 px/s from 5 s, no object.",
        _gen_cloud_shadow,
    ),
    # Things at the lens at night, dappled shade, a person walking toward the camera.
    "moths": _Spec(
        30.0,
        (),
        "Night campus; insects at the IR lamp 3-14 cm before the lens (defocused, burnt-out "
        "blobs) hover, dart and cross the picture in 0.1-0.25 s, no object.",
        _gen_moths,
    ),
    "moths_walkers": _Spec(
        30.0,
        ((12.0, 20.0),),
        "Night; insects at the IR lamp as in moths; real walkers (vtest 100-179) at 12-20 s.",
        _gen_moths_walkers,
    ),
    "strand": _Spec(
        30.0,
        ((12.0, 20.0),),
        "Night; a spider's strand 2-5 cm before the lens glows in the IR and swings in the "
        "wind all along; real walkers (vtest 100-179) at 12-20 s.",
        _gen_strand,
    ),
    "wet_window": _Spec(
        30.0,
        ((12.0, 20.0),),
        "Night, behind a wet window: blurred drops catching the lamp's light cling and run "
        "down in fits; real walkers (vtest 100-179) at 12-20 s.",
        _gen_wet_window,
    ),
    "dappled_shade": _Spec(
        30.0,
        (),
        "Sunny campus under a tree (real foliage, tree.avi): its dappled shade flutters and "
        "sways in gusts at 4-12 s and 16-28 s, no object.",
        _gen_dappled_shade,
    ),
    "shade_walkers": _Spec(
        30.0,
        ((12.0, 20.0),),
        "Dappled shade fluttering in a gust from 6 s to 28 s; real walkers (vtest 100-179) "
        "walk through it at 12-20 s.",
        _gen_shade_walkers,
    ),
    "branch_gusts": _Spec(
        30.0,
        (),
        "Sunny campus under a low branch in a strong wind: flecks half as big again, deeper "
        "shade (20-35 % of the light), the crown swaying up and down too, the leaves "
        "fluttering a quarter faster; gusts at 3-9 s, 12-19 s and 22-29 s, no object.",
        _gen_branch_gusts,
    ),
    "branch_walkers": _Spec(
        30.0,
        ((12.0, 20.0),),
        "The low branch's shade over the path, in a strong wind from 4 s to 28 s; real walkers "
        "(vtest 100-179) walk through it at 12-20 s.",
        _gen_branch_walkers,
    ),
    "approach": _Spec(
        30.0,
        _approach_events(APPROACHES["approach"]),
        "A walker (the vtest sprite) comes toward a camera at eye height at an angle: in at "
        "the right edge, growing from 80 px to past the picture, little sideways motion; "
        "labelled from half in view to less than half.",
        _gen_approach,
    ),
    "approach_left": _Spec(
        30.0,
        _approach_events(APPROACHES["approach_left"]),
        "The walker comes toward the camera at a steeper angle, close: in at the left edge, "
        "growing from 250 px to past the picture in 4 s.",
        _gen_approach_left,
    ),
}


def all_scenarios() -> list[str]:
    """Names accepted by :func:`scenario`."""
    return list(_SPECS)


def _encode(frames: Iterable[U8Image], dest: Path) -> None:
    """Write RGB frames as H.264 (yuv420p, no B-frames, GOP 10) MP4, atomically."""
    partial = _tmp_name(dest)
    try:
        with av.open(str(partial), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height = WIDTH, HEIGHT
            stream.pix_fmt = "yuv420p"
            stream.codec_context.gop_size = GOP
            stream.codec_context.max_b_frames = 0
            stream.options = {
                "crf": str(CRF),
                "preset": "veryfast",
                "x264-params": f"bframes=0:keyint={GOP}:min-keyint={GOP}:scenecut=0",
            }
            time_base = Fraction(1, FPS)
            for index, rgb in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = index
                frame.time_base = time_base
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def scenario(name: str, seed: int = 0) -> Scenario:
    """Build (or reuse from :data:`CACHE_DIR`) the MP4 for scenario ``name``.

    Another ``seed`` draws the scenario's randomness afresh (noise, raindrops, flakes): the
    same scene and the same labelled events, other pixels.
    """
    try:
        spec = _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(_SPECS)}") from None
    seeded = f"-s{seed}" if seed else ""
    dest = CACHE_DIR / f"{name}{seeded}-v{FOOTAGE_VERSION}.mp4"
    if not dest.is_file():
        with _file_lock(CACHE_DIR / f".{dest.stem}.lock"):
            if not dest.is_file():
                key = [FOOTAGE_VERSION, zlib.crc32(name.encode())] + ([seed] if seed else [])
                _encode(spec.frames(np.random.default_rng(key)), dest)
    return Scenario(dest, FPS, spec.duration, spec.events, spec.description)
