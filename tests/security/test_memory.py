"""Bombs cost no memory: each is refused before its allocation, under an address-space cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PEAK_LIMIT_MB = 800  # importing torch and autoslim takes about 250 MB here


@pytest.fixture(scope="module")
def probe() -> dict:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.security.memory_probe"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_bomb_is_refused_with_one_line(probe):
    assert len(probe["outcomes"]) == 10
    for name, outcome in probe["outcomes"].items():
        assert outcome.startswith("error: ") and "\n" not in outcome, (name, outcome)
        assert "MemoryError" not in outcome, (
            name,
            outcome,
        )  # refused by a check, not by running out


def test_no_bomb_costs_memory(probe):
    assert probe["peak_mb"] < PEAK_LIMIT_MB
