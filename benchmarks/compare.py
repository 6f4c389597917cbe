"""autoslim against the uniform baselines a user would otherwise try, and random search.

For each task, in one run of this script on one machine:

- the fp32 model and the uniform baselines (int8 PTQ, magnitude pruning at 50/70/90 %,
  L1 channel pruning at 25/50 %; FFN neurons instead of channels on MiniLM), each built
  as a recipe, applied, saved and measured in a fresh process exactly like a search trial;
- the autoslim search (its TPE default) and a random search with the same trial budget
  and seed, each in its own run folder.

Everything is compared on (metric, artifact bytes): both are exact on a given machine,
while CPU latency on a shared machine is noise (latency ratios are reported, not ranked).
The hypervolume reference is ONE point per task shared by every method: the
experiment's feasibility box (fp32 metric - max_drop, fp32 bytes) pushed 10 % beyond,
i.e. (fp32 metric - 1.1 max_drop, 1.1 fp32 bytes). Only points inside the constraint
count, for the baselines as for the searches.

    python benchmarks/compare.py [--tasks digits,mnist1d,minilm] [--trials N] [--json] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from autoslim.artifact import save_artifact
from autoslim.baseline import load_baseline
from autoslim.measure import measure_in_subprocess
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.results.pareto import hypervolume, pareto_front, to_minimization
from autoslim.search.experiment import load_experiment
from autoslim.search.local import Overrides, search
from autoslim.search.outputs import test_metric
from autoslim.sparse.policy import settle_storage_policy
from autoslim.task import load_task

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DIRECTIONS = ["maximize", "minimize"]  # (metric, size_bytes)


@dataclass(frozen=True)
class TaskSpec:
    experiment: str
    trials: int
    # Largest metric drop for "the best point" (1 pt accuracy; 0.01 fidelity on MiniLM).
    tolerance: float = 0.01
    # "Matches within noise": metric within this much and bytes within 1 %. 0.3 pt is one
    # validation sample on digits (360 samples); 0.003 fidelity is below the spread of
    # repeated fine-tunes of MiniLM.
    metric_noise: float = 0.003
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.9)
    channel_ratios: tuple[float, ...] = (0.25, 0.5)
    # BERT blocks: Torch-Pruning's `ratio` must stay 0; FFN neurons are the channels there.
    channel_field: str = "ratio"
    # For models without `example_input_shape` (the digits CNN takes 1x8x8 images).
    input_shape: tuple[int, ...] | None = None


TASKS = {
    "digits": TaskSpec("experiments/digits.yaml", trials=40, input_shape=(1, 8, 8)),
    # The structured space over the residual CNN: the MNIST-1D experiment whose model is
    # big enough (64 channels) for channel pruning to matter.
    "mnist1d": TaskSpec("experiments/mnist1d_rescnn.yaml", trials=40),
    "minilm": TaskSpec("experiments/minilm.yaml", trials=12, sparsities=(0.5, 0.9),
                       channel_ratios=(0.5,), channel_field="ffn"),
}
BYTES_NOISE = 0.01


@dataclass
class Context:
    """One task's loaded experiment, task and fp32 model, shared by every baseline."""

    name: str
    spec: TaskSpec
    path: Path
    experiment: object
    task: object
    model: object
    max_drop: float
    fine_tune: dict = field(default_factory=dict)


def fine_tune_settings(space) -> dict:
    """The longest fine-tune the search space allows, at the geometric middle of its lr range.

    Baselines get the same short fine-tune a trial could get, no more.
    """
    for component in space.components:
        epochs = getattr(component, "fine_tune_epochs", None)
        lr = getattr(component, "lr", None)
        if epochs is not None and lr is not None:
            return {"fine_tune_epochs": int(epochs.high), "lr": float(math.sqrt(lr.low * lr.high))}
    return {"fine_tune_epochs": 0, "lr": 1e-3}


def open_context(name: str, spec: TaskSpec) -> Context:
    path = ROOT / spec.experiment
    experiment, space = load_experiment(path)
    task = load_task(experiment.task)
    model = load_baseline(experiment.task, task).model
    metric = task.metric_name
    drops = [c.max_drop for c in experiment.constraints if c.objective == metric and c.max_drop]
    return Context(name, spec, path, experiment, task, model, drops[0] if drops else 0.05,
                   fine_tune_settings(space))


