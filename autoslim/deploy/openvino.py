"""An artifact as an OpenVINO IR (``FILE.xml`` plus ``FILE.bin``) that runs with only
OpenVINO installed.

The IR is converted (``openvino.convert_model``) from the checked ONNX graph of
:mod:`autoslim.deploy.onnx`, so both formats share one exporter and one quantizer: with
``quantize="static"`` OpenVINO reads the QDQ int8 graph and keeps its weights in int8.
``compress_to_fp16`` stores float weights in fp16 instead (OpenVINO's own compression;
off by default, since it changes outputs). Int8 compression by NNCF is not used.
The recipe and provenance travel in the IR's ``rt_info`` under ``autoslim``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from autoslim.artifact import load_artifact
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
    ov = require_runtime()
    onnx_export.require_runtime("export-model --format openvino")  # it converts the ONNX graph
    files = [xml.with_suffix(".bin"), xml]
    check_output_files(files[::-1], force=force)
    loaded = load_artifact(artifact_dir, runtime=False, trust_task=trust_task)
    with scratch_folder(xml) as tmp:
        graph = onnx_export.build_onnx(
            loaded, Path(artifact_dir), tmp, quantize, calibration_batches
        )
        metadata = onnx_export.read_metadata(graph)
        model = ov.convert_model(str(onnx_export.finish(graph, tmp / "bare.onnx", {}, keep=False)))
        for key, value in metadata.items():
            if key.startswith(f"{RT_INFO}."):
                model.set_rt_info(_with_openvino(key, value), [RT_INFO, key.split(".", 1)[1]])
        ov.save_model(model, str(tmp / xml.name), compress_to_fp16=compress_to_fp16)
        _run_once(tmp / xml.name, loaded.task.example_batch(onnx_export.CHECK_BATCH))
        _place_pair([tmp / f.name for f in files], files, force=force)
    return xml


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
