"""Mixed precision: per-layer sensitivity, and a solver that spends a byte budget on it.

Sensitivity of layer ``l`` at ``b`` bits is measured, not guessed: quantize that one
layer (everything else fp32), then read the validation metric drop and the KL divergence
of the output distribution against the fp32 model. Optionally the HAWQ-V2 second-order
score ``Tr(H_l)/n_l · ||Q_b(W_l) - W_l||²`` with a Hutchinson trace estimate. Results are
cached per task fingerprint and settings, because they depend on nothing else.

The allocator solves the multiple-choice knapsack exactly by dynamic programming over a
discretised byte budget: pick one width per layer minimising summed sensitivity with
total weight bytes within budget. Its plans can warm-start a study (enqueued trials).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from autoslim.baseline import cache_root
from autoslim.data import call_model
from autoslim.errors import AutoslimError
from autoslim.pipeline import ApplyContext
from autoslim.space import quantizable_layers, recurrent_weights
from autoslim.task import Task
from autoslim.techniques._hessian import hessian_vector_products
from autoslim.techniques.quantize import QuantizeConfig, WeightQuantHandler
from autoslim.techniques.quantize._grid import fake_quantize, grouped

SCALE_BYTES = 4  # fp32 scale per group (plus a zero point when asymmetric)


@torch.inference_mode()
def _logits(model: nn.Module, task: Task) -> torch.Tensor:
    model.eval()
    return torch.cat([call_model(model, x) for x, _ in task.data.val.batches(task.eval_batch_size)])


def layer_weights(module: nn.Module) -> list[torch.Tensor]:
    """The weights a layer's width applies to: its ``weight``, or a GRU/LSTM's matrices."""
    if isinstance(module, nn.RNNBase):
        return [getattr(module, name) for name in recurrent_weights(module)]
    return [module.weight]


def output_kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean KL(p_ref || p_other) of the softmax outputs, in nats."""
    log_p = torch.log_softmax(reference, dim=1)
    log_q = torch.log_softmax(other, dim=1)
    return float((log_p.exp() * (log_p - log_q)).sum(dim=1).mean())


def layer_sensitivity(
    task: Task, model: nn.Module, widths: Sequence[int], *, config: QuantizeConfig | None = None
) -> pd.DataFrame:
    """One row per (layer, bits): ``metric_drop`` (baseline − quantized) and ``kl``, for
    every layer a per-layer plan covers (GRU/LSTM layers included)."""
    config = config or QuantizeConfig()
    reference = _logits(model, task)
    base_metric = task.evaluate(model, "val")
    rows = []
    for layer in quantizable_layers(model):
        for bits in widths:
            trial = copy.deepcopy(model)
            stage = config.model_copy(update={"layers": {layer: bits}, "default": "fp32"})
            WeightQuantHandler().apply(trial, stage, ApplyContext(task=task, seed=0))
            metric = task.evaluate(trial, "val")
            rows.append(
                {
                    "layer": layer,
                    "bits": bits,
                    "metric_drop": base_metric - metric,
                    "kl": output_kl(reference, _logits(trial, task)),
                }
            )
    return pd.DataFrame(rows)


def hessian_traces(
    task: Task, model: nn.Module, *, samples: int = 16, batches: int = 2, seed: int = 0
) -> dict:
    """Hutchinson estimates of Tr(H) of the training loss per layer (summed over a
    GRU/LSTM's weight matrices)."""
    generator = torch.Generator().manual_seed(seed)
    layers = quantizable_layers(model)
    owners = [name for name, m in layers.items() for _ in layer_weights(m)]
    traces = dict.fromkeys(layers, 0.0)
    model.eval()
    for step, (x, y) in enumerate(task.data.train.batches(task.train.batch_size)):
        if step >= batches:
            break
        weights = [w for m in layers.values() for w in layer_weights(m)]
        loss = task.loss(call_model(model, x), y)
        for vs, hvs in hessian_vector_products(loss, weights, samples=samples, generator=generator):
            for name, v, hv in zip(owners, vs, hvs, strict=True):
                traces[name] += float((v * hv).sum()) / (samples * batches)
    return traces


