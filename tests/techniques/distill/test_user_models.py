"""Distillation on models written the way users write them (tests/user_models.py): a
Hugging Face BERT classifier fed dict batches from a Dataset, and OddMix (tied head,
depthwise/grouped Conv1d, GRU) fed from DataLoaders. The teacher cache keys rows of any
input shape, fills lazily from training batches, stops at its byte cap and never reads
a streamed split by itself. Attention maps of Hugging Face self-attention layers are
recomputed from their inputs and match the model's own (eager) probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from autoslim.data import call_model
from autoslim.errors import AutoslimError
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.techniques.distill import DistillConfig, Distiller, _losses, _teacher, default_probes
from autoslim.techniques.distill._teacher import (
    TeacherCache,
    capture,
    row_keys,
    teacher_forward,
)
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


def test_mixup_of_token_ids_is_refused_in_one_line():
    task = loader_task("bert", bert_classifier)
    with pytest.raises(AutoslimError, match="mixup needs floating-point inputs") as info:
        apply_recipe(
            recipe({"kind": "distill", "mixup": 0.4, "epochs": 1}),
            task=task,
            model=bert_classifier(),
        )
    assert "\n" not in str(info.value)


# ---- attention maps of Hugging Face self-attention layers ----


def tiny_hf(family: str, attn_implementation: str):
    """A random-init two-layer, four-head model (no download) and its inputs: padded rows
    for the text encoders; none for the decoder, whose causal mask SDPA then applies
    without it ever reaching the layer."""
    import transformers as tf

    torch.manual_seed(0)
    ids = torch.randint(5, 50, (3, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    sizes = dict(vocab_size=50, attn_implementation=attn_implementation)
    if family in ("bert", "bert_decoder"):
        decoder = family == "bert_decoder"
        config = tf.BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            is_decoder=decoder,
            **sizes,
        )
        inputs = dict(input_ids=ids) if decoder else dict(input_ids=ids, attention_mask=mask)
        return tf.BertModel(config).eval(), inputs
    if family == "distilbert":
        config = tf.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=37, **sizes)
        return tf.DistilBertModel(config).eval(), dict(input_ids=ids, attention_mask=mask)
    config = tf.ViTConfig(
        image_size=8,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        attn_implementation=attn_implementation,
    )
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return tf.ViTModel(config).eval(), dict(pixel_values=pixels)


ATTENTION_LAYERS = {
    "bert": ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"],
    "bert_decoder": ["encoder.layer.0.attention.self", "encoder.layer.1.attention.self"],
    "distilbert": ["transformer.layer.0.attention", "transformer.layer.1.attention"],
    "vit": ["layers.0.attention", "layers.1.attention"],
}


def attention_probes(model) -> dict[str, tuple[str, str]]:
    probes = default_probes(model, DistillConfig(attention_weight=1.0))
    return {k: v for k, v in probes.items() if k.startswith("att:")}


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["bert", "bert_decoder", "distilbert", "vit"])
def test_hugging_face_attention_maps_equal_the_models_own(family, attn_implementation):
    model, inputs = tiny_hf(family, attn_implementation)
    eager, _ = tiny_hf(family, "eager")  # the same weights (same seed), probabilities returned
    probes = attention_probes(model)
    # One probe per layer: the module with the projections, not the wrapper around it.
    assert [name for name, _ in probes.values()] == ATTENTION_LAYERS[family]
    assert {mode for _, mode in probes.values()} == {"attention"}
    with torch.no_grad(), capture(model, probes) as maps:
        model(**inputs)
        own = eager(**inputs, output_attentions=True).attentions
    assert len(own) == len(maps) == 2
    for probs, reference in zip(maps.values(), own, strict=True):
        torch.testing.assert_close(probs, reference.mean(dim=1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    if "attention_mask" in inputs:
        padded = inputs["attention_mask"] == 0  # (batch, key)
        for probs in maps.values():
            assert bool((probs.transpose(1, 2)[padded] == 0).all())
    if family == "bert_decoder":
        for probs in maps.values():
            assert bool((probs.triu(diagonal=1) == 0).all())  # no query sees a later key


def test_an_unreadable_attention_mask_is_refused_in_one_line():
    model, inputs = tiny_hf("bert", "eager")
    layer = model.encoder.layer[0].attention.self
    probes = {"att:self": ("encoder.layer.0.attention.self", "attention")}
    hidden = torch.randn(3, 6, 32)
    # Both run in the layer itself, but neither is a form Hugging Face passes: a mask
    # without its batch and head axes, and a 0/1 integer mask (keep or additive?).
    for mask in (torch.zeros(6, 6), inputs["attention_mask"][:, None, None, :]):
        with pytest.raises(AutoslimError, match="cannot read") as info, capture(model, probes):
            layer(hidden, attention_mask=mask)
        assert "\n" not in str(info.value)


def test_bert_attention_maps_distil_across_head_pruning():
    task = loader_task("bert", bert_classifier)
    hooks = TrainHooks()
    terms: list[float] = []
    kd_term = _losses.attention_map_kd

    def record(student, teacher):
        term = kd_term(student, teacher)
        terms.append(float(term.detach()))
        return term

    heads = {"kind": "prune_structured", "heads": 0.5, "fine_tune_epochs": 1}
    kd = {"kind": "distill", "alpha": 0.5, "attention_weight": 1.0}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_losses, "attention_map_kd", record)
        model = apply_recipe(recipe(kd, heads), task=task, model=bert_classifier(), hooks=hooks)
    distiller = hooks.loss
    layers = ["bert.encoder.layer.0.attention.self", "bert.encoder.layer.1.attention.self"]
    assert [name for name, _ in distiller.student_probes.values() if "attention" in name] == layers
    for name in layers:
        assert model.get_submodule(name).num_attention_heads == 2
        assert distiller.teacher.get_submodule(name).num_attention_heads == 4
    assert len(terms) == 2 * 6  # two layers, six batches of the one fine-tune epoch
    assert all(math.isfinite(t) for t in terms) and min(terms[:2]) > 0  # maps differ at once
    assert math.isfinite(task.evaluate(model, "val"))


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
