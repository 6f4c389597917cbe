"""Does a mixed-precision search beat uniform bit widths at the same trial budget?

Runs the mixed-precision experiment (per-layer widths, allocator warm start), measures
uniform 4-bit and 8-bit artifacts of the same task, and reports for each uniform point
whether some front point dominates it on the size–accuracy plane (validation split, as
the search saw it) and the best front point's test accuracy at or below its size.

    python benchmarks/mixed_precision.py [--trials 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from autoslim.artifact import save_artifact
from autoslim.measure import measure_in_subprocess
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.search.experiment import load_experiment
from autoslim.search.local import Overrides, search
from autoslim.search.outputs import test_metric

EXPERIMENT = Path(__file__).parents[1] / "experiments" / "mnist1d_mixed_precision.yaml"


def uniform_point(experiment, bits: int, folder: Path) -> dict:
    recipe = Recipe(task=experiment.task, target=experiment.target,
                    stages=[{"kind": "quantize", "default": bits}])
    out = save_artifact(apply_recipe(recipe), recipe, folder / f"uniform{bits}")
    values = measure_in_subprocess(out, recipe.target, splits=("val", "test"))
    return {"setting": f"uniform {bits}-bit", "size_bytes": values["size_bytes"], "accuracy": values["accuracy"],
            "test_accuracy": values["test_accuracy"]}


def dominating(front, point: dict) -> list[int]:
    return [int(r.trial) for r in front.itertuples()
            if r.size_bytes <= point["size_bytes"] and r.accuracy >= point["accuracy"]
            and (r.size_bytes < point["size_bytes"] or r.accuracy > point["accuracy"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-mixed-precision"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    experiment, _ = load_experiment(EXPERIMENT)
    run = search(EXPERIMENT, out=args.out, overrides=Overrides(trials=args.trials), progress=False)
    front = run.front()
    with tempfile.TemporaryDirectory() as tmp:
        uniform = [uniform_point(experiment, bits, Path(tmp)) for bits in (8, 4)]
    for point in uniform:
        point["dominated_by_trials"] = dominating(front, point)
        cheaper = front[front["size_bytes"] <= point["size_bytes"]]
        if not cheaper.empty:
            best = cheaper.sort_values("accuracy").iloc[-1]
            point["best_front_at_or_below_size"] = {
                "trial": int(best["trial"]), "size_bytes": int(best["size_bytes"]),
                "accuracy": float(best["accuracy"]), "test_accuracy": test_metric(run, int(best["trial"]))}
    result = {"trials": args.trials, "baseline": {k: run.baseline[k] for k in ("size_bytes", "accuracy", "test_accuracy")},
              "front": [{"trial": int(r.trial), "size_bytes": int(r.size_bytes), "accuracy": float(r.accuracy)}
                        for r in front.itertuples()],
              "uniform": uniform}
    if args.json:
        print(json.dumps(result))
        return 0
    base = result["baseline"]
    print(f"MNIST-1D CNN, {args.trials} trials; fp32 {base['size_bytes']} bytes, val {base['accuracy']:.4f}, "
          f"test {base['test_accuracy']:.4f}")
    for p in uniform:
        best = p.get("best_front_at_or_below_size", {})
        print(f"{p['setting']:<15} {p['size_bytes']:>8} bytes  val {p['accuracy']:.4f}  test {p['test_accuracy']:.4f}"
              f"  dominated by front trials {p['dominated_by_trials'] or 'none'}; best front point at <= size: "
              f"{best.get('size_bytes')} bytes, val {best.get('accuracy', float('nan')):.4f}, "
              f"test {best.get('test_accuracy', float('nan')):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
