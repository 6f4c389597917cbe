"""Measure one artifact: every objective, from the files on disk, in a fresh process.

A fresh process per measurement means the threads, allocator state and caches of the
search (which just trained a model) never leak into latency or memory numbers, and it is
the same code path as ``autoslim evaluate``. Run as a module it prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from autoslim.errors import AutoslimError, TrialFailed
from autoslim.recipe import Target

# Objectives an experiment may name, besides the task's own metric name.
OBJECTIVE_NAMES = ("size_bytes", "latency_ms", "peak_memory_bytes", "energy_mj")


def _warm_up_runtime(device: str) -> None:
    """Initialise thread pools and kernels so their one-off memory is not billed to the model."""
    x = torch.randn(8, 4, 8, 8, device=device)
    torch.nn.functional.conv2d(x, torch.randn(4, 4, 3, 3, device=device))
    torch.nn.functional.linear(x.flatten(1), torch.randn(4, 256, device=device))
    if device == "cpu":
        from autoslim.techniques.kernels import int8_engine_warm_up

        int8_engine_warm_up()


def measure_artifact(path: str | Path, target: Target, *, splits: tuple[str, ...] = ("val",)) -> dict:
    """Load the artifact at ``path`` and measure it under ``target``.

    Returns ``{metric}`` (validation), ``test_{metric}`` if asked, ``size_bytes``,
    ``latency_ms`` (+ p10/p90), ``peak_memory_bytes``, ``energy_mj`` and ``energy_source``.
    """
    from autoslim.artifact import load_artifact
    from autoslim.measure.energy import estimate_energy_mj, nvml_energy_mj
    from autoslim.measure.latency import model_latency
    from autoslim.measure.memory import peak_memory_bytes
    from autoslim.recipe import Recipe
    from autoslim.sparse.runtime import warm_crossovers
    from autoslim.task import load_task

    torch.set_num_threads(target.threads)
    task = load_task(Recipe.load(Path(path) / "recipe.yaml").task)
    batch = task.example_batch(target.batch_size).to(target.device)
    _warm_up_runtime(target.device)
    # Crossover timings allocate test matrices; take them (or their cache) before the peak window.
    warm_crossovers(load_artifact(path, task=task, runtime=False).model, target)
    loaded: dict = {}

    def load_and_run() -> None:
        loaded["artifact"] = load_artifact(path, task=task)
        loaded["artifact"].model.to(target.device)
        with torch.inference_mode():
            loaded["artifact"].model(batch)

    peak = peak_memory_bytes(load_and_run, device=target.device)
    artifact = loaded["artifact"]
    model = artifact.model
    latency = model_latency(model, batch, warmup=target.warmup, repeats=target.repeats)
    values = {
        "size_bytes": artifact.size_bytes,
        "latency_ms": latency.median_ms,
        "latency_p10_ms": latency.p10_ms,
        "latency_p90_ms": latency.p90_ms,
        "peak_memory_bytes": peak,
    }
    if target.device == "cuda":
        with torch.inference_mode():
            values["energy_mj"] = nvml_energy_mj(lambda: model(batch))
        values["energy_source"] = "nvml"
    else:
        values["energy_mj"] = estimate_energy_mj(model, batch)
        values["energy_source"] = "estimated"
    model.cpu()
    for split in splits:
        key = task.metric_name if split == "val" else f"{split}_{task.metric_name}"
        values[key] = task.evaluate(model, split)
    return values


def measure_in_subprocess(
    path: str | Path, target: Target, *, splits: tuple[str, ...] = ("val",), timeout: float = 900
) -> dict:
    """Run :func:`measure_artifact` in a fresh Python process and return its values."""
    cmd = [sys.executable, "-m", "autoslim.measure.runner", str(path),
           "--target", target.model_dump_json(), "--splits", ",".join(splits)]
    env = {**os.environ, "OMP_NUM_THREADS": str(target.threads)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise TrialFailed(f"measuring {path} took longer than {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        if proc.returncode < 0:
            reason = f"measuring process killed by signal {-proc.returncode} (out of memory?)"
        raise TrialFailed(f"measurement failed: {reason}")
    values = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise TrialFailed(f"measurement gave non-finite {', '.join(bad)}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoslim.measure.runner")
    parser.add_argument("artifact")
    parser.add_argument("--target", default="{}")
    parser.add_argument("--splits", default="val")
    args = parser.parse_args(argv)
    try:
        target = Target.model_validate_json(args.target)
        values = measure_artifact(args.artifact, target, splits=tuple(args.splits.split(",")))
    except AutoslimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 — the parent records the reason, not a traceback
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
