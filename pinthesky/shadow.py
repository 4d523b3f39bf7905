"""The named shadow ``pinthesky``: the configuration document the cloud reads.

``reported_document`` renders the live settings in the contract's six sections and types
(``resolution`` "WxH", ``recording_window`` "S-E", ``log_level`` a name). The Pi In The Sky
console splits ``resolution`` and ``recording_window`` in both ``reported`` and ``desired``, so
they are always strings: no window is reported as ``"0-23"`` (always recording).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pinthesky.settings import Settings


def _text(value: Path | str | None) -> str | None:
    return None if value is None else str(value)


def reported_document(s: Settings) -> dict[str, Any]:
    c, cc, cw, st, dp = s.camera, s.cloud_connection, s.cloudwatch, s.storage, s.dataplane
    return {
        "camera": {
            "buffer": c.buffer,
            "buffer_size": c.buffer_size,
            "sensitivity": c.sensitivity,
            "rotation": c.rotation,
            "resolution": str(c.resolution),
            "framerate": c.framerate,
            "recording_window": str(c.recording_window) if c.recording_window else "0-23",
            "encoding_level": c.encoding_level,
            "encoding_profile": c.encoding_profile,
            "encoding_bitrate": c.encoding_bitrate,
        },
        "cloud_connection": {
            "cert_path": _text(cc.cert_path),
            "key_path": _text(cc.key_path),
            "cacert_path": _text(cc.cacert_path),
            "thing_name": cc.thing_name,
            "role_alias": cc.role_alias,
            "credentials_endpoint": cc.credentials_endpoint,
        },
        "health": {"interval": s.health.interval},
        "cloudwatch": {
            "enabled": cw.enabled,
            "threaded": cw.threaded,
            "delineate_stream": cw.delineate_stream,
            "log_group_name": cw.log_group_name,
            "metric_namespace": cw.metric_namespace,
            "log_level": s.daemon.log_level,
            "event_type": cw.event_type,
            "region_name": cw.region_name,
        },
        "storage": {
            "enabled": st.enabled,
            "bucket_name": st.bucket_name,
            "video_prefix": st.video_prefix,
            "image_prefix": st.image_prefix,
        },
        "dataplane": {
            "enabled": dp.enabled,
            "endpoint_url": dp.endpoint_url,
            "region_name": dp.region_name,
        },
    }
