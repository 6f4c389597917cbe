"""The distill stage: hooks installed for later fine-tunes, adapters across pruned widths,
teacher caching, replay, artifacts without teacher or adapters, search components."""

from __future__ import annotations

import copy
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from autoslim.artifact import load_artifact, save_artifact
from autoslim.errors import AutoslimError
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe, TaskRef
from autoslim.space import ModelInfo, SearchSpace
from autoslim.task import Split, Splits, Task, TrainSettings, load_task
from autoslim.tasks.digits import DigitsCNN
from autoslim.tasks.mnist1d import TransformerNet
from autoslim.techniques.distill import (
    DistillConfig,
    Distiller,
    DistillSpace,
    RecoverConfig,
    default_probes,
)
from autoslim.techniques.distill._losses import LinearSchedule, PhaseSchedule
from autoslim.techniques.structured import prune_heads
from autoslim.train import TrainHooks, train

ROOT = Path(__file__).resolve().parents[3]
PRUNE = {"kind": "prune", "sparsity": 0.5, "fine_tune_epochs": 1, "lr": 1e-3}


def recipe(ref: dict, *stages: dict, seed: int = 0) -> Recipe:
    return Recipe(task=ref, seed=seed, stages=list(stages))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def tiny_task(model_fn, inputs: torch.Tensor, n_classes: int = 10) -> Task:
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(0, n_classes, (len(inputs),), generator=gen)
    split = Split(inputs, targets)
    return Task(
        name="tiny",
        build_model=model_fn,
        load_data=lambda: Splits(split, split, split),
        train=TrainSettings(epochs=1, lr=1e-3, batch_size=16),
    )


@pytest.mark.slow
def test_distill_changes_every_later_fine_tune_and_replays_exactly(tiny_task_ref):
    hooks = TrainHooks()
    kd = recipe(
        tiny_task_ref,
        {"kind": "distill", "alpha": 0.9, "temperature": 3.0},
        PRUNE,
        {"kind": "recover", "epochs": 1},
    )
    first = state(apply_recipe(kd, hooks=hooks))
    assert isinstance(hooks.loss, Distiller) and hooks.loss.epoch == 2  # prune + recover epochs
    assert all(torch.equal(first[k], v) for k, v in state(apply_recipe(kd)).items())
    plain = state(apply_recipe(recipe(tiny_task_ref, PRUNE, {"kind": "recover", "epochs": 1})))
    assert plain.keys() == first.keys()  # no teacher, adapter or hook state in the student
    assert not all(torch.equal(first[k], plain[k]) for k in plain)


def test_distill_must_come_first_and_only_once(tiny_task_ref):
    with pytest.raises(AutoslimError, match="first stage"):
        apply_recipe(recipe(tiny_task_ref, PRUNE, {"kind": "distill"}))
    with pytest.raises(AutoslimError, match="one distill stage"):
        apply_recipe(recipe(tiny_task_ref, {"kind": "distill"}, {"kind": "distill"}))


def test_recipe_round_trips_and_rejects_bad_fields(tiny_task_ref):
    r = recipe(
        tiny_task_ref,
        {
            "kind": "distill",
            "schedule": {"kind": "phases", "early_until": 1, "late_from": 2},
            "feature_weight": 1.0,
            "teacher": {"artifact": "somewhere"},
        },
    )
    assert Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(AutoslimError, match="alpha"):
        Recipe.from_dict(
            recipe(tiny_task_ref).to_dict() | {"stages": [{"kind": "distill", "alpha": 2}]}
        )
    with pytest.raises(AutoslimError, match="exactly one"):
        Recipe.from_dict(
            recipe(tiny_task_ref).to_dict() | {"stages": [{"kind": "distill", "teacher": {}}]}
        )
    with pytest.raises(AutoslimError, match="unknown loss terms"):
        Recipe.from_dict(
            recipe(tiny_task_ref).to_dict()
            | {
                "stages": [
                    {"kind": "distill", "schedule": {"kind": "phases", "early": {"bogus": 1.0}}}
                ]
            }
        )


