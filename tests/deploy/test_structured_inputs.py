"""Deploying models whose inputs are a dict or a tuple of tensors, on models written for
their users (tests/user_models.py): a Hugging Face BERT classifier called ``model(**batch)``
that returns a ``SequenceClassifierOutput``, and a two-input CNN called
``model(image, features)``. The ONNX graph takes the inputs by name, ONNX Runtime and
OpenVINO give the model's outputs on batches of other sizes and sequence lengths, int8
stays close, and the measured sessions (metric, latency, memory) feed the same inputs.

Each dynamo export of the BERT model takes seconds, so it is exported once (through the
CLI) and quantized, converted and measured from that file."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from autoslim.artifact import load_artifact, save_artifact  # noqa: E402
from autoslim.cli import main  # noqa: E402
from autoslim.data import Split, call_model  # noqa: E402
from autoslim.deploy import onnx as deploy  # noqa: E402
from autoslim.deploy.onnx import (  # noqa: E402
    PROVENANCE_KEY,
    onnx_session,
    quantize_dynamic,
    quantize_static,
    read_metadata,
)
from autoslim.deploy.runtimes import SessionModule  # noqa: E402
from autoslim.errors import AutoslimError  # noqa: E402
from autoslim.measure.runner import measure_artifact  # noqa: E402
from autoslim.pipeline import apply_recipe  # noqa: E402
from autoslim.recipe import Recipe, Target  # noqa: E402
from autoslim.task import Splits, Task, TrainSettings  # noqa: E402
from autoslim.trust import register_task, unregister_task  # noqa: E402
from tests.user_models import bert_classifier, image_data, loader_task  # noqa: E402

ENTRY = "tests.deploy.test_structured_inputs"
FAST = {"threads": 1, "batch_size": 16, "warmup": 1, "repeats": 3}
TOKENS = ["input_ids", "attention_mask"]


def make_bert_task() -> Task:
    return loader_task("bert", bert_classifier, sizes=(64, 64, 64), batch_size=16)


class ImageAndFeatures(nn.Module):
    """A small CNN on an image beside a few scalar features of the same sample (a
    photo and its metadata), called ``model(image, features)``."""

    def __init__(self, features: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.tabular = nn.Linear(features, 16)
        self.head = nn.Linear(32, classes)

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.conv1(image))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(torch.cat([x, F.relu(self.tabular(features))], dim=1))


def _image_and_features(n: int, seed: int) -> Split:
    images, labels = image_data(n, seed, size=8).tensors
    g = torch.Generator().manual_seed(seed + 100)
    features = F.one_hot(labels % 4, 4).float() + 0.3 * torch.randn(n, 4, generator=g)
    return Split((images, features), labels)


def make_tuple_task() -> Task:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return ImageAndFeatures().eval()

    def splits() -> Splits:
        return Splits(
            **{
                k: _image_and_features(48, s)
                for k, s in zip(("train", "val", "test"), (1, 2, 3), strict=True)
            }
        )

    return Task(
        name="image+features", build_model=build, load_data=splits,
        train=TrainSettings(epochs=0, batch_size=16),
    )  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _trusted():
    entries = [f"{ENTRY}:make_bert_task", f"{ENTRY}:make_tuple_task"]
    for entry in entries:
        register_task(entry)
    yield
    for entry in entries:
        unregister_task(entry)


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["export-model", *map(str, argv)])
    return status, out.getvalue(), err.getvalue()


def agreement(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """The largest difference relative to the largest output, and the share of rows whose
    argmax agrees."""
    worst = float(np.abs(got - expected).max() / np.abs(expected).max())
    return worst, float((got.argmax(1) == expected.argmax(1)).mean())


# --- a Hugging Face BERT classifier on dict batches ---------------------------------------


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """The fp32 BERT artifact, its model, a validation batch, and its ONNX file written by
    ``autoslim export-model --format onnx``."""
    folder = tmp_path_factory.mktemp("bert")
    task = make_bert_task()
    recipe = Recipe.from_dict({"task": {"entry": f"{ENTRY}:make_bert_task"}, "target": FAST})
    artifact = save_artifact(task.build_model(), recipe, folder / "artifact", task=task)
    status, stdout, err = run_cli(artifact, "--format", "onnx", "-o", folder / "bert.onnx")
    assert status == 0, err
    model = load_artifact(artifact, task=task, runtime=False).model
    inputs, _ = task.data.val.take(64)
    return {"artifact": artifact, "onnx": folder / "bert.onnx", "model": model, "task": task,
            "inputs": inputs, "expected": expected(model, inputs), "stdout": stdout}  # fmt: skip


def expected(model, inputs) -> np.ndarray:
    with torch.no_grad():
        return call_model(model, inputs).numpy()


def shorter(inputs, rows: int = 5, tokens: int = 11) -> dict:
    """Other rows and another sequence length than the export and its check ran."""
    return {k: v[:rows, :tokens] for k, v in inputs.items()}


def test_bert_exports_with_its_dict_keys_as_named_inputs_and_its_logits_as_output(bert):
    session = onnx_session(bert["onnx"]).session
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        (name, "tensor(int64)", ["batch", "sequence"]) for name in TOKENS
    ]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("output", ["batch", 2])]
    assert json.loads(read_metadata(bert["onnx"])[PROVENANCE_KEY])["exporter"] == "dynamo"
    assert "dynamo exporter failed" not in bert["stdout"]
    run = onnx_session(bert["onnx"])
    for batch in (bert["inputs"], shorter(bert["inputs"])):
        np.testing.assert_allclose(run(batch), expected(bert["model"], batch), rtol=0, atol=1e-5)
    # numpy arrays of another integer type are cast to the graph's int64
    as_int32 = {k: v.numpy().astype(np.int32) for k, v in bert["inputs"].items()}
    np.testing.assert_array_equal(run(as_int32), run(bert["inputs"]))
    with pytest.raises(AutoslimError, match="the batch has no attention_mask for the graph"):
        run({"input_ids": bert["inputs"]["input_ids"]})


def test_bert_dynamic_int8_on_onnx_runtime_stays_close_to_torch(bert, tmp_path, monkeypatch):
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    dynamic = quantize_dynamic(bert["onnx"], tmp_path / "dynamic.onnx")
    assert list((tmp_path / "cwd").iterdir()) == []  # nothing left in the working folder
    ops = {node.op_type for node in onnx.load(str(dynamic)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    # int8 MatMul weights; the embedding tables (most of this tiny model) stay fp32: 0.68x
    assert dynamic.stat().st_size < 0.75 * bert["onnx"].stat().st_size
    run = onnx_session(dynamic)
    for batch in (bert["inputs"], shorter(bert["inputs"], rows=32)):
        worst, agree = agreement(run(batch), expected(bert["model"], batch))
        assert worst < 0.03 and agree >= 0.9, (worst, agree)  # measured: 1.1 %, 100 %


def test_bert_static_int8_calibrates_on_dict_batches_of_int64_tokens(bert, tmp_path, monkeypatch):
    fed, real = [], deploy.graph_feeds

    def recording(batch, inputs):
        feeds = real(batch, inputs)
        fed.append({name: array.dtype for name, array in feeds.items()})
        return feeds

    calibration = [x for x, _ in bert["task"].data.train.batches(16)]
    monkeypatch.setattr(deploy, "graph_feeds", recording)
    static = quantize_static(bert["onnx"], tmp_path / "static.onnx", calibration)
    monkeypatch.undo()
    assert fed == [dict.fromkeys(TOKENS, np.dtype("int64"))] * len(calibration)
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(static)).graph.node}
    worst, agree = agreement(onnx_session(static)(bert["inputs"]), bert["expected"])
    assert worst < 0.3 and agree >= 0.9, (worst, agree)  # measured: 15 %, 98 %


def test_bert_exports_to_torch_export_called_with_its_dict_as_keywords(bert, tmp_path):
    from autoslim.data import model_output
    from autoslim.deploy import export_model

    export_model(bert["artifact"], tmp_path / "bert.pt2", format="torch-export")
    program = torch.export.load(str(tmp_path / "bert.pt2")).module()
    for batch in (bert["inputs"], {k: v[:3] for k, v in bert["inputs"].items()}):
        with torch.no_grad():
            got = model_output(program(**batch)).numpy()  # a SequenceClassifierOutput
        np.testing.assert_allclose(got, expected(bert["model"], batch), rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def bert_ir(bert):
    """The BERT graph converted to an OpenVINO IR, as the openvino runtime ships it."""
    pytest.importorskip("openvino")
    from autoslim.deploy import export_model

    xml = bert["onnx"].with_name("bert.xml")
    export_model(bert["artifact"], xml, format="openvino")
    return xml


def test_openvino_reads_the_bert_graph_with_the_same_named_inputs(bert, bert_ir):
    from autoslim.deploy.openvino import openvino_session

    run = openvino_session(bert_ir)
    assert [p.get_any_name() for p in run.compiled.inputs] == TOKENS
    for batch in (bert["inputs"], shorter(bert["inputs"])):
        np.testing.assert_allclose(run(batch), expected(bert["model"], batch), rtol=0, atol=1e-5)


def test_openvino_static_int8_of_a_transformer_is_nncfs_and_stays_close(bert, tmp_path):
    """ONNX Runtime's QDQ of a transformer lost most of MiniLM's fidelity; a model with
    attention goes through NNCF's transformer preset instead."""
    pytest.importorskip("nncf")
    from autoslim.deploy import export_model
    from autoslim.deploy.openvino import openvino_session, read_rt_info

    xml = tmp_path / "bert_int8.xml"
    export_model(bert["artifact"], xml, format="openvino", quantize="static")
    provenance = json.loads(read_rt_info(xml)["provenance"])
    assert provenance["quantize"] == "static" and provenance["quantizer"] == "nncf"
    assert provenance["calibration"]["split"] == "train" and "nncf" in provenance["versions"]
    import openvino as ov

    ir = ov.Core().read_model(str(xml))
    assert "FakeQuantize" in {op.get_type_name() for op in ir.get_ops()}  # int8 activations
    weights = {
        str(op.get_element_type()) for op in ir.get_ops() if op.get_type_name() == "Constant"
    }
    assert "<Type: 'int8_t'>" in weights or "i8" in str(weights), weights
    fp32_ir = tmp_path / "bert.xml"
    export_model(bert["artifact"], fp32_ir, format="openvino")
    assert xml.with_suffix(".bin").stat().st_size < 0.5 * fp32_ir.with_suffix(".bin").stat().st_size
    worst, agree = agreement(openvino_session(xml)(bert["inputs"]), bert["expected"])
    assert worst < 0.1 and agree >= 0.9, (worst, agree)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_measured_session_feeds_dict_batches_to_the_shipped_file(
    bert, tmp_path, runtime, request
):
    """The artifact's shipped file is the CLI's graph (a runtime builds it once, then
    reuses it); the metric, latency and memory run it on the task's dict batches."""
    pytest.importorskip(runtime)
    from autoslim.deploy.runtimes import runtime_named

    artifact = shutil.copytree(bert["artifact"], tmp_path / "artifact")
    (artifact / "deploy").mkdir()
    shutil.copyfile(bert["onnx"], artifact / "deploy" / "model.onnx")
    if runtime == "openvino":
        xml = request.getfixturevalue("bert_ir")
        for file in (xml, xml.with_suffix(".bin")):
            shutil.copyfile(file, artifact / "deploy" / f"model{file.suffix}")
    target = Target(**FAST, runtime=runtime)
    values = measure_artifact(artifact, target)
    assert values["deploy_form"] == f"{runtime} fp32"
    assert values["accuracy"] == bert["task"].evaluate(bert["model"])  # fp32: the same rows
    assert values["latency_ms"] > 0 and values["peak_memory_bytes"] > 0
    module = runtime_named(runtime).deploy(artifact, bert["task"], target).module
    assert isinstance(module, SessionModule)
    got = call_model(module, bert["inputs"]).numpy()  # module(**batch)
    np.testing.assert_allclose(got, bert["expected"], rtol=0, atol=1e-5)