def hawq_scores(
    model: nn.Module, traces: dict, widths: Sequence[int], config: QuantizeConfig
) -> pd.DataFrame:
    """HAWQ-V2 score per (layer, bits): mean Hessian eigenvalue × squared weight error."""
    rows = []
    for name, module in quantizable_layers(model).items():
        weights = [w.detach() for w in layer_weights(module)]
        numel = sum(w.numel() for w in weights)
        for bits in widths:
            error = sum(
                float(((fake_quantize(w, config.grid(bits))[0] - w) ** 2).sum()) for w in weights
            )
            rows.append({"layer": name, "bits": bits, "hawq": traces[name] / numel * error})
    return pd.DataFrame(rows)


def sensitivity_table(
    task: Task,
    model: nn.Module,
    fingerprint: str,
    widths: Sequence[int],
    *,
    hessian: bool = False,
    config: QuantizeConfig | None = None,
) -> pd.DataFrame:
    """Sensitivity rows, read from the cache when this task and these settings were seen."""
    config = config or QuantizeConfig()
    key = json.dumps(
        {
            "task": fingerprint,
            "widths": list(widths),
            "hessian": hessian,
            "grid": config.model_dump(mode="json", exclude={"layers", "default"}),
        },
        sort_keys=True,
    )
    path = cache_root() / "sensitivity" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.csv"
    if path.is_file():
        return pd.read_csv(path)
    table = layer_sensitivity(task, model, widths, config=config)
    if hessian:
        scores = hawq_scores(model, hessian_traces(task, model), widths, config)
        table = table.merge(scores, on=["layer", "bits"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)
    return table


def weight_bytes(module: nn.Module, width: int | str, config: QuantizeConfig) -> int:
    """Stored bytes of one layer's weights at a width (packed levels + per-group params;
    a GRU/LSTM's matrices each with their own grid)."""
    weights = layer_weights(module)
    if width in ("fp32", "fp16", "bf16"):
        return sum(w.numel() for w in weights) * (4 if width == "fp32" else 2)
    per_group = SCALE_BYTES * (1 if config.symmetric else 2)
    total = 0
    for weight in weights:
        groups = grouped(weight, config.grid(int(width))).shape[:2].numel()
        total += (weight.numel() * int(width) + 7) // 8 + groups * per_group
    return total


@dataclass(frozen=True)
class Allocation:
    widths: dict[str, int | str]
    weight_bytes: int
    sensitivity: float


def allocate(
    costs: dict[str, dict[int | str, float]],
    sizes: dict[str, dict[int | str, int]],
    budget_bytes: int,
    *,
    resolution: int = 2000,
) -> Allocation:
    """Exact multiple-choice knapsack: one width per layer, min summed cost, bytes ≤ budget.

    Byte sizes are rounded *up* to ``budget/resolution`` units, so a plan that fits the
    discretised budget always fits the real one.
    """
    layers = list(costs)
    unit = max(1, -(-budget_bytes // resolution))
    capacity = budget_bytes // unit
    best = np.full(capacity + 1, np.inf)
    best[0] = 0.0
    choice: list[np.ndarray] = []
    for layer in layers:
        new = np.full(capacity + 1, np.inf)
        picked = np.full(capacity + 1, -1)
        for index, width in enumerate(costs[layer]):
            need = -(-sizes[layer][width] // unit)
            if need > capacity:
                continue
            candidate = np.full(capacity + 1, np.inf)
            candidate[need:] = best[: capacity + 1 - need] + costs[layer][width]
            better = candidate < new
            new[better], picked[better] = candidate[better], index
        best = new
        choice.append(picked)
    if not np.isfinite(best).any():
        raise AutoslimError(f"no bit-width plan fits a budget of {budget_bytes} weight bytes")
    return _backtrack(layers, costs, sizes, choice, best, unit)


def _backtrack(layers, costs, sizes, choice, best, unit) -> Allocation:
    used = int(np.argmin(best))
    widths: dict[str, int | str] = {}
    for layer, picked in zip(reversed(layers), reversed(choice), strict=True):
        width = list(costs[layer])[int(picked[used])]
        widths[layer] = width
        used -= -(-sizes[layer][width] // unit)
    widths = {layer: widths[layer] for layer in layers}
    total = sum(sizes[layer][w] for layer, w in widths.items())
    return Allocation(widths, total, sum(costs[layer][w] for layer, w in widths.items()))
