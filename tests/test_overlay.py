"""Privacy masks and the timestamp, burnt into the picture before anything sees it.

The masks must be black in every frame of a clip, in stills and in live view, and what they
hide is never analysed; the rest of the picture is untouched. The timestamp is read back out of
decoded video with the font it was drawn with, at every size from 320x240 to 1080p, and must
be the frame's own time.
"""

from __future__ import annotations

import dataclasses
import io
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from conftest import eventually, run_daemon, settings_for
from test_local_api import call, control_settings
from test_web import serve

from pinthesky.camera import font
from pinthesky.camera.overlay import Overlay, turned_back
from pinthesky.camera.x264 import X264Encoder
from pinthesky.daemon.app import Daemon
from pinthesky.errors import ConfigError
from pinthesky.media import US
from pinthesky.settings import Rect, Resolution, defaults, load

MASK = Rect(64, 96, 160, 120)
FPS = 10


def camera(**changes: Any) -> Any:
    return dataclasses.replace(defaults().camera, **changes)


def i420(w: int, h: int, seed: int = 1) -> np.ndarray:
    """A textured picture with colour, as a camera would give (limited range)."""
    rng = np.random.default_rng(seed)
    yuv = rng.integers(40, 180, (h * 3 // 2, w), dtype=np.uint8)
    return yuv


def planes(yuv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = yuv.shape[0] * 2 // 3, yuv.shape[1]
    flat = yuv.reshape(-1)
    n = (h // 2) * (w // 2)
    u = flat[w * h : w * h + n].reshape(h // 2, w // 2)
    v = flat[w * h + n :].reshape(h // 2, w // 2)
    return yuv[:h], u, v


def read_text(y: np.ndarray, length: int, corner: str = "top-left") -> str:
    """The text burnt into a luma plane, read back with the font it was drawn with: the ink
    (bright) found, the scale from its height, each 6x8 cell sampled at its pixels' centres
    and matched to the nearest glyph."""
    h = y.shape[0]
    region = y[: h // 3] if corner.startswith("top") else y[h * 2 // 3 :]
    # Ink is bright and drawn on its black box: bright pixels far from black are the scene.
    dark = region < 30
    near = dark.copy()
    for dy in (-2, -1, 1, 2):
        near |= np.roll(dark, dy, axis=0)
    for dx in (-2, -1, 1, 2):
        near |= np.roll(near, dx, axis=1)
    ink = (region > 200) & near
    lines = np.nonzero(ink.any(axis=1))[0]
    assert lines.size, "no text found"
    # The text is the first band of rows with ink (the scene may glint further down).
    end = next((i for i in range(1, lines.size) if lines[i] - lines[i - 1] > 3), lines.size)
    band = lines[:end]
    ink[band[-1] + 1 :] = False
    top, left = band[0], np.nonzero(ink.any(axis=0))[0][0]
    scale = max(1, round((band[-1] - top + 1) / font.HEIGHT))
    best: tuple[int, str] | None = None
    for shift in (0, 1):  # the first glyph may have an empty first column
        x0 = left - shift * scale
        text, misses = "", 0
        for i in range(length):
            cell = np.zeros((font.HEIGHT, font.WIDTH), dtype=bool)
            for r in range(font.HEIGHT):
                for c in range(font.WIDTH):
                    yy = top + r * scale + scale // 2
                    xx = x0 + (i * font.CELL_W + c) * scale + scale // 2
                    cell[r, c] = 0 <= yy < ink.shape[0] and 0 <= xx < ink.shape[1] and ink[yy, xx]
            char, miss = min(
                ((ch, int((font.glyph(ch) != cell).sum())) for ch in "0123456789-: /"),
                key=lambda t: t[1],
            )
            text += char
            misses += miss
        if best is None or misses < best[0]:
            best = (misses, text)
    assert best is not None
    return best[1]


# -- the overlay on planes ---------------------------------------------------------------------


def test_a_mask_is_black_and_the_rest_untouched() -> None:
    yuv = i420(640, 480)
    before = yuv.copy()
    plane = Overlay(camera(privacy_masks=(MASK,)), lambda ts: 0.0).on((640, 480))
    y, u, v = planes(yuv)
    plane.apply(y, u, v, 0)
    assert (y[96:216, 64:224] == 16).all()
    assert (u[48:108, 32:112] == 128).all() and (v[48:108, 32:112] == 128).all()
    outside = np.ones((480, 640), dtype=bool)
    outside[96:216, 64:224] = False
    assert (y[outside] == before[:480][outside]).all()
    _, u0, _ = planes(before)
    assert (np.delete(u, np.s_[48:108], axis=0) == np.delete(u0, np.s_[48:108], axis=0)).all()


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_masks_and_text_follow_the_picture_as_it_is_shown(rotation: int) -> None:
    """Drawn on the picture as the viewer sees it (turned by the display rotation): once the
    frame is turned as a player shows it, the mask is where it was drawn and the text reads
    upright in its corner."""
    settings = camera(
        resolution=Resolution(640, 480),
        privacy_masks=(Rect(200, 200, 100, 50),),
        timestamp="%H:%M:%S",
        rotation=rotation,
    )
    overlay = Overlay(settings, lambda ts: 3600.0 * 7 + 5, rotation)
    sensor = (640, 480)
    yuv = np.full((480 * 3 // 2, 640), 100, np.uint8)
    y, u, v = planes(yuv)
    overlay.on(sensor).apply(y, u, v, 0)
    shown = np.rot90(y, k=-(rotation // 90))  # as a player turns it, clockwise
    assert (shown[200:250, 200:300] == 16).all()
    assert (shown[260:, 310:] == 100).all() and (shown[100:190, :] == 100).all()
    assert read_text(shown, 8) == time.strftime("%H:%M:%S", time.localtime(3600 * 7 + 5))


def test_turned_back_undoes_a_quarter_turn() -> None:
    # A 4x2 picture seen turned clockwise is 2x4: its top-left cell is the sensor's bottom-left.
    rect, size = turned_back(Rect(0, 0, 1, 1), 1, (2, 4))
    assert size == (4, 2) and rect == Rect(0, 1, 1, 1)


def read_in_place(y: np.ndarray, plane: Any, length: int) -> str:
    """The text at the place ``plane`` puts a text of ``length`` characters: each dot of each
    cell sampled at its centre, black or white, matched to the nearest glyph."""
    scale, o = plane.scale, plane.outline
    box = plane.place(font.bitmap("0" * length, scale))
    text = ""
    for i in range(length):
        x0, y0 = box.x + o + i * font.CELL_W * scale, box.y + o
        cell = np.array(
            [
                [
                    y[y0 + r * scale + scale // 2, x0 + c * scale + scale // 2] > 125
                    for c in range(font.WIDTH)
                ]
                for r in range(font.HEIGHT)
            ]
        )
        text += min("0123456789-: ", key=lambda ch: int((font.glyph(ch) != cell).sum()))
    return text


@pytest.mark.parametrize("size", [(320, 240), (640, 480), (1280, 720), (1920, 1080)])
def test_the_timestamp_is_legible_after_the_encoder_at_every_size(
    footage: Any, size: tuple[int, int]
) -> None:
    """Burnt into 3 seconds of real footage (the walkers) at the bitrate the camera would
    use, encoded, decoded: every frame reads back as its own time, so the text changes from
    one second to the next."""
    w, h = size
    fmt = "%Y-%m-%d %H:%M:%S"
    start = 1_767_225_599.5  # half a second before a new year: every field changes
    settings = camera(resolution=Resolution(w, h), timestamp=fmt, framerate=FPS)
    plane = Overlay(settings, lambda ts: start + ts / US).on(size)
    encoder = X264Encoder(w, h, Fraction(FPS), settings.bitrate, iperiod=FPS)
    packets = []
    with av.open(str(footage.vtest_path())) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 3 * FPS:
                break
            yuv = frame.to_ndarray(format="yuv420p", width=w, height=h)
            y, u, v = planes(yuv)
            plane.apply(y, u, v, i * US // FPS)
            made = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            packets += encoder.encode(made, i * US // FPS)
    packets += encoder.encode(None)
    codec = av.CodecContext.create("h264", "r")
    texts = []
    for p in packets:
        for frame in codec.decode(av.Packet(p.data)):
            texts.append(read_in_place(frame.to_ndarray()[:h], plane, 19))
    expected = [time.strftime(fmt, time.localtime(start + i / FPS)) for i in range(3 * FPS)]
    assert texts == expected
    assert len(set(texts)) == 4


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("masks", "problem"),
    [
        ("600,400,100,100", "600,400,100,100 reaches out of the 640x480 picture"),
        ("0,0,640,480", "the rectangles hide the whole picture"),
        ("0,0,320,480;320,0,320,480", "the rectangles hide the whole picture"),
    ],
)
def test_a_mask_out_of_the_picture_or_hiding_it_all_is_one_line(masks: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load({"camera.privacy_masks": masks}, environ={})
    assert str(err.value).startswith("camera.privacy_masks = ")
    assert problem in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "masks", ["0,0,0,10", "10,10,-5,10", "a,b,c,d", "1,2,3", "1000000000000000000,0,10,10"]
)
def test_an_empty_or_malformed_mask_is_one_line(masks: str) -> None:
    with pytest.raises(ConfigError, match=r"^--privacy-mask camera.privacy_masks = .*must be"):
        load({"camera.privacy_masks": masks}, environ={})


def test_a_quarter_turn_swaps_the_sides_masks_are_checked_against() -> None:
    assert load(
        {"camera.privacy_masks": "0,0,480,600", "camera.rotation": 90}, environ={}
    ).camera.privacy_masks == (Rect(0, 0, 480, 600),)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("on", "%Y-%m-%d %H:%M:%S"),
        ("off", None),
        ("%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M"),
        (True, "%Y-%m-%d %H:%M:%S"),
    ],
)
def test_timestamp_values(raw: Any, value: Any) -> None:
    assert load({"camera.timestamp": raw}, environ={}).camera.timestamp == value


@pytest.mark.parametrize("raw", ["%H:%M \u00e9t\u00e9", "x" * 65, 5, "Front door", "NaN"])
def test_a_bad_timestamp_format_is_one_line(raw: Any) -> None:
    with pytest.raises(ConfigError, match=r"^--timestamp camera.timestamp = .*strftime format"):
        load({"camera.timestamp": raw}, environ={})


# -- the daemon, end to end ----------------------------------------------------------------------


def write_video(path: Path, seconds: float, moving: list[tuple[float, float, Rect]]) -> None:
    """A 640x480 H.264 video of a textured wall; a dark square crosses each rectangle of
    ``moving`` (from, until, where) from left to right."""
    w, h = 640, 480
    rng = np.random.default_rng(3)
    wall = rng.integers(70, 180, (h, w), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"bframes": "0", "g": str(FPS)}
        for i in range(round(seconds * FPS)):
            t = i / FPS
            y = wall.copy()
            for t0, t1, r in moving:
                if t0 <= t < t1:
                    x = r.x + int((r.w - 40) * (t - t0) / (t1 - t0))
                    y[r.y + r.h // 2 - 20 : r.y + r.h // 2 + 20, x : x + 40] = 20
            yuv = np.concatenate([y, np.full((h // 2, w), 128, np.uint8)])
            for packet in stream.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_a_masked_clip_is_black_there_in_every_frame_and_motion_there_is_not_recorded(
    tmp_path: Path,
) -> None:
    """Motion only inside the mask (2-5 s) gives no clip; motion outside it (8-11 s) does, and
    every frame of that clip is black inside the mask and, elsewhere, the picture a clip of
    the same footage without the mask has."""
    video = tmp_path / "garden.mp4"
    write_video(video, 14, [(2.0, 5.0, MASK), (8.0, 11.0, Rect(380, 240, 240, 140))])
    flags = {
        "source.source": str(video),
        "source.replay_speed": 0,
        "recorder.pre_roll": 1,
        "recorder.post_roll": 1,
    }
    masked = run_daemon(
        settings_for(tmp_path / "m", **flags, **{"camera.privacy_masks": str(MASK)})
    )
    plain = run_daemon(settings_for(tmp_path / "p", **flags))
    assert len(plain.clips) == 2, "both crossings move without the mask"
    assert len(masked.clips) == 1
    clip = masked.clips[0]
    assert 6.0 <= masked.video_time(clip.start_ts) <= 8.0  # pre-roll, down to a keyframe
    # The rest of the picture is as true to the footage as in a clip without the mask.
    source = [f.to_ndarray()[:480].astype(int) for f in _decode(video)]
    plain_clip = plain.clips[1]
    plain_frames = {
        round(plain.video_time(plain_clip.start_ts) * FPS + float(f.time) * FPS): f
        for f in _decode(plain_clip.path)
    }
    outside = np.ones((480, 640), dtype=bool)
    outside[80:232, 48:240] = False  # the mask and a macroblock around it
    frames = _decode(clip.path)
    assert len(frames) >= 30
    compared = 0
    for frame in frames:
        y = frame.to_ndarray()[:480]
        assert y[100:212, 68:220].max() <= 20, "black under the mask (its edge blurs a little)"
        index = round(masked.video_time(clip.start_ts) * FPS + float(frame.time) * FPS)
        if index in plain_frames:
            other = plain_frames[index].to_ndarray()[:480].astype(int)
            error = np.abs(y.astype(int) - source[index])[outside].mean()
            plain_error = np.abs(other - source[index])[outside].mean()
            assert error <= plain_error + 1.0, (index, error, plain_error)
            compared += 1
    assert compared >= 20


def _decode(path: Path) -> list[Any]:
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


def test_the_synthetic_scene_carries_the_overlay_and_goes_back_without_it(tmp_path: Path) -> None:
    """A mask and a timestamp set on the page apply from the next frame: the synthetic scene
    then renders and encodes its frames itself; cleared, it goes back to its pre-encoded
    stream at the next keyframe. Every clip decodes; the still from the API is masked."""
    from test_local_api import PASSWORD

    def check(daemon: Daemon, port: int) -> None:
        change = {"camera": {"privacy_masks": [list(MASK)], "timestamp": "on"}}
        status, doc = call(port, "PATCH", "/api/settings", change)
        assert status == 200, doc
        assert daemon.camera_restarts == 0, "applied live"
        # Footage already in the ring keeps what it had: record from a keyframe after.
        assert daemon.ring is not None
        changed = daemon.ring.newest_ts()
        assert changed is not None
        eventually(lambda: (daemon.ring.newest_ts() or 0) > changed + 1.5 * US, 10, "frames")
        status, doc = call(port, "POST", "/api/record", {"duration": 2})
        assert status == 202
        clip = _await_clip(daemon)
        frames = _decode(clip)
        assert frames and all(f.to_ndarray()[96:216, 64:224].max() <= 20 for f in frames)
        status, doc = call(port, "POST", "/api/still", {})
        assert status == 200
        from PIL import Image

        with Image.open(io.BytesIO((tmp_path / "images" / doc["name"]).read_bytes())) as image:
            still = np.asarray(image.convert("L"))
        assert still[100:212, 68:220].max() <= 12, "the still is masked too (full range)"
        assert still[300:400, 400:600].mean() > 40
        status, doc = call(
            port, "PATCH", "/api/settings", {"camera": {"privacy_masks": [], "timestamp": "off"}}
        )
        assert status == 200
        status, doc = call(port, "POST", "/api/record", {"duration": 2})
        clip = _await_clip(daemon, after=clip)
        frames = _decode(clip)
        assert frames and frames[0].key_frame
        assert max(f.to_ndarray()[96:216, 64:224].max() for f in frames) > 60, "unmasked again"

    assert PASSWORD
    serve(control_settings(tmp_path, **{"recorder.pre_roll": 0}), check)


def _await_clip(daemon: Daemon, after: Path | None = None) -> Path:
    def finished() -> Path | None:
        clips = sorted(p for p in daemon.store.clips() if p.suffix == ".mp4" and p != after)
        return clips[-1] if clips else None

    return eventually(finished, 30, "a clip")
