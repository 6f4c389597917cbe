"""An artifact as an OpenVINO IR (``FILE.xml`` plus ``FILE.bin``) that runs with only
OpenVINO installed.

The IR is converted (``openvino.convert_model``) from the checked ONNX graph of
:mod:`autoslim.deploy.onnx`, so both formats share one exporter. Static int8
(``quantize="static"``) is quantized by one of two tools, by model family:

- a model with attention goes through NNCF, OpenVINO's own post-training quantizer, with
  its transformer preset (SmoothQuant, the sensitive ops kept in float, int8 embedding
  tables). ONNX Runtime's QDQ of the same MiniLM graph kept a Spearman fidelity of 0.31
  (0.92 with only MatMuls quantized), NNCF's 0.997, and ran faster;
- any other model (CNNs, MLPs) reads ONNX Runtime's QDQ int8 graph, which OpenVINO keeps
  in int8 (the form measured on the CPU benchmarks).

``compress_to_fp16`` stores float weights in fp16 instead (off by default, since it
changes outputs). The recipe and provenance travel in the IR's ``rt_info`` under
``autoslim``.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from autoslim.artifact import LoadedArtifact, load_artifact
from autoslim.data import batch_len
from autoslim.deploy import onnx as onnx_export
from autoslim.deploy._files import check_output_files, package_version, place, scratch_folder
from autoslim.errors import AutoslimError

QUANTIZE_MODES = ("none", "static")
RT_INFO = "autoslim"


def require_runtime(what: str = "export-model --format openvino"):
    try:
        import openvino
    except ImportError:
        raise AutoslimError(f"{what} needs openvino: pip install 'autoslim[openvino]'") from None
    return openvino


def export_openvino(
    artifact_dir: str | Path,
    out_file: str | Path,
    *,
    quantize: str = "none",
    calibration_batches: int = 8,
    trust_task: bool = False,
    force: bool = False,
    compress_to_fp16: bool = False,
) -> Path:
    """Write ``out_file`` (``.xml``) and the ``.bin`` beside it, each atomically."""
    xml = Path(out_file)
    if xml.suffix != ".xml":
        raise AutoslimError(f"an OpenVINO model is FILE.xml plus FILE.bin; give a .xml path: {xml}")
    if quantize not in QUANTIZE_MODES:
        raise AutoslimError(
            f"--format openvino takes --quantize none or static, not {quantize!r} "
            "(dynamic is ONNX Runtime's integer kernels)"
        )
    require_runtime()
    onnx_export.require_runtime("export-model --format openvino")  # it converts the ONNX graph
    files = [xml.with_suffix(".bin"), xml]
    check_output_files(files[::-1], force=force)
    loaded = load_artifact(artifact_dir, runtime=False, trust_task=trust_task)
    if quantize == "static" and uses_nncf(loaded.model):
        require_nncf()
    with scratch_folder(xml) as tmp:
        built = build_ir(
            loaded, Path(artifact_dir), tmp / xml.name, quantize, calibration_batches,
            compress_to_fp16=compress_to_fp16,
        )  # fmt: skip
        _place_pair([built.with_suffix(".bin"), built], files, force=force)
    return xml


def build_ir(
    loaded: LoadedArtifact,
    artifact_dir: Path,
    xml: Path,
    quantize: str,
    calibration_batches: int,
    *,
    compress_to_fp16: bool = False,
) -> Path:
    """The IR of a loaded artifact at ``xml`` (a scratch path: its folder takes the
    intermediate files too), fp32 or static int8, checked on a real batch."""
    ov = require_runtime()
    tmp = xml.parent
    by_nncf = quantize == "static" and uses_nncf(loaded.model)
    graph = onnx_export.build_onnx(
        loaded, artifact_dir, tmp, "none" if by_nncf else quantize, calibration_batches,
        gather_bits=0,
    )  # fmt: skip
    metadata = onnx_export.read_metadata(graph)
    model = ov.convert_model(str(onnx_export.finish(graph, tmp / "bare.onnx", {}, keep=False)))
    if by_nncf:
        batches = onnx_export.calibration_data(loaded, calibration_batches)
        model = nncf_int8(model, batches)
        metadata[onnx_export.PROVENANCE_KEY] = _quantized_by_nncf(
            metadata[onnx_export.PROVENANCE_KEY], sum(batch_len(b) for b in batches)
        )
    for key, value in metadata.items():
        if key.startswith(f"{RT_INFO}."):
            model.set_rt_info(_with_openvino(key, value), [RT_INFO, key.split(".", 1)[1]])
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    _run_once(xml, loaded.task.example_batch(onnx_export.CHECK_BATCH))
    return xml


def uses_nncf(model: nn.Module) -> bool:
    """Whether static int8 of ``model`` goes through NNCF: it has attention layers
    (``nn.MultiheadAttention``, or a Hugging Face / timm block that counts its heads)."""
    return any(
        isinstance(m, nn.MultiheadAttention) or hasattr(m, "num_attention_heads")
        or hasattr(m, "n_heads") or hasattr(m, "num_heads")
        for m in model.modules()
    )  # fmt: skip


def require_nncf():
    try:
        import nncf
    except ImportError:
        raise AutoslimError(
            "static int8 of a model with attention on OpenVINO needs nncf: "
            "pip install 'autoslim[openvino]'"
        ) from None
    return nncf


def nncf_int8(model: Any, batches: list[Any]) -> Any:
    """``model`` (an OpenVINO model) quantized to int8 by NNCF's transformer preset,
    calibrated on ``batches`` (fed by input name, as the IR takes them)."""
    nncf = require_nncf()
    specs = [(port.get_any_name(), None) for port in model.inputs]
    feeds = [onnx_export.graph_feeds(batch, specs) for batch in batches]
    samples = sum(batch_len(batch) for batch in batches)
    with _quiet_nncf():
        return nncf.quantize(
            model, nncf.Dataset(feeds), subset_size=samples,
            model_type=nncf.ModelType.TRANSFORMER,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF draws progress bars and logs each step: a trial's log keeps none of them."""
    import logging

    from nncf.common.logging.logger import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)


