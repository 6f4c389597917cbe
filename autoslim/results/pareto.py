"""Pareto-front maths for multi-objective compression studies.

Everything here works on plain numpy arrays in *minimisation* space, so the
same code serves any mix of "minimize" and "maximize" objectives once
:func:`to_minimization` has flipped the maximised columns. There is no optuna
dependency: reports and tests can recompute fronts and hypervolumes from a
saved results table alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autoslim.errors import AutoslimError

_DIRECTIONS = ("minimize", "maximize")
# Upper bound on elements of one broadcast comparison block (n * chunk * d).
_BLOCK_ELEMENTS = 4_000_000
# Above this many points the O(n^2)-memory 3-D kernel falls back to slicing.
_HV3_MAX_POINTS = 2_000


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
    stay on the front. The O(n^2 d) comparison is vectorised and processed in
    column blocks so memory stays bounded for large n. Rows containing NaN are
    never dominated (NaN compares false); callers should drop them first.
    """
    pts = _as_points(points)
    n, d = pts.shape
    mask = np.ones(n, dtype=bool)
    if n == 0:
        return mask
    chunk = max(1, _BLOCK_ELEMENTS // max(1, n * max(d, 1)))
    for start in range(0, n, chunk):
        block = pts[start : start + chunk]
        # (n, b): does row i weakly / strictly beat candidate j somewhere?
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


def _hv2(points: np.ndarray, reference: np.ndarray) -> float:
    """2-D hypervolume by sorting on x and sweeping the running minimum of y."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    xs = points[order, 0]
    ys = np.minimum.accumulate(points[order, 1])
    widths = np.diff(np.append(xs, reference[0]))
    return float(np.sum(widths * (reference[1] - ys)))


def _hv3(points: np.ndarray, reference: np.ndarray) -> float:
    """3-D hypervolume by slicing on z, with every slab's 2-D area at once.

    With points sorted by z and distinct x values x_j, ``best[k, j]`` is the
    lowest y among the first k+1 points whose x <= x_j, i.e. the lower edge
    of the dominated region over [x_j, x_{j+1}) in slab k. One cumulative
    minimum gives all slab areas in O(n^2) vectorised work.
    """
    pts = points[np.argsort(points[:, 2], kind="stable")]
    xs = np.unique(pts[:, 0])
    widths = np.diff(np.append(xs, reference[0]))
    covers = pts[:, 0][:, None] <= xs[None, :]
    best = np.minimum.accumulate(np.where(covers, pts[:, 1][:, None], reference[1]), axis=0)
    areas = (reference[1] - best) @ widths
    heights = np.diff(np.append(pts[:, 2], reference[2]))
    return float(np.dot(heights, areas))


def _hv_exact(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume of points strictly inside the reference box (n >= 1).

    For d >= 3 the dominated region is cut into slabs between consecutive
    values of the last objective (HSO slicing); each slab is a (d-1)-D
    hypervolume of the points already below it, times the slab height.
    """
    d = points.shape[1]
    if d == 1:
        return float(reference[0] - points[:, 0].min())
    if d == 2:
        return _hv2(points, reference)
    if d == 3 and len(points) <= _HV3_MAX_POINTS:
        return _hv3(points, reference)
    pts = points[np.argsort(points[:, -1], kind="stable")]
    tops = np.append(pts[1:, -1], reference[-1])
    total = 0.0
    for i in range(len(pts)):
        height = tops[i] - pts[i, -1]
        if height <= 0.0:
            continue
        slab = pts[: i + 1, :-1]
        if slab.shape[1] >= 4:
            slab = slab[non_dominated_mask(slab)]
        total += height * _hv_exact(slab, reference[:-1])
    return total


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume (minimisation) dominated by ``points`` up to ``reference``.

    Points not strictly better than the reference in every coordinate span no
    volume and are dropped, as are NaN rows. The front is filtered to its
    non-dominated points first, which keeps the recursive slicing cheap.
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
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[non_dominated_mask(pts)]
    return _hv_exact(pts, ref)


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
    the study's final hypervolume. The front is updated incrementally and the
    hypervolume recomputed only when it changes.
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
            if not any(dominates(f, point) for f in front):
                kept = [f for f in front if not dominates(point, f)]
                front = np.vstack([*kept, point]) if kept else point[None, :]
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
    xs = np.unique(np.concatenate([front[:, 0] for front in runs]))
    # best[i, j]: run i's lowest second objective among its points with x <= xs[j].
    best = np.full((len(runs), len(xs)), np.inf)
    for i, front in enumerate(runs):
        for x, y in front:
            reaches = xs >= x
            best[i, reaches] = np.minimum(best[i, reaches], y)
    level = np.sort(best, axis=0)[k - 1]  # the k-th best run at each x
    corners = np.column_stack([xs, level])[np.isfinite(level)]
    return corners[non_dominated_mask(corners)] if len(corners) else corners
