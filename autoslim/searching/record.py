"""What a study records about each trial, and about itself, under Optuna's user attributes.

Optuna keeps a trial's extra data as a flat ``user_attrs`` mapping of JSON values. The
names below are the on-disk format of every run folder: a journal or database written by
an earlier autoslim must still load, and scripts read some of these keys directly, so a
name here never changes. :class:`TrialRecord` gives them types; code reads and writes a
trial's attributes through it instead of spelling keys.

This module imports nothing from autoslim, so the run-folder reader (:mod:`autoslim.run`)
and the search both build on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

# Keys that autoslim's own bookkeeping adds start with this, apart from the trial's
# results, which kept plain names.
ATTR_PREFIX = "autoslim."

# ---- trial attributes
RECIPE = "recipe"
MEASURED = "measured"
FAIL_REASON = "fail_reason"
STOP_REASON = "stop_reason"
HV_CHARGE_ATTR = "stop_hv_charge"
CURVE = "curve"
TRAINED_CURVE = "trained_curve"
DRY_RUN_COSTS = "dry_run_costs"
PLANNED_FINE_TUNES = "planned_fine_tunes"
REPEAT_OF = "repeat_of"
PHASE_SECONDS = "phase_seconds"
HOST = ATTR_PREFIX + "host"
PID = ATTR_PREFIX + "pid"
BACKEND = ATTR_PREFIX + "backend"
NODE = ATTR_PREFIX + "node"
WINDOW = ATTR_PREFIX + "window"

# ---- study attributes
BASELINE_ATTR = ATTR_PREFIX + "baseline"
BASELINE_SHA_ATTR = ATTR_PREFIX + "baseline_sha"
TEST_METRICS = ATTR_PREFIX + "test_metrics"

# The fail reason of a trial whose process stopped before it finished. Such a trial used
# no budget: its parameters are queued again.
INTERRUPTED = "interrupted: the process running it stopped before it finished"


class HasUserAttrs(Protocol):
    """An Optuna trial of any kind: frozen, live or fixed."""

    @property
    def user_attrs(self) -> dict[str, Any]: ...


class AcceptsUserAttrs(Protocol):
    def set_user_attr(self, key: str, value: Any) -> None: ...


def _attr(key: str, *, sequence: bool = False) -> Any:
    """A record field stored under ``key`` (``sequence``: a JSON list, held as a tuple)."""
    return field(default=None, metadata={"key": key, "sequence": sequence})


@dataclass(frozen=True)
class TrialRecord:
    """One trial's attributes, typed. ``None`` is "not recorded": that key is absent.

    A record need not be complete: the trial body writes parts of it as they become known
    (the recipe first, the curve after each epoch), each with :meth:`write_to`.
    """

    # What the trial tried: the recipe as suggested, then as its stages realised it.
    recipe: dict[str, Any] | None = _attr(RECIPE)
    # Every value measured on its artifact (objectives and extras such as energy_source).
    measured: dict[str, Any] | None = _attr(MEASURED)
    fail_reason: str | None = _attr(FAIL_REASON)
    stop_reason: str | None = _attr(STOP_REASON)
    # The hypervolume a stop under the early-stopping budget gave up (the budget's ledger).
    hv_charge: float | None = _attr(HV_CHARGE_ATTR)
    # The validation metric after each fine-tune epoch of the model as it would ship
    # (what the stopping rule reads), and of the model in training.
    curve: tuple[float, ...] | None = _attr(CURVE, sequence=True)
    trained_curve: tuple[float, ...] | None = _attr(TRAINED_CURVE, sequence=True)
    # The cost objectives measured on a dry-run artifact (no training), before training.
    dry_run_costs: dict[str, float] | None = _attr(DRY_RUN_COSTS)
    # The fine-tunes the recipe plans, each one's epochs. Where a stage decides them while
    # training, the plan is unknown: ``fine_tunes_unknown``, stored as a JSON null.
    planned_fine_tunes: tuple[int, ...] | None = _attr(PLANNED_FINE_TUNES, sequence=True)
    fine_tunes_unknown: bool = False
    # The completed trial with the same parameters whose measurement this one reused.
    repeat_of: int | None = _attr(REPEAT_OF)
    # Where the trial's time went: "compress" (every stage, fine-tunes included), "save"
    # and "measure" (the artifact timed and scored), in seconds.
    phase_seconds: dict[str, float] | None = _attr(PHASE_SECONDS)
    # The process that holds the trial, so a re-run can tell a dead owner's trial apart.
    host: str | None = _attr(HOST)
    pid: int | None = _attr(PID)
    backend: str | None = _attr(BACKEND)
    # Where a Ray trial ran, and when (wall-clock seconds at its start and end).
    node: str | None = _attr(NODE)
    window: tuple[float, float] | None = _attr(WINDOW, sequence=True)

    def __post_init__(self) -> None:
        if self.fine_tunes_unknown and self.planned_fine_tunes is not None:
            raise ValueError("a record's fine-tune plan is either known or unknown, not both")

    @property
    def interrupted(self) -> bool:
        return self.fail_reason == INTERRUPTED

    @property
    def owned(self) -> bool:
        """Whether the trial names its whole owner, host and pid."""
        return self.host is not None and self.pid is not None

    def to_user_attrs(self) -> dict[str, Any]:
        """The recorded fields under their keys, as JSON values (sequences as lists)."""
        attrs = {}
        for f in _ATTR_FIELDS:
            value = getattr(self, f.name)
            if value is not None:
                attrs[f.metadata["key"]] = list(value) if f.metadata["sequence"] else value
        if self.fine_tunes_unknown:
            attrs[PLANNED_FINE_TUNES] = None
        return attrs

    def write_to(self, trial: AcceptsUserAttrs) -> None:
        """Set the recorded fields on a live trial; its other attributes stay as they are."""
        for key, value in self.to_user_attrs().items():
            trial.set_user_attr(key, value)

    @classmethod
    def from_user_attrs(cls, attrs: Mapping[str, Any]) -> TrialRecord:
        """The record held in ``attrs``; keys it does not know are ignored."""
        values: dict[str, Any] = {}
        for f in _ATTR_FIELDS:
            value = attrs.get(f.metadata["key"])
            if value is not None:
                values[f.name] = tuple(value) if f.metadata["sequence"] else value
        unknown_plan = PLANNED_FINE_TUNES in attrs and attrs[PLANNED_FINE_TUNES] is None
        return cls(**values, fine_tunes_unknown=unknown_plan)

    @classmethod
    def from_trial(cls, trial: HasUserAttrs) -> TrialRecord:
        return cls.from_user_attrs(trial.user_attrs)


_ATTR_FIELDS = tuple(f for f in fields(TrialRecord) if "key" in f.metadata)
