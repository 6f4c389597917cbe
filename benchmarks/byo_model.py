"""Bring your own model: three models autoslim's authors did not write for it, compressed
the user's way (a trained ``nn.Module`` and DataLoaders into ``autoslim.compress``; no
task module, no YAML, no hand-added setting), then exported and replayed.

The models are those of ``tests/user_models.py``: a torchvision-style CIFAR ResNet, a
``transformers`` BERT classifier fed dict batches, and a model of odd parts (Embedding,
depthwise and grouped Conv1d, a GRU, LayerNorm, a tied head). Each is first trained by a
plain loop of the kind users write, then searched over the ``structured_quant`` preset.
Per model it reports trials completed and failed, the front's size, whether replaying the
smallest front point's exported recipe gives the same artifact bytes, the replayed
metric's difference from the search's record, and seconds per trial::

    python benchmarks/byo_model.py --json [--quick] [--device cpu|cuda|auto]

``--gpu-vs-cpu`` instead times the same trials of a CIFAR-shaped ResNet-18 (11 M
parameters) with fine-tunes on the GPU and on ``--cpu-threads`` CPU threads, in one run;
``--images`` sizes the data so that fine-tuning, not the costs both arms share, fills a
trial (``--dry-run`` runs both arms on the CPU, to check the script without a GPU)::

    python benchmarks/byo_model.py --json --gpu-vs-cpu --cpu-threads 16 --cpu-trials 2

Every trial of that comparison prunes channels and fine-tunes one epoch; the data is
sized (``--cpu-finetune-s``) from the CPU's measured training throughput. Beside the
whole-trial speed-up it reports the compress phase's alone (pruning and fine-tune,
without measuring the artifact, which costs both arms the same).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the user-style models the tests also use

from _output import emit  # noqa: E402
from user_models import CifarResNet, OddMix, bert_classifier, loaders  # noqa: E402

import autoslim  # noqa: E402
from autoslim.artifact import artifact_bytes, save_artifact  # noqa: E402

SPACE = "structured_quant"


def user_training(model: nn.Module, train, epochs: int, device: str) -> nn.Module:
    """What a user's own training script does before autoslim sees the model."""
    from autoslim.data import call_model, split_batch, to_device

    torch.manual_seed(0)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(epochs):
        for batch in train:
            inputs, targets = split_batch(batch)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(
                call_model(model, to_device(inputs, device)), targets.to(device)
            )
            loss.backward()
            optimizer.step()
    return model.cpu().eval()


def models(quick: bool) -> dict[str, tuple]:
    """name -> (untrained model, loaders, user training epochs)."""
    sizes = (512, 256, 256) if quick else (2048, 512, 512)
    # hard: noisy images and a token planted anywhere, so compression visibly costs accuracy
    return {
        "cifar_resnet": (CifarResNet(), loaders("image", sizes=sizes, hard=True), 3),
        "bert_classifier": (bert_classifier(), loaders("bert", sizes=sizes, hard=True), 3),
        "odd_mix": (OddMix(), loaders("tokens", sizes=sizes, hard=True), 12),  # a GRU learns slower
    }


def replay(run, trial: int, out: Path) -> tuple[bool, float]:
    """Apply the trial's exported recipe to the same model and data; (same artifact
    bytes, replayed val metric minus the search's record)."""
    recipe = run.recipe(trial)
    exported = out / f"{trial}.yaml"
    recipe.save(exported)
    model = autoslim.apply(exported, task=run.task)
    folder = save_artifact(model, recipe, out / f"replay_{trial}", task=run.task)
    searched = run.path / "artifacts" / f"trial_{trial}"
    same = (folder / "weights.safetensors").read_bytes() == (
        searched / "weights.safetensors"
    ).read_bytes() and artifact_bytes(folder) == artifact_bytes(searched)
    recorded = float(run.table().set_index("trial").loc[trial, run.metric_name])
    replayed = run.task.evaluate(autoslim.load(folder, task=run.task), "val")
    return same, replayed - recorded


def search_one(name: str, model, data, *, trials: int, device: str, out: Path, threads=None):
    return autoslim.compress(
        model,
        train=data["train"],
        val=data["val"],
        test=data["test"],
        space=SPACE,
        trials=trials,
        out=out / name,
        name=name,
        device=device,
        threads=threads,
        target={"batch_size": 16, "repeats": 10},
        progress=False,
    )


