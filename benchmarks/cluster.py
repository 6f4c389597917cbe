"""Search throughput with parallel workers, Ray's overhead per trial, what one measurement costs.

Two ways to run trials in parallel, on the same digits experiment:

- ``procs``: N ``autoslim search`` processes on one run folder (Optuna-native workers
  sharing the journal file; with ``--storage postgresql://...`` they could sit on N machines);
- ``ray``: one ``autoslim search --backend ray`` with ``search.ray.max_concurrent: N``.

Throughput is completed trials per hour over the span from the first trial's start to the
last trial's end, read from the study's own timestamps: the one-off baseline training,
Ray's start-up and the interpreter start-up of each worker are outside it. Each trial
trains with 2 threads, so N workers need 2N cores to scale. Ray's overhead is ray minus
procs at 1 worker, per round, with ``--rounds`` interleaving the modes so a load change on a
shared machine hits both. The early-stopping rows replay the default rule on the recorded
full-budget searches of seeds no setting was chosen on,
``benchmarks/results/early_stopping_records_seeds6-8.json``
(``benchmarks/early_stopping.py --from-records``).

``--measurement-cost`` measures instead what measuring one trial's artifact costs: an int8
artifact of an MNIST-1D model (``--task``, default the MLP) is measured ``--rounds`` times
each way, alternating, by a child forked from the measuring server and by a new
interpreter. Exact values (bytes, accuracies) must agree both ways; latency and peak
memory are measured, so they may differ.

    python benchmarks/cluster.py [--mode procs,ray] [--workers 1,2,4,8] [--trials-per-worker 4]
        [--rounds 1] [--json]
    python benchmarks/cluster.py --measurement-cost [--task mlp] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
EARLY_STOPPING_RECORDS = ROOT / "benchmarks" / "results" / "early_stopping_records_seeds6-8.json"


def experiment(folder: Path, name: str, trials: int, workers: int) -> Path:
    """The default digits experiment with a fixed fine-tune length, so every trial costs
    about the same and throughput compares like with like."""
    spec = yaml.safe_load((ROOT / "experiments" / "digits.yaml").read_text())
    space = yaml.safe_load((ROOT / "autoslim" / "search_spaces" / "prune_quant.yaml").read_text())[
        "components"
    ]
    space[0].update({"optional": False, "fine_tune_epochs": {"low": 2, "high": 2}})
    spec.update(
        {
            "name": name,
            "space": space,
            "constraints": [],
            "search": {
                "trials": trials,
                "sampler": "random",
                "seed": 0,
                "keep_artifacts": "none",
                "ray": {"max_concurrent": workers, "cpus_per_trial": 2},
            },
            "target": {**spec["target"], "repeats": 10},
        }
    )
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_procs(exp: Path, out: Path, workers: int) -> float:
    cmd = [sys.executable, "-m", "autoslim.cli", "search", str(exp), "--out", str(out)]
    start = time.monotonic()
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(workers)
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(
                f"worker failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}"
            )
    return time.monotonic() - start


def run_ray(exp: Path, out: Path, workers: int) -> float:
    cmd = [
        sys.executable,
        "-m",
        "autoslim.cli",
        "search",
        str(exp),
        "--out",
        str(out),
        "--backend",
        "ray",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    start = time.monotonic()
    proc = subprocess.run(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    if proc.returncode != 0:
        raise SystemExit(f"ray search failed: {proc.stderr.strip().splitlines()[-1]}")
    return time.monotonic() - start


def span_stats(out: Path) -> dict:
    from optuna.trial import TrialState

    from autoslim.run import load_run

    trials = [t for t in load_run(out).study.trials if t.state == TrialState.COMPLETE]
    starts = [t.datetime_start.timestamp() for t in trials]
    ends = [t.datetime_complete.timestamp() for t in trials]
    span = max(ends) - min(starts)
    durations = sorted(e - s for s, e in zip(starts, ends, strict=True))
    # Idle time between consecutive trials of one worker: scheduling, worker start-up.
    gap = (span - sum(durations)) / max(len(trials) - 1, 1)
    return {
        "completed": len(trials),
        "span_s": round(span, 1),
        "trials_per_hour": round(3600 * len(trials) / span, 1),
        "median_trial_s": round(durations[len(durations) // 2], 2),
        "mean_gap_s": round(gap, 2),
        "trial_s": [round(e - s, 2) for s, e in zip(starts, ends, strict=True)],
    }


def measure(
    mode: str, workers: int, trials_per_worker: int, scratch: Path, round_: int = 0
) -> dict:
    name = f"cluster_{mode}_{workers}_r{round_}"
    trials = trials_per_worker * workers
    exp = experiment(scratch, name, trials, workers)
    out = scratch / name
    shutil.rmtree(out, ignore_errors=True)
    wall = (run_procs if mode == "procs" else run_ray)(exp, out, workers)
    return {
        "mode": mode,
        "workers": workers,
        "round": round_,
        "trials": trials,
        "wall_s": round(wall, 1),
        **span_stats(out),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def early_stopping_rows() -> dict:
    """The current early-stopping rule replayed on the recorded held-out searches (default
    settings, shipped curve); see benchmarks/early_stopping.py --from-records."""
    if not EARLY_STOPPING_RECORDS.is_file():
        return {}
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from early_stopping import replay_from_records

    from autoslim.searching.experiment import EarlyStopping

    quantile = str(EarlyStopping().quantile)
    replayed = replay_from_records(EARLY_STOPPING_RECORDS, quantiles=(float(quantile),))
    return {
        task: {
            **kinds["curve"][quantile],
            "quantile": float(quantile),
            "records": str(EARLY_STOPPING_RECORDS.relative_to(ROOT)),
        }
        for task, kinds in replayed.items()
    }


MEASURED = ("size_bytes", "accuracy", "test_accuracy", "latency_ms", "peak_memory_bytes")


def measurement_cost(task: str, rounds: int) -> dict:
    """Wall seconds per measurement of one int8 artifact, forked from the measuring server
    against a new interpreter, ``rounds`` times each, alternating."""
    import statistics
    import tempfile

    from autoslim.artifact import save_artifact
    from autoslim.measure import runner
    from autoslim.pipeline import apply_recipe
    from autoslim.recipe import Recipe

    ways = {
        "forked from the server": runner._run_in_forked_child,
        "new interpreter": runner._run_in_new_interpreter,
    }
    recipe = Recipe.from_dict(
        {
            "task": {"entry": "autoslim.tasks.mnist1d:make_task", "params": {"model": task}},
            "target": {"threads": 2, "batch_size": 64, "warmup": 10, "repeats": 30},
            "stages": [{"kind": "quantize", "default": 8}],
        }
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(recipe.target.threads)}
    rows: dict[str, list[dict]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as tmp:
        artifact = save_artifact(apply_recipe(recipe), recipe, Path(tmp) / "art")
        for _ in range(rounds):
            for way, measure_with in ways.items():
                start = time.perf_counter()
                code, text = measure_with(artifact, recipe.target, ("val", "test"), env, 600)
                if code != 0:
                    raise SystemExit(f"{way}: measurement failed: {text}")
                rows[way].append(
                    {
                        "seconds": time.perf_counter() - start,
                        **{k: json.loads(text)[k] for k in MEASURED},
                    }
                )
    return {
        "task": task,
        "rounds": rounds,
        "measurements": rows,
        "median_seconds": {
            way: statistics.median(r["seconds"] for r in rs) for way, rs in rows.items()
        },
    }


def print_measurement_cost(result: dict) -> None:
    for way, rows in result["measurements"].items():
        print(f"{way}: median {result['median_seconds'][way]:.2f} s per measurement")
        for r in rows:
            print(
                "  "
                + ", ".join(
                    f"{k} {r[k]:.4g}" if isinstance(r[k], float) else f"{k} {r[k]}"
                    for k in ("seconds", *MEASURED)
                )
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="procs,ray")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--trials-per-worker", type=int, default=4)
    parser.add_argument("--scratch", default="runs/bench-cluster")
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="repeat every (mode, workers) run this many times, interleaved, so a load change "
        "on a shared machine hits both modes alike (default 1; 3 with --measurement-cost)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--measurement-cost",
        action="store_true",
        help="only time one artifact measurement, forked from the measuring server and in a new "
        "interpreter, --rounds times each",
    )
    parser.add_argument(
        "--task",
        default="mlp",
        choices=("cnn", "rescnn", "transformer", "mlp"),
        help="with --measurement-cost: the MNIST-1D model",
    )
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 3 if args.measurement_cost else 1
    if args.rounds < 1 or args.trials_per_worker < 1:
        parser.error("--rounds and --trials-per-worker must be at least 1")
    if args.measurement_cost:
        cost = measurement_cost(args.task, args.rounds)
        if args.json:
            print(json.dumps(cost))
        else:
            print_measurement_cost(cost)
        return
    scratch = Path(args.scratch).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    # Train (or load) the shared baseline once, outside every timed span.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from autoslim.baseline import load_baseline;"
            "from autoslim.searching.experiment import load_experiment; from autoslim.task import load_task;"
            f"e,_=load_experiment({str(ROOT / 'experiments' / 'digits.yaml')!r});"
            "load_baseline(e.task, load_task(e.task))",
        ],
        check=True,
    )
    rows = [
        measure(mode, int(w), args.trials_per_worker, scratch, r)
        for r in range(args.rounds)
        for w in args.workers.split(",")
        for mode in args.mode.split(",")
    ]
    for row in rows:
        first = next(r for r in rows if r["mode"] == row["mode"] and r["round"] == row["round"])
        row["speedup_vs_first"] = round(row["trials_per_hour"] / first["trials_per_hour"], 2)
    result = {
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "rows": rows,
        "ray_overhead_per_trial_s": ray_overhead(rows),
        "early_stopping": early_stopping_rows(),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"machine: {result['machine']}")
    print(
        f"{'round':>5} {'mode':>6} {'workers':>7} {'trials':>6} {'wall s':>7} {'span s':>8} {'trials/h':>9} "
        f"{'speedup':>8} {'median trial s':>15} {'gap s':>6} {'load':>5}  trial s, in order"
    )
    for r in rows:
        print(
            f"{r['round']:>5} {r['mode']:>6} {r['workers']:>7} {r['completed']:>6} {r['wall_s']:>7} {r['span_s']:>8} "
            f"{r['trials_per_hour']:>9} {r['speedup_vs_first']:>8} {r['median_trial_s']:>15} {r['mean_gap_s']:>6} "
            f"{r['loadavg_1min']:>5}  {r['trial_s']}"
        )
    overhead = result["ray_overhead_per_trial_s"]
    if overhead:
        print(
            f"Ray overhead, 1 worker, median over rounds of (ray - procs): {overhead['per_trial_s']} s per trial "
            f"(median trial time), {overhead['gap_s']} s per trial (idle gap between trials), "
            f"{overhead['wall_s']} s per search (wall, Ray start-up included); per round: {overhead['per_round']}"
        )
    for task, row in result["early_stopping"].items():
        print(
            f"early stopping, {task} (replay, q={row['quantile']}): {row['epochs_saved']:.1%} of fine-tune epochs "
            f"saved, {row['hv_kept']:.2%} of HV kept (worst seed {row['hv_kept_min']:.2%}), {row['seeds']} seeds"
        )


def ray_overhead(rows: list[dict]) -> dict | None:
    """Ray minus local (procs) at 1 worker, per round (the two ran back to back), then the
    median over rounds: per trial from the study's trial durations, per search from wall time."""
    per_round = []
    for round_ in sorted({r["round"] for r in rows}):
        one = {r["mode"]: r for r in rows if r["workers"] == 1 and r["round"] == round_}
        if {"procs", "ray"} <= set(one):
            per_round.append(
                {
                    "per_trial_s": round(
                        one["ray"]["median_trial_s"] - one["procs"]["median_trial_s"], 2
                    ),
                    "gap_s": round(one["ray"]["mean_gap_s"] - one["procs"]["mean_gap_s"], 2),
                    "wall_s": round(one["ray"]["wall_s"] - one["procs"]["wall_s"], 1),
                }
            )
    if not per_round:
        return None
    median = lambda key: float(np.median([p[key] for p in per_round]))  # noqa: E731
    return {
        "per_trial_s": round(median("per_trial_s"), 2),
        "gap_s": round(median("gap_s"), 2),
        "wall_s": round(median("wall_s"), 1),
        "per_round": per_round,
    }


if __name__ == "__main__":
    main()
