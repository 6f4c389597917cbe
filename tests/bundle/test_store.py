"""Bundles written from a finished run: bytes, sharing, exact points, switching, damage."""

import json

import pytest
import torch
from results.test_report import tiny_run
from torch import nn

from autoslim.artifact import load_artifact
from autoslim.bundle import load_bundle, read_manifest
from autoslim.bundle.module import time_switches
from autoslim.bundle.store import TENSORS_FILE
from autoslim.cli import main
from autoslim.errors import AutoslimError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle_dir(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "b"
    assert (
        main(
            [
                "export",
                str(run.path),
                "--bundle",
                "--trial",
                "0",
                "--trial",
                "1",
                "-o",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    return out


def _folder_bytes(folder):
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_manifest_counts_the_bytes_on_disk_and_the_tensors_shared(run, bundle_dir):
    manifest = read_manifest(bundle_dir)
    accuracy = run.table().set_index("trial")["accuracy"]
    order = sorted([0, 1], key=lambda t: -accuracy[t])
    assert [p.trial for p in manifest.points] == order  # the more accurate first
    assert manifest.bytes_bundle == _folder_bytes(bundle_dir)
    separate = sum(
        _folder_bytes(run.path / "artifacts" / f"trial_{p.trial}")
        for p in manifest.points
        if (run.path / "artifacts" / f"trial_{p.trial}").is_dir()
    )
    assert separate <= manifest.bytes_separate
    # post-training quantization leaves biases as they were: both points read one copy
    assert manifest.shared_tensors >= 2
    assert manifest.bytes_saved == manifest.bytes_separate - manifest.bytes_bundle
    assert manifest.points[0].values["accuracy"] == pytest.approx(float(accuracy[order[0]]))


def test_each_point_answers_exactly_as_its_own_artifact(run, bundle_dir, tmp_path):
    bundle = load_bundle(bundle_dir, task=run.task, trust_task=True)
    x = torch.randn(5, 1, 8, 8)
    main(["export", str(run.path), "--trial", "0", "-o", str(tmp_path / "r.yaml")])
    main(["apply", str(tmp_path / "r.yaml"), "-o", str(tmp_path / "a"), "--quiet", "--trust-task"])
    alone = load_artifact(tmp_path / "a", trust_task=True).model
    bundle.select("trial_0")
    before = bundle.switches
    with torch.inference_mode():
        assert torch.equal(bundle(x), alone(x))
        bundle.select("trial_0")  # already active: not a switch
        bundle.select(1 - bundle.index_of("trial_0"))
        assert not torch.equal(bundle(x), alone(x))
    assert bundle.active_name == "trial_1" and bundle.switches == before + 1
    # memory: a tensor equal in both points is held once
    both = bundle.resident_bytes()
    assert both < sum(bundle.resident_bytes([p.name]) for p in bundle.ladder)
    times = time_switches(bundle, count=200)
    assert len(times) == 200 and bundle.switches == before + 201


def test_unknown_points_are_one_line(run, bundle_dir):
    bundle = load_bundle(bundle_dir, trust_task=True)
    with pytest.raises(
        AutoslimError, match=r"no point 'trial_9' \(it has trial_[01], trial_[01]\)"
    ):
        bundle.select("trial_9")
    with pytest.raises(AutoslimError, match="points 0..1, not 5"):
        bundle.select(5)


def test_a_bundle_of_another_model_is_refused_in_one_line(bundle_dir):
    with pytest.raises(AutoslimError, match="point trial_[01] does not fit the task's model"):
        load_bundle(
            bundle_dir, model_factory=lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        )


def test_a_damaged_store_is_refused(bundle_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    data = bytearray((copy / TENSORS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (copy / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(AutoslimError, match="does not match its hash"):
        load_bundle(copy, trust_task=True)
    manifest = json.loads((copy / "bundle.json").read_text())
    manifest["points"][0]["name"] = "../escape"
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(AutoslimError, match="damaged bundle .*bundle.json"):
        read_manifest(copy)


def test_cli_bad_input_is_one_line_and_writes_nothing(run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert (
        main(["export", str(run.path), "--bundle", "--trial", "0", "--trial", "1", "-o", str(mine)])
        == 2
    )
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    assert (
        main(["export", str(run.path), "--bundle", "--trial", "99", "-o", str(tmp_path / "x")]) == 2
    )
    assert (
        main(["export", str(run.path), "--bundle", "--trial", "0", "-o", str(tmp_path / "y")]) == 2
    )
    assert (
        main(
            [
                "export",
                str(run.path),
                "--trial",
                "0",
                "--trial",
                "1",
                "-o",
                str(tmp_path / "z.yaml"),
            ]
        )
        == 2
    )
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 4
    assert "not empty" in lines[0] and "no completed trial 99" in lines[1]
    assert "at least two points" in lines[2] and "several: add --bundle" in lines[3]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
