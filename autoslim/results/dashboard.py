"""``autoslim dashboard``: a run's study in optuna-dashboard, an optional extra.

The dashboard reads the run's own storage (the run folder's journal file, or the database
that workers share), so it can also watch a search in progress. It shows the objectives
by name because every study gets ``study.set_metric_names`` (see
:func:`autoslim.searching.study.open_study`).

Constraints need a translation. autoslim records each one by name with
``trial.set_constraint`` (trial system attribute ``constraints:<label>``, e.g.
``constraints:accuracy.max_drop``), which is what Optuna 5's ``trial.constraints``, its
samplers and :func:`autoslim.run.trials_table` read. optuna-dashboard (0.21, and its
main branch: ``serialize_frozen_trial`` in ``optuna_dashboard/_serializer.py``) reads
only the unnamed list that Optuna's ``constraints_func`` writes, system attribute
``constraints``, and shows nothing for the named ones. Writing that list into the study
as well would make Optuna see every constraint twice (as ``"0"`` and under its label),
so the GP sampler, for one, would model each twice. The list is therefore added only in
the dashboard's view of the storage (:class:`DashboardView`), never written, so any run
folder shows its constraints as it is.
"""

from __future__ import annotations

import abc
import contextlib
import copy
from collections.abc import Container, Sequence
from pathlib import Path
from typing import Any

from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from autoslim.errors import AutoslimError

INSTALL_HINT = 'pip install "autoslim[dashboard]"'
# What Optuna's set_constraint writes, and the list optuna-dashboard reads.
NAMED_PREFIX = "constraints:"
LIST_KEY = "constraints"


def require_dashboard() -> Any:
    """The optuna_dashboard module, or the one-line error saying how to install it."""
    try:
        import optuna_dashboard
    except ImportError:  # not installed, or installed without what it needs
        raise AutoslimError(f"autoslim dashboard needs optuna-dashboard: {INSTALL_HINT}") from None
    return optuna_dashboard


def constraint_list(system_attrs: dict[str, Any], order: Sequence[str] = ()) -> list[float]:
    """A trial's named constraint values as the list optuna-dashboard shows.

    ``order`` (labels, as the experiment lists its constraints) fixes the positions, so
    position i means the same constraint in every trial; labels it does not name follow
    in the order they were recorded.
    """
    named = {
        k.removeprefix(NAMED_PREFIX): v
        for k, v in system_attrs.items()
        if k.startswith(NAMED_PREFIX)
    }
    labels = [label for label in order if label in named]
    labels += [label for label in named if label not in labels]
    return [float(named[label]) for label in labels]


def constraint_labels(info: dict[str, Any]) -> list[str]:
    """The run's constraint labels (``accuracy.max_drop``) in the experiment's order."""
    from autoslim.searching.experiment import Constraint

    specs = (info.get("experiment_spec") or {}).get("constraints") or []
    return [Constraint.model_validate(spec).label for spec in specs]


class DashboardView(BaseStorage):
    """A run's storage as optuna-dashboard should read it: each trial that holds named
    constraints also carries them as the ``constraints`` list (:func:`constraint_list`).

    Trials are copied before the list is added: the storage's own cached trials (which
    ``deepcopy=False`` hands out) stay as recorded. Everything else, writes the
    dashboard makes such as notes included, goes straight to the storage.
    """

    def __init__(self, storage: BaseStorage, order: Sequence[str] = ()) -> None:
        self._storage = storage
        self._order = list(order)

    def _with_list(self, trial: FrozenTrial) -> FrozenTrial:
        attrs = trial.system_attrs
        if LIST_KEY in attrs or not any(k.startswith(NAMED_PREFIX) for k in attrs):
            return trial  # already in the dashboard's form, or unconstrained
        shown = copy.copy(trial)
        shown.system_attrs = {**attrs, LIST_KEY: constraint_list(attrs, self._order)}
        return shown

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return self._with_list(self._storage.get_trial(trial_id))

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        trials = self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [self._with_list(t) for t in trials]


def _pass_through(name: str) -> Any:
    def method(self: DashboardView, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._storage, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"The storage's own ``{name}``."
    return method


# Every other abstract method of BaseStorage (and the session cleanup an RDB storage
# needs) calls the storage underneath; a storage interface grown in a later Optuna
# then still works, instead of failing in the dashboard with NotImplementedError.
for _name in (BaseStorage.__abstractmethods__ | {"remove_session"}) - set(vars(DashboardView)):
    setattr(DashboardView, _name, _pass_through(_name))
abc.update_abstractmethods(DashboardView)


def dashboard_storage(run_dir: str | Path) -> BaseStorage:
    """The storage of the run in ``run_dir``, opened as :func:`autoslim.run.load_run`
    opens it (journal file, or the database run.json names), seen through the view."""
    from autoslim.run import load_run

    run = load_run(run_dir)
    # Study keeps its storage private; load_run has already checked the study is there.
    return DashboardView(run.study._storage, constraint_labels(run.info))


def serve(run_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve optuna-dashboard on the run's storage until Ctrl-C."""
    from wsgiref.simple_server import make_server

    optuna_dashboard = require_dashboard()  # before opening the run: the cheaper error first
    app = optuna_dashboard.wsgi(dashboard_storage(run_dir))
    # The single-threaded server optuna-dashboard's own run_server uses, made here so that a
    # port in use fails (one error line) before anything says the dashboard is up.
    with make_server(host, port, app) as server:
        print(
            f"optuna-dashboard for {run_dir}: http://{host}:{port}/ (Ctrl-C stops it)", flush=True
        )
        # Ctrl-C is how it is meant to stop: no "interrupted" message, exit status 0.
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
