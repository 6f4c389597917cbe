"""An artifact as one ONNX file that runs with only ONNX Runtime installed.

The artifact's model is loaded as plain ``nn`` modules (``runtime=False``: its weights
decoded to fp32, no autoslim kernel), exported by torch's dynamo exporter (the TorchScript
exporter if that fails or gives different outputs) with a dynamic batch axis, checked
against the model on ONNX Runtime, and optionally quantized by ONNX Runtime.

The graph takes the model's inputs by name: ``input`` for one tensor, ``input_0``,
``input_1``, ... for a tuple (``model(*inputs)``), and a dict's own keys for a dict
(``model(**inputs)``, the Hugging Face way). Every input's first axis is the batch; a
rank-2 integer input (token ids, attention masks) also gets a dynamic ``sequence`` axis
where the dynamo exporter finds the model allows it. The graph's one output,
``output``, is the model's output tensor (a Hugging Face output's ``logits``).
:func:`graph_feeds` turns a batch of any of the three shapes into the graph's feeds.

Quantization modes:

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
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoslim.artifact import RECIPE_FILE, WEIGHTS_FILE, LoadedArtifact, load_artifact
from autoslim.data import batch_len, call_model, model_output
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
INPUT_NAME = "input"  # the graph's input for a model of one tensor input
OUTPUT_NAME = "output"
SEQUENCE_AXIS = "sequence"
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
        samples = sum(batch_len(b) for b in batches)
        provenance["calibration"] = {"split": "train", "samples": samples}
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
    model: torch.nn.Module, example: Callable[[int], Any], path: Path
) -> tuple[Path, dict[str, str]]:
    """The fp32 graph, by the dynamo exporter or else the TorchScript one; each result is
    kept only if ONNX Runtime reproduces the model's outputs on a real batch. ``example(n)``
    gives ``n`` rows of the model's inputs: a tensor, a tuple or a dict of tensors."""
    model = model.eval()
    input_names(example(EXPORT_BATCH))  # inputs of another kind: one line, before any export
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


def input_names(inputs: Any) -> list[str]:
    """The graph's input names for a batch of this shape (see the module docstring)."""
    if isinstance(inputs, torch.Tensor):
        return [INPUT_NAME]
    if isinstance(inputs, dict):
        named = [(str(k), v) for k, v in inputs.items()]
    elif isinstance(inputs, (tuple, list)):
        named = [(f"input_{i}", v) for i, v in enumerate(inputs)]
    else:
        named = [(INPUT_NAME, inputs)]
    for name, value in named:
        if not isinstance(value, torch.Tensor):
            raise AutoslimError(
                "ONNX export takes a model whose inputs are a tensor, a tuple or a dict of "
                f"tensors; its input {name!r} is {type(value).__name__}"
            )
    if not named:
        raise AutoslimError("ONNX export needs a model that takes at least one tensor")
    return [name for name, _ in named]


def _tensors(inputs: Any) -> tuple[torch.Tensor, ...]:
    """The batch's tensors in the order of :func:`input_names`."""
    if isinstance(inputs, dict):
        return tuple(inputs.values())
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


class _Positional(torch.nn.Module):
    """The model behind a call of positional tensors, one per graph input in order, made
    the way its batches call it (``model(**batch)`` for a dict), and reduced to its output
    tensor (:func:`~autoslim.data.model_output`): both exporters see one signature and
    one output whatever the model takes and returns."""

    def __init__(self, model: torch.nn.Module, inputs: Any) -> None:
        super().__init__()
        self.model = model
        self.keys = list(inputs) if isinstance(inputs, dict) else None
        self.spread = isinstance(inputs, (tuple, list))
        # An exporter puts back the mode it found. A new module is in training mode, and
        # restoring that would switch the model's dropout on for everything after.
        self.train(model.training)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.keys is not None:
            return model_output(self.model(**dict(zip(self.keys, tensors, strict=True))))
        return model_output(self.model(*tensors) if self.spread else self.model(tensors[0]))


