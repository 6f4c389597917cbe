"""Pruning on MNIST-1D, measured in one run on one machine, as ratios to the dense model.

1. Structured pruning (channels, FFN neurons and heads physically removed, ``round_to=8``)
   at 30 / 50 / 70 % for the residual CNN and the transformer encoder: parameters,
   artifact bytes, CPU latency (batch 64, 2 threads, median) and test-accuracy drop
   after a short fine-tune. Everything is measured on the artifact loaded back from disk.
2. Unstructured pruning of the paper's CNN to 90 % sparsity, one-shot against gradual
   (Zhu & Gupta cubic) with the same fine-tune budget, mean over 3 recipe seeds.
3. Optional (``--blocks adaptive``): the adaptive controller against cubic at the same
   90 %, mean over the seeds. The controller plans 4 phases of ``epochs / 4`` epochs (the
   cubic budget) and may use fewer (pushes) or up to twice as many (back-offs); the
   epochs it really spent are reported with its accuracy.

    python benchmarks/pruning.py [--json] [--epochs 8] [--seeds 3] [--repeats 20]
                                 [--blocks structured,gradual,adaptive]

``--epochs 0`` skips every fine-tune (and the unstructured block): the shapes, bytes and
latency are the same, only the accuracy column is then before fine-tuning.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from autoslim.artifact import load_artifact, save_artifact
from autoslim.baseline import load_baseline
from autoslim.measure.latency import model_latency
from autoslim.pipeline import apply_recipe, realised_recipe
from autoslim.recipe import Recipe, TaskRef
from autoslim.task import Task, load_task

ENTRY = "autoslim.tasks.mnist1d:make_task"


def measure(model: torch.nn.Module, recipe: Recipe, task: Task, folder: Path) -> dict:
    """Save and reload the artifact the way it would ship; latency comes later, per block."""
    loaded = load_artifact(save_artifact(model, recipe, folder), task=task)
    return {"params": sum(p.numel() for p in loaded.model.parameters()), "bytes": loaded.size_bytes,
            "test_accuracy": task.evaluate(loaded.model, "test"), "_model": loaded.model}


def add_latency(rows: list[dict], task: Task, repeats: int, rounds: int = 5) -> None:
    """Median latency per model, measured in interleaved rounds; the smallest round median
    is kept. On a shared CPU, load from other processes comes and goes: interleaving
    exposes every model to the same disturbance and the minimum discards the worst."""
    batch = task.example_batch(64)
    medians: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    for _ in range(rounds):
        for i, row in enumerate(rows):
            medians[i].append(model_latency(row["_model"], batch, warmup=5, repeats=repeats).median_ms)
    for i, row in enumerate(rows):
        row["latency_ms"] = min(medians[i])
        row["latency_spread_ms"] = max(medians[i]) - min(medians[i])
        del row["_model"]


def ratios(rows: list[dict]) -> list[dict]:
    dense = rows[0]
    return [{**row, "params_ratio": row["params"] / dense["params"], "bytes_ratio": row["bytes"] / dense["bytes"],
             "latency_ratio": row["latency_ms"] / dense["latency_ms"],
             "drop_pt": 100 * (dense["test_accuracy"] - row["test_accuracy"])} for row in rows]


def structured_rows(name: str, epochs: int, repeats: int, out: Path) -> list[dict]:
    ref = TaskRef(entry=ENTRY, params={"model": name})
    task = load_task(ref)
    base = load_baseline(ref, task).model
    rows = [{"model": name, "setting": "dense", **measure(base, Recipe(task=ref), task, out / f"{name}-dense")}]
    for ratio in (0.3, 0.5, 0.7):
        stage = {"kind": "prune_structured", "ratio": ratio, "round_to": 8, "fine_tune_epochs": epochs,
                 "lr": task.train.lr / 3, "heads": ratio if name == "transformer" else 0.0}
        recipe = Recipe(task=ref, stages=[stage])
        model = apply_recipe(recipe, task=task, model=copy.deepcopy(base))
        rows.append({"model": name, "setting": f"structured {ratio:.0%}",
                     **measure(model, recipe, task, out / f"{name}-{ratio}")})
        print(f"{name} {ratio:.0%}: test accuracy {rows[-1]['test_accuracy']:.4f}", file=sys.stderr)
    add_latency(rows, task, repeats)
    return ratios(rows)


def gradual_rows(epochs: int, seeds: int, repeats: int, out: Path) -> list[dict]:
    ref = TaskRef(entry=ENTRY, params={"model": "cnn"})
    task = load_task(ref)
    base = load_baseline(ref, task).model
    rows = [{"model": "cnn", "setting": "dense", **measure(base, Recipe(task=ref), task, out / "cnn-dense")}]
    for schedule in ("oneshot", "cubic"):
        runs = []
        for seed in range(seeds):
            stage = {"kind": "prune", "sparsity": 0.9, "schedule": schedule, "fine_tune_epochs": epochs,
                     "lr": task.train.lr / 3, "frequency": 5}
            recipe = Recipe(task=ref, seed=seed, stages=[stage])
            model = apply_recipe(recipe, task=task, model=copy.deepcopy(base))
            runs.append(measure(model, recipe, task, out / f"cnn-{schedule}-{seed}"))
        print(f"cnn 90% {schedule}: {[r['test_accuracy'] for r in runs]}", file=sys.stderr)
        mean = {k: statistics.mean(r[k] for r in runs) for k in ("params", "bytes", "test_accuracy")}
        rows.append({"model": "cnn", "setting": f"unstructured 90% {schedule}", **mean, "_model": runs[0]["_model"],
                     "test_accuracy_per_seed": [r["test_accuracy"] for r in runs]})
    add_latency(rows, task, repeats)
    return ratios(rows)


def adaptive_rows(epochs: int, seeds: int, repeats: int, out: Path, *, sparsity: float = 0.9,
                  phase_count: int = 4, threshold: float = 0.01) -> list[dict]:
    ref = TaskRef(entry=ENTRY, params={"model": "cnn"})
    task = load_task(ref)
    base = load_baseline(ref, task).model
    rows = [{"model": "cnn", "setting": "dense", **measure(base, Recipe(task=ref), task, out / "cnn-dense")}]
    per_phase = max(1, epochs // phase_count)
    stages = {
        "cubic": {"schedule": "cubic", "fine_tune_epochs": epochs, "frequency": 5},
        "adaptive": {"schedule": "adaptive", "fine_tune_epochs": per_phase, "phase_count": phase_count,
                     "threshold": threshold},
    }
    for schedule, stage in stages.items():
        runs = []
        for seed in range(seeds):
            recipe = Recipe(task=ref, seed=seed, stages=[{"kind": "prune", "sparsity": sparsity,
                                                          "lr": task.train.lr / 3, **stage}])
            records: dict = {}
            model = apply_recipe(recipe, task=task, model=copy.deepcopy(base), records=records)
            recipe = realised_recipe(recipe, records)
            phases = getattr(recipe.stages[0], "phases", [])
            run = measure(model, recipe, task, out / f"cnn-{schedule}-{seed}")
            run["epochs"] = sum(p.epochs for p in phases) if phases else epochs
            run["decisions"] = [f"{p.sparsity:g}:{p.decision}" for p in phases]
            runs.append(run)
        print(f"cnn {sparsity:.0%} {schedule}: {[r['test_accuracy'] for r in runs]} "
              f"epochs {[r['epochs'] for r in runs]} {[r['decisions'] for r in runs]}", file=sys.stderr)
        mean = {k: statistics.mean(r[k] for r in runs) for k in ("params", "bytes", "test_accuracy", "epochs")}
        rows.append({"model": "cnn", "setting": f"unstructured {sparsity:.0%} {schedule}", **mean,
                     "_model": runs[0]["_model"], "test_accuracy_per_seed": [r["test_accuracy"] for r in runs],
                     "decisions_per_seed": [r["decisions"] for r in runs]})
    add_latency(rows, task, repeats)
    return ratios(rows)


def print_table(rows: list[dict]) -> None:
    head = f"{'model':<12}{'setting':<28}{'params':>8}{'bytes':>8}{'latency':>9}{'test acc':>10}{'drop pt':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<12}{r['setting']:<28}{r['params_ratio']:>8.2f}{r['bytes_ratio']:>8.2f}"
              f"{r['latency_ratio']:>9.2f}{r['test_accuracy']:>10.4f}{r['drop_pt']:>9.2f}")
    print("(params, bytes and latency are ratios to the dense model of the same block)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--epochs", type=int, default=8, help="fine-tune epochs after pruning")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per round (5 rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", default="structured,gradual",
                        help="comma-separated blocks to run: structured, gradual, adaptive")
    args = parser.parse_args(argv)
    blocks = set(args.blocks.split(","))
    if blocks - {"structured", "gradual", "adaptive"}:
        parser.error(f"unknown blocks: {', '.join(sorted(blocks - {'structured', 'gradual', 'adaptive'}))}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows = []
        if "structured" in blocks:
            rows += structured_rows("rescnn", args.epochs, args.repeats, out)
            rows += structured_rows("transformer", args.epochs, args.repeats, out)
        if args.epochs > 0:  # gradual schedules need a fine-tune; --epochs 0 times shapes only
            if "gradual" in blocks:
                rows += gradual_rows(args.epochs, args.seeds, args.repeats, out)
            if "adaptive" in blocks:
                rows += adaptive_rows(args.epochs, args.seeds, args.repeats, out)
    if args.json:
        json.dump({"threads": args.threads, "batch_size": 64, "fine_tune_epochs": args.epochs,
                   "torch": torch.__version__, "rows": rows}, sys.stdout, indent=2)
        print()
    else:
        print(f"torch {torch.__version__}, {args.threads} threads, batch 64, fine-tune {args.epochs} epochs")
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
