"""Progress bars show only where asked for and on a terminal."""

from __future__ import annotations

import io

from autoslim.progress import progress, showing_progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_by_default_and_off_without_a_terminal(monkeypatch):
    items = [1, 2, 3]
    assert progress(items, desc="x") is items
    monkeypatch.setattr("sys.stderr", io.StringIO())  # a log file, CI
    with showing_progress():
        assert progress(items, desc="x") is items


def test_a_terminal_gets_a_transient_bar_that_yields_everything(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    with showing_progress():
        assert list(progress(range(4), desc="fp32 baseline epoch 1/2", total=4)) == [0, 1, 2, 3]
    assert "fp32 baseline epoch 1/2" in screen.getvalue()
    with showing_progress(False):  # --quiet
        assert list(progress([5], desc="hidden")) == [5]
    assert "hidden" not in screen.getvalue()
