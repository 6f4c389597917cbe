"""Unstructured pruning on models written the way users write them (tests/user_models.py):
a Hugging Face BERT classifier fed dict batches, OddMix (embedding tied to its head,
depthwise and grouped Conv1d, a GRU) and the CIFAR ResNet, each fed from DataLoaders,
through ``apply_recipe``. Calibration reads a streamed split only as deep as it needs,
and tied weights stay tied (the tied head is left out of pruning)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.techniques.prune import PruneConfig, apply_masks, prunable_layers, prune_count
from autoslim.techniques.prune.importance import (
    GradStats,
    calibrate,
    get_criterion,
    hessian_diagonal,
)
from tests.user_models import (
    CifarResNet,
    CountingTokens,
    OddMix,
    bert_classifier,
    loader_task,
)

ENTRY = "tests.techniques.prune.test_user_models"


def oddmix() -> OddMix:
    torch.manual_seed(0)
    return OddMix().eval()


def resnet() -> CifarResNet:
    torch.manual_seed(0)
    return CifarResNet(widths=(8, 16, 16)).eval()


def recipe(**stage) -> Recipe:
    return Recipe.from_dict(
        {"task": {"entry": f"{ENTRY}:oddmix"}, "stages": [{"kind": "prune", **stage}]}
    )


def zeros_and_total(model) -> tuple[int, int]:
    layers = prunable_layers(model).values()
    return sum(int((m.weight == 0).sum()) for m in layers), sum(m.weight.numel() for m in layers)


def test_bert_prune_with_a_gradient_criterion_on_dict_batches():
    task = loader_task("bert", bert_classifier)
    model = apply_recipe(
        recipe(sparsity=0.6, criterion="taylor", calibration_samples=8, fine_tune_epochs=1),
        task=task,
        model=bert_classifier(),
    )
    zeros, total = zeros_and_total(model)
    assert zeros == prune_count(total, 0.6)
    assert math.isfinite(task.evaluate(model, "val"))
    assert not bool((model.bert.embeddings.word_embeddings.weight[1:] == 0).any())  # 0: padding


@pytest.mark.parametrize(
    "stage",
    [
        {"sparsity": 0.5, "criterion": "fisher", "calibration_samples": 8, "fine_tune_epochs": 1},
        {"sparsity": 0.7, "schedule": "cubic", "fine_tune_epochs": 1, "frequency": 1},
        {"scope": "layer", "layers": {"depthwise": 0.3, "re:.*": 0.5}, "fine_tune_epochs": 1},
    ],
    ids=["oneshot-fisher", "cubic", "layer"],
)
def test_oddmix_keeps_its_tie_and_leaves_embedding_and_gru_whole(stage):
    task = loader_task("tokens", oddmix)
    model = apply_recipe(recipe(**stage), task=task, model=oddmix())
    assert model.head.weight is model.embed.weight
    assert "head" not in prunable_layers(model)
    assert not bool((model.embed.weight == 0).any())
    assert all(not bool((p == 0).any()) for p in model.gru.parameters())
    if stage.get("scope") == "layer":
        assert int((model.depthwise.weight == 0).sum()) == prune_count(
            model.depthwise.weight.numel(), 0.3
        )
        assert int((model.grouped.weight == 0).sum()) == prune_count(
            model.grouped.weight.numel(), 0.5
        )
    else:
        zeros, total = zeros_and_total(model)
        assert zeros == prune_count(total, stage["sparsity"])
    assert math.isfinite(task.evaluate(model, "val"))


def test_resnet_prune_from_an_image_loader():
    task = loader_task("image", resnet)
    model = apply_recipe(
        recipe(sparsity=0.5, criterion="taylor", calibration_samples=4, fine_tune_epochs=1),
        task=task,
        model=resnet(),
    )
    zeros, total = zeros_and_total(model)
    assert zeros == prune_count(total, 0.5)
    assert math.isfinite(task.evaluate(model, "val"))


def test_calibration_reads_a_streamed_split_only_as_deep_as_it_needs():
    train = CountingTokens(96, seed=1)
    task = loader_task("bert", bert_classifier, train=DataLoader(train, batch_size=16))
    apply_recipe(
        recipe(sparsity=0.5, criterion="fisher", calibration_samples=8),
        task=task,
        model=bert_classifier(),
    )
    assert train.reads == 16  # one batch of the user's loader
    l1 = CountingTokens(96, seed=1)
    task = loader_task("bert", bert_classifier, train=l1)
    apply_recipe(recipe(sparsity=0.5), task=task, model=bert_classifier())
    assert l1.reads == 0  # a criterion that reads no data reads none


def test_calibration_and_hessian_take_dict_inputs_row_by_row():
    model = bert_classifier()
    task = loader_task("bert", bert_classifier)
    inputs, targets = task.data.train.take(4)
    stats = calibrate(model, inputs, targets, task.loss)
    weight = model.classifier.weight
    assert stats.grad[weight].shape == weight.shape and bool(stats.sq_grad[weight].abs().sum() > 0)
    diag = hessian_diagonal(
        oddmix(),
        *loader_task("tokens", oddmix).data.train.take(4),
        task.loss,
        samples=2,
        generator=torch.Generator().manual_seed(0),
        batch_size=2,
    )
    assert all(torch.isfinite(d).all() for d in diag.values())
    assert get_criterion("hutchinson").needs_hessian


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind, build", [("bert", bert_classifier), ("tokens", oddmix)])
def test_masks_update_on_cuda_during_a_gradual_fine_tune(kind, build):
    task = loader_task(kind, build, device="cuda")
    stage = dict(sparsity=0.6, schedule="cubic", criterion="taylor", calibration_samples=4)
    model = apply_recipe(recipe(**stage, fine_tune_epochs=2, frequency=1), task=task, model=build())
    assert next(model.parameters()).device.type == "cpu"
    zeros, total = zeros_and_total(model)
    assert zeros == prune_count(total, 0.6)
    assert math.isfinite(task.evaluate(model, "val"))
    # Masks are made on the weight's device, for any criterion.
    on_gpu = build().cuda()
    seeded = GradStats(generator=torch.Generator().manual_seed(0))
    apply_masks(on_gpu, PruneConfig(sparsity=0.5, criterion="random"), stats=seeded)
    assert all(m.weight_mask.device.type == "cuda" for m in prunable_layers(on_gpu).values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gradient_criteria_calibrate_a_gru_on_cuda():
    """cuDNN's GRU refuses backward in eval mode and double backward: calibration on CUDA
    runs such a model without cuDNN, and gives what the CPU gives."""
    task = loader_task("tokens", oddmix)
    inputs, targets = task.data.train.take(4)
    cpu, gpu = oddmix(), oddmix().cuda()
    stats = calibrate(gpu, inputs, targets, task.loss)
    reference = calibrate(cpu, inputs, targets, task.loss)
    torch.testing.assert_close(
        stats.sq_grad[gpu.classify.weight].cpu(), reference.sq_grad[cpu.classify.weight]
    )
    diag = hessian_diagonal(
        gpu,
        inputs,
        targets,
        task.loss,
        samples=2,
        generator=torch.Generator().manual_seed(0),
        batch_size=2,
    )
    expected = hessian_diagonal(
        cpu,
        inputs,
        targets,
        task.loss,
        samples=2,
        generator=torch.Generator().manual_seed(0),
        batch_size=2,
    )
    torch.testing.assert_close(
        diag[gpu.classify.weight].cpu(), expected[cpu.classify.weight], rtol=1e-3, atol=1e-5
    )
