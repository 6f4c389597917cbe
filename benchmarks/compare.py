"""autoslim against the uniform baselines a user would otherwise try, and random search.

For each task, in one run of this script on one machine:

- the fp32 model and the uniform baselines (int8 PTQ, magnitude pruning at 50/70/90 %,
  L1 channel pruning at 25/50 %; FFN neurons instead of channels on MiniLM), each built
  as a recipe, applied, saved and measured in a fresh process exactly like a search trial;
- the autoslim search (its TPE default) and a random search with the same trial budget
  and seed, each in its own run folder.

Warm starts. Both searches begin with the same enqueued trials, counted inside the same
budget: the experiment's own `warm_start_uniform` widths, then every uniform baseline
on the baselines' own (metric, bytes) front that the search space can express exactly
(`autoslim.searching.warm_start.baseline_params` replays the space and requires the
baseline's very stages back, so the trial rebuilds the baseline's artifact). The
autoslim front therefore starts where the best uniform recipe is and can only improve on
it. The random search gets the SAME warm starts, deliberately: the hypervolume
comparison is then between the two samplers on the remaining trials, not between a
search that was handed the baselines and one that was not. (A random search without them
is a weaker arm, and its HV would mostly measure the warm starts.) Every covering
trial that was a warm start is named as such in the output.

Everything is compared on (metric, artifact bytes): both are exact on a given machine,
while CPU latency on a shared machine is noise (latency ratios are reported, not ranked).
The hypervolume reference is ONE point per task shared by every method: the
experiment's feasibility box (fp32 metric - max_drop, fp32 bytes) pushed 10 % beyond,
i.e. (fp32 metric - 1.1 max_drop, 1.1 fp32 bytes). Only points inside the constraint
count, for the baselines as for the searches.

The seed article's claim ("97 % accuracy, 90 % smaller, 8x faster") is printed beside
what the autoslim search reached on each task, read two ways: the smallest point within
the task's tolerance of fp32, and the smallest point with metric >= 0.97. Latency ratios
there are copied, not judged (noise on a shared 2-core CPU).

    python benchmarks/compare.py [--tasks digits,mnist1d,minilm] [--trials N|task=N,...]
                                 [--jobs J] [--json] [--quick]

`--jobs 2` runs the tasks in two child processes side by side (MiniLM in one, the
others in the other): same metric and bytes, more of a loaded machine's CPU.
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
from autoslim.searching.driver import Overrides, apply_overrides, search
from autoslim.searching.experiment import load_experiment
from autoslim.searching.outputs import test_metric
from autoslim.searching.study import open_study
from autoslim.searching.warm_start import baseline_params, enqueue_plans
from autoslim.space import ModelInfo, searched_float
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
    # The default experiment, unchanged (it warm-starts from uniform 8- and 4-bit itself).
    "digits": TaskSpec("experiments/digits.yaml", trials=40, input_shape=(1, 8, 8)),
    # The residual CNN (64 channels, big enough for channel pruning to matter) over
    # structured + magnitude pruning + one width: see the file's header for why.
    "mnist1d": TaskSpec("benchmarks/experiments/compare_mnist1d.yaml", trials=40),
    "minilm": TaskSpec(
        "benchmarks/experiments/compare_minilm.yaml",
        trials=12,
        sparsities=(0.5, 0.9),
        channel_ratios=(0.5,),
        channel_field="ffn",
    ),
}
# Rough seconds per trial relative to digits, to balance --jobs lanes (longest first).
TASK_COST = {"digits": 1.0, "mnist1d": 0.5, "minilm": 6.0}
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
            return {
                "fine_tune_epochs": int(epochs.high),
                "lr": searched_float(math.sqrt(lr.low * lr.high)),
            }
    return {"fine_tune_epochs": 0, "lr": 1e-3}


def open_context(name: str, spec: TaskSpec) -> Context:
    path = ROOT / spec.experiment
    experiment, space = load_experiment(path)
    task = load_task(experiment.task)
    model = load_baseline(experiment.task, task).model
    metric = task.metric_name
    drops = [c.max_drop for c in experiment.constraints if c.objective == metric and c.max_drop]
    return Context(
        name,
        spec,
        path,
        experiment,
        task,
        model,
        drops[0] if drops else 0.05,
        fine_tune_settings(space),
    )


def baseline_stages(ctx: Context, quick: bool) -> dict[str, list[dict]]:
    """Label -> recipe stages of every uniform baseline (fp32 first)."""
    spec, tune = ctx.spec, ctx.fine_tune
    sparsities = spec.sparsities[:1] + spec.sparsities[-1:] if quick else spec.sparsities
    stages = {"fp32": [], "uniform int8 PTQ": [{"kind": "quantize", "default": 8}]}
    for s in sparsities:
        stages[f"magnitude {s:.0%} (per layer)"] = [
            {"kind": "prune", "scope": "layer", "sparsity": s, **tune}
        ]
    unit = "FFN neurons" if spec.channel_field == "ffn" else "channels"
    shape = {"input_shape": list(spec.input_shape)} if spec.input_shape else {}
    for r in spec.channel_ratios[-1:] if quick else spec.channel_ratios:
        stages[f"L1 {unit} {r:.0%}"] = [
            {"kind": "prune_structured", spec.channel_field: r, "importance": "l1", **shape, **tune}
        ]
    return stages


def measure_recipe(ctx: Context, stages: list[dict], out: Path) -> dict:
    """Apply, save and measure (val + test) in a fresh process, as a search trial does."""
    target = settle_storage_policy(ctx.experiment.target)  # exactly as a trial settles it
    recipe = Recipe.from_dict(
        {
            "task": ctx.experiment.task.model_dump(),
            "seed": ctx.experiment.search.seed,
            "target": target.model_dump(),
            "stages": stages,
        }
    )
    model = apply_recipe(recipe, task=ctx.task, model=copy.deepcopy(ctx.model))
    save_artifact(model, recipe, out)
    return measure_in_subprocess(out, recipe.target, splits=("val", "test"))


def run_baselines(ctx: Context, folder: Path, all_stages: dict[str, list[dict]]) -> list[dict]:
    metric = ctx.task.metric_name
    rows = []
    for label, stages in all_stages.items():
        start = time.monotonic()
        try:
            values = measure_recipe(ctx, stages, folder / f"b{len(rows)}")
        except Exception as exc:  # noqa: BLE001 — a baseline the model can't take is a row, not a crash
            rows.append({"method": label, "skipped": f"{type(exc).__name__}: {str(exc)[:200]}"})
            continue
        rows.append(
            {
                "method": label,
                "metric": values[metric],
                "test_metric": values[f"test_{metric}"],
                "size_bytes": values["size_bytes"],
                "latency_ms": values["latency_ms"],
                "energy_mj": values["energy_mj"],
                "energy_source": values.get("energy_source"),
                "seconds": round(time.monotonic() - start, 1),
            }
        )
        print(
            f"  [{ctx.name}] {label}: {metric} {values[metric]:.4f}, {values['size_bytes']} B",
            flush=True,
        )
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


def warm_start_plans(
    ctx: Context, baselines: list[dict], stages: dict[str, list[dict]]
) -> list[dict]:
    """The trials enqueued first in BOTH searches, labelled: the experiment's own uniform
    widths (`warm_start_uniform`), then every uniform baseline on the baselines' own
    (metric, bytes) front that the space can express exactly.

    "Exactly" is checked, not assumed: `baseline_params` replays the space's `suggest`
    and requires the very stages of the baseline recipe back, so such a trial rebuilds
    the baseline's artifact (same recipe seed) and its numbers are the baseline's.
    A baseline the space cannot express (e.g. channel pruning in an unstructured space)
    is left to the search.
    """
    settings = ctx.experiment.search
    if settings.warm_start:
        raise SystemExit(
            f"{ctx.path}: compare.py replays warm_start_uniform only, not allocator warm starts"
        )
    _, space = load_experiment(ctx.path)
    info = ModelInfo.from_model(ctx.model)
    candidates = [
        (f"uniform {w}-bit (warm_start_uniform)", [{"kind": "quantize", "default": w}])
        for w in settings.warm_start_uniform
    ]
    measured = [b for b in baselines[1:] if "metric" in b]
    if measured:
        values = np.array([[b["metric"], b["size_bytes"]] for b in measured], dtype=float)
        candidates += [
            (measured[i]["method"], stages[measured[i]["method"]])
            for i in pareto_front(values, DIRECTIONS)
        ]
    plans: list[dict] = []
    for label, wanted in candidates:
        params = baseline_params(space, info, wanted)
        if params is None:
            print(f"  [{ctx.name}] warm start: the space cannot express {label}", flush=True)
            continue
        same = next((p for p in plans if p["params"] == params), None)
        if same is not None:
            same["labels"].append(label)
        else:
            plans.append({"trial": len(plans), "labels": [label], "params": params})
    return plans


def prepare_study(path: Path, trials: int, run_dir: Path, metric: str, plans: list[dict]) -> None:
    """Create the study in its run folder and enqueue the warm starts, counted in `trials`.

    `search` then reopens it (same fingerprints) and, finding trials queued, adds no
    warm starts of its own: these plans already hold the experiment's uniform widths.
    A run folder that already holds trials (a resumed compare) is left as it is.
    """
    experiment, space = load_experiment(path)
    experiment = apply_overrides(experiment, Overrides(trials=trials))
    run_dir.mkdir(parents=True, exist_ok=True)
    study, _ = open_study(run_dir, experiment, space, metric)
    enqueue_plans(study, [p["params"] for p in plans])


def run_searches(
    ctx: Context, trials: int, out_dir: Path, scratch: Path, plans: list[dict]
) -> dict:
    """TPE (autoslim's default) and random, same budget, seed and warm starts; resumes a partial run."""
    runs = {}
    for method, path in (("autoslim", ctx.path), ("random", random_experiment(ctx, scratch))):
        start = time.monotonic()
        run_dir = out_dir / ctx.name / method
        prepare_study(path, trials, run_dir, ctx.task.metric_name, plans)
        run = search(path, out=run_dir, overrides=Overrides(trials=trials), progress=False)
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
    return [
        {
            "trial": int(r["trial"]),
            "metric": float(r[metric]),
            "size_bytes": float(r["size_bytes"]),
            "latency_ms": float(r.get("latency_ms", math.nan)),
            "energy_mj": float(r.get("energy_mj", math.nan)),
        }
        for _, r in done.iterrows()
    ]


def front_of(rows: list[dict]) -> list[dict]:
    if not rows:
        return []
    values = np.array([[r["metric"], r["size_bytes"]] for r in rows], dtype=float)
    return [rows[i] for i in pareto_front(values, DIRECTIONS)]


def coverage(point: dict, front: list[dict], noise: float, plans: list[dict] = ()) -> str:
    """How the front covers a baseline point: dominated, matched within noise, or not.

    A covering trial that was a warm start says so (and which baseline it replays).
    """

    def name(trial: int) -> str:
        plan = next((p for p in plans if p["trial"] == trial), None)
        return f"trial {trial}" + (f" (warm start: {' = '.join(plan['labels'])})" if plan else "")

    for f in front:
        no_worse = f["metric"] >= point["metric"] and f["size_bytes"] <= point["size_bytes"]
        if no_worse and (f["metric"] > point["metric"] or f["size_bytes"] < point["size_bytes"]):
            return f"dominated by {name(f['trial'])}"
    for f in front:
        if f["metric"] == point["metric"] and f["size_bytes"] == point["size_bytes"]:
            return f"matched exactly by {name(f['trial'])}"
    for f in front:
        if f["metric"] >= point["metric"] - noise and f["size_bytes"] <= point["size_bytes"] * (
            1 + BYTES_NOISE
        ):
            return f"matched within noise by {name(f['trial'])}"
    return "NOT covered"


def best_within(rows: list[dict], run, fp32: dict, tolerance: float) -> dict | None:
    """Smallest artifact within `tolerance` of fp32, as ratios to the fp32 measurement."""
    ok = [r for r in rows if fp32["metric"] - r["metric"] <= tolerance + 1e-12]
    return ratios(min(ok, key=lambda r: (r["size_bytes"], -r["metric"])), run, fp32) if ok else None


SEED_CLAIMS = {
    "accuracy": 0.97,
    "bytes_ratio": 0.10,
    "speedup": 8.0,
}  # "97 % accuracy, 90 % smaller, 8x faster"


def claims_row(best: dict | None, literal: dict | None) -> dict:
    """The seed article's claims beside what the autoslim search reached on one task.

    Two readings: the smallest point within the task's tolerance of fp32 (what the claim
    should mean), and the smallest point whose metric is at least 97 % (its literal
    reading). Latency ratios are copied, not judged: on a shared 2-core machine they are noise.
    """

    def point(p: dict | None) -> dict | None:
        if p is None:
            return None
        keys = (
            "trial",
            "metric",
            "test_metric",
            "drop",
            "bytes_ratio",
            "latency_ratio",
            "energy_ratio_estimated",
        )
        return {k: p[k] for k in keys} | {
            "smaller_pct": 100 * (1 - p["bytes_ratio"]),
            "speedup_noisy": 1 / p["latency_ratio"] if p["latency_ratio"] else None,
        }

    reached = {"within_tolerance": point(best), "metric_at_least_0.97": point(literal)}
    return {
        "claim": SEED_CLAIMS,
        **reached,
        "ninety_pct_smaller_within_tolerance": best is not None
        and best["bytes_ratio"] <= SEED_CLAIMS["bytes_ratio"],
        "ninety_pct_smaller_at_0.97": literal is not None
        and literal["bytes_ratio"] <= SEED_CLAIMS["bytes_ratio"],
        "latency": "noise on a shared 2-core CPU: shown, not ranked",
    }


def ratios(row: dict, run, fp32: dict) -> dict:
    return {
        **row,
        "drop": fp32["metric"] - row["metric"],
        "test_metric": test_metric(run, row["trial"]),
        "bytes_ratio": row["size_bytes"] / fp32["size_bytes"],
        "latency_ratio": row["latency_ms"] / fp32["latency_ms"],
        "latency_ratio_vs_search_fp32": row["latency_ms"]
        / run.baseline.get("latency_ms", math.nan),
        "energy_ratio_estimated": row["energy_mj"] / fp32["energy_mj"],
    }


def smallest_at_least(front: list[dict], run, fp32: dict, level: float) -> dict | None:
    ok = [r for r in front if r["metric"] >= level - 1e-12]
    return ratios(min(ok, key=lambda r: (r["size_bytes"], -r["metric"])), run, fp32) if ok else None


def compare_task(name: str, trials: int, out_dir: Path, quick: bool) -> dict:
    ctx = open_context(name, TASKS[name])
    metric = ctx.task.metric_name
    stages = baseline_stages(ctx, quick)
    with tempfile.TemporaryDirectory(prefix=f"compare-{name}-") as scratch:
        baselines = run_baselines(ctx, Path(scratch), stages)
        plans = warm_start_plans(ctx, baselines, stages)
        print(
            f"  [{name}] warm starts (both searches, inside the budget): "
            f"{'; '.join(' = '.join(p['labels']) for p in plans) or 'none'}",
            flush=True,
        )
        runs = run_searches(ctx, trials, out_dir, Path(scratch), plans)
    fp32 = baselines[0]
    ref = reference(fp32, ctx.max_drop)
    measured = [b for b in baselines[1:] if "metric" in b]
    for b in baselines:
        if "metric" in b:
            b.update(
                bytes_ratio=b["size_bytes"] / fp32["size_bytes"],
                drop=fp32["metric"] - b["metric"],
                latency_ratio=b["latency_ms"] / fp32["latency_ms"],
                energy_ratio_estimated=b["energy_mj"] / fp32["energy_mj"],
            )
    searches = {}
    for method, (run, seconds) in runs.items():
        rows = search_rows(run, metric)
        front = front_of(rows)
        searches[method] = {
            "run_dir": str(run.path),
            "seconds": seconds,
            "trials": trials,
            "feasible_trials": len(rows),
            "hypervolume": hv(feasible_points(rows, fp32, ctx.max_drop), ref, fp32, ctx.max_drop),
            "front": front,
            "best_within_tolerance": best_within(rows, run, fp32, ctx.spec.tolerance),
            "smallest_at_least_0.97": smallest_at_least(front, run, fp32, SEED_CLAIMS["accuracy"]),
        }
    front = searches["autoslim"]["front"]
    for b in measured:
        b["vs_autoslim_front"] = coverage(b, front, ctx.spec.metric_noise, plans)
        b["vs_random_front"] = coverage(
            b, searches["random"]["front"], ctx.spec.metric_noise, plans
        )
        b["feasible"] = b["drop"] <= ctx.max_drop + 1e-12
    auto = searches["autoslim"]
    return {
        "task": name,
        "experiment": ctx.spec.experiment,
        "metric": metric,
        "max_drop": ctx.max_drop,
        "tolerance": ctx.spec.tolerance,
        "metric_noise": ctx.spec.metric_noise,
        "bytes_noise": BYTES_NOISE,
        "fine_tune": ctx.fine_tune,
        "reference_min_space": ref.tolist(),
        "hypervolume_uniform_baselines": hv(
            feasible_points(measured, fp32, ctx.max_drop), ref, fp32, ctx.max_drop
        ),
        "warm_starts": plans,
        "every_baseline_covered": all(b["vs_autoslim_front"] != "NOT covered" for b in measured),
        "seed_claims": claims_row(auto["best_within_tolerance"], auto["smallest_at_least_0.97"]),
        "baselines": baselines,
        "searches": searches,
    }


def print_task(result: dict) -> None:
    m = result["metric"]
    print(
        f"\n== {result['task']} ({result['experiment']}), metric {m} (val), HV reference "
        f"(fp32 - {1.1 * result['max_drop']:.3f}, 1.1 x fp32 bytes)"
    )
    for plan in result["warm_starts"]:
        print(f"warm start, trial {plan['trial']} of both searches: {' = '.join(plan['labels'])}")
    print(
        f"{'method':<30}{m[:8]:>9}{'test':>8}{'bytes':>11}{'bytes×':>8}{'lat×':>7}{'energy× est':>12}  vs autoslim front"
    )
    for b in result["baselines"]:
        if "skipped" in b:
            print(f"{b['method']:<30} skipped: {b['skipped']}")
            continue
        print(
            f"{b['method']:<30}{b['metric']:>9.4f}{b['test_metric']:>8.4f}{b['size_bytes']:>11.0f}"
            f"{b['bytes_ratio']:>8.3f}{b['latency_ratio']:>7.2f}{b['energy_ratio_estimated']:>12.3f}  "
            f"{b.get('vs_autoslim_front', '')}"
        )
    print(
        f"HV (fraction of reference box): uniform baselines {result['hypervolume_uniform_baselines']:.4f}",
        end="",
    )
    for method, s in result["searches"].items():
        print(
            f", {method} {s['hypervolume']:.4f} ({s['trials']} trials, {s['seconds']:.0f} s)",
            end="",
        )
    print(
        f"\nevery uniform baseline dominated or matched by the autoslim front: {result['every_baseline_covered']}"
    )
    for method, s in result["searches"].items():
        print(
            f"{method} front ({m}, bytes): "
            + ", ".join(
                f"t{f['trial']} {f['metric']:.4f}/{f['size_bytes']:.0f}" for f in s["front"]
            )
        )
        best = s["best_within_tolerance"]
        if best is None:
            print(f"{method}: no feasible point within {result['tolerance']} of fp32")
            continue
        print(
            f"{method} best within {result['tolerance']}: trial {best['trial']}, {m} {best['metric']:.4f} "
            f"(test {best['test_metric']:.4f}), bytes × {best['bytes_ratio']:.3f}, latency × "
            f"{best['latency_ratio']:.2f}, energy × {best['energy_ratio_estimated']:.3f} (estimated)"
        )
    print_claims(result)


def print_claims(result: dict) -> None:
    """The seed article's claims beside what autoslim reached on this task."""
    claims = result["seed_claims"]
    print(
        f'seed claim "97 % accuracy, 90 % smaller, 8× faster" vs autoslim on {result["task"]} '
        f"(latency is noise on this machine: shown, not ranked):"
    )
    for reading, label in (
        ("within_tolerance", f"best within {result['tolerance']} of fp32"),
        ("metric_at_least_0.97", f"smallest with {result['metric']} >= 0.97"),
    ):
        p = claims[reading]
        if p is None:
            print(f"  {label}: none")
            continue
        print(
            f"  {label}: trial {p['trial']}, {result['metric']} {p['metric']:.4f} (test {p['test_metric']:.4f}, "
            f"drop {p['drop']:+.4f}), {p['smaller_pct']:.1f} % smaller (bytes × {p['bytes_ratio']:.3f}), "
            f"latency × {p['latency_ratio']:.2f} (noise)"
        )


def claims_table(results: dict) -> list[dict]:
    """One row per task for the JSON: the claim and the two readings of what autoslim reached."""
    return [
        {"task": name, "metric": r["metric"], **r["seed_claims"]} for name, r in results.items()
    ]


def run_in_children(
    names: list[str], budgets: dict[str, int], args, jobs: int, started: float
) -> dict:
    """Tasks in `jobs` child processes of this script (one task list each, longest first),
    for a loaded machine where one process gets a small share of the CPU. Each child writes
    its per-task JSON; metric and bytes are unaffected, latency is noise either way."""
    import subprocess

    order = sorted(names, key=lambda n: -TASK_COST.get(n, 1) * budgets[n])
    lanes: list[list[str]] = [[] for _ in range(min(jobs, len(names)))]
    for name in order:  # longest first onto the lane with the least work
        min(lanes, key=lambda lane: sum(TASK_COST.get(n, 1) * budgets[n] for n in lane)).append(
            name
        )
    procs = []
    for lane in lanes:
        cmd = [
            sys.executable,
            __file__,
            "--tasks",
            ",".join(lane),
            "--out-dir",
            str(args.out_dir),
            "--trials",
            ",".join(f"{n}={budgets[n]}" for n in lane),
            "--jobs",
            "1",
            "--no-summary",
        ]
        procs.append((lane, subprocess.Popen(cmd + (["--quick"] if args.quick else []))))
    failed = [n for lane, proc in procs if proc.wait() != 0 for n in lane]
    # A lane that failed (or was stopped) may still have finished its first tasks: keep
    # those, but only files this invocation wrote, never an older run's.
    done = [
        n
        for n in names
        if n not in failed or _written_since(RESULTS / f"compare_{n}.json", started)
    ]
    if len(done) < len(names):
        print(f"not finished: {', '.join(n for n in names if n not in done)}", file=sys.stderr)
    return {n: json.loads((RESULTS / f"compare_{n}.json").read_text()) for n in done}


def _written_since(path: Path, started: float) -> bool:
    return path.exists() and path.stat().st_mtime >= started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,mnist1d,minilm")
    parser.add_argument("--trials", default="", help="N for every task, or task=N,task=N")
    parser.add_argument("--out-dir", default="runs/compare", type=Path)
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument(
        "--quick", action="store_true", help="3 trials a search, fewer baselines (smoke)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="tasks run side by side in this many processes"
    )
    parser.add_argument(
        "--no-summary", action="store_true", help=argparse.SUPPRESS
    )  # a --jobs child
    args = parser.parse_args(argv)
    names = [n for n in args.tasks.split(",") if n]
    budgets = parse_trials(args.trials, names, args.quick)
    results = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
        "budgets": budgets,
        "jobs": args.jobs,
        "tasks": {},
    }
    if args.jobs > 1 and len(names) > 1:
        results["tasks"] = run_in_children(names, budgets, args, args.jobs, time.time())
        for name in results["tasks"]:
            print_task(results["tasks"][name])
        results["not_finished"] = [n for n in names if n not in results["tasks"]]
    else:
        for name in names:
            print(f"[{name}] {budgets[name]} trials per search", flush=True)
            result = compare_task(name, budgets[name], args.out_dir, args.quick)
            results["tasks"][name] = result
            # Per task, so a run cut short still leaves every finished task's numbers.
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"compare_{name}.json").write_text(
                json.dumps(result, indent=1, default=float)
            )
            print_task(result)
    if args.no_summary:
        return 0
    results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    results["seed_claims"] = claims_table(results["tasks"])
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
