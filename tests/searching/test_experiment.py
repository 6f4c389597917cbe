from __future__ import annotations

import pytest

from autoslim.errors import AutoslimError
from autoslim.searching.experiment import Constraint, load_experiment


@pytest.mark.parametrize(
    ("constraint", "direction", "value", "expected"),
    [
        ({"max": 100}, "minimize", 120.0, 20.0),
        ({"min": 0.9}, "maximize", 0.95, -0.05),
        ({"max_drop": 0.01}, "maximize", 0.975, 0.005),  # baseline 0.99: 1.5 pt worse, 1 allowed
        ({"max_drop": 0.01}, "maximize", 0.985, -0.005),
        ({"max_drop": 5.0}, "minimize", 12.0, -3.0),  # baseline 10: 2 worse, 5 allowed
        ({"max_ratio": 0.5}, "minimize", 4.0, -0.1),  # 4/10 = 0.4
    ],
)
def test_constraint_violation_follows_optuna_sign_convention(
    constraint, direction, value, expected
):
    c = Constraint(objective="m", **constraint)
    base = 0.99 if direction == "maximize" else 10.0
    assert c.violation({"m": value}, {"m": base}, direction) == pytest.approx(expected)


def test_constraint_needs_exactly_one_bound():
    with pytest.raises(ValueError, match="exactly one"):
        Constraint(objective="m", max=1, min=0)


def test_bundled_experiment_loads_with_its_space():
    from pathlib import Path

    experiment, space = load_experiment(Path(__file__).parents[2] / "experiments" / "digits.yaml")
    assert experiment.objectives == {"accuracy": "maximize", "size_bytes": "minimize"}
    assert [c.type for c in space.components] == ["prune.magnitude", "quantize.weight"]


def test_missing_space_file_is_named(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(
        "name: e\ntask: {entry: 'a.b:c'}\nspace: nowhere.yaml\nobjectives: {accuracy: maximize}\n"
    )
    with pytest.raises(AutoslimError, match="search space not found: nowhere.yaml"):
        load_experiment(path)


def test_an_experiment_that_is_not_utf8_is_a_one_line_error(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_bytes(b"name: e\ntask: {entry: 'a.b:c'}\nspace: caf\xe9.yaml\n")
    with pytest.raises(AutoslimError, match=r"not UTF-8 text \(byte 41\)"):
        load_experiment(path)


def test_a_preset_name_names_a_packaged_space(tmp_path):
    from autoslim.searching.experiment import space_presets

    assert {"prune_quant", "structured", "structured_quant"} <= set(space_presets())
    path = tmp_path / "e.yaml"
    path.write_text(
        "name: e\ntask: {entry: 'a.b:c'}\nspace: structured_quant\nobjectives: {accuracy: maximize}\n"
    )
    _, space = load_experiment(path)
    assert [c.type for c in space.components] == ["prune.structured", "quantize.weight"]
