"""A hostile home network, all at once, against the daemon as a process: the page's settings
fuzzed with wrong types and huge numbers, idle and half-open sockets on both ports, password
guessing on both protocols, forged Host headers, links planted in every folder the daemon
reads. Meanwhile the owner gets in, the camera records its motion into clips that decode, and
the log grows by a bounded number of lines a minute.

The attackers (``intruder.Attack``) come from other loopback addresses (127.0.0.2 guesses,
127.0.0.3 holds sockets) than the owner (127.0.0.1), as other machines on the network would.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from conftest import DaemonProcess, clip_facts, eventually
from intruder import HOSTILE_VALUES, Attack, most_guesses, request
from servers import free_port, moto_server, s3_client
from test_rtsp import read_frames

from pinthesky.settings import PAGE_KEYS

PASSWORD = "campaign pass"
BUCKET = "pits-clips"
SECRET = b"root:x:0:0:SECRET-BYTES\n"
CLIPS_WANTED = 2
"""Motion clips the synthetic scene (a walk-in every 30 s) must give during the attack."""
LINES_PER_MINUTE = 60
"""The log's budget under attack (at rest the daemon logs a few lines a minute)."""


def test_a_hostile_home_network_does_not_get_in_flood_the_log_or_stop_the_camera(tmp_path):
    http_port, rtsp_port = free_port(), free_port()
    dirs = {name: tmp_path / name for name in ("clips", "images", "events", "state")}
    for d in dirs.values():
        d.mkdir()
    dirs["secret"] = tmp_path / "secret"
    dirs["secret"].write_bytes(SECRET)
    # The sidecar's files and the page's saved changes swapped for links before the start:
    # never read, never written through.
    for name in ("in.json", "cfg-out.json"):
        (dirs["events"] / name).symlink_to(dirs["secret"])
    planted = tmp_path / "planted.toml"
    planted.write_text("[camera]\nsensitivity = 99\n")
    (dirs["state"] / "local-settings.toml").symlink_to(planted)
    config = tmp_path / "pinthesky.toml"
    config.write_text(
        f'[http]\npassword = "{PASSWORD}"\nport = {http_port}\nbind = "127.0.0.1"\n'
        f'host_names = "cam.example.net"\nlocal_settings = "{dirs["state"]}/local-settings.toml"\n'
        f'[rtsp]\nport = {rtsp_port}\nbind = "127.0.0.1"\n'
        f'[recorder]\npre_roll = 2\npost_roll = 2\n[source]\nsource = "synthetic"\n'
        f'[storage]\nbucket_name = "{BUCKET}"\nvideo_format = "mp4"\n'
        f'combine_dir = "{dirs["clips"]}"\ncapture_dir = "{dirs["images"]}"\n'
        f'[cloud_connection]\nthing_name = "cam1"\n'
        f'[events]\nevent_input = "{dirs["events"]}/in.json"\n'
        f'event_output = "{dirs["events"]}/out.json"\n'
        f'configure_input = "{dirs["events"]}/cfg-in.json"\n'
        f'configure_output = "{dirs["events"]}/cfg-out.json"\n'
    )
    with moto_server() as endpoint:
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLOUDWATCH"))}
        env.update(
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ENDPOINT_URL_S3=endpoint,
        )
        env.pop("JOURNAL_STREAM", None)
        daemon = DaemonProcess(["--config", str(config)], tmp_path, env)
        try:
            eventually(lambda: daemon.logged("first frame buffered"), 60, "the first frame")
            eventually(lambda: daemon.logged("rtsp: the camera's stream is at"), 30, "RTSP")
            began = time.monotonic()
            status, body, _ = request(http_port, "GET", "/api/settings", None, password=PASSWORD)
            assert status == 200 and json.loads(body)["settings"]["camera"]["sensitivity"] == 10

            attack = Attack(http_port, rtsp_port, PASSWORD, dirs)
            fuzz = attack.start("settings", attack.fuzz_settings)
            for n in range(2):  # two at once: one waits for its answer, the other tries
                attack.start(f"guess page {n}", attack.guess_page)
                attack.start(f"guess rtsp {n}", attack.guess_rtsp)
            attack.start("idle page", attack.idle_page)
            attack.start("idle rtsp", attack.idle_rtsp)
            attack.start("hosts", attack.forge_hosts)
            attack.start("links", attack.plant_links)

            # The owner, meanwhile: the page answers at once, the stream plays, a still taken
            # and swapped for a link at once is never uploaded as the link's target.
            slowest = 0.0
            stills = 0
            last_look = 0.0

            def owner_round() -> bool:
                nonlocal slowest, stills, last_look
                uploaded = daemon.logged(r"uploaded \d+(-\d+)?\.motion\.mp4 ")
                if len(uploaded) >= CLIPS_WANTED:
                    return True
                if time.monotonic() - last_look < 0.5:
                    return False  # an owner looks now and then, not twenty times a second
                last_look = time.monotonic()
                status, _, took = request(http_port, "GET", "/health.json", None, password=PASSWORD)
                assert status == 200
                slowest = max(slowest, took)
                status, body, _ = request(http_port, "GET", "/api/clips", None, password=PASSWORD)
                assert status == 200 and b"SECRET" not in body
                if stills < 3:
                    status, body, _ = request(
                        http_port, "POST", "/api/still", {}, password=PASSWORD
                    )
                    assert status == 200, (body, "".join(daemon.lines)[-3000:])
                    still = dirs["images"] / json.loads(body)["name"]
                    still.unlink(missing_ok=True)
                    still.symlink_to(dirs["secret"])
                    stills += 1
                return False

            eventually(lambda: attack.tally("guess rtsp")[401] >= 2, 30, "the guessing")
            frames = read_frames(
                f"rtsp://me:{PASSWORD.replace(' ', '%20')}@127.0.0.1:{rtsp_port}/live", "tcp", 10
            )
            assert len(frames) == 10
            eventually(owner_round, 180, f"{CLIPS_WANTED} motion clips recorded and uploaded")
            fuzz.join(120)  # every value sent and answered
            attack.join()
            attacked = time.monotonic() - began
            status, body, _ = request(http_port, "GET", "/api/settings", None, password=PASSWORD)
            assert status == 200 and json.loads(body)["settings"]["camera"] == {
                **json.loads(body)["settings"]["camera"],
                "resolution": "640x480",
                "framerate": 20,
                "sensitivity": 10,
            }
        finally:
            code, took = daemon.stop()
        log = "".join(daemon.lines)

        # The camera recorded through all of it, and stopped at once.
        assert code == 0 and took < 5, (code, took, log[-3000:])
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
        videos = [k for k in keys if k.endswith(".motion.mp4")]
        assert len(videos) >= CLIPS_WANTED, keys
        for key in videos:
            path = tmp_path / Path(key).name
            path.write_bytes(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
            facts = clip_facts(path)
            assert facts.first_keyframe and facts.frames >= 20, (key, facts)
        for key in keys:
            assert SECRET not in s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), key
    assert dirs["secret"].read_bytes() == SECRET and planted.read_text().endswith("= 99\n")
    # The page's saved changes went to a file of its own, in place of the planted link.
    assert not (dirs["state"] / "local-settings.toml").is_symlink()

    # The attackers got nowhere.
    got = attack.got
    crashed = [(name, k) for name, c in got.items() for k in c if str(k).startswith("crashed")]
    assert not crashed, crashed
    fuzz, hosts = got["settings"], got["hosts"]
    assert set(fuzz) <= {200, 400, "reset"}, fuzz  # reset: opened too many too fast, again
    assert fuzz[200] + fuzz[400] == len(PAGE_KEYS) * len(HOSTILE_VALUES), fuzz
    assert set(hosts) <= {403, "leaked", "reset"} and hosts["leaked"] == 0, hosts
    allowed = most_guesses(attacked)
    for name, refused in (("guess page", 429), ("guess rtsp", 503)):
        tries = attack.tally(name)
        assert set(tries) <= {401, refused, "reset"}, (name, tries)
        assert tries[401] <= allowed, (name, tries, allowed)  # one address, both threads
        assert tries[refused] > 0  # tried while slowed: turned away unchecked
    assert got["idle page"]["let go"] > 0 and got["idle rtsp"]["let go"] > 0
    assert slowest < 2.0, slowest  # the owner's page, under all of it

    # The log: a bounded number of lines a minute, no traceback.
    assert "Traceback" not in log and "SECRET" not in log
    minutes = (time.monotonic() - daemon.started) / 60
    assert len(daemon.lines) <= LINES_PER_MINUTE * minutes + 30, (len(daemon.lines), log)
    assert re.search(r"local-settings.toml: not a regular file", log)