def baseline_stages(ctx: Context, quick: bool) -> dict[str, list[dict]]:
    """Label -> recipe stages of every uniform baseline (fp32 first)."""
    spec, tune = ctx.spec, ctx.fine_tune
    sparsities = spec.sparsities[:1] + spec.sparsities[-1:] if quick else spec.sparsities
    stages = {"fp32": [], "uniform int8 PTQ": [{"kind": "quantize", "default": 8}]}
    for s in sparsities:
        stages[f"magnitude {s:.0%} (per layer)"] = [
            {"kind": "prune", "scope": "layer", "sparsity": s, **tune}]
    unit = "FFN neurons" if spec.channel_field == "ffn" else "channels"
    shape = {"input_shape": list(spec.input_shape)} if spec.input_shape else {}
    for r in spec.channel_ratios[-1:] if quick else spec.channel_ratios:
        stages[f"L1 {unit} {r:.0%}"] = [
            {"kind": "prune_structured", spec.channel_field: r, "importance": "l1", **shape, **tune}]
    return stages


def measure_recipe(ctx: Context, stages: list[dict], out: Path) -> dict:
    """Apply, save and measure (val + test) in a fresh process, as a search trial does."""
    target = settle_storage_policy(ctx.experiment.target, ctx.experiment.objectives)
    recipe = Recipe.from_dict({"task": ctx.experiment.task.model_dump(), "seed": ctx.experiment.search.seed,
                               "target": target.model_dump(), "stages": stages})
    model = apply_recipe(recipe, task=ctx.task, model=copy.deepcopy(ctx.model))
    save_artifact(model, recipe, out)
    return measure_in_subprocess(out, recipe.target, splits=("val", "test"))


def run_baselines(ctx: Context, folder: Path, quick: bool) -> list[dict]:
    metric = ctx.task.metric_name
    rows = []
    for label, stages in baseline_stages(ctx, quick).items():
        start = time.monotonic()
        try:
            values = measure_recipe(ctx, stages, folder / f"b{len(rows)}")
        except Exception as exc:  # noqa: BLE001 — a baseline the model can't take is a row, not a crash
            rows.append({"method": label, "skipped": f"{type(exc).__name__}: {str(exc)[:200]}"})
            continue
        rows.append({"method": label, "metric": values[metric], "test_metric": values[f"test_{metric}"],
                     "size_bytes": values["size_bytes"], "latency_ms": values["latency_ms"],
                     "energy_mj": values["energy_mj"], "energy_source": values.get("energy_source"),
                     "seconds": round(time.monotonic() - start, 1)})
        print(f"  [{ctx.name}] {label}: {metric} {values[metric]:.4f}, {values['size_bytes']} B", flush=True)
    return rows


def random_experiment(ctx: Context, folder: Path) -> Path:
    """A copy of the experiment with `sampler: random`; the space path made absolute."""
    data = yaml.safe_load(ctx.path.read_text())
    if isinstance(data["space"], str):
        data["space"] = str((ctx.path.parent / data["space"]).resolve())
    data["name"] = f"{data['name']}-random"
    data["search"] = {**data.get("search", {}), "sampler": "random"}
    out = folder / f"{ctx.name}_random.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def run_searches(ctx: Context, trials: int, out_dir: Path, scratch: Path) -> dict:
    """TPE (autoslim's default) and random, same budget and seed; resumes a partial run."""
    runs = {}
    for method, path in (("autoslim", ctx.path), ("random", random_experiment(ctx, scratch))):
        start = time.monotonic()
        run = search(path, out=out_dir / ctx.name / method, overrides=Overrides(trials=trials),
                     progress=False)
        runs[method] = (run, round(time.monotonic() - start, 1))
        print(f"  [{ctx.name}] {method} search: {trials} trials in {runs[method][1]} s", flush=True)
    return runs


def reference(fp32: dict, max_drop: float) -> np.ndarray:
    """The shared HV reference, in minimisation space (metric negated)."""
    return np.array([-(fp32["metric"] - 1.1 * max_drop), 1.1 * fp32["size_bytes"]])


