"""Pareto maths checked against brute force and hand-computed volumes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from autoslim.errors import AutoslimError
from autoslim.results.pareto import (
    attainment_surface,
    dominates,
    hypervolume,
    hypervolume_history,
    non_dominated_mask,
    pareto_front,
    reference_point,
    to_minimization,
)


def brute_force_mask(points: np.ndarray) -> np.ndarray:
    n = len(points)
    mask = np.ones(n, dtype=bool)
    for j in range(n):
        for i in range(n):
            a, b = points[i], points[j]
            if i != j and all(a <= b) and any(a < b):
                mask[j] = False
                break
    return mask


def grid_hypervolume(points: np.ndarray, size: int) -> int:
    """Count unit cells [c, c+1)^d of the grid {0..size-1}^d dominated by a point."""
    d = points.shape[1]
    count = 0
    for cell in itertools.product(range(size), repeat=d):
        if any(np.all(p <= np.array(cell)) for p in points):
            count += 1
    return count


def test_to_minimization_negates_max_columns_and_copies() -> None:
    values = np.array([[1, 2], [3, 4]])
    out = to_minimization(values, ["minimize", "maximize"])
    np.testing.assert_array_equal(out, [[1.0, -2.0], [3.0, -4.0]])
    assert out.dtype == float
    assert values[0, 1] == 2


def test_to_minimization_rejects_bad_direction_and_shape() -> None:
    with pytest.raises(AutoslimError, match="'up'"):
        to_minimization(np.zeros((2, 1)), ["up"])
    with pytest.raises(AutoslimError, match="do not match"):
        to_minimization(np.zeros((2, 3)), ["minimize", "maximize"])


def test_dominates() -> None:
    assert dominates([1, 2], [1, 3])
    assert not dominates([1, 2], [1, 2])
    assert not dominates([1, 3], [2, 2])
    assert not dominates([2, 2], [1, 3])


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_non_dominated_mask_matches_brute_force(d: int) -> None:
    rng = np.random.default_rng(1234 + d)
    for n in range(61):
        # Small integer range forces duplicates and ties in single coordinates.
        points = rng.integers(0, 4, size=(n, d)).astype(float)
        np.testing.assert_array_equal(non_dominated_mask(points), brute_force_mask(points))


def test_non_dominated_mask_keeps_duplicates_and_handles_empty() -> None:
    points = np.array([[1.0, 2.0], [1.0, 2.0], [2.0, 1.0], [2.0, 2.0]])
    np.testing.assert_array_equal(non_dominated_mask(points), [True, True, True, False])
    assert non_dominated_mask(np.empty((0, 3))).shape == (0,)


def test_non_dominated_mask_nan_rows_neither_dominate_nor_are_dominated() -> None:
    points = np.array([[np.nan, 0.0], [0.0, 0.0], [1.0, np.nan], [1.0, 1.0]])
    np.testing.assert_array_equal(non_dominated_mask(points), [True, True, True, False])


@pytest.mark.parametrize("d", [2, 3, 4, 5])
def test_non_dominated_mask_with_infinities_matches_brute_force(d: int) -> None:
    # Equal infinite coordinates must still compare equal (inf - inf is NaN).
    rng = np.random.default_rng(4321 + d)
    for n in range(1, 30):
        points = rng.integers(0, 3, size=(n, d)).astype(float)
        draw = rng.random((n, d))
        points[draw < 0.15] = np.inf
        points[draw > 0.9] = -np.inf
        np.testing.assert_array_equal(non_dominated_mask(points), brute_force_mask(points))
    pair = np.array([[np.inf, 0.0, 0.0, 0.0], [np.inf, 1.0, 1.0, 1.0]])
    np.testing.assert_array_equal(non_dominated_mask(pair), [True, False])


def test_pareto_front_respects_directions_feasibility_and_nan() -> None:
    values = np.array(
        [
            [0.90, 10.0],  # 0 front
            [0.95, 20.0],  # 1 front
            [0.99, 5.0],  # 2 infeasible, would dominate everything
            [0.85, 12.0],  # 3 dominated by 0
            [np.nan, 1.0],  # 4 ignored
            [0.95, 20.0],  # 5 duplicate of 1
        ]
    )
    feasible = np.array([True, True, False, True, True, True])
    front = pareto_front(values, ["maximize", "minimize"], feasible)
    np.testing.assert_array_equal(front, [0, 1, 5])
    np.testing.assert_array_equal(pareto_front(values, ["maximize", "minimize"]), [2])


def test_hypervolume_hand_computed() -> None:
    assert hypervolume(np.array([[1, 3], [2, 2], [3, 1]]), np.array([4, 4])) == 6.0
    assert hypervolume(np.array([[1, 1, 1]]), np.array([2, 3, 4])) == 6.0
    # Boxes 3*2*1 = 6 and 2*3*2 = 12 overlap in 2*2*1 = 4.
    assert hypervolume(np.array([[1, 2, 3], [2, 1, 2]]), np.array([4, 4, 4])) == 14.0
    assert hypervolume(np.array([[2.0], [0.5]]), np.array([3.0])) == 2.5


def inclusion_exclusion_hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Union of the boxes [p, reference] by inclusion-exclusion (fine for <= 6 points)."""
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(points, size):
            corner = np.max(subset, axis=0)
            total += (-1) ** (size + 1) * np.prod(np.clip(reference - corner, 0.0, None))
    return total


