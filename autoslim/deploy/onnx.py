"""An artifact as one ONNX file that runs with only ONNX Runtime installed.

The artifact's model is loaded as plain ``nn`` modules (``runtime=False``: its weights
decoded to fp32, no autoslim kernel), exported by torch's dynamo exporter (the TorchScript
exporter if that fails or gives different outputs) with a dynamic batch axis, checked
against the model on ONNX Runtime, and optionally quantized by ONNX Runtime:

- ``none`` (the default): the fp32 graph, the artifact's outputs to float rounding;
- ``static``: QDQ int8, per-channel symmetric int8 weights and uint8 activations (U8S8,
  ONNX Runtime's fast layout on x86) calibrated on ``calibration_batches`` batches of
  the task's train split; the usual choice for an artifact quantized to 8 bits, whose
  weights then take one byte each on disk too;
- ``dynamic``: int8 weights of MatMul and Gemm, activations quantized per batch; for
  transformers.

Embedding tables follow the artifact's recipe: int8 (dynamic Gather) or 4-bit blocks
(``GatherBlockQuantized``) where its quantize stage sets ``embeddings``, else fp32.

Quantizing activations changes outputs beyond what the artifact was measured with, so
it is never implied. The artifact's recipe.yaml and the export's provenance travel in the
file's ``metadata_props`` (:data:`RECIPE_KEY`, :data:`PROVENANCE_KEY`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoslim.artifact import RECIPE_FILE, WEIGHTS_FILE, LoadedArtifact, load_artifact
from autoslim.deploy._files import (
    check_output_files,
    file_sha256,
    package_version,
    place,
    scratch_folder,
)
from autoslim.errors import AutoslimError

QUANTIZE_MODES = ("none", "dynamic", "static")
RECIPE_KEY = "autoslim.recipe"
PROVENANCE_KEY = "autoslim.provenance"
INPUT_NAME = "input"
MATMUL_OP_TYPES = ["MatMul", "Gemm"]
# The graph is traced on EXPORT_BATCH validation samples and checked on the first
# CHECK_BATCH (another batch size, as the axis is dynamic; enough real samples to catch a
# trace that baked in the example batch's data-dependent shapes or branches).
EXPORT_BATCH, CHECK_BATCH = 2, 64


def require_runtime(what: str = "export-model --format onnx"):
    """``(onnx, onnxruntime)``, or one line saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise AutoslimError(f"{what} needs onnxruntime: pip install 'autoslim[onnx]'") from None
    return onnx, onnxruntime


def export_onnx(
    artifact_dir: str | Path,
    out_file: str | Path,
    *,
    quantize: str = "none",
    calibration_batches: int = 8,
    trust_task: bool = False,
    force: bool = False,
) -> Path:
    """Write the artifact at ``artifact_dir`` as one ONNX file ``out_file`` (atomically;
    an existing file only with ``force``). See the module docstring for ``quantize``."""
    out = Path(out_file)
    if quantize not in QUANTIZE_MODES:
        raise AutoslimError(f"unknown --quantize {quantize!r} (choose from {QUANTIZE_MODES})")
    if calibration_batches < 1:
        raise AutoslimError("--calibration-batches must be at least 1")
    require_runtime()
    check_output_files([out], force=force)
    loaded = load_artifact(artifact_dir, runtime=False, trust_task=trust_task)
    with scratch_folder(out) as tmp:
        built = build_onnx(loaded, Path(artifact_dir), tmp, quantize, calibration_batches)
        place(built, out, force=force)
    return out


def build_onnx(
    loaded: LoadedArtifact,
    artifact_dir: Path,
    tmp: Path,
    quantize: str,
    calibration_batches: int,
    *,
    gather_bits: int | None = None,
) -> Path:
    """The finished ONNX file of a loaded artifact, written inside ``tmp``. Embedding
    tables follow the recipe (:func:`embedding_bits`) unless ``gather_bits`` says."""
    graph, exporter = export_graph(loaded.model, loaded.task.example_batch, tmp / "fp32.onnx")
    provenance = _provenance(loaded, artifact_dir, quantize, exporter)
    tables = embedding_bits(loaded.recipe) if gather_bits is None else gather_bits
    if quantize == "static":
        batches = calibration_data(loaded, calibration_batches)
        provenance["calibration"] = {"split": "train", "samples": sum(len(b) for b in batches)}
        graph = quantize_static(graph, tmp / "static.onnx", batches)
    elif quantize == "dynamic":
        ops = [*MATMUL_OP_TYPES, *(["Gather"] if tables == 8 else [])]
        graph = quantize_dynamic(graph, tmp / "dynamic.onnx", ops)
    if tables == 4:
        graph = quantize_gather_4bit(graph, tmp / "gather4.onnx")
    if tables in (4, 8):
        provenance["embeddings"] = f"int{tables}"
    metadata = {
        RECIPE_KEY: (artifact_dir / RECIPE_FILE).read_text(),
        PROVENANCE_KEY: json.dumps(provenance, sort_keys=True),
    }
    final = finish(graph, tmp / "model.onnx", metadata)
    _run_once(final, loaded.task.example_batch(CHECK_BATCH))  # every mode must at least run
    return final


