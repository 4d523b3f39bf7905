"""What the documents say is what the code does."""

from __future__ import annotations

import runpy
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_camera_table_is_what_the_code_decides() -> None:
    """docs/cameras.md's per-Pi, per-camera table, made again from pinthesky's rules
    (regenerate it with ``.venv/bin/python docs/cameras.py --write``)."""
    tables = runpy.run_path(str(REPO / "docs" / "cameras.py"))
    assert tables["current"]() == tables["table"](), "docs/cameras.md is out of date"
