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
    both = ["--trial", "0", "--trial", "1"]
    calls = [
        ["--bundle", *both, "-o", str(mine)],
        ["--bundle", "--force", *both, "-o", str(mine)],  # --force replaces only a bundle
        ["--bundle", "--trial", "99", "-o", str(tmp_path / "x")],
        ["--bundle", "--trial", "0", "-o", str(tmp_path / "y")],
        [*both, "-o", str(tmp_path / "z.yaml")],
    ]
    assert [main(["export", str(run.path), *call]) for call in calls] == [2] * 5
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 5
    assert "not empty" in lines[0] and "only replaces a bundle" in lines[1]
    assert "no completed trial 99" in lines[2]
    assert "at least two points" in lines[3] and "several: add --bundle" in lines[4]
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_force_replaces_a_bundle_in_place(run, bundle_dir, tmp_path):
    import shutil

    copy = tmp_path / "again"
    shutil.copytree(bundle_dir, copy)
    args = ["export", str(run.path), "--bundle", "--trial", "0", "--trial", "1", "-o", str(copy)]
    assert main([*args, "--quiet"]) == 2
    assert main([*args, "--quiet", "--force"]) == 0
    assert read_manifest(copy).bytes_bundle == read_manifest(bundle_dir).bytes_bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]  # the old one is gone


def _switching_main():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "switching.py"
    spec = importlib.util.spec_from_file_location("switching_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_switching_benchmark_refuses_bad_input_in_one_line(run, bundle_dir, tmp_path, capsys):
    import shutil

    main_ = _switching_main()
    assert main_(["--budget-ms", "-1"]) == 2
    common = ["--run", str(run.path), "--bundle", str(bundle_dir)]
    assert main_([*common, "--point", "trial_9"]) == 2
    other = tmp_path / "other"
    shutil.copytree(bundle_dir, other)
    manifest = json.loads((other / "bundle.json").read_text())
    manifest["task"]["params"]["width"] = 8  # made from another model
    (other / "bundle.json").write_text(json.dumps(manifest))
    assert main_(["--run", str(run.path), "--bundle", str(other)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines == [
        "error: LatencyBudget's budget must be a positive number of milliseconds, not -1.0",
        lines[1],
        lines[2],
    ]
    assert "no point 'trial_9'" in lines[1] and "made for another task" in lines[2]
