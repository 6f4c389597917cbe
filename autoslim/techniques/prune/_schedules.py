"""Sparsity schedules: how fast pruning reaches its target during the fine-tune.

Pure functions of the step index, so a recipe's schedule replays exactly and tests can
check values against the published formulas.
"""

from __future__ import annotations

from autoslim.errors import AutoslimError


def polynomial_sparsity(
    step: int,
    *,
    final: float,
    initial: float = 0.0,
    start: int = 0,
    end: int,
    frequency: int = 1,
    power: float = 3.0,
) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)·(1 − (t − t0)/(nΔt))^power.

    Pruning happens at t0, t0 + Δt, ... and at ``end`` = t0 + nΔt (also when ``end`` is
    not a multiple of Δt away, so the target is always reached); between events the
    sparsity of the last event holds. Before ``start`` nothing is pruned. Early steps
    prune fast while redundancy is plentiful, late steps slowly so training can recover.
    """
    if end <= start or frequency < 1:
        raise AutoslimError(
            f"schedule needs start < end and frequency >= 1 (got {start}, {end}, {frequency})"
        )
    if step < start:
        return 0.0
    if step >= end:
        return final
    last_event = start + (step - start) // frequency * frequency
    return final + (initial - final) * (1.0 - (last_event - start) / (end - start)) ** power


def is_pruning_step(step: int, *, start: int, end: int, frequency: int) -> bool:
    return start <= step <= end and ((step - start) % frequency == 0 or step == end)


def iterative_sparsities(final: float, rounds: int) -> list[float]:
    """Targets for prune → fine-tune rounds, removing the same fraction of the surviving
    weights each round (Han et al. 2015; Frankle & Carbin 2019): 1 − (1 − s_f)^(i/k)."""
    if rounds < 1:
        raise AutoslimError(f"rounds must be >= 1, got {rounds}")
    return [1.0 - (1.0 - final) ** (i / rounds) for i in range(1, rounds + 1)]
