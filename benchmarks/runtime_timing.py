"""How ONNX Runtime's threads disturb paired timing against eager PyTorch on few cores.

The digits CNN at int8 on ONNX Runtime (static QDQ), timed in paired rounds against the
fp32 model in eager PyTorch, as a search measures a trial, with ONNX Runtime's idle
threads spinning (its default) or not (how autoslim times), at 1 and 2 threads, a few
repeats each. ``reference_ms`` is the eager model's median inside the pairs and
``reference_alone_ms`` its median timed alone, so the slowdown spinning inflicts on the
reference, and the run-to-run spread of the ratio, are read directly.

    python benchmarks/runtime_timing.py --out benchmarks/results/runtime_timing_2core.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

from autoslim.artifact import save_artifact
from autoslim.baseline import load_baseline
from autoslim.deploy.runtimes import runtime_named
from autoslim.measure.latency import time_calls
from autoslim.measure.paired import paired_latency
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.task import load_task

RECIPE = {
    "task": {"entry": "autoslim.tasks.digits:make_task", "params": {"width": 32, "epochs": 30}},
    "target": {"runtime": "onnxruntime", "batch_size": 64},
    "stages": [{"kind": "quantize", "default": 8}],
}


def session(path: Path, threads: int, spin: bool):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    run = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feed: run.run(None, {run.get_inputs()[0].name: feed})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    recipe = Recipe.from_dict(RECIPE)
    task = load_task(recipe.task)
    batch = task.example_batch(64)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        artifact = save_artifact(apply_recipe(recipe, task=task), recipe, Path(tmp) / "a")
        onnx_file = runtime_named("onnxruntime").build(artifact, task)
        reference = load_baseline(recipe.task, task, log=False).model.eval()
        feed = batch.numpy()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                alone = time_calls(lambda: reference(batch), warmup=10, repeats=50).median_ms
                for spin in (True, False):
                    run = session(onnx_file, threads, spin)
                    for repeat in range(args.repeats):
                        paired = paired_latency(
                            lambda r=run: r(feed), lambda: reference(batch), warmup=10, rounds=30
                        )
                        rows.append(
                            {
                                "threads": threads,
                                "spinning": spin,
                                "repeat": repeat,
                                "latency_ratio": round(paired.ratio, 4),
                                "latency_ratio_ci": [
                                    round(paired.ratio_lo, 4),
                                    round(paired.ratio_hi, 4),
                                ],
                                "onnxruntime_ms": round(paired.latency_ms, 3),
                                "reference_ms": round(paired.reference_ms, 3),
                                "reference_alone_ms": round(alone, 3),
                            }
                        )
                        print(json.dumps(rows[-1]), file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
