"""Pareto-aware early stopping, measured: fine-tune epochs saved against hypervolume kept.

For each task and seed the same search runs twice, early stopping off and on, with the
same trial budget, sampler seed and training seed, each in its own run folder. Per arm it
reports the fine-tune epochs really run (sum of ``epochs_run`` over trials), the seconds
the trials took, the trials stopped and the hypervolume of the final feasible front on
the search's own objectives (accuracy, size_bytes), with autoslim's exact hypervolume.

Reference point: fixed per task and identical for both arms, the worst accuracy the
experiment's constraint accepts (fp32 baseline accuracy − max_drop) and the fp32
baseline's artifact bytes. A point adds volume only if it is more accurate than that and
smaller than the fp32 model.

Same configurations: TPE's random start-up trials draw identical parameters in both arms;
after that the samplers may diverge, because the stopping arm's TPE sees stopped (PRUNED)
trials instead of completed ones. That is the real-world effect, so the "live" columns
keep it; the table says how many leading trials had identical parameters. The "replay"
columns remove it: the default rule is replayed on the off arm's own trials, in order,
from their recorded per-epoch curves (same configurations by construction), with the
experiment's constraint bound on the metric (``metric_bound``) and without it, and over
several quantiles.

The off arm records its curves with a stopper that has no calibration data and so never
stops; it therefore also pays the per-epoch validation pass and the dry-run artifact, so
its seconds are a slight over-estimate of a search without stopping. Epochs are exact.

If ``--deadline`` ends searches early, both arms are compared on the trials both
finished (the common prefix), so the trial budget stays equal.

Tasks: ``benchmarks/experiments/es_digits.yaml`` (the default digits space with 3-8
fine-tune epochs instead of 0-3) and ``benchmarks/experiments/es_mnist1d.yaml``
(structured pruning of the MNIST-1D CNN, 2-8 fine-tune epochs).

    python benchmarks/early_stopping.py [--tasks digits mnist1d] [--seeds 0 1 2]
        [--trials 40] [--jobs 12] [--deadline S] [--out-dir runs/bench-early-stopping]
        [--analyze] [--where TEXT] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import yaml
from optuna.trial import TrialState

from autoslim.results.pareto import hypervolume, pareto_front, to_minimization
from autoslim.run import load_run
from autoslim.searching.early_stop import (
    Curve,
    FrontPoint,
    ParetoStopper,
    horizon,
    metric_bound,
)
from autoslim.searching.experiment import Constraint, EarlyStopping
from autoslim.searching.record import HV_CHARGE_ATTR

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "benchmarks" / "experiments"
TASKS = {"digits": EXPERIMENTS / "es_digits.yaml", "mnist1d": EXPERIMENTS / "es_mnist1d.yaml"}
ARMS = ("off", "on")
GOAL_EPOCHS_SAVED, GOAL_HV_KEPT = 0.30, 0.98
DEFAULTS = EarlyStopping()  # the rule's default settings, which every replay starts from
SENSITIVITY_QUANTILES = (0.5, 0.75, 0.9, 1.0)


# ---- running the searches ----


def arm_experiment(
    task: str, seed: int, arm: str, trials: int, timeout: float | None, folder: Path
) -> Path:
    """The task's experiment with this seed, budget and stopping switch, written to ``folder``."""
    spec = yaml.safe_load(TASKS[task].read_text())
    spec["search"].update(trials=trials, seed=seed)
    if timeout is not None:
        spec["search"]["timeout"] = max(timeout, 1.0)
    spec["search"]["early_stopping"] = {
        **spec["search"].get("early_stopping", {}),
        "enabled": arm == "on",
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task}-seed{seed}-{arm}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def record_curves_without_stopping() -> None:
    """Give the off arm a stopper with nothing to stop on: it records every epoch's
    validation metric and planned fine-tunes (for the replay) and never stops, having no
    calibration curves, no front, no bound and no own-curve bound."""
    import autoslim.searching.local as local

    real = local.make_stopper
    local.make_stopper = lambda study, ctx: (
        real(study, ctx) or ParetoStopper(curves=(), front=(), own_curve_from=None)
    )


