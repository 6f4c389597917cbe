"""Hidden-size (residual-stream) removal on tiny random-init ``transformers`` BERT models:
every layer on the stream narrows together, the config stays true, a zero fraction is the
identity, artifacts load exactly, and what cannot be narrowed is refused or left alone."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
import user_models as um  # tests/ is on sys.path (conftest.py)
from torch import nn

from autoslim.artifact import load_artifact, save_artifact
from autoslim.data import as_split, call_model, tracing_example
from autoslim.errors import AutoslimError
from autoslim.pipeline import apply_recipe, rebuild_structure
from autoslim.recipe import Recipe
from autoslim.space import ModelInfo
from autoslim.task import Splits, Task, TrainSettings
from autoslim.techniques.structured import (
    StructuredPruneConfig,
    StructuredPruneHandler,
    StructuredPruneSpace,
    WidthRestore,
)

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: on a shared 2-core machine, a second intra-op thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SentenceEncoder(nn.Module):
    """A BertModel mean-pooled over real tokens: the residual stream is the output (MiniLM's
    layout), so narrowing it would change what the model returns."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=um.VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        self.bert = transformers.BertModel(config, add_pooling_layer=False)
        self.eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1)


def make_task(build) -> Task:
    data = um.loaders("bert", sizes=(32, 16, 16))
    return Task(
        name="user-bert-hidden",
        build_model=build,
        load_data=lambda: Splits(*(as_split(data[k]) for k in ("train", "val", "test"))),
        train=TrainSettings(epochs=0, lr=1e-3, batch_size=16, threads=1),
    )


def recipe_of(**stage) -> Recipe:
    return Recipe.model_validate(
        {"task": {"entry": "user_models:none"}, "stages": [{"kind": "prune_structured", **stage}]}
    )


def run(build=um.bert_classifier, **stage):
    task, recipe, records = make_task(build), recipe_of(**stage), {}
    dense = build()
    model = apply_recipe(recipe, task=task, model=copy.deepcopy(dense), records=records)
    return task, recipe, dense, model, records


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def batch(task: Task, n: int = 4) -> dict[str, torch.Tensor]:
    inputs, _ = task.data.val.take(n)
    return {k: inputs[k] for k in ("input_ids", "attention_mask")}


def assert_stream_width(model: nn.Module, width: int, heads: int = 4, ffn: int = 64) -> None:
    """Every layer on the residual stream is ``width`` wide; attention keeps its head size."""
    bert = model.bert
    emb = bert.embeddings
    assert emb.word_embeddings.weight.shape == (um.VOCAB, width)
    assert emb.position_embeddings.weight.shape == (64, width)
    assert emb.token_type_embeddings.weight.shape == (2, width)
    assert emb.word_embeddings.embedding_dim == width
    assert emb.LayerNorm.normalized_shape == (width,) and emb.LayerNorm.weight.shape == (width,)
    for layer in bert.encoder.layer:
        attn = layer.attention.self
        assert attn.attention_head_size == 8 and attn.all_head_size == heads * 8
        for lin in (attn.query, attn.key, attn.value):
            assert lin.weight.shape == (heads * 8, width) and lin.in_features == width
        assert layer.attention.output.dense.weight.shape == (width, heads * 8)
        assert layer.attention.output.dense.out_features == width
        for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            norm = getattr(norm, "norm", norm)  # inside a WidthRestore
            assert norm.normalized_shape == (width,) and norm.bias.shape == (width,)
        assert layer.intermediate.dense.weight.shape == (ffn, width)
        assert layer.output.dense.weight.shape == (width, ffn)
    assert bert.config.hidden_size == width


def test_half_the_hidden_size_goes_everywhere_the_stream_flows():
    task, recipe, dense, model, records = run(hidden=0.5)
    assert_stream_width(model, 16)
    assert model.config.hidden_size == 16  # the top-level model's config is the same one
    assert model.bert.pooler.dense.weight.shape == (16, 16)
    assert model.classifier.weight.shape == (2, 16) and model.classifier.out_features == 2
    assert len(records["structured.hidden_kept"]) == 16
    assert not any(isinstance(m, WidthRestore) for m in model.modules())  # logits keep width
    with torch.no_grad():
        assert model(**batch(task)).logits.shape == (4, 2)
    with tracing_example(task):  # how an artifact loads: the recipe alone
        assert shapes(rebuild_structure(task.build_model(), recipe)) == shapes(model)