def export_graph(
    model: torch.nn.Module, example: Callable[[int], torch.Tensor], path: Path
) -> tuple[Path, dict[str, str]]:
    """The fp32 graph, by the dynamo exporter or else the TorchScript one; each result is
    kept only if ONNX Runtime reproduces the model's outputs on a real batch."""
    if not isinstance(example(CHECK_BATCH), torch.Tensor):
        raise AutoslimError(
            "the ONNX Runtime and OpenVINO runtimes take models with one tensor input; this one "
            "takes a tuple or dict (use runtime torch or torch-compile)"
        )
    failures: dict[str, str] = {}
    for dynamo in (True, False):
        name = "dynamo" if dynamo else "torchscript"
        try:
            _torch_export(model, example(EXPORT_BATCH), path, dynamo=dynamo)
            _check_matches(path, model, example(CHECK_BATCH))
        except Exception as exc:  # noqa: BLE001 — an exporter may fail anywhere; try the next
            failures[name] = _one_line(exc)
            continue
        return path, {"exporter": name, **{f"{k}_failed": v for k, v in failures.items()}}
    detail = "; ".join(f"{k}: {v}" for k, v in failures.items())
    raise AutoslimError(f"torch could not export the model to ONNX ({detail})")


def _torch_export(model: torch.nn.Module, x: torch.Tensor, path: Path, *, dynamo: bool) -> None:
    path.unlink(missing_ok=True)
    names = {"input_names": [INPUT_NAME], "output_names": ["output"]}
    with _quiet(), torch.no_grad():
        if dynamo:
            batch = torch.export.Dim("batch")
            torch.onnx.export(
                model, (x,), str(path), dynamo=True, dynamic_shapes=({0: batch},),
                external_data=False, verbose=False, **names,
            )  # fmt: skip
        else:
            axes = {INPUT_NAME: {0: "batch"}, "output": {0: "batch"}}
            torch.onnx.export(model, (x,), str(path), dynamo=False, dynamic_axes=axes, **names)


@contextlib.contextmanager
def _quiet():
    """The exporters' progress lines, warnings and graph dumps are not the user's business
    (what failed is kept, in one line, in the provenance)."""
    disabled = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(disabled)