def feasible_points(rows: list[dict], fp32: dict, max_drop: float) -> np.ndarray:
    keep = [r for r in rows if "metric" in r and fp32["metric"] - r["metric"] <= max_drop + 1e-12]
    return np.array([[r["metric"], r["size_bytes"]] for r in keep], dtype=float).reshape(-1, 2)


def hv(points: np.ndarray, ref: np.ndarray, fp32: dict, max_drop: float) -> float:
    """Hypervolume as a fraction of the reference box below fp32 metric (metric x bytes)."""
    box = 1.1 * max_drop * ref[1]
    return hypervolume(to_minimization(points, DIRECTIONS), ref) / box


def search_rows(run, metric: str) -> list[dict]:
    """Completed, feasible trials of a search (its own constraint), as comparable rows."""
    table = run.table()
    done = table[(table["state"] == "COMPLETE") & table["feasible"]]
    return [{"trial": int(r["trial"]), "metric": float(r[metric]), "size_bytes": float(r["size_bytes"]),
             "latency_ms": float(r.get("latency_ms", math.nan)), "energy_mj": float(r.get("energy_mj", math.nan))}
            for _, r in done.iterrows()]


def front_of(rows: list[dict]) -> list[dict]:
    if not rows:
        return []
    values = np.array([[r["metric"], r["size_bytes"]] for r in rows], dtype=float)
    return [rows[i] for i in pareto_front(values, DIRECTIONS)]


def coverage(point: dict, front: list[dict], noise: float) -> str:
    """How the front covers a baseline point: dominated, matched within noise, or not."""
    for f in front:
        no_worse = f["metric"] >= point["metric"] and f["size_bytes"] <= point["size_bytes"]
        if no_worse and (f["metric"] > point["metric"] or f["size_bytes"] < point["size_bytes"]):
            return f"dominated by trial {f['trial']}"
    for f in front:
        if f["metric"] >= point["metric"] - noise and f["size_bytes"] <= point["size_bytes"] * (1 + BYTES_NOISE):
            return f"matched within noise by trial {f['trial']}"
    return "NOT covered"


def best_within(rows: list[dict], run, fp32: dict, tolerance: float) -> dict | None:
    """Smallest artifact within `tolerance` of fp32, as ratios to the fp32 measurement."""
    ok = [r for r in rows if fp32["metric"] - r["metric"] <= tolerance + 1e-12]
    if not ok:
        return None
    best = min(ok, key=lambda r: (r["size_bytes"], -r["metric"]))
    search_fp32 = run.baseline
    return {**best, "drop": fp32["metric"] - best["metric"], "test_metric": test_metric(run, best["trial"]),
            "bytes_ratio": best["size_bytes"] / fp32["size_bytes"],
            "latency_ratio": best["latency_ms"] / fp32["latency_ms"],
            "latency_ratio_vs_search_fp32": best["latency_ms"] / search_fp32.get("latency_ms", math.nan),
            "energy_ratio_estimated": best["energy_mj"] / fp32["energy_mj"]}


def compare_task(name: str, trials: int, out_dir: Path, quick: bool) -> dict:
    ctx = open_context(name, TASKS[name])
    metric = ctx.task.metric_name
    with tempfile.TemporaryDirectory(prefix=f"compare-{name}-") as scratch:
        baselines = run_baselines(ctx, Path(scratch), quick)
        runs = run_searches(ctx, trials, out_dir, Path(scratch))
    fp32 = baselines[0]
    ref = reference(fp32, ctx.max_drop)
    measured = [b for b in baselines[1:] if "metric" in b]
    for b in baselines:
        if "metric" in b:
            b.update(bytes_ratio=b["size_bytes"] / fp32["size_bytes"], drop=fp32["metric"] - b["metric"],
                     latency_ratio=b["latency_ms"] / fp32["latency_ms"],
                     energy_ratio_estimated=b["energy_mj"] / fp32["energy_mj"])
    searches = {}
    for method, (run, seconds) in runs.items():
        rows = search_rows(run, metric)
        front = front_of(rows)
        searches[method] = {
            "run_dir": str(run.path), "seconds": seconds, "trials": trials, "feasible_trials": len(rows),
            "hypervolume": hv(feasible_points(rows, fp32, ctx.max_drop), ref, fp32, ctx.max_drop),
            "front": front, "best_within_tolerance": best_within(rows, run, fp32, ctx.spec.tolerance)}
    front = searches["autoslim"]["front"]
    for b in measured:
        b["vs_autoslim_front"] = coverage(b, front, ctx.spec.metric_noise)
        b["vs_random_front"] = coverage(b, searches["random"]["front"], ctx.spec.metric_noise)
    return {"task": name, "experiment": ctx.spec.experiment, "metric": metric, "max_drop": ctx.max_drop,
            "tolerance": ctx.spec.tolerance, "metric_noise": ctx.spec.metric_noise, "bytes_noise": BYTES_NOISE,
            "fine_tune": ctx.fine_tune, "reference_min_space": ref.tolist(),
            "hypervolume_uniform_baselines": hv(feasible_points(measured, fp32, ctx.max_drop), ref, fp32,
                                                ctx.max_drop),
            "baselines": baselines, "searches": searches}


