"""``target.runtime``: each trial is measured on the form its runtime ships, the space
offers what runs there, and a missing runtime is one line."""

from __future__ import annotations

import json
import shutil

import pytest

from autoslim.artifact import artifact_bytes, load_artifact, save_artifact
from autoslim.cli import main
from autoslim.deploy.runtimes import (
    RUNTIMES,
    check_runtimes,
    runtime_named,
    storage_only,
)
from autoslim.errors import AutoslimError
from autoslim.measure.runner import measure_artifact
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe, Target
from autoslim.searching.experiment import narrow_to_runtime
from autoslim.space import SearchSpace
from tests.conftest import TINY_TASK

FAST = {"threads": 1, "batch_size": 16, "warmup": 1, "repeats": 3}


def recipe_with(stages, runtime="torch"):
    return Recipe.from_dict(
        {"task": TINY_TASK, "target": {**FAST, "runtime": runtime}, "stages": stages}
    )


# --- targets -----------------------------------------------------------------------------


def test_a_target_may_list_runtimes_but_a_recipe_runs_on_one():
    assert Target(runtime=["onnxruntime"]).runtime == "onnxruntime"
    assert Target(runtime=["torch", "openvino"]).runtimes == ["torch", "openvino"]
    assert "runtime" not in Target().model_dump()  # old targets and fingerprints unchanged
    with pytest.raises(AutoslimError, match="runs on one runtime"):
        Recipe.from_dict({"task": TINY_TASK, "target": {"runtime": ["torch", "onnxruntime"]}})
    with pytest.raises(ValueError, match="onnxruntime runs on device cpu only"):
        Target(device="cuda", runtime="onnxruntime")
    with pytest.raises(ValueError, match="distinct"):
        Target(runtime=["torch", "torch"])


def test_a_runtime_whose_package_is_missing_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name)
    )
    with pytest.raises(AutoslimError) as caught:
        check_runtimes(Target(runtime=["torch", "openvino"]))
    assert str(caught.value) == (
        "runtime openvino needs the openvino package: pip install 'autoslim[openvino]'"
    )
    check_runtimes(Target(runtime="torch"))  # nothing to install


