"""The spine's acceptance run on digits, measured end to end in one process tree.

1. Run (or resume) the default digits search in a fresh run folder.
2. Pick the smallest front point within 1 pt of the fp32 baseline (validation split).
3. Export its recipe, apply it to a fresh model, measure the new artifact.
4. Print a table and, with ``--json``, one JSON object: bytes ratio, accuracy drops
   (validation and test), whether the replay reproduced size and accuracy, latency ratio.

    python benchmarks/spine_digits.py [--trials 40] [--out runs/bench-digits] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from autoslim.artifact import save_artifact
from autoslim.measure import measure_in_subprocess
from autoslim.pipeline import apply_recipe
from autoslim.results.select import select_trial
from autoslim.searching.driver import Overrides, search

RULE = "min size_bytes where accuracy_drop <= 0.01"


def run(trials: int, out: Path, experiment: Path) -> dict:
    start = time.monotonic()
    result = search(experiment, out=out, overrides=Overrides(trials=trials), progress=False)
    search_seconds = time.monotonic() - start
    base = result.baseline
    number = select_trial(result.table(), result.objectives, base, RULE)
    recipe = result.recipe(number)
    searched = next(t for t in result.study.trials if t.number == number).user_attrs["measured"]
    replay_dir = save_artifact(apply_recipe(recipe), recipe, out / "replay")
    replay = measure_in_subprocess(replay_dir, recipe.target, splits=("val", "test"))
    return {
        "trials": trials,
        "search_seconds": round(search_seconds, 1),
        "front_size": len(result.front()),
        "rule": RULE,
        "chosen_trial": number,
        "baseline": {k: base[k] for k in ("size_bytes", "accuracy", "test_accuracy", "latency_ms")},
        "searched": {k: searched[k] for k in ("size_bytes", "accuracy", "latency_ms")},
        "replayed": {
            k: replay[k] for k in ("size_bytes", "accuracy", "test_accuracy", "latency_ms")
        },
        "bytes_ratio": replay["size_bytes"] / base["size_bytes"],
        "val_drop_pt": 100 * (base["accuracy"] - replay["accuracy"]),
        "test_drop_pt": 100 * (base["test_accuracy"] - replay["test_accuracy"]),
        "replay_size_exact": replay["size_bytes"] == searched["size_bytes"],
        "replay_accuracy_diff_pt": 100 * abs(replay["accuracy"] - searched["accuracy"]),
        "latency_ratio": replay["latency_ms"] / base["latency_ms"],
    }


def print_table(r: dict) -> None:
    rows = [
        (
            "fp32 baseline",
            r["baseline"]["size_bytes"],
            r["baseline"]["accuracy"],
            r["baseline"]["test_accuracy"],
            r["baseline"]["latency_ms"],
        ),
        (
            f"trial {r['chosen_trial']} (replayed)",
            r["replayed"]["size_bytes"],
            r["replayed"]["accuracy"],
            r["replayed"]["test_accuracy"],
            r["replayed"]["latency_ms"],
        ),
    ]
    print(
        f"digits search: {r['trials']} trials in {r['search_seconds']} s, front of {r['front_size']}"
    )
    print(f"{'model':<26}{'bytes':>10}{'val acc':>10}{'test acc':>10}{'latency ms':>12}")
    for name, size, val, test, lat in rows:
        print(f"{name:<26}{size:>10}{val:>10.4f}{test:>10.4f}{lat:>12.3f}")
    print(
        f"bytes ratio {r['bytes_ratio']:.3f} (goal <= 0.167); val drop {r['val_drop_pt']:.2f} pt, "
        f"test drop {r['test_drop_pt']:.2f} pt; latency ratio {r['latency_ratio']:.2f}"
    )
    print(
        f"replay: size exact {r['replay_size_exact']}, accuracy diff {r['replay_accuracy_diff_pt']:.2f} pt"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-digits"))
    parser.add_argument(
        "--experiment", type=Path, default=Path(__file__).parents[1] / "experiments/digits.yaml"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.trials, args.out, args.experiment)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