def run_arm(
    task: str,
    seed: int,
    arm: str,
    trials: int,
    out_dir: str,
    deadline: float | None,
    resume: bool = False,
) -> str:
    """One search in its own run folder (also the worker of ``--jobs``): from scratch, or
    with ``resume`` continued until its study holds ``trials`` trials (longer searches than
    one sitting allows: a device call lasts 10 minutes)."""
    from autoslim.searching.driver import search  # imported here: workers are spawned fresh

    out = Path(out_dir)
    timeout = None if deadline is None else deadline - time.time()
    path = arm_experiment(task, seed, arm, trials, timeout, out / "experiments")
    run_dir = out / f"{task}-seed{seed}-{arm}"
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)  # same budget from zero
    if arm == "off":
        record_curves_without_stopping()
    search(path, out=run_dir, progress=False)
    return str(run_dir)


def train_baselines(tasks: list[str]) -> None:
    """Train (or load) each task's fp32 baseline once, before parallel searches race for it."""
    from autoslim.baseline import load_baseline
    from autoslim.recipe import TaskRef
    from autoslim.task import load_task

    for task in tasks:
        ref = TaskRef(**yaml.safe_load(TASKS[task].read_text())["task"])
        load_baseline(ref, load_task(ref), log=True)


def run_all(
    tasks: list[str],
    seeds: list[int],
    trials: int,
    out_dir: Path,
    jobs: int,
    deadline: float | None,
    arms: tuple[str, ...] = ARMS,
    resume: bool = False,
) -> None:
    train_baselines(tasks)
    # Both arms of a task and seed are adjacent, so with fewer jobs than searches they
    # still run side by side, under the same load.
    jobs_list = [
        (t, s, a, trials, str(out_dir), deadline, resume)
        for t in tasks
        for s in seeds
        for a in arms
    ]
    if jobs <= 1:
        for job in jobs_list:
            run_arm(*job)
        return
    # Spawned workers: each search trains with its own fixed 2 threads, no forked torch state.
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        list(pool.map(run_arm, *zip(*jobs_list, strict=True)))


# ---- reading what they measured ----


@dataclass(frozen=True)
class TrialRecord:
    """What one trial left in the study."""

    number: int
    state: str
    curve: tuple[float, ...]  # validation metric as shipped after each epoch (what the rule reads)
    metric: float
    costs: dict[str, float]
    feasible: bool
    seconds: float
    params: dict
    trained_curve: tuple[float, ...] = ()  # the fp32 model in training (no later stages)
    # the fine-tunes its recipe planned, each one's epochs; None: unknown to the search (a stage
    # decides them while training); () not recorded (read as one fine-tune, the curve's length)
    planned_fine_tunes: tuple[int, ...] | None = ()
    # the costs the live rule judged it by: measured on its dry-run artifact, before training
    # (the final artifact's bytes can differ where trained weights quantize to other zeros)
    dry_run_costs: dict[str, float] | None = None
    # the completed trial with the same parameters that the search answered it from, unjudged
    repeat_of: int | None = None
    # the hypervolume its stop gave up under the budget (the budget's ledger; 0 for other stops)
    hv_charge: float = 0.0


def read_trials(run, limit: int | None = None) -> list[TrialRecord]:
    """The run's finished trials in order (the first ``limit`` of them)."""
    metric, costs = run.metric_name, [n for n in run.objectives if n != run.metric_name]
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    out = []
    for t in sorted(run.study.get_trials(deepcopy=False, states=finished), key=lambda t: t.number):
        measured = t.user_attrs.get("measured", {})
        known = {
            **t.user_attrs.get("dry_run_costs", {}),
            **{c: measured[c] for c in costs if c in measured},
        }
        out.append(
            TrialRecord(
                number=t.number,
                state=t.state.name,
                curve=tuple(t.user_attrs.get("curve", [])),
                metric=float(measured.get(metric, np.nan)),
                costs=known,
                feasible=t.state == TrialState.COMPLETE
                and all(v <= 0 for v in t.constraints.values()),
                seconds=t.duration.total_seconds() if t.duration else 0.0,
                params=dict(sorted(t.params.items())),
                trained_curve=tuple(t.user_attrs.get("trained_curve", [])),
                planned_fine_tunes=_planned(t.user_attrs),
                dry_run_costs=t.user_attrs.get("dry_run_costs"),
                repeat_of=t.user_attrs.get("repeat_of"),
                hv_charge=t.user_attrs.get(HV_CHARGE_ATTR, 0.0),
            )
        )
    return out[:limit]


