"""Take the screenshot of the camera's page that the README shows, to ``images/page.png``.

The daemon replays the walkers of Debian's ``opencv-doc`` ``vtest.avi`` (fetched once by
``tests/footage.py``): first as fast as it can, to cut its clips and their pictures, then in
real time with the page on and a password, so the page shows the live picture, the clips, a
still taken with its button and the controls as an owner sees them. Debian's Chromium,
headless, takes the picture at a laptop's width. Run with ``.venv/bin/python images/page.py``.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import footage  # noqa: E402
from chromium import Chromium  # noqa: E402
from servers import free_port  # noqa: E402

OUT = Path(__file__).with_suffix(".png")
PASSWORD = "screenshot"
PINTHESKY = REPO / ".venv" / "bin" / "pinthesky"
SHOWN = """(async () => {
  const deadline = Date.now() + 60000;
  for (;;) {
    const img = document.querySelector('img');
    const clips = document.querySelectorAll('video, a[href*="/clips/"]').length;
    if (img && img.naturalWidth > 0 && clips > 0 && document.body.dataset.ready === '1') {
      return true;
    }
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
})()"""

STILL = """(async () => {
  const deadline = Date.now() + 30000;
  for (;;) {
    const img = document.querySelector('#stills img');
    if (img && img.complete && img.naturalWidth > 0) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
})()"""


def main() -> None:
    video = footage.vtest_path()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        common = ["--combine-dir", str(work / "clips"), "--capture-dir", str(work / "stills")]
        common += ["--local-settings", str(work / "local-settings.toml"), "--timestamp"]
        subprocess.run(
            [PINTHESKY, "--source", str(video), "--replay-speed", "0", *common],
            check=True,
            capture_output=True,
        )
        config = work / "camera.toml"
        config.write_text(f'[http]\npassword = "{PASSWORD}"\n')
        port = free_port()
        daemon = subprocess.Popen(
            [PINTHESKY, "--config", str(config), "--source", str(video), *common,
             "--http-port", str(port), "--http-bind", "127.0.0.1"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            auth = base64.b64encode(f"owner:{PASSWORD}".encode()).decode()
            deadline = time.monotonic() + 30
            with Chromium(work / "profile") as browser:
                while True:  # until the daemon listens
                    page = browser.open(
                        f"http://127.0.0.1:{port}/", {"Authorization": f"Basic {auth}"}
                    )
                    if browser.evaluate(page, "document.title !== ''"):
                        break
                    if time.monotonic() > deadline:
                        raise SystemExit("the daemon's page did not answer within 30 s")
                    time.sleep(0.5)
                if not browser.evaluate(page, SHOWN):
                    raise SystemExit("the page showed no live picture or no clip within 60 s")
                browser.evaluate(page, "document.getElementById('still').click()")
                if not browser.evaluate(page, STILL):
                    raise SystemExit("the still asked for on the page was not listed within 30 s")
                browser.evaluate(page, "window.scrollTo(0, 0)")
                browser.screenshot(page, OUT)
        finally:
            daemon.terminate()
            daemon.wait(10)
    os.chmod(OUT, 0o644)
    print(OUT)


if __name__ == "__main__":
    main()
