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
    """The source the settings ask for. ``auto`` takes the Pi camera when this machine has
    picamera2, and the synthetic scene (with a warning) when it has not; a Pi whose camera
    is missing or broken fails loudly instead of quietly recording nothing."""
    source = settings.source.source
    if source == "synthetic":
        from pinthesky.camera.synthetic import SyntheticSource

        return SyntheticSource(settings.camera)
    if source in ("auto", "picamera2"):
        from pinthesky.camera import picam

        present = picam.camera_present()
        if present:
            return picam.PicameraSource(settings.camera)
        if source == "picamera2" or present is False:
            raise SourceError(
                "picamera2: no camera detected (check the ribbon cable and that the camera is "
                "enabled); use --source synthetic to run without one"
                if present is False
                else "picamera2: not installed here (on a Pi: apt install python3-picamera2)"
            )
        log.warning("no Pi camera on this machine: using the synthetic scene")
        from pinthesky.camera.synthetic import SyntheticSource

        return SyntheticSource(settings.camera)
    from pinthesky.camera.replay import ReplaySource

    return ReplaySource(Path(source), settings.camera, settings.source.replay_speed)