def _planned(attrs: dict) -> tuple[int, ...] | None:
    if "planned_fine_tunes" in attrs:
        planned = attrs["planned_fine_tunes"]
        return None if planned is None else tuple(planned)
    if "planned_epochs" in attrs:  # a run folder that recorded only the total (None: unknown)
        return None if attrs["planned_epochs"] is None else (attrs["planned_epochs"],)
    return ()


def record_from_json(t: dict, curve_kind: str = "curve") -> TrialRecord:
    """A ``--records`` entry as a TrialRecord, reading ``curve_kind`` as the curve."""
    fields = {k: v for k, v in t.items() if k != "planned_epochs"}
    return TrialRecord(
        **{
            **fields,
            "curve": tuple(t[curve_kind]),
            "trained_curve": tuple(t["trained_curve"]),
            "planned_fine_tunes": _planned(t),
        }
    )


def front_of(records: list[TrialRecord], directions: dict[str, str]) -> list[TrialRecord]:
    """Feasible, completed, non-dominated records (the study's front)."""
    done = [r for r in records if r.state == "COMPLETE"]
    if not done:
        return []
    names = list(directions)
    values = np.array([[r.metric, *(r.costs[n] for n in names[1:])] for r in done], dtype=float)
    idx = pareto_front(values, list(directions.values()), np.array([r.feasible for r in done]))
    return [done[i] for i in idx]


def front_hypervolume(
    records: list[TrialRecord], directions: dict[str, str], reference: np.ndarray
) -> float:
    front = front_of(records, directions)
    names = list(directions)
    if not front:
        return 0.0
    values = np.array([[r.metric, *(r.costs[n] for n in names[1:])] for r in front], dtype=float)
    return hypervolume(to_minimization(values, list(directions.values())), reference)


def reference_point(run, max_drop: float) -> np.ndarray:
    """Fixed reference (minimisation space): worst acceptable accuracy, fp32 bytes."""
    base = run.baseline
    return np.array([-(base[run.metric_name] - max_drop), base["size_bytes"]], dtype=float)


def arm_numbers(
    records: list[TrialRecord], directions: dict[str, str], reference: np.ndarray
) -> dict:
    return {
        "trials": len(records),
        "complete": sum(r.state == "COMPLETE" for r in records),
        "stopped": sum(r.state == "PRUNED" for r in records),
        "failed": sum(r.state == "FAIL" for r in records),
        "epochs": sum(len(r.curve) for r in records),
        "trial_seconds": round(sum(r.seconds for r in records), 1),
        "hypervolume": front_hypervolume(records, directions, reference),
        "front_size": len(front_of(records, directions)),
    }


# ---- replaying the rule on the off arm's trials (same configurations) ----


def replay(
    records: list[TrialRecord],
    directions: dict[str, str],
    *,
    quantile: float,
    min_curves: int,
    bound: float | None = None,
    best_possible: float | None = None,
    whole_gain: bool = False,
    own_curve_from: int | None = DEFAULTS.own_curve_from,
    hv_budget: float = 0.0,
    reference_costs: dict[str, float] | None = None,
    error_fraction: bool = DEFAULTS.error_fraction,
) -> list[TrialRecord]:
    """The off arm's trials as the stopping arm would have ended them, in the same order.

    Each trial meets a stopper built like ``local.make_stopper``: from the trials that
    completed in the replay so far (stopped ones give no curve and no front point), with
    the hypervolume budget's ledger of the stops so far. ``reference_costs``: the fp32
    baseline's costs (the budget's reference point, with ``bound``).
    """
    metric = next(iter(directions))
    maximize = directions[metric] == "maximize"
    out: list[TrialRecord] = []
    for record in records:
        done = [r for r in out if r.state == "COMPLETE"]
        stopper = ParetoStopper(
            curves=tuple(Curve(r.curve, r.metric) for r in done if r.curve),
            front=tuple(
                FrontPoint(r.metric, {c: r.costs[c] for c in list(directions)[1:]})
                for r in front_of(out, directions)
            ),
            maximize=maximize,
            quantile=quantile,
            min_curves=min_curves,
            bound=bound,
            best_possible=best_possible,
            own_curve_from=None if whole_gain else own_curve_from,
            hv_budget=0.0 if whole_gain else hv_budget,
            reference_costs=reference_costs,
            error_fraction=error_fraction and not whole_gain,
            hv_spent=sum(r.hv_charge for r in out if r.state == "PRUNED"),
        )
        # A repeat is answered from its twin only if the twin completed here too; else the
        # search runs it, and the rule judges it.
        twin_done = any(r.number == record.repeat_of for r in done)
        out.append(record if twin_done else _replay_one(record, stopper, whole_gain))
    return out


