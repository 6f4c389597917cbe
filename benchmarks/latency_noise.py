"""Latency ratios on a quiet and on a busy machine: plain medians against paired rounds.

Three artifacts of the Linear-heavy MLP task (768-3072-768) are built with the
project's own pipeline and saved to disk:

- ``fp32``: the empty recipe (true latency ratio 1.0),
- ``int8``: uniform 8-bit weights run on the int8 dynamic kernel (a real kernel gain),
- ``4bit``: uniform 4-bit weights, decoded to fp32 and run on the fp32 kernels (true
  ratio 1.0; smaller on disk, no faster).

Each is measured two ways, each in a fresh process (``measure_in_subprocess``):

- ``plain``: the artifact alone; its ratio is its median over the fp32 artifact's
  median, measured in another process. The interval is
  [candidate p10 / fp32 p90, candidate p90 / fp32 p10] and any ratio below 1 reads as
  ``faster``.
- ``paired``: candidate and fp32 reference timed in interleaved rounds in one process
  (``reference=``); ratio, interval and verdict (``faster`` / ``no gain`` / ``slower``
  / ``noisy``) come from :mod:`autoslim.measure.paired`.

Both are run on a quiet machine, then again while busy-looping processes (one per core
by default) compete for the cores. In the loaded phase the plain measurements are spread
between the paired ones, so the load meets each of them at a different moment, as a
search that measures its trials minutes apart would see. The busy processes are always
stopped, also on errors and Ctrl-C.

On a shared machine the quiet phase waits (``--wait-quiet``) for other processes to
leave the cores idle, records how much of the cores processes outside this benchmark
used during it (from /proc), and is repeated (``--quiet-tries``) if they used more
than 10 %. The same share is recorded for the loaded phase.

    python benchmarks/latency_noise.py [--json] [--out FILE] [--busy 2] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from autoslim.artifact import save_artifact
from autoslim.measure import measure_in_subprocess
from autoslim.measure.paired import PairedLatency
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe, Target

# Small data and few epochs: the baseline only needs trained weights, not accuracy.
TASK = {"entry": "autoslim.tasks.mlp:make_task", "params": {"samples": 1024, "epochs": 1}}
ARTIFACTS = {
    "fp32": ([], False),
    "int8": ([{"kind": "quantize", "default": 8, "int8_kernel": True}], True),
    "4bit": ([{"kind": "quantize", "default": 4}], False),
}


# The most of the cores that other work may keep busy for the machine to count as quiet.
QUIET = 0.1


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _cpu_ticks() -> tuple[int, int, int]:
    """(busy ticks of all cores, all ticks, ticks of this process group's processes
    including the children they reaped), from /proc."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    group = os.getpgid(0)
    own = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        rest = stat[stat.rindex(")") + 2 :].split()  # fields from the 3rd (state) on
        if int(rest[2]) == group:  # field 5, the process group
            own += sum(int(x) for x in rest[11:15])  # utime, stime, cutime, cstime
    return sum(fields) - idle, sum(fields), own


class ForeignLoad:
    """The fraction of all cores kept busy by processes outside this benchmark (its
    process group) between :meth:`start` and :meth:`stop`; None where /proc is missing."""

    def start(self) -> ForeignLoad:
        try:
            self.before = _cpu_ticks()
        except (OSError, ValueError, IndexError):
            self.before = None
        return self

    def stop(self) -> float | None:
        if self.before is None:
            return None
        try:
            busy, total, own = (b - a for a, b in zip(self.before, _cpu_ticks(), strict=True))
        except (OSError, ValueError, IndexError):
            return None
        return max(busy - own, 0) / max(total, 1)


def cpu_busy(seconds: float = 2.0) -> float | None:
    """Fraction of all cores kept busy by other processes over ``seconds``."""
    load = ForeignLoad().start()
    time.sleep(seconds)
    return load.stop()


