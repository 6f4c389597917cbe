"""Pruning on MNIST-1D, measured in one run on one machine, as ratios to the dense model.

1. ``structured``: structured pruning (channels, FFN neurons and heads physically removed,
   ``round_to=8``) at 30 / 50 / 70 % for the residual CNN and the transformer encoder:
   parameters, artifact bytes, CPU latency (batch 64, 2 threads, median) and test-accuracy
   drop after fine-tuning, recipe seed 0. Everything is measured on the artifact loaded
   back from disk. The transformer loses ``ratio`` of its heads and of its FFN neurons and
   uses :data:`transformer_stages` (distillation from the dense model, then a longer
   fine-tune); the CNN a plain fine-tune of ``--epochs``.
2. ``transformer``: the 50 % goal, the transformer with 50 % of heads and FFN neurons
   removed, over ``--seeds`` recipe seeds: validation and test drop per seed and the mean.
3. ``gradual``: unstructured pruning of the paper's CNN to 90 % sparsity, one-shot against
   gradual (Zhu & Gupta cubic) with the same fine-tune budget, mean over the seeds.
4. ``adaptive``: the adaptive controller at the same 90 %, mean over the seeds. It plans
   4 phases of ``epochs / 4`` epochs (the cubic budget) and may use fewer (pushes) or up
   to twice as many (back-offs); the epochs it really spent are reported with its
   accuracy, and cubic at twice the budget (the most the controller may spend) is run as
   the control. With ``gradual`` too, one-shot and cubic are run once and shared.

    python benchmarks/pruning.py [--json] [--epochs 8] [--transformer-epochs 16] [--seeds 3]
                                 [--repeats 20] [--blocks structured,transformer,gradual,adaptive]
                                 [--models rescnn,transformer] [--no-transformer-distill]

``--epochs 0`` skips every fine-tune (and the unstructured blocks): the shapes, bytes and
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
    return {
        "params": sum(p.numel() for p in loaded.model.parameters()),
        "bytes": loaded.size_bytes,
        "val_accuracy": task.evaluate(loaded.model, "val"),
        "test_accuracy": task.evaluate(loaded.model, "test"),
        "_model": loaded.model,
    }


def add_latency(rows: list[dict], task: Task, repeats: int, rounds: int = 5) -> None:
    """Median latency per model, measured in interleaved rounds; the smallest round median
    is kept. On a shared CPU, load from other processes comes and goes: interleaving
    exposes every model to the same disturbance and the minimum discards the worst."""
    batch = task.example_batch(64)
    medians: dict[int, list[float]] = {i: [] for i in range(len(rows))}
    for _ in range(rounds):
        for i, row in enumerate(rows):
            medians[i].append(
                model_latency(row["_model"], batch, warmup=5, repeats=repeats).median_ms
            )
    for i, row in enumerate(rows):
        row["latency_ms"] = min(medians[i])
        row["latency_spread_ms"] = max(medians[i]) - min(medians[i])
        del row["_model"]


def ratios_to_dense(rows: list[dict]) -> list[dict]:
    dense = rows[0]
    return [
        {
            **row,
            "params_ratio": row["params"] / dense["params"],
            "bytes_ratio": row["bytes"] / dense["bytes"],
            "latency_ratio": row["latency_ms"] / dense["latency_ms"],
            "val_drop_pt": 100 * (dense["val_accuracy"] - row["val_accuracy"]),
            "drop_pt": 100 * (dense["test_accuracy"] - row["test_accuracy"]),
        }
        for row in rows
    ]


def transformer_stages(ratio: float, epochs: int, lr: float, *, distill: bool = True) -> list[dict]:
    """The transformer recipe: distil from the dense model (its logits, ``alpha`` 0.5,
    temperature 4) during the fine-tune that follows removing ``ratio`` of every layer's
    heads and FFN neurons. ``epochs == 0``: no fine-tune, so no distillation either."""
    prune = {
        "kind": "prune_structured",
        "heads": ratio,
        "ffn": ratio,
        "round_to": 8,
        "fine_tune_epochs": epochs,
        "lr": lr,
    }
    return (
        [{"kind": "distill", "alpha": 0.5, "temperature": 4.0}] if epochs and distill else []
    ) + [prune]


def cnn_stages(ratio: float, epochs: int, lr: float) -> list[dict]:
    return [
        {
            "kind": "prune_structured",
            "ratio": ratio,
            "round_to": 8,
            "fine_tune_epochs": epochs,
            "lr": lr,
        }
    ]


def structured_rows(
    name: str,
    epochs: int,
    repeats: int,
    out: Path,
    *,
    ratios: tuple[float, ...] = (0.3, 0.5, 0.7),
    seeds: int = 1,
    distill: bool = True,
) -> list[dict]:
    """Dense plus each ratio; with ``seeds`` > 1 each ratio is the mean over recipe seeds
    (latency and shapes from seed 0: they do not depend on the seed)."""
    ref = TaskRef(entry=ENTRY, params={"model": name})
    task = load_task(ref)
    base = load_baseline(ref, task).model
    dense = measure(base, Recipe(task=ref), task, out / f"{name}-dense")
    rows = [{"model": name, "setting": "dense", **dense}]

    def stages_for(ratio: float, epochs: int, lr: float) -> list[dict]:
        if name == "transformer":
            return transformer_stages(ratio, epochs, lr, distill=distill)
        return cnn_stages(ratio, epochs, lr)

    for ratio in ratios:
        runs = []
        for seed in range(seeds):
            recipe = Recipe(
                task=ref, seed=seed, stages=stages_for(ratio, epochs, task.train.lr / 3)
            )
            model = apply_recipe(recipe, task=task, model=copy.deepcopy(base))
            runs.append(measure(model, recipe, task, out / f"{name}-{ratio}-{seed}"))
            print(
                f"{name} {ratio:.0%} seed {seed}: val {runs[-1]['val_accuracy']:.4f} "
                f"test {runs[-1]['test_accuracy']:.4f}",
                file=sys.stderr,
            )
        mean = {
            k: statistics.mean(r[k] for r in runs)
            for k in ("params", "bytes", "val_accuracy", "test_accuracy")
        }
        rows.append(
            {
                "model": name,
                "setting": f"structured {ratio:.0%}",
                **mean,
                "_model": runs[0]["_model"],
                "recipe": Recipe(
                    task=ref, stages=stages_for(ratio, epochs, task.train.lr / 3)
                ).model_dump(mode="json")["stages"],
                "seeds": seeds,
                "test_accuracy_per_seed": [r["test_accuracy"] for r in runs],
                "val_accuracy_per_seed": [r["val_accuracy"] for r in runs],
            }
        )
    add_latency(rows, task, repeats)
    return ratios_to_dense(rows)


def cnn_dense(out: Path) -> tuple[TaskRef, Task, torch.nn.Module, dict]:
    ref = TaskRef(entry=ENTRY, params={"model": "cnn"})
    task = load_task(ref)
    base = load_baseline(ref, task).model
    return (
        ref,
        task,
        base,
        {
            "model": "cnn",
            "setting": "dense",
            **measure(base, Recipe(task=ref), task, out / "cnn-dense"),
        },
    )


def unstructured_row(
    ref: TaskRef,
    task: Task,
    base: torch.nn.Module,
    label: str,
    stage: dict,
    seeds: int,
    out: Path,
    *,
    planned_epochs: int,
) -> dict:
    """One schedule over the seeds: mean accuracy, and the epochs it really spent (an
    adaptive stage records its phases; every other schedule spends ``fine_tune_epochs``)."""
    runs = []
    for seed in range(seeds):
        recipe = Recipe(
            task=ref, seed=seed, stages=[{"kind": "prune", "lr": task.train.lr / 3, **stage}]
        )
        records: dict = {}
        model = apply_recipe(recipe, task=task, model=copy.deepcopy(base), records=records)
        recipe = realised_recipe(recipe, records)
        phases = getattr(recipe.stages[0], "phases", [])
        run = measure(model, recipe, task, out / f"cnn-{label.replace(' ', '_')}-{seed}")
        run["epochs"] = sum(p.epochs for p in phases) if phases else stage["fine_tune_epochs"]
        run["decisions"] = [f"{p.sparsity:g}:{p.decision}" for p in phases]
        runs.append(run)
    print(
        f"cnn 90% {label}: {[r['test_accuracy'] for r in runs]} epochs {[r['epochs'] for r in runs]} "
        f"{[r['decisions'] for r in runs] if any(r['decisions'] for r in runs) else ''}",
        file=sys.stderr,
    )
    mean = {
        k: statistics.mean(r[k] for r in runs)
        for k in ("params", "bytes", "val_accuracy", "test_accuracy", "epochs")
    }
    row = {
        "model": "cnn",
        "setting": f"unstructured 90% {label}",
        **mean,
        "_model": runs[0]["_model"],
        "planned_epochs": planned_epochs,
        "test_accuracy_per_seed": [r["test_accuracy"] for r in runs],
        "epochs_per_seed": [r["epochs"] for r in runs],
    }
    if any(r["decisions"] for r in runs):
        row["decisions_per_seed"] = [r["decisions"] for r in runs]
    return row


def unstructured_rows(
    epochs: int,
    seeds: int,
    repeats: int,
    out: Path,
    *,
    gradual: bool,
    adaptive: bool,
    sparsity: float = 0.9,
    phase_count: int = 4,
    threshold: float = 0.01,
) -> list[dict]:
    """One-shot and cubic (``gradual``), the adaptive controller and cubic at twice the
    budget (``adaptive``), all on the same dense CNN."""
    ref, task, base, dense = cnn_dense(out)
    runs = {
        "one-shot": {"schedule": "oneshot", "fine_tune_epochs": epochs},
        "cubic": {"schedule": "cubic", "fine_tune_epochs": epochs, "frequency": 5},
    }
    if adaptive:
        runs |= {
            "adaptive": {
                "schedule": "adaptive",
                "fine_tune_epochs": max(1, epochs // phase_count),
                "phase_count": phase_count,
                "threshold": threshold,
            },
            "cubic 2x epochs": {
                "schedule": "cubic",
                "fine_tune_epochs": 2 * epochs,
                "frequency": 5,
            },
        }
        if not gradual:
            del runs["one-shot"]
    rows = [dense]
    for label, stage in runs.items():
        rows.append(
            unstructured_row(
                ref,
                task,
                base,
                label,
                {"sparsity": sparsity, **stage},
                seeds,
                out,
                planned_epochs=epochs,
            )
        )
    add_latency(rows, task, repeats)
    return ratios_to_dense(rows)


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'model':<12}{'setting':<28}{'params':>8}{'bytes':>8}{'latency':>9}{'val drop':>10}"
        f"{'test acc':>10}{'drop pt':>9}  per seed (test)"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        per_seed = " ".join(f"{a:.3f}" for a in r.get("test_accuracy_per_seed", []))
        epochs = f"  ({r['epochs']:.3g} epochs)" if "epochs" in r else ""
        print(
            f"{r['model']:<12}{r['setting']:<28}{r['params_ratio']:>8.2f}{r['bytes_ratio']:>8.2f}"
            f"{r['latency_ratio']:>9.2f}{r['val_drop_pt']:>10.2f}{r['test_accuracy']:>10.4f}{r['drop_pt']:>9.2f}"
            f"  {per_seed}{epochs}"
        )
    print(
        "(params, bytes and latency are ratios to the dense model of the same block; drops in points"
        " of accuracy, means over the seeds where several)"
    )


BLOCKS = ("structured", "transformer", "gradual", "adaptive")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    parser.add_argument(
        "--epochs", type=int, default=8, help="fine-tune epochs after pruning (CNNs)"
    )
    parser.add_argument(
        "--transformer-epochs",
        type=int,
        default=16,
        help="distilled fine-tune epochs after head and FFN removal",
    )
    parser.add_argument(
        "--transformer-distill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="distil the pruned transformer from the dense one during its fine-tune",
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per round (5 rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--blocks",
        default="structured,transformer,gradual",
        help=f"comma-separated blocks to run: {', '.join(BLOCKS)}",
    )
    parser.add_argument(
        "--models", default="rescnn,transformer", help="models of the structured block"
    )
    args = parser.parse_args(argv)
    blocks = set(args.blocks.split(","))
    if blocks - set(BLOCKS):
        parser.error(f"unknown blocks: {', '.join(sorted(blocks - set(BLOCKS)))}")
    torch.set_num_threads(args.threads)
    tf_epochs = args.transformer_epochs if args.epochs > 0 else 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows = []
        if "structured" in blocks:
            for name in args.models.split(","):
                rows += structured_rows(
                    name,
                    tf_epochs if name == "transformer" else args.epochs,
                    args.repeats,
                    out,
                    distill=args.transformer_distill,
                )
        if "transformer" in blocks:
            rows += structured_rows(
                "transformer",
                tf_epochs,
                args.repeats,
                out,
                ratios=(0.5,),
                seeds=args.seeds,
                distill=args.transformer_distill,
            )
        if args.epochs > 0 and blocks & {"gradual", "adaptive"}:  # schedules need a fine-tune
            rows += unstructured_rows(
                args.epochs,
                args.seeds,
                args.repeats,
                out,
                gradual="gradual" in blocks,
                adaptive="adaptive" in blocks,
            )
    if args.json:
        json.dump(
            {
                "threads": args.threads,
                "batch_size": 64,
                "fine_tune_epochs": args.epochs,
                "transformer_fine_tune_epochs": tf_epochs,
                "transformer_distill": args.transformer_distill,
                "seeds": args.seeds,
                "torch": torch.__version__,
                "rows": rows,
            },
            sys.stdout,
            indent=2,
        )
        print()
    else:
        print(
            f"torch {torch.__version__}, {args.threads} threads, batch 64, fine-tune {args.epochs} epochs "
            f"(transformer {tf_epochs}{', distilled' if args.transformer_distill else ''}), seeds {args.seeds}"
        )
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
