from __future__ import annotations

import pytest

from autoslim.errors import AutoslimError
from autoslim.techniques.prune._schedules import (
    is_pruning_step,
    iterative_sparsities,
    polynomial_sparsity,
)


def zhu_gupta(t: int, s_i: float, s_f: float, t0: int, n: int, dt: int) -> float:
    return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


@pytest.mark.parametrize("step", [10, 20, 60, 100, 110])
def test_cubic_schedule_matches_zhu_and_gupta_at_pruning_steps(step):
    value = polynomial_sparsity(step, final=0.9, initial=0.1, start=10, end=110, frequency=10)
    assert value == pytest.approx(zhu_gupta(step, 0.1, 0.9, 10, 10, 10))


def test_cubic_schedule_holds_between_events_and_reference_values():
    kw = {"final": 0.9, "start": 10, "end": 110, "frequency": 10}
    assert polynomial_sparsity(60, **kw) == pytest.approx(0.9 - 0.9 * 0.5**3)  # 0.7875
    assert polynomial_sparsity(65, **kw) == polynomial_sparsity(60, **kw)
    assert polynomial_sparsity(5, **kw) == 0.0
    assert polynomial_sparsity(500, **kw) == 0.9
    assert polynomial_sparsity(60, power=1.0, **kw) == pytest.approx(0.45)


def test_pruning_steps_include_an_uneven_end():
    steps = [t for t in range(40) if is_pruning_step(t, start=0, end=25, frequency=10)]
    assert steps == [0, 10, 20, 25]
    assert polynomial_sparsity(25, final=0.5, start=0, end=25, frequency=10) == 0.5


def test_iterative_targets_remove_the_same_share_each_round():
    assert iterative_sparsities(0.875, 3) == pytest.approx([0.5, 0.75, 0.875])
    with pytest.raises(AutoslimError):
        iterative_sparsities(0.5, 0)
    with pytest.raises(AutoslimError):
        polynomial_sparsity(3, final=0.5, start=5, end=5)
