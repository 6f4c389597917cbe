"""MLflow tracking: every trial of a real search is a run in a real local MLflow store."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import write_experiment

from autoslim.run import load_run
from autoslim.searching.driver import search
from autoslim.searching.tracking import sync_trials

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")

pytestmark = pytest.mark.slow


def test_every_trial_and_the_front_land_in_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_experiment(tmp_path, trials=3, tracking={"mlflow": {"uri": uri}})
    run = search(path, out=tmp_path / "run", progress=False)

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    logged = {
        r.data.tags["autoslim.trial"]: r for r in client.search_runs([experiment.experiment_id])
    }
    trials = run.study.get_trials(deepcopy=False)
    assert set(logged) == {str(t.number) for t in trials} | {"front"}
    for trial in trials:
        mlflow_run = logged[str(trial.number)]
        assert mlflow_run.data.tags["autoslim.state"] == trial.state.name
        assert mlflow_run.data.params == {k: str(v) for k, v in trial.params.items()}
        if trial.state.name == "COMPLETE":
            assert mlflow_run.data.metrics["accuracy"] == pytest.approx(trial.values[0])
            assert mlflow_run.data.metrics["size_bytes"] == pytest.approx(trial.values[1])
            local = client.download_artifacts(mlflow_run.info.run_id, "recipe.yaml", tmp_path)
            assert "task:" in Path(local).read_text()
            assert str(tmp_path / "mlartifacts") in mlflow_run.info.artifact_uri  # beside the db
    front = {int(n) for n in run.front()["trial"]}
    tagged = {int(k) for k, r in logged.items() if r.data.tags.get("autoslim.front") == "true"}
    assert tagged == front
    # A second sync (a resume, another worker) logs nothing twice.
    assert sync_trials(load_run(run.path)) == 0


def test_a_tracking_server_that_fails_costs_a_warning_not_the_search(tmp_path, capsys):
    path = write_experiment(
        tmp_path, trials=1, tracking={"mlflow": {"uri": "nosuchscheme://nowhere"}}
    )
    run = search(path, out=tmp_path / "run", progress=False)
    assert run.table()["state"].tolist() == ["COMPLETE"]
    assert "warning: MLflow tracking at nosuchscheme://nowhere failed" in capsys.readouterr().err
