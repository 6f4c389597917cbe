"""Embedding tables on a quantize stage: row groups on the grid, bytes on disk, tied
tables left to their layer, and the int8 / 4-bit lookups ONNX Runtime ships."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from autoslim.artifact import artifact_bytes, load_artifact, save_artifact  # noqa: E402
from autoslim.pipeline import apply_recipe  # noqa: E402
from autoslim.recipe import Recipe  # noqa: E402
from autoslim.space import embedding_tables, stored_layers  # noqa: E402
from autoslim.techniques.quantize import EMBEDDING_GROUP  # noqa: E402
from tests.techniques.structured.test_heads import (  # noqa: E402
    TASK_MODULE,
    tiny_bert,
    tiny_task,  # noqa: F401 — the fixture
)


def recipe(embeddings, default=8):
    return Recipe.from_dict(
        {
            "task": {"entry": f"{TASK_MODULE}:make_task"},
            "stages": [{"kind": "quantize", "default": default, "embeddings": embeddings}],
        }
    )


@pytest.mark.parametrize("bits", [4, 8])
def test_each_row_group_takes_at_most_two_to_the_bits_levels(tiny_task, bits):  # noqa: F811
    model = apply_recipe(recipe(bits), task=tiny_task, model=tiny_bert())
    table = model.bert.embeddings.word_embeddings.weight.detach()
    groups = table.reshape(table.shape[0], -1, EMBEDDING_GROUP)
    levels = max(len(torch.unique(g)) for g in groups.reshape(-1, EMBEDDING_GROUP))
    assert 2 < levels <= 2**bits
    assert not torch.equal(table, tiny_bert().bert.embeddings.word_embeddings.weight)


def test_quantized_tables_shrink_the_artifact_and_load_exactly(tmp_path, tiny_task):  # noqa: F811
    sizes = {}
    for width in ("fp32", 8, 4):
        model = apply_recipe(recipe(width), task=tiny_task, model=tiny_bert())
        out = save_artifact(model, recipe(width), tmp_path / str(width))
        sizes[width] = artifact_bytes(out)
        loaded = load_artifact(out, task=tiny_task, runtime=False).model
        for name in embedding_tables(model):
            got = loaded.get_submodule(name).weight
            assert torch.equal(got, model.get_submodule(name).weight), name
    table_values = sum(t.weight.numel() for t in embedding_tables(tiny_bert()).values())
    # int8 saves 3 of 4 bytes per value, 4-bit another half byte, less their scales and
    # layout entries (a few hundred bytes on this tiny model)
    assert sizes["fp32"] - sizes[8] > 2.0 * table_values
    assert sizes[8] - sizes[4] > 0.4 * table_values


def test_a_table_tied_to_a_layer_takes_that_layers_width():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(40, 32)
            self.head = nn.Linear(32, 40, bias=False)
            self.head.weight = self.embed.weight

    model = Tied()
    assert embedding_tables(model) == {}
    assert list(stored_layers(model)) == ["head"]


@pytest.mark.parametrize(
    ("width", "node"), [(4, "GatherBlockQuantized"), (8, "DynamicQuantizeLinear")]
)
def test_onnxruntime_ships_the_tables_width(tmp_path, tiny_task, width, node):  # noqa: F811
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from autoslim.deploy.runtimes import runtime_named

    r = recipe(width).model_copy(
        update={
            "target": recipe(width).target.model_copy(
                update={"runtime": "onnxruntime", "threads": 1}
            )
        }
    )
    model = apply_recipe(r, task=tiny_task, model=tiny_bert())
    out = save_artifact(model, r, tmp_path / "a")
    deployed = runtime_named("onnxruntime").deploy(out, tiny_task, r.target)
    ops = {n.op_type for n in onnx.load(str(deployed.files[0])).graph.node}
    assert node in ops and "MatMulInteger" in ops
    assert deployed.form == f"onnxruntime dynamic int8, int{width} embeddings"
    ids = tiny_task.data.val.inputs
    with torch.no_grad():
        expected = load_artifact(out, task=tiny_task, runtime=False).model(ids)
    assert torch.allclose(deployed.module(ids), expected, atol=0.15)
