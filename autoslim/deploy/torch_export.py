"""An artifact as one ``torch.export`` program (``.pt2``): a graph and its weights that
``torch.export.load`` runs with only PyTorch installed (no autoslim, no task module).

The program is exported from the artifact's plain-module form (``runtime=False``: weights
decoded to fp32, no autoslim kernel, since ``torch.export`` cannot trace the int8
kernels' custom ops), with a dynamic batch axis on each input, and kept only if it
reproduces the artifact's outputs on a real batch of another size. It takes the inputs
as the model does (one tensor, a tuple as positional arguments, a dict as keyword
arguments) and returns what the model returns. The recipe and provenance travel as
the archive's extra files :data:`RECIPE_FILE_KEY` and :data:`PROVENANCE_FILE_KEY`. An
integer artifact is stored in fp32 here; ``--format onnx --quantize static`` keeps int8.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from autoslim.artifact import RECIPE_FILE, WEIGHTS_FILE, load_artifact
from autoslim.data import call_model, example_args
from autoslim.deploy._files import (
    check_output_files,
    file_sha256,
    package_version,
    place,
    scratch_folder,
)
from autoslim.deploy.onnx import CHECK_BATCH, EXPORT_BATCH, _one_line, _quiet
from autoslim.errors import AutoslimError

RECIPE_FILE_KEY = "autoslim.recipe"
PROVENANCE_FILE_KEY = "autoslim.provenance"


def export_torch(
    artifact_dir: str | Path,
    out_file: str | Path,
    *,
    quantize: str = "none",
    calibration_batches: int = 8,  # noqa: ARG001 — the shared export signature
    trust_task: bool = False,
    force: bool = False,
) -> Path:
    """Write ``out_file`` (``.pt2``) atomically; an existing file only with ``force``."""
    out = Path(out_file)
    if quantize != "none":
        raise AutoslimError(
            "--format torch-export writes the decoded weights; --quantize applies to onnx and openvino"
        )
    check_output_files([out], force=force)
    loaded = load_artifact(artifact_dir, runtime=False, trust_task=trust_task)
    program = export_program(loaded.model, loaded.task.example_batch)
    provenance = {
        "artifact": {
            "name": Path(artifact_dir).resolve().name,
            "bytes": loaded.size_bytes,
            "weights_sha256": file_sha256(Path(artifact_dir) / WEIGHTS_FILE),
        },
        "quantize": "none",
        "exporter": "torch.export",
        "versions": {name: package_version(name) for name in ("autoslim", "torch")},
    }
    extra = {
        RECIPE_FILE_KEY: (Path(artifact_dir) / RECIPE_FILE).read_text(),
        PROVENANCE_FILE_KEY: json.dumps(provenance, sort_keys=True),
    }
    with scratch_folder(out) as tmp:
        torch.export.save(program, str(tmp / out.name), extra_files=extra)
        place(tmp / out.name, out, force=force)
    return out


def export_program(model: torch.nn.Module, example) -> torch.export.ExportedProgram:
    """The model traced with a dynamic batch axis on every input, checked on a batch of
    another size. It is called as the model is: ``m(x)``, ``m(*inputs)`` for a tuple,
    ``m(**inputs)`` for a dict (whose keys must then be ``forward``'s parameter names),
    and returns what the model returns: loading a program whose output is a Hugging
    Face ``ModelOutput`` needs ``transformers``, which defines that class."""
    model = model.eval()
    args, kwargs = example_args(example(EXPORT_BATCH))
    batch = torch.export.Dim("batch", max=1 << 16)
    shapes = {name: {0: batch} for name in kwargs} if kwargs else tuple({0: batch} for _ in args)
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(model, args, kwargs, dynamic_shapes=shapes)
            module = program.module()  # rebuilding the module fails for some traces too
    except Exception as exc:  # noqa: BLE001 — torch.export fails in many ways; one line
        raise AutoslimError(f"torch.export could not trace the model ({_one_line(exc)})") from None
    check = example(CHECK_BATCH)
    with torch.no_grad():
        expected, got = call_model(model, check), call_model(module, check)
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-3, atol=1e-4):
        worst = float((got - expected).abs().max()) if got.shape == expected.shape else np.nan
        raise AutoslimError(f"the exported program's outputs differ from the model's ({worst:.3g})")
    return program


def read_extra_files(file: str | Path) -> dict[str, str]:
    """The recipe and provenance stored in a ``.pt2`` archive."""
    extra = {RECIPE_FILE_KEY: "", PROVENANCE_FILE_KEY: ""}
    torch.export.load(str(file), extra_files=extra)
    return extra