def _quantized_by_nncf(provenance: str, samples: int) -> str:
    record = json.loads(provenance)
    record["quantize"] = "static"
    record["quantizer"] = "nncf"
    record["calibration"] = {"split": "train", "samples": samples}
    record["versions"]["nncf"] = package_version("nncf")
    return json.dumps(record, sort_keys=True)


def _run_once(xml: Path, batch: Any) -> None:
    """The IR must take a real batch by its inputs' names, as the ONNX graph did."""
    try:
        openvino_session(xml)(batch)
    except Exception as exc:  # noqa: BLE001 — an IR OpenVINO cannot run is not shipped
        raise AutoslimError(
            f"OpenVINO cannot run the converted model: {onnx_export._one_line(exc)}"
        ) from None


def _with_openvino(key: str, value: str) -> str:
    if key != onnx_export.PROVENANCE_KEY:
        return value
    provenance = json.loads(value)
    provenance["versions"]["openvino"] = package_version("openvino")
    return json.dumps(provenance, sort_keys=True)


def _place_pair(sources: list[Path], targets: list[Path], *, force: bool) -> None:
    """The weights first, then the XML that names them; if the XML cannot go in, the
    weights placed a moment ago are taken back out."""
    (bin_src, xml_src), (bin_dst, xml_dst) = sources, targets
    place(bin_src, bin_dst, force=force)
    try:
        place(xml_src, xml_dst, force=force)
    except BaseException:
        if not force:
            bin_dst.unlink(missing_ok=True)
        raise


def read_rt_info(file: str | Path) -> dict[str, str]:
    """The IR's ``autoslim`` entries, e.g. ``{"recipe": ..., "provenance": ...}``."""
    ov = require_runtime("read_rt_info")
    model = ov.Core().read_model(str(file))
    if not model.has_rt_info([RT_INFO]):
        return {}
    return {k: v.astype(str) for k, v in model.get_rt_info()[RT_INFO].items()}


def openvino_session(file: str | Path, threads: int = 1) -> Callable[[Any], np.ndarray]:
    """``run(batch)``: the IR's first output on OpenVINO's CPU plugin in fp32 (the plugin
    would otherwise pick bf16 on CPUs that have it) with ``threads`` threads, for a batch
    shaped as the model takes it (a tensor, tuple or dict), fed to the IR's inputs by
    name as :func:`autoslim.deploy.onnx.graph_feeds` does. ``run.compiled`` is the
    compiled model."""
    ov = require_runtime("openvino_session")
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    compiled = ov.Core().compile_model(str(file), "CPU", config)
    specs = [(port.get_any_name(), _dtype(port)) for port in compiled.inputs]

    def run(batch: Any) -> np.ndarray:
        return compiled(onnx_export.graph_feeds(batch, specs))[0]

    run.compiled = compiled
    return run


def _dtype(port: Any) -> Any:
    """The numpy dtype of a compiled model's input (None where OpenVINO leaves it open)."""
    try:
        return np.dtype(port.get_element_type().to_dtype())
    except Exception:  # noqa: BLE001 — a dynamic element type has no numpy dtype
        return None
