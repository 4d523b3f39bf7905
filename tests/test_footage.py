"""Self-checks of the real-footage test video builder (tests/footage.py)."""

from __future__ import annotations

import av
import numpy as np
import numpy.typing as npt
from footage import FPS, HEIGHT, WIDTH, background, scenario, vtest_path


def test_vtest_is_fetched_and_complete() -> None:
    path = vtest_path()
    assert path.is_file()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (WIDTH, HEIGHT)
        assert sum(1 for _ in container.decode(stream)) == 795


def test_background_is_the_empty_scene() -> None:
    bg = background().astype(np.int16)
    assert bg.shape == (HEIGHT, WIDTH, 3)
    # Frames 2, 22, 42, ... are disjoint from the every-5th-frame sample behind background().
    with av.open(str(vtest_path())) as container:
        frames = [
            frame.to_ndarray(format="rgb24").astype(np.int16)
            for index, frame in enumerate(container.decode(video=0))
            if index % 20 == 2
        ]

    def changed(image: npt.ArrayLike) -> float:
        """Fraction of pixels differing from the background by more than 30 levels."""
        diff = np.abs(np.asarray(image, dtype=np.int16) - bg)
        return float((diff.max(axis=2) > 30).mean())

    # An independent median agrees with the background almost everywhere...
    assert changed(np.median(np.stack(frames), axis=0)) < 0.001
    # ...while every real frame has people in it that the background lacks.
    assert min(changed(frame) for frame in frames) > 0.005


def test_lights_scenario_decodes_with_a_big_switch() -> None:
    lights = scenario("lights")
    assert (lights.fps, lights.duration, lights.events) == (FPS, 30.0, ())
    with av.open(str(lights.path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == FPS
        luma = []
        for frame in container.decode(stream):
            assert (frame.width, frame.height) == (WIDTH, HEIGHT)
            luma.append(float(frame.to_ndarray(format="gray").mean()))
    assert len(luma) == 300
    # Light on at 8.0 s (frame 80), off at 20.0 s (frame 200).
    assert luma[80] - luma[79] > 40
    assert luma[199] - luma[200] > 60
    assert abs(luma[290] - luma[10]) < 2
