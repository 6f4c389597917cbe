"""Search throughput with parallel workers, Ray's overhead per trial, early stopping's savings.

Two ways to run trials in parallel, on the same digits experiment:

- ``procs``: N ``autoslim search`` processes on one run folder (Optuna-native workers
  sharing the journal file; with ``--storage postgresql://...`` they could sit on N machines);
- ``ray``: one ``autoslim search --backend ray`` with ``search.ray.max_concurrent: N``.

Throughput is completed trials per hour over the span from the first trial's start to the
last trial's end, read from the study's own timestamps: the one-off baseline training,
Ray's start-up and the interpreter start-up of each worker are outside it. Each trial
trains with 2 threads, so N workers need 2N cores to scale. The early-stopping rows are
read from ``benchmarks/results/early_stopping.json`` (``benchmarks/early_stopping.py``).

    python benchmarks/cluster.py [--mode procs,ray] [--workers 1,2,4,8] [--trials-per-worker 4] [--json]
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

import yaml

ROOT = Path(__file__).resolve().parents[1]
EARLY_STOPPING_JSON = ROOT / "benchmarks" / "results" / "early_stopping.json"


def experiment(folder: Path, name: str, trials: int, workers: int) -> Path:
    """The default digits experiment with a fixed fine-tune length, so every trial costs
    about the same and throughput compares like with like."""
    spec = yaml.safe_load((ROOT / "experiments" / "digits.yaml").read_text())
    space = yaml.safe_load((ROOT / "search_spaces" / "prune_quant.yaml").read_text())["components"]
    space[0].update({"optional": False, "fine_tune_epochs": {"low": 2, "high": 2}})
    spec.update({
        "name": name, "space": space, "constraints": [],
        "search": {"trials": trials, "sampler": "random", "seed": 0, "keep_artifacts": "none",
                   "ray": {"max_concurrent": workers, "cpus_per_trial": 2}},
        "target": {**spec["target"], "repeats": 10},
    })
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_procs(exp: Path, out: Path, workers: int) -> float:
    cmd = [sys.executable, "-m", "autoslim.cli", "search", str(exp), "--out", str(out)]
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(workers)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return time.monotonic() - start


def run_ray(exp: Path, out: Path, workers: int) -> float:
    cmd = [sys.executable, "-m", "autoslim.cli", "search", str(exp), "--out", str(out), "--backend", "ray"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    start = time.monotonic()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
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
    return {"completed": len(trials), "span_s": round(span, 1),
            "trials_per_hour": round(3600 * len(trials) / span, 1),
            "median_trial_s": round(durations[len(durations) // 2], 2)}


def measure(mode: str, workers: int, trials_per_worker: int, scratch: Path) -> dict:
    name = f"cluster_{mode}_{workers}"
    trials = trials_per_worker * workers
    exp = experiment(scratch, name, trials, workers)
    out = scratch / name
    shutil.rmtree(out, ignore_errors=True)
    wall = (run_procs if mode == "procs" else run_ray)(exp, out, workers)
    return {"mode": mode, "workers": workers, "trials": trials, "wall_s": round(wall, 1), **span_stats(out)}


def early_stopping_rows() -> list[dict]:
    if not EARLY_STOPPING_JSON.is_file():
        return []
    data = json.loads(EARLY_STOPPING_JSON.read_text())
    return data.get("summary", data.get("tasks", [])) if isinstance(data, dict) else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="procs,ray")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--trials-per-worker", type=int, default=4)
    parser.add_argument("--scratch", default="runs/bench-cluster")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    scratch = Path(args.scratch).resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    # Train (or load) the shared baseline once, outside every timed span.
    subprocess.run([sys.executable, "-c", "from autoslim.baseline import load_baseline;"
                    "from autoslim.search.experiment import load_experiment; from autoslim.task import load_task;"
                    f"e,_=load_experiment({str(ROOT / 'experiments' / 'digits.yaml')!r});"
                    "load_baseline(e.task, load_task(e.task))"], check=True)
    rows = [measure(mode, int(w), args.trials_per_worker, scratch)
            for mode in args.mode.split(",") for w in args.workers.split(",")]
    for row in rows:
        first = next(r for r in rows if r["mode"] == row["mode"])
        row["speedup_vs_first"] = round(row["trials_per_hour"] / first["trials_per_hour"], 2)
    result = {
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": rows,
        "ray_overhead_per_trial_s": ray_overhead(rows),
        "early_stopping": early_stopping_rows(),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"machine: {result['machine']}")
    print(f"{'mode':>6} {'workers':>7} {'trials':>6} {'span s':>8} {'trials/h':>9} {'speedup':>8} {'median trial s':>15}")
    for r in rows:
        print(f"{r['mode']:>6} {r['workers']:>7} {r['completed']:>6} {r['span_s']:>8} {r['trials_per_hour']:>9} "
              f"{r['speedup_vs_first']:>8} {r['median_trial_s']:>15}")
    print(f"Ray overhead per trial (median trial time, ray - procs, 1 worker): {result['ray_overhead_per_trial_s']} s")


def ray_overhead(rows: list[dict]) -> float | None:
    one = {r["mode"]: r for r in rows if r["workers"] == 1}
    if {"procs", "ray"} <= set(one):
        return round(one["ray"]["median_trial_s"] - one["procs"]["median_trial_s"], 2)
    return None


if __name__ == "__main__":
    main()
