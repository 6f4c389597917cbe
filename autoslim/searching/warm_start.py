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

from autoslim.space import SearchSpace, compressible_layers, quantizable_layers
from autoslim.task import Task
from autoslim.techniques.quantize import QuantizeConfig, WeightQuantSpace
from autoslim.techniques.quantize._mixed_precision import allocate, sensitivity_table, weight_bytes

INT_WIDTHS = (2, 3, 4, 5, 6, 8)


def quant_component(space: SearchSpace) -> WeightQuantSpace | None:
    """The first per-layer weight-quantization component, the one plans are written for."""
    for component in space.components:
        if isinstance(component, WeightQuantSpace) and component.per_layer:
            return component
    return None


def plan_params(
    task: Task,
    model: nn.Module,
    fingerprint: str,
    component: WeightQuantSpace,
    budgets: Sequence[float],
    *,
    cost: str = "kl",
) -> list[dict]:
    """Trial parameters of one allocator plan per budget (a fraction of the fp32 bytes of
    the weights the plan covers).

    Where the component quantizes GRU/LSTM layers (``recurrent``), they are layers of the
    plan, as in the component's own trials: a recurrent layer is often most of a small
    sequence model's weights, and left out it would be sampled at random beside a plan
    that counted it at no bytes."""
    from autoslim.recipe import resolve_layer_map

    recurrent = getattr(component, "recurrent", False)
    layers = quantizable_layers(model) if recurrent else compressible_layers(model)
    targets = component.matching_layers(
        list(layers)
    )  # model order: ties resolve the same way every run
    choices = resolve_layer_map(component.layer_bits, list(layers))
    widths_used = sorted({b for b in component.bits if b in INT_WIDTHS})
    table = sensitivity_table(task, model, fingerprint, widths_used) if widths_used else None
    config = QuantizeConfig()
    costs, sizes = {}, {}
    for name in targets:
        options = [
            b
            for b in choices.get(name, component.bits)
            if b in INT_WIDTHS or b in ("fp32", "fp16", "bf16")
        ]
        rows = table[table["layer"] == name].set_index("bits") if table is not None else None
        costs[name] = {b: (float(rows.loc[b, cost]) if b in INT_WIDTHS else 0.0) for b in options}
        sizes[name] = {b: weight_bytes(layers[name], b, config) for b in options}
    fp32_bytes = sum(weight_bytes(layers[n], "fp32", config) for n in targets)
    plans = []
    for budget in budgets:
        plan = allocate(costs, sizes, int(budget * fp32_bytes))
        params = {f"{component.name}.bits.{layer}": width for layer, width in plan.widths.items()}
        if component.optional:
            params[f"{component.name}.enabled"] = True
        plans.append(params)
    return plans


def uniform_params(
    component: WeightQuantSpace, layer_names: list[str], widths: Sequence
) -> list[dict]:
    """Trial parameters giving every targeted layer the same width (where its choices allow).

    Queued first, they put the uniform baselines on the front, so the search can only
    improve on uniform quantization, never report something worse as its best.
    """
    from autoslim.recipe import resolve_layer_map

    targets = component.matching_layers(layer_names)
    choices = resolve_layer_map(component.layer_bits, layer_names)
    plans = []
    for width in widths:
        params = {
            f"{component.name}.bits.{layer}": width
            for layer in targets
            if width in choices.get(layer, component.bits)
        }
        if len(params) == len(targets):
            plans.append(
                params | ({f"{component.name}.enabled": True} if component.optional else {})
            )
    return plans


def enqueue_plans(study: optuna.Study, plans: list[dict]) -> int:
    """Enqueue plans into a fresh study only (a resumed one already has its history)."""
    if study.trials:
        return 0
    for params in plans:
        study.enqueue_trial(params, skip_if_exists=True)
    return len(plans)


class NotExpressible(Exception):
    """The space cannot suggest the wanted stage (a choice it lacks, a value out of range)."""


def _expand(mapping: dict, default: object, layer_names: list[str]) -> dict:
    from autoslim.recipe import resolve_layer_map

    given = resolve_layer_map(mapping, layer_names)
    return {name: given.get(name, default) for name in layer_names}