def test_an_ir_without_provenance_takes_its_form_from_the_onnx_file_beside_it(bert, tmp_path):
    ov = pytest.importorskip("openvino")
    from autoslim.deploy.runtimes import runtime_named

    deploy_dir = shutil.copytree(bert["artifact"], tmp_path / "artifact") / "deploy"
    deploy_dir.mkdir()
    shutil.copyfile(bert["onnx"], deploy_dir / "model.onnx")
    bare = deploy.finish(bert["onnx"], tmp_path / "bare.onnx", {}, keep=False)
    ov.save_model(ov.convert_model(str(bare)), str(deploy_dir / "model.xml"))
    assert runtime_named("openvino").form(deploy_dir.parent) == "openvino fp32"


# --- a model of two positional inputs -------------------------------------------------------


def test_a_tuple_input_model_ships_to_openvino_in_static_int8_and_to_torch_export(tmp_path):
    """``export-model --format openvino`` of an 8-bit artifact: the ONNX graph takes
    ``input_0`` and ``input_1``, is calibrated on the train split's tuple batches, and
    the IR takes the batch as the model does, ``m(image, features)``; so does the
    ``torch-export`` program."""
    pytest.importorskip("openvino")
    from autoslim.deploy.openvino import openvino_session, read_rt_info

    task = make_tuple_task()
    recipe = Recipe.from_dict(
        {"task": {"entry": f"{ENTRY}:make_tuple_task"}, "stages": [{"kind": "quantize", "default": 8}]}
    )  # fmt: skip
    artifact = save_artifact(apply_recipe(recipe, task=task), recipe, tmp_path / "a", task=task)
    status, stdout, err = run_cli(artifact, "--format", "openvino", "-o", tmp_path / "m.xml")
    assert status == 0, err
    provenance = json.loads(read_rt_info(tmp_path / "m.xml")["provenance"])
    assert provenance["quantize"] == "static"  # auto: as the openvino runtime ships it
    assert provenance["calibration"]["samples"] == 48
    run = openvino_session(tmp_path / "m.xml")
    assert [p.get_any_name() for p in run.compiled.inputs] == ["input_0", "input_1"]
    assert all(p.get_partial_shape()[0].is_dynamic for p in run.compiled.inputs)
    inputs, _ = task.data.val.take(48)
    want = expected(load_artifact(artifact, task=task, runtime=False).model, inputs)
    worst, agree = agreement(run(inputs), want)
    assert worst < 0.3 and agree >= 0.9, (worst, agree)  # measured: 16 %, 100 %
    module = SessionModule(run)  # the measured session, called as the model is
    got = call_model(module, (inputs[0][:3], inputs[1][:3])).numpy()  # module(image, features)
    np.testing.assert_allclose(got, run(inputs)[:3], rtol=0, atol=1e-5)
    as_numpy = tuple(t[:1].numpy() for t in inputs)
    np.testing.assert_allclose(run(as_numpy), run(inputs)[:1], rtol=0, atol=1e-5)
    # torch.export: the program takes the same two positional inputs, in fp32
    status, _, err = run_cli(artifact, "--format", "torch-export", "-o", tmp_path / "m.pt2")
    assert status == 0, err
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    with torch.no_grad():
        np.testing.assert_allclose(program(*inputs).numpy(), want, rtol=0, atol=1e-5)