def test_feature_kd_creates_and_trains_adapters_across_pruned_widths():
    torch.manual_seed(0)
    task = tiny_task(lambda: DigitsCNN(width=2), torch.randn(48, 1, 8, 8))
    teacher, student = DigitsCNN(width=4).eval(), DigitsCNN(width=2)
    config = DistillConfig(
        alpha=0.5, feature_weight=1.0, feature_layers=["features.0", "classifier.1:input"]
    )
    kd = Distiller(config, teacher, task, seed=0)
    before = state(student)
    train(
        student,
        task,
        epochs=2,
        lr=1e-3,
        seed=0,
        hooks=TrainHooks(loss=kd, after_step=[kd.after_step], on_epoch_end=[kd.on_epoch_end]),
    )
    shapes = {k: tuple(a.weight.shape) for k, a in kd.adapters.items()}
    # a 1×1 conv on the channel axis (2 → 4) and a linear map on the flattened features (16 → 32)
    assert sorted(shapes.values()) == [(4, 2), (32, 16)]
    assert {a.dim for a in kd.adapters.values()} == {1}
    assert all(a.weight.grad is None for a in kd.adapters.values())  # stepped, then cleared
    assert kd.optimizer is not None and all(
        len(kd.optimizer.state[p]) > 0 for p in kd.adapters.parameters()
    )
    assert state(student).keys() == before.keys()


def test_cached_teacher_outputs_give_the_same_loss_as_recomputation():
    torch.manual_seed(0)
    task = tiny_task(lambda: DigitsCNN(width=2), torch.randn(40, 1, 8, 8))
    teacher, student = DigitsCNN(width=4).eval(), DigitsCNN(width=2)
    kw = dict(
        alpha=0.7,
        feature_weight=1.0,
        attention_weight=5.0,
        relation_distance_weight=1.0,
        relation_angle_weight=2.0,
        contrastive_weight=0.5,
    )
    cached = Distiller(DistillConfig(**kw), teacher, task, seed=0)
    fresh = Distiller(DistillConfig(**kw, cache_teacher=False), teacher, task, seed=0)
    batch = task.data.train.inputs[torch.tensor([7, 3, 31, 0, 12, 5])]
    targets = torch.arange(6)
    student.eval()  # no dropout, so both calls see the same student
    a, b = cached(student, batch, targets), fresh(student, batch, targets)
    assert (
        cached.cache is not None and cached.cache.lookup(batch) is not None and fresh.cache is None
    )
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for key, value in cached.teacher_outputs(batch).items():
        torch.testing.assert_close(value, fresh.teacher_outputs(batch)[key], rtol=1e-6, atol=1e-7)
    assert cached.cache.lookup(torch.randn(2, 1, 8, 8)) is None  # unseen samples: the teacher runs


def test_default_probes_pick_attention_modules_or_convolutions():
    config = DistillConfig(attention_weight=1.0, feature_weight=1.0)
    conv = default_probes(DigitsCNN(width=2), config)
    assert conv["emb"] == ("classifier.4", "input") and conv["feat:classifier.4:input"] == (
        "classifier.4",
        "input",
    )
    assert [k for k in conv if k.startswith("att:")] == [
        "att:features.0",
        "att:features.3",
        "att:features.7",
    ]
    tf = default_probes(TransformerNet(d_model=8, heads=2, layers=2, ffn=8), config)
    assert tf["att:layers.0.self_attn"] == ("layers.0.self_attn", "attention")


def test_attention_maps_need_attention_or_convolutions_said_in_one_line():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(AutoslimError, match="attention_weight needs attention layers") as info:
        default_probes(mlp, DistillConfig(attention_weight=1.0))
    assert "\n" not in str(info.value) and "Sequential has neither" in str(info.value)
    assert "att:0" not in default_probes(mlp, DistillConfig())  # the term off: no refusal


