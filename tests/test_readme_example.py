"""The README's "Compress your own model" example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from test_readme import README, section

pytestmark = pytest.mark.slow


def example() -> str:
    body = section(README.read_text(), "Compress your own model")
    return re.search(r"```python\n(.*?)```", body, re.S).group(1)


def test_the_example_is_short():
    assert len([ln for ln in example().splitlines() if ln.strip()]) <= 17


def test_the_example_runs_as_written(tmp_path):
    script = tmp_path / "example.py"
    script.write_text(example() + "\nprint('front points:', len(run.front()))\n")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "runs" / "mymodel" / "pareto.csv").is_file()
    points = int(re.search(r"front points: (\d+)", done.stdout).group(1))
    assert points >= 1
