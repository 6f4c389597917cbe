"""TrialRecord: typed access to a trial's user attributes, in the on-disk format of every run."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from autoslim.searching.record import INTERRUPTED, TrialRecord

FULL = TrialRecord(
    recipe={"task": {"entry": "x:y"}, "stages": [{"kind": "quantize", "default": 8}]},
    measured={"accuracy": 0.91, "size_bytes": 1234.0, "energy_source": "estimated"},
    fail_reason="RuntimeError: out of memory",
    stop_reason="early-stopped after epoch 2",
    hv_charge=0.004,
    curve=(0.5, 0.7, 0.8),
    trained_curve=(0.55, 0.72, 0.81),
    dry_run_costs={"size_bytes": 1200.0},
    planned_fine_tunes=(2, 1),
    repeat_of=3,
    host="node-1",
    pid=4242,
    backend="ray",
    node="abc123",
    window=(10.5, 12.25),
)

# The keys of every run folder written so far: readers outside autoslim rely on them.
KEYS = {
    "recipe",
    "measured",
    "fail_reason",
    "stop_reason",
    "stop_hv_charge",
    "curve",
    "trained_curve",
    "dry_run_costs",
    "planned_fine_tunes",
    "repeat_of",
    "autoslim.host",
    "autoslim.pid",
    "autoslim.backend",
    "autoslim.node",
    "autoslim.window",
}


def frozen_after_writing(tmp_path, *records: TrialRecord) -> optuna.trial.FrozenTrial:
    """Write the records on a trial of a journal study, then read it back from the file."""
    path = str(tmp_path / "study.journal")
    study = optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(path)))
    trial = study.ask()
    for record in records:
        record.write_to(trial)
    study.tell(trial, 1.0)
    reopened = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(path)))
    return reopened.trials[0]


def test_a_full_record_round_trips_through_a_real_study(tmp_path):
    frozen = frozen_after_writing(tmp_path, FULL)
    assert set(frozen.user_attrs) == KEYS
    assert TrialRecord.from_trial(frozen) == FULL


def test_attributes_keep_their_json_shape():
    attrs = FULL.to_user_attrs()
    assert attrs["curve"] == [0.5, 0.7, 0.8] and attrs["autoslim.window"] == [10.5, 12.25]
    assert attrs["planned_fine_tunes"] == [2, 1] and attrs["autoslim.pid"] == 4242
    assert attrs["stop_hv_charge"] == 0.004


def test_an_unknown_fine_tune_plan_is_a_null_and_stays_distinct_from_none_recorded(tmp_path):
    unknown = TrialRecord(dry_run_costs={"size_bytes": 1.0}, fine_tunes_unknown=True)
    frozen = frozen_after_writing(tmp_path, unknown)
    assert frozen.user_attrs == {"dry_run_costs": {"size_bytes": 1.0}, "planned_fine_tunes": None}
    assert TrialRecord.from_trial(frozen) == unknown
    assert TrialRecord.from_user_attrs({}).fine_tunes_unknown is False
    with pytest.raises(ValueError, match="known or unknown"):
        TrialRecord(planned_fine_tunes=(1,), fine_tunes_unknown=True)


def test_partial_records_write_only_their_own_keys_and_add_up(tmp_path):
    assert TrialRecord().to_user_attrs() == {}
    frozen = frozen_after_writing(
        tmp_path,
        TrialRecord(recipe={"stages": []}),
        TrialRecord(curve=(0.4,)),
        TrialRecord(curve=(0.4, 0.6)),
        TrialRecord(fail_reason=INTERRUPTED),
    )
    record = TrialRecord.from_trial(frozen)
    assert record == TrialRecord(recipe={"stages": []}, curve=(0.4, 0.6), fail_reason=INTERRUPTED)
    assert record.interrupted and not record.owned


def test_keys_it_does_not_know_are_ignored():
    record = TrialRecord.from_user_attrs(
        {"measured": {"accuracy": 1.0}, "planned_epochs": 3, "other": "x"}
    )
    assert record == TrialRecord(measured={"accuracy": 1.0})
