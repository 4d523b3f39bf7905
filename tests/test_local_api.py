"""The control API of the local page over real HTTP (synthetic source, real daemon): settings
read and changed live, kept in the --local-settings file with its comments, reported to the
shadow; a manual clip and a still; clips by day with their pictures; delete; and hostile input
(no password, another site, bad bodies), plus the server's defences against huge Range
numbers, idle connections and viewers that stop reading (issue 14 W1, W4, W5)."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from conftest import eventually
from intruder import FORGED_HOSTS, Attack, guessed, knock
from test_web import CLIP, fetch, plant_clips, serve, web_settings

from pinthesky.daemon.app import Daemon
from pinthesky.local import guard
from pinthesky.local.web import MAX_CONNECTIONS, MAX_PER_ADDRESS, NEW_BURST
from pinthesky.settings import Rect

PASSWORD = "s3cr3t pw"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"me:{PASSWORD}".encode()).decode()}


def call(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    sent = {**AUTH, **({"Content-Type": "application/json"} if data is not None else {})}
    status, _, raw = fetch_body(port, method, path, data, {**sent, **(headers or {})})
    return status, json.loads(raw) if raw else None


def fetch_body(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def control_settings(tmp_path: Path, **flags: Any) -> Any:
    return web_settings(tmp_path, **{"http.password": PASSWORD, **flags})


def test_settings_change_live_are_kept_with_comments_and_reported(tmp_path):
    local = tmp_path / "local-settings.toml"
    local.write_text("# my own note\n[camera]\n# keep this\nsensitivity = 12\n")

    def check(daemon: Daemon, port: int) -> None:
        assert daemon.settings.camera.sensitivity == 12  # read at start, after --config
        status, doc = call(port, "GET", "/api/settings")
        assert status == 200 and doc["control"] is True
        assert doc["settings"]["camera"]["sensitivity"] == 12
        by_key = {f"{o['section']}.{o['name']}": o for o in doc["options"]}
        assert by_key["camera.framerate"]["allowed"] == "a whole number from 1 to 120"
        assert "macroblocks" in by_key["camera.sensitivity"]["help"]
        assert "storage.bucket_name" not in by_key and "http.password" not in by_key
        restarts = daemon.camera_restarts
        status, doc = call(
            port,
            "PATCH",
            "/api/settings",
            {"camera": {"sensitivity": 40}, "recorder": {"post_roll": "4.5"}},
        )
        assert status == 200, doc
        assert doc["changed"] == ["camera.sensitivity", "recorder.post_roll"] and doc["saved"]
        assert daemon.settings.camera.sensitivity == 40 and daemon._tracker.sensitivity == 40
        assert daemon.settings.recorder.post_roll == 4.5
        assert daemon.camera_restarts == restarts  # applied in place
        reported = json.loads(daemon.settings.events.configure_input.read_text())
        assert reported["camera"]["sensitivity"] == 40
        # A setting the camera cannot take running reopens it, like a shadow change.
        status, doc = call(port, "PATCH", "/api/settings", {"camera": {"framerate": 10}})
        assert status == 200 and daemon.camera_restarts == restarts + 1
        assert daemon.info is not None and float(daemon.info.framerate) == 10

    serve(control_settings(tmp_path), check)
    text = local.read_text()
    assert text.startswith("# my own note\n[camera]\n# keep this\nsensitivity = 40\n")
    assert "framerate = 10" in text and "post_roll = 4.5" in text


def test_bad_settings_are_refused_whole_with_one_line_each(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        before = daemon.settings
        for body, words in (
            ({"camera": {"framerate": 0}}, "camera.framerate = 0: must be a whole number"),
            ({"camera": {"sensitivity": 5, "rotation": 45}}, "must be one of 0, 90, 180, 270"),
            ({"storage": {"bucket_name": "evil"}}, "storage.bucket_name: not changeable here"),
            ({"http": {"password": ""}}, "http.password: not changeable here"),
            ({"nope": {"x": 1}}, "nope.x: unknown setting"),
            ({"camera": "fast"}, "camera: must be an object"),
            ([1, 2], "send {"),
            ({"motion": {"mask_rects": [[1, 2, -3, 4]]}}, "rectangles X,Y,W,H"),
        ):
            status, doc = call(port, "PATCH", "/api/settings", body)
            assert status == 400 and words in doc["error"], (body, doc)
        assert daemon.settings == before  # nothing half applied
        status, _, raw = fetch_body(
            port,
            "PATCH",
            "/api/settings",
            b"{not json",
            {**AUTH, "Content-Type": "application/json"},
        )
        assert status == 400 and b"not valid JSON" in raw
        status, _, raw = fetch_body(
            port, "PATCH", "/api/settings", b'{"camera":{}}', {**AUTH, "Content-Type": "text/plain"}
        )
        assert status == 415
        status, _, raw = fetch_body(
            port,
            "PATCH",
            "/api/settings",
            b"[" * 100_000,
            {**AUTH, "Content-Type": "application/json"},
        )
        assert status == 413
        status, _, _ = fetch_body(
            port, "PATCH", "/api/settings", b"[" * 5000 + b"]" * 5000,
            {**AUTH, "Content-Type": "application/json"},
        )  # fmt: skip
        assert status == 400  # deep nesting is bad JSON to us, not a crash
        assert call(port, "PUT", "/api/settings", {"a": 1})[0] == 405
        assert call(port, "DELETE", "/api/settings")[0] == 405
        assert call(port, "GET", "/api/nothing")[0] == 404
        assert daemon.settings == before

    serve(control_settings(tmp_path), check)
    assert not (tmp_path / "local-settings.toml").exists()


def test_every_problem_in_a_settings_change_is_named_and_the_answer_stays_small(tmp_path):
    """A key the page may not change does not hide a bad value of one it may: every problem
    in the body is one line of ``errors``; thousands of them are counted, not listed."""

    def check(daemon: Daemon, port: int) -> None:
        before = daemon.settings
        body = {
            "http": {"password": "x"},
            "camera": {"framerate": 0, "rotation": 45, "sensitivity": 20},
            "nope": {"x": 1},
        }
        status, doc = call(port, "PATCH", "/api/settings", body)
        assert status == 400, doc
        lines = doc["errors"]
        assert lines[0] == "http.password: not changeable here"
        assert any("camera.framerate = 0: must be a whole number" in e for e in lines), lines
        assert any("camera.rotation = 45: must be one of 0, 90, 180, 270" in e for e in lines)
        assert "nope.x: unknown setting" in lines
        assert lines[-1].startswith("the page may change camera.resolution, ")
        assert len(lines) == 5 and not any("sensitivity" in e for e in lines[:-1])
        assert daemon.settings == before  # all or nothing
        flood = {f"s{i}": {"k": 1} for i in range(3000)} | {"camera": {"framerate": 0}}
        status, doc = call(port, "PATCH", "/api/settings", flood)
        lines = doc["errors"]
        assert status == 400 and len(lines) <= 21 and len(json.dumps(doc)) < 4000
        assert lines[-2] == "and 2982 more problems" and lines[-1].startswith("the page may")

    serve(control_settings(tmp_path), check)


def test_without_a_password_the_api_is_read_only_and_says_how_to_enable_it(tmp_path):
    plant_clips(tmp_path)

    def check(daemon: Daemon, port: int) -> None:
        status, doc = call(port, "GET", "/api/settings")
        assert status == 200 and doc["control"] is False
        for method, path, body in (
            ("PATCH", "/api/settings", {"camera": {"sensitivity": 5}}),
            ("POST", "/api/record", {"duration": 3}),
            ("POST", "/api/still", {}),
            ("DELETE", "/api/clips/1700000000.motion.mp4", None),
        ):
            status, doc = call(port, method, path, body)
            assert status == 403 and "set http.password" in doc["error"], (method, path)
        assert (tmp_path / "clips" / "1700000000.motion.mp4").exists()
        assert daemon.settings.camera.sensitivity == 10

    serve(web_settings(tmp_path), check)


def test_requests_from_another_site_or_without_the_password_change_nothing(tmp_path):
    plant_clips(tmp_path)

    def check(daemon: Daemon, port: int) -> None:
        body = {"camera": {"sensitivity": 5}}
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Sec-Fetch-Site": "same-site", "Origin": f"http://127.0.0.1:{port}"},
        ):
            status, doc = call(port, "PATCH", "/api/settings", body, headers)
            assert status == 403 and "another site" in doc["error"], headers
            assert call(port, "DELETE", "/api/clips/1700000000.motion.mp4", None, headers)[0] == 403
        status, _, _ = fetch_body(port, "PATCH", "/api/settings", json.dumps(body).encode(), {
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(b"me:wrong").decode(),
        })  # fmt: skip
        assert status == 401
        assert daemon.settings.camera.sensitivity == 10
        assert (tmp_path / "clips" / "1700000000.motion.mp4").exists()
        # The page itself (same origin, as a browser sends it) may.
        same = {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"}
        assert call(port, "PATCH", "/api/settings", body, same)[0] == 200
        assert daemon.settings.camera.sensitivity == 5

    serve(control_settings(tmp_path), check)


def test_record_still_clips_by_day_with_pictures_and_delete(tmp_path):
    clips = plant_clips(tmp_path)
    (clips / "1700000100.motion.jpg").write_bytes(b"\xff\xd8picture\xff\xd9")
    os.symlink("/etc/passwd", clips / "1700000000.motion.jpg")  # a planted link: not served

    def check(daemon: Daemon, port: int) -> None:
        status, doc = call(port, "GET", "/api/clips")
        assert status == 200
        listed = {c["name"]: (d["day"], c) for d in doc["days"] for c in d["clips"]}
        day, clip = listed["1700000100.motion.mp4"]
        assert day == time.strftime("%Y-%m-%d", time.localtime(1700000100))
        assert clip["thumbnail"] == "thumbs/1700000100.motion.mp4" and clip["size"] == 1000
        assert listed["1700000000.motion.mp4"][1]["thumbnail"] is None
        assert listed["1700000200.motion.h264"][1]["playable"] is False
        status, headers, body = fetch(port, "/thumbs/1700000100.motion.mp4", AUTH)
        assert (status, headers["content-type"], body) == (
            200,
            "image/jpeg",
            b"\xff\xd8picture\xff\xd9",
        )
        assert fetch(port, "/thumbs/1700000000.motion.mp4", AUTH)[0] == 404
        assert fetch(port, "/thumbs/..%2F..%2Fetc%2Fpasswd", AUTH)[0] == 404

        status, doc = call(port, "POST", "/api/record", {"duration": 1})
        assert status == 202, doc
        made = eventually(lambda: [p for p in daemon.store.clips() if p.name.startswith(
            str(int(time.time()))[:6])], 30, "the manual clip")  # fmt: skip
        assert made[0].stat().st_size > 1000
        for bad in ({"duration": 0}, {"duration": "5"}, {"duration": 10_000}, {"duration": True}):
            assert call(port, "POST", "/api/record", bad)[0] == 400
        status, doc = call(port, "POST", "/api/still", {})
        assert status == 200 and (tmp_path / "images" / doc["name"]).read_bytes()[:2] == b"\xff\xd8"

        status, doc = call(port, "DELETE", "/api/clips/1700000100.motion.mp4")
        assert (status, doc) == (200, {"deleted": "1700000100.motion.mp4"})
        assert not (clips / "1700000100.motion.mp4").exists()
        assert not (clips / "1700000100.motion.jpg").exists()
        assert call(port, "DELETE", "/api/clips/1700000100.motion.mp4")[0] == 404
        for name in ("..%2F..%2Fetc%2Fpasswd", "1700000000.motion.jpg", "%2Fetc%2Fpasswd", ""):
            assert call(port, "DELETE", "/api/clips/" + name)[0] == 404
        assert os.path.islink(clips / "1700000000.motion.jpg") and Path("/etc/passwd").exists()
        assert (clips / "1700000000.motion.mp4").read_bytes() == CLIP

    serve(control_settings(tmp_path), check)


def test_two_stills_in_the_same_second_are_two_files_both_listed(tmp_path):
    import concurrent.futures

    def check(daemon: Daemon, port: int) -> None:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: call(port, "POST", "/api/still", {}), range(2)))
        assert [status for status, _ in answers] == [200, 200]
        names = sorted(doc["name"] for _, doc in answers)
        assert names[0] != names[1]
        stems = [n.removesuffix(".jpg").split("-") for n in names]
        if stems[0][1] == stems[1][1]:  # the same second: the second one is numbered
            assert names == [f"img-{stems[0][1]}-1.jpg", f"img-{stems[0][1]}.jpg"]
        status, doc = call(port, "GET", "/api/stills")
        assert status == 200 and doc["total"] == 2
        assert sorted(s["name"] for s in doc["stills"]) == names
        for name in names:
            status, headers, body = fetch(port, f"/stills/{name}?download=1", AUTH)
            assert status == 200 and headers["content-type"] == "image/jpeg"
            assert body[:2] == b"\xff\xd8" and name in headers["content-disposition"]
            assert body == (tmp_path / "images" / name).read_bytes()
        for bad in ("..%2Flocal-settings.toml", "%2Fetc%2Fpasswd", "nope.jpg", ""):
            assert fetch(port, f"/stills/{bad}", AUTH)[0] == 404
            assert call(port, "DELETE", f"/api/stills/{bad}")[0] == 404
        status, doc = call(port, "DELETE", f"/api/stills/{names[0]}")
        assert (status, doc) == (200, {"deleted": names[0]})
        assert not (tmp_path / "images" / names[0]).exists()
        assert [s["name"] for s in call(port, "GET", "/api/stills")[1]["stills"]] == names[1:]

    serve(control_settings(tmp_path), check)


def test_a_manual_clip_asked_for_during_a_motion_clip_says_it_joins_it(tmp_path):
    """The synthetic scene's object crosses 10 s in: while its clip is recorded, record on
    the page extends it, the answer says so, and the clip's facts name both triggers."""

    def check(daemon: Daemon, port: int) -> None:
        def motion_clip() -> Any:
            clip = daemon.recorder.open_clip if daemon.recorder else None
            return clip if clip is not None and clip.trigger == "motion" else None

        joined = eventually(motion_clip, 40, "a motion clip being recorded")
        status, doc = call(port, "POST", "/api/record", {"duration": 3})
        assert status == 202, doc
        assert doc["joined"] == joined.name and doc["trigger"] == "motion"
        assert doc["note"] == (
            f"joins the motion clip {joined.name} being recorded: it goes on for at least 3 s more"
        )

        def listed() -> Any:
            days = call(port, "GET", "/api/clips")[1]["days"]
            return next((c for d in days for c in d["clips"] if c["name"] == joined.name), None)

        clip = eventually(listed, 60, "the clip, finished")
        assert clip["trigger"] == "motion" and clip["triggers"] == ["motion", "manual"]
        # A request with no clip under way is a clip of its own.
        eventually(lambda: daemon.recorder and daemon.recorder.open_clip is None, 60, "idle")
        status, doc = call(port, "POST", "/api/record", {"duration": 1})
        assert status == 202 and "joined" not in doc

    serve(control_settings(tmp_path, **{"recorder.pre_roll": 1, "recorder.post_roll": 1}), check)


