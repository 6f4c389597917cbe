"""A search with a latency objective compares trials by paired ratios and re-times its
front at the end. Relations between recorded values only: no timing is asserted."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from autoslim.measure.paired import objective_ratio
from autoslim.run import load_run
from autoslim.searching.driver import search


@pytest.mark.slow
def test_latency_is_a_paired_ratio_and_the_front_is_re_timed(experiment_file, tmp_path):
    path = experiment_file(
        objectives={"accuracy": "maximize", "latency_ms": "minimize", "size_bytes": "minimize"}
    )
    search(path, out=tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    baseline_ms = run.baseline["latency_ms"]
    done = run.table()[run.table()["state"] == "COMPLETE"]
    assert len(done) >= 2
    for _, row in done.iterrows():
        assert row["latency_ratio_lo"] <= row["latency_ratio"] <= row["latency_ratio_hi"]
        assert row["latency_rounds"] >= 10
        assert row["latency_ms"] == pytest.approx(objective_ratio(row.to_dict()) * baseline_ms)
    front = pd.read_csv(tmp_path / "run" / "pareto.csv")
    assert {"confirmed_latency_ratio", "latency_confirmed"} <= set(front.columns)
    assert front["confirmed_latency_ratio"].gt(0).all()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for point in summary["front"]:
        lo, ratio, hi = point["latency_ratio"]
        assert lo <= ratio <= hi and isinstance(point["latency_confirmed"], bool)
