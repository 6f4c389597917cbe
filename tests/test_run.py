"""Run folders: objective order survives run.json, so values land under the right names."""

from __future__ import annotations

import optuna

from autoslim.run import JOURNAL_FILE, load_run, open_storage, write_run_info


def test_objectives_keep_the_study_order_not_alphabetical(tmp_path):
    objectives = {"size_bytes": "minimize", "accuracy": "maximize", "latency_ms": "minimize"}
    storage = open_storage(str(tmp_path / JOURNAL_FILE))
    study = optuna.create_study(study_name="x", storage=storage, directions=list(objectives.values()))
    study.add_trial(optuna.trial.create_trial(values=[1234.0, 0.9, 2.5]))
    write_run_info(tmp_path, {"study_name": "x", "objectives": objectives, "metric_name": "accuracy"})

    run = load_run(tmp_path)
    assert list(run.objectives) == ["size_bytes", "accuracy", "latency_ms"]
    row = run.table().iloc[0]
    assert (row["size_bytes"], row["accuracy"], row["latency_ms"]) == (1234.0, 0.9, 2.5)
