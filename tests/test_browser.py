"""Clips play in a real browser: Debian's Chromium, headless, loads a clip over HTTP (with
Range requests, as any web server serves files), reads its duration and size, and seeks to
its last frame."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from conftest import run_daemon, settings_for

PAGE = """<!doctype html><html><body>
<video id="v" src="CLIP" muted playsinline preload="auto"></video>
<script>
const v = document.getElementById('v');
const log = [];
const out = (s) => { log.push(s); document.body.setAttribute('data-result', log.join('|')); };
v.addEventListener('loadedmetadata', () => {
  out('meta ' + v.duration.toFixed(2) + ' ' + v.videoWidth + 'x' + v.videoHeight);
  v.currentTime = v.duration - 0.2;
});
v.addEventListener('seeked', () => out('seeked ' + v.currentTime.toFixed(2) + ' ' + v.readyState));
v.addEventListener('error', () => out('error ' + (v.error && v.error.code)));
</script></body></html>"""


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with byte ranges (the standard library's handler has none)."""

    def log_message(self, *args: Any) -> None:
        pass

    def send_head(self) -> Any:
        path = self.translate_path(self.path)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not Path(path).is_file() or not match:
            return super().send_head()
        size = Path(path).stat().st_size
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) else size - 1
        fh = open(path, "rb")  # noqa: SIM115 - closed by the base class after copyfile
        fh.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self._left = end - start + 1
        return fh

    def copyfile(self, source: Any, outputfile: Any) -> None:
        left = getattr(self, "_left", None)
        if left is None:
            super().copyfile(source, outputfile)
            return
        while left > 0:
            chunk = source.read(min(65536, left))
            if not chunk:
                break
            outputfile.write(chunk)
            left -= len(chunk)


def test_a_clip_plays_and_seeks_to_its_end_in_chromium(footage, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "make test installs Debian's chromium"
    settings = settings_for(
        tmp_path,
        **{
            "source.source": footage.scenario("small_object").path,
            "source.replay_speed": 0,
            "recorder.pre_roll": 3,
            "recorder.post_roll": 4,
        },
    )
    (clip,) = run_daemon(settings).clips
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(clip.path, site / "clip.mp4")
    (site / "page.html").write_text(PAGE.replace("CLIP", "clip.mp4"))

    def handler(*args: Any) -> RangeHandler:
        return RangeHandler(*args, directory=str(site))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = f"http://127.0.0.1:{server.server_address[1]}/page.html"
        dom = subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                page,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        ).stdout
    finally:
        server.shutdown()
        server.server_close()
    found = re.search(r'data-result="([^"]*)"', dom)
    assert found, dom[-500:]
    events = found.group(1).split("|")
    meta = events[0].split()
    assert meta[0] == "meta" and abs(float(meta[1]) - clip.duration) < 0.1 and meta[2] == "640x480"
    seeked = events[1].split()
    assert seeked[0] == "seeked" and abs(float(seeked[1]) - (clip.duration - 0.2)) < 0.15
    assert seeked[2] == "4"  # HAVE_ENOUGH_DATA: the last frames decoded
