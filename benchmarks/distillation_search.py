"""Does searching the KD weights pay? The same search with and without the distill component.

The claim under test: a search whose space includes the distillation weights finds a
front that dominates the same search without them, at the same trial budget.
For each search seed this runs the experiment twice, side by side in worker processes:

- ``kd``: the experiment as written (``experiments/mnist1d_distill.yaml`` by default; its
  distill component is optional, so "no KD" competes inside it too);
- ``no_kd``: the same file with every distill component removed from the space.

Same trials, seed, objectives and constraint. Compared on (validation metric, artifact
bytes), both exact; each run's study is the source. The hypervolume reference is shared
per seed: (fp32 metric − 1.1·max_drop, 1.1·fp32 bytes), as in ``benchmarks/compare.py``,
and it counts only feasible points. "Dominates" means every no-KD front point is weakly
dominated by a KD front point, with at least one strictly. The test metric of each front
point is reported next to it (search uses validation; the test split is reported).
As diagnostics only, each seed is also judged with every point re-priced: as if the
artifact carried the full core recipe with every stage and field (the bytes the artifact
holds plus those the full recipe would add; a distill stage costs hundreds of bytes there
on a tiny model), and by its weights alone (the artifact less its recipe.yaml). Artifacts
leave training-only stages and default-valued fields out
(``autoslim.artifact.artifact_recipe``). Re-pricing is not re-searching: the sampler saw
the bytes the artifacts really have.

Across the seeds (``across_seeds``): how many seeds each arm's front dominates on, on
validation and on the same points' test metric; whose hypervolume is higher; and the
best, median and worst empirical attainment surfaces of each arm, and whether one arm's
dominates the other's. The teacher (the fp32 baseline) is printed too: KD needs one that
beats its students (BENCHMARKS.md, "Distillation").

    python benchmarks/distillation_search.py [--experiment FILE] [--seeds 0,1,2] [--trials N]
                                             [--jobs J] [--workers W] [--out-dir DIR] [--json] [--analyze]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from autoslim.artifact import artifact_recipe_text
from autoslim.errors import AutoslimError
from autoslim.recipe import Recipe
from autoslim.results.pareto import (
    attainment_surface,
    dominates,
    hypervolume,
    pareto_front,
    to_minimization,
)
from autoslim.run import load_run
from autoslim.searching.driver import Overrides, search
from autoslim.searching.experiment import load_experiment
from autoslim.searching.outputs import test_metric
from autoslim.searching.record import INTERRUPTED

DIRECTIONS = ["maximize", "minimize"]
DEFAULT_EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "mnist1d_distill.yaml"


def inline_space(path: Path) -> dict:
    """The experiment's YAML with its space inlined as a list of components."""
    data = yaml.safe_load(path.read_text())
    if isinstance(data.get("space"), str):
        space_path = (path.parent / data["space"]).resolve()
        data["space"] = yaml.safe_load(space_path.read_text())["components"]
    return data


def arm_experiment(path: Path, arm: str, folder: Path) -> Path:
    """The experiment for one arm: as written (kd) or without its distill components (no_kd)."""
    data = inline_space(path)
    if arm == "no_kd":
        data["space"] = [c for c in data["space"] if c.get("type") != "distill"]
    data["name"] = f"{data['name']}-{arm}"
    out = folder / f"{arm}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def run_arm(path: Path, run_dir: Path, trials: int | None, seed: int) -> float:
    """One search (resumes a partial run folder); returns its wall seconds."""
    start = time.monotonic()
    search(path, out=run_dir, overrides=Overrides(trials=trials, seed=seed), progress=False)
    return time.monotonic() - start


def repricing(run, trial: int, pricing: str) -> int:
    """Bytes to add to the trial's measured artifact bytes under a diagnostic pricing:

    - ``full_recipe``: as if the artifact carried the full core recipe (every stage, every
      field);
    - ``weights``: the artifact less its recipe.yaml, i.e. only what the weights take. Two
      artifacts of one architecture differ in recipe text alone, e.g. by a learning rate's
      digits or QAT fields, which no user of the model needs.
    """
    if pricing == "artifact":
        return 0
    recipe = Recipe.from_dict(run.study.trials[trial].user_attrs["recipe"])
    shipped = len(artifact_recipe_text(recipe).encode())
    return len(recipe.core().to_yaml().encode()) - shipped if pricing == "full_recipe" else -shipped


def front_rows(
    run_dir: Path, trials: int | None, pricing: str = "artifact"
) -> tuple[list[dict], dict]:
    """The (metric, bytes) front of the first ``trials`` budget-using trials' feasible
    completed ones (a resumed run may hold more), and the run's fp32 baseline. ``pricing``
    other than ``artifact`` re-prices each artifact (:func:`repricing`): a diagnostic,
    never the size autoslim reports."""
    run = load_run(run_dir)
    table = run.table().sort_values("trial")
    # A trial a killed process left behind is re-run under a new number and does not use
    # budget (autoslim.searching.study.finished_count): skip it so both arms get ``trials``.
    table = table[table["fail_reason"] != INTERRUPTED]
    if trials is not None:
        table = table.head(trials)
    metric = run.metric_name
    done = table[(table["state"] == "COMPLETE") & table["feasible"]]
    rows = [
        {
            "trial": int(r["trial"]),
            "metric": float(r[metric]),
            "size_bytes": float(r["size_bytes"]) + repricing(run, int(r["trial"]), pricing),
        }
        for _, r in done.iterrows()
    ]
    if rows:
        values = np.array([[r["metric"], r["size_bytes"]] for r in rows])
        rows = [rows[i] for i in pareto_front(values, DIRECTIONS)]
    for row in rows:
        row["test_metric"] = test_metric(run, row["trial"])
    return sorted(rows, key=lambda r: r["size_bytes"]), run.baseline


def minimization_points(rows: list[dict], key: str = "metric") -> np.ndarray:
    points = np.array([[r[key], r["size_bytes"]] for r in rows], dtype=float).reshape(-1, 2)
    return to_minimization(points, DIRECTIONS)


def set_dominates(pa: np.ndarray, pb: np.ndarray) -> bool:
    """Every point of ``pb`` dominated by or equal to a point of ``pa``, one strictly (minimisation)."""
    strictly = [any(dominates(p, q) for p in pa) for q in pb]
    covered = [
        s or any(np.array_equal(p, q) for p in pa) for s, q in zip(strictly, pb, strict=True)
    ]
    return len(pb) > 0 and all(covered) and any(strictly)


def front_dominates(a: list[dict], b: list[dict], key: str = "metric") -> bool:
    """Front ``a`` dominates front ``b`` on (``key``, bytes): :func:`set_dominates`."""
    return set_dominates(minimization_points(a, key), minimization_points(b, key))


def hv_reference(base: dict, metric: str, max_drop: float) -> tuple[np.ndarray, float]:
    """The shared reference point (minimisation) and the volume that normalises to 1."""
    ref = np.array([-(base[metric] - 1.1 * max_drop), 1.1 * base["size_bytes"]])
    return ref, float(1.1 * max_drop * ref[1])


def hv_fraction(rows: list[dict], base: dict, metric: str, max_drop: float) -> float:
    ref, unit = hv_reference(base, metric, max_drop)
    return float(hypervolume(minimization_points(rows), ref) / unit)


def best_by_size(run_dir: Path, trials: int | None, metric: str) -> dict[float, float]:
    """Best validation metric per artifact size among the budget's completed trials,
    feasible or not: one size is one architecture (the artifact ships no training fields)."""
    table = load_run(run_dir).table().sort_values("trial")
    table = table[table["fail_reason"] != INTERRUPTED]
    table = table.head(trials) if trials is not None else table
    done = table[table["state"] == "COMPLETE"]
    return {
        float(size): float(value)
        for size, value in done.groupby("size_bytes")[metric].max().items()
    }


def by_architecture(out_dir: Path, seed: int, trials: int | None, metric: str) -> dict:
    """Does KD train a given architecture better? Compared at the sizes both arms visited.
    Separates what KD does to one model from how well each search covers the sizes."""
    best = {
        arm: best_by_size(out_dir / f"seed{seed}" / arm, trials, metric) for arm in ("kd", "no_kd")
    }
    shared = sorted(set(best["kd"]) & set(best["no_kd"]))
    gains = [best["kd"][size] - best["no_kd"][size] for size in shared]
    return {
        "shared_sizes": len(shared),
        "kd_better": sum(g > 0 for g in gains),
        "no_kd_better": sum(g < 0 for g in gains),
        "mean_gain": float(np.mean(gains)) if gains else None,
        "sizes_visited": {arm: len(values) for arm, values in best.items()},
        "largest_size_visited": {arm: max(values, default=None) for arm, values in best.items()},
    }


def compare_seed(
    out_dir: Path,
    seed: int,
    trials: int | None,
    metric: str,
    max_drop: float,
    pricing: str = "artifact",
) -> dict:
    fronts = {
        arm: front_rows(out_dir / f"seed{seed}" / arm, trials, pricing) for arm in ("kd", "no_kd")
    }
    base = fronts["kd"][1]
    result = {"seed": seed}
    for arm, (rows, _) in fronts.items():
        result[arm] = {"hypervolume": hv_fraction(rows, base, metric, max_drop), "front": rows}
    result["kd_dominates_no_kd"] = front_dominates(fronts["kd"][0], fronts["no_kd"][0])
    result["no_kd_dominates_kd"] = front_dominates(fronts["no_kd"][0], fronts["kd"][0])
    # The same fronts (chosen on validation) judged by their artifacts' test metric.
    result["kd_dominates_no_kd_on_test"] = front_dominates(
        fronts["kd"][0], fronts["no_kd"][0], "test_metric"
    )
    result["no_kd_dominates_kd_on_test"] = front_dominates(
        fronts["no_kd"][0], fronts["kd"][0], "test_metric"
    )
    if pricing == "artifact":  # the same judgement under the diagnostic pricings
        result["by_architecture"] = by_architecture(out_dir, seed, trials, metric)
        result["priced_with_full_recipe"] = compare_seed(
            out_dir, seed, trials, metric, max_drop, "full_recipe"
        )
        result["priced_by_weights"] = compare_seed(
            out_dir, seed, trials, metric, max_drop, "weights"
        )
    return result


