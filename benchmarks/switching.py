"""Ship the front: a bundle of front points switched at run time, against each point alone.

A search's front (by default MNIST-1D's residual CNN under structured pruning, on accuracy
and latency: ``benchmarks/experiments/switching_rescnn.yaml``, searched here) gives three
points: the most accurate, the knee and the fastest. They are packed
into one bundle (``autoslim export --bundle``), loaded once, and a request trace is
replayed through three arms:

- ``most_accurate``: the most accurate point alone;
- ``fastest``: the fastest point alone;
- ``bundle``: the bundle under a p90 latency budget (:class:`LatencyBudget`).

Arrivals are Poisson, with a rate that steps up and one that swings as a sinusoid; the
rates are set from the points' throughputs measured here (the peak is their geometric
mean), so the peak overloads the most accurate point and not the fastest. Service times are real calls of each point on this
machine; the queue runs in virtual time (:mod:`autoslim.bundle.replay`). Each request
is scored with the point that served it, on the task's test split.

    python benchmarks/switching.py --json [--run RUN_DIR] [--quick] [--out FILE]

Bytes: each point of that front was pruned and fine-tuned on its own, so the points share
almost no tensor and the bundle costs about their sum. A second front, the digits search
(post-training quantization, which leaves tensors equal across points), is bundled too,
for its bytes alone (``"bytes"`` in the JSON).

Bad input (an unknown point, a non-positive budget, a bundle of another task) is one
line and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _output import emit  # noqa: E402
from deploy import machine  # noqa: E402

from autoslim.bundle import (  # noqa: E402
    LatencyBudget,
    Manual,
    load_bundle,
    poisson_arrivals,
    read_manifest,
    replay,
    sine_rate,
    step_rate,
)
from autoslim.bundle.from_run import bundle_run  # noqa: E402
from autoslim.bundle.module import time_switches  # noqa: E402
from autoslim.bundle.store import same_task, task_ref  # noqa: E402
from autoslim.errors import AutoslimError  # noqa: E402
from autoslim.run import load_run  # noqa: E402
from autoslim.task import load_task  # noqa: E402
from autoslim.trust import trusted  # noqa: E402

EXPERIMENT = ROOT / "benchmarks" / "experiments" / "switching_rescnn.yaml"
# Post-training quantization leaves tensors equal across points: where bundles save bytes.
BYTES_EXPERIMENT = ROOT / "experiments" / "digits.yaml"
RULES = ["max accuracy", "knee", "min latency_ms"]
BYTES_RULES = ["max accuracy", "knee", "min size_bytes"]
MAX_BATCH = 16
WINDOW_S = 0.5  # violation windows of virtual time
# The default p90 budget, in full-batch service times of the most accurate point: room
# for a request to wait out a batch in service and its own, with Poisson bursts on top.
BUDGET_SERVICE_TIMES = 6


def searched_run(folder: Path, experiment: Path, trials: int) -> Path:
    """A fresh search of ``experiment`` under ``folder``."""
    out = folder / experiment.stem
    subprocess.run(
        [sys.executable, "-m", "autoslim", "search", str(experiment), "--trials", str(trials)]
        + ["--out", str(out), "--quiet"],
        check=True,
    )
    return out


def bytes_of(run_dir: Path, folder: Path) -> dict:
    """What bundling three points of a run saves on disk, without loading them."""
    run = load_run(run_dir)
    try:
        manifest = bundle_run(run, folder, rules=BYTES_RULES, quiet=True)
    except AutoslimError:  # the rules chose fewer than two trials: the whole front
        manifest = bundle_run(run, folder, quiet=True)
    return {
        "experiment": run.info["experiment"],
        "points": [p.name for p in manifest.points],
        "bundle_bytes": manifest.bytes_bundle,
        "separate_bytes": manifest.bytes_separate,
        "saved_bytes": manifest.bytes_saved,
        "shared_tensors": manifest.shared_tensors,
    }


def service_seconds(bundle, inputs, rows: int, rounds: int = 60, seed: int = 0) -> list[float]:
    """Mean seconds of one call on ``rows`` random rows, per point of the ladder: served
    as the replay serves (random rows, each call timed alone), round-robin over the points
    so that a noisy stretch of the machine falls on all of them alike."""
    rng = np.random.default_rng(seed)
    times = [[] for _ in bundle.ladder]
    with torch.inference_mode():
        for round_ in range(rounds + 5):
            for point in bundle.ladder:
                index = torch.as_tensor(rng.integers(0, len(inputs), rows))
                x = inputs[index]
                bundle.select(point.index)
                start = time.perf_counter()
                bundle(x)
                if round_ >= 5:  # the first rounds warm caches and allocators
                    times[point.index].append(time.perf_counter() - start)
    bundle.select(0)
    return [float(np.mean(t)) for t in times]


def traces(capacity: list[float], duration: float, seed: int) -> dict[str, np.ndarray]:
    """Arrival times of the step and the sinusoid, in requests set by the capacities."""
    slow, fast = capacity[0], capacity[-1]
    if fast < 1.3 * slow:
        print(
            f"warning: the fastest point serves only {fast / slow:.2f}x the most accurate "
            "one's requests; the peak leaves little room on either",
            file=sys.stderr,
        )
    high = math.sqrt(slow * fast)  # over the most accurate point's capacity, under the fastest's
    low = 0.5 * slow
    mean = (low + high) / 2
    return {
        "step": poisson_arrivals(step_rate(low, high, duration / 2), duration, high, seed),
        "sine": poisson_arrivals(
            sine_rate(mean, high - mean, duration / 3), duration, high, seed + 1
        ),
    }


def arm_result(trace, budget_ms: float) -> dict:
    return {
        "violation_share": round(trace.violation_share(budget_ms, WINDOW_S), 4),
        "mean_metric": round(trace.mean_metric(), 4),
        "switches": trace.switches,
        "requests": len(trace.arrival),
        "p90_latency_ms": round(float(np.quantile(trace.latency_ms, 0.9)), 3),
    }


def pooled(results: list, budget_ms: float) -> dict:
    """An arm over every trace: windows and requests of all traces together."""
    shares = [t.violation_share(budget_ms, WINDOW_S) for t in results]
    windows = [len(np.unique(np.floor(t.finish / WINDOW_S))) for t in results]
    correct = np.concatenate([t.correct for t in results])
    return {
        "violation_share": round(float(np.average(shares, weights=windows)), 4),
        "mean_metric": round(float(np.mean(correct)), 4),
        "switches": int(sum(t.switches for t in results)),
    }


def run_benchmark(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="switching-") as tmp:
        folder = Path(tmp)
        run_dir = args.run or searched_run(folder, EXPERIMENT, args.trials)
        run = load_run(run_dir)
        bundle_dir = args.bundle or folder / "bundle"
        if args.bundle is None:
            try:
                bundle_run(run, bundle_dir, rules=RULES, quiet=True)
            except AutoslimError:  # the rules chose one trial: bundle the whole front
                bundle_run(run, bundle_dir, quiet=True)
        manifest = read_manifest(bundle_dir)
        recipe = run.recipe(int(run.front()["trial"].iloc[0]))
        if not same_task(task_ref(recipe), manifest.task):
            raise AutoslimError(f"bundle {bundle_dir} was made for another task than run {run_dir}")
        with trusted(True):  # the run's own task, which its search already ran
            task = load_task(recipe.task)
            bundle = load_bundle(bundle_dir, task=task)
        bundle.to(args.device)
        for point in args.point or []:
            bundle.index_of(point)  # an unknown name is one line before minutes of replay
        torch.set_num_threads(args.threads)
        test = task.data.test
        inputs = test.inputs.to(args.device)
        result = replay_arms(bundle, inputs, test.targets, manifest, args)
        bytes_dir = args.bytes_run or searched_run(folder, BYTES_EXPERIMENT, args.trials)
        result["bytes"] = {
            "switched": {k: result[k] for k in ("bundle_bytes", "separate_bytes", "saved_bytes")},
            "quantized_front": bytes_of(bytes_dir, folder / "bytes_bundle"),
        }
    return result


def replay_arms(bundle, inputs, targets, manifest, args) -> dict:
    seconds = service_seconds(bundle, inputs, MAX_BATCH)
    capacity = [MAX_BATCH / s for s in seconds]
    budget_ms = args.budget_ms or BUDGET_SERVICE_TIMES * seconds[0] * 1e3
    last = len(bundle.ladder) - 1
    policies = {
        "most_accurate": lambda: Manual(0),
        "fastest": lambda: Manual(last),
        "bundle": lambda: LatencyBudget(budget_ms, margin=0.2, min_dwell=32),
    }
    per_trace, by_arm = {}, {arm: [] for arm in policies}
    for name, arrivals in traces(capacity, args.duration, args.seed).items():
        per_trace[name] = {}
        for arm, make in policies.items():
            bundle.select(0)
            trace = replay(bundle, make(), arrivals, inputs, targets, max_batch=MAX_BATCH)
            by_arm[arm].append(trace)
            per_trace[name][arm] = arm_result(trace, budget_ms)
            print(f"{name} {arm}: {per_trace[name][arm]}", file=sys.stderr)
    switch = time_switches(bundle)
    in_replay = [ms for t in by_arm["bundle"] for ms in t.switch_ms]
    largest = max(bundle.resident_bytes([p.name]) for p in bundle.ladder)
    return {
        "machine": machine(),
        "device": args.device,
        "threads": args.threads,
        "points": [
            {"name": p.name, "roles": p.roles, "values": p.values, "bytes_alone": p.bytes_alone}
            for p in manifest.points
        ],
        "bundle_bytes": manifest.bytes_bundle,
        "separate_bytes": manifest.bytes_separate,
        "saved_bytes": manifest.bytes_saved,
        "shared_tensors": manifest.shared_tensors,
        "memory_bytes": {"bundle": bundle.resident_bytes(), "largest_point": largest},
        "switch_ms": {
            "median": round(float(np.median(switch)), 5),
            "p99": round(float(np.quantile(switch, 0.99)), 5),
            "in_replay_max": round(max(in_replay, default=0.0), 5),
        },
        "service_ms_at_batch": {
            "batch": MAX_BATCH,
            "points": [round(s * 1e3, 4) for s in seconds],
        },
        "budget_ms": round(budget_ms, 4),
        "window_s": WINDOW_S,
        "duration_s": args.duration,
        "arms": {arm: pooled(results, budget_ms) for arm, results in by_arm.items()},
        "traces": per_trace,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--run", type=Path, help="a finished run (default: search one here)")
    parser.add_argument("--bundle", type=Path, help="a bundle of --run's task (default: build)")
    parser.add_argument(
        "--bytes-run",
        type=Path,
        help="a finished run whose three points are bundled for bytes alone "
        "(default: search experiments/digits.yaml)",
    )
    parser.add_argument("--trials", type=int, default=14, help="trials of the search")
    parser.add_argument(
        "--budget-ms",
        type=float,
        help="p90 latency budget (default: 6x "
        "the most accurate point's service time at full batch)",
    )
    parser.add_argument("--point", action="append", help="check this point name exists")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per trace")
    parser.add_argument("--quick", action="store_true", help="10-second traces")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads serving")
    parser.add_argument("--seed", type=int, default=0, help="arrival seed")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 10.0
    try:
        if args.budget_ms is not None:
            LatencyBudget(args.budget_ms)  # a non-positive budget: one line, before any work
        result = run_benchmark(args)
    except AutoslimError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    emit(result, out=args.out, print_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
