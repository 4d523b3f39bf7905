"""The local page: the live picture, the controls (record, still, mask drawing), one list of
clips with playback and download, the stills, health, and the settings; on a phone as on a
laptop (one column below 640 px, nothing wider than the screen).

One small HTML document with its style inline; its one script is this camera's ``/app.js``
(``local/script.py``), which fills the controls from the ``/api/`` routes. Nothing is fetched
from anywhere but this camera, so the page works on a network without Internet access, and
without the script the live picture, the last clips and health still show. Every value shown
is escaped; clip links carry names taken from the clip directory's listing, URL-quoted.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

STYLE = """
*{box-sizing:border-box}
body{font:15px/1.4 system-ui,sans-serif;margin:0;background:#15181c;color:#e8e8e8}
header,main{max-width:1000px;margin:0 auto;padding:8px 12px}
h1{font-size:20px;margin:0;overflow-wrap:anywhere}h2{font-size:16px;margin:18px 0 8px}
h3{font-size:14px;margin:12px 0 6px;color:#9aa3ad}
#live{width:100%;height:auto;background:#000;border-radius:6px;display:block}
.clips{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(300px,100%),1fr));gap:12px}
.stills{grid-template-columns:repeat(auto-fill,minmax(min(160px,100%),1fr))}
.clip{background:#20242a;border-radius:6px;padding:8px;min-width:0}
.clip video{width:100%;border-radius:4px;background:#000}
a{color:#7cb7ff}dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px}
dt{color:#9aa3ad}dd{margin:0;overflow-wrap:anywhere}
#livebox{position:relative}#mask{position:absolute;left:0;top:0;width:100%;height:100%}
#mask.drawing{cursor:crosshair;outline:2px dashed #ff5050;touch-action:none}
.controls{display:flex;flex-wrap:wrap;align-items:center;gap:6px;margin:10px 0}
button,select,input{font:inherit;min-height:36px}
button{background:#2d6cdf;color:#fff;border:0;border-radius:4px;padding:5px 10px}
button:disabled{background:#444;color:#999}button.armed{background:#c0392b}
select{max-width:100%;background:#0e1013;color:#e8e8e8;border:1px solid #444}
fieldset{border:1px solid #333;border-radius:6px;margin:8px 0;min-width:0}legend{color:#9aa3ad}
label{display:grid;grid-template-columns:minmax(0,160px) minmax(0,200px) minmax(0,1fr);gap:8px;
align-items:center;margin:3px 0}
label small{color:#9aa3ad;overflow-wrap:anywhere}
input{background:#0e1013;color:#e8e8e8;border:1px solid #444;min-width:0;max-width:100%}
#duration{width:5em}
.thumb{width:100%;aspect-ratio:4/3;object-fit:cover;border-radius:4px;background:#000;
display:block}
.placeholder{display:flex;align-items:center;justify-content:center;color:#666}
.facts{display:flex;flex-wrap:wrap;align-items:center;gap:4px 8px;margin-top:4px}
#status.bad{color:#ff7b7b}#status.ok{color:#8fd18f}.note{color:#e0b050}
@media (max-width:640px){
label{grid-template-columns:minmax(0,1fr);gap:2px;margin:8px 0}
dl{grid-template-columns:minmax(0,auto) minmax(0,1fr)}
}
"""


@dataclass(frozen=True)
class ClipEntry:
    name: str
    start_epoch: int
    size: int

    @property
    def playable(self) -> bool:
        """Browsers play MP4; raw H.264 can only be downloaded."""
        return self.name.endswith(".mp4")


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _duration(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 86400}d {s // 3600 % 24}h {s // 60 % 60}m"
        if s >= 86400
        else (f"{s // 3600}h {s // 60 % 60}m {s % 60}s")
    )


def health_rows(h: dict[str, Any]) -> list[tuple[str, str]]:
    """Health as the page shows it: (what, value) in words (also ``/api/health``)."""
    mb = 1024  # /proc/meminfo figures are kB
    return [
        ("version", str(h.get("version", ""))),
        ("recording", "yes" if h.get("recording_status") else "no"),
        ("clips since start", str(h.get("motion_captured", 0))),
        ("up", _duration(float(h.get("up_time", 0)))),
        ("CPU used", f"{h.get('cpu_used', 0)} %"),
        ("memory available", f"{int(h.get('mem_avail', 0)) // mb} MB"),
        ("disk free", f"{int(h.get('disk_free', 0)) / 1e9:.1f} GB"),
        ("address", str(h.get("ip_addr") or "")),
    ]


def render(
    title: str,
    clips: list[ClipEntry],
    health: dict[str, Any],
    live_size: tuple[int, int],
) -> bytes:
    """The page: the live picture on top, then the controls, the one list of clips (the last
    ones, newest first; the script replaces them with every clip by day and keeps the list
    current), the stills (the script's), health and the settings."""
    e = html.escape
    w, h = live_size
    items = []
    for clip in clips:
        url = "clips/" + quote(clip.name)
        player = (
            f'<video controls muted playsinline preload="metadata" src="{e(url)}"></video>'
            if clip.playable
            else ""
        )
        items.append(
            f'<div class="clip">{player}<div class="facts">{e(_when(clip.start_epoch))} · '
            f"{clip.size / 1e6:.1f} MB · "
            f'<a href="{e(url)}?download=1" download="{e(clip.name)}">download</a></div></div>'
        )
    rows = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in health_rows(health))
    clip_list = f'<div class="clips">{"".join(items)}</div>' if items else "<p>No clip yet.</p>"
    doc = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{e(title)}</h1></header><main>"
        f'<div id="livebox"><img id="live" src="stream.mjpg" width="{w}" height="{h}" '
        'alt="live view"><canvas id="mask"></canvas></div>'
        '<p id="control-off" class="note" hidden>Control is off: this page can only look. Set '
        "<code>password</code> in the <code>[http]</code> section of the --config file and "
        "restart pinthesky to change settings, record and delete from here.</p>"
        '<div class="controls"><span><input id="duration" type="number" min="1" max="600" '
        'value="30" aria-label="seconds to record"> s</span> '
        '<button type="button" id="record" class="needs-control">record</button> '
        '<button type="button" id="still" class="needs-control">still</button> '
        '<select id="mask-kind" aria-label="mask to draw">'
        '<option value="motion">motion mask: not analysed</option>'
        '<option value="privacy">privacy mask: black in everything</option></select> '
        '<button type="button" id="draw">draw mask</button> '
        '<button type="button" id="clear-mask">clear mask</button> '
        '<button type="button" id="save-mask" class="needs-control">save mask</button> '
        '<span id="mask-count"></span></div><p id="status" role="status"></p>'
        f'<h2>Clips</h2><div id="clips">{clip_list}</div>'
        '<h2>Stills</h2><div id="stills"><p>No still yet.</p></div>'
        f'<h2>Health</h2><dl id="health">{rows}</dl>'
        '<h2>Settings</h2><form id="settings"></form>'
        '</main><script src="app.js"></script></body></html>'
    )
    return doc.encode()
