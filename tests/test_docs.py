"""What the documents say is what the code does."""

from __future__ import annotations

import contextlib
import functools
import io
import re
import runpy
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def test_the_settings_reference_is_the_option_table() -> None:
    """docs/settings.md's reference, made again from the option table (regenerate it with
    ``.venv/bin/python docs/settings.py --write``)."""
    reference = runpy.run_path(str(REPO / "docs" / "settings.py"))
    assert reference["current"]() == reference["table"](), "docs/settings.md is out of date"


def test_the_camera_table_is_what_the_code_decides() -> None:
    """docs/cameras.md's per-Pi, per-camera table, made again from pinthesky's rules
    (regenerate it with ``.venv/bin/python docs/cameras.py --write``)."""
    tables = runpy.run_path(str(REPO / "docs" / "cameras.py"))
    assert tables["current"]() == tables["table"](), "docs/cameras.md is out of date"


# -- every flag and setting the documents name exists ---------------------------------------

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
OURS = ("pinthesky", "pinthesky-iot", "pitsctl")
FOREIGN = {
    "--system-site-packages",  # python3 -m venv
    "--only-binary",  # pip
    "--remote-debugging-pipe",  # Chromium
}
"""Other programs' flags the documents name in passing."""
NOT_KEYS = {"local", "toml", "json", "py", "md", "jpg", "png", "mp4", "h264", "service", "log"}
"""What follows a section's name after a dot when it is a file or a host, not a setting."""


def _help(main: Any, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv)
    return out.getvalue()


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", text))


@functools.cache
def flags_of() -> dict[str, set[str]]:
    """Each command's flags, read from its own ``--help`` (which must work)."""
    from pinthesky.daemon.cli import main as daemon
    from pinthesky.installer.pitsctl import main as pitsctl
    from pinthesky.iot.sidecar import main as sidecar

    commands = ("install", "view", "remove", "alerts", "set")
    pitsctl_help = [_help(pitsctl, [c, "--help"]) for c in commands]
    found = {
        "pinthesky": _flags(_help(daemon, ["--help"]) + _help(daemon, ["detect", "--help"])),
        "pinthesky-iot": _flags(_help(sidecar, ["--help"])),
        "pitsctl": _flags(_help(pitsctl, ["--help"]) + "".join(pitsctl_help)),
    }
    for name, flags in found.items():
        assert "--help" in flags and len(flags) > 3, f"{name} --help does not work"
    return found


def _script_flags(path: Path) -> set[str]:
    """A bench/ or docs/ script's flags, from its argparse calls."""
    return set(re.findall(r"""add_argument\(\s*["'](--[a-z0-9-]+)""", path.read_text()))


def _command_lines(text: str) -> list[str]:
    """Lines of the code blocks, and inline code spans."""
    lines = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        lines += block.splitlines()
    outside = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    lines += re.findall(r"`([^`\n]+)`", outside)
    return lines


def _checked(line: str) -> tuple[str, set[str]] | None:
    """The command a line runs and the flags it may use, for the commands that are ours."""
    words = line.strip().removeprefix("$ ").split()
    while words[:1] == ["sudo"]:
        words = words[3:] if words[1:2] == ["-u"] else words[1:]
    if not words or "-->" in line:  # a diagram's arrows are not flags
        return None
    tool = words[0].rsplit("/", 1)[-1]
    if tool in OURS:
        return tool, flags_of()[tool]
    if tool == "make" and "ARGS=" in line:
        return "make run ARGS", flags_of()["pinthesky"]
    if tool.startswith("python"):
        script = next((w for w in words[1:] if w.endswith(".py")), None)
        if script and (REPO / script).is_file():
            return script, _script_flags(REPO / script)
    if words[0].startswith("--") and len(words) <= 3:  # a flag named in prose: `--pre-roll S`
        scripts = [*(REPO / "bench").glob("*.py"), *(REPO / "docs").glob("*.py")]
        return "a flag", set().union(*flags_of().values(), *map(_script_flags, scripts), FOREIGN)
    return None


def test_every_flag_the_documents_name_exists() -> None:
    """Flags in the documents' commands (ours, the benchmarks', the docs' scripts) and flags
    named on their own are flags the command has."""
    wrong, seen = [], 0
    for doc in DOCUMENTS:
        for line in _command_lines(doc.read_text()):
            checked = _checked(line)
            if checked is None:
                continue
            tool, known = checked
            seen += len(_flags(line))
            wrong += [f"{doc.name}: {tool} {f}" for f in _flags(line) - known]
    assert not wrong, "\n".join(wrong)
    assert seen > 50  # the documents were read


def test_every_setting_the_documents_name_exists() -> None:
    """`section.key` in the documents' code (TOML keys, the shadow's keys) and the keys of
    their TOML examples are settings the daemon or the sidecar reads."""
    from pinthesky.control.shadow import SHADOW_KEYS
    from pinthesky.settings import _SECTIONS, OPTION_BY_KEY

    shadow = {f"{section}.{name}" for section, keys in SHADOW_KEYS.items() for name in keys}
    wrong, seen = [], 0
    for doc in DOCUMENTS:
        text = doc.read_text()
        for line in _command_lines(text):
            for section, name in re.findall(
                r"(?<![\w./@:-])([a-z_]+)\.([a-z_]+)\b(?![./(\w-])", line
            ):
                key = f"{section}.{name}"
                if name in NOT_KEYS or section not in _SECTIONS:
                    continue
                seen += 1
                if key not in OPTION_BY_KEY and key not in shadow:
                    wrong.append(f"{doc.name}: {key}")
        for block in re.findall(r"^```toml\n(.*?)^```", text, re.S | re.M):
            section = None
            for line in block.splitlines():
                head = re.match(r"\[([a-z_]+)\]", line)
                pair = re.match(r"([a-z_]+)\s*=", line)
                if head:
                    section = head.group(1)
                elif pair and section:
                    seen += 1
                    if f"{section}.{pair.group(1)}" not in OPTION_BY_KEY:
                        wrong.append(f"{doc.name}: [{section}] {pair.group(1)}")
    assert not wrong, "\n".join(wrong)
    assert seen > 20  # the documents were read


def test_the_documents_say_what_is_true_now_without_commit_ids_or_our_issue_numbers() -> None:
    """Commit ids and our issue numbers go stale; another project's issue is named with it."""
    found = []
    for doc in DOCUMENTS:
        text = doc.read_text()
        for word in re.findall(r"(?<![\w/.-])[0-9a-f]{7,40}(?![\w/.-])", text):
            if re.search(r"[a-f]", word) and re.search(r"[0-9]", word):
                found.append(f"{doc.name}: {word}")
        for before, number in re.findall(r"(\S+)\s+issues?\s+#?(\d+)", text, re.I):
            if before.lower() not in ("picamera2", "libcamera", "frigate", "motioneye"):
                found.append(f"{doc.name}: {before} issue {number}")
        found += [f"{doc.name}: #{n}" for n in re.findall(r"(?<![\w&])#(\d+)\b", text)]
    assert not found, "\n".join(found)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_in_the_documents_leads_somewhere() -> None:
    broken, seen = [], 0
    for doc in DOCUMENTS:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            seen += 1
            path, _, anchor = target.partition("#")
            where = (doc.parent / path) if path else doc
            if not where.exists():
                broken.append(f"{doc.name}: {target}")
            elif anchor and where.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", where.read_text(), re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
    assert seen > 20