def test_transformer_attention_maps_survive_head_pruning():
    torch.manual_seed(0)
    teacher = TransformerNet(d_model=8, heads=4, layers=1, ffn=8).eval()
    student = copy.deepcopy(teacher)
    prune_heads(student, 0.5, None)  # 4 → 2 heads, PrunedMultiheadAttention
    task = tiny_task(
        lambda: TransformerNet(d_model=8, heads=4, layers=1, ffn=8), torch.randn(16, 40)
    )
    kd = Distiller(DistillConfig(alpha=0.0, attention_weight=1.0), teacher, task, seed=0)
    loss = kd(student.train(), task.data.train.inputs[:8], task.data.train.targets[:8])
    same = Distiller(DistillConfig(alpha=0.0, attention_weight=1.0), teacher, task, seed=0)
    ce = task.loss(teacher(task.data.train.inputs[:8]), task.data.train.targets[:8])
    assert float(
        same(
            copy.deepcopy(teacher).train(), task.data.train.inputs[:8], task.data.train.targets[:8]
        )
    ) == pytest.approx(float(ce), abs=1e-5)  # identical maps: only the CE term remains
    with torch.no_grad():
        ce_student = float(
            task.loss(student(task.data.train.inputs[:8]), task.data.train.targets[:8])
        )
    assert float(loss.detach()) > ce_student


def test_schedule_weights_follow_the_kd_epoch():
    task = tiny_task(lambda: DigitsCNN(width=2), torch.randn(16, 1, 8, 8))
    kd = Distiller(
        DistillConfig(schedule=LinearSchedule(start=0.0, end=1.0, ramp_epochs=2)),
        DigitsCNN(width=2),
        task,
        seed=0,
    )
    seen = []
    for _ in range(3):
        seen.append(kd.config.schedule.weights(kd.epoch)["response"])
        kd.on_epoch_end(None, 0)
    assert seen == [0.0, 0.5, 1.0]
    assert (
        PhaseSchedule().weights(0)["feature"] == 2.0
        and PhaseSchedule().weights(9)["response"] == 1.5
    )