def _replay_one(
    record: TrialRecord, stopper: ParetoStopper, whole_gain: bool = False
) -> TrialRecord:
    """``whole_gain``: an ablation that does not tell the stopper the trial's horizon, so
    each calibration curve's whole remaining gain counts, and has no own-curve bound."""
    if record.state != "COMPLETE":
        return record
    # As live: judged by its dry-run costs, and before training even if it plans no
    # fine-tune (stopping it saves no epoch, only its calibration and measurement).
    costs = record.dry_run_costs or record.costs
    planned = record.planned_fine_tunes if record.planned_fine_tunes != () else (len(record.curve),)
    stop = stopper.decide_before_training(costs, fine_tunes=planned is None or sum(planned) > 0)
    if stop is not None:
        return replace(
            record,
            state="PRUNED",
            curve=(),
            metric=np.nan,
            feasible=False,
            seconds=0.0,
            trained_curve=(),
            hv_charge=stop.hv_charge,
        )
    for epoch, value in enumerate(record.curve):
        now = horizon(planned, epoch + 1)
        own = record.curve[now.last_started : epoch + 1] if now.last_started is not None else None
        remaining = None if whole_gain else now.remaining
        stop = stopper.decide(epoch, value, costs, remaining=remaining, curve=own)
        if stop is not None:
            return replace(
                record,
                state="PRUNED",
                curve=record.curve[: epoch + 1],
                metric=np.nan,
                feasible=False,
                seconds=0.0,
                trained_curve=record.trained_curve[: epoch + 1],
                hv_charge=stop.hv_charge,
            )
    return record


# ---- the trials themselves, for replays of other rules ----


def best_possible_metric(spec: dict) -> float | None:
    """The best value the task's metric can take (accuracy: 1.0), as the search knew it."""
    from autoslim.recipe import TaskRef
    from autoslim.task import load_task

    return load_task(TaskRef(**spec["task"])).best_possible_metric


def dump_records(out_dir: Path, tasks: list[str], seeds: list[int], arms: tuple[str, ...]) -> dict:
    """Every finished trial of every run folder, with what a replay needs: curves, final
    metric, costs, feasibility, plus the task's reference point and constraint bound."""
    out: dict = {}
    for task in tasks:
        for seed in seeds:
            for arm in arms:
                run = load_run(out_dir / f"{task}-seed{seed}-{arm}")
                spec = run.info["experiment_spec"]
                metric = run.metric_name
                out.setdefault(task, {}).setdefault(str(seed), {})[arm] = {
                    "directions": {
                        metric: run.objectives[metric],
                        "size_bytes": run.objectives["size_bytes"],
                    },
                    "reference": reference_point(run, spec["constraints"][0]["max_drop"]).tolist(),
                    "bound": metric_bound(
                        [Constraint(**c) for c in spec["constraints"]],
                        metric,
                        run.baseline[metric],
                        maximize=run.objectives[metric] == "maximize",
                    ),
                    "best_possible": best_possible_metric(spec),
                    "trials": [asdict(r) for r in read_trials(run)],
                }
    return out


