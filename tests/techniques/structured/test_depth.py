"""Layer dropping: evenly spaced blocks kept (first and last always), Hugging Face
configs kept true, and artifacts that rebuild from the recipe alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from autoslim.artifact import load_artifact, save_artifact  # noqa: E402
from autoslim.pipeline import apply_recipe, rebuild_structure  # noqa: E402
from autoslim.recipe import Recipe  # noqa: E402
from autoslim.techniques.structured import drop_blocks  # noqa: E402
from autoslim.techniques.structured._depth import block_stack, kept_indices  # noqa: E402
from tests.techniques.structured.test_heads import (  # noqa: E402
    TASK_MODULE,
    tiny_bert,
    tiny_task,  # noqa: F401 — the fixture
    token_ids,
)


@pytest.mark.parametrize(
    ("count", "fraction", "kept"),
    [
        (6, 0.0, [0, 1, 2, 3, 4, 5]),
        (6, 1 / 3, [0, 2, 3, 5]),
        (6, 0.5, [0, 2, 5]),
        (12, 0.5, [0, 2, 4, 7, 9, 11]),
        (6, 0.9, [0]),
        (2, 0.5, [0]),
    ],
)
def test_kept_blocks_are_evenly_spaced_with_the_first_and_last(count, fraction, kept):
    assert kept_indices(count, fraction) == kept


def test_a_bert_loses_its_middle_blocks_and_its_config_follows():
    model = tiny_bert()
    model.bert.encoder.layer.extend(copy.deepcopy(model.bert.encoder.layer))  # 4 blocks
    model.bert.config.num_hidden_layers = 4
    blocks = list(model.bert.encoder.layer)
    drop_blocks(model, 0.5)
    assert list(model.bert.encoder.layer) == [blocks[0], blocks[3]]  # the same modules
    assert model.bert.config.num_hidden_layers == 2
    assert model(token_ids(3)).shape == (3, 3)


def test_a_torch_encoder_stack_is_found_and_a_cnn_is_left_alone():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=5, enable_nested_tensor=False)
    assert block_stack(encoder)[0] == "layers"
    drop_blocks(encoder, 0.4)
    assert len(encoder.layers) == 3 and encoder(torch.randn(2, 4, 16)).shape == (2, 4, 16)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    before = copy.deepcopy(cnn.state_dict())
    drop_blocks(cnn, 0.5)
    assert cnn.state_dict().keys() == before.keys()


def test_a_dropped_model_fine_tunes_saves_and_loads_exactly(tmp_path, tiny_task):  # noqa: F811
    recipe = Recipe.from_dict(
        {
            "task": {"entry": f"{TASK_MODULE}:make_task"},
            "stages": [{"kind": "drop_layers", "fraction": 0.5, "fine_tune_epochs": 1}],
        }
    )
    model = apply_recipe(recipe, task=tiny_task, model=tiny_bert())
    assert len(model.bert.encoder.layer) == 1
    rebuilt = rebuild_structure(tiny_task.build_model(), recipe)
    assert len(rebuilt.bert.encoder.layer) == 1
    out = save_artifact(model, recipe, tmp_path / "a")
    loaded = load_artifact(out, task=tiny_task).model
    ids, _ = tiny_task.data.val.take(len(tiny_task.data.val))
    assert torch.equal(loaded(ids), model(ids))