@pytest.mark.slow
def test_artifact_rebuilds_without_the_teacher(tiny_task_ref, tmp_path):
    r = recipe(
        tiny_task_ref,
        {"kind": "distill", "feature_weight": 1.0, "contrastive_weight": 0.1},
        PRUNE,
        {"kind": "recover", "epochs": 1},
        {"kind": "quantize", "default": 8, "qat_epochs": 1},
    )
    model = apply_recipe(r)
    save_artifact(model, r, tmp_path / "a")
    loaded = load_artifact(tmp_path / "a", runtime=False)
    x = load_task(TaskRef(**tiny_task_ref)).data.val.inputs[:8]
    torch.testing.assert_close(loaded.model(x), model(x), rtol=1e-5, atol=1e-5)
    # The training-only stages are not shipped: the same weights under the recipe without
    # them make a byte-identical artifact.
    assert [stage.kind for stage in loaded.recipe.stages] == ["prune", "quantize"]
    plain = recipe(tiny_task_ref, PRUNE, {"kind": "quantize", "default": 8, "qat_epochs": 1})
    save_artifact(model, plain, tmp_path / "b")
    for name in ("recipe.yaml", "weights.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_recover_keeps_pruned_zeros(tiny_task_ref):
    pruned = apply_recipe(recipe(tiny_task_ref, PRUNE))
    recovered = apply_recipe(
        recipe(tiny_task_ref, PRUNE, {"kind": "recover", "epochs": 1, "lr": 1e-2})
    )
    for name, tensor in pruned.state_dict().items():
        if name.endswith("weight") and tensor.dim() > 1:
            assert torch.equal(tensor == 0, recovered.state_dict()[name] == 0), name
    assert not all(
        torch.equal(v, recovered.state_dict()[k]) for k, v in pruned.state_dict().items()
    )


def test_recover_refuses_to_follow_quantize(tiny_task_ref):
    with pytest.raises(AutoslimError, match="before quantize"):
        apply_recipe(recipe(tiny_task_ref, {"kind": "quantize", "default": 4}, {"kind": "recover"}))


@pytest.mark.slow
def test_named_teacher_from_a_task_entry(tiny_task_ref):
    teacher = {"entry": tiny_task_ref["entry"], "params": {"width": 4, "epochs": 2}}
    model = apply_recipe(
        recipe(
            tiny_task_ref,
            {"kind": "recover", "epochs": 0},
            {"kind": "distill", "teacher": teacher},
            PRUNE,
        )
    )
    assert model is not None  # a named teacher may follow other stages


def test_component_suggests_a_replayable_stage_and_presets_load():
    info = ModelInfo.from_model(DigitsCNN(width=2))
    space = DistillSpace(
        feature_weight={"low": 0.0, "high": 2.0},
        relation_weight={"low": 0.0, "high": 1.0},
        mixup={"low": 0.0, "high": 1.0},
        schedules=["constant", "linear"],
        epochs={"low": 0, "high": 1},
    )
    params = {
        "distill.enabled": True,
        "distill.schedule": "linear",
        "distill.alpha": 0.8,
        "distill.temperature": 2.0,
        "distill.feature_weight": 1.5,
        "distill.relation_weight": 0.5,
        "distill.mixup": 0.3,
        "distill.epochs": 0,
    }
    stage = space.suggest(optuna.trial.FixedTrial(params), info)
    assert stage == DistillConfig(
        alpha=0.8,
        temperature=2.0,
        feature_weight=1.5,
        relation_distance_weight=0.5,
        relation_angle_weight=1.0,
        mixup=0.3,
        schedule=LinearSchedule(),
    )
    trial = optuna.create_study().ask()
    assert (
        DistillSpace(optional=False).suggest(trial, info).mixup == 0.0
        and "distill.mixup" not in trial.params
    )
    # The presets ship inside the package (autoslim/search_spaces), formerly at the root.
    folders = (ROOT / "autoslim" / "search_spaces", ROOT / "search_spaces")
    presets = sorted(p for folder in folders for p in folder.glob("distill*.yaml"))
    assert presets
    for path in presets:
        kinds = [type(c).__name__ for c in SearchSpace.load(path).components]
        assert kinds[0] == "DistillSpace", path
    assert RecoverConfig().epochs == 1


def test_mixup_kd_matches_the_hand_computed_function_matching_loss():
    """Teacher and student both see x' = λx + (1−λ)x[perm]; CE uses the mixed labels."""
    torch.manual_seed(0)
    task = tiny_task(lambda: DigitsCNN(width=2), torch.randn(40, 1, 8, 8))
    teacher, student = DigitsCNN(width=4).eval(), DigitsCNN(width=2).eval()
    config = DistillConfig(alpha=0.6, temperature=3.0, mixup=0.4)
    batch, targets = task.data.train.inputs[:8], torch.arange(8) % 10
    loss = Distiller(config, teacher, task, seed=5)(student, batch, targets)

    lam, perm = Distiller(config, teacher, task, seed=5).mix_plan(8)  # the same seeded draw
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(8))
    mixed = lam * batch + (1 - lam) * batch[perm]
    s, t = student(mixed), teacher(mixed)
    ce = lam * nn.functional.cross_entropy(s, targets) + (1 - lam) * nn.functional.cross_entropy(
        s, targets[perm]
    )
    kl = (
        nn.functional.kl_div(
            nn.functional.log_softmax(s / 3.0, -1),
            nn.functional.softmax(t / 3.0, -1),
            reduction="batchmean",
        )
        * 9.0
    )
    torch.testing.assert_close(loss, 0.4 * ce + 0.6 * kl, rtol=1e-5, atol=1e-6)


def test_mixup_draws_follow_beta_and_replay_from_the_seed():
    task = tiny_task(lambda: DigitsCNN(width=2), torch.randn(16, 1, 8, 8))
    teacher = DigitsCNN(width=4).eval()
    plans = [Distiller(DistillConfig(mixup=0.5), teacher, task, seed=s) for s in (3, 3, 4)]
    draws = [[p.mix_plan(16)[0] for _ in range(400)] for p in plans]
    assert draws[0] == draws[1] and draws[0] != draws[2]
    # Beta(0.5, 0.5): mean 1/2, variance 1/8 (U-shaped: most λ near 0 or 1)
    lams = torch.tensor(draws[0])
    assert abs(float(lams.mean()) - 0.5) < 0.05 and abs(float(lams.var()) - 0.125) < 0.02


def test_mixup_refuses_token_ids():
    task = tiny_task(
        lambda: nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(12, 10)),
        torch.randint(0, 20, (16, 3)),
    )
    teacher = task.build_model().eval()
    kd = Distiller(DistillConfig(mixup=1.0), teacher, task, seed=0)
    with pytest.raises(AutoslimError, match="mixup needs floating-point inputs"):
        kd(task.build_model(), task.data.train.inputs[:4], task.data.train.targets[:4])