def replay_from_records(
    path: Path,
    quantiles: tuple[float, ...] = SENSITIVITY_QUANTILES,
    min_curves: int = DEFAULTS.min_curves,
    whole_gain: bool = False,
    own_curve_from: int | None = DEFAULTS.own_curve_from,
    hv_budget: float = DEFAULTS.hv_budget,
    error_fraction: bool = DEFAULTS.error_fraction,
) -> dict:
    """The current rule replayed on the off arms of a ``--records`` file, by quantile, on the
    shipped curve and on the curve of the model in training: no run folder needed."""
    data = json.loads(path.read_text())
    out: dict = {}
    for task, seeds in data.items():
        for curve_kind in ("curve", "trained_curve"):
            for q in quantiles:
                rows = []
                for arms in seeds.values():
                    off = arms["off"]
                    directions, reference = off["directions"], np.array(off["reference"])
                    records = [record_from_json(t, curve_kind) for t in off["trials"]]
                    stopped = replay(
                        records,
                        directions,
                        quantile=q,
                        min_curves=min_curves,
                        bound=off["bound"],
                        best_possible=off.get("best_possible"),
                        whole_gain=whole_gain,
                        own_curve_from=own_curve_from,
                        hv_budget=hv_budget,
                        error_fraction=error_fraction,
                        reference_costs={"size_bytes": off["reference"][1]},
                    )
                    rows.append(
                        ratios(
                            arm_numbers(records, directions, reference),
                            arm_numbers(stopped, directions, reference),
                        )
                    )
                out.setdefault(task, {}).setdefault(curve_kind, {})[str(q)] = {
                    "epochs_saved": float(np.mean([r["epochs_saved"] for r in rows])),
                    "hv_kept": float(np.mean([r["hv_kept"] for r in rows])),
                    "hv_kept_min": float(min(r["hv_kept"] for r in rows)),
                    "seeds": len(rows),
                }
    return out


def ceiling_from_records(path: Path) -> dict:
    """What a causal rule could save at most, per task (sums over seeds):

    - ``oracle``: epochs after the first of every trial whose final point is infeasible or
      dominated by the front of its time (an oracle stopping after one epoch);
    - ``cheaper_than_front``: epochs of trials cheaper than every front point of their
      time, which only the constraint bound can stop;
    - ``repeated_trials``: trials whose parameters repeat an earlier trial's.
    """
    from autoslim.searching.early_stop import dominated

    data = json.loads(path.read_text())
    out = {}
    for task, seeds in data.items():
        epochs = oracle = cheaper = repeats = trials = 0
        for arms in seeds.values():
            off = arms["off"]
            directions = off["directions"]
            metric, cost = list(directions)
            maximize = directions[metric] == "maximize"
            done: list[TrialRecord] = []
            seen = []
            for t in off["trials"]:
                record = record_from_json(t)
                trials += 1
                repeats += record.params in seen
                seen.append(record.params)
                front = [
                    FrontPoint(r.metric, {cost: r.costs[cost]}) for r in front_of(done, directions)
                ]
                n = len(record.curve)
                epochs += n
                if n:
                    infeasible = off["bound"] is not None and (
                        record.metric < off["bound"] if maximize else record.metric > off["bound"]
                    )
                    lost = infeasible or dominated(
                        record.metric, {cost: record.costs[cost]}, front, maximize=maximize
                    )
                    oracle += (n - 1) if lost else 0
                    cheaper += (
                        n if front and record.costs[cost] < min(p.costs[cost] for p in front) else 0
                    )
                done.append(record)
        out[task] = {
            "epochs": epochs,
            "oracle_saved": oracle / epochs,
            "cheaper_than_front": cheaper / epochs,
            "repeated_trials": repeats / trials,
        }
    return out


def print_replay_from_records(result: dict) -> None:
    print(
        "replay of the current rule on recorded off arms (mean of seeds; min HV kept of any seed)"
    )
    print(
        f"{'task':<9}{'curve':<15}"
        + "".join(f"{'q=' + q:>26}" for q in next(iter(result.values()))["curve"])
    )
    for task, kinds in result.items():
        for kind, by_q in kinds.items():
            cells = "".join(
                f"{v['epochs_saved']:>8.1%} {v['hv_kept']:>7.2%} ({v['hv_kept_min']:6.2%})"
                for v in by_q.values()
            )
            print(f"{task:<9}{'shipped' if kind == 'curve' else 'in training':<15}{cells}")


# ---- comparing the arms ----


