"""`autoslim export-model --format torch-export`: a .pt2 program that torch.export.load
runs alone, giving the artifact's outputs on any batch size, carrying its recipe."""

from __future__ import annotations

import json

import pytest
import torch

from autoslim.artifact import load_artifact
from autoslim.cli import main
from autoslim.deploy.torch_export import (
    PROVENANCE_FILE_KEY,
    RECIPE_FILE_KEY,
    export_torch,
    read_extra_files,
)
from autoslim.errors import AutoslimError


@pytest.mark.parametrize("artifact", ["fp32_artifact", "int8_artifact"])
def test_the_program_gives_the_plain_models_outputs_on_any_batch(artifact, tmp_path, request):
    folder = request.getfixturevalue(artifact)
    out = export_torch(folder, tmp_path / "model.pt2")
    program = torch.export.load(str(out)).module()
    loaded = load_artifact(folder, runtime=False)
    inputs = loaded.task.data.val.inputs
    for rows in (1, 7, len(inputs)):
        with torch.no_grad():
            assert torch.allclose(program(inputs[:rows]), loaded.model(inputs[:rows]), atol=1e-5)
    extra = read_extra_files(out)
    assert extra[RECIPE_FILE_KEY] == (folder / "recipe.yaml").read_text()
    assert json.loads(extra[PROVENANCE_FILE_KEY])["exporter"] == "torch.export"


def test_the_cli_writes_it_and_refuses_quantize(fp32_artifact, tmp_path, capsys):
    out = tmp_path / "m.pt2"
    assert (
        main(["export-model", str(fp32_artifact), "--format", "torch-export", "-o", str(out)]) == 0
    )
    assert "torch.export exporter" in capsys.readouterr().out and out.is_file()
    code = main(
        ["export-model", str(fp32_artifact), "--format", "torch-export", "--quantize", "static",
         "-o", str(tmp_path / "q.pt2")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--quantize applies to onnx and openvino" in err and "\n" not in err
    assert not (tmp_path / "q.pt2").exists()


def test_a_model_torch_export_cannot_trace_is_one_line_and_nothing_is_left(
    fp32_artifact, tmp_path, monkeypatch
):
    def refuse(*args, **kwargs):
        raise RuntimeError("data-dependent control flow\nlong trace")

    monkeypatch.setattr(torch.export, "export", refuse)
    with pytest.raises(AutoslimError, match="torch.export could not trace the model") as caught:
        export_torch(fp32_artifact, tmp_path / "m.pt2")
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []
