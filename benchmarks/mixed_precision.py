"""Does a mixed-precision search beat uniform bit widths at the same trial budget?

Runs a mixed-precision experiment (per-layer widths, allocator warm start), measures
uniform 4-bit and 8-bit artifacts of the same task, and reports for each uniform point
whether some front point dominates it on the size–accuracy plane (validation split, as
the search saw it) and the best front point's test accuracy at or below its size. A
uniform point counts as beaten by mixed precision only when a trial whose plan mixes bit
widths dominates it (``dominated_by_mixed_plans``).

The standalone uniform recipes are written for the target the search writes into its
own recipes, so a search trial that lands on uniform 8-bit is the very same artifact.
An existing ``--out`` folder resumes its study (no new trials): use a fresh one.

``--seeds 0,1,2,3,4`` repeats the search once per sampler seed (PTQ trains nothing, so a
seed changes only which plans the sampler draws) and counts, per uniform point, the seeds
where a mixed plan dominates it. Each seed is a resumable run folder ``OUT/seedN`` with its
result in ``OUT/seedN.json``; ``--jobs`` runs that many seeds side by side. The per-seed
reports go to stderr, the summary to stdout.

    python benchmarks/mixed_precision.py [--trials 30] [--out runs/NAME] [--json]
        [--experiment EXPERIMENT.yaml] [--save RESULT.json] [--uniform-calibrations minmax,mse]
        [--seeds 0,1,2,3,4] [--jobs J]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from autoslim.artifact import artifact_bytes, save_artifact
from autoslim.errors import AutoslimError
from autoslim.measure import measure_in_subprocess
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.results.pareto import dominates
from autoslim.searching.driver import Overrides, search
from autoslim.searching.experiment import load_experiment
from autoslim.searching.outputs import test_metric
from autoslim.sparse.policy import settle_storage_policy

EXPERIMENT = Path(__file__).resolve().parent / "experiments" / "mnist1d_mixed_precision.yaml"


def uniform_point(experiment, bits: int, folder: Path, calibration: str = "minmax") -> dict:
    """The standalone uniform recipe (``default: bits``) for the target the search writes
    into its recipes (storage policy settled), so the two artifacts are comparable byte
    for byte; ``minimal_recipe_bytes`` is the same weights under a recipe whose target
    leaves the policy unset (27 recipe bytes fewer, same model)."""
    stages = [{"kind": "quantize", "default": bits}]
    if calibration != "minmax":  # minmax is the stage's default: keep that recipe byte-identical
        stages[0]["calibration"] = calibration
    recipe = Recipe(
        task=experiment.task,
        seed=experiment.search.seed,
        target=settle_storage_policy(experiment.target),
        stages=stages,
    )
    model = apply_recipe(recipe)
    out = save_artifact(model, recipe, folder / f"uniform{bits}-{calibration}")
    minimal = Recipe(
        task=experiment.task, seed=experiment.search.seed, target=experiment.target, stages=stages
    )
    values = measure_in_subprocess(out, recipe.target, splits=("val", "test"))
    label = f"uniform {bits}-bit" + ("" if calibration == "minmax" else f" ({calibration})")
    return {
        "setting": label,
        "calibration": calibration,
        "size_bytes": values["size_bytes"],
        "accuracy": values["accuracy"],
        "test_accuracy": values["test_accuracy"],
        "minimal_recipe_bytes": artifact_bytes(
            save_artifact(model, minimal, folder / f"uniform{bits}-{calibration}-min")
        ),
    }


def beats(size_bytes: float, accuracy: float, point: dict, size_key: str = "size_bytes") -> bool:
    """Pareto dominance on (bytes, accuracy): no larger, no less accurate, strictly better
    in one of the two (an identical point does not dominate)."""
    return dominates([size_bytes, -accuracy], [point[size_key], -point["accuracy"]])


def dominating(front, point: dict, size_key: str = "size_bytes") -> list[int]:
    """Front trials that Pareto-dominate the point."""
    return [
        int(r.trial) for r in front.itertuples() if beats(r.size_bytes, r.accuracy, point, size_key)
    ]


def mixed_trials(run) -> list[dict]:
    """Completed trials whose plan mixes bit widths (at least two layers differ), with
    plan and calibration: only these count as mixed precision beating a uniform width. A
    uniform plan enqueued as a warm start can sit a few bytes or one calibration away
    from a reference point, and that is no win for mixed precision."""
    table = run.table()
    bit_cols = [c for c in table.columns if c.startswith("param:quant.bits.")]
    done = (
        table[(table["state"] == "COMPLETE") & table["repeat_of"].isna()]
        if "repeat_of" in table
        else table[table["state"] == "COMPLETE"]
    )
    rows = []
    for _, r in done.iterrows():
        plan = [int(r[c]) for c in bit_cols if r[c] == r[c]]  # NaN: layer kept in fp32
        if len(set(plan)) > 1:
            rows.append(
                {
                    "trial": int(r["trial"]),
                    "size_bytes": int(r["size_bytes"]),
                    "accuracy": float(r["accuracy"]),
                    "plan": "/".join(map(str, plan)),
                    "calibration": r.get("param:quant.calibration"),
                }
            )
    return rows


def dominating_mixed(mixed: list[dict], point: dict) -> list[dict]:
    """Mixed plans that Pareto-dominate the point, smallest first."""
    wins = [m for m in mixed if beats(m["size_bytes"], m["accuracy"], point)]
    return sorted(wins, key=lambda m: (m["size_bytes"], -m["accuracy"]))


def matching(front, point: dict) -> list[int]:
    """Front trials identical to the point on both axes (the enqueued uniform plans)."""
    return [
        int(r.trial)
        for r in front.itertuples()
        if r.size_bytes == point["size_bytes"] and r.accuracy == point["accuracy"]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-mixed-precision"))
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--experiment",
        type=Path,
        default=EXPERIMENT,
        help="experiment file (default: benchmarks/experiments/mnist1d_mixed_precision.yaml)",
    )
    parser.add_argument("--save", type=Path, help="also write the JSON result to this file")
    parser.add_argument(
        "--uniform-calibrations",
        default="minmax",
        help="comma-separated calibrations of the uniform reference points (minmax, percentile, "
        "mse, kl): when the space searches the calibration, judge it against uniform "
        "widths calibrated each of those ways too",
    )
    parser.add_argument(
        "--seeds",
        help="comma-separated sampler seeds: one search per seed under --out, "
        "then how many seeds beat each uniform point",
    )
    parser.add_argument("--jobs", type=int, default=1, help="with --seeds: searches side by side")
    args = parser.parse_args(argv)
    if args.seeds is not None:
        return main_seeds(args, parser)
    calibrations = [c.strip() for c in args.uniform_calibrations.split(",") if c.strip()]
    unknown = sorted(set(calibrations) - {"minmax", "percentile", "mse", "kl"})
    if unknown or not calibrations:
        parser.error(
            f"--uniform-calibrations: unknown calibration {unknown[0] if unknown else '(none)'!r} "
            "(known: minmax, percentile, mse, kl)"
        )
    try:
        experiment, _ = load_experiment(args.experiment)
    except AutoslimError as exc:
        parser.error(str(exc))
    run = search(
        args.experiment, out=args.out, overrides=Overrides(trials=args.trials), progress=False
    )
    front = run.front()
    with tempfile.TemporaryDirectory() as tmp:
        uniform = [
            uniform_point(experiment, bits, Path(tmp), c) for bits in (8, 4) for c in calibrations
        ]
    mixed = mixed_trials(run)
    for point in uniform:
        point["dominated_by_trials"] = dominating(front, point)
        point["dominated_by_mixed_plans"] = dominating_mixed(mixed, point)
        point["dominated_by_trials_vs_minimal_recipe"] = dominating(
            front, point, "minimal_recipe_bytes"
        )
        point["identical_front_trials"] = matching(front, point)
        cheaper = front[front["size_bytes"] <= point["size_bytes"]]
        if not cheaper.empty:
            best = cheaper.sort_values("accuracy").iloc[-1]
            point["best_front_at_or_below_size"] = {
                "trial": int(best["trial"]),
                "size_bytes": int(best["size_bytes"]),
                "accuracy": float(best["accuracy"]),
                "test_accuracy": test_metric(run, int(best["trial"])),
            }
    result = {
        "trials": args.trials,
        "baseline": {k: run.baseline[k] for k in ("size_bytes", "accuracy", "test_accuracy")},
        "front": [
            {
                "trial": int(r.trial),
                "size_bytes": int(r.size_bytes),
                "accuracy": float(r.accuracy),
                "test_accuracy": test_metric(run, int(r.trial)),
            }
            for r in front.itertuples()
        ],
        "uniform": uniform,
        "experiment": str(args.experiment),
        "space": experiment.space,
        "warm_start": experiment.search.warm_start,
        "warm_start_uniform": experiment.search.warm_start_uniform,
    }
    if args.save:
        args.save.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
        return 0
    base = result["baseline"]
    print(
        f"{args.experiment.name}, {args.trials} trials; fp32 {base['size_bytes']} bytes, val {base['accuracy']:.4f}, "
        f"test {base['test_accuracy']:.4f}"
    )
    print("front (trial, bytes, val, test):")
    for r in result["front"]:
        print(
            f"  {r['trial']:>4} {r['size_bytes']:>8} {r['accuracy']:.4f} {r['test_accuracy']:.4f}"
        )
    for p in uniform:
        best = p.get("best_front_at_or_below_size", {})
        print(
            f"{p['setting']:<15} {p['size_bytes']:>8} bytes ({p['minimal_recipe_bytes']} with the minimal recipe)  "
            f"val {p['accuracy']:.4f}  test {p['test_accuracy']:.4f}"
        )
        print(
            f"  identical front trials {p['identical_front_trials'] or 'none'}; dominated by front trials "
            f"{p['dominated_by_trials'] or 'none'} (vs the minimal recipe's bytes: "
            f"{p['dominated_by_trials_vs_minimal_recipe'] or 'none'}); best front point at <= size: "
            f"{best.get('size_bytes')} bytes, val {best.get('accuracy', float('nan')):.4f}, "
            f"test {best.get('test_accuracy', float('nan')):.4f}"
        )
        wins = [
            f"trial {m['trial']} {m['plan']} {m['calibration'] or ''} {m['size_bytes']} B @ {m['accuracy']:.4f}"
            for m in p["dominated_by_mixed_plans"]
        ]
        more = f" (+{len(wins) - 3} more)" if len(wins) > 3 else ""
        print("  dominated by mixed plans: " + (", ".join(wins[:3]) + more if wins else "none"))
    return 0


def seeded_experiment(path: Path, seed: int, folder: Path) -> Path:
    """A copy of the experiment file with ``search.seed`` set (a space file it names by a
    relative path is named by its absolute one, so the copy finds it too)."""
    data = yaml.safe_load(path.read_text())
    data.setdefault("search", {})["seed"] = seed
    if isinstance(data.get("space"), str) and (path.parent / data["space"]).is_file():
        data["space"] = str((path.parent / data["space"]).resolve())
    out = folder / f"{path.stem}_seed{seed}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def run_seed(experiment: Path, seed: int, out_dir: Path, trials: int, calibrations: str) -> dict:
    """One seed's search (resumed if its folder exists) and its saved result."""
    saved = out_dir / f"seed{seed}.json"
    argv = [
        "--trials",
        str(trials),
        "--experiment",
        str(seeded_experiment(experiment, seed, out_dir / "experiments")),
        "--out",
        str(out_dir / f"seed{seed}"),
        "--uniform-calibrations",
        calibrations,
        "--save",
        str(saved),
    ]
    with contextlib.redirect_stdout(sys.stderr):  # each seed's own report; stdout is the summary
        main(argv)
    return json.loads(saved.read_text())


def seeds_summary(results: dict[int, dict]) -> dict:
    """Per uniform point: seeds beaten by a mixed plan, and the smallest such plan per seed;
    ``all`` counts the seeds where one search beats every uniform point."""
    table: dict = {}
    for seed, result in sorted(results.items()):
        for point in result["uniform"]:
            cell = table.setdefault(point["setting"], {"beaten": [], "missed": [], "wins": {}})
            wins = point["dominated_by_mixed_plans"]
            (cell["beaten"] if wins else cell["missed"]).append(seed)
            if wins:
                cell["wins"][seed] = wins[0]
        every = all(p["dominated_by_mixed_plans"] for p in result["uniform"])
        table.setdefault("all", {"beaten": [], "missed": [], "wins": {}})[
            "beaten" if every else "missed"
        ].append(seed)
    return table


def main_seeds(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds: give at least one seed")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    try:
        load_experiment(args.experiment)
    except AutoslimError as exc:
        parser.error(str(exc))
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            seed: pool.submit(
                run_seed, args.experiment, seed, args.out, args.trials, args.uniform_calibrations
            )
            for seed in seeds
        }
        results = {seed: future.result() for seed, future in futures.items()}
    table = seeds_summary(results)
    if args.json:
        print(json.dumps({"experiment": str(args.experiment), "seeds": seeds, "summary": table}))
        return 0
    print(
        f"\nseeds {seeds}: a trial whose plan mixes bit widths dominates the uniform point (bytes x val)"
    )
    print(f"{args.experiment.stem}:")
    for ref, cell in table.items():
        line = f"  {ref:<22} {len(cell['beaten'])}/{len(seeds)} seeds"
        for seed, win in cell["wins"].items():
            line += f"; s{seed}: {win['plan']} {win['calibration'] or ''} {win['size_bytes']} B @ {win['accuracy']:.4f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
