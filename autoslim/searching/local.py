"""The local runner: trials one after another in this process.

Every finished trial is in the study's storage before the next one starts, and the
run folder's CSVs are refreshed after each, so a SIGKILL loses at most the trial
running at that moment (a re-run queues its parameters again).
"""

from __future__ import annotations

import time

import optuna
from tqdm import tqdm

from autoslim.searching.evaluate import SearchContext, run_trial_body
from autoslim.searching.outputs import prune_artifacts, refresh_tables
from autoslim.searching.runner import Runner
from autoslim.searching.study import (
    failed_count,
    finished_count,
    make_stopper,
    mark_owner,
    record_interrupted,
    record_outcome,
    remaining_budget,
)


class LocalRunner(Runner):
    """Runs the remaining budget in this process, one trial at a time."""

    def run(self, study: optuna.Study, ctx: SearchContext, *, progress: bool) -> None:
        settings = ctx.experiment.search
        start = time.monotonic()
        bar = tqdm(
            total=settings.trials,
            initial=min(finished_count(study), settings.trials),
            unit="trial",
            desc=ctx.experiment.name,
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            while remaining_budget(study, settings.trials) > 0:
                if settings.timeout is not None and time.monotonic() - start > settings.timeout:
                    break
                run_one_trial(study, ctx)
                front = prune_artifacts(study, ctx)
                # Current within one trial even after SIGKILL; the plot and summary wait for the end.
                refresh_tables(ctx.run_dir, study)
                stopped = len(
                    study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
                )
                bar.set_postfix(front=len(front), failed=failed_count(study), stopped=stopped)
                bar.update(min(finished_count(study), settings.trials) - bar.n)
        finally:
            bar.close()


def run_one_trial(study: optuna.Study, ctx: SearchContext) -> None:
    """Ask, evaluate, tell. Failures are recorded with their reason; the study goes on."""
    trial = study.ask()
    mark_owner(trial)
    try:
        # make_stopper is read from this module's globals at each call, so a script may
        # replace local.make_stopper (e.g. to record every curve and never stop).
        outcome = run_trial_body(trial, ctx, make_stopper(study, ctx))
    except KeyboardInterrupt:
        record_interrupted(study, trial)
        raise
    record_outcome(study, trial, outcome, ctx)
