"""Deploying an artifact: a model file that runs with only its runtime installed.

- :func:`autoslim.deploy.onnx.export_onnx`: one ``.onnx`` file for ONNX Runtime, fp32 or
  quantized by ONNX Runtime (static QDQ int8, or dynamic);
- :func:`autoslim.deploy.openvino.export_openvino`: an OpenVINO IR converted from that
  ONNX graph;
- :func:`autoslim.deploy.torch_export.export_torch`: a ``torch.export`` program (``.pt2``);
- :mod:`autoslim.deploy.runtimes`: the runtimes a search measures trials on.

Each is an optional extra (``autoslim[onnx]``, ``autoslim[openvino]``); nothing here
imports a runtime until it is used. ``autoslim export-model`` is :func:`export_model`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from autoslim.artifact import RECIPE_FILE, WEIGHTS_FILE, artifact_bytes, is_artifact
from autoslim.errors import AutoslimError

FORMATS = ("onnx", "openvino", "torch-export")


@dataclass(frozen=True)
class Exported:
    files: list[Path]
    artifact_bytes: int
    provenance: dict

    @property
    def summary(self) -> str:
        p = self.provenance
        text = f"quantize {p['quantize']}, {p['exporter']} exporter"
        if "reused" in p:
            text += f"; {p['reused']}"
        if "dynamo_failed" in p:
            text += f"; the dynamo exporter failed: {p['dynamo_failed']}"
        return text


def export_model(
    artifact_dir: str | Path,
    out_file: str | Path,
    *,
    format: str = "onnx",  # noqa: A002 — the CLI's --format
    quantize: str = "auto",
    calibration_batches: int = 8,
    trust_task: bool = False,
    force: bool = False,
) -> Exported:
    """The artifact written in ``format``; the files written, with the provenance they carry.

    ``quantize="auto"`` ships what the artifact's runtime was measured with: int8 where
    its recipe quantizes to integers (static for a model with convolutions, dynamic
    otherwise; OpenVINO static), else fp32. Where the search already built that ONNX
    file (``deploy/model.onnx``, for these very weights), it is copied, so the file that
    ships is the file that was measured."""
    if not is_artifact(Path(artifact_dir)):
        raise AutoslimError(
            f"not an autoslim artifact (needs {RECIPE_FILE} and {WEIGHTS_FILE}): {artifact_dir}"
        )
    if format not in FORMATS:
        raise AutoslimError(f"unknown format {format!r} (choose from {', '.join(FORMATS)})")
    quantize = resolve_quantize(artifact_dir, format, quantize, trust_task=trust_task)
    if format == "onnx":
        reused = _reuse_measured_onnx(Path(artifact_dir), Path(out_file), quantize, force=force)
        if reused is not None:
            return reused
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
    elif format == "torch-export":
        from autoslim.deploy.torch_export import PROVENANCE_FILE_KEY, export_torch, read_extra_files

        path = export_torch(artifact_dir, out_file, **kwargs)
        files, provenance = [path], read_extra_files(path)[PROVENANCE_FILE_KEY]
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


def resolve_quantize(
    artifact_dir: str | Path,
    format: str,
    quantize: str,
    *,
    trust_task: bool = False,  # noqa: A002
) -> str:
    """``quantize`` itself, or for ``auto`` the mode the artifact's runtime ships."""
    if quantize != "auto":
        return quantize
    if format == "torch-export" or not integer_quantized(artifact_dir):
        return "none"
    if format == "openvino":
        return "static"
    from autoslim.artifact import load_artifact
    from autoslim.deploy.runtimes import has_convolution

    model = load_artifact(artifact_dir, runtime=False, trust_task=trust_task).model
    return "static" if has_convolution(model) else "dynamic"


def _reuse_measured_onnx(
    artifact_dir: Path, out_file: Path, quantize: str, *, force: bool
) -> Exported | None:
    """The search's own ONNX file of these weights in this mode, copied to ``out_file``."""
    from autoslim.artifact import DEPLOY_DIR, WEIGHTS_FILE
    from autoslim.deploy._files import check_output_files, file_sha256, place, scratch_folder

    measured = artifact_dir / DEPLOY_DIR / "model.onnx"
    if not measured.is_file():
        return None
    from autoslim.deploy.onnx import PROVENANCE_KEY, read_metadata

    provenance = json.loads(read_metadata(measured).get(PROVENANCE_KEY, "{}"))
    same = provenance.get("quantize") == quantize and provenance.get("artifact", {}).get(
        "weights_sha256"
    ) == file_sha256(artifact_dir / WEIGHTS_FILE)
    if not same:
        return None
    check_output_files([out_file], force=force)
    with scratch_folder(out_file) as tmp:
        copy = tmp / out_file.name
        shutil.copyfile(measured, copy)
        place(copy, out_file, force=force)
    provenance["reused"] = "the file the search measured"
    return Exported([out_file], artifact_bytes(artifact_dir), provenance)
