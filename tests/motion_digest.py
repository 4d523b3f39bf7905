"""Run by ``test_emulated`` on this machine and on an emulated Pi Zero W core: the motion
analyzer over frames from a ``.npy`` file, every score printed as JSON (the two must match).

Usage: python motion_digest.py SOURCE_DIR FRAMES.npy (SOURCE_DIR holds the pinthesky package).
"""

from __future__ import annotations

import json
import sys

import numpy as np

sys.path.insert(0, sys.argv[1])

from pinthesky.record.motion import MotionAnalyzer, MotionTracker
from pinthesky.settings import Resolution, defaults

settings = defaults()
frames = np.load(sys.argv[2])
height, width = frames.shape[1:]
analyzer = MotionAnalyzer(Resolution(width, height), Resolution(640, 480), settings.motion)
tracker = MotionTracker(settings.camera.sensitivity, settings.motion.min_time, quiet=1.0)
scores, events = [], []
for i, frame in enumerate(frames):
    score = analyzer.analyse(frame, i * 200_000)  # 5 analysed frames a second
    scores.append([score.blocks, score.cells, score.lighting, score.noise])
    events += [type(e).__name__ for e in tracker.update(score)]
print(json.dumps({"scores": scores, "events": events}))
