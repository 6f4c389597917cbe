"""Runtimes: where a compressed model runs, is measured, and ships.

``target.runtime`` names one of :data:`RUNTIMES`. Each runtime

- declares what it executes natively (:class:`~autoslim.registry.RuntimeForms`), so the
  search offers only forms that run or ship smaller on it, and each front point says
  which of its forms are storage-only there;
- lowers an artifact into the form it ships (:meth:`Runtime.deploy`), built by the
  runtime's own tools and written beside the artifact's weights under ``deploy/``;
- gives back that form as a module, so the task's metric, the latency timers and the
  memory probe run on exactly what ships.

A runtime whose packages are missing fails validation with one line naming the extra.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from autoslim.artifact import DEPLOY_DIR, RECIPE_FILE
from autoslim.data import map_tensors, model_output
from autoslim.errors import AutoslimError
from autoslim.recipe import Recipe
from autoslim.registry import RuntimeForms, handler_for

if TYPE_CHECKING:
    from autoslim.artifact import LoadedArtifact
    from autoslim.recipe import Target
    from autoslim.task import Task

CALIBRATION_BATCHES = 8


@dataclass
class Deployed:
    """The form a runtime ships: a module to call like the model, and its files."""

    module: nn.Module
    files: list[Path]
    form: str

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


class Runtime(ABC):
    name: str
    devices: tuple[str, ...] = ("cpu",)
    packages: tuple[str, ...] = ()
    extra: str = ""
    has_own_files = False  # True: build() writes the file that ships under deploy/

    def missing(self) -> str | None:
        """One line saying what to install, or None when the runtime can run here."""
        for package in self.packages:
            if importlib.util.find_spec(package) is None:
                return (
                    f"runtime {self.name} needs the {package} package: "
                    f"pip install 'autoslim[{self.extra}]'"
                )
        return None

    @abstractmethod
    def forms(self, device: str) -> RuntimeForms: ...

    def build(self, artifact_dir: Path, task: Task) -> Path | None:  # noqa: B027 — optional hook
        """Write the shipped form's files, if the runtime has its own (kept for reuse)."""
        return None

    def warm_up(self) -> None:
        """Load the runtime's libraries: a fixed cost of the process, as importing torch
        is, so it stays out of the model's peak memory."""
        for package in self.packages:
            importlib.import_module(package)

    @abstractmethod
    def deploy(self, artifact_dir: Path, task: Task, target: Target) -> Deployed:
        """The artifact at ``artifact_dir`` in this runtime's shipped form, ready to call
        (built first if :meth:`build` has not run)."""


class TorchRuntime(Runtime):
    """Eager PyTorch with autoslim's kernels: the artifact itself is what ships."""

    name = "torch"
    devices = ("cpu", "cuda")

    def forms(self, device: str) -> RuntimeForms:
        # fbgemm's dynamic int8 Linear and the CSR kernel exist on CPU only
        cpu = device == "cpu"
        return RuntimeForms(
            self.name, weight_bits=frozenset({8} if cpu else set()), sparse=cpu, per_layer=True
        )

    def deploy(self, artifact_dir: Path, task: Task, target: Target) -> Deployed:
        from autoslim.artifact import ARTIFACT_FILES, load_artifact

        model = load_artifact(artifact_dir, task=task).model.to(target.device).eval()
        files = [artifact_dir / name for name in ARTIFACT_FILES]
        return Deployed(model, files, "eager torch")


class TorchCompileRuntime(TorchRuntime):
    """The artifact under ``torch.compile`` (inductor); on CUDA with CUDA graphs, and in
    fp16/bf16 when the recipe stores its floats so: computed in, not only stored."""

    name = "torch-compile"

    def forms(self, device: str) -> RuntimeForms:
        floats = {"fp32"} if device == "cpu" else {"fp32", "fp16", "bf16"}
        return RuntimeForms(
            self.name,
            weight_bits=frozenset({8} if device == "cpu" else set()),
            floats=frozenset(floats),
            per_layer=True,
        )

    def deploy(self, artifact_dir: Path, task: Task, target: Target) -> Deployed:

        eager = TorchRuntime.deploy(self, artifact_dir, task, target)
        recipe = Recipe.load(artifact_dir / RECIPE_FILE)
        compiled, form = self.compiled(eager.module, recipe, target)
        return Deployed(compiled, eager.files, form)

    def compiled(self, module: nn.Module, recipe: Recipe, target: Target) -> tuple[nn.Module, str]:
        """The loaded eager model as this runtime runs it, and the form's name."""
        dtype = execution_dtype(recipe) if target.device == "cuda" else torch.float32
        mode = "reduce-overhead" if target.device == "cuda" else None  # CUDA graphs
        compiled = torch.compile(CastInputs(module.to(dtype), dtype), mode=mode)
        return compiled, f"torch.compile {_dtype_name(dtype)}" + (" + CUDA graphs" if mode else "")