def summary(run, device: str, replayed: tuple[bool, float] | None) -> dict:
    table = run.table()
    done = table[table["state"] == "COMPLETE"]
    measured = done[done["repeat_of"].isna()] if "repeat_of" in done else done  # not re-used
    return {
        "trials_completed": int(len(done)),
        "trials_failed": int((table["state"] == "FAIL").sum()),
        "fail_reasons": sorted(set(table.loc[table["state"] == "FAIL", "fail_reason"])),
        "front_size": int(len(run.front())),
        "replay_bytes_equal": None if replayed is None else replayed[0],
        "replay_metric_diff": None if replayed is None else round(replayed[1], 6),
        "seconds_per_trial": round(float(measured["seconds"].mean()), 2) if len(done) else math.nan,
        "trials_repeated": int(len(done) - len(measured)),
        "device": device,
        "baseline_metric": run.baseline.get(run.metric_name),
        "front": [
            {k: row[k] for k in ("trial", run.metric_name, "size_bytes", "latency_ms")}
            for row in run.front().to_dict("records")
        ],
    }


def byo(args) -> dict:
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    results = {}
    with tempfile.TemporaryDirectory(prefix="byo-") as tmp:
        out = Path(tmp)
        for name, (model, data, epochs) in models(args.quick).items():
            print(f"{name}: user training, then {args.trials} trials", file=sys.stderr)
            model = user_training(model, data["train"], epochs, device)
            start = time.perf_counter()
            run = search_one(name, model, data, trials=args.trials, device=device, out=out)
            front = run.front()
            smallest = int(front.sort_values("size_bytes")["trial"].iloc[0]) if len(front) else None
            replayed = None if smallest is None else replay(run, smallest, out / f"{name}_replay")
            results[name] = summary(run, device, replayed)
            results[name]["search_seconds"] = round(time.perf_counter() - start, 1)
            print(f"  {json.dumps(results[name])[:300]}", file=sys.stderr)
    return {"models": results}


def resnet18_cifar() -> nn.Module:
    """torchvision's ResNet-18 layout for 32x32 inputs: 11.2 M parameters."""
    return CifarResNet(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2))


# Every trial prunes channels and fine-tunes for one epoch (the preset also has trials
# without a fine-tune, which would time the measurement, not the training), then picks a
# width. Fixed epochs make each arm's trial the same work.
GPU_VS_CPU_SPACE = [
    {
        "type": "prune.structured",
        "ratio": {"low": 0.2, "high": 0.6},
        "fine_tune_epochs": {"low": 1, "high": 1},
        "lr": {"low": 1.0e-3, "high": 1.0e-3},
        "optional": False,
    },
    {"type": "quantize.weight", "bits": [8, 4, "fp32"], "per_layer": False},
]
GPU_VS_CPU_BATCH = 128


