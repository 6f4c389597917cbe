"""`autoslim export-model --format openvino`: an IR converted from the checked ONNX graph
that OpenVINO alone runs, fp32 or with the static int8 weights kept in int8."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from autoslim.artifact import load_artifact  # noqa: E402
from autoslim.cli import main  # noqa: E402
from autoslim.deploy import export_model  # noqa: E402
from autoslim.deploy.openvino import openvino_session, read_rt_info  # noqa: E402


def reference(artifact):
    loaded = load_artifact(artifact, runtime=False)
    inputs = loaded.task.data.val.inputs
    with torch.no_grad():
        return inputs, loaded.model(inputs).numpy()


def test_fp32_ir_round_trips_with_its_recipe(fp32_artifact, tmp_path):
    written = export_model(fp32_artifact, tmp_path / "m.xml", format="openvino")
    assert written.files == [tmp_path / "m.xml", tmp_path / "m.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]
    inputs, expected = reference(fp32_artifact)
    np.testing.assert_allclose(
        openvino_session(tmp_path / "m.xml")(inputs), expected, rtol=0, atol=1e-4
    )
    info = read_rt_info(tmp_path / "m.xml")
    assert info["recipe"] == (fp32_artifact / "recipe.yaml").read_text()
    assert "openvino" in json.loads(info["provenance"])["versions"]


def test_static_int8_ir_keeps_int8_weights_and_agrees(int8_artifact, tmp_path):
    export_model(
        int8_artifact, tmp_path / "m.xml", format="openvino", quantize="static",
        calibration_batches=4,
    )  # fmt: skip
    inputs, expected = reference(int8_artifact)
    got = openvino_session(tmp_path / "m.xml")(inputs)
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.95
    weights = sum(
        m.weight.numel()
        for m in load_artifact(int8_artifact, runtime=False).model.modules()
        if hasattr(m, "weight_scale")
    )
    # int8 weights plus fp32 scales and int32 biases; fp32 weights alone would be 4×
    assert (tmp_path / "m.bin").stat().st_size < 1.5 * weights


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "m.onnx"], "give a .xml path"),
        (["-o", "m.xml", "--quantize", "dynamic"], "takes --quantize none or static"),
    ],
)
def test_bad_requests_are_one_line(fp32_artifact, tmp_path, capsys, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export-model", str(fp32_artifact), "--format", "openvino", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []
