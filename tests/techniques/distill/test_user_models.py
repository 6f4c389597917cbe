"""Distillation on models written the way users write them (tests/user_models.py): a
Hugging Face BERT classifier fed dict batches from a Dataset, and OddMix (tied head,
depthwise/grouped Conv1d, GRU) fed from DataLoaders. The teacher cache keys rows of any
input shape, fills lazily from training batches, stops at its byte cap and never reads
a streamed split by itself."""

from __future__ import annotations

import math

import pytest
import torch

from autoslim.data import call_model
from autoslim.errors import AutoslimError
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.techniques.distill import DistillConfig, Distiller, _teacher
from autoslim.techniques.distill._teacher import TeacherCache, row_keys, teacher_forward
from autoslim.techniques.prune import prunable_layers
from autoslim.train import TrainHooks
from tests.user_models import (
    CountingTokens,
    OddMix,
    bert_classifier,
    loader_task,
)

ENTRY = "tests.techniques.distill.test_user_models"


def oddmix() -> OddMix:
    torch.manual_seed(0)
    return OddMix().eval()


def recipe(*stages: dict) -> Recipe:
    return Recipe.from_dict({"task": {"entry": f"{ENTRY}:oddmix"}, "stages": list(stages)})


def sparsity(model) -> float:
    layers = prunable_layers(model).values()
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    return zeros / sum(m.weight.numel() for m in layers)


PRUNE = {"kind": "prune", "sparsity": 0.5, "fine_tune_epochs": 1}


def test_bert_distill_then_prune_on_dict_batches():
    task = loader_task("bert", bert_classifier)
    hooks = TrainHooks()
    kd = {"kind": "distill", "alpha": 0.7, "feature_weight": 1.0, "relation_distance_weight": 1.0}
    model = apply_recipe(
        recipe({**kd, "epochs": 1}, PRUNE), task=task, model=bert_classifier(), hooks=hooks
    )
    assert sparsity(model) == pytest.approx(0.5, abs=1e-6)
    assert math.isfinite(task.evaluate(model, "val"))
    kd = hooks.loss
    assert isinstance(kd, Distiller) and kd.epoch == 2
    # Every train row was labelled once, then looked up in the second epoch.
    assert len(kd.cache) == 96 and kd.cache.hits == 96 and kd.cache.misses == 96
    assert next(kd.teacher.parameters()).device.type == "cpu"


def test_oddmix_distill_keeps_the_tie_and_reads_conv_attention_maps():
    task = loader_task("tokens", oddmix)
    kd = {
        "kind": "distill",
        "alpha": 0.5,
        "attention_weight": 1.0,
        "contrastive_weight": 0.1,
        "epochs": 1,
    }
    model = apply_recipe(recipe(kd, PRUNE), task=task, model=oddmix())
    assert model.head.weight is model.embed.weight  # still one tensor
    assert not bool((model.embed.weight == 0).any())  # the tied table was left out
    assert sparsity(model) == pytest.approx(0.5, abs=1e-6)
    assert math.isfinite(task.evaluate(model, "val"))


def test_cache_stops_at_its_cap_and_never_reads_the_split_by_itself(monkeypatch):
    train = CountingTokens(96, seed=1)
    task = loader_task("bert", bert_classifier, train=train)
    teacher = bert_classifier()
    probes = {"emb": ("classifier", "input")}
    per_row = _teacher.ROW_OVERHEAD + 4 * (2 + 32)  # fp32 logits (2) and pooled features (32)
    monkeypatch.setattr(_teacher, "MAX_CACHE_BYTES", 40 * per_row)
    hooks = TrainHooks()
    apply_recipe(
        recipe({"kind": "distill", "alpha": 0.9, "epochs": 2}),
        task=task,
        model=bert_classifier(),
        hooks=hooks,
    )
    cache = hooks.loss.cache
    assert cache.full and len(cache) == 40 and cache.bytes <= 40 * per_row
    assert train.reads == 2 * 96  # the training epochs only: the cache read nothing itself
    # A batch of cached and uncached rows gives the teacher's own outputs.
    batch, _ = task.data.train.take(48)
    cached = cache.outputs(teacher, batch, probes)
    fresh = teacher_forward(teacher, batch, probes)
    assert sum(k in cache.index for k in row_keys(batch)) not in (0, 48)
    for key, value in fresh.items():
        torch.testing.assert_close(cached[key], value, rtol=1e-5, atol=1e-6)