def across_seeds(seeds: list[dict], base: dict, metric: str, max_drop: float) -> dict:
    """What the seeds say together. Per-seed front dominance is all-or-nothing: one lucky
    learning rate at one size in the no-KD arm undoes it. The attainment surfaces
    (:func:`autoslim.results.pareto.attainment_surface`) say what the searches reach in
    the best, the median and the worst seed; the median one is the usual summary of a
    stochastic multi-objective search."""
    n = len(seeds)
    ref, unit = hv_reference(base, metric, max_drop)
    fronts = {arm: [minimization_points(s[arm]["front"]) for s in seeds] for arm in ("kd", "no_kd")}
    levels = {}
    for label, k in (("best", 1), ("median", (n + 1) // 2), ("worst", n)):
        surfaces = {arm: attainment_surface(fronts[arm], k) for arm in fronts}
        levels[label] = {
            "attained_by": f"at least {k} of {n} seeds",
            "kd_dominates_no_kd": set_dominates(surfaces["kd"], surfaces["no_kd"]),
            "no_kd_dominates_kd": set_dominates(surfaces["no_kd"], surfaces["kd"]),
            **{
                arm: {
                    "hypervolume": float(hypervolume(surface, ref) / unit),
                    "surface": [
                        {"size_bytes": float(b), "metric": float(-m)} for m, b in surface[::-1]
                    ],
                }
                for arm, surface in surfaces.items()
            },
        }
    hv = {arm: [s[arm]["hypervolume"] for s in seeds] for arm in ("kd", "no_kd")}
    return {
        "seeds": n,
        "kd_front_dominates": sum(s["kd_dominates_no_kd"] for s in seeds),
        "no_kd_front_dominates": sum(s["no_kd_dominates_kd"] for s in seeds),
        "kd_front_dominates_on_test": sum(s["kd_dominates_no_kd_on_test"] for s in seeds),
        "no_kd_front_dominates_on_test": sum(s["no_kd_dominates_kd_on_test"] for s in seeds),
        "kd_higher_hypervolume": sum(
            bool(k > o) for k, o in zip(hv["kd"], hv["no_kd"], strict=True)
        ),
        "mean_hypervolume": {arm: float(np.mean(v)) for arm, v in hv.items()},
        "by_architecture": {
            key: sum(s["by_architecture"][key] for s in seeds)
            for key in ("shared_sizes", "kd_better", "no_kd_better")
        },
        "attainment": levels,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=Path, default=DEFAULT_EXPERIMENT)
    parser.add_argument("--seeds", default="0", help="comma-separated search seeds")
    parser.add_argument(
        "--trials", type=int, default=None, help="trials per search (default: the experiment's)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes run side by side")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing each search's study (the budget is the study's; the sampler then "
        "sees fewer finished trials per draw, alike in both arms)",
    )
    parser.add_argument("--out-dir", type=Path, default=Path("runs/distillation_search"))
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    parser.add_argument(
        "--analyze", action="store_true", help="only compare the run folders already in --out-dir"
    )
    args = parser.parse_args(argv)
    if not args.experiment.is_file():
        parser.error(f"experiment file not found: {args.experiment}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if args.jobs < 1 or args.workers < 1 or (args.trials is not None and args.trials < 1):
        parser.error("--jobs, --workers and --trials must be at least 1")
    try:
        load_experiment(args.experiment)
        space = inline_space(args.experiment)["space"]
    except (AutoslimError, OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        parser.error(
            f"{args.experiment}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        )
    if not any(isinstance(c, dict) and c.get("type") == "distill" for c in space):
        parser.error(f"{args.experiment} has no distill component to remove")
    start = time.monotonic()
    jobs = [
        (
            arm_experiment(args.experiment, arm, args.out_dir / "experiments"),
            args.out_dir / f"seed{s}" / arm,
            s,
        )
        for s in seeds
        for arm in ("kd", "no_kd")
    ]
    if args.analyze:
        missing = [str(run_dir) for _, run_dir, _ in jobs if not (run_dir / "run.json").is_file()]
        if missing:
            parser.error(f"--analyze: no run folder at {', '.join(missing)}")
        seconds = [None] * len(jobs)
    else:
        with ProcessPoolExecutor(
            args.jobs, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            futures = [
                [
                    pool.submit(run_arm, path, run_dir, args.trials, seed)
                    for _ in range(args.workers)
                ]
                for path, run_dir, seed in jobs
            ]
            seconds = [max(f.result() for f in workers) for workers in futures]
    budget = args.trials or yaml.safe_load(args.experiment.read_text())["search"]["trials"]
    constraint = next(
        c for c in yaml.safe_load(args.experiment.read_text())["constraints"] if "max_drop" in c
    )
    metric, max_drop = constraint["objective"], float(constraint["max_drop"])
    result = {
        "experiment": str(args.experiment),
        "trials": budget,
        "metric": metric,
        "search_seconds": {
            f"{run_dir.parent.name}/{run_dir.name}": s and round(s, 1)
            for (_, run_dir, _), s in zip(jobs, seconds, strict=True)
        },
        "seeds": [compare_seed(args.out_dir, s, budget, metric, max_drop) for s in seeds],
    }
    # The fp32 baseline is the teacher and the reference; KD cannot transfer what the
    # teacher does not know better than its students (BENCHMARKS.md, "Distillation").
    base = load_run(args.out_dir / f"seed{seeds[0]}" / "kd").baseline
    others = {
        f"seed{s}/{arm}": load_run(args.out_dir / f"seed{s}" / arm).baseline[metric]
        for s in seeds
        for arm in ("kd", "no_kd")
    }
    if any(value != base[metric] for value in others.values()):
        parser.error(
            f"the run folders have different fp32 baselines ({metric}: {others}); compare like with like"
        )
    result["teacher"] = {metric: base[metric], f"test_{metric}": base.get(f"test_{metric}")}
    result["across_seeds"] = across_seeds(result["seeds"], base, metric, max_drop)
    result["wall_seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


def table(result: dict) -> str:
    lines = [
        f"{result['experiment']}: KD in the space vs the same space without it "
        f"(the first {result['trials']} trials of each)",
        "",
    ]
    for s in result["seeds"]:
        lines.append(
            f"seed {s['seed']}: HV kd {s['kd']['hypervolume']:.4f}, no_kd {s['no_kd']['hypervolume']:.4f}; "
            f"kd front dominates no_kd: {s['kd_dominates_no_kd']}; reverse: {s['no_kd_dominates_kd']}"
        )
        for arm in ("kd", "no_kd"):
            points = ", ".join(
                f"{r['size_bytes']:.0f} B @ {r['metric']:.4f} (test {r['test_metric']:.4f})"
                for r in s[arm]["front"]
            )
            lines.append(f"  {arm:6} front: {points}")
        for key, label in (
            ("priced_with_full_recipe", "re-priced with the full recipe (every stage and field)"),
            ("priced_by_weights", "weights only (artifact less recipe.yaml)"),
        ):
            d = s[key]
            lines.append(
                f"  diagnostic, {label}: HV kd {d['kd']['hypervolume']:.4f}, "
                f"no_kd {d['no_kd']['hypervolume']:.4f}; kd dominates: {d['kd_dominates_no_kd']}; "
                f"reverse: {d['no_kd_dominates_kd']}"
            )
        a = s["by_architecture"]
        gain = "n/a" if a["mean_gain"] is None else f"{a['mean_gain']:+.4f}"
        lines.append(
            f"  by architecture (sizes both arms visited: {a['shared_sizes']}): KD better at {a['kd_better']}, "
            f"worse at {a['no_kd_better']}, mean gain {gain}; sizes visited kd {a['sizes_visited']['kd']}, "
            f"no_kd {a['sizes_visited']['no_kd']}"
        )
    t, a = result["teacher"], result["across_seeds"]
    lines += [
        "",
        f"teacher (fp32 baseline): {' '.join(f'{k} {v:.4f}' for k, v in t.items() if v is not None)}",
        f"across {a['seeds']} seeds: kd front dominates on {a['kd_front_dominates']} "
        f"(on test {a['kd_front_dominates_on_test']}), no_kd on {a['no_kd_front_dominates']} "
        f"(on test {a['no_kd_front_dominates_on_test']}); kd HV higher on {a['kd_higher_hypervolume']}; "
        f"mean HV kd {a['mean_hypervolume']['kd']:.4f}, no_kd {a['mean_hypervolume']['no_kd']:.4f}; "
        f"by architecture KD better at {a['by_architecture']['kd_better']} of "
        f"{a['by_architecture']['shared_sizes']}, worse at {a['by_architecture']['no_kd_better']}",
    ]
    for label, level in a["attainment"].items():
        lines.append(
            f"  {label} attainment surface ({level['attained_by']}): HV kd {level['kd']['hypervolume']:.4f}, "
            f"no_kd {level['no_kd']['hypervolume']:.4f}; kd dominates: {level['kd_dominates_no_kd']}; "
            f"reverse: {level['no_kd_dominates_kd']}"
        )
        for arm in ("kd", "no_kd"):
            points = ", ".join(
                f"{p['size_bytes']:.0f} B @ {p['metric']:.4f}" for p in level[arm]["surface"]
            )
            lines.append(f"    {arm:6} {points}")
    lines.append(f"\nwall time {result['wall_seconds']:.0f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
