"""Pareto-front maths for multi-objective compression studies.

Everything here works on plain numpy arrays in *minimisation* space, so the
same code serves any mix of "minimize" and "maximize" objectives once
:func:`to_minimization` has flipped the maximised columns. There is no optuna
dependency: reports and tests can recompute fronts and hypervolumes from a
saved results table alone.

The heavy lifting (non-dominated filtering, exact hypervolume, empirical
attainment surfaces) is delegated to moocore's C library; the functions here
are thin wrappers that fix autoslim's conventions (minimisation space, NaN
rows, points outside the reference box, error types).
"""

from __future__ import annotations

from collections.abc import Sequence

import moocore
import numpy as np

from autoslim.errors import AutoslimError

_DIRECTIONS = ("minimize", "maximize")
# moocore's C routines accept at most this many objectives.
_MOOCORE_MAX_DIM = 255
# Upper bound on elements of one broadcast comparison block (n * chunk * d)
# in the naive fallback used above _MOOCORE_MAX_DIM objectives.
_BLOCK_ELEMENTS = 4_000_000


def to_minimization(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Return a float copy of ``values`` (n, d) with maximised columns negated.

    Negation keeps every dominance and hypervolume computation in a single
    convention, so no other function needs to know about directions.
    """
    directions = list(directions)
    for direction in directions:
        if direction not in _DIRECTIONS:
            raise AutoslimError(
                f"unknown objective direction {direction!r}; expected 'minimize' or 'maximize'"
            )
    arr = np.array(values, dtype=float, copy=True)
    if arr.size == 0:
        arr = arr.reshape(-1, len(directions))
    if arr.ndim != 2 or arr.shape[1] != len(directions):
        raise AutoslimError(
            f"objective values of shape {arr.shape} do not match {len(directions)} directions"
        )
    flip = np.array([d == "maximize" for d in directions], dtype=bool)
    arr[:, flip] *= -1.0
    return arr


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """True if minimisation vector ``a`` is no worse than ``b`` everywhere and better somewhere."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise AutoslimError(f"cannot compare points of shapes {a.shape} and {b.shape}")
    return bool(np.all(a <= b) and np.any(a < b))


def _as_points(points: np.ndarray, name: str = "points") -> np.ndarray:
    pts = np.asarray(points, dtype=float)
    if pts.ndim != 2:
        raise AutoslimError(f"{name} must be a 2-D array (n, d), got shape {pts.shape}")
    return pts


def non_dominated_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the points (minimisation) that no other point dominates.

    Exact duplicates do not dominate each other, so all copies of a front point
    stay on the front. Uses moocore.is_nondominated (an O(n log n) sweep for
    d <= 3, Kung et al.'s algorithm for d >= 4). Rows containing NaN are never dominated and dominate nothing
    (as if NaN compared false); callers should drop them first.
    """
    pts = _as_points(points)
    n, d = pts.shape
    mask = np.ones(n, dtype=bool)
    if n == 0 or d == 0:
        return mask
    usable = ~np.isnan(pts).any(axis=1)
    rows = pts[usable]
    if len(rows) == 0:
        return mask
    if d > _MOOCORE_MAX_DIM:
        mask[usable] = _non_dominated_mask_naive(rows)
        return mask
    if not np.isfinite(rows).all():
        # moocore compares by subtraction for d >= 4, so two equal infinities
        # (inf - inf = NaN) would look incomparable. Dominance only depends on
        # each column's order, so dense per-column ranks give the same answer.
        rows = np.column_stack([np.unique(col, return_inverse=True)[1] for col in rows.T])
        rows = rows.astype(float)
    mask[usable] = moocore.is_nondominated(rows, keep_weakly=True)
    return mask


def _non_dominated_mask_naive(pts: np.ndarray) -> np.ndarray:
    """O(n^2 d) fallback for more objectives than moocore supports, in bounded blocks."""
    n, d = pts.shape
    mask = np.ones(n, dtype=bool)
    chunk = max(1, _BLOCK_ELEMENTS // max(1, n * d))
    for start in range(0, n, chunk):
        block = pts[start : start + chunk]
        weak = np.all(pts[:, None, :] <= block[None, :, :], axis=2)
        strict = np.any(pts[:, None, :] < block[None, :, :], axis=2)
        mask[start : start + chunk] = ~np.any(weak & strict, axis=0)
    return mask


def pareto_front(
    values: np.ndarray,
    directions: Sequence[str],
    feasible: np.ndarray | None = None,
) -> np.ndarray:
    """Ascending row indices of the non-dominated feasible rows of ``values``.

    Infeasible rows (constraint violated) and rows with any NaN can never be on
    the front: they would otherwise dominate legitimate trials.
    """
    mins = to_minimization(values, directions)
    usable = ~np.isnan(mins).any(axis=1)
    if feasible is not None:
        feasible = np.asarray(feasible, dtype=bool)
        if feasible.shape != (len(mins),):
            raise AutoslimError(
                f"feasible mask of shape {feasible.shape} does not match {len(mins)} rows"
            )
        usable &= feasible
    idx = np.flatnonzero(usable)
    return idx[non_dominated_mask(mins[idx])]


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume (minimisation) dominated by ``points`` up to ``reference``.

    Points not strictly better than the reference in every coordinate span no
    volume and are dropped, as are NaN rows; dominated points and duplicates
    add nothing. The volume itself is moocore's (O(n log n) in 2-D and 3-D,
    HV4D+ in 4-D, recursive slicing / inclusion-exclusion above).
    """
    ref = np.asarray(reference, dtype=float).ravel()
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        pts = pts.reshape(0, len(ref))
    pts = _as_points(pts)
    if pts.shape[1] != len(ref) or len(ref) == 0:
        raise AutoslimError(
            f"reference point of length {len(ref)} does not match points of shape {pts.shape}"
        )
    if not np.all(np.isfinite(ref)):
        raise AutoslimError(f"reference point must be finite, got {ref.tolist()}")
    if len(ref) > _MOOCORE_MAX_DIM:
        raise AutoslimError(
            f"hypervolume supports at most {_MOOCORE_MAX_DIM} objectives, got {len(ref)}"
        )
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    if np.isneginf(pts).any():
        # A point inside the box with a -inf coordinate dominates unbounded volume.
        return float("inf")
    return float(moocore.hypervolume(pts, ref=ref))


def reference_point(points: np.ndarray, *, margin: float = 0.1) -> np.ndarray:
    """Hypervolume reference: the nadir of ``points`` pushed out by ``margin``.

    A reference exactly at the nadir would give the extreme points of the
    front zero contribution (their box has zero width in one coordinate), so
    the reference is placed slightly worse than the worst observed value:
    ``nadir + margin * (nadir - ideal)``. For a constant coordinate the range
    is zero, so ``margin * max(1, |nadir|)`` is used instead.
    """
    pts = _as_points(points)
    pts = pts[~np.isnan(pts).any(axis=1)]
    if len(pts) == 0:
        raise AutoslimError("cannot build a reference point from zero finite points")
    nadir = pts.max(axis=0)
    ideal = pts.min(axis=0)
    span = nadir - ideal
    span = np.where(span > 0, span, np.maximum(1.0, np.abs(nadir)))
    return nadir + margin * span


def hypervolume_history(
    values: np.ndarray,
    directions: Sequence[str],
    feasible: np.ndarray | None = None,
    reference: np.ndarray | None = None,
) -> np.ndarray:
    """Hypervolume of the feasible front of the first k rows, for k = 1..n.

    ``values`` are in the objectives' own directions (trial order); the
    ``reference`` is in *minimisation* space, as returned by
    :func:`reference_point` on ``to_minimization(values, directions)``. If it
    is None it is built from all feasible, NaN-free rows so the curve ends at
    the study's final hypervolume.

    The running front is kept incrementally: a row dominated by the current
    front changes nothing, otherwise it evicts the front points it dominates
    and the front's hypervolume is recomputed (by moocore, on the small
    non-dominated set only). 500 trials x 4 objectives take well under a second.
    """
    mins = to_minimization(values, directions)
    n = len(mins)
    usable = ~np.isnan(mins).any(axis=1)
    if feasible is not None:
        usable &= np.asarray(feasible, dtype=bool).reshape(n)
    if reference is None:
        if not usable.any():
            return np.zeros(n)
        reference = reference_point(mins[usable])
    ref = np.asarray(reference, dtype=float)
    history = np.zeros(n)
    front = np.empty((0, mins.shape[1]))
    current = 0.0
    for k in range(n):
        if usable[k]:
            point = mins[k]
            dominated = np.all(front <= point, axis=1) & np.any(front < point, axis=1)
            if not dominated.any():
                evicted = np.all(point <= front, axis=1) & np.any(point < front, axis=1)
                front = np.vstack([front[~evicted], point])
                current = hypervolume(front, ref)
        history[k] = current
    return history


def attainment_surface(fronts: Sequence[np.ndarray], k: int) -> np.ndarray:
    """The k-th empirical attainment surface of several runs' 2-D fronts (minimisation).

    A point z is attained by a run when one of its front points weakly dominates z.
    The k-th surface bounds the points attained by at least ``k`` of the ``n`` runs:
    k = 1 is the best any run did, k = n what every run did, ``ceil(n/2)`` the median
    (Fonseca and Fleming's attainment function, the usual way to compare stochastic
    multi-objective searches beyond one lucky or unlucky seed). Returned as its
    non-dominated corner points, sorted by the first objective; empty where fewer than
    k runs have any point. A run with no point attains nothing; a point with a NaN
    objective is ignored, as :func:`pareto_front` ignores it.
    """
    if not 1 <= k <= len(fronts):
        raise AutoslimError(f"attainment level k={k} is outside 1..{len(fronts)} runs")
    runs = [_as_points(front, "front") if np.size(front) else np.empty((0, 2)) for front in fronts]
    if any(front.shape[1] != 2 for front in runs):
        raise AutoslimError("attainment surfaces are computed for 2 objectives only")
    runs = [front[~np.isnan(front).any(axis=1)] for front in runs]
    # A run without points attains nothing, so level k of all runs is level k of
    # the non-empty ones, which is what moocore.eaf sees (it counts runs by label).
    runs = [front for front in runs if len(front)]
    if k > len(runs):
        return np.empty((0, 2))
    points = np.concatenate(runs)
    sets = np.repeat(np.arange(len(runs)), [len(front) for front in runs])
    surface = moocore.eaf(points, sets, percentiles=[100.0 * k / len(runs)])[:, :2]
    # Corners at an infinite second objective are not reported (as before moocore).
    surface = surface[np.isfinite(surface[:, 1])]
    return surface[np.lexsort((surface[:, 1], surface[:, 0]))]