class OnnxRuntime(Runtime):
    """One ONNX file on ONNX Runtime's CPU provider. An artifact quantized to integers
    ships in ONNX Runtime's int8: static QDQ (uint8 activations, calibrated on the train
    split) where the model has convolutions, dynamic (embeddings too) where it has not."""

    name = "onnxruntime"
    packages = ("onnx", "onnxruntime")
    extra = "onnx"
    file_name = "model.onnx"
    has_own_files = True

    # Embedding widths gathered from directly: int8 tables, and 4-bit blocks through
    # GatherBlockQuantized. 4-bit MatMul weights (MatMulNBits) are not offered: on
    # MiniLM they ran no faster than fp32 on an AVX2 CPU (benchmarks/minilm_forms.py).
    embedding_bits = frozenset({4, 8})
    gather_bits: int | None = None  # None: as the recipe says

    def forms(self, device: str) -> RuntimeForms:
        return RuntimeForms(
            self.name,
            weight_bits=frozenset({8}),
            embedding_bits=self.embedding_bits,
            per_layer=False,
            storage_ships=False,
        )

    def quantize_mode(self, loaded: LoadedArtifact) -> str:
        if not any_integer_width(loaded.recipe):
            return "none"
        return "static" if has_convolution(loaded.model) else "dynamic"

    def deploy(self, artifact_dir: Path, task: Task, target: Target) -> Deployed:
        from autoslim.deploy.onnx import onnx_session

        path = self.build(artifact_dir, task)
        run = onnx_session(path, threads=target.threads)
        return Deployed(SessionModule(run), [path], self.form(artifact_dir))

    def form(self, artifact_dir: Path) -> str:
        from autoslim.deploy.onnx import PROVENANCE_KEY, read_metadata

        provenance = json.loads(
            read_metadata(artifact_dir / DEPLOY_DIR / "model.onnx")[PROVENANCE_KEY]
        )
        form = f"{self.name} {_mode_name(provenance['quantize'])}"
        tables = provenance.get("embeddings")
        return f"{form}, {tables} embeddings" if tables else form

    def build(self, artifact_dir: Path, task: Task) -> Path:
        """The runtime's file under ``deploy/``, built once per artifact (the ONNX graph
        is kept beside it: it carries the recipe and provenance)."""
        from autoslim.artifact import load_artifact

        folder = artifact_dir / DEPLOY_DIR
        out = folder / self.file_name
        if out.exists():
            return out
        loaded = load_artifact(artifact_dir, task=task, runtime=False)
        folder.mkdir(exist_ok=True)
        tmp = folder / f".{self.name}.tmp"
        _remove_tree(tmp)
        tmp.mkdir()
        try:
            self._write(loaded, artifact_dir, tmp, folder)
        finally:
            _remove_tree(tmp)
        return out

    def _write(self, loaded: LoadedArtifact, artifact_dir: Path, tmp: Path, folder: Path) -> None:
        """Build the shipped file in ``tmp``, then move it into ``folder``."""
        from autoslim.deploy.onnx import build_onnx

        mode = self.quantize_mode(loaded)
        built = build_onnx(
            loaded, artifact_dir, tmp, mode, CALIBRATION_BATCHES, gather_bits=self.gather_bits
        )
        built.replace(folder / self.file_name)


