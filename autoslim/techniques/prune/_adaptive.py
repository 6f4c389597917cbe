"""The adaptive pruning controller: a phased schedule that adjusts itself, then is recorded.

A phase prunes to a target sparsity and fine-tunes for some epochs at some learning rate.
The plan walks to the final sparsity in ``phase_count`` equal steps. After each phase the
controller reads two signals and sets the next step:

- **back off** (step × ``backoff``) when the validation metric fell by more than
  ``threshold`` during the phase: the network is losing faster than it recovers;
- **push** (step × ``push``) when latency did not move but still can. The proxy is the
  kernel plan the sparse runtime would pick (:func:`sparse_layers`, from the measured
  CSR/dense crossover of :mod:`autoslim.sparse.crossover`): below a layer's crossover its
  zeros run on the dense kernel, so CPU latency cannot change, no timing needed. "Still
  can" means some Linear layer not yet on CSR has a crossover at all
  (:func:`csr_reachable`). Convolutions always run dense, so a conv net is never pushed:
  more sparsity would buy it no latency, only lose accuracy;
- otherwise keep the step.

A pruned weight stays pruned, so backing off slows the walk instead of reverting it. The
final sparsity is always reached: the last phase of the budget (2 × ``phase_count``)
jumps to it. So the recipe's ``sparsity`` is the artifact's, and a dry run (no training)
builds the same structure.

The realised phases, each with the decision that set it, are written back into the
recipe (:meth:`autoslim.pipeline.ApplyContext.realise`). A stage that already carries
phases replays them verbatim: no metric is read and no crossover is consulted, so an
exported recipe rebuilds the searched artifact on any machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import Field
from torch import nn

from autoslim.recipe import Target
from autoslim.registry import StrictModel
from autoslim.sparse.crossover import measure_crossover
from autoslim.sparse.execute import choose_kernel
from autoslim.sparse.runtime import MIN_SPARSITY

Decision = Literal["plan", "push", "back_off", "budget"]
# Recorded sparsities are rounded so recipes stay readable; replay uses the rounded value too.
DIGITS = 4


class Phase(StrictModel):
    """One phase: prune to ``sparsity``, then fine-tune ``epochs`` at ``lr``.

    ``decision`` says why the controller chose this sparsity; replay ignores it.
    """

    sparsity: float = Field(ge=0.0, lt=1.0)
    epochs: int = Field(ge=0)
    lr: float = Field(gt=0.0)
    decision: Decision = "plan"


class AdaptiveController:
    """Decides each phase from what the previous phase did; pure, so tests feed it metrics.

    ``first()`` gives phase 1; ``observe(drop, latency_moved)`` after each phase gives the
    next one, or ``None`` once the final sparsity is in force. ``drop`` is how much worse
    the validation metric got during the phase (``None``: not measured, never backs off).
    """

    def __init__(
        self,
        *,
        final: float,
        phase_count: int,
        threshold: float,
        epochs: int,
        lr: float,
        backoff: float = 0.5,
        push: float = 2.0,
    ) -> None:
        self.final, self.threshold, self.epochs, self.lr = final, threshold, epochs, lr
        self.backoff, self.push = backoff, push
        self.step = final / phase_count
        self.budget = 2 * phase_count
        self.phases: list[Phase] = []

    def _phase(self, sparsity: float, decision: Decision) -> Phase:
        # The final target is kept exact (the recipe's sparsity names it); steps are rounded.
        value = self.final if sparsity >= self.final else min(round(sparsity, DIGITS), self.final)
        phase = Phase(sparsity=value, epochs=self.epochs, lr=self.lr, decision=decision)
        self.phases.append(phase)
        return phase

    def first(self) -> Phase:
        return self._phase(self.step, "plan")

    def observe(
        self, drop: float | None, latency_moved: bool, can_move: bool = True
    ) -> Phase | None:
        current = self.phases[-1].sparsity
        if current >= self.final:
            return None
        if len(self.phases) == self.budget - 1:
            return self._phase(self.final, "budget")
        decision: Decision = "plan"
        if drop is not None and drop > self.threshold:
            self.step, decision = self.step * self.backoff, "back_off"
        elif not latency_moved and can_move:
            self.step, decision = self.step * self.push, "push"
        return self._phase(current + self.step, decision)


def metric_drop(before: float, after: float, direction: str) -> float:
    """How much worse ``after`` is than ``before`` (positive = worse), for either direction."""
    return before - after if direction == "maximize" else after - before


Crossover = Callable[[int, int, int, int], "float | None"]


def sparse_layers(
    model: nn.Module,
    target: Target,
    crossover: Crossover | None = None,
    rows: dict[str, tuple[int, ...]] | None = None,
) -> frozenset[str]:
    """The Linear layers the sparse runtime would put on the CSR kernel, from their masks.

    Mirrors :func:`autoslim.sparse.runtime.planned_kernels` but reads the pruning mask
    (the weight attribute is only refreshed at the next forward). The same set before and
    after a phase means the same kernels, so unstructured zeros did not move CPU latency.
    ``rows`` (from :func:`autoslim.sparse.runtime.layer_rows`) are the rows each layer
    multiplies; as at runtime, CSR must win at every one (none given: the batch size).
    """
    if not target.sparse_kernels or target.device != "cpu":
        return frozenset()
    crossover = crossover or measure_crossover  # looked up per call: measured once, then cached
    names = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:
            continue
        mask = getattr(module, "weight_mask", None)
        weight = mask if mask is not None else module.weight.detach()
        sparsity = 1.0 - int(weight.count_nonzero()) / weight.numel()
        if sparsity < MIN_SPARSITY:  # the runtime's own gate: below it, no timing at all
            continue
        seen = (rows or {}).get(name, (target.batch_size,))
        kernels = {
            choose_kernel(
                sparsity, crossover(module.out_features, module.in_features, n, target.threads)
            )
            for n in seen
        }
        if kernels == {"csr"}:
            names.append(name)
    return frozenset(names)


def csr_reachable(
    model: nn.Module,
    target: Target,
    crossover: Crossover | None = None,
    rows: dict[str, tuple[int, ...]] | None = None,
) -> frozenset[str]:
    """The Linear layers that some sparsity would move onto the CSR kernel (a crossover
    exists at every row count the layer multiplies)."""
    if not target.sparse_kernels or target.device != "cpu":
        return frozenset()
    crossover = crossover or measure_crossover
    return frozenset(
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear
        and all(
            crossover(module.out_features, module.in_features, n, target.threads) is not None
            for n in (rows or {}).get(name, (target.batch_size,))
        )
    )
