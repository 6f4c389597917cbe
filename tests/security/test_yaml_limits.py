"""Recipes, experiments and spaces are read with a byte cap, no aliases, no tags, UTF-8 only."""

from __future__ import annotations

import pytest

from autoslim.cli import main
from autoslim.recipe import MAX_YAML_BYTES
from tests.conftest import TINY_TASK

pytestmark = pytest.mark.hostile

TASK = f"task: {{entry: '{TINY_TASK['entry']}', params: {{width: 4, epochs: 3}}}}\n"

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(9)
)

BAD_TEXTS = {
    "alias bomb in task params": lambda: (
        TASK.replace("epochs: 3}", "epochs: 3, junk: *j}").replace("task:", "j: &j [1]\ntask:")
        + "stages: []\n"
    ),
    "billion laughs": lambda: BOMB + TASK + "stages: []\n",
    "python object tag": lambda: (
        "task: !!python/object/apply:os.system ['touch pwned']\nstages: []\n"
    ),
    "python name tag": lambda: "task: {entry: !!python/name:os.system , params: {}}\nstages: []\n",
    "nesting too deep": lambda: "task: " + "[" * 20000 + "]" * 20000 + "\n",
    "oversize file": lambda: TASK + "stages: []\n#" + "x" * (MAX_YAML_BYTES + 1) + "\n",
    "two hundred thousand keys": lambda: (
        TASK + "stages: []\nextra: {" + ", ".join(f"k{i}: 1" for i in range(200_000)) + "}\n"
    ),
    "tab indentation": lambda: "task:\n\t- 1\n",
    "unclosed bracket": lambda: TASK + "stages: [\n",
    "duplicate document": lambda: TASK + "stages: []\n---\n" + TASK,
    "a bare string": lambda: "just words\n",
    "a list, not a mapping": lambda: "- 1\n- 2\n",
    "null document": lambda: "",
}


@pytest.mark.parametrize("case", sorted(BAD_TEXTS))
@pytest.mark.parametrize("as_what", ["recipe", "experiment"])
def test_bad_yaml_is_one_line(capsys, tmp_path, case, as_what):
    path = tmp_path / "file.yaml"
    path.write_text(BAD_TEXTS[case]())
    argv = (
        ["apply", str(path), "-o", str(tmp_path / "out")]
        if as_what == "recipe"
        else ["search", str(path), "--out", str(tmp_path / "run")]
    )
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("as_what", ["recipe", "experiment", "search space"])
def test_non_utf8_is_one_line(capsys, tmp_path, as_what):
    path = tmp_path / "file.yaml"
    if as_what == "search space":
        (tmp_path / "space.yaml").write_bytes(b"components: [\xff\xfe]\n")
        path.write_text(f"name: x\n{TASK}space: space.yaml\nobjectives: {{accuracy: maximize}}\n")
        argv = ["search", str(path), "--out", str(tmp_path / "run")]
    else:
        path.write_bytes(TASK.encode() + b"stages: []\nname: \xff\xfe\n")
        argv = (
            ["apply", str(path), "-o", str(tmp_path / "out")]
            if as_what == "recipe"
            else ["search", str(path), "--out", str(tmp_path / "run")]
        )
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not UTF-8" in err[0], err
