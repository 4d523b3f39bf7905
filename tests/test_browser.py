"""Clips play in a real browser: Debian's Chromium, headless, loads a clip over HTTP (with
Range requests, as any web server serves files), reads its duration and size, and seeks to
its last frame; and the daemon's own local page works in it: live MJPEG and clip playback."""

from __future__ import annotations

import base64
import http.server
import re
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
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


SEEKED = """(async () => {
  const v = document.getElementById('v');
  const log = () => document.body.getAttribute('data-result') || '';
  const until = (test, events) => new Promise((resolve) => {
    if (test()) { resolve(); return; }
    for (const e of events) v.addEventListener(e, () => { if (test()) resolve(); });
  });
  await until(() => /seeked|error/.test(log()), ['seeked', 'error']);
  if (/seeked/.test(log())) {
    await until(() => v.readyState >= 4, ['canplaythrough', 'canplay', 'progress', 'seeked']);
  }
  return { log: log(), ready: v.readyState };
})()"""


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


def one_clip(footage: Any, tmp_path: Path) -> Any:
    """The clip the daemon records of the small-object footage (replayed at full speed)."""
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
    return clip


def test_a_clip_plays_and_seeks_to_its_end_in_chromium(footage, tmp_path):
    from chromium import Chromium

    chromium = shutil.which("chromium")
    assert chromium, "make test installs Debian's chromium"
    clip = one_clip(footage, tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(clip.path, site / "clip.mp4")
    (site / "page.html").write_text(PAGE.replace("CLIP", "clip.mp4"))

    def handler(*args: Any) -> RangeHandler:
        return RangeHandler(*args, directory=str(site))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Chromium(tmp_path / "profile") as browser:
            page = browser.open(f"http://127.0.0.1:{server.server_address[1]}/page.html")
            # Waits on the page's events for the seek (or an error), then for the last
            # frames to be decoded: nothing is read before the browser has done it.
            result = browser.evaluate(page, SEEKED)
    finally:
        server.shutdown()
        server.server_close()
    events = result["log"].split("|")
    meta = events[0].split()
    assert meta[0] == "meta" and abs(float(meta[1]) - clip.duration) < 0.1 and meta[2] == "640x480"
    seeked = events[1].split()
    assert seeked[0] == "seeked" and abs(float(seeked[1]) - (clip.duration - 0.2)) < 0.15
    assert result["ready"] == 4  # HAVE_ENOUGH_DATA: the last frames decoded


LIVE_PICTURE = """(async () => {
  const img = document.getElementById('live');
  const deadline = Date.now() + 30000;
  const later = (ms) => new Promise((r) => setTimeout(r, ms));
  while (img.naturalWidth === 0) {
    if (Date.now() > deadline) return {error: 'no live picture'};
    await later(50);
  }
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const g = canvas.getContext('2d');
  const grab = () => {
    g.drawImage(img, 0, 0);
    return g.getImageData(0, 0, canvas.width, canvas.height).data;
  };
  const first = grab();
  let changed = 0;
  while (changed < 1000) {
    if (Date.now() > deadline) return {error: 'the live picture never changed'};
    await later(100);
    const now = grab();
    changed = 0;
    for (let i = 0; i < now.length; i += 4) if (Math.abs(now[i] - first[i]) > 8) changed++;
  }
  return {width: img.naturalWidth, height: img.naturalHeight, changed};
})()"""

PLAY_CLIP = """(async () => {
  const deadline0 = Date.now() + 30000;
  while (document.body.dataset.ready !== '1') {
    if (Date.now() > deadline0) return {error: 'the page never finished loading'};
    await new Promise((r) => setTimeout(r, 50));
  }
  const play = document.querySelector('#clips .clip[data-name] button.play');
  if (!play) return {error: 'no play button'};
  play.click();
  const v = document.querySelector('#clips video');
  if (!v) return {error: 'no video element'};
  v.muted = true;
  if (v.readyState < 1) {
    await new Promise((ok, bad) => {
      v.addEventListener('loadedmetadata', ok, {once: true});
      v.addEventListener('error', () => bad(new Error('video error ' + (v.error && v.error.code))));
      v.load();
    });
  }
  const duration = v.duration;
  await v.play();
  const start = v.currentTime;
  const deadline = Date.now() + 30000;
  while (v.currentTime < start + 1.0) {
    if (Date.now() > deadline) return {error: 'currentTime did not advance', at: v.currentTime};
    await new Promise((r) => setTimeout(r, 50));
  }
  return {duration, start, now: v.currentTime, width: v.videoWidth, height: v.videoHeight,
          src: v.currentSrc};
})()"""


def test_the_local_page_in_chromium(footage, tmp_path):
    """The daemon's own page in a real browser: the live image shows the camera and changes, a
    clip from the clip directory plays in the page's <video>, and a screenshot is kept."""
    from chromium import Chromium
    from conftest import REPO
    from test_web import serve, web_settings

    clip = one_clip(footage, tmp_path)
    artifact = REPO / ".cache" / "artifacts" / "live-page.png"
    results: dict[str, Any] = {}

    def check(daemon: Any, port: int) -> None:
        with Chromium(tmp_path / "profile") as browser:
            page = browser.open(f"http://127.0.0.1:{port}/")
            results["live"] = browser.evaluate(page, LIVE_PICTURE)
            results["clip"] = browser.evaluate(page, PLAY_CLIP)
            browser.evaluate(page, "window.scrollTo(0, 0)")
            results["shot"] = browser.screenshot(page, artifact)

    serve(web_settings(tmp_path), check)
    print(f"screenshot of the local page: {results['shot']}")
    live, played = results["live"], results["clip"]
    assert "error" not in live, live
    assert (live["width"], live["height"]) == (640, 480) and live["changed"] >= 1000
    assert "error" not in played, played
    assert played["src"].endswith(f"/clips/{clip.path.name}")
    assert abs(played["duration"] - clip.duration) < 0.1
    assert played["now"] >= played["start"] + 1.0
    assert (played["width"], played["height"]) == (640, 480)
    assert results["shot"].stat().st_size > 10_000
    assert results["shot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


READY = """(async () => {
  const deadline = Date.now() + 30000;
  while (document.body.dataset.ready !== '1') {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
})()"""


def wait_js(browser: Any, page: str, condition: str, timeout_ms: int = 30000) -> Any:
    """Poll ``condition`` (a JS expression) in the page until it is truthy; its value."""
    return browser.evaluate(
        page,
        f"""(async () => {{
  const deadline = Date.now() + {timeout_ms};
  for (;;) {{
    const v = ({condition});
    if (v) return v;
    if (Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, 50));
  }}
}})()""",
    )


def drag(browser: Any, page: str, box: list[float], steps: tuple[float, ...]) -> None:
    """Press the mouse at the first of ``steps`` (fractions along the diagonal of ``box``:
    left, top, width, height), move through the others, release at the last."""
    left, top, width, height = box
    kinds = ["mousePressed"] + ["mouseMoved"] * (len(steps) - 1) + ["mouseReleased"]
    for kind, f in zip(kinds, [*steps, steps[-1]], strict=True):
        browser.call("Input.dispatchMouseEvent", {
            "type": kind, "x": left + f * width, "y": top + f * height, "button": "left",
            "buttons": 0 if kind == "mouseReleased" else 1, "clickCount": 1,
        }, session=page)  # fmt: skip


def test_the_control_page_in_chromium(tmp_path):
    """The page as a user drives it: a setting changed in the form, a clip recorded with the
    button, a clip deleted (two clicks), and a mask dragged on the live picture, each checked in
    the daemon's state and on disk."""
    import base64

    from chromium import Chromium
    from conftest import REPO, eventually
    from test_web import plant_clips, serve, web_settings

    from pinthesky.settings import Rect

    clips = plant_clips(tmp_path)
    (clips / "1700000100.motion.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    local = tmp_path / "local-settings.toml"
    auth = "Basic " + base64.b64encode(b"me:pw 1").decode()
    artifact = REPO / ".cache" / "artifacts" / "control-page.png"
    seen: dict[str, Any] = {}

    def check(daemon: Any, port: int) -> None:
        with Chromium(tmp_path / "profile") as browser:
            page = browser.open(f"http://127.0.0.1:{port}/", {"Authorization": auth})
            assert browser.evaluate(page, READY), "the page's script never finished loading"
            seen["help"] = browser.evaluate(
                page, "document.querySelector('label[for=\"f-camera.sensitivity\"] small')"
                ".textContent")  # fmt: skip
            seen["cards"] = browser.evaluate(page, """[
                ...document.querySelectorAll('.clip[data-name]')
            ].map((c) => [c.dataset.name, c.querySelector('.thumb').tagName])""")  # fmt: skip
            assert browser.evaluate(page, "document.getElementById('control-off').hidden")

            # A setting, through the form.
            browser.evaluate(page, """(() => {
                document.getElementById('f-camera.sensitivity').value = '33';
                document.getElementById('save').click(); })()""")  # fmt: skip
            assert wait_js(browser, page, "document.getElementById('status').textContent"
                           ".startsWith('saved')")  # fmt: skip
            eventually(lambda: daemon.settings.camera.sensitivity == 33, 20, "sensitivity 33")
            assert "sensitivity = 33" in local.read_text()

            # A manual clip, with the button.
            before = set(daemon.store.clips())
            browser.evaluate(page, """(() => {
                document.getElementById('duration').value = '1';
                document.getElementById('record').click(); })()""")  # fmt: skip
            assert wait_js(browser, page, "document.getElementById('status').textContent"
                           ".startsWith('recording')")  # fmt: skip
            made = eventually(lambda: set(daemon.store.clips()) - before, 30, "the manual clip")
            assert next(iter(made)).stat().st_size > 1000

            # Delete: the first click asks, the second deletes.
            sel = "document.querySelector('.clip[data-name=\"1700000000.motion.mp4\"] .delete')"
            browser.evaluate(page, f"{sel}.click()")
            assert browser.evaluate(page, f"{sel}.textContent") == "really delete?"
            assert (clips / "1700000000.motion.mp4").exists()
            browser.evaluate(page, f"{sel}.click()")
            eventually(lambda: not (clips / "1700000000.motion.mp4").exists(), 20, "deleted")
            assert wait_js(browser, page, f"!{sel}")  # gone from the list too

            # A mask: drag from 10 % to 50 % of the live picture with the mouse, then save.
            box = browser.evaluate(page, """(() => {
                const c = document.getElementById('mask'); c.scrollIntoView();
                document.getElementById('draw').click();
                const b = c.getBoundingClientRect();
                return [b.left, b.top, b.width, b.height]; })()""")  # fmt: skip
            drag(browser, page, box, (0.1, 0.3, 0.5))
            seen["drawn"] = browser.evaluate(page, "window.pinthesky.rects")
            browser.evaluate(page, "document.getElementById('save-mask').click()")
            assert wait_js(browser, page, "document.getElementById('status').textContent"
                           ".startsWith('mask saved')")  # fmt: skip
            seen["masked"] = int((~daemon._analyzer.cell_mask).sum())

            # A privacy mask: the other kind, from 60 % to 80 %, drawn in its own colour.
            browser.evaluate(page, """(() => { const k = document.getElementById('mask-kind');
                k.value = 'privacy'; k.dispatchEvent(new Event('change')); })()""")  # fmt: skip
            drag(browser, page, box, (0.6, 0.7, 0.8))
            seen["colour"] = browser.evaluate(page, """(() => {
                const c = document.getElementById('mask');
                const p = c.getContext('2d').getImageData(c.width * 0.7, c.height * 0.7, 1, 1);
                return Array.from(p.data); })()""")  # fmt: skip
            browser.evaluate(page, "document.getElementById('save-mask').click()")
            assert wait_js(browser, page, "document.getElementById('status').textContent"
                           ".startsWith('privacy mask saved')")  # fmt: skip
            seen["shot"] = browser.screenshot(page, artifact)
        seen["mask"] = daemon.settings.motion.mask_rects
        seen["privacy"] = daemon.settings.camera.privacy_masks
        seen["hidden"] = int((~daemon._analyzer.cell_mask).sum())

    serve(web_settings(tmp_path, **{"http.password": "pw 1"}), check)
    print(f"screenshot of the control page: {seen['shot']}")
    assert "moving 16x16 macroblocks" in seen["help"] and "allowed: a whole number" in seen["help"]
    cards = dict(seen["cards"])
    assert cards["1700000100.motion.mp4"] == "IMG" and cards["1700000200.motion.h264"] == "DIV"
    assert seen["drawn"] == [[64, 48, 256, 192]]
    assert seen["mask"] == (Rect(64, 48, 256, 192),) and seen["masked"] > 0
    assert 'mask_rects = "64,48,256,192"' in local.read_text()
    # The privacy mask: dark, not the motion mask's red; kept, and hidden from the analysis.
    red, green, _blue, alpha = seen["colour"]
    assert alpha > 150 and red < 60 and green < 60
    assert seen["privacy"] == (Rect(384, 288, 128, 96),)
    assert seen["hidden"] > seen["masked"]
    assert 'privacy_masks = "384,288,128,96"' in local.read_text()


def test_without_a_password_the_page_says_how_to_enable_control(tmp_path):
    from chromium import Chromium
    from test_web import plant_clips, serve, web_settings

    plant_clips(tmp_path)
    seen: dict[str, Any] = {}

    def check(daemon: Any, port: int) -> None:
        with Chromium(tmp_path / "profile") as browser:
            page = browser.open(f"http://127.0.0.1:{port}/")
            assert browser.evaluate(page, READY), "the page's script never finished loading"
            seen.update(browser.evaluate(page, """(() => ({
                note: document.getElementById('control-off').hidden ? '' :
                    document.getElementById('control-off').textContent,
                disabled: [...document.querySelectorAll('#record, #still, #save, #save-mask,'
                    + ' .delete, #settings input')].every((b) => b.disabled),
                deletes: document.querySelectorAll('.clip[data-name] .delete').length,
                fields: document.querySelectorAll('#settings input').length,
            }))()"""))  # fmt: skip

    serve(web_settings(tmp_path), check)
    assert "Set password in the [http] section of the --config file" in seen["note"]
    assert seen["disabled"] and seen["deletes"] == 3 and seen["fields"] >= 10


def test_the_page_opened_with_the_password_in_its_address(tmp_path):
    """``http://user:password@camera/``: the page's own address carries the credentials, so
    every relative address does too, and fetch refuses those. The script asks for absolute
    addresses without them (the browser sends the password it was given for the page):
    settings load and save, the clips, the live picture, health and a still show."""
    from chromium import Chromium
    from test_web import plant_clips, serve, web_settings

    plant_clips(tmp_path)
    seen: dict[str, Any] = {}

    def check(daemon: Any, port: int) -> None:
        with Chromium(tmp_path / "profile") as browser:
            page = browser.open(f"http://me:pw-1@127.0.0.1:{port}/")
            assert browser.evaluate(page, READY), "the page's script never finished loading"
            seen.update(browser.evaluate(page, """(() => ({
                base: document.baseURI,
                fields: document.querySelectorAll('#settings input').length,
                control: document.getElementById('control-off').hidden,
                cards: [...document.querySelectorAll('#clips .clip[data-name]')]
                    .map((c) => c.dataset.name),
                health: document.querySelectorAll('#health dt').length,
            }))()"""))  # fmt: skip
            seen["live"] = wait_js(browser, page, "document.getElementById('live').naturalWidth")
            browser.evaluate(page, """(() => {
                document.getElementById('f-camera.sensitivity').value = '27';
                document.getElementById('save').click(); })()""")  # fmt: skip
            seen["saved"] = wait_js(
                browser,
                page,
                "document.getElementById('status').textContent"
                ".startsWith('saved') && document.getElementById('status').textContent",
            )
            browser.evaluate(page, "document.getElementById('still').click()")
            seen["still"] = wait_js(browser, page, """(() => {
                const img = document.querySelector('#stills .still img');
                return img && img.complete && img.naturalWidth; })()""")  # fmt: skip
            seen["sensitivity"] = daemon.settings.camera.sensitivity

    serve(web_settings(tmp_path, **{"http.password": "pw-1"}), check)
    assert seen["base"].startswith("http://me:pw-1@127.0.0.1:")  # relative ones carry them
    assert seen["fields"] >= 10 and seen["control"]
    assert seen["cards"] == [
        "1700000200.motion.h264",
        "1700000100.motion.mp4",
        "1700000000.motion.mp4",
    ]
    assert seen["health"] >= 5 and seen["live"] == 640
    assert seen["saved"] == "saved: camera.sensitivity" and seen["sensitivity"] == 27
    assert seen["still"] == 640


PHONE_LAYOUT = """(() => {
  const vw = screen.width;  // the phone's (the window grows to fit a page too wide)
  const live = document.getElementById('live');
  const liveTop = live.getBoundingClientRect().top + scrollY;
  const controls = [...document.querySelectorAll(
    'main button, main input, main select, main a, #mask')];
  const problems = [];
  for (const c of controls) {
    c.scrollIntoView({block: 'center', inline: 'nearest'});
    const r = c.getBoundingClientRect();
    const name = c.id || c.name || (c.textContent || '').trim().slice(0, 30) || c.tagName;
    if (r.width === 0 || r.height === 0) { problems.push(name + ': not shown'); continue; }
    // Where it is on the page, not in the window (scrolling into view may scroll sideways).
    const left = r.left + scrollX, right = r.right + scrollX;
    if (left < -0.5 || right > vw + 0.5) {
      problems.push(name + ': off the screen, from ' + left + ' to ' + right + ' px');
    }
    const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
    if (!(hit === c || c.contains(hit))) {
      problems.push(name + ': under ' + (hit ? hit.tagName + '#' + hit.id : 'nothing'));
    }
    if (c.tagName !== 'A' && c.id !== 'mask' && r.height < 32) {
      problems.push(name + ': ' + r.height + ' px high, too small to tap');
    }
    if (r.top + scrollY < liveTop) problems.push(name + ': above the live picture');
  }
  window.scrollTo(0, 0);
  const box = live.getBoundingClientRect();
  return {
    vw, window: window.innerWidth, controls: controls.length, problems,
    scrollWidth: document.documentElement.scrollWidth,
    bodyWidth: document.body.scrollWidth,
    live: [box.left, box.top, box.width],
    inputs: document.querySelectorAll('#settings input').length,
  };
})()"""


@pytest.mark.parametrize("size", [(360, 740), (390, 844)])
def test_the_page_on_a_phone(tmp_path, size):
    """At a phone's width the page scrolls only down: the live picture first and as wide as
    the screen, every control (settings, record, still, masks, each clip's and still's
    buttons and links) on the screen, uncovered and big enough to tap."""
    from chromium import Chromium
    from conftest import REPO
    from test_web import plant_clips, serve, web_settings

    plant_clips(tmp_path)
    width, height = size
    artifact = REPO / ".cache" / "artifacts" / f"page-{width}x{height}.png"
    seen: dict[str, Any] = {}

    def check(daemon: Any, port: int) -> None:
        auth = "Basic " + base64.b64encode(b"me:pw 1").decode()
        with Chromium(tmp_path / "profile") as browser:
            page = browser.open(
                f"http://127.0.0.1:{port}/", {"Authorization": auth}, size=size, mobile=True
            )
            assert browser.evaluate(page, READY), "the page's script never finished loading"
            browser.evaluate(page, "document.getElementById('still').click()")
            assert wait_js(browser, page, "!!document.querySelector('#stills .still img')")
            seen.update(browser.evaluate(page, PHONE_LAYOUT))
            browser.evaluate(page, "window.scrollTo(0, 0)")
            seen["shot"] = browser.screenshot(page, artifact)

    serve(web_settings(tmp_path, **{"http.password": "pw 1"}), check)
    print(f"screenshot of the page on a phone: {seen['shot']}")
    assert seen["vw"] == width and seen["window"] == width
    assert seen["scrollWidth"] <= width and seen["bodyWidth"] <= width  # no sideways scroll
    assert seen["problems"] == []
    assert seen["controls"] > 40 and seen["inputs"] >= 10
    left, top, live_width = seen["live"]
    assert top < 60 and left < 20 and live_width >= width - 30  # on top, the screen's width


def test_one_list_of_clips_that_stays_current_without_a_reload(tmp_path):
    """Each clip once on the page; a clip deleted there leaves nothing pointing at it; clips
    that appear or go on the camera's own (a new clip, one uploaded or evicted) and health
    follow in the open page, without a reload."""
    import http.client
    import json as jsonlib

    from chromium import Chromium
    from test_web import CLIP, plant_clips, serve, web_settings

    clips = plant_clips(tmp_path)
    (clips / "1700000100.motion.jpg").write_bytes(b"\xff\xd8\xff\xd9")
    auth = "Basic " + base64.b64encode(b"me:pw 1").decode()
    seen: dict[str, Any] = {}
    since_start = """(() => {
        const dt = [...document.querySelectorAll('#health dt')]
            .find((d) => d.textContent === 'clips since start');
        return dt && dt.nextElementSibling.textContent; })()"""

    def check(daemon: Any, port: int) -> None:
        with Chromium(tmp_path / "profile") as browser:
            page = browser.open(f"http://127.0.0.1:{port}/", {"Authorization": auth})
            assert browser.evaluate(page, READY), "the page's script never finished loading"
            seen.update(browser.evaluate(page, """(() => ({
                headings: [...document.querySelectorAll('h2')].map((h) => h.textContent),
                each: [...new Set([...document.querySelectorAll('[data-name]')]
                    .map((c) => c.dataset.name))].map((n) =>
                    [n, document.querySelectorAll('[data-name="' + n + '"]').length]),
            }))()"""))  # fmt: skip
            seen["health_before"] = browser.evaluate(page, since_start)

            # Deleted on the page: nothing on it points at the clip any more.
            sel = "document.querySelector('.clip[data-name=\"1700000000.motion.mp4\"] .delete')"
            browser.evaluate(page, f"{sel}.click(); {sel}.click()")
            assert wait_js(browser, page, """!document.getElementById('clips').innerHTML
                .includes('1700000000.') && ![...document.querySelectorAll('[href], [src]')]
                .some((e) => (e.href || e.src).includes('1700000000.'))""")  # fmt: skip
            seen["dead"] = browser.evaluate(page, """(async () => {
                const urls = [...document.querySelectorAll('#clips [href], #clips [src]')]
                    .map((e) => e.href || e.src);
                const dead = [];
                for (const u of urls) {
                    const r = await fetch(u, {method: 'HEAD', credentials: 'same-origin'});
                    if (r.status !== 200) dead.push(u + ' ' + r.status);
                }
                return {checked: urls.length, dead}; })()""")  # fmt: skip

            # The camera's own changes, while the page stays open.
            browser.evaluate(page, "window.notReloaded = true")
            (clips / "1700000300.motion.mp4").write_bytes(CLIP)
            (clips / "1700000100.motion.mp4").unlink()  # uploaded, or evicted
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            conn.request("POST", "/api/record", jsonlib.dumps({"duration": 1}), {
                "Authorization": auth, "Content-Type": "application/json"})  # fmt: skip
            assert conn.getresponse().status == 202
            conn.close()
            seen["after"] = wait_js(browser, page, f"""(() => {{
                const names = [...document.querySelectorAll('#clips .clip[data-name]')]
                    .map((c) => c.dataset.name);
                const clips = {since_start};
                return names.includes('1700000300.motion.mp4') &&
                    !names.includes('1700000100.motion.mp4') && clips === '1' &&
                    window.notReloaded && {{names, clips}}; }})()""", 60_000)  # fmt: skip

    serve(web_settings(tmp_path, **{"http.password": "pw 1"}), check)
    assert seen["headings"] == ["Clips", "Stills", "Health", "Settings"]
    assert dict(seen["each"]) == {
        "1700000000.motion.mp4": 1,
        "1700000100.motion.mp4": 1,
        "1700000200.motion.h264": 1,
    }
    assert seen["dead"]["checked"] == 3 and seen["dead"]["dead"] == []
    assert seen["health_before"] == "0"
    assert seen["after"], "the open page never showed the camera's changes"
    assert len(seen["after"]["names"]) == 3  # the new one, the manual one, the h264 one