def cpu_images_per_second(threads: int, steps: int = 3) -> float:
    """Training throughput of the unpruned ResNet-18 on ``threads`` CPU threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = resnet18_cifar().train()
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        x = torch.randn(GPU_VS_CPU_BATCH, 3, 32, 32)
        y = torch.randint(0, 10, (GPU_VS_CPU_BATCH,))
        times = []
        for _ in range(steps + 1):  # the first step warms up
            start = time.perf_counter()
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        return GPU_VS_CPU_BATCH / (sum(times[1:]) / steps)
    finally:
        torch.set_num_threads(before)


def sized_images(args) -> int:
    """``--images``, or (0) as many as the CPU arm fine-tunes in ``--cpu-finetune-s``."""
    if args.images:
        return args.images
    rate = cpu_images_per_second(args.cpu_threads)
    batches = max(8, round(rate * args.cpu_finetune_s / GPU_VS_CPU_BATCH))
    print(f"CPU trains {rate:.0f} images/s: {batches} batches of training data", file=sys.stderr)
    return batches * GPU_VS_CPU_BATCH


def timed_arm(model, data, *, device: str, gpu: str, trials: int, out: Path, threads: int):
    start = time.perf_counter()
    run = autoslim.compress(
        model,
        train=data["train"],
        val=data["val"],
        space=GPU_VS_CPU_SPACE,
        trials=trials,
        out=out,
        name=out.name,
        device=device,
        threads=threads,
        target={"device": gpu, "batch_size": GPU_VS_CPU_BATCH, "repeats": 10, "threads": threads},
        progress=True,
    )
    table = run.table().set_index("trial")
    fresh = table[(table["state"] == "COMPLETE") & table["repeat_of"].isna()]

    def per_trial(column: str) -> dict[int, float]:
        return {int(t): round(float(v), 2) for t, v in fresh[column].items()}

    return {
        "trials_completed": int((table["state"] == "COMPLETE").sum()),
        "trials_failed": int((table["state"] == "FAIL").sum()),
        "params": {int(t): run.study.trials[t].params for t in fresh.index},
        "seconds": per_trial("seconds"),
        "compress_s": per_trial("compress_s"),
        "measure_s": per_trial("measure_s"),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def gpu_vs_cpu(args) -> dict:
    """The same trials (same seed, so the same suggestions) with fine-tunes on CUDA and on
    ``--cpu-threads`` CPU threads; latency measured on the GPU in both arms."""
    gpu = "cuda" if torch.cuda.is_available() else None
    if gpu is None and not args.dry_run:
        raise SystemExit("error: --gpu-vs-cpu needs a CUDA GPU (--dry-run: both arms on the CPU)")
    gpu = gpu or "cpu"
    images = sized_images(args)
    data = loaders("image", sizes=(images, 256, 256), batch_size=GPU_VS_CPU_BATCH, image_size=32)
    model = user_training(resnet18_cifar(), data["train"], 1, gpu)
    arms = {}
    with tempfile.TemporaryDirectory(prefix="byo-gpu-") as tmp:
        for arm, device, trials in (("cuda", gpu, args.trials), ("cpu", "cpu", args.cpu_trials)):
            arms[arm] = timed_arm(
                model, data, device=device, gpu=gpu, trials=trials,
                out=Path(tmp) / f"resnet18_{arm}", threads=args.cpu_threads,
            )  # fmt: skip
            print(f"{arm}: {json.dumps(arms[arm])}", file=sys.stderr)
    shared = sorted(
        t for t in set(arms["cuda"]["seconds"]) & set(arms["cpu"]["seconds"])
        if arms["cuda"]["params"][t] == arms["cpu"]["params"][t]
    )  # fmt: skip

    def mean(arm: str, column: str) -> float:
        return sum(arms[arm][column][t] for t in shared) / len(shared) if shared else math.nan

    trial_s = {arm: round(mean(arm, "seconds"), 2) for arm in arms}
    compress_s = {arm: round(mean(arm, "compress_s"), 2) for arm in arms}
    return {
        "model": "resnet18_cifar",
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images": images,
        "cpu_threads": args.cpu_threads,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "compared_trials": shared,
        "mean_trial_s": trial_s,
        "speedup": round(trial_s["cpu"] / trial_s["cuda"], 2) if shared else None,
        # pruning and its fine-tune alone, without measuring the artifact (same in both)
        "mean_compress_s": compress_s,
        "compress_speedup": round(compress_s["cpu"] / compress_s["cuda"], 2) if shared else None,
        "arms": arms,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--quick", action="store_true", help="smaller data (2-core box)")
    parser.add_argument("--trials", type=int, default=12, help="trials per search")
    parser.add_argument("--device", default="auto", help="fine-tune device: cpu, cuda, auto")
    parser.add_argument(
        "--gpu-vs-cpu", action="store_true", help="time ResNet-18 fine-tunes on GPU vs CPU"
    )
    parser.add_argument("--cpu-threads", type=int, default=16, help="CPU arm's threads")
    parser.add_argument("--cpu-trials", type=int, default=2, help="trials in the CPU arm")
    parser.add_argument(
        "--images",
        type=int,
        default=0,
        help="training images (default: what the CPU arm fine-tunes in --cpu-finetune-s)",
    )
    parser.add_argument(
        "--cpu-finetune-s",
        type=float,
        default=90.0,
        help="CPU seconds per fine-tune that size the data when --images is 0",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="--gpu-vs-cpu without a GPU: both arms on the CPU"
    )
    args = parser.parse_args(argv)
    result = gpu_vs_cpu(args) if args.gpu_vs_cpu else byo(args)
    emit(result, out=args.out, print_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