def test_inputs_that_are_not_tensors_are_one_line(tmp_path):
    def example(n):
        return {"input_ids": torch.zeros(n, 4, dtype=torch.long), "lengths": [4] * n}

    with pytest.raises(AutoslimError) as caught:
        deploy.export_graph(nn.Identity(), example, tmp_path / "m.onnx")
    assert str(caught.value) == (
        "ONNX export takes a model whose inputs are a tensor, a tuple or a dict of tensors; "
        "its input 'lengths' is list"
    )
    assert not (tmp_path / "m.onnx").exists()


class FixedLengthTokens(nn.Module):
    """Token ids embedded and flattened into one Linear: it takes sequences of exactly
    ``length`` tokens."""

    def __init__(self, vocab: int = 120, length: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 4)
        self.classify = nn.Linear(4 * length, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(tokens).flatten(1))


def test_a_sequence_length_the_model_fixes_is_declared_fixed(tmp_path):
    """The dynamo exporter keeps a second axis it was offered as a named free axis even
    where the model holds it to one size; the graph declares that size instead."""
    torch.manual_seed(0)
    model, tokens = FixedLengthTokens().eval(), torch.randint(0, 120, (64, 16))
    path, exporter = deploy.export_graph(model, lambda n: tokens[:n], tmp_path / "m.onnx")
    assert exporter == {"exporter": "dynamo"}
    run = onnx_session(path)
    assert run.session.get_inputs()[0].shape == ["batch", 16]
    np.testing.assert_allclose(run(tokens[:5]), expected(model, tokens[:5]), rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="Got: 8 Expected: 16"):  # refused at the input
        run(tokens[:5, :8])