def test_hypervolume_2d_hand_computed_staircase() -> None:
    # Sweep on x: 0.5 * (4 - 3) + 1.5 * (4 - 2) + 1.5 * (4 - 0.5) = 0.5 + 3 + 5.25.
    front = np.array([[0.5, 3.0], [1.0, 2.0], [2.5, 0.5]])
    reference = np.array([4.0, 4.0])
    assert hypervolume(front, reference) == pytest.approx(8.75, rel=1e-15)
    # A dominated point, a duplicate, and points outside or on the reference box add nothing.
    extra = np.array([[3.0, 3.0], [1.0, 2.0], [5.0, 0.0], [4.0, 0.1], [0.1, 4.0]])
    assert hypervolume(np.vstack([front, extra]), reference) == pytest.approx(8.75, rel=1e-15)
    # NaN rows are dropped rather than poisoning the volume.
    with_nan = np.vstack([front, [[np.nan, 0.0]]])
    assert hypervolume(with_nan, reference) == pytest.approx(8.75, rel=1e-15)


def test_hypervolume_3d_hand_computed_three_boxes() -> None:
    # Boxes: a 3*2*1 = 6, b 2*3*2 = 12, c 1*1*3 = 3; pairwise overlaps a&b 2*2*1 = 4,
    # a&c 1*1*1 = 1, b&c 1*1*2 = 2; triple overlap 1*1*1 = 1. 21 - 7 + 1 = 15.
    points = np.array([[1.0, 2.0, 3.0], [2.0, 1.0, 2.0], [3.0, 3.0, 1.0]])
    assert hypervolume(points, np.array([4.0, 4.0, 4.0])) == 15.0
    # Shifting the reference out by 0.5 along z adds a 0.5-thick slab of the 2-D union
    # of a, b and c in (x, y) up to (4, 4): 3*2 + 2*3 + 1*1 - (2*2 + 1*1 + 1*1) + 1*1 = 8.
    assert hypervolume(points, np.array([4.0, 4.0, 4.5])) == 15.0 + 0.5 * 8.0


def test_hypervolume_minus_infinity_is_unbounded() -> None:
    assert hypervolume(np.array([[-np.inf, 1.0, 1.0]]), np.array([2.0, 2.0, 2.0])) == np.inf
    # ... but only for points inside the reference box.
    assert hypervolume(np.array([[-np.inf, 3.0], [1.0, 1.0]]), np.array([2.0, 2.0])) == 1.0


