"""Pruned weights are zeros to the artifact, whatever their sign.

Folding a mask as torch does (``weight_orig * weight_mask``) makes every pruned negative
weight ``-0.0``: about half of a pruned model's zeros. The sparse encoder keys floats by
their bits, and once counted ``-0.0`` as a non-zero, so a 90 % pruned model was stored at
0.58x its fp32 bytes instead of 0.12x.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.nn.utils import prune as torch_prune

from autoslim.artifact import (
    LAYOUT_KEY,
    WEIGHTS_FILE,
    artifact_bytes,
    load_artifact,
    save_artifact,
)
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.task import Split, Splits, Task, model_only_task
from autoslim.techniques.prune import PruneConfig, apply_masks, fold_pruning_masks, prune_count

SPARSITY = 0.9


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 16, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def splits() -> Splits:
    generator = torch.Generator().manual_seed(0)
    split = Split(torch.randn(8, 3, 8, 8, generator=generator), torch.arange(8) % 10)
    return Splits(split, split, split)


TASK = Task(name="signed-zero", build_model=build, load_data=splits)
RECIPE = Recipe.model_validate(
    {
        "task": {"entry": "tests.signed_zero:make_task"},
        "target": {"sparse_kernels": False},  # loading must not time crossovers
        "stages": [{"kind": "prune", "sparsity": SPARSITY}],
    }
)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{n}.weight": m.weight.detach()
        for n, m in model.named_modules()
        if n and hasattr(m, "weight")
    }


def signed_zeros(model: nn.Module) -> int:
    return sum(int((torch.signbit(w) & (w == 0)).sum()) for w in weights(model).values())


def torch_folded() -> nn.Module:
    """90 % global magnitude pruning, masks folded by torch itself (``orig * mask``)."""
    model = build()
    for module in apply_masks(model, PruneConfig(sparsity=SPARSITY)):
        torch_prune.remove(module, "weight")
    return model


def unsigned(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for w in weights(model).values():
            w.masked_fill_(w == 0, 0.0)
    return model


def saved(model: nn.Module, folder) -> tuple[int, dict[str, dict], bytes]:
    save_artifact(model, RECIPE, folder, task=model_only_task(build, RECIPE.task.entry))
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
        layout = json.loads(f.metadata()[LAYOUT_KEY])
    return artifact_bytes(folder), layout, (folder / WEIGHTS_FILE).read_bytes()


def fp32_bytes() -> int:
    return sum(t.numel() * 4 for t in build().state_dict().values())


def test_torch_folded_masks_leave_negative_zeros():
    model = torch_folded()
    total = sum(w.numel() for w in weights(model).values())
    # about half of the 90 % pruned weights were negative
    assert 0.3 * total < signed_zeros(model) < 0.6 * total


def test_negative_zeros_are_stored_as_zeros(tmp_path):
    model = torch_folded()
    assert signed_zeros(model) > 0
    size, layout, blob = saved(model, tmp_path / "signed")
    true_nnz = {name: int(torch.count_nonzero(w)) for name, w in weights(model).items()}
    assert set(layout) == set(true_nnz)  # every pruned weight is sparse-encoded
    assert {name: entry["meta"]["nnz"] for name, entry in layout.items()} == true_nnz

    twin_size, twin_layout, twin_blob = saved(unsigned(torch_folded()), tmp_path / "unsigned")
    assert size == twin_size
    assert blob == twin_blob  # the same bytes: -0.0 and +0.0 are one implicit zero
    assert size < 0.16 * fp32_bytes()  # the -0.0s once made this 0.58x

    loaded = load_artifact(tmp_path / "signed", model_factory=build, runtime=False).model
    for name, w in weights(loaded).items():
        assert torch.equal(w, weights(model)[name]), name  # equal values
        assert not bool((torch.signbit(w) & (w == 0)).any()), name  # decoded as +0.0


@pytest.mark.parametrize("fold", ["stage", "fold_pruning_masks"])
def test_the_prune_stage_folds_masks_into_positive_zeros(fold, tmp_path):
    if fold == "stage":
        model = apply_recipe(RECIPE, task=TASK, model=build())
    else:
        model = build()
        apply_masks(model, PruneConfig(sparsity=SPARSITY))
        fold_pruning_masks(model)
    assert signed_zeros(model) == 0
    total = sum(w.numel() for w in weights(model).values())
    zeros = sum(int((w == 0).sum()) for w in weights(model).values())
    assert zeros == prune_count(total, SPARSITY)
    # the same zeros as torch's own fold, which only differs in their sign
    for name, w in weights(torch_folded()).items():
        assert torch.equal(weights(model)[name], w), name
    _, layout, _ = saved(model, tmp_path / "artifact")
    stored = sum(entry["meta"]["nnz"] for entry in layout.values())
    assert stored == total - zeros