def test_milder_stages_for_the_intermediate_student():
    from autoslim.techniques.prune import PruneConfig
    from autoslim.techniques.quantize import QuantizeConfig
    from autoslim.techniques.structured import StructuredPruneConfig

    structured = StructuredPruneConfig(
        ratio=0.6, heads=0.4, ffn=0.2, group_ratios={"conv1": 0.5}, fine_tune_epochs=3
    ).milder(0.5)
    assert (structured.ratio, structured.heads, structured.ffn) == (0.3, 0.2, 0.1)
    assert structured.group_ratios == {"conv1": 0.25} and structured.fine_tune_epochs == 3
    unstructured = PruneConfig(scope="layer", sparsity=0.8, layers={"fc": 0.6}).milder(0.25)
    assert (unstructured.sparsity, unstructured.layers) == (0.2, {"fc": 0.15})
    assert (
        QuantizeConfig(default=4).milder(0.5) is None
    )  # the intermediate stays float: it only teaches
    assert RecoverConfig(epochs=2).milder(0.5) == RecoverConfig(epochs=2)


@pytest.mark.slow
def test_progressive_distillation_teaches_through_an_intermediate_student(
    tiny_task_ref, monkeypatch
):
    import autoslim.techniques.distill as distill

    teachers: list[int] = []  # parameter count of each Distiller's teacher, in order
    real_init = distill.Distiller.__init__

    def spy(self, config, teacher, task, *, seed):
        teachers.append(sum(p.numel() for p in teacher.parameters()))
        real_init(self, config, teacher, task, seed=seed)

    monkeypatch.setattr(distill.Distiller, "__init__", spy)
    stages = [
        {"kind": "distill", "alpha": 0.9, "progressive": 0.5},
        {
            "kind": "prune_structured",
            "ratio": 0.5,
            "round_to": 1,
            "input_shape": [1, 8, 8],
            "fine_tune_epochs": 1,
        },
        {"kind": "recover", "epochs": 1},
        {"kind": "quantize", "default": 8},
    ]
    progressive = recipe(tiny_task_ref, *stages)
    student = apply_recipe(progressive)
    fp32 = sum(p.numel() for p in apply_recipe(recipe(tiny_task_ref)).parameters())
    final = sum(p.numel() for p in student.parameters())
    # the intermediate learns from the fp32 model, then teaches the final student; it
    # removed half as many channels, so its size lies strictly between theirs
    assert teachers[0] == fp32 and final < teachers[1] < fp32
    replay = state(apply_recipe(progressive))
    assert all(torch.equal(replay[k], v) for k, v in state(student).items())
    direct = state(
        apply_recipe(recipe(tiny_task_ref, {**stages[0], "progressive": 0.0}, *stages[1:]))
    )
    assert not all(torch.equal(direct[k], v) for k, v in state(student).items())


def test_intermediate_recipe_scales_the_later_stages(tiny_task_ref):
    from autoslim.pipeline import ApplyContext
    from autoslim.techniques.distill import intermediate_recipe

    full = recipe(
        tiny_task_ref,
        {"kind": "distill", "alpha": 0.7, "progressive": 0.4},
        {"kind": "prune_structured", "ratio": 0.5},
        {"kind": "quantize", "default": 4},
    )
    ctx = ApplyContext(task=load_task(full.task), seed=0, recipe=full)
    middle = intermediate_recipe(full.stages[0], ctx)
    assert [s.kind for s in middle.stages] == ["distill", "prune_structured"]
    assert middle.stages[0].progressive == 0.0 and middle.stages[0].alpha == 0.7
    assert middle.stages[1].ratio == pytest.approx(0.2)
    with pytest.raises(AutoslimError, match="needs the recipe"):
        intermediate_recipe(full.stages[0], ApplyContext(task=ctx.task, seed=0))


def test_progressive_is_a_search_dimension_only_when_given_a_range():
    info = ModelInfo.from_model(DigitsCNN(width=4))
    trial = optuna.create_study().ask()
    searched = DistillSpace(optional=False, progressive={"low": 0.3, "high": 0.7}).suggest(
        trial, info
    )
    assert 0.3 <= searched.progressive <= 0.7 and "distill.progressive" in trial.params
    off = optuna.create_study().ask()
    assert (
        DistillSpace(optional=False).suggest(off, info).progressive == 0.0
        and "distill.progressive" not in off.params
    )