@pytest.mark.parametrize("d", [2, 3, 4, 5])
def test_hypervolume_matches_inclusion_exclusion(d: int) -> None:
    rng = np.random.default_rng(2024 + d)
    for _ in range(40):
        points = rng.random((int(rng.integers(1, 7)), d))
        reference = np.full(d, 0.9)
        expected = inclusion_exclusion_hypervolume(points, reference)
        assert hypervolume(points, reference) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_hypervolume_ignores_dominated_and_out_of_reference_points() -> None:
    base = np.array([[1, 3], [2, 2], [3, 1]])
    extra = np.array([[3, 3], [0, 4], [5, 0], [4, 1], [2, 2]])
    assert hypervolume(np.vstack([base, extra]), np.array([4, 4])) == 6.0
    assert hypervolume(np.array([[5, 5]]), np.array([4, 4])) == 0.0
    assert hypervolume(np.empty((0, 2)), np.array([4, 4])) == 0.0


def test_hypervolume_rejects_mismatched_reference() -> None:
    with pytest.raises(AutoslimError, match="reference"):
        hypervolume(np.ones((2, 3)), np.array([4.0, 4.0]))


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_hypervolume_matches_grid_count(d: int) -> None:
    rng = np.random.default_rng(99 + d)
    for _ in range(25):
        n = int(rng.integers(1, 12))
        points = rng.integers(0, 5, size=(n, d)).astype(float)
        expected = grid_hypervolume(points, 5)
        assert hypervolume(points, np.full(d, 5.0)) == pytest.approx(expected, abs=1e-9)


def test_hypervolume_matches_grid_count_5d() -> None:
    rng = np.random.default_rng(7)
    points = rng.integers(0, 4, size=(15, 5)).astype(float)
    assert hypervolume(points, np.full(5, 4.0)) == grid_hypervolume(points, 4)


