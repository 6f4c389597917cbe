"""Knowledge distillation on MNIST-1D: how much of the accuracy that compression loses
does each KD variant recover, at the same fine-tune budget?

The student is the paper's CNN after 70 % structured channel pruning (physically removed)
and 4-bit per-channel weights (QAT). Every variant runs the same recipe (prune with
fine-tune → recover → 4-bit QAT); only a leading ``distill`` stage differs, so every
fine-tune of the recipe uses its loss. Accuracy is measured on the test split of the
artifact saved to disk and loaded back (runtime kernels on), mean ± std over recipe seeds.

    recovered = (acc_variant − acc_no_kd) / (acc_teacher − acc_no_kd)

    python benchmarks/distillation.py [--json] [--seeds 3] [--prune-epochs 4] [--recover-epochs 4] [--qat-epochs 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from autoslim.artifact import load_artifact, save_artifact
from autoslim.baseline import load_baseline
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe, TaskRef
from autoslim.task import load_task

TASK = TaskRef(entry="autoslim.tasks.mnist1d:make_task", params={"model": "cnn"})
RESPONSE = {"alpha": 0.9, "temperature": 4.0}
# Each variant: CE plus one KD term (response KD replaces most of CE), then all together.
VARIANTS: dict[str, dict | None] = {
    "no_kd": None,
    "response": RESPONSE,
    "feature": {"alpha": 0.0, "feature_weight": 1.0},
    "attention": {"alpha": 0.0, "attention_weight": 50.0},
    "relation": {"alpha": 0.0, "relation_distance_weight": 1.0, "relation_angle_weight": 2.0},
    "contrastive": {"alpha": 0.0, "contrastive_weight": 0.5},
    "response+feature+relation": {**RESPONSE, "feature_weight": 1.0, "relation_distance_weight": 1.0,
                                  "relation_angle_weight": 2.0},
    "response+phases": {**RESPONSE, "feature_weight": 1.0, "schedule": {"kind": "phases"}},
}


def stages(kd: dict | None, args: argparse.Namespace) -> list[dict]:
    body = [
        {"kind": "prune_structured", "ratio": 0.7, "fine_tune_epochs": args.prune_epochs, "lr": 3e-3},
        {"kind": "recover", "epochs": args.recover_epochs, "lr": 1e-3},
        {"kind": "quantize", "default": 4, "qat_epochs": args.qat_epochs, "qat_lr": 3e-4},
    ]
    return ([{"kind": "distill", **kd}] if kd is not None else []) + body


def run_variant(name: str, kd: dict | None, args: argparse.Namespace, task, teacher, folder: Path) -> dict:
    accs, seconds = [], []
    for seed in range(args.seeds):
        recipe = Recipe(task=TASK, seed=seed, stages=stages(kd, args))
        start = time.perf_counter()
        model = apply_recipe(recipe, task=task, model=_copy(teacher))
        seconds.append(time.perf_counter() - start)
        loaded = load_artifact(save_artifact(model, recipe, folder / f"{name}_{seed}"), task=task)
        accs.append(task.evaluate(loaded.model, "test"))
    return {"variant": name, "accuracy_mean": statistics.mean(accs),
            "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "accuracies": accs, "apply_seconds_mean": statistics.mean(seconds)}


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prune-epochs", type=int, default=4)
    parser.add_argument("--recover-epochs", type=int, default=4)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    task = load_task(TASK)
    teacher = load_baseline(TASK, task, log=not args.json).model
    teacher_acc = task.evaluate(teacher, "test")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            rows.append(run_variant(name, VARIANTS[name], args, task, teacher, Path(tmp)))
            if not args.json:
                print(f"  {name}: {rows[-1]['accuracy_mean']:.4f}", file=sys.stderr)
    base = next((r["accuracy_mean"] for r in rows if r["variant"] == "no_kd"), None)
    for row in rows:
        lost = teacher_acc - base if base is not None else None
        row["recovered"] = (row["accuracy_mean"] - base) / lost if lost else None
    result = {"task": TASK.model_dump(), "teacher_test_accuracy": teacher_acc,
              "student": "cnn, 70% structured channel pruning + 4-bit per-channel QAT",
              "settings": {k: v for k, v in vars(args).items() if k != "json"}, "rows": rows,
              "wall_seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


def table(result: dict) -> str:
    lines = [f"teacher (fp32 baseline) test accuracy: {result['teacher_test_accuracy']:.4f}",
             f"student: {result['student']}; settings {result['settings']}", "",
             f"{'variant':28} {'test acc (mean ± std)':>24} {'recovered':>10} {'s/recipe':>9}"]
    for r in result["rows"]:
        rec = "—" if r["recovered"] is None or r["variant"] == "no_kd" else f"{r['recovered']:+.0%}"
        lines.append(f"{r['variant']:28} {r['accuracy_mean']:>14.4f} ± {r['accuracy_std']:.4f} {rec:>10} "
                     f"{r['apply_seconds_mean']:>9.1f}")
    lines.append(f"\nwall time {result['wall_seconds']:.0f} s on {result['threads']} threads")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