def print_task(result: dict) -> None:
    m = result["metric"]
    print(f"\n== {result['task']} ({result['experiment']}), metric {m} (val), HV reference "
          f"(fp32 - {1.1 * result['max_drop']:.3f}, 1.1 x fp32 bytes)")
    print(f"{'method':<30}{m[:8]:>9}{'test':>8}{'bytes':>11}{'bytes×':>8}{'lat×':>7}{'energy× est':>12}  vs autoslim front")
    for b in result["baselines"]:
        if "skipped" in b:
            print(f"{b['method']:<30} skipped: {b['skipped']}")
            continue
        print(f"{b['method']:<30}{b['metric']:>9.4f}{b['test_metric']:>8.4f}{b['size_bytes']:>11.0f}"
              f"{b['bytes_ratio']:>8.3f}{b['latency_ratio']:>7.2f}{b['energy_ratio_estimated']:>12.3f}  "
              f"{b.get('vs_autoslim_front', '')}")
    print(f"HV (fraction of reference box): uniform baselines {result['hypervolume_uniform_baselines']:.4f}", end="")
    for method, s in result["searches"].items():
        print(f", {method} {s['hypervolume']:.4f} ({s['trials']} trials, {s['seconds']:.0f} s)", end="")
    print()
    for method, s in result["searches"].items():
        best = s["best_within_tolerance"]
        if best is None:
            print(f"{method}: no feasible point within {result['tolerance']} of fp32")
            continue
        print(f"{method} best within {result['tolerance']}: trial {best['trial']}, {m} {best['metric']:.4f} "
              f"(test {best['test_metric']:.4f}), bytes × {best['bytes_ratio']:.3f}, latency × "
              f"{best['latency_ratio']:.2f}, energy × {best['energy_ratio_estimated']:.3f} (estimated)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,mnist1d,minilm")
    parser.add_argument("--trials", default="", help="N for every task, or task=N,task=N")
    parser.add_argument("--out-dir", default="runs/compare", type=Path)
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument("--quick", action="store_true", help="3 trials a search, fewer baselines (smoke)")
    args = parser.parse_args(argv)
    names = [n for n in args.tasks.split(",") if n]
    budgets = parse_trials(args.trials, names, args.quick)
    results = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "tasks": {}}
    for name in names:
        print(f"[{name}] {budgets[name]} trials per search", flush=True)
        result = compare_task(name, budgets[name], args.out_dir, args.quick)
        results["tasks"][name] = result
        # Per task, so a run cut short still leaves every finished task's numbers.
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"compare_{name}.json").write_text(json.dumps(result, indent=1, default=float))
        print_task(result)
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    (RESULTS / "compare.json").write_text(json.dumps(results, indent=1, default=float))
    if args.json:
        print(json.dumps(results, default=float))
    return 0


def parse_trials(text: str, names: list[str], quick: bool) -> dict[str, int]:
    """`N` sets every task's budget, `task=N` one task's (applied after any plain N)."""
    parts = [p for p in text.split(",") if p]
    budgets = {n: 3 if quick else TASKS[n].trials for n in names}
    for part in (p for p in parts if "=" not in p):
        budgets = {n: int(part) for n in names}
    for key, value in (p.split("=") for p in parts if "=" in p):
        budgets[key] = int(value)
    return budgets

if __name__ == "__main__":
    sys.exit(main())
