"""What one measurement costs: a child forked from the measuring server against a new interpreter.

Builds an int8 artifact of the MNIST-1D MLP (or ``--task``) and measures it ``--rounds``
times each way, alternating, with the same target. Prints wall seconds per measurement and
the values both ways report: exact values (bytes, accuracies) must agree; latency and peak
memory are measured, so they may differ.

    python benchmarks/measure_overhead.py [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from autoslim.artifact import save_artifact
from autoslim.measure import runner
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.tasks.mnist1d import MODELS

WAYS = {"forked from the server": runner._run_in_forked_child, "new interpreter": runner._run_in_new_interpreter}
SHOWN = ("size_bytes", "accuracy", "test_accuracy", "latency_ms", "peak_memory_bytes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--task", default="mlp", choices=MODELS, help="MNIST-1D model")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    recipe = Recipe.from_dict({"task": {"entry": "autoslim.tasks.mnist1d:make_task", "params": {"model": args.task}},
                               "target": {"threads": 2, "batch_size": 64, "warmup": 10, "repeats": 30},
                               "stages": [{"kind": "quantize", "default": 8}]})
    env = {**os.environ, "OMP_NUM_THREADS": str(recipe.target.threads)}
    rows: dict[str, list[dict]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as tmp:
        artifact = save_artifact(apply_recipe(recipe), recipe, Path(tmp) / "art")
        for _ in range(args.rounds):
            for way, measure in WAYS.items():
                start = time.perf_counter()
                code, text = measure(artifact, recipe.target, ("val", "test"), env, 600)
                if code != 0:
                    print(f"{way}: measurement failed: {text}", file=sys.stderr)
                    return 1
                rows[way].append({"seconds": time.perf_counter() - start,
                                  **{k: json.loads(text)[k] for k in SHOWN}})
    result = {"task": args.task, "rounds": args.rounds, "measurements": rows,
              "median_seconds": {way: statistics.median(r["seconds"] for r in rs) for way, rs in rows.items()}}
    if args.json:
        print(json.dumps(result))
        return 0
    for way, rs in rows.items():
        print(f"{way}: median {result['median_seconds'][way]:.2f} s per measurement")
        for r in rs:
            print("  " + ", ".join(f"{k} {r[k]:.4g}" if isinstance(r[k], float) else f"{k} {r[k]}"
                                   for k in ("seconds", *SHOWN)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