def _check_matches(path: Path, model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = _arrays(model(x))
    got = onnx_session(path).session.run(None, {INPUT_NAME: x.numpy()})
    if len(got) != len(expected):
        raise AutoslimError(f"the graph has {len(got)} outputs, the model {len(expected)}")
    for g, e in zip(got, expected, strict=True):
        if g.shape != e.shape or not np.allclose(g, e, rtol=1e-3, atol=1e-4):
            worst = float(np.max(np.abs(g - e))) if g.shape == e.shape else float("nan")
            raise AutoslimError(f"its outputs differ from the model's (max abs diff {worst:.3g})")


def _arrays(output: Any) -> list[np.ndarray]:
    if isinstance(output, torch.Tensor):
        return [output.numpy()]
    if isinstance(output, (tuple, list)):
        return [a for item in output for a in _arrays(item)]
    raise AutoslimError(f"the model returns {type(output).__name__}; export needs tensors")


def calibration_data(loaded: LoadedArtifact, batches: int) -> list[np.ndarray]:
    """``batches`` shuffled (seeded) batches of the train split at the task's batch size."""
    loader = loaded.task.data.train.loader(loaded.task.train.batch_size, shuffle=True, seed=0)
    out = []
    for inputs, _ in loader:
        out.append(inputs.numpy())
        if len(out) == batches:
            break
    return out


def quantize_static(src: Path, dst: Path, batches: list[np.ndarray]) -> Path:
    """QDQ int8: per-channel symmetric int8 weights, uint8 activations (min-max calibrated;
    int8 activations ran 3.3x slower on x86, BENCHMARKS.md)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = iter({INPUT_NAME: b} for b in batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with _quiet():
        ort_quantize_static(
            str(_prepared(src, dst)), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )  # fmt: skip
    return dst


def quantize_dynamic(src: Path, dst: Path, op_types: list[str] | None = None) -> Path:
    """int8 weights of ``op_types`` (MatMul and Gemm; Gather too where the embeddings are
    int8); activations quantized per batch at run time. Convolutions stay fp32 (ONNX
    Runtime's CPU kernels have no int8-weight ConvInteger)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    with _quiet():
        ort_quantize_dynamic(
            str(_prepared(src, dst)), str(dst), op_types_to_quantize=op_types or MATMUL_OP_TYPES,
            per_channel=True, weight_type=QuantType.QInt8,
        )  # fmt: skip
    return dst


def quantize_gather_4bit(src: Path, dst: Path) -> Path:
    """Embedding tables as 4-bit blocks of ``EMBEDDING_GROUP`` values with one scale each
    (``GatherBlockQuantized``): the lookup reads only the rows it needs and decodes them."""
    return quantize_4bit(src, dst, ("Gather",))


def quantize_4bit(
    src: Path, dst: Path, op_types: tuple[str, ...], accuracy_level: int | None = None
) -> Path:
    """ONNX Runtime's 4-bit block quantization of ``op_types`` (``Gather`` tables along
    rows, ``MatMul`` weights along their input axis), symmetric, blocks of
    ``EMBEDDING_GROUP``."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    from autoslim.techniques.quantize import EMBEDDING_GROUP

    axes = tuple((op, 1 if op == "Gather" else 0) for op in op_types)
    config = DefaultWeightOnlyQuantConfig(
        block_size=EMBEDDING_GROUP, is_symmetric=True, bits=4, accuracy_level=accuracy_level,
        op_types_to_quantize=op_types, quant_axes=axes,
    )  # fmt: skip
    with _quiet():
        quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), False)
    return dst


def embedding_bits(recipe) -> int | None:
    """The integer width the recipe's quantize stage gives embedding tables, if any."""
    for stage in recipe.stages:
        width = getattr(stage, "embeddings", None) if stage.kind == "quantize" else None
        if isinstance(width, int):
            return 8 if width == 8 else 4 if width <= 4 else 8
    return None


def _prepared(src: Path, dst: Path) -> Path:
    """``src`` after ONNX Runtime's pre-processing (shape inference, graph optimisation),
    which lets more nodes be quantized; ``src`` itself where that fails (it is optional)."""
    from onnxruntime.quantization import quant_pre_process

    prepared = dst.with_suffix(".pre.onnx")
    try:
        with _quiet():
            quant_pre_process(str(src), str(prepared))
    except Exception:  # noqa: BLE001 — quantize the graph as exported
        return src
    return prepared


def finish(src: Path, dst: Path, metadata: dict[str, str], *, keep: bool = True) -> Path:
    """``src`` without debug information (stack traces, per-node exporter notes, inferred
    shapes: most of a small model's bytes), with ``metadata`` in its ``metadata_props``
    (after the entries it had, unless not ``keep``)."""
    import onnx

    model = onnx.load(str(src))
    _strip(model.graph)
    kept = [p for p in model.metadata_props if keep and p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))
    return dst


def _strip(graph) -> None:
    del graph.value_info[:]
    graph.doc_string = ""
    for item in (*graph.node, *graph.input, *graph.output, *graph.initializer):
        item.doc_string = ""
        del item.metadata_props[:]
    for node in graph.node:
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                _strip(sub)


def onnx_session(file: str | Path, threads: int = 1) -> Callable[[Any], np.ndarray]:
    """``run(batch)``: the first output of the ONNX file for a numpy or torch batch, on
    ONNX Runtime's CPU provider with ``threads`` threads that do not spin between runs.
    ``run.session`` is the session."""
    _, ort = require_runtime("onnx_session")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ONNX Runtime's idle threads spin for the next run by default. Timed in rounds
    # against eager PyTorch on the same cores, that spinning slowed the PyTorch reference
    # about 2x and made ONNX Runtime look 3x faster than it is (benchmarks/runtime_timing.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(batch: Any) -> np.ndarray:
        array = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else batch
        return session.run(None, {name: np.asarray(array)})[0]

    run.session = session
    return run


def _run_once(path: Path, x: torch.Tensor) -> None:
    try:
        onnx_session(path)(x)
    except Exception as exc:  # noqa: BLE001 — a graph ONNX Runtime cannot run is not shipped
        raise AutoslimError(
            f"ONNX Runtime cannot run the exported model: {_one_line(exc)}"
        ) from None


def read_metadata(file: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (the recipe under :data:`RECIPE_KEY`)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(file), load_external_data=False).metadata_props}


def _provenance(
    loaded: LoadedArtifact, artifact_dir: Path, quantize: str, exporter: dict[str, str]
) -> dict[str, Any]:
    versions = ("autoslim", "torch", "onnx", "onnxruntime", "onnxscript")
    return {
        "artifact": {
            "name": artifact_dir.resolve().name,
            "bytes": loaded.size_bytes,
            "weights_sha256": file_sha256(artifact_dir / WEIGHTS_FILE),
        },
        "quantize": quantize,
        **exporter,
        "versions": {name: package_version(name) for name in versions},
    }


def _one_line(exc: BaseException) -> str:
    """The first line of the error that started it all (an exporter wraps the real one)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    first = re.sub(r"\x1b\[[0-9;]*m", "", (str(exc).strip().splitlines() or [""])[0])[:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