class OpenVinoRuntime(OnnxRuntime):
    """An OpenVINO IR (``model.xml`` + ``model.bin``) converted from the same ONNX graph.
    An integer artifact ships in static int8: NNCF's transformer preset for a model with
    attention (its embedding tables int8 too), ONNX Runtime's QDQ graph otherwise
    (:mod:`autoslim.deploy.openvino`)."""

    name = "openvino"
    packages = ("onnx", "onnxruntime", "openvino", "nncf")
    extra = "openvino"
    file_name = "model.xml"
    # Tables as the quantizer leaves them: OpenVINO reads no GatherBlockQuantized (4-bit).
    embedding_bits = frozenset()
    gather_bits = 0

    def quantize_mode(self, loaded: LoadedArtifact) -> str:
        return "static" if any_integer_width(loaded.recipe) else "none"

    def deploy(self, artifact_dir: Path, task: Task, target: Target) -> Deployed:
        from autoslim.deploy.openvino import openvino_session

        path = self.build(artifact_dir, task)
        run = openvino_session(path, threads=target.threads)
        files = [path, path.with_suffix(".bin")]
        return Deployed(SessionModule(run), files, self.form(artifact_dir))

    def form(self, artifact_dir: Path) -> str:
        from autoslim.deploy.onnx import PROVENANCE_KEY
        from autoslim.deploy.openvino import read_rt_info

        info = read_rt_info(artifact_dir / DEPLOY_DIR / self.file_name)
        stored = info.get(PROVENANCE_KEY.split(".", 1)[1])
        if stored is None:  # an IR written without provenance: it is in the ONNX file beside it
            return super().form(artifact_dir)
        provenance = json.loads(stored)
        form = f"{self.name} {_mode_name(provenance['quantize'])}"
        return f"{form} (NNCF)" if provenance.get("quantizer") == "nncf" else form

    def _write(self, loaded: LoadedArtifact, artifact_dir: Path, tmp: Path, folder: Path) -> None:
        from autoslim.deploy.openvino import build_ir

        mode = self.quantize_mode(loaded)
        xml = build_ir(loaded, artifact_dir, tmp / self.file_name, mode, CALIBRATION_BATCHES)
        xml.with_suffix(".bin").replace(folder / "model.bin")  # the weights before their XML
        xml.replace(folder / self.file_name)


RUNTIMES: dict[str, Runtime] = {
    r.name: r for r in (TorchRuntime(), TorchCompileRuntime(), OnnxRuntime(), OpenVinoRuntime())
}


def runtime_named(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError:
        raise AutoslimError(
            f"unknown runtime {name!r} (choose from {', '.join(RUNTIMES)})"
        ) from None


def check_runtimes(target: Target) -> None:
    """Refuse, in one line, a target whose runtime cannot run here."""
    for name in target.runtimes:
        problem = runtime_named(name).missing()
        if problem:
            raise AutoslimError(problem)


def storage_only(recipe: Recipe) -> list[str]:
    """What the recipe stores smaller but its runtime does not run faster."""
    forms = runtime_named(recipe.target.runtime).forms(recipe.target.device)
    return [
        part for stage in recipe.stages for part in handler_for(stage).storage_only(stage, forms)
    ]


def deployed_values(deployed: Deployed, recipe: Recipe) -> dict[str, Any]:
    """What a measurement records about the shipped form."""
    return {
        "runtime": recipe.target.runtime,
        "deploy_form": deployed.form,
        "storage_only": json.dumps(storage_only(recipe)),
    }


# --- the pieces --------------------------------------------------------------------------


class SessionModule(nn.Module):
    """A runtime's session behind ``nn.Module``'s call, so code written for the model
    (the task's metric, the timers) runs the shipped file unchanged. It is called as the
    model is (:func:`~autoslim.data.call_model`): ``m(x)``, ``m(*tuple)`` or
    ``m(**dict)``; ``run`` takes the batch in that same shape and feeds the graph's
    inputs by name."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        self.run = run

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs and args:
            raise AutoslimError(
                "a shipped model takes one tensor, a tuple or a dict of inputs, not both "
                "positional and keyword inputs"
            )
        batch = kwargs or (args[0] if len(args) == 1 else args)
        return torch.from_numpy(np.ascontiguousarray(self.run(batch)))


class CastInputs(nn.Module):
    """Floating inputs cast to the model's compute dtype, outputs back to fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.to(self.dtype) if t.is_floating_point() else t

        out = model_output(self.model(*map_tensors(args, cast), **map_tensors(kwargs, cast)))
        return out.float()


def any_integer_width(recipe: Recipe) -> bool:
    """Whether some quantize stage puts a layer on an integer grid."""
    for stage in recipe.stages:
        if stage.kind != "quantize":
            continue
        widths = [getattr(stage, "default", None), *getattr(stage, "layers", {}).values()]
        if any(isinstance(w, int) for w in widths):
            return True
    return False


def execution_dtype(recipe: Recipe) -> torch.dtype:
    """fp16/bf16 when a quantize stage keeps its layers in that float by default."""
    for stage in recipe.stages:
        if stage.kind == "quantize" and stage.default in ("fp16", "bf16"):
            return torch.float16 if stage.default == "fp16" else torch.bfloat16
    return torch.float32


def has_convolution(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def _mode_name(mode: str) -> str:
    return {"none": "fp32", "static": "static int8", "dynamic": "dynamic int8"}[mode]


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")


def _remove_tree(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
