"""`autoslim export-model --format onnx`: a file that runs on ONNX Runtime alone, giving the
artifact's outputs (fp32) or nearly (int8), carrying its recipe, written atomically."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from onnx import numpy_helper  # noqa: E402

from autoslim.artifact import artifact_bytes, load_artifact  # noqa: E402
from autoslim.cli import main  # noqa: E402
from autoslim.deploy import onnx as deploy  # noqa: E402
from autoslim.deploy.onnx import (  # noqa: E402
    PROVENANCE_KEY,
    RECIPE_KEY,
    export_onnx,
    onnx_session,
    read_metadata,
)
from autoslim.errors import AutoslimError  # noqa: E402


def reference(artifact):
    """The artifact's model (plain modules, as exported) on the whole validation split."""
    loaded = load_artifact(artifact, runtime=False)
    inputs = loaded.task.data.val.inputs
    with torch.no_grad():
        return inputs, loaded.model(inputs).numpy()


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["export-model", *map(str, argv)])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def fp32_onnx(fp32_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    status, stdout, err = run_cli(fp32_artifact, "--format", "onnx", "-o", out)
    assert status == 0, err
    return out, stdout


@pytest.fixture(scope="module")
def static_onnx(int8_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "static.onnx"
    return export_onnx(int8_artifact, out, quantize="static", calibration_batches=4)


def test_fp32_export_gives_the_artifacts_outputs_on_any_batch_size(fp32_artifact, fp32_onnx):
    out, stdout = fp32_onnx
    inputs, expected = reference(fp32_artifact)
    run = onnx_session(out, threads=1)
    np.testing.assert_allclose(run(inputs), expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(run(inputs[:1].numpy()), expected[:1], rtol=0, atol=1e-4)
    size, source = out.stat().st_size, artifact_bytes(fp32_artifact)
    assert f"{size} bytes; artifact {source} bytes ({size / source:.2f}×" in stdout


def test_the_file_carries_the_recipe_and_provenance(fp32_artifact, fp32_onnx):
    metadata = read_metadata(fp32_onnx[0])
    assert metadata[RECIPE_KEY] == (fp32_artifact / "recipe.yaml").read_text()
    provenance = json.loads(metadata[PROVENANCE_KEY])
    assert provenance["quantize"] == "none" and provenance["exporter"] == "dynamo"
    assert provenance["artifact"]["bytes"] == artifact_bytes(fp32_artifact)
    assert set(provenance["versions"]) >= {"autoslim", "torch", "onnxruntime"}


def test_static_int8_agrees_with_the_8bit_artifact_and_stores_int8_weights(
    int8_artifact, static_onnx, fp32_onnx
):
    static = static_onnx
    inputs, expected = reference(int8_artifact)
    got = onnx_session(static)(inputs)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95
    assert np.abs(got - expected).max() <= 0.1 * np.abs(expected).max()
    model = onnx.load(str(static))
    int8_values = sum(
        numpy_helper.to_array(t).size
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("weight_quantized")
    )
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    layers = load_artifact(int8_artifact, runtime=False).model
    weights = sum(m.weight.numel() for m in layers.modules() if hasattr(m, "weight_scale"))
    assert int8_values == weights  # every quantized layer's weight is one byte per value
    assert all(numpy_helper.to_array(t).size <= 128 for t in floats)  # only scales, biases
    # On this ~6.4 k-weight model the graph itself (36 nodes, their names, per-channel
    # scales and int32 biases) is most of the file: 19.9 kB against 12.3 kB of artifact
    # (1.6×) and 30.1 kB of fp32 ONNX (0.66×); the weights alone are 4× smaller.
    size = static.stat().st_size
    assert size < 0.7 * fp32_onnx[0].stat().st_size
    assert size < 2 * artifact_bytes(int8_artifact)
    assert json.loads(read_metadata(static)[PROVENANCE_KEY])["calibration"]["samples"] == 256


def test_dynamic_quantization_runs_and_agrees(int8_artifact, tmp_path):
    out = export_onnx(int8_artifact, tmp_path / "dynamic.onnx", quantize="dynamic")
    inputs, expected = reference(int8_artifact)
    got = onnx_session(out)(inputs)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95
    assert json.loads(read_metadata(out)[PROVENANCE_KEY])["quantize"] == "dynamic"


def test_the_torchscript_exporter_steps_in_when_dynamo_fails(fp32_artifact, tmp_path, monkeypatch):
    real = deploy._torch_export

    def dynamo_breaks(model, x, path, *, dynamo):
        if dynamo:
            raise RuntimeError("unsupported operator")
        real(model, x, path, dynamo=dynamo)

    monkeypatch.setattr(deploy, "_torch_export", dynamo_breaks)
    out = export_onnx(fp32_artifact, tmp_path / "ts.onnx")
    provenance = json.loads(read_metadata(out)[PROVENANCE_KEY])
    assert provenance["exporter"] == "torchscript"
    assert provenance["dynamo_failed"] == "RuntimeError: unsupported operator"
    inputs, expected = reference(fp32_artifact)
    np.testing.assert_allclose(onnx_session(out)(inputs), expected, rtol=0, atol=1e-4)


class BranchesOnData(torch.nn.Module):
    """Takes a path that depends on the data (as a text encoder trims padding to the
    longest row): a trace bakes in the example batch's path, torch.export refuses it."""

    def forward(self, x):
        return x * 2 if int(x[:, 0].max()) > 2 else x


def test_a_trace_that_baked_in_one_batchs_shapes_is_not_shipped(tmp_path):
    def example(n):  # the first column is 1, 2, 3, 4, 1, ...: above 2 only from 3 rows on
        x = torch.ones(n, 4)
        x[:, 0] = torch.arange(n) % 4 + 1
        return x

    with pytest.raises(AutoslimError) as caught:
        deploy.export_graph(BranchesOnData(), example, tmp_path / "m.onnx")
    message = str(caught.value)
    assert message.startswith("torch could not export the model to ONNX (dynamo: ")
    assert "torchscript: AutoslimError: its outputs differ from the model's" in message


def one_error_line(status, stdout, err, match):
    assert status == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and match in err, err


def test_a_folder_that_is_not_an_artifact_is_one_line(tmp_path):
    one_error_line(*run_cli(tmp_path, "-o", tmp_path / "m.onnx"), "not an autoslim artifact")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_kept_without_force(fp32_artifact, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_text("mine")
    one_error_line(*run_cli(fp32_artifact, "-o", out), "exists; pass --force")
    assert out.read_text() == "mine" and list(tmp_path.iterdir()) == [out]


def test_an_unknown_format_and_a_missing_runtime_are_one_line(fp32_artifact, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    one_error_line(*run_cli(fp32_artifact, "--format", "tflite", "-o", out), "invalid choice")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises
    one_error_line(
        *run_cli(fp32_artifact, "-o", out),
        "export-model --format onnx needs onnxruntime: pip install 'autoslim[onnx]'",
    )
    assert list(tmp_path.iterdir()) == []


def test_when_both_exporters_fail_it_is_one_line_and_nothing_is_left(
    fp32_artifact, tmp_path, monkeypatch
):
    def half_written(model, x, path, *, dynamo):
        path.write_bytes(b"half a graph")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(deploy, "_torch_export", half_written)
    one_error_line(
        *run_cli(fp32_artifact, "-o", tmp_path / "m.onnx"),
        "torch could not export the model to ONNX (dynamo: OSError: [Errno 28] No space",
    )
    assert list(tmp_path.iterdir()) == []


def test_an_untrusted_task_entry_is_refused_before_anything_runs(fp32_artifact, tmp_path):
    import shutil

    import yaml

    artifact = shutil.copytree(fp32_artifact, tmp_path / "theirs")
    recipe = yaml.safe_load((artifact / "recipe.yaml").read_text())
    recipe["task"] = {"entry": "os:system", "params": {"command": f"touch {tmp_path}/pwned"}}
    (artifact / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    one_error_line(
        *run_cli(artifact, "-o", tmp_path / "m.onnx"), "task entry 'os:system' is not trusted"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs"]
