"""The run folder's derived outputs: the teacher warning, judged on plain tables."""

from __future__ import annotations

import pandas as pd

from autoslim.searching.outputs import teacher_note

DISTILL = {"stages": [{"kind": "distill", "alpha": 0.7}, {"kind": "quantize", "bits": 4}]}
NAMED_TEACHER = {"stages": [{"kind": "distill", "teacher": {"entry": "pkg.big:make_task"}}]}
NO_KD = {"stages": [{"kind": "quantize", "bits": 4}]}


def table(rows: list[tuple[int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["trial", "state", "accuracy"])


def test_teacher_note_counts_students_that_reach_the_baseline_it_distils_from() -> None:
    trials = table(
        [
            (0, "COMPLETE", 0.9175),
            (1, "COMPLETE", 0.90),
            (2, "COMPLETE", 0.95),
            (3, "FAIL", 0.99),
            (4, "COMPLETE", 0.9113),
        ]
    )
    recipes = {0: DISTILL, 1: DISTILL, 2: NO_KD, 3: DISTILL, 4: DISTILL}
    note = teacher_note(trials, recipes, "accuracy", "maximize", 0.9113)
    # trials 0, 2 (no KD, same run) and 4 reach 0.9113; trial 3 failed and does not count
    assert note is not None and note.startswith(
        "3 of 4 trials reach the accuracy of the distill teacher"
    )
    assert "0.9113 on val; best trial 0.9500" in note


def test_teacher_note_is_silent_when_the_teacher_is_ahead_or_not_the_baseline() -> None:
    trials = table([(0, "COMPLETE", 0.90), (1, "COMPLETE", 0.96)])
    assert teacher_note(trials, {0: DISTILL, 1: NO_KD}, "accuracy", "maximize", 0.97) is None
    assert teacher_note(trials, {0: NAMED_TEACHER, 1: NO_KD}, "accuracy", "maximize", 0.5) is None
    assert teacher_note(trials, {0: NO_KD, 1: NO_KD}, "accuracy", "maximize", 0.5) is None
    assert teacher_note(trials, {0: DISTILL}, "accuracy", "maximize", None) is None
    assert teacher_note(trials, {0: DISTILL}, "f1", "maximize", 0.5) is None  # not a column
    failed = table([(0, "FAIL", 0.99), (1, "COMPLETE", 0.96)])
    assert (
        teacher_note(failed, {0: DISTILL, 1: NO_KD}, "accuracy", "maximize", 0.5) is None
    )  # only a failed trial distilled


def test_teacher_note_for_a_metric_to_minimize() -> None:
    trials = pd.DataFrame(
        [(0, "COMPLETE", 2.9), (1, "COMPLETE", 3.5)], columns=["trial", "state", "loss"]
    )
    note = teacher_note(trials, {0: DISTILL, 1: DISTILL}, "loss", "minimize", 3.0)
    assert note is not None and note.startswith("1 of 2") and "best trial 2.9000" in note
