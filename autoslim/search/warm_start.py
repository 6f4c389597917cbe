"""Warm-starting a study with the mixed-precision allocator's plans.

For each budget (a fraction of the fp32 weight bytes), the allocator picks one width per
layer from the measured sensitivities; each plan is enqueued as a trial of the study's
per-layer quantization component, so the sampler starts from sensible points instead
of spending its first trials on 2-bit first layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import optuna
from torch import nn

from autoslim.space import SearchSpace, compressible_layers
from autoslim.task import Task
from autoslim.techniques.precision import allocate, sensitivity_table, weight_bytes
from autoslim.techniques.quantize import QuantizeConfig, WeightQuantSpace

INT_WIDTHS = (2, 3, 4, 5, 6, 8)


def quant_component(space: SearchSpace) -> WeightQuantSpace | None:
    """The first per-layer weight-quantization component, the one plans are written for."""
    for component in space.components:
        if isinstance(component, WeightQuantSpace) and component.per_layer:
            return component
    return None


def plan_params(
    task: Task, model: nn.Module, fingerprint: str, component: WeightQuantSpace, budgets: Sequence[float],
    *, cost: str = "kl",
) -> list[dict]:
    """Trial parameters of one allocator plan per budget (fraction of fp32 weight bytes)."""
    from autoslim.recipe import resolve_layer_map

    layers = compressible_layers(model)
    targets = component.matching_layers(list(layers))  # model order: ties resolve the same way every run
    choices = resolve_layer_map(component.layer_bits, list(layers))
    widths_used = sorted({b for b in component.bits if b in INT_WIDTHS})
    table = sensitivity_table(task, model, fingerprint, widths_used) if widths_used else None
    config = QuantizeConfig()
    costs, sizes = {}, {}
    for name in targets:
        options = [b for b in choices.get(name, component.bits) if b in INT_WIDTHS or b in ("fp32", "fp16", "bf16")]
        rows = table[table["layer"] == name].set_index("bits") if table is not None else None
        costs[name] = {b: (float(rows.loc[b, cost]) if b in INT_WIDTHS else 0.0) for b in options}
        sizes[name] = {b: weight_bytes(layers[name], b, config) for b in options}
    fp32_bytes = sum(layers[n].weight.numel() * 4 for n in targets)
    plans = []
    for budget in budgets:
        plan = allocate(costs, sizes, int(budget * fp32_bytes))
        params = {f"{component.name}.bits.{layer}": width for layer, width in plan.widths.items()}
        if component.optional:
            params[f"{component.name}.enabled"] = True
        plans.append(params)
    return plans


def uniform_params(component: WeightQuantSpace, layer_names: list[str], widths: Sequence) -> list[dict]:
    """Trial parameters giving every targeted layer the same width (where its choices allow).

    Queued first, they put the uniform baselines on the front, so the search can only
    improve on uniform quantization, never report something worse as its best.
    """
    from autoslim.recipe import resolve_layer_map

    targets = component.matching_layers(layer_names)
    choices = resolve_layer_map(component.layer_bits, layer_names)
    plans = []
    for width in widths:
        params = {f"{component.name}.bits.{layer}": width for layer in targets
                  if width in choices.get(layer, component.bits)}
        if len(params) == len(targets):
            plans.append(params | ({f"{component.name}.enabled": True} if component.optional else {}))
    return plans


def enqueue_plans(study: optuna.Study, plans: list[dict]) -> int:
    """Enqueue plans into a fresh study only (a resumed one already has its history)."""
    if study.trials:
        return 0
    for params in plans:
        study.enqueue_trial(params, skip_if_exists=True)
    return len(plans)
