"""How often does a 30-trial mixed-precision search beat each uniform width? Over search seeds.

One run of ``benchmarks/mixed_precision.py`` is one sampler seed, and its margins over
the uniform points are a few of 800 validation samples. This repeats runs D (calibration
searched) and E (MSE clipping for all) of BENCHMARKS.md over sampler seeds and counts, per
uniform reference (4- and 8-bit, min-max and MSE calibrated), the seeds where a trial
whose plan *mixes* bit widths dominates it (``dominated_by_mixed_plans``). PTQ trains
nothing, so a seed changes only the sampler: the same seed replays the same trials.

    python benchmarks/mixed_precision_seeds.py [--runs D,E,R,RM] [--seeds 0,1,2,3,4] [--jobs 1]
                                               [--out-dir runs/mp-seeds] [--json]

Runs D and E are the 4-layer CNN; run R is the residual CNN
(``experiments/mnist1d_rescnn_mixed_precision.yaml``), whose layers differ far more in
sensitivity, and RM is run R with MSE clipping for every plan. ``--jobs`` runs that many (run, seed) searches side by side, each in its own
process with the experiment's thread count.

Each (run, seed) is a resumable run folder under ``--out-dir``; an existing one is judged
again without new trials.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import mixed_precision  # noqa: E402 — a sibling script, not a package module

RUNS = {"D": ROOT / "benchmarks" / "results" / "mixed_precision_runD.yaml",
        "E": ROOT / "benchmarks" / "results" / "mixed_precision_runE.yaml",
        # the residual CNN (8 layers, 75 k weights), 2-bit in the space, min-max calibration
        "R": ROOT / "experiments" / "mnist1d_rescnn_mixed_precision.yaml",
        "RM": ROOT / "benchmarks" / "results" / "mixed_precision_runRM.yaml"}  # R, MSE clipping for all
REFERENCES = ["uniform 8-bit", "uniform 8-bit (mse)", "uniform 4-bit", "uniform 4-bit (mse)"]


def seeded_experiment(run: str, seed: int, folder: Path) -> Path:
    data = yaml.safe_load(RUNS[run].read_text())
    data["search"]["seed"] = seed
    path = folder / f"run{run}_s{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def judge(run: str, seed: int, out_dir: Path) -> dict:
    """One mixed_precision.py run (resumed if its folder exists); its saved result."""
    saved = out_dir / f"run{run}_s{seed}.json"
    experiment = seeded_experiment(run, seed, out_dir / "experiments")
    argv = ["--trials", "30", "--experiment", str(experiment), "--out", str(out_dir / f"run{run}_s{seed}"),
            "--uniform-calibrations", "minmax,mse", "--save", str(saved)]
    with contextlib.redirect_stdout(sys.stderr):  # each run's own report; stdout is the summary
        mixed_precision.main(argv)
    return json.loads(saved.read_text())


def summary(results: dict[tuple[str, int], dict]) -> dict:
    """Per run and reference: seeds beaten by a mixed plan, and the smallest such plan per seed."""
    table: dict = {}
    for (run, seed), result in sorted(results.items()):
        for point in result["uniform"]:
            cell = table.setdefault(run, {}).setdefault(point["setting"], {"beaten": [], "missed": [], "wins": {}})
            wins = point["dominated_by_mixed_plans"]
            (cell["beaten"] if wins else cell["missed"]).append(seed)
            if wins:
                cell["wins"][seed] = wins[0]
        all_four = all(p["dominated_by_mixed_plans"] for p in result["uniform"])
        table[run].setdefault("all four", {"beaten": [], "missed": [], "wins": {}})
        table[run]["all four"]["beaten" if all_four else "missed"].append(seed)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="D,E", help="comma-separated: D (calibration searched), E (MSE for all), "
                                                      "R (residual CNN), RM (R with MSE clipping)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated sampler seeds")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/mp-seeds"))
    parser.add_argument("--jobs", type=int, default=1, help="(run, seed) searches side by side")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not runs or any(r not in RUNS for r in runs):
        parser.error(f"--runs: expected a comma-separated subset of {', '.join(RUNS)}, got {args.runs!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds: give at least one seed")
    cells = [(run, seed) for run in runs for seed in seeds]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {cell: pool.submit(judge, *cell, args.out_dir) for cell in cells}
        results = {cell: future.result() for cell, future in futures.items()}
    table = summary(results)
    if args.json:
        print(json.dumps({"seeds": seeds, "summary": table}))
        return 0
    print(f"\nseeds {seeds}: a trial whose plan mixes bit widths dominates the uniform point (bytes x val)")
    for run in runs:
        print(f"run {run}:")
        for ref in [*REFERENCES, "all four"]:
            cell = table[run][ref]
            line = f"  {ref:<22} {len(cell['beaten'])}/{len(seeds)} seeds"
            for seed, win in cell["wins"].items():
                line += f"; s{seed}: {win['plan']} {win['calibration'] or ''} {win['size_bytes']} B @ {win['accuracy']:.4f}"
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
