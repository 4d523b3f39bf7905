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
            "encoding_bitrate": c.bitrate,
            # Not in Pi In The Sky's document: the console keeps keys it loaded, so these
            # survive its edits.
            "alert_cooldown": s.alerts.cooldown,
            "armed": c.armed,
            "min_framerate": c.min_framerate,
            "focus": c.focus,
            "tuning": c.tuning,
            "privacy_masks": [list(r) for r in c.privacy_masks],
            "timestamp": c.timestamp,
            "timestamp_position": c.timestamp_position,
            "timestamp_size": c.timestamp_size,
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


# Keys of the shadow's desired state, as settings key paths. cloud_connection and the bucket
# can redirect credentials and uploads: only the operator may open them to the cloud.
SHADOW_KEYS: dict[str, dict[str, str]] = {
    "camera": {
        k: f"camera.{k}"
        for k in (
            "buffer",
            "buffer_size",
            "sensitivity",
            "rotation",
            "resolution",
            "framerate",
            "recording_window",
            "encoding_level",
            "encoding_profile",
            "encoding_bitrate",
            "min_framerate",
            "focus",
            "tuning",
            "privacy_masks",
            "timestamp",
            "timestamp_position",
            "timestamp_size",
            "armed",
        )
    }
    | {"alert_cooldown": "alerts.cooldown"},
    "health": {"interval": "health.interval"},
    "cloudwatch": {
        **{
            k: f"cloudwatch.{k}"
            for k in (
                "enabled",
                "threaded",
                "delineate_stream",
                "log_group_name",
                "metric_namespace",
                "event_type",
                "region_name",
            )
        },
        "log_level": "daemon.log_level",
    },
    "storage": {
        k: f"storage.{k}"
        for k in (
            "enabled",
            "bucket_name",
            "video_prefix",
            "image_prefix",
        )
    },
    "dataplane": {k: f"dataplane.{k}" for k in ("enabled", "endpoint_url", "region_name")},
    "cloud_connection": {
        k: f"cloud_connection.{k}"
        for k in (
            "cert_path",
            "key_path",
            "cacert_path",
            "thing_name",
            "role_alias",
            "credentials_endpoint",
        )
    },
}
PROTECTED = {
    "storage.bucket_name",
    *SHADOW_KEYS["cloud_connection"].values(),
}
RESTART_KEYS = {
    "camera.resolution",
    "camera.framerate",
    "camera.rotation",
    "camera.encoding_bitrate",
    "camera.encoding_profile",
    "camera.encoding_level",
    "camera.buffer_size",
    "camera.min_framerate",
    "camera.focus",
    "camera.tuning",
}
"""Settings the running camera cannot take without being reopened."""


def desired_changes(
    s: Settings, desired: Any, allow_identity: bool
) -> tuple[dict[str, Any], list[str]]:
    """The settings a shadow ``desired`` document asks to change, and one line per refusal.

    Missing sections and unknown keys are tolerated; values equal to the current ones (the
    sidecar's echo of our own report) are no change at all.
    """
    if not isinstance(desired, dict):
        return {}, ["shadow: desired state is not an object"]
    current = reported_document(s)
    changes: dict[str, Any] = {}
    refused: list[str] = []
    for section, keys in SHADOW_KEYS.items():
        body = desired.get(section)
        if not isinstance(body, dict):
            continue
        for name, value in body.items():
            key = keys.get(name)
            if key is None:
                continue  # unknown keys are tolerated (newer consoles)
            if same_value(value, current[section].get(name)):
                continue
            if key in PROTECTED and not allow_identity:
                refused.append(
                    f"shadow {key}: can only be changed on the device "
                    "(start it with --shadow-allow-identity to allow it)"
                )
                continue
            changes[key] = value
    return changes, refused


def same_value(desired: Any, reported: Any) -> bool:
    if desired == reported:
        return True
    # The console sends numbers as strings ("20" for 20).
    return isinstance(desired, str) and not isinstance(reported, bool) and desired == str(reported)