def test_search_with_a_missing_runtime_exits_2_before_writing(
    experiment_file, tmp_path, monkeypatch, capsys
):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name)
    )
    path = experiment_file(target={**FAST, "runtime": "onnxruntime"})
    assert main(["search", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "autoslim[onnx]" in err
    assert not (tmp_path / "run").exists()


# --- what each runtime runs --------------------------------------------------------------


def test_storage_only_forms_are_named_per_runtime():
    four_bit = [{"kind": "quantize", "default": 8, "layers": {"fc": 4}}]
    assert storage_only(recipe_with(four_bit)) == ["4-bit weights"]
    assert storage_only(recipe_with(four_bit, "onnxruntime")) == [
        "4-bit weights",
        "per-layer widths",
    ]
    pruned = [{"kind": "prune", "sparsity": 0.5}, {"kind": "storage", "default": "csr"}]
    assert storage_only(recipe_with(pruned)) == []  # eager torch runs CSR
    assert storage_only(recipe_with(pruned, "onnxruntime")) == [
        "unstructured sparsity",
        "storage format csr",
    ]
    assert storage_only(recipe_with([{"kind": "quantize", "default": 8}], "openvino")) == []


def test_one_runtime_narrows_the_space_and_says_what_it_dropped():
    space = SearchSpace.from_spec(
        [
            {"type": "prune.magnitude"},
            {"type": "quantize.weight", "bits": [2, 4, 8, "fp32"]},
            {"type": "storage.format"},
        ]
    )
    torch_space = narrow_to_runtime(space, Target())
    assert torch_space.spec() == space.spec() and torch_space.notes == []
    ort = narrow_to_runtime(space, Target(runtime="onnxruntime"))
    assert [c.type for c in ort.components] == ["quantize.weight"]
    assert ort.components[0].bits == [8, "fp32"] and ort.components[0].per_layer is False
    assert len(ort.notes) == 4 and all("onnxruntime" in n for n in ort.notes)
    both = narrow_to_runtime(space, Target(runtime=["torch", "onnxruntime"]))
    assert both.spec() == space.spec()  # each trial's runtime decides; nothing dropped
    with pytest.raises(AutoslimError, match="nothing in the search space runs"):
        narrow_to_runtime(
            SearchSpace.from_spec([{"type": "prune.magnitude"}]), Target(runtime="openvino")
        )


# --- measuring what ships ----------------------------------------------------------------


@pytest.fixture(scope="module")
def int8_model():
    recipe = recipe_with([{"kind": "quantize", "default": 8}])
    return apply_recipe(recipe), recipe


def _saved(int8_model, tmp_path, runtime):
    model, recipe = int8_model
    recipe = recipe.model_copy(update={"target": Target(**FAST, runtime=runtime)})
    return save_artifact(model, recipe, tmp_path / runtime), recipe


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_a_trial_is_measured_on_the_file_its_runtime_ships(int8_model, tmp_path, runtime):
    pytest.importorskip(runtime)
    torch_dir, torch_recipe = _saved(int8_model, tmp_path, "torch")
    eager = measure_artifact(torch_dir, torch_recipe.target)
    folder, recipe = _saved(int8_model, tmp_path, runtime)
    before = artifact_bytes(folder)
    values = measure_artifact(folder, recipe.target)
    shipped = [p for p in (folder / "deploy").iterdir() if p.suffix in (".onnx", ".xml", ".bin")]
    files = {"onnxruntime": {"model.onnx"}, "openvino": {"model.xml", "model.bin"}}[runtime]
    assert values["size_bytes"] == sum(p.stat().st_size for p in shipped if p.name in files)
    assert values["artifact_bytes"] == before == artifact_bytes(folder)  # deploy/ not counted
    assert values["deploy_form"] == f"{runtime} static int8"  # digits is a CNN
    assert values["runtime"] == runtime and json.loads(values["storage_only"]) == []
    assert eager["deploy_form"] == "eager torch" and "artifact_bytes" not in eager
    # int8 activations move a few borderline samples at most
    assert abs(values["accuracy"] - eager["accuracy"]) <= 0.03
    assert values["latency_ms"] > 0 and values["energy_source"] == "estimated"


def test_the_shipped_file_is_built_once_and_reused(int8_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from autoslim.task import load_task

    folder, recipe = _saved(int8_model, tmp_path, "onnxruntime")
    runtime, task = runtime_named("onnxruntime"), load_task(recipe.task)
    path = runtime.build(folder, task)
    stamp = path.stat().st_mtime_ns
    deployed = runtime.deploy(folder, task, recipe.target)
    assert deployed.files == [path] and path.stat().st_mtime_ns == stamp
    assert not any(p.name.startswith(".") for p in path.parent.iterdir())  # no scratch left
    out = deployed.module(task.example_batch(5))
    assert tuple(out.shape) == (5, 10)


def test_every_runtime_declares_its_forms():
    for name, runtime in RUNTIMES.items():
        for device in runtime.devices:
            forms = runtime.forms(device)
            assert forms.runtime == name and forms.runs_width("fp32")
    assert runtime_named("onnxruntime").forms("cpu").storage_ships is False
    assert runtime_named("torch").forms("cpu").runs_width(8)
    assert not runtime_named("torch").forms("cpu").runs_width(4)
    with pytest.raises(AutoslimError, match="unknown runtime 'tvm'"):
        runtime_named("tvm")


# --- searching over runtimes -------------------------------------------------------------


def test_a_search_over_two_runtimes_records_each_trials_shipped_form(
    experiment_file, tmp_path, capsys
):
    pytest.importorskip("onnxruntime")
    path = experiment_file(
        trials=4,
        space=[{"type": "quantize.weight", "bits": [4, 8], "per_layer": False, "optional": False}],
        objectives={"accuracy": "maximize", "latency_ms": "minimize"},
        target={**FAST, "runtime": ["torch", "onnxruntime"]},
    )
    assert main(["search", str(path), "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    from autoslim.run import load_run

    run = load_run(tmp_path / "run")
    table = run.table()
    done = table[table["state"] == "COMPLETE"]
    assert set(done["param:target.runtime"]) <= {"torch", "onnxruntime"} and len(done) >= 3
    for _, row in done.iterrows():
        assert row["runtime"] == row["param:target.runtime"]
        prefix = {"torch": "eager torch", "onnxruntime": "onnxruntime"}[row["runtime"]]
        assert row["deploy_form"].startswith(prefix)
        assert run.recipe(int(row["trial"])).target.runtime == row["runtime"]
    assert run.baseline["deploy_form"] == "eager torch"  # the baseline is the user's model
    assert main(["pareto", str(tmp_path / "run"), "--json"]) == 0
    front = json.loads(capsys.readouterr().out)["front"]
    assert all("deploy_form" in p and "storage_only" in p for p in front)
    # the reported test metric is the shipped file's, not the PyTorch model's
    from autoslim.searching.outputs import test_metric
    from autoslim.task import load_task

    for point in front:
        recipe = run.recipe(point["trial"])
        task, folder = load_task(recipe.task), run.path / "artifacts" / f"trial_{point['trial']}"
        model = (
            load_artifact(folder, task=task).model
            if recipe.target.runtime == "torch"
            else runtime_named(recipe.target.runtime).deploy(folder, task, recipe.target).module
        )
        assert test_metric(run, point["trial"]) == task.evaluate(model, "test")


def test_an_artifact_carrying_its_shipped_form_still_loads_and_exports(int8_model, tmp_path):
    pytest.importorskip("onnxruntime")
    from autoslim.deploy import export_model
    from autoslim.task import load_task

    folder, recipe = _saved(int8_model, tmp_path, "onnxruntime")
    runtime_named("onnxruntime").build(folder, load_task(recipe.task))
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    exported = export_model(copy, tmp_path / "out.onnx", quantize="static")
    assert exported.artifact_bytes == artifact_bytes(folder)


@pytest.mark.parametrize(
    ("device", "default", "mode", "dtype"),
    [
        ("cpu", "fp16", None, "float32"),  # no fp16 compute on CPU: fp32, no CUDA graphs
        ("cuda", "fp16", "reduce-overhead", "float16"),
        ("cuda", "bf16", "reduce-overhead", "bfloat16"),
        ("cuda", 8, "reduce-overhead", "float32"),
    ],
)
def test_torch_compile_computes_in_the_stored_float_with_cuda_graphs_on_a_gpu(
    tmp_path, monkeypatch, device, default, mode, dtype
):
    import torch

    from autoslim.deploy import runtimes

    compiled = {}

    def fake_compile(module, mode=None):
        compiled.update(module=module, mode=mode)
        return module

    recipe = recipe_with([{"kind": "quantize", "default": default}])
    folder = save_artifact(apply_recipe(recipe), recipe, tmp_path / "a")
    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: self)  # no GPU here
    target = Target(**FAST, runtime="torch-compile").model_copy(update={"device": device})
    from autoslim.task import load_task

    deployed = runtimes.runtime_named("torch-compile").deploy(
        folder, load_task(recipe.task), target
    )
    assert compiled["mode"] == mode
    assert compiled["module"].dtype == getattr(torch, dtype)
    assert deployed.form.startswith(
        f"torch.compile {dict(float32='fp32', float16='fp16', bfloat16='bf16')[dtype]}"
    )


def test_the_shipped_file_is_built_before_the_measuring_process(int8_model, tmp_path):
    """Built inside the measuring process, the file's freed memory would be reused by the
    session and hide its allocations from the peak."""
    pytest.importorskip("onnxruntime")
    from autoslim.measure.runner import measure_in_subprocess

    folder, recipe = _saved(int8_model, tmp_path, "onnxruntime")
    values = measure_in_subprocess(folder, recipe.target)
    assert (folder / "deploy" / "model.onnx").is_file()
    assert values["peak_memory_bytes"] > 1_000_000  # an ONNX Runtime session's own arena


def test_export_model_ships_the_file_the_search_measured(int8_model, tmp_path, capsys):
    """``--quantize auto`` (the default) is the runtime's own mode, and where the search
    built that file for these weights, the exported file is that very file."""
    pytest.importorskip("onnxruntime")
    from autoslim.task import load_task

    folder, recipe = _saved(int8_model, tmp_path, "onnxruntime")
    measured = runtime_named("onnxruntime").build(folder, load_task(recipe.task))
    out = tmp_path / "shipped.onnx"
    assert main(["export-model", str(folder), "-o", str(out)]) == 0
    assert "the file the search measured" in capsys.readouterr().out
    assert out.read_bytes() == measured.read_bytes()
    # another mode is built afresh, never copied from the measured file
    fp32 = tmp_path / "fp32.onnx"
    assert main(["export-model", str(folder), "--quantize", "none", "-o", str(fp32)]) == 0
    assert "measured" not in capsys.readouterr().out
    from autoslim.deploy.onnx import PROVENANCE_KEY, read_metadata

    assert json.loads(read_metadata(fp32)[PROVENANCE_KEY])["quantize"] == "none"
    assert json.loads(read_metadata(out)[PROVENANCE_KEY])["quantize"] == "static"
