"""Deploying an artifact: a model file that runs with only its runtime installed.

- :func:`autoslim.deploy.onnx.export_onnx`: one ``.onnx`` file for ONNX Runtime, fp32 or
  quantized by ONNX Runtime (static QDQ int8, or dynamic);
- :func:`autoslim.deploy.openvino.export_openvino`: an OpenVINO IR converted from that
  ONNX graph.

Each is an optional extra (``autoslim[onnx]``, ``autoslim[openvino]``); nothing here
imports a runtime until it is used. ``autoslim export-model`` is :func:`export_model`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autoslim.artifact import RECIPE_FILE, artifact_bytes
from autoslim.errors import AutoslimError

FORMATS = ("onnx", "openvino")


@dataclass(frozen=True)
class Exported:
    files: list[Path]
    artifact_bytes: int
    provenance: dict

    @property
    def summary(self) -> str:
        p = self.provenance
        text = f"quantize {p['quantize']}, {p['exporter']} exporter"
        if "dynamo_failed" in p:
            text += f"; the dynamo exporter failed: {p['dynamo_failed']}"
        return text


def export_model(
    artifact_dir: str | Path,
    out_file: str | Path,
    *,
    format: str = "onnx",  # noqa: A002 — the CLI's --format
    quantize: str = "none",
    calibration_batches: int = 8,
    trust_task: bool = False,
    force: bool = False,
) -> Exported:
    """The artifact written in ``format``; the files written, with the provenance they carry."""
    kwargs = {
        "quantize": quantize,
        "calibration_batches": calibration_batches,
        "trust_task": trust_task,
        "force": force,
    }
    if format == "onnx":
        from autoslim.deploy.onnx import PROVENANCE_KEY, export_onnx, read_metadata

        path = export_onnx(artifact_dir, out_file, **kwargs)
        files, provenance = [path], read_metadata(path)[PROVENANCE_KEY]
    elif format == "openvino":
        from autoslim.deploy.openvino import export_openvino, read_rt_info

        path = export_openvino(artifact_dir, out_file, **kwargs)
        files, provenance = [path, path.with_suffix(".bin")], read_rt_info(path)["provenance"]
    else:
        raise AutoslimError(f"unknown format {format!r} (choose from {', '.join(FORMATS)})")
    return Exported(files, artifact_bytes(artifact_dir), json.loads(provenance))


def integer_quantized(artifact_dir: str | Path) -> bool:
    """Whether the artifact's recipe quantizes some layer to an integer width."""
    from autoslim.recipe import Recipe

    recipe = Recipe.load(Path(artifact_dir) / RECIPE_FILE)
    for stage in recipe.stages:
        widths = [getattr(stage, "default", None), *getattr(stage, "layers", {}).values()]
        if stage.kind == "quantize" and any(isinstance(w, int) for w in widths):
            return True
    return False