def _torch_export(model: torch.nn.Module, inputs: Any, path: Path, *, dynamo: bool) -> None:
    path.unlink(missing_ok=True)
    names, tensors = input_names(inputs), _tensors(inputs)
    wrapped = _Positional(model, inputs)
    io_names = {"input_names": names, "output_names": [OUTPUT_NAME]}
    with _quiet(), torch.no_grad():
        if dynamo:
            batch = torch.export.Dim("batch")
            shapes = tuple(
                {0: batch, 1: torch.export.Dim.AUTO} if _is_token_input(t) else {0: batch}
                for t in tensors
            )  # in a tuple of their own below: they are the one parameter, *tensors
            program = torch.onnx.export(
                wrapped, tensors, str(path), dynamo=True, dynamic_shapes=(shapes,),
                external_data=False, verbose=False, **io_names,
            )  # fmt: skip
            _settle_axes(path, getattr(program, "exported_program", None))
        else:
            # A trace keeps shapes as constants: only the batch axis, which the check on a
            # batch of another size covers, is declared dynamic.
            axes = {name: {0: "batch"} for name in [*names, OUTPUT_NAME]}
            torch.onnx.export(
                wrapped, tensors, str(path), dynamo=False, dynamic_axes=axes, **io_names
            )


def _is_token_input(t: torch.Tensor) -> bool:
    """An integer (or boolean) rank-2 input: token ids or a mask, its second axis the
    sequence."""
    return t.dim() == 2 and not (t.is_floating_point() or t.is_complex())


def _settle_axes(path: Path, program: Any) -> None:
    """The graph's declared axes made to say what the trace found. An axis left free for
    the exporter that the model holds to one size (a ``Linear`` over the flattened
    sequence) is traced with that size as a check, which the ONNX graph drops, so it is
    declared fixed here: ONNX Runtime then refuses another size instead of failing
    inside. The free second axes of the token inputs, named after their symbol
    (``s50``), are renamed ``sequence`` (``sequence_1``, ... where they differ)."""
    import onnx

    model = onnx.load(str(path))
    fixed = {}
    for symbol, bounds in getattr(program, "range_constraints", {}).items():
        if bounds.is_singleton():
            fixed[str(symbol)] = int(bounds.lower)
    symbols: list[str] = []
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        token = value.type.tensor_type.elem_type not in _FLOAT_TYPES
        free = len(dims) == 2 and dims[1].dim_param and dims[1].dim_param not in fixed
        if token and free and dims[1].dim_param not in symbols:
            symbols.append(dims[1].dim_param)
    rename = {s: SEQUENCE_AXIS + (f"_{i}" if i else "") for i, s in enumerate(symbols)}
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in fixed:
                dim.dim_value = fixed[dim.dim_param]
            elif dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]
    onnx.save(model, str(path))


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


def _check_matches(path: Path, model: torch.nn.Module, inputs: Any) -> None:
    """ONNX Runtime gives the model's outputs on ``inputs`` and, where the graph has a
    dynamic sequence axis, on the same rows cut to half their length."""
    run = onnx_session(path)
    outputs = len(run.session.get_outputs())
    if outputs != 1:
        raise AutoslimError(f"the graph has {outputs} outputs, the model one")
    _compare(run, model, inputs)
    shorter = _shorter_sequences(run.session, inputs)
    if shorter is not None:
        _compare(run, model, shorter, "on shorter sequences ")


def _compare(run: Callable[[Any], np.ndarray], model: torch.nn.Module, inputs: Any, how=""):
    with torch.no_grad():
        expected = call_model(model, inputs).numpy()
    got = run(inputs)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-3, atol=1e-4):
        worst = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else np.nan
        raise AutoslimError(f"its outputs {how}differ from the model's (max abs diff {worst:.3g})")


def _shorter_sequences(session: Any, inputs: Any) -> Any | None:
    """``inputs`` with every input on a dynamic sequence axis cut to half its length, or
    None where the graph has no such axis (or its sequences are too short to cut)."""
    symbols = {
        i.shape[1]
        for i in session.get_inputs()
        if len(i.shape) == 2 and isinstance(i.shape[1], str) and i.type not in _FLOAT_ORT
    }
    cut = {i.name for i in session.get_inputs() if len(i.shape) >= 2 and i.shape[1] in symbols}
    named = dict(zip(input_names(inputs), _tensors(inputs), strict=True))
    lengths = [named[name].shape[1] for name in cut if name in named]
    length = min(lengths, default=0) // 2
    if length < 2:  # a size the exporter may treat as fixed (0 or 1), or no such axis
        return None
    short = [t[:, :length] if k in cut else t for k, t in named.items()]
    if isinstance(inputs, dict):
        return dict(zip(inputs, short, strict=True))
    return type(inputs)(short) if isinstance(inputs, (tuple, list)) else short[0]