def test_hypervolume_200_points_3d_matches_monte_carlo() -> None:
    rng = np.random.default_rng(0)
    points = rng.random((200, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)  # all on the front
    value = hypervolume(points, np.full(3, 1.1))
    samples = rng.random((20_000, 3)) * 1.1
    dominated = (points[None, :, :] <= samples[:, None, :]).all(axis=2).any(axis=1)
    estimate = dominated.mean() * 1.1**3
    assert abs(value - estimate) < 0.02  # about 4 standard errors of the estimate


def test_reference_point_adds_margin() -> None:
    points = np.array([[0.0, 5.0, 2.0], [10.0, 1.0, 2.0]])
    np.testing.assert_allclose(reference_point(points), [11.0, 5.4, 2.2])
    np.testing.assert_allclose(reference_point(points, margin=0.5), [15.0, 7.0, 3.0])
    np.testing.assert_allclose(reference_point(np.array([[-0.5, 0.0]])), [-0.4, 0.1])
    with pytest.raises(AutoslimError):
        reference_point(np.empty((0, 2)))


def test_hypervolume_history_monotone_and_ends_at_front_hv() -> None:
    rng = np.random.default_rng(5)
    values = rng.random((40, 3))
    values[7] = np.nan
    feasible = rng.random(40) > 0.2
    directions = ["maximize", "minimize", "minimize"]
    mins = to_minimization(values, directions)
    ok = feasible & ~np.isnan(mins).any(axis=1)
    ref = reference_point(mins[ok])
    history = hypervolume_history(values, directions, feasible, ref)
    assert history.shape == (40,)
    assert np.all(np.diff(history) >= 0)
    front = pareto_front(values, directions, feasible)
    assert history[-1] == pytest.approx(hypervolume(mins[front], ref))
    for k in (1, 10, 25):
        prefix = pareto_front(values[:k], directions, feasible[:k])
        assert history[k - 1] == pytest.approx(hypervolume(mins[:k][prefix], ref))


def test_hypervolume_history_hand_computed() -> None:
    values = np.array([[3.0, 1.0], [1.0, 3.0], [2.0, 2.0], [0.0, 0.0]])
    history = hypervolume_history(
        values, ["minimize", "minimize"], [True, True, True, False], np.array([4.0, 4.0])
    )
    np.testing.assert_allclose(history, [3.0, 5.0, 6.0, 6.0])


@pytest.mark.parametrize("d", [2, 3, 4])
def test_hypervolume_history_matches_brute_force_prefixes(d: int) -> None:
    """Every prefix's front volume, recomputed from scratch by inclusion-exclusion."""
    rng = np.random.default_rng(77 + d)
    directions = ["minimize", "maximize", "minimize", "maximize"][:d]
    for _ in range(30):
        n = int(rng.integers(1, 7))
        values = rng.integers(0, 4, size=(n, d)).astype(float)  # ties and duplicates
        values[rng.random(n) < 0.3] += rng.random(d)  # and some off-grid trials
        if rng.random() < 0.3:
            values[rng.integers(n), rng.integers(d)] = np.nan
        feasible = rng.random(n) > 0.25
        reference = np.full(d, 3.5) * np.where(np.array(directions) == "maximize", -0.2, 1.0)
        history = hypervolume_history(values, directions, feasible, reference)
        mins = to_minimization(values, directions)
        ok = feasible & ~np.isnan(mins).any(axis=1)
        expected = [
            inclusion_exclusion_hypervolume(mins[: k + 1][ok[: k + 1]], reference) for k in range(n)
        ]
        np.testing.assert_allclose(history, expected, rtol=1e-12, atol=1e-12)


def test_hypervolume_history_default_reference_and_no_usable_rows() -> None:
    values = np.array([[1.0, 2.0], [2.0, 1.0], [np.nan, 0.0]])
    mins = to_minimization(values, ["minimize", "maximize"])
    reference = reference_point(mins[:2])
    history = hypervolume_history(values, ["minimize", "maximize"])
    expected = [
        inclusion_exclusion_hypervolume(mins[:1], reference),
        inclusion_exclusion_hypervolume(mins[:2], reference),
    ]
    np.testing.assert_allclose(history, [*expected, expected[-1]])
    # With nothing usable the curve is flat zero and the reference is never consulted.
    np.testing.assert_array_equal(
        hypervolume_history(values, ["minimize", "maximize"], [False] * 3, np.full(2, np.nan)),
        np.zeros(3),
    )
    assert hypervolume_history(np.empty((0, 2)), ["minimize", "minimize"]).shape == (0,)


def test_attainment_surfaces_hand_computed() -> None:
    a, b, c = np.array([[1, 5], [3, 2]]), np.array([[2, 4], [4, 1]]), np.array([[1, 6]])
    assert attainment_surface([a, b, c], 1).tolist() == [[1, 5], [2, 4], [3, 2], [4, 1]]
    # the 2nd best run at x = 1, 2, 3, 4 reaches 6, 5, 4, 2
    assert attainment_surface([a, b, c], 2).tolist() == [[1, 6], [2, 5], [3, 4], [4, 2]]
    # every run (c only from x = 1, b only from x = 2) first reaches y = 6 at x = 2
    assert attainment_surface([a, b, c], 3).tolist() == [[2, 6]]


def test_attainment_surface_bounds_what_k_runs_attain() -> None:
    rng = np.random.default_rng(3)
    fronts = [rng.integers(0, 8, size=(rng.integers(0, 5), 2)).astype(float) for _ in range(5)]
    for k in range(1, 6):
        surface = attainment_surface(fronts, k)
        for z in itertools.product(range(9), repeat=2):
            attained_by = sum(any(np.all(p <= z) for p in front) for front in fronts)
            on_or_above_surface = any(np.all(p <= z) for p in surface)
            assert on_or_above_surface == (attained_by >= k), (k, z)


def test_attainment_surface_rejects_bad_level_and_dimension() -> None:
    front = np.array([[1.0, 2.0]])
    with pytest.raises(AutoslimError, match="k=3 is outside 1..2"):
        attainment_surface([front, front], 3)
    with pytest.raises(AutoslimError, match="2 objectives only"):
        attainment_surface([np.ones((2, 3))], 1)
    assert attainment_surface([front, np.empty((0, 2))], 2).shape == (0, 2)
    # a NaN point attains nothing; it must not hide the run's other points
    with_nan = np.array([[0.0, np.nan], [1.0, 2.0]])
    assert attainment_surface([with_nan, front], 2).tolist() == [[1.0, 2.0]]