def wait_for_quiet(deadline: float, log) -> float | None:
    """Wait, until the ``time.monotonic()`` ``deadline`` at most, for a 2-s window in which
    other processes keep at most :data:`QUIET` of the cores busy; returns the last window's
    fraction."""
    busy = cpu_busy()
    while busy is not None and busy > QUIET and time.monotonic() < deadline:
        log(f"waiting for a quiet machine (other processes keep {busy:.0%} of the cores busy)")
        busy = cpu_busy()
    return busy


def _percent(fraction: float | None) -> str:
    return "unknown" if fraction is None else f"{fraction:.0%}"


def build(folder: Path, target: dict) -> dict[str, Path]:
    paths = {}
    for name, (stages, _) in ARTIFACTS.items():
        recipe = Recipe.from_dict({"task": TASK, "target": target, "stages": stages})
        paths[name] = save_artifact(apply_recipe(recipe), recipe, folder / name)
    return paths


def plain(path: Path, target) -> dict:
    values = measure_in_subprocess(path, target)
    return {
        "ms": values["latency_ms"],
        "p10": values["latency_p10_ms"],
        "p90": values["latency_p90_ms"],
    }


def paired(path: Path, reference: Path, target) -> dict:
    v = measure_in_subprocess(path, target, reference=reference)
    result = PairedLatency(
        latency_ms=v["latency_ms"],
        p10_ms=v["latency_p10_ms"],
        p90_ms=v["latency_p90_ms"],
        reference_ms=v["reference_latency_ms"],
        ratio=v["latency_ratio"],
        ratio_lo=v["latency_ratio_lo"],
        ratio_hi=v["latency_ratio_hi"],
        rounds=v["latency_rounds"],
        noisy=v["latency_noisy"],
    )
    return {
        "ratio": result.ratio,
        "ci": [result.ratio_lo, result.ratio_hi],
        "verdict": result.verdict,
        "rounds": result.rounds,
        "ms": result.latency_ms,
        "reference_ms": result.reference_ms,
    }


def plain_ratio(candidate: dict, reference: dict) -> dict:
    ratio = candidate["ms"] / reference["ms"]
    return {
        "ratio": ratio,
        "ci": [candidate["p10"] / reference["p90"], candidate["p90"] / reference["p10"]],
        "verdict": "faster" if ratio < 1.0 else "slower",
        "ms": candidate["ms"],
        "reference_ms": reference["ms"],
    }


def phase(paths: dict[str, Path], target, log) -> dict[tuple[str, str], dict]:
    """Every artifact under both methods. The fp32 plain reference is measured first; each
    artifact's own plain measurement follows its paired one, so they lie minutes apart."""
    started = time.perf_counter()
    reference = plain(paths["fp32"], target)
    log(
        f"  plain fp32 reference: {reference['ms']:.2f} ms  ({time.perf_counter() - started:.0f} s)"
    )
    out = {}
    for name, path in paths.items():
        out[name, "paired"] = p = paired(path, paths["fp32"], target)
        log(
            f"  paired {name}: ratio {p['ratio']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}] {p['verdict']}, "
            f"{p['rounds']} rounds  ({time.perf_counter() - started:.0f} s)"
        )
        out[name, "plain"] = q = plain_ratio(plain(path, target), reference)
        log(
            f"  plain {name}: {q['ms']:.2f} ms, ratio {q['ratio']:.3f}  ({time.perf_counter() - started:.0f} s)"
        )
    return out


