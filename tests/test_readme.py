"""The README's Layout section matches the tree: every path it names exists, and every
package under ``autoslim/`` (a folder with an ``__init__.py``) is named in it.

Paths are read generically from the section (any backticked token with a slash), so the
test follows the README, not a copy of it: moving a package means editing its line.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGE = ROOT / "autoslim"

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_PATH = re.compile(r"`([\w.-]+(?:/[\w.-]+)*/?)`")


def headings(text: str) -> list[tuple[int, int, str]]:
    """(line index, level, title) of every Markdown heading outside fenced code blocks."""
    found, fence = [], None
    for index, line in enumerate(text.splitlines()):
        match = _FENCE.match(line)
        if match:
            fence = None if fence == match.group(1) else fence or match.group(1)
            continue
        heading = _HEADING.match(line) if fence is None else None
        if heading:
            found.append((index, len(heading.group(1)), heading.group(2)))
    return found


def section(text: str, title: str) -> str:
    """The body of the first heading called ``title``, up to the next heading of the same
    or a higher level."""
    lines = text.splitlines()
    marks = headings(text)
    for position, (index, level, name) in enumerate(marks):
        if name.strip().lower() == title.lower():
            end = next((i for i, lvl, _ in marks[position + 1 :] if lvl <= level), len(lines))
            return "\n".join(lines[index + 1 : end])
    raise AssertionError(f"README.md has no {title!r} section")


def listed_paths(body: str) -> list[str]:
    """Backticked paths (tokens with a slash) in ``body``, without a trailing slash."""
    return [token.rstrip("/") for token in _PATH.findall(body) if "/" in token]


def packages() -> list[str]:
    """Every package folder below ``autoslim/``, relative to the repository root."""
    return sorted(
        init.parent.relative_to(ROOT).as_posix()
        for init in PACKAGE.rglob("__init__.py")
        if init.parent != PACKAGE and "__pycache__" not in init.parts
    )


def layout() -> list[str]:
    return listed_paths(section(README.read_text(encoding="utf-8"), "Layout"))


def test_layout_lists_autoslim_paths() -> None:
    assert any(path.startswith("autoslim/") for path in layout()), (
        "the Layout section lists no autoslim/ path"
    )


def test_every_listed_path_exists() -> None:
    missing = [path for path in layout() if not (ROOT / path).exists()]
    assert not missing, f"README Layout names paths that do not exist: {', '.join(missing)}"


def test_every_package_is_listed() -> None:
    listed = set(layout())
    unlisted = [package for package in packages() if package not in listed]
    assert not unlisted, f"README Layout does not list these packages: {', '.join(unlisted)}"


def test_section_ignores_headings_inside_code_blocks() -> None:
    text = "## A\n```python\n# not a heading\n```\n`x/y`\n## Layout\n`autoslim/a/` and `b`\n### Sub\n`c/d`\n## Next\n`e/f`\n"
    assert [title for _, _, title in headings(text)] == ["A", "Layout", "Sub", "Next"]
    assert listed_paths(section(text, "Layout")) == ["autoslim/a", "c/d"]
