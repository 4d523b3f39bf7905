"""Camera sources: the Pi camera (picamera2), a replayed video file, a synthetic scene."""

from __future__ import annotations

import logging
from pathlib import Path

from pinthesky.camera.base import AnalysisPort, Camera
from pinthesky.errors import SourceError
from pinthesky.media import RateGate
from pinthesky.settings import Settings

log = logging.getLogger(__name__)

__all__ = ["AnalysisPort", "Camera", "RateGate", "make_camera"]


def make_camera(settings: Settings) -> Camera:
    """The source the settings ask for. ``auto`` takes the Pi camera wherever picamera2 is
    installed, and the synthetic scene (with a warning) only where it is not: a picamera2
    that is too old or does not import, or a Pi whose camera is missing, fails loudly instead
    of recording something else."""
    source = settings.source.source
    if source == "synthetic":
        from pinthesky.camera.synthetic import SyntheticSource

        return SyntheticSource(settings.camera)
    if source in ("auto", "picamera2"):
        from pinthesky.camera import picam, stack

        version = stack.picamera2_version()
        if version is None:
            if source == "picamera2":
                raise SourceError(
                    "picamera2: not installed here (on a Pi: apt install python3-picamera2)"
                )
            log.warning("no picamera2 on this machine: using the synthetic scene")
            from pinthesky.camera.synthetic import SyntheticSource

            return SyntheticSource(settings.camera)
        problem = stack.unsupported(version)
        if problem is not None:
            raise SourceError(problem)
        if not picam.camera_present():  # a picamera2 that does not import raises here
            raise SourceError(
                "picamera2: no camera detected (check the ribbon cable and that the camera is "
                "enabled); use --source synthetic to run without one"
            )
        return picam.PicameraSource(settings.camera)
    from pinthesky.camera.replay import ReplaySource

    return ReplaySource(Path(source), settings.camera, settings.source.replay_speed)