def test_cache_mixes_cached_and_fresh_rows_exactly():
    teacher = oddmix()
    probes = {"emb": ("classify", "input"), "att:grouped": ("grouped", "output")}
    tokens = torch.randint(0, 120, (12, 16), generator=torch.Generator().manual_seed(3))
    cache = TeacherCache(max_bytes=10**9)
    cache.outputs(teacher, tokens[:5], probes)
    assert cache.lookup(tokens[:5]) is not None and cache.lookup(tokens) is None
    mixed = cache.outputs(teacher, tokens[torch.tensor([7, 0, 9, 3, 4, 11])], probes)
    whole = teacher_forward(teacher, tokens[torch.tensor([7, 0, 9, 3, 4, 11])], probes)
    for key, value in whole.items():
        torch.testing.assert_close(mixed[key], value, rtol=1e-5, atol=1e-6)
    assert (cache.hits, cache.misses) == (3, 8)


def test_row_keys_cover_every_tensor_of_tuple_and_dict_inputs():
    ids = torch.arange(12).reshape(3, 4)
    mask = torch.ones(3, 4, dtype=torch.long)
    keys = row_keys({"input_ids": ids, "attention_mask": mask})
    assert len(set(keys)) == 3
    other = {"input_ids": ids, "attention_mask": mask.clone().index_fill_(1, torch.tensor([3]), 0)}
    assert not set(keys) & set(row_keys(other))  # the mask is part of the key
    assert (
        row_keys((ids, mask)) != keys
        and row_keys((ids, mask))[0] == row_keys((ids[:1], mask[:1]))[0]
    )
    with pytest.raises(AutoslimError, match="not batched"):
        row_keys((ids, mask[:2]))


def test_unsupported_terms_are_refused_in_one_line():
    task = loader_task("bert", bert_classifier)
    with pytest.raises(AutoslimError, match="attention_weight") as info:
        apply_recipe(
            recipe({"kind": "distill", "attention_weight": 1.0, "epochs": 1}),
            task=task,
            model=bert_classifier(),
        )
    assert "\n" not in str(info.value)
    with pytest.raises(AutoslimError, match="mixup needs floating-point inputs"):
        apply_recipe(
            recipe({"kind": "distill", "mixup": 0.4, "epochs": 1}),
            task=task,
            model=bert_classifier(),
        )


def test_hugging_face_hidden_states_can_be_distilled():
    task = loader_task("bert", bert_classifier)
    teacher, student = bert_classifier(), bert_classifier()
    config = DistillConfig(
        alpha=0.5, feature_weight=1.0, feature_layers=["bert.encoder.layer.1", "bert.pooler"]
    )
    kd = Distiller(config, teacher, task, seed=0)
    (inputs, targets) = task.data.train.take(8)
    loss = kd(student.train(), inputs, targets)
    assert math.isfinite(float(loss.detach()))
    t = kd.teacher_outputs(inputs)
    assert t["feat:bert.encoder.layer.1"].shape == (8, 16, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_distill_on_cuda_moves_the_teacher_and_caches_on_the_device():
    task = loader_task("bert", bert_classifier, device="cuda")
    hooks = TrainHooks()
    kd = {"kind": "distill", "alpha": 0.7, "feature_weight": 1.0, "contrastive_weight": 0.1}
    model = apply_recipe(
        recipe({**kd, "epochs": 2}, {"kind": "recover", "epochs": 1}),
        task=task,
        model=bert_classifier(),
        hooks=hooks,
    )
    assert next(model.parameters()).device.type == "cpu"
    assert next(hooks.loss.teacher.parameters()).device.type == "cuda"
    assert hooks.loss.cache.hits == 2 * 96
    assert math.isfinite(task.evaluate(model, "val"))
    batch, _ = task.data.train.take(4)
    cpu = call_model(model, batch)
    assert torch.isfinite(cpu).all()