def stop_load(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


def rows_of(quiet: dict, loaded: dict) -> list[dict]:
    rows = []
    for name, (_, gain) in ARTIFACTS.items():
        for method in ("plain", "paired"):
            q, ld = quiet[name, method], loaded[name, method]
            row = {
                "artifact": name,
                "true_kernel_gain": gain,
                "method": method,
                "quiet_ratio": q["ratio"],
                "loaded_ratio": ld["ratio"],
                "loaded_ci": ld["ci"],
                "verdict": ld["verdict"],
                "quiet_ci": q["ci"],
                "quiet_verdict": q["verdict"],
                "loaded_shift": ld["ratio"] / q["ratio"] - 1.0,
                "quiet_ms": q["ms"],
                "loaded_ms": ld["ms"],
                "quiet_reference_ms": q["reference_ms"],
                "loaded_reference_ms": ld["reference_ms"],
            }
            if method == "paired":
                row |= {"quiet_rounds": q["rounds"], "loaded_rounds": ld["rounds"]}
            rows.append(row)
    return rows


def print_table(result: dict) -> None:
    m = result["machine"]
    t = result["target"]
    print(
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['date']}; batch {t['batch_size']}, "
        f"{t['threads']} threads, {t['repeats']} repeats/rounds, {result['busy_processes']} busy processes; "
        f"other processes kept {_percent(result['other_processes_cores_busy']['quiet'])} (quiet phase) and "
        f"{_percent(result['other_processes_cores_busy'].get('loaded'))} (loaded phase) of the cores busy"
    )
    print(
        f"{'artifact':<9}{'gain':<6}{'method':<8}{'quiet':>7}{'quiet verdict':>15}{'loaded':>8}"
        f"{'loaded interval':>18}{'shift':>8}  verdict (loaded)"
    )
    for r in result["rows"]:
        lo, hi = r["loaded_ci"]
        print(
            f"{r['artifact']:<9}{'yes' if r['true_kernel_gain'] else 'no':<6}{r['method']:<8}"
            f"{r['quiet_ratio']:>7.3f}{r['quiet_verdict']:>15}{r['loaded_ratio']:>8.3f}"
            f"{f'[{lo:.2f}, {hi:.2f}]':>18}{r['loaded_shift']:>+8.1%}  {r['verdict']}"
        )


def search_under_load(trials: int, target: dict, busy: int, log) -> dict:
    """A digits search with accuracy, latency and size objectives, run while ``busy``
    processes load the cores; then, on the quiet machine, its front re-timed against the
    baseline. A point is contradicted if its quiet ratio lies outside its recorded interval."""
    import yaml

    from autoslim.measure.paired import verdict_of
    from autoslim.measure.runner import confirm_in_subprocess
    from autoslim.run import load_run
    from autoslim.searching.driver import search

    root = Path(__file__).resolve().parents[1]
    experiment = yaml.safe_load((root / "experiments" / "digits.yaml").read_text())
    experiment |= {
        "name": "digits_latency",
        "space": "prune_quant",
        "objectives": {"accuracy": "maximize", "latency_ms": "minimize", "size_bytes": "minimize"},
        "target": {**experiment["target"], **target},
    }
    experiment["search"] = {**experiment["search"], "trials": trials}
    with tempfile.TemporaryDirectory(prefix="latency-search-") as tmp:
        path = Path(tmp) / "digits_latency.yaml"
        path.write_text(yaml.safe_dump(experiment))
        load: list[subprocess.Popen] = []
        try:
            for _ in range(busy):
                load.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
            log(f"searching {trials} trials under {busy} busy processes")
            search(path, out=Path(tmp) / "run", progress=False)
        finally:
            stop_load(load)
        run = load_run(Path(tmp) / "run")
        front = run.front()
        folders = [Path(tmp) / "run" / "artifacts" / f"trial_{int(n)}" for n in front["trial"]]
        log(f"re-timing the {len(folders)} front points on the quiet machine")
        quiet = confirm_in_subprocess(
            folders, Path(tmp) / "run" / "baseline", Target.model_validate(experiment["target"])
        )
    points = []
    for (_, row), again in zip(front.iterrows(), quiet, strict=True):
        lo, hi = float(row["latency_ratio_lo"]), float(row["latency_ratio_hi"])
        points.append(
            {
                "trial": int(row["trial"]),
                "loaded_ratio": float(row["latency_ratio"]),
                "loaded_ci": [lo, hi],
                "loaded_verdict": verdict_of(lo, hi, bool(row["latency_noisy"])),
                "quiet_ratio": again["ratio"],
                "quiet_ci": [again["ratio_lo"], again["ratio_hi"]],
                "quiet_verdict": again["verdict"],
                **disagreement(lo, hi, again),
            }
        )
    return {
        "machine": machine(),
        "target": experiment["target"],
        "busy_processes": busy,
        "trials": trials,
        "front_points": len(points),
        "outside_interval": sum(p["outside_interval"] for p in points),
        "contradicted": sum(p["contradicted"] for p in points),
        "verdict_changed": sum(p["loaded_verdict"] != p["quiet_verdict"] for p in points),
        "points": points,
    }


