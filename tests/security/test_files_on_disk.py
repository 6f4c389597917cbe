"""Writing never deletes what autoslim did not write; reading follows no link."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import autoslim
from autoslim.artifact import artifact_bytes, save_artifact
from autoslim.cli import main
from autoslim.errors import AutoslimError
from autoslim.pipeline import apply_recipe
from tests.security.conftest import RECIPES, build_model, make_task, recipe_for


def _save(folder, **kwargs):
    recipe = recipe_for(RECIPES["asym5_dense"])
    task = make_task()
    return save_artifact(
        apply_recipe(recipe, task=task, model=build_model()), recipe, folder, task=task, **kwargs
    )


def _user_folder(tmp_path):
    """What ``-o`` might point at by mistake: a folder that looks like an artifact but
    also holds the user's work."""
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "recipe.yaml").write_text("mine\n")
    (folder / "weights.safetensors").write_bytes(b"mine")
    (folder / "thesis.tex").write_text("\\documentclass{article}\n")
    (folder / "figures").mkdir()
    (folder / "figures" / "plot.pdf").write_bytes(b"%PDF")
    return folder


@pytest.mark.hostile
def test_apply_refuses_a_folder_holding_user_files(capsys, tmp_path, artifacts):
    folder = _user_folder(tmp_path)
    recipe = artifacts["asym5_dense"] / "recipe.yaml"
    code = main(["apply", str(recipe), "-o", str(folder)])
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2
        and len(err) == 1
        and "holds files autoslim did not write (figures, thesis.tex)" in err[0]
    )
    assert (folder / "thesis.tex").exists() and (folder / "figures" / "plot.pdf").exists()
    assert (folder / "recipe.yaml").read_text() == "mine\n"


@pytest.mark.hostile
def test_save_refuses_a_file_and_a_link(tmp_path):
    (tmp_path / "a_file").write_text("mine")
    with pytest.raises(AutoslimError, match="is not a folder"):
        _save(tmp_path / "a_file")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(AutoslimError, match="symbolic link"):
        _save(tmp_path / "link")
    assert (tmp_path / "a_file").read_text() == "mine"


def test_force_writes_beside_user_files_and_deletes_none(tmp_path):
    folder = _user_folder(tmp_path)
    _save(folder, force=True)
    assert (folder / "thesis.tex").exists() and (folder / "figures" / "plot.pdf").exists()
    assert autoslim.load(folder)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".thesis.")]  # no temporary left


def test_a_previous_artifact_is_replaced_in_place(tmp_path):
    folder = _save(tmp_path / "a")
    before = sorted(p.name for p in folder.iterdir())
    _save(folder)
    assert (
        sorted(p.name for p in folder.iterdir()) == before == ["recipe.yaml", "weights.safetensors"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.hostile
@pytest.mark.parametrize("linked", ["recipe.yaml", "weights.safetensors", "extra"])
def test_links_inside_an_artifact_are_refused_and_not_counted(tmp_path, artifacts, linked):
    folder = tmp_path / "a"
    shutil.copytree(artifacts["fp32"], folder)
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 1_000_000)
    size = artifact_bytes(folder)
    if linked == "extra":
        (folder / "extra").symlink_to(big)
    else:
        shutil.move(folder / linked, tmp_path / linked)
        os.symlink(tmp_path / linked, folder / linked)
    # a link is never counted, nor its target read
    assert artifact_bytes(folder) == (
        size if linked == "extra" else size - (tmp_path / linked).stat().st_size
    )
    with pytest.raises(AutoslimError, match="symbolic link"):
        autoslim.load(folder)