def calibration_data(loaded: LoadedArtifact, batches: int) -> list[Any]:
    """``batches`` shuffled (seeded) batches of the train split's inputs (tensors, tuples
    or dicts, as the model takes them) at the task's batch size."""
    split = loaded.task.data.train
    out = []
    for inputs, _ in split.batches(loaded.task.train.batch_size, shuffle=True, seed=0):
        out.append(inputs)
        if len(out) == batches:
            break
    return out


def quantize_static(
    src: Path, dst: Path, batches: list[Any], op_types: list[str] | None = None
) -> Path:
    """QDQ int8: per-channel symmetric int8 weights, uint8 activations (min-max calibrated;
    int8 activations ran 3.3x slower on x86, BENCHMARKS.md). ``batches`` are the model's
    inputs, fed to the graph by name (:func:`graph_feeds`); integer inputs keep their
    dtype. ``op_types``: the ops to quantize (default: every op ONNX Runtime can)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    specs = graph_inputs(src)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._feeds = (graph_feeds(b, specs) for b in batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    with _quiet():
        ort_quantize_static(
            str(_prepared(src, dst)), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            op_types_to_quantize=op_types, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
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
    # auto_merge: without it, symbolic shape inference gives up on a graph with a dynamic
    # sequence axis (a Hugging Face BERT), and the graph goes unprepared. Where it still
    # gives up, it writes its partial model and weights into the working folder: that is
    # the scratch folder here, not the user's.
    try:
        with _quiet(), _working_folder(prepared.parent):
            quant_pre_process(str(src.resolve()), str(prepared.resolve()), auto_merge=True)
    except Exception:  # noqa: BLE001 — quantize the graph as exported
        return src
    return prepared


@contextlib.contextmanager
def _working_folder(folder: Path):
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


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
    """``run(batch)``: the first output of the ONNX file for a batch shaped as the model
    takes it (a tensor, tuple or dict, of torch tensors or numpy arrays: see
    :func:`graph_feeds`), on ONNX Runtime's CPU provider with ``threads`` threads that do
    not spin between runs. ``run.session`` is the session."""
    _, ort = require_runtime("onnx_session")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # ONNX Runtime's idle threads spin for the next run by default. Timed in rounds
    # against eager PyTorch on the same cores, that spinning slowed the PyTorch reference
    # about 2x and made ONNX Runtime look 3x faster than it is (benchmarks/runtime_timing.py).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    specs = [(i.name, _ORT_TYPES.get(i.type)) for i in session.get_inputs()]

    def run(batch: Any) -> np.ndarray:
        return session.run(None, graph_feeds(batch, specs))[0]

    run.session = session
    return run


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}  # fmt: skip
_FLOAT_ORT = ("tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)")
_FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def graph_inputs(file: str | Path) -> list[tuple[str, Any]]:
    """The ONNX file's inputs as ``(name, numpy dtype)``."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    graph = onnx.load(str(file), load_external_data=False).graph
    return [(i.name, tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)) for i in graph.input]


def graph_feeds(batch: Any, inputs: list[tuple[str, Any]]) -> dict[str, np.ndarray]:
    """A graph's feeds, ``{name: array}`` for its ``inputs`` (``(name, dtype)``, a dtype
    of None kept as given), from a batch shaped as the model takes it: one tensor (the
    graph's one input), a tuple (``input_0``, ``input_1``, ...) or a dict (by key), of
    torch tensors or numpy arrays. Each array takes its input's dtype, so int64 token ids
    stay int64; entries the graph does not take (an exporter may drop an unused input)
    are left out."""
    names = [name for name, _ in inputs]
    if isinstance(batch, dict):
        given = {str(k): v for k, v in batch.items()}
    elif isinstance(batch, (tuple, list)) and not len(batch) == len(inputs) == 1:
        given = {f"input_{i}": v for i, v in enumerate(batch)}
    elif len(inputs) == 1:
        given = {names[0]: batch[0] if isinstance(batch, (tuple, list)) else batch}
    else:
        raise AutoslimError(
            f"the graph takes {len(inputs)} inputs ({', '.join(names)}): give a tuple or dict"
        )
    missing = [name for name in names if name not in given]
    if missing:
        raise AutoslimError(
            f"the batch has no {', '.join(missing)} for the graph (it has {', '.join(given)})"
        )
    return {name: _array(given[name], dtype) for name, dtype in inputs}


def _array(value: Any, dtype: Any) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return array if dtype is None or array.dtype == dtype else array.astype(dtype)


def _run_once(path: Path, x: Any) -> None:
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
