"""How the benchmarks hand back their result: one JSON object, printed and/or written."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, *, out: Path | None, print_json: bool) -> None:
    """Write ``result`` to ``out`` (its folder made) and print it when asked."""
    text = json.dumps(result, indent=2, default=str)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    if print_json:
        print(text)