def normalise_stage(stage: object, layer_names: list[str]) -> dict:
    """One stage as a plain dict in which equal behaviour means equal dicts.

    Per-layer maps are expanded onto every layer (``scope: layer, sparsity: 0.7`` equals a
    map of 0.7 for each layer; ``default: 8`` equals 8 for each layer), ``round_to: None``
    is 1, neutral group multipliers are dropped, and a learning rate is dropped where no
    fine-tune reads it.
    """
    from autoslim.recipe import parse_stage

    data = parse_stage(stage).model_dump(mode="json")
    kind = data["kind"]
    if kind == "quantize":
        data["layers"] = _expand(data["layers"], data.pop("default"), layer_names)
    elif kind == "prune":
        if data["scope"] == "layer":
            data["layers"] = _expand(data["layers"], data["sparsity"], layer_names)
            data["sparsity"] = 0.0
    elif kind == "prune_structured":
        data["round_to"] = data["round_to"] or 1
        data["group_multipliers"] = {k: v for k, v in data["group_multipliers"].items() if v != 1.0}
    if data.get("fine_tune_epochs") == 0:
        data.pop("lr", None)
    return data


class _ReplayTrial:
    """Stands in for an Optuna trial: answers each ``suggest_*`` of one component from the
    stage it should produce, and records the answers as that trial's parameters."""

    def __init__(self, prefix: str, wanted: dict | None) -> None:
        self.prefix, self.wanted, self.params = prefix + ".", wanted, {}

    def _answer(self, name: str) -> object:
        if not name.startswith(self.prefix):
            raise NotExpressible(name)
        key = name[len(self.prefix) :]
        if key == "enabled":
            return self.wanted is not None
        if self.wanted is None:
            raise NotExpressible(name)  # a switched-off component asks nothing more
        field, _, sub = key.partition(".")
        layers = self.wanted.get("layers", {})
        if field in ("bits", "cbits", "sparsity") and sub:
            if sub not in layers:
                raise NotExpressible(name)
            return layers[sub]
        if field in ("bits", "cbits"):  # one width for every layer
            widths = set(map(str, layers.values()))
            if len(widths) != 1:
                raise NotExpressible(name)
            return next(iter(layers.values()))
        if field == "mult":
            return self.wanted["group_multipliers"].get(sub, 1.0)
        if field in self.wanted:
            return self.wanted[field]
        raise NotExpressible(name)

    def _record(self, name: str, value: object) -> object:
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices) -> object:
        value = self._answer(name)
        if value not in list(choices):
            raise NotExpressible(f"{name}={value!r} is not among {list(choices)}")
        return self._record(name, value)

    def suggest_float(
        self, name: str, low: float, high: float, *, log: bool = False, step: float | None = None
    ) -> float:
        value = self._answer(name)
        if not isinstance(value, (int, float)) or not low <= value <= high:
            raise NotExpressible(f"{name}={value!r} is outside [{low}, {high}]")
        if step is not None and abs((value - low) / step - round((value - low) / step)) > 1e-9:
            raise NotExpressible(f"{name}={value!r} is off the step-{step} grid")
        return self._record(name, float(value))

    def suggest_int(self, name: str, low: int, high: int, **_: object) -> int:
        value = self._answer(name)
        if not isinstance(value, int) or not low <= value <= high:
            raise NotExpressible(f"{name}={value!r} is outside [{low}, {high}]")
        return self._record(name, value)


def baseline_params(space: SearchSpace, info, stages: Sequence) -> dict | None:
    """Trial parameters under which ``space`` suggests exactly ``stages``, or None.

    ``stages`` is a recipe's stage list, e.g. a uniform baseline such as
    ``[{"kind": "prune", "scope": "layer", "sparsity": 0.7, "fine_tune_epochs": 3, "lr": 5e-4}]``.
    Components are matched to stages in order (a recipe's stages follow the space's
    order); every optional component without a stage is switched off. The parameters are
    found by replaying each component's own ``suggest``, then checked: the space must give
    back stages equal to the wanted ones (after :func:`normalise_stage`), so an enqueued
    warm start *is* the baseline, not an approximation of it. ``info`` is the
    :class:`~autoslim.space.ModelInfo` of the model the search compresses.
    """
    names = list(info.names)
    wanted = [normalise_stage(s, names) for s in stages]
    params: dict = {}
    position = 0
    for component in space.components:
        target = wanted[position] if position < len(wanted) else None
        if target is not None:
            found = _replay(component, info, target)
            if found is not None:
                params |= found
                position += 1
                continue
        if not component.optional:
            return None
        params[f"{component.name}.enabled"] = False
    return params if position == len(wanted) else None


def _replay(component, info, target: dict) -> dict | None:
    """The component's parameters for producing ``target``, or None if it cannot."""
    trial = _ReplayTrial(component.name, target)
    try:
        stage = component.suggest(trial, info)
    except (NotExpressible, ValueError):
        return None
    if stage is None or normalise_stage(stage, list(info.names)) != target:
        return None
    return trial.params