def test_a_local_change_stands_until_the_cloud_changes_its_desired_value(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        out = daemon.settings.events.configure_output

        def desired(sensitivity: int, framerate: int = 20) -> None:
            doc = {"current": {"state": {"desired": {
                "camera": {"sensitivity": sensitivity, "framerate": framerate}}}}}  # fmt: skip
            out.write_text(json.dumps(doc))

        assert daemon.control is not None
        shadow = daemon.control.shadow
        reads = shadow.reads
        desired(30)
        eventually(lambda: daemon.settings.camera.sensitivity == 30, 20, "the cloud's value")
        eventually(lambda: shadow.reads > reads)
        assert call(port, "PATCH", "/api/settings", {"camera": {"sensitivity": 70}})[0] == 200
        reads = shadow.reads
        desired(30)  # the sidecar's echo of our report: the same desired value
        eventually(lambda: shadow.reads > reads, 20, "the document read")
        assert daemon.settings.camera.sensitivity == 70
        desired(55)  # the cloud asks for something new: it wins
        eventually(lambda: daemon.settings.camera.sensitivity == 55, 20, "the new desired value")
        assert call(port, "PATCH", "/api/settings", {"camera": {"sensitivity": 80}})[0] == 200

    serve(control_settings(tmp_path), check)

    # After a restart the sidecar's last document (desired 55) is read again at start: the
    # local 80, kept in the local settings file, still stands.
    def after_restart(daemon: Daemon, port: int) -> None:
        assert daemon.control is not None
        eventually(lambda: daemon.control.shadow.reads >= 1, 20, "the stored document read")
        assert daemon.settings.camera.sensitivity == 80

    serve(control_settings(tmp_path), after_restart)  # settings loaded again, as at a start


def test_a_mask_rectangle_takes_effect_on_the_next_frame(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        full = int(daemon._analyzer.cell_mask.sum())
        status, doc = call(
            port, "PATCH", "/api/settings", {"motion": {"mask_rects": [[0, 0, 320, 480]]}}
        )
        assert status == 200 and doc["settings"]["motion"]["mask_rects"] == [[0, 0, 320, 480]]
        assert daemon.settings.motion.mask_rects == (Rect(0, 0, 320, 480),)
        assert int(daemon._analyzer.cell_mask.sum()) == full // 2
        assert not daemon._analyzer.cell_mask[:, : daemon._analyzer.cols // 2].any()

    serve(control_settings(tmp_path), check)
    assert 'mask_rects = "0,0,320,480"' in (tmp_path / "local-settings.toml").read_text()


# -- hostile clients (issue 14) ----------------------------------------------------------------


def test_a_huge_range_number_is_416_without_a_traceback(tmp_path, caplog):
    plant_clips(tmp_path)
    caplog.set_level(logging.DEBUG)

    def check(daemon: Daemon, port: int) -> None:
        huge = "9" * 5000
        for value, status in (
            (f"bytes={huge}-", 416),
            (f"bytes=0-{huge}", 206),
            (f"bytes=-{huge}", 206),
            (f"bytes={huge}-{huge}", 416),
        ):
            got, headers, body = fetch(port, "/clips/1700000000.motion.mp4", {"Range": value})
            assert got == status, value[:20]
            if status == 206:
                assert (
                    body == CLIP
                    and headers["content-range"] == f"bytes 0-{len(CLIP) - 1}/{len(CLIP)}"
                )

    serve(web_settings(tmp_path), check)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_idle_connections_do_not_lock_others_out(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        idle = []
        try:
            for n in range(MAX_CONNECTIONS + 16):  # from five machines, sixteen each
                source = (f"127.0.0.{10 + n % 5}", 0)
                s = socket.create_connection(("127.0.0.1", port), 10, source_address=source)
                s.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")  # a head that never ends
                idle.append(s)
            eventually(lambda: len(daemon.web._clients) >= MAX_CONNECTIONS, 20, "the idle ones")
            for _ in range(5):
                status, _, body = fetch(port, "/health.json")
                assert status == 200, body
            assert daemon.web is not None and daemon.web.evicted >= 16
            # One more machine past its share evicts its own, never the owner's (127.0.0.1).
            flood = [
                socket.create_connection(("127.0.0.1", port), 10, source_address=("127.0.0.10", 0))
                for _ in range(MAX_PER_ADDRESS)
            ]
            idle += flood
            assert fetch(port, "/health.json")[0] == 200
            # A machine opening connections faster than anyone looks: closed unread.
            for _ in range(NEW_BURST + 50):
                with contextlib.suppress(OSError):
                    knock(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "127.0.0.20")
            assert daemon.web.rate.refused >= 40
            assert fetch(port, "/health.json")[0] == 200
        finally:
            for s in idle:
                s.close()

    serve(web_settings(tmp_path), check)


def test_a_viewer_that_stops_reading_is_dropped_and_frees_its_slot(tmp_path):
    def check(daemon: Daemon, port: int) -> None:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(10)
        slow.connect(("127.0.0.1", port))
        try:
            slow.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert slow.recv(12).startswith(b"HTTP/1.1 200")
            eventually(lambda: daemon.web.mjpeg.viewers == 1, 10, "the slow viewer")
            assert fetch(port, "/stream.mjpg")[0] == 503  # the one slot is taken
            # It reads nothing more: once the small buffers are full, the server's write
            # waits, and after its stall time the server lets the viewer go.
            eventually(lambda: daemon.web.mjpeg.viewers == 0, 60, "the stalled viewer let go")
            assert daemon.web.dropped_viewers == 1
        finally:
            slow.close()
        status, _, _ = fetch_head(port, "/stream.mjpg")
        assert status == 200  # the slot is free again

    serve(web_settings(tmp_path, **{"http.max_viewers": 1}), check)


def fetch_head(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), b""
    finally:
        conn.close()


# -- a hostile home network ---------------------------------------------------------------------


def test_an_emptied_roll_keeps_the_camera_running_through_its_restarts(tmp_path):
    """The page's form sends "" for a field the owner cleared: the roll follows buffer again,
    and the camera reopens for this change and for the ones after it."""

    def check(daemon: Daemon, port: int) -> None:
        restarts = daemon.camera_restarts
        body = {"recorder": {"pre_roll": ""}, "camera": {"resolution": "320x240"}}
        status, doc = call(port, "PATCH", "/api/settings", body)
        assert status == 200, doc
        assert doc["settings"]["recorder"]["pre_roll"] == 7.0  # buffer // 2
        for body in (
            {"camera": {"framerate": 10}},
            {"recorder": {"post_roll": ""}, "camera": {"resolution": "640x480"}},
        ):
            status, doc = call(port, "PATCH", "/api/settings", body)
            assert status == 200, doc
        assert daemon.camera_restarts == restarts + 3
        assert daemon.settings.recorder.post_roll == 15.0
        assert daemon.ring is not None
        newest = daemon.ring.newest_ts()
        eventually(lambda: daemon.ring is not None and daemon.ring.newest_ts() != newest, 20)

    serve(control_settings(tmp_path), check)
    assert "pre_roll = 7.0" in (tmp_path / "local-settings.toml").read_text()


def test_huge_numbers_odd_digits_and_floods_of_keys_are_short_400s(tmp_path, caplog):
    plant_clips(tmp_path)
    caplog.set_level(logging.INFO)

    def check(daemon: Daemon, port: int) -> None:
        before = daemon.settings
        huge = 10**400
        for section, name in (
            ("motion", "min_time"),
            ("recorder", "pre_roll"),
            ("recorder", "post_roll"),
            ("recorder", "max_clip"),
            ("camera", "framerate"),
        ):
            status, doc = call(port, "PATCH", "/api/settings", {section: {name: huge}})
            assert status == 400 and f"{section}.{name}" in doc["error"], doc
            assert len(json.dumps(doc)) < 1000
        for rects in ([[10**18, 0, 1, 1]], [[0, 0, huge, 1]], [[600, 400, 41, 80]]):
            status, doc = call(port, "PATCH", "/api/settings", {"motion": {"mask_rects": rects}})
            assert status == 400 and "motion.mask_rects" in doc["error"], doc
        # A 12 KB body of unknown keys: the answer names the changeable keys once.
        body = {"camera": {f"k{i:04d}": 1 for i in range(1000)}}
        status, _, raw = fetch_body(
            port, "PATCH", "/api/settings", json.dumps(body).encode(),
            {**AUTH, "Content-Type": "application/json"},
        )  # fmt: skip
        assert status == 400 and len(raw) < 4096, len(raw)
        assert daemon.settings == before
        token = base64.b64encode(f"me:{PASSWORD}".encode())
        for length in (b"\xb2", b"\xb9\xb2", b"1\xb3"):  # digits to str.isdigit(), not to int()
            head = (
                b"PATCH /api/settings HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic "
                + token
                + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + length
                + b"\r\n\r\n{}"
            )
            assert knock(port, head) == 400, length
        status, _, body = fetch(port, "/clips/1700000000.motion.mp4", {**AUTH, "Range": "bytes=²-"})
        assert status == 200 and body == CLIP  # a range it cannot read: the whole file

    serve(control_settings(tmp_path), check)
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_only_the_names_of_the_camera_are_answered(tmp_path):
    """DNS rebinding: a page on another site names the camera with a name of its own. Without
    a password there is nothing else between it and the clips."""
    plant_clips(tmp_path)
    own = socket.gethostname()

    def check(daemon: Daemon, port: int) -> None:
        for host in FORGED_HOSTS:
            for path in ("/", "/health.json", "/clips/1700000000.motion.mp4", "/stream.mjpg"):
                status, _, body = fetch(port, path, {"Host": host})
                assert status == 403, (host, path, status)
                assert CLIP[:64] not in body and b"uptime" not in body
        for host in (
            "localhost",
            f"LOCALHOST:{port}",
            "127.0.0.1",
            f"127.0.0.1:{port}",
            "[::1]",
            own,
            f"{own}.local.",
            "cam.example.net",
            f"Cam.Example.Net:{port}",
        ):
            assert fetch(port, "/health.json", {"Host": host})[0] == 200, host
        assert daemon.web is not None and daemon.web.wrong_host == len(FORGED_HOSTS) * 4
        two = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n\r\n"
        assert knock(port, two) == 400
        assert knock(port, b"GET /health.json HTTP/1.1\r\n\r\n") == 400
        assert knock(port, b"GET /health.json HTTP/1.0\r\n\r\n") == 200

    serve(web_settings(tmp_path, **{"http.host_names": "cam.example.net"}), check)


def test_password_guessing_is_slowed_per_address_and_the_owner_still_gets_in(tmp_path, caplog):
    caplog.set_level(logging.INFO)

    def check(daemon: Daemon, port: int) -> None:
        attack = Attack(port, 0, PASSWORD, {})

        def owner() -> None:  # elsewhere on the network: not slowed at all
            for _ in range(3):
                started = time.monotonic()
                assert fetch(port, "/health.json", AUTH)[0] == 200
                assert time.monotonic() - started < 1.0

        statuses = guessed(attack.guess_page, attack, owner)
        checked = statuses[401]
        # The rest turned away unchecked (429), or closed unread for opening too many.
        assert set(statuses) <= {401, 429, "reset"} and statuses[429] + statuses["reset"] > 0
        # The guesser stops; from the same address the right password works within the
        # longest wait (answered 429 with when to try again until then).
        stopped = time.monotonic()

        def owner_at_the_guessers_address() -> bool:
            try:
                status, headers, _ = fetch(port, "/health.json", AUTH, source="127.0.0.2")
            except ConnectionError:  # closed unread: the guessers' connections still count
                return False
            assert status == 200 or int(headers["retry-after"]) <= guard.MAX_WAIT_S
            return status == 200

        eventually(owner_at_the_guessers_address, guard.MAX_WAIT_S + 5, "the owner gets in")
        assert time.monotonic() - stopped <= guard.MAX_WAIT_S + 1
        assert daemon.web is not None and daemon.web.guard.wrong == checked

    serve(control_settings(tmp_path), check)
    lines = [r.getMessage() for r in caplog.records if r.name == "pinthesky.local.guard"]
    assert len(lines) == 2, lines  # the first wrong password, then the summary at stop
    assert "127.0.0.2" in lines[-1] and "turned away" in lines[-1]
