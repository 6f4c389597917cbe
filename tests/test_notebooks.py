"""The notebooks run top to bottom on a tiny search, draw their figures, and export a usable recipe.

The first notebook finds no run folder and searches one itself (the path a user takes on
a fresh checkout); the second reads that run. Both run in a real ``python3`` kernel.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoslim.cli import main
from autoslim.recipe import Recipe

# The `notebooks` extra (part of `test`); without it there is no kernel to run them in.
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
# Per cell: the search and the per-stage breakdown measure in fresh processes.
CELL_TIMEOUT_S = 600

# Tiny task (the conftest one, so its cached baseline is shared), no fine-tuning, one
# repeat-light target: each trial costs seconds. The objectives are deliberately not in
# alphabetical order (run.json once reordered them under the study's values).
EXPERIMENT = {
    "name": "notebook",
    "task": {"entry": "autoslim.tasks.digits:make_task", "params": {"width": 4, "epochs": 3}},
    "space": [
        {
            "type": "prune.magnitude",
            "scopes": ["global", "layer"],
            "fine_tune_epochs": {"low": 0, "high": 0},
        },
        {"type": "quantize.weight", "bits": [2, 4, 8, "fp32"], "per_layer": True},
    ],
    "objectives": {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"},
    "search": {"trials": 40, "seed": 0, "startup_trials": 3},
    "target": {"threads": 1, "batch_size": 16, "warmup": 1, "repeats": 3},
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    import yaml

    folder = tmp_path_factory.mktemp("notebooks")
    (folder / "notebook.yaml").write_text(yaml.safe_dump(EXPERIMENT, sort_keys=False))
    return folder


def notebook_env(workdir: Path) -> dict[str, str]:
    return {
        "AUTOSLIM_NOTEBOOK_RUN_DIR": str(workdir / "run"),
        "AUTOSLIM_NOTEBOOK_EXPERIMENT": str(workdir / "notebook.yaml"),
        "AUTOSLIM_NOTEBOOK_TRIALS": "3",  # overrides the 40 above: the budget flag is honoured
        "AUTOSLIM_NOTEBOOK_OUT": str(workdir / "out"),
        "AUTOSLIM_NOTEBOOK_BITS": "2,8",
    }


def execute(name: str, workdir: Path):
    """Run a notebook in ``workdir`` with the tiny settings; the kernel inherits this env
    (including the test session's private ``AUTOSLIM_CACHE``)."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(workdir)}},
    )
    with pytest.MonkeyPatch.context() as patch:
        for key, value in notebook_env(workdir).items():
            patch.setenv(key, value)
        client.execute()
    return notebook


def outputs(notebook) -> list[dict]:
    return [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    ]


def png_count(notebook) -> int:
    return sum("image/png" in out.get("data", {}) for out in outputs(notebook))


@pytest.fixture(scope="module")
def explored(workdir):
    assert not (workdir / "run").exists()  # the notebook must start the search itself
    return execute("explore_run.ipynb", workdir)


def test_notebooks_are_stored_without_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name


def test_explore_run_searches_plots_and_exports_an_applicable_recipe(explored, workdir, capsys):
    assert not [out for out in outputs(explored) if out.output_type == "error"]
    assert png_count(explored) >= 4  # 2-D projections, 3-D, parallel coordinates, hypervolume
    from autoslim.run import load_run

    run = load_run(workdir / "run")
    assert len(run.table()) == 3
    recipe_file = workdir / "out" / "recipe.yaml"
    recipe = Recipe.load(recipe_file)
    number = recipe.provenance.trial
    # The notebook's export is what `autoslim export --trial N` writes.
    assert (
        main(["export", str(run.path), "--trial", str(number), "-o", str(workdir / "cli.yaml")])
        == 0
    )
    assert Recipe.load(workdir / "cli.yaml") == recipe
    capsys.readouterr()
    assert main(["apply", str(recipe_file), "-o", str(workdir / "applied"), "--json"]) == 0
    values = json.loads(capsys.readouterr().out)["values"]
    # Rebuilt from the recipe alone, the artifact has the bytes and accuracy the search measured.
    assert values["size_bytes"] == recipe.provenance.values["size_bytes"]
    assert values["accuracy"] == pytest.approx(recipe.provenance.values["accuracy"], abs=1e-12)


def test_understand_model_reads_the_run_and_draws_its_layers(explored, workdir):
    notebook = execute("understand_model.ipynb", workdir)
    assert not [out for out in outputs(notebook) if out.output_type == "error"]
    assert png_count(notebook) >= 4  # two sensitivity heatmaps, the front's layers, the stages
    text = "\n".join(out.get("data", {}).get("text/plain", "") for out in outputs(notebook))
    for layer in ("features.0", "classifier.4"):
        assert layer in text
    assert "fp32 baseline" in text  # the per-stage breakdown starts from the baseline