def test_zero_hidden_is_the_identity():
    task, _, dense, model, records = run(hidden=0.0)
    assert shapes(model) == shapes(dense) and "structured.hidden_kept" not in records
    with torch.no_grad():
        assert torch.equal(model(**batch(task)).logits, dense(**batch(task)).logits)


def test_a_fraction_that_rounds_to_no_dimension_is_reported():
    _, _, dense, model, records = run(hidden=0.01)  # 1 % of 32
    assert shapes(model) == shapes(dense)
    assert "rounds to none" in records["structured.skipped"]["hidden"]


def test_hidden_stacks_with_heads_and_ffn():
    task, recipe, _, model, _ = run(hidden=0.5, heads=0.5, ffn=0.5, importance="l2")
    assert_stream_width(model, 16, heads=2, ffn=32)
    with torch.no_grad():
        assert model(**batch(task)).logits.shape == (4, 2)
    with tracing_example(task):
        assert shapes(rebuild_structure(task.build_model(), recipe)) == shapes(model)


@pytest.mark.parametrize("build", [um.bert_classifier, SentenceEncoder], ids=["cls", "encoder"])
def test_artifact_after_hidden_loads_with_the_same_outputs(build, tmp_path):
    # l2 keeps dimensions other than the first ones, so only the stored weights and the
    # stored restore indices can make the rebuilt model equal
    task, recipe, _, model, records = run(build, hidden=0.5, heads=0.25, importance="l2")
    assert records["structured.hidden_kept"] != list(range(16))
    loaded = load_artifact(save_artifact(model, recipe, tmp_path / "a", task=task), task=task)
    with torch.no_grad():
        inputs = batch(task)
        torch.testing.assert_close(call_model(loaded.model, inputs), call_model(model, inputs))


def test_a_stream_that_is_the_output_keeps_the_output_width():
    task, _, dense, model, records = run(SentenceEncoder, hidden=0.25)
    assert_stream_width(model, 24)
    last = model.bert.encoder.layer[-1].output.LayerNorm
    assert isinstance(last, WidthRestore) and last.norm.normalized_shape == (24,)
    with torch.no_grad():
        out = model(**batch(task))
    assert out.shape == dense(**batch(task)).shape == (4, 32)
    removed = sorted(set(range(32)) - set(records["structured.hidden_kept"]))
    assert len(removed) == 8 and torch.all(out[:, removed] == 0)

    _, _, _, narrow, _ = run(SentenceEncoder, hidden=0.25, ignore_output=False)
    with torch.no_grad():
        assert narrow(**batch(task)).shape == (4, 24)


def tiny_mlm() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=um.VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    model = transformers.BertForMaskedLM(config).eval()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    return model


def test_a_tied_output_head_is_refused_by_the_space_and_at_apply():
    space = StructuredPruneSpace(hidden={"low": 0.0, "high": 0.25})
    with pytest.raises(AutoslimError, match="tied to an output head") as err:
        space.suggest(optuna.trial.FixedTrial({}), ModelInfo.from_model(tiny_mlm()))
    assert "\n" not in str(err.value)
    with pytest.raises(AutoslimError, match="shares its weight"):
        run(tiny_mlm, hidden=0.5)
    StructuredPruneSpace(hidden={"low": 0.0, "high": 0.25}).suggest(
        optuna.trial.FixedTrial({"structured.enabled": False}),
        ModelInfo.from_model(um.bert_classifier()),
    )  # untied: accepted


def test_a_cnn_has_no_stream_and_keeps_its_shapes():
    model = um.CifarResNet()
    before = shapes(model)
    StructuredPruneHandler().rebuild(
        model, StructuredPruneConfig(hidden=0.5, input_shape=[3, 16, 16])
    )
    assert shapes(model) == before


def test_space_suggests_and_milder_scales_hidden():
    space = StructuredPruneSpace(ratio={"low": 0.0, "high": 0.0}, hidden={"low": 0.0, "high": 0.25})
    trial = optuna.trial.FixedTrial(
        {"structured.enabled": True, "structured.hidden": 0.2, "structured.fine_tune_epochs": 0}
    )
    config = space.suggest(trial, ModelInfo.from_model(um.bert_classifier()))
    assert config.hidden == 0.2 and config.milder(0.5).hidden == 0.1