def disagreement(lo: float, hi: float, quiet: dict) -> dict:
    """``outside_interval``: the quiet ratio lies outside the recorded interval (what the
    search's own confirmation pass marks). ``contradicted``: the two intervals do not
    even overlap, so the measurements disagree beyond both their uncertainties."""
    return {
        "outside_interval": not lo <= quiet["ratio"] <= hi,
        "contradicted": quiet["ratio_lo"] > hi or quiet["ratio_hi"] < lo,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Measure fp32, int8-kernel and 4-bit MLP artifacts with plain medians and with paired "
        "rounds against fp32, on a quiet machine and under busy-loop load; print the latency "
        "ratios, intervals and verdicts."
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a table"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    parser.add_argument(
        "--busy",
        type=int,
        default=os.cpu_count() or 2,
        help="busy-looping processes in the loaded phase (default: one per core)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads of the measured model (more threads than free cores make the load "
        "change the true ratio of kernels that thread differently)",
    )
    parser.add_argument(
        "--search",
        type=int,
        default=0,
        metavar="TRIALS",
        help="instead: run a digits search of TRIALS trials with a latency objective under "
        "the load, then re-time its front on the quiet machine and count the points whose "
        "quiet ratio falls outside the recorded interval, and whose intervals do not overlap",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="batch of one timed forward")
    parser.add_argument("--warmup", type=int, default=5, help="untimed forwards before timing")
    parser.add_argument(
        "--repeats",
        type=int,
        default=30,
        help="timings of a plain measurement, and the first rounds of a paired one",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=180.0,
        help="seconds, in all, to wait for other processes to leave the cores idle before "
        "the quiet phase",
    )
    parser.add_argument(
        "--quiet-tries",
        type=int,
        default=3,
        help="times to run the quiet phase while other processes turn out to load the cores "
        f"during it (more than {QUIET * 100:.0f}%% of them)",
    )
    args = parser.parse_args(argv)
    if args.quiet_tries < 1:
        parser.error("--quiet-tries must be at least 1")
    target_dict = {
        "device": "cpu",
        "threads": args.threads,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "repeats": args.repeats,
    }

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.search:
        result = search_under_load(args.search, target_dict, args.busy, log)
        text = json.dumps(result, indent=2)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        print(
            text
            if args.json
            else "\n".join(f"{k}: {v}" for k, v in result.items() if k != "points")
        )
        return 0

    with tempfile.TemporaryDirectory(prefix="latency-noise-") as tmp:
        log("building artifacts")
        paths = build(Path(tmp), target_dict)
        target = Recipe.from_dict({"task": TASK, "target": target_dict}).target
        deadline = time.monotonic() + args.wait_quiet
        for attempt in range(1, args.quiet_tries + 1):
            busy = wait_for_quiet(deadline, log)
            log(f"quiet phase, attempt {attempt} (other processes: {_percent(busy)} of the cores)")
            watch = ForeignLoad().start()
            quiet = phase(paths, target, log)
            other = {"quiet": watch.stop()}
            log(
                f"other processes kept {_percent(other['quiet'])} of the cores busy during the quiet phase"
            )
            if other["quiet"] is None or other["quiet"] <= QUIET:
                break
            log(
                "warning: the quiet phase was not quiet"
                + ("; repeating it" if attempt < args.quiet_tries else "")
            )
        log(f"loaded phase ({args.busy} busy processes)")
        load: list[subprocess.Popen] = []
        try:  # started inside the try: an interrupt between two starts still stops the first
            for _ in range(args.busy):
                load.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
            watch = ForeignLoad().start()
            loaded = phase(paths, target, log)
            other["loaded"] = watch.stop()
        finally:
            stop_load(load)
    result = {
        "machine": machine(),
        "target": target_dict,
        "busy_processes": args.busy,
        "quiet_attempts": attempt,
        "other_processes_cores_busy": other,
        "rows": rows_of(quiet, loaded),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
