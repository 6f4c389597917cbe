"""The measuring process: a child forked from a server that only imported torch, or a new
interpreter; both must report the same exact values and one-line failures."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from autoslim.artifact import save_artifact
from autoslim.errors import TrialFailed
from autoslim.measure import runner
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe, Target

TARGET = Target(threads=1, batch_size=8, warmup=1, repeats=3)
EXACT = ("size_bytes", "accuracy", "test_accuracy")


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from tests.conftest import TINY_TASK

    recipe = Recipe.from_dict(
        {
            "task": TINY_TASK,
            "target": TARGET.model_dump(),
            "stages": [{"kind": "quantize", "default": 4}],
        }
    )
    return save_artifact(apply_recipe(recipe), recipe, tmp_path_factory.mktemp("m") / "art")


def measure_both_ways(path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [
        way(path, TARGET, ("val", "test"), env, 300)
        for way in (runner._run_in_forked_child, runner._run_in_new_interpreter)
    ]


def test_a_forked_child_and_a_new_interpreter_measure_the_same_exact_values(artifact):
    import json

    (fork_code, fork_text), (new_code, new_text) = measure_both_ways(artifact)
    assert fork_code == new_code == 0
    forked, fresh = json.loads(fork_text), json.loads(new_text)
    assert set(forked) == set(fresh)
    assert {k: forked[k] for k in EXACT} == {k: fresh[k] for k in EXACT}
    assert forked["latency_ms"] > 0 and forked["peak_memory_bytes"] > 0


def test_a_missing_artifact_fails_with_the_same_one_line_reason_both_ways(tmp_path):
    (fork_code, fork_text), (new_code, new_text) = measure_both_ways(tmp_path / "nothing")
    assert fork_code == new_code == 2
    assert fork_text == new_text and fork_text.startswith("error: recipe file not found")
    with pytest.raises(TrialFailed, match="^measurement failed: error: recipe file not found"):
        runner.measure_in_subprocess(tmp_path / "nothing", TARGET)


def test_a_measurement_past_its_timeout_is_killed_and_the_server_serves_the_next(artifact):
    with pytest.raises(TrialFailed, match="took longer than 0 s"):
        runner.measure_in_subprocess(artifact, TARGET, timeout=0.001)
    assert runner.measure_in_subprocess(artifact, TARGET)["size_bytes"] > 0


def test_a_script_without_a_main_guard_measures_once(artifact, tmp_path):
    # multiprocessing's forkserver would re-run this script's top level in the child
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(f"""
        from autoslim.measure import measure_in_subprocess
        from autoslim.recipe import Target
        print("top level ran")
        print(measure_in_subprocess({str(artifact)!r}, Target(threads=1, batch_size=8, warmup=1, repeats=3))["size_bytes"])
    """)
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert proc.stdout.count("top level ran") == 1
