"""Knowledge distillation on MNIST-1D: how much of the accuracy that compression loses
does each KD variant recover, at the same fine-tune budget?

The student is the paper's CNN after 70 % structured channel pruning (physically removed)
and 4-bit per-channel weights (QAT); ``--prune-ratio`` and ``--bits`` set a milder or
harsher one. Every variant runs the same recipe (prune with fine-tune → recover → QAT);
only a leading ``distill`` stage differs, so every fine-tune of the recipe uses its loss.
Accuracy is measured on the test split of the artifact saved to disk and loaded back
(runtime kernels on), mean ± std over recipe seeds.

    recovered = (acc_variant − acc_no_kd) / (acc_teacher − acc_no_kd)

    python benchmarks/distillation.py [--json] [--seeds 3] [--prune-epochs 4] [--recover-epochs 4] [--qat-epochs 2]
                                      [--variants NAME ...] [--jobs J] [--threads T]
                                      [--prune-ratio 0.7] [--bits 4] [--sweep]

``--sweep`` runs the KD settings sweep instead of the built-in rows: no KD, response +
feature with phases, and :data:`SWEEP` (temperatures, α, schedules, feature layers and
weights, attention and contrastive terms on top of the phase schedule).
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml
from pydantic import ValidationError

from autoslim.artifact import load_artifact, save_artifact
from autoslim.baseline import load_baseline
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe, TaskRef, one_line
from autoslim.task import load_task
from autoslim.train import TrainHooks

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
    "response+feature+relation": {
        **RESPONSE,
        "feature_weight": 1.0,
        "relation_distance_weight": 1.0,
        "relation_angle_weight": 2.0,
    },
    "response+phases": {**RESPONSE, "feature_weight": 1.0, "schedule": {"kind": "phases"}},
    # Progressive: the same KD, through an intermediate student with half the compression
    # (teacher → intermediate → final); twice the training.
    "response+phases, progressive": {
        **RESPONSE,
        "feature_weight": 1.0,
        "schedule": {"kind": "phases"},
        "progressive": 0.5,
    },
    # Function matching: the teacher labels mixed inputs (mixup). The control row mixes the
    # same inputs but learns from the mixed hard labels only, so the gain of the KD rows
    # over it is the teacher's, not the augmentation's.
    "no_kd+mixup (control)": {"alpha": 0.0, "mixup": 1.0},
    "response+mixup": {**RESPONSE, "mixup": 1.0},
    "function matching (α 1)": {"alpha": 1.0, "temperature": 4.0, "mixup": 1.0},
    "response+phases+mixup": {
        **RESPONSE,
        "feature_weight": 1.0,
        "schedule": {"kind": "phases"},
        "mixup": 1.0,
    },
}


# The KD settings sweep (``--sweep``): each row one leading distill stage.
_PHASES = {"kind": "phases"}
_ALL_FEATURES = [
    "features.1",
    "features.3",
    "features.5",
    "classifier.1:input",
]  # the CNN's ReLUs and embedding
SWEEP: dict[str, dict] = {
    "a1T1": {"alpha": 1.0, "temperature": 1},
    "a1T2": {"alpha": 1.0, "temperature": 2},
    "a1T4": {"alpha": 1.0, "temperature": 4},
    "a1T8": {"alpha": 1.0, "temperature": 8},
    "a09T2": {"alpha": 0.9, "temperature": 2},
    "a09T8": {"alpha": 0.9, "temperature": 8},
    "a05T4": {"alpha": 0.5, "temperature": 4},
    "ph_resp": {"alpha": 0.9, "temperature": 4, "schedule": _PHASES},
    "ph_T2": {"alpha": 0.9, "temperature": 2, "feature_weight": 1, "schedule": _PHASES},
    "ph_a1": {"alpha": 1.0, "temperature": 4, "feature_weight": 1, "schedule": _PHASES},
    "ph_f5": {"alpha": 0.9, "temperature": 4, "feature_weight": 5, "schedule": _PHASES},
    "ph_featall": {
        "alpha": 0.9,
        "temperature": 4,
        "feature_weight": 1,
        "feature_layers": _ALL_FEATURES,
        "schedule": _PHASES,
    },
    "ph_featall5": {
        "alpha": 0.9,
        "temperature": 4,
        "feature_weight": 5,
        "feature_layers": _ALL_FEATURES,
        "schedule": _PHASES,
    },
    "featall_const": {
        "alpha": 0.9,
        "temperature": 4,
        "feature_weight": 1,
        "feature_layers": _ALL_FEATURES,
    },
    "ph_att": {
        "alpha": 0.9,
        "temperature": 4,
        "feature_weight": 1,
        "attention_weight": 50,
        "schedule": _PHASES,
    },
    "ph_con": {
        "alpha": 0.9,
        "temperature": 4,
        "feature_weight": 1,
        "contrastive_weight": 0.5,
        "schedule": _PHASES,
    },
    "ph_long": {
        "alpha": 0.9,
        "temperature": 4,
        "feature_weight": 1,
        "schedule": {"kind": "phases", "early_until": 4, "late_from": 10},
    },
    "lin": {
        "alpha": 0.9,
        "temperature": 4,
        "feature_weight": 1,
        "schedule": {"kind": "linear", "start": 0.3, "end": 1.5, "ramp_epochs": 8},
    },
}


STOP_AFTER = ["prune", "recover", "quantize"]


def stages(kd: dict | None, args: argparse.Namespace) -> list[dict]:
    body = [
        {
            "kind": "prune_structured",
            "ratio": args.prune_ratio,
            "fine_tune_epochs": args.prune_epochs,
            "lr": 3e-3,
        },
        {"kind": "recover", "epochs": args.recover_epochs, "lr": 1e-3},
        {"kind": "quantize", "default": args.bits, "qat_epochs": args.qat_epochs, "qat_lr": 3e-4},
    ]
    body = body[: STOP_AFTER.index(args.stop_after) + 1]  # where the student loses accuracy
    return ([{"kind": "distill", **kd}] if kd is not None else []) + body


_WORKER: dict = {}


def _load(threads: int) -> tuple:
    """The task and its fp32 teacher, once per process."""
    if not _WORKER:
        torch.set_num_threads(threads)
        task = load_task(TASK)
        _WORKER.update(task=task, teacher=load_baseline(TASK, task, log=False).model)
    return _WORKER["task"], _WORKER["teacher"]


def run_recipe(name: str, seed: int, args: argparse.Namespace) -> tuple[float, float, float | None]:
    """Test accuracy of one variant's artifact (saved, loaded back), its apply seconds and,
    for a progressive variant, the test accuracy of the intermediate student that taught it."""
    task, teacher = _load(args.threads)
    recipe = Recipe(task=TASK, seed=seed, stages=stages(args.table[name], args))
    hooks = TrainHooks()
    start = time.perf_counter()
    model = apply_recipe(recipe, task=task, model=copy.deepcopy(teacher), hooks=hooks)
    seconds = time.perf_counter() - start
    progressive = (args.table[name] or {}).get("progressive", 0.0) > 0
    intermediate = task.evaluate(hooks.loss.teacher, "test") if progressive else None
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_artifact(save_artifact(model, recipe, Path(tmp) / "artifact"), task=task)
        return task.evaluate(loaded.model, "test"), seconds, intermediate


def run_all(args: argparse.Namespace) -> list[dict]:
    """Every (variant, seed) recipe, in ``--jobs`` worker processes (each on ``--threads``)."""
    jobs = [(name, seed) for name in args.variants for seed in range(args.seeds)]
    if args.jobs > 1:
        with ProcessPoolExecutor(
            args.jobs, mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            results = list(
                pool.map(run_recipe, [n for n, _ in jobs], [s for _, s in jobs], [args] * len(jobs))
            )
    else:
        results = [run_recipe(name, seed, args) for name, seed in jobs]
    rows = []
    for name in args.variants:
        mine = [r for (n, _), r in zip(jobs, results, strict=True) if n == name]
        accs = [a for a, _, _ in mine]
        rows.append(
            {
                "variant": name,
                "accuracy_mean": statistics.mean(accs),
                "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "accuracies": accs,
                "apply_seconds_mean": statistics.mean(s for _, s, _ in mine),
            }
        )
        if mine[0][2] is not None:  # progressive: how good a teacher the intermediate student was
            rows[-1]["intermediate_accuracies"] = [i for _, _, i in mine]
    return rows


def extra_variants(specs: list[str], parser: argparse.ArgumentParser) -> dict[str, dict]:
    """``NAME=YAML`` rows: each a distill stage's fields, checked by the recipe model."""
    table = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        try:
            fields = yaml.safe_load(text) if sep else None
            if not isinstance(fields, dict):
                raise ValueError("expected NAME={field: value, ...}")
            Recipe(task=TASK, stages=[{"kind": "distill", **fields}])
        except ValidationError as exc:
            parser.error(f"--variant {spec!r}: {one_line(exc)}")
        except (yaml.YAMLError, ValueError) as exc:
            parser.error(f"--variant {spec!r}: {str(exc).splitlines()[0]}")
        if name.strip() in VARIANTS or name.strip() in SWEEP:
            parser.error(f"--variant {name.strip()!r} is a built-in row's name")
        table[name.strip()] = fields
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prune-epochs", type=int, default=4)
    parser.add_argument("--recover-epochs", type=int, default=4)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument(
        "--prune-ratio",
        type=float,
        default=0.7,
        help="share of channels structured pruning removes (how hard the student is compressed)",
    )
    parser.add_argument("--bits", type=int, default=4, help="QAT weight bit width of the student")
    parser.add_argument(
        "--stop-after",
        choices=STOP_AFTER,
        default="quantize",
        help="end the recipe after this stage (an fp32 student before QAT, to see where accuracy goes)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument(
        "--jobs", type=int, default=1, help="recipes run side by side in this many processes"
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=None,
        metavar="NAME",
        help=f"built-in rows to run (default: all: {', '.join(VARIANTS)}; "
        "sweep rows may be named too)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help=f"run the KD settings sweep: no_kd, response+phases and {', '.join(SWEEP)}",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=YAML",
        help="an extra row, run after the chosen ones: a distill stage's fields as a YAML flow mapping, "
        "e.g. 'soft={alpha: 1.0, temperature: 2}'",
    )
    args = parser.parse_args(argv)
    args.table = {**VARIANTS, **SWEEP, **extra_variants(args.variant, parser)}
    extra = [
        n for n in args.table if n not in VARIANTS and n not in SWEEP
    ]  # --variant rows always run
    default = ["no_kd", "response+phases", *SWEEP] if args.sweep else list(VARIANTS)
    args.variants = (default if args.variants is None else args.variants) + extra
    unknown = [n for n in args.variants if n not in args.table]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r} (known: {', '.join(args.table)})")
    torch.set_num_threads(args.threads)
    if args.seeds < 1 or args.jobs < 1 or args.threads < 1:
        parser.error("--seeds, --jobs and --threads must be at least 1")
    if not 0.0 < args.prune_ratio < 1.0:
        parser.error(f"--prune-ratio must be between 0 and 1 (exclusive), got {args.prune_ratio}")
    if args.bits not in (2, 3, 4, 5, 6, 8):
        parser.error(f"--bits must be one of 2, 3, 4, 5, 6, 8, got {args.bits}")
    if min(args.prune_epochs, args.recover_epochs, args.qat_epochs) < 0:
        parser.error("--prune-epochs, --recover-epochs and --qat-epochs must be at least 0")
    start = time.perf_counter()
    task, teacher = _load(args.threads)
    teacher_acc = task.evaluate(teacher, "test")
    rows = run_all(args)
    base = next((r["accuracy_mean"] for r in rows if r["variant"] == "no_kd"), None)
    for row in rows:
        lost = teacher_acc - base if base is not None else None
        row["recovered"] = (row["accuracy_mean"] - base) / lost if lost else None
    result = {
        "task": TASK.model_dump(),
        "teacher_test_accuracy": teacher_acc,
        "student": student_label(args),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "rows": rows,
        "wall_seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


def student_label(args: argparse.Namespace) -> str:
    pruned = f"cnn, {args.prune_ratio:.0%} structured channel pruning"
    return {
        "prune": f"{pruned} (fp32)",
        "recover": f"{pruned} + recovery fine-tune (fp32)",
        "quantize": f"{pruned} + {args.bits}-bit per-channel QAT",
    }[args.stop_after]


def table(result: dict) -> str:
    lines = [
        f"teacher (fp32 baseline) test accuracy: {result['teacher_test_accuracy']:.4f}",
        f"student: {result['student']}; settings {result['settings']}",
        "",
        f"{'variant':28} {'test acc (mean ± std)':>24} {'recovered':>10} {'s/recipe':>9}",
    ]
    for r in result["rows"]:
        rec = "—" if r["recovered"] is None or r["variant"] == "no_kd" else f"{r['recovered']:+.0%}"
        lines.append(
            f"{r['variant']:28} {r['accuracy_mean']:>14.4f} ± {r['accuracy_std']:.4f} {rec:>10} "
            f"{r['apply_seconds_mean']:>9.1f}"
        )
        if "intermediate_accuracies" in r:
            lines.append(
                f"{'':28} taught by intermediate students at test "
                f"{', '.join(f'{a:.4f}' for a in r['intermediate_accuracies'])}"
            )
    lines.append(f"\nwall time {result['wall_seconds']:.0f} s on {result['threads']} threads")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