def same_prefix(a: list[TrialRecord], b: list[TrialRecord]) -> int:
    """How many leading trials drew identical parameters in both arms."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x.params != y.params:
            break
        n += 1
    return n


def compare_seed(out_dir: Path, task: str, seed: int) -> dict:
    """Both arms of one task and seed on their common trial budget, plus the replay."""
    runs = {arm: load_run(out_dir / f"{task}-seed{seed}-{arm}") for arm in ARMS}
    spec = runs["off"].info["experiment_spec"]
    max_drop = spec["constraints"][0]["max_drop"]
    directions = {
        runs["off"].metric_name: runs["off"].objectives[runs["off"].metric_name],
        "size_bytes": runs["off"].objectives["size_bytes"],
    }
    refs = {arm: reference_point(run, max_drop) for arm, run in runs.items()}
    assert np.array_equal(refs["off"], refs["on"]), "both arms must share one reference point"
    budget = min(len(read_trials(run)) for run in runs.values())
    records = {arm: read_trials(run, budget) for arm, run in runs.items()}
    live = {arm: arm_numbers(records[arm], directions, refs["off"]) for arm in ARMS}
    settings = spec["search"]["early_stopping"]
    best = best_possible_metric(spec)
    same = same_prefix(records["off"], records["on"])
    metric = runs["off"].metric_name
    bound = metric_bound(
        [Constraint(**c) for c in spec["constraints"]],
        metric,
        runs["off"].baseline[metric],
        maximize=directions[metric] == "maximize",
    )

    # As the live arm ran: a run folder whose settings have no budget (or have it off) replays without it.
    extras = {
        "hv_budget": settings.get("hv_budget", 0.0),
        "error_fraction": settings.get("error_fraction", False),
        "reference_costs": {"size_bytes": refs["off"][1]},
    }

    def replayed(q: float, with_bound: bool) -> list[TrialRecord]:
        return replay(
            records["off"],
            directions,
            quantile=q,
            min_curves=settings["min_curves"],
            best_possible=best,
            own_curve_from=settings.get("own_curve_from"),
            bound=bound if with_bound else None,
            **extras,
        )

    def scored(trials: list[TrialRecord]) -> dict:
        return ratios(live["off"], arm_numbers(trials, directions, refs["off"]))

    sensitivity = {
        str(q): scored(replayed(q, True))
        for q in sorted({settings["quantile"], *SENSITIVITY_QUANTILES})
    }
    without_bound = replayed(settings["quantile"], False)
    # The same rule reading the curve of the model in training instead of the shipped one:
    # how much seeing the later stages is worth.
    on_trained = replay(
        [replace(r, curve=r.trained_curve) for r in records["off"]],
        directions,
        best_possible=best,
        quantile=settings["quantile"],
        min_curves=settings["min_curves"],
        bound=bound,
        own_curve_from=settings.get("own_curve_from"),
        **extras,
    )
    # Where both arms drew the same trials, the replay of the rule the live arm ran (with
    # the constraint bound, as local.make_stopper builds it) must reproduce its decisions;
    # this checks the replay machinery only if the live run used the current rule.
    as_live = replayed(settings["quantile"], True)
    agrees = sum(
        a.state == b.state for a, b in zip(as_live[:same], records["on"][:same], strict=True)
    )
    return {
        "seed": seed,
        "trials": budget,
        "reference": refs["off"].tolist(),
        **live,
        **ratios(live["off"], live["on"]),
        "same_params_prefix": same,
        "replay_matches_live_on_prefix": agrees,
        "replay": sensitivity[str(settings["quantile"])],
        "replay_by_quantile": sensitivity,
        "replay_without_bound": scored(without_bound),
        "replay_trained_curve": scored(on_trained),
        "rule": {
            "quantile": settings["quantile"],
            "min_curves": settings["min_curves"],
            "bound": bound,
            "own_curve_from": settings.get("own_curve_from"),
            "hv_budget": extras["hv_budget"],
            "error_fraction": extras["error_fraction"],
        },
    }


def ratios(off: dict, on: dict) -> dict:
    return {
        "epochs_saved": 1 - on["epochs"] / off["epochs"] if off["epochs"] else 0.0,
        "hv_kept": on["hypervolume"] / off["hypervolume"] if off["hypervolume"] else float("nan"),
        "seconds_saved": 1 - on["trial_seconds"] / off["trial_seconds"]
        if off["trial_seconds"]
        else 0.0,
        "stopped": on["stopped"],
    }


def compare(out_dir: Path, tasks: list[str], seeds: list[int]) -> dict:
    out = {}
    for task in tasks:
        rows = [compare_seed(out_dir, task, seed) for seed in seeds]
        mean = {
            k: float(np.mean([r[k] for r in rows]))
            for k in ("epochs_saved", "hv_kept", "seconds_saved")
        }
        replay_mean = {
            k: float(np.mean([r["replay"][k] for r in rows])) for k in ("epochs_saved", "hv_kept")
        }
        no_bound = {
            k: float(np.mean([r["replay_without_bound"][k] for r in rows]))
            for k in ("epochs_saved", "hv_kept")
        }
        out[task] = {
            "seeds": rows,
            "mean": mean,
            "replay_mean": replay_mean,
            "replay_without_bound_mean": no_bound,
            "meets_goal": mean["epochs_saved"] >= GOAL_EPOCHS_SAVED
            and mean["hv_kept"] >= GOAL_HV_KEPT,
        }
    return out


# ---- output ----


def print_table(report: dict) -> None:
    host = report["host"] or {}
    print(
        f"early stopping: up to {report['trials']} trials per search, seeds {report['seeds']}, "
        f"{report['jobs']} searches at a time {report['where'] or host}"
    )
    print(
        "HV on (accuracy, size_bytes); reference = (baseline accuracy - max_drop, fp32 bytes), same for both arms"
    )
    print(
        f"{'task':<9}{'seed':>5}{'trials':>7}{'epochs off':>11}{'on':>6}{'saved':>8}{'HV kept':>9}"
        f"{'stopped':>8}{'s off':>7}{'s on':>7}{'same':>6}{'replay saved':>14}{'kept':>8}{'no bound':>10}{'kept':>8}"
    )
    for task, res in report["tasks"].items():
        for r in res["seeds"]:
            rp, nb = r["replay"], r["replay_without_bound"]
            print(
                f"{task:<9}{r['seed']:>5}{r['trials']:>7}{r['off']['epochs']:>11}{r['on']['epochs']:>6}"
                f"{r['epochs_saved']:>8.1%}{r['hv_kept']:>9.2%}{r['stopped']:>8}"
                f"{r['off']['trial_seconds']:>7.0f}{r['on']['trial_seconds']:>7.0f}{r['same_params_prefix']:>6}"
                f"{rp['epochs_saved']:>14.1%}{rp['hv_kept']:>8.2%}{nb['epochs_saved']:>10.1%}{nb['hv_kept']:>8.2%}"
            )
        m, rm, nm = res["mean"], res["replay_mean"], res["replay_without_bound_mean"]
        print(
            f"{task:<9}{'mean':>5}{'':>24}{m['epochs_saved']:>8.1%}{m['hv_kept']:>9.2%}{'':>8}"
            f"{'':>20}{rm['epochs_saved']:>14.1%}{rm['hv_kept']:>8.2%}{nm['epochs_saved']:>10.1%}{nm['hv_kept']:>8.2%}"
        )
    print(
        f"goal: >= {GOAL_EPOCHS_SAVED:.0%} of epochs saved and >= {GOAL_HV_KEPT:.0%} of HV kept (mean of seeds)"
    )
    print(
        "live (saved, HV kept, stopped, s): the stopping arm as it ran; same: leading trials with identical"
    )
    print(
        "parameters in both arms; replay: the current rule replayed on the off arm's own trials and curves"
    )
    print("(identical configurations), with the constraint bound and without it ('no bound')")
    for task, res in report["tasks"].items():
        cells = []
        for q in res["seeds"][0]["replay_by_quantile"]:
            saved = np.mean([r["replay_by_quantile"][q]["epochs_saved"] for r in res["seeds"]])
            kept = np.mean([r["replay_by_quantile"][q]["hv_kept"] for r in res["seeds"]])
            cells.append(f"q={q}: {saved:.1%} saved, {kept:.2%} kept")
        print(f"replay by quantile, {task}: " + "; ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument(
        "--jobs", type=int, default=1, help="searches at once (each trains on 2 threads)"
    )
    parser.add_argument(
        "--deadline", type=float, help="seconds after which no search starts a new trial"
    )
    parser.add_argument("--out-dir", type=Path, default=Path("runs/bench-early-stopping"))
    parser.add_argument(
        "--analyze", action="store_true", help="only read the run folders already in --out-dir"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run folders already in --out-dir up to --trials instead of starting over",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: digits, one seed, 8 trials"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    parser.add_argument(
        "--where", default="", help="where the searches ran (recorded with --analyze)"
    )
    parser.add_argument(
        "--arms", default="off,on", help="which arms to run: off,on (compare) or off (record only)"
    )
    parser.add_argument(
        "--records", type=Path, help="also write every trial (curves, costs) to this JSON file"
    )
    parser.add_argument(
        "--from-records",
        type=Path,
        help="only replay the rule on the off arms of a --records file, by quantile",
    )
    parser.add_argument(
        "--whole-gain",
        action="store_true",
        help="with --from-records: ablation, count each calibration curve's whole remaining "
        "gain whatever the trial's horizon, with no own-curve bound",
    )
    parser.add_argument(
        "--own-curve-from",
        type=int,
        default=DEFAULTS.own_curve_from,
        help="with --from-records: epochs before a trial's own curve bounds it (0: never)",
    )
    parser.add_argument(
        "--hv-budget",
        type=float,
        default=DEFAULTS.hv_budget,
        help="with --from-records: share of the front's hypervolume stops may give up (0: off)",
    )
    parser.add_argument(
        "--no-error-fraction",
        action="store_true",
        help="with --from-records: no error-fraction bound for the constraint",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.seeds, args.trials = ["digits"], args.seeds[:1], 8
    if args.from_records:
        try:
            if args.own_curve_from != 0 and args.own_curve_from < 2:
                parser.error(
                    f"--own-curve-from: 0 (never) or at least 2 (a step needs two epochs), "
                    f"got {args.own_curve_from}"
                )
            if not 0 <= args.hv_budget < 1:
                parser.error(f"--hv-budget: a share in [0, 1), got {args.hv_budget}")
            result = replay_from_records(
                args.from_records,
                whole_gain=args.whole_gain,
                own_curve_from=args.own_curve_from or None,
                hv_budget=args.hv_budget,
                error_fraction=not args.no_error_fraction,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(
                f"--from-records {args.from_records}: not a --records file ({type(exc).__name__}: {exc})"
            )
        ceiling = ceiling_from_records(args.from_records)
        if args.json:
            print(json.dumps({"replay": result, "ceiling": ceiling}, indent=2))
        else:
            print_replay_from_records(result)
            for task, c in ceiling.items():
                print(
                    f"{task}: {c['epochs']} epochs; an oracle stopping after one epoch saves {c['oracle_saved']:.1%}; "
                    f"{c['cheaper_than_front']:.1%} are in trials cheaper than the front; "
                    f"{c['repeated_trials']:.0%} of trials repeat earlier parameters"
                )
        return 0
    start = time.monotonic()
    arms = tuple(a for a in args.arms.split(",") if a)
    if not set(arms) <= set(ARMS):
        parser.error(f"--arms: unknown arm in {args.arms!r} (known: off, on)")
    if not args.analyze:
        deadline = None if args.deadline is None else time.time() + args.deadline
        run_all(
            args.tasks,
            args.seeds,
            args.trials,
            args.out_dir,
            args.jobs,
            deadline,
            arms,
            args.resume,
        )
    if args.records:
        args.records.write_text(
            json.dumps(dump_records(args.out_dir, args.tasks, args.seeds, arms), indent=1)
        )
    if set(arms) != set(ARMS):
        return 0  # nothing to compare: the records are the output
    import torch

    report = {
        "benchmark": "early_stopping",
        "trials": args.trials,
        "seeds": args.seeds,
        "jobs": args.jobs,
        "quick": args.quick,
        "experiments": {t: str(TASKS[t].relative_to(ROOT)) for t in args.tasks},
        "host": None
        if args.analyze
        else {"cpus": os.cpu_count(), "python": sys.version.split()[0], "torch": torch.__version__},
        "where": args.where,
        "deadline_s": args.deadline,
        "total_seconds": None if args.analyze else round(time.monotonic() - start, 1),
        "goal": {"epochs_saved": GOAL_EPOCHS_SAVED, "hv_kept": GOAL_HV_KEPT},
        "tasks": compare(args.out_dir, args.tasks, args.seeds),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
