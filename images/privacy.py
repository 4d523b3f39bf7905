"""Draw a frame of real footage with a privacy mask and the timestamp burnt in, as the camera
records it, to ``images/privacy.jpg`` (the README opens with it).

The footage is the walkers of Debian's ``opencv-doc`` ``vtest.avi`` (fetched once by
``tests/footage.py``), scaled to 640x480; the mask hides the shop window at the top right, as
an owner would hide a neighbour's window. Run with ``.venv/bin/python images/privacy.py``.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import av

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import footage  # noqa: E402

from pinthesky.camera.overlay import Burn, Overlay  # noqa: E402
from pinthesky.camera.x264 import encode_jpeg  # noqa: E402
from pinthesky.settings import Rect, Resolution, defaults  # noqa: E402

OUT = Path(__file__).with_suffix(".jpg")
MASK = Rect(430, 0, 210, 170)
WHEN = 1_767_267_930.0  # a winter morning, local time where it is drawn


def main() -> None:
    settings = dataclasses.replace(
        defaults().camera,
        resolution=Resolution(640, 480),
        privacy_masks=(MASK,),
        timestamp="%Y-%m-%d %H:%M:%S",
        timestamp_position="bottom-left",
    )
    burn = Burn()
    burn.set(Overlay(settings, lambda ts: WHEN + ts / 1e6))
    with av.open(str(footage.vtest_path())) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 120:
                yuv = frame.to_ndarray(format="yuv420p", width=640, height=480)
                break
    burn.apply_i420(yuv, 0)
    OUT.write_bytes(encode_jpeg(av.VideoFrame.from_ndarray(yuv, format="yuv420p"), quality=80))
    print(OUT)


if __name__ == "__main__":
    main()
