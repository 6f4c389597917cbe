"""Deployable speed: fp32 eager against the runtimes users ship on and autoslim's forms.

For ResNet-18 (224², torchvision layout) and BERT-base (sequence 128, Hugging Face
``BertForSequenceClassification``), random weights, one process per model:

- ``fp32 eager``: the reference every ratio is taken against;
- peers a user would pick instead, in one call and no search:
  ONNX Runtime fp32, ONNX Runtime int8 (static QDQ, per-channel, for the CNN; dynamic for
  BERT), OpenVINO fp32 and int8 (the same files, for the CNN; NNCF's transformer preset
  for BERT, where OpenVINO and NNCF are installed), and on a GPU ``torch.compile`` in
  fp16 with CUDA graphs;
- autoslim's deployable forms: structured pruning (half of the CNN's channels; half of
  BERT's heads and FFN neurons, or half its layers) through autoslim's own stages, then
  the same runtime's int8 (CPU) or fp16 + ``torch.compile`` with CUDA graphs (GPU).

Each variant is timed in rounds interleaved with fp32 eager on the same batch and
threads (:mod:`autoslim.measure.paired`), so ``latency_ratio`` comes with its interval.
``bytes_ratio`` is the deployable file against the fp32 weights (safetensors). Random
weights carry no accuracy, so ``metric`` is null: these rows are about speed and bytes
at a stated compression level only.

    python benchmarks/deploy.py --json                 # CPU 4 and 16 threads, and GPU if present
    python benchmarks/deploy.py --quick --json         # CPU rows at 2 threads, few rounds
    python benchmarks/deploy.py --models "" --runs runs/minilm-onnxruntime --json
                                                       # rows from searches on real tasks
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from autoslim.measure.paired import paired_latency
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.task import model_only_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit  # noqa: E402
from user_models import BasicBlock  # noqa: E402  torchvision's block, written out

# --- models -----------------------------------------------------------------------------


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, layers, inplanes = (64, 128, 256, 512), [], 64
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers.append(
                nn.Sequential(BasicBlock(inplanes, width, stride), BasicBlock(width, width))
            )
            inplanes = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class BertLogits(nn.Module):
    """BertForSequenceClassification returning a tensor (exporters want tensors)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        self.bert = BertForSequenceClassification(BertConfig(num_labels=2))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids).logits


TASK = {"entry": "deploy_benchmark:make_task"}
# Half the encoder layers, evenly spaced: DistilBERT's depth, which kept about 97 % of
# BERT-base's GLUE score after distillation, so a random-weight row at it is realistic.
DEPTH_HALF = {"kind": "drop_layers", "fraction": 0.5}


def build(name: str) -> tuple[nn.Module, Callable[[int], torch.Tensor], Recipe]:
    """The model in eval mode, a batch maker, and autoslim's structured recipe for it."""
    torch.manual_seed(0)
    task = TASK
    if name == "resnet18":
        stage = {
            "kind": "prune_structured",
            "ratio": 0.5,
            "input_shape": [3, 224, 224],
            "round_to": 8,
        }
        return (
            ResNet18().eval(),
            lambda b: torch.randn(b, 3, 224, 224),
            Recipe.from_dict({"task": task, "stages": [stage]}),
        )
    stage = {"kind": "prune_structured", "heads": 0.5, "ffn": 0.5}
    return (
        BertLogits().eval(),
        lambda b: torch.randint(0, 30522, (b, 128)),
        Recipe.from_dict({"task": task, "stages": [stage]}),
    )


def structured(model: nn.Module, recipe: Recipe) -> nn.Module:
    """autoslim's structured stage on the model, without fine-tuning (random weights)."""
    import copy

    task = model_only_task(lambda: copy.deepcopy(model), "deploy")
    return apply_recipe(recipe, task=task, model=copy.deepcopy(model), dry_run=True).eval()


# --- deployable forms -------------------------------------------------------------------


def file_bytes(path: Path) -> int:
    """A file's bytes; an OpenVINO IR's XML counts its weights file too."""
    weights = path.with_suffix(".bin")
    return path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" else 0)


def nncf_ir(fp32: Path, out: Path, calibration: list[torch.Tensor]) -> Path:
    """OpenVINO's own int8 of a transformer: NNCF's transformer preset, as autoslim's
    ``openvino`` runtime ships a model with attention."""
    import openvino as ov

    from autoslim.deploy.openvino import nncf_int8

    ov.save_model(nncf_int8(ov.convert_model(str(fp32)), calibration), str(out))
    return out


def safetensors_bytes(model: nn.Module, folder: Path, name: str, dtype=None) -> int:
    state = {
        k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }
    path = folder / f"{name}.safetensors"
    save_file(state, str(path))
    return file_bytes(path)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """fp32 ONNX with a dynamic batch axis (TorchScript exporter: stable on both models)."""
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


ACTIVATIONS = {"qint8": "QInt8", "quint8": "QUInt8"}


def quantize_onnx(
    fp32: Path,
    out: Path,
    *,
    static: bool,
    calibration: list[torch.Tensor],
    activations: str = "quint8",
) -> Path:
    """ONNX Runtime's own int8, as its docs advise: pre-processing (shape inference and
    graph optimisation), then static QDQ per-channel with uint8 activations (U8S8, the
    fast x86 layout; ``activations="qint8"`` for S8S8) for the CNN, or dynamic for
    transformers."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    prepared = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(prepared))
    if not static:
        quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=True)
        return out

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"x": b.numpy()} for b in calibration])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=getattr(QuantType, ACTIVATIONS[activations]),
        weight_type=QuantType.QInt8,
    )
    return out


def ort_runner(path: Path, batch: torch.Tensor, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # idle threads spinning for the next run would slow the interleaved PyTorch reference
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"x": batch.numpy()}
    return lambda: session.run(None, feed)


def openvino_runner(path: Path, batch: torch.Tensor, threads: int) -> Callable[[], object]:
    """The ONNX file compiled by OpenVINO's CPU plugin with its defaults (what a user gets,
    bf16 included where the CPU has it) and ``threads`` threads."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    feed = batch.numpy()
    return lambda: request.infer([feed])


def _has(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


# --- measurement ------------------------------------------------------------------------


def row(
    model: str,
    variant: str,
    runtime: str,
    device: str,
    threads: int,
    batch: int,
    bytes_ratio: float,
    paired,
) -> dict:
    return {
        "model": model,
        "variant": variant,
        "runtime": runtime,
        "device": device,
        "threads": threads,
        "batch": batch,
        "bytes_ratio": round(bytes_ratio, 4),
        "latency_ratio": round(paired.ratio, 4),
        "latency_ratio_ci": [round(paired.ratio_lo, 4), round(paired.ratio_hi, 4)],
        "latency_ms": round(paired.latency_ms, 3),
        "reference_ms": round(paired.reference_ms, 3),
        "verdict": paired.verdict,
        "metric": None,
        "metric_drop": None,
    }


def cpu_rows(
    name: str, threads_list: list[int], batches: list[int], rounds: int, cap: float, log
) -> list[dict]:
    model, make_batch, recipe = build(name)
    pruned = structured(model, recipe)
    rows = []
    with tempfile.TemporaryDirectory(prefix="deploy-") as tmp:
        folder = Path(tmp)
        fp32_bytes = safetensors_bytes(model, folder, "fp32")
        example = make_batch(1)
        calibration = [make_batch(4) for _ in range(4)]
        static = name == "resnet18"  # transformers: dynamic int8, as ONNX Runtime advises
        files = {"onnxruntime fp32": export_onnx(model, example, folder / "fp32.onnx")}
        files["onnxruntime int8 (peer)"] = quantize_onnx(
            files["onnxruntime fp32"], folder / "int8.onnx", static=static, calibration=calibration
        )
        pruned_fp32 = export_onnx(pruned, example, folder / "pruned.onnx")
        files["autoslim structured + onnxruntime fp32"] = pruned_fp32
        files["autoslim structured + onnxruntime int8"] = quantize_onnx(
            pruned_fp32, folder / "pruned_int8.onnx", static=static, calibration=calibration
        )
        if not static:  # DistilBERT's depth (6 of 12 layers), a published, accuracy-kept level
            shallow = structured(model, Recipe.from_dict({"task": TASK, "stages": [DEPTH_HALF]}))
            shallow_fp32 = export_onnx(shallow, example, folder / "depth.onnx")
            files["autoslim depth 6/12 + onnxruntime int8"] = quantize_onnx(
                shallow_fp32, folder / "depth_int8.onnx", static=False, calibration=calibration
            )
        if static:  # int8 activations (S8S8): slower on x86 than uint8 (U8S8), kept to show it
            files["onnxruntime int8, int8 activations (peer)"] = quantize_onnx(
                files["onnxruntime fp32"],
                folder / "int8_s8.onnx",
                static=True,
                calibration=calibration,
                activations="qint8",
            )
        if not static and _has("openvino") and _has("nncf"):
            files["openvino NNCF int8 (peer)"] = nncf_ir(
                files["onnxruntime fp32"], folder / "nncf.xml", calibration
            )
            files["autoslim structured + openvino NNCF int8"] = nncf_ir(
                pruned_fp32, folder / "pruned_nncf.xml", calibration
            )
            files["autoslim depth 6/12 + openvino NNCF int8"] = nncf_ir(
                shallow_fp32, folder / "depth_nncf.xml", calibration
            )
        log(
            f"{name}: files "
            + ", ".join(f"{k} {file_bytes(v) / fp32_bytes:.3f}x" for k, v in files.items())
        )
        runs = {
            variant: ("openvino" if path.suffix == ".xml" else "onnxruntime", path)
            for variant, path in files.items()
        }
        if static and _has("openvino"):  # OpenVINO reads the same files (QDQ int8 stays int8)
            runs["openvino fp32 (peer)"] = ("openvino", files["onnxruntime fp32"])
            runs["openvino int8 (peer)"] = ("openvino", files["onnxruntime int8 (peer)"])
            runs["autoslim structured + openvino int8"] = (
                "openvino",
                files["autoslim structured + onnxruntime int8"],
            )
        runners = {"onnxruntime": ort_runner, "openvino": openvino_runner}
        for threads in threads_list:
            torch.set_num_threads(threads)
            for batch_size in batches:
                batch = make_batch(batch_size)
                with torch.inference_mode():
                    reference = partial(model, batch)
                    for variant, (runtime, path) in runs.items():
                        candidate = runners[runtime](path, batch, threads)
                        paired = paired_latency(
                            candidate, reference, warmup=2, rounds=rounds, time_cap_s=cap
                        )
                        rows.append(
                            row(
                                name,
                                variant,
                                runtime,
                                "cpu",
                                threads,
                                batch_size,
                                file_bytes(path) / fp32_bytes,
                                paired,
                            )
                        )
                        log(
                            f"  {variant}, {threads} threads, batch {batch_size}: {paired.ratio:.3f} "
                            f"[{paired.ratio_lo:.3f}, {paired.ratio_hi:.3f}]"
                        )
    return rows


def _fp8_bytes(model: nn.Module, folder: Path) -> int:
    """Bytes of the fp8 form's state: one byte per Linear weight, bf16 for the rest."""
    state = float8(model).state_dict()
    tensors = {
        k: (v.to(torch.uint8) if v.dtype == torch.float8_e4m3fn else v).contiguous()
        for k, v in state.items()
        if v is not None
    }
    path = folder / "fp8.safetensors"
    save_file(tensors, str(path))
    return file_bytes(path)


def gpu_rows(name: str, batches: list[int], rounds: int, cap: float, log) -> list[dict]:
    model, make_batch, recipe = build(name)
    pruned = structured(model, recipe)
    rows = []
    with tempfile.TemporaryDirectory(prefix="deploy-") as tmp:
        folder = Path(tmp)
        fp32_bytes = safetensors_bytes(model, folder, "fp32")
        forms = {
            "torch.compile fp16 + CUDA graphs (peer)": (
                model,
                safetensors_bytes(model, folder, "fp16", torch.float16),
            ),
            "autoslim structured + fp16 + torch.compile + CUDA graphs": (
                pruned,
                safetensors_bytes(pruned, folder, "pruned16", torch.float16),
            ),
        }
        if name == "bert-base":
            shallow = structured(model, Recipe.from_dict({"task": TASK, "stages": [DEPTH_HALF]}))
            forms["autoslim depth 6/12 + fp16 + torch.compile + CUDA graphs"] = (
                shallow,
                safetensors_bytes(shallow, folder, "depth16", torch.float16),
            )
        if name == "bert-base":  # fp8 GEMMs: Linear layers only, so not the CNN
            forms["autoslim structured + fp8 (e4m3) + torch.compile + CUDA graphs"] = (
                float8(pruned),
                _fp8_bytes(pruned, folder),
            )
        eager = model.cuda()
        for batch_size in batches:
            batch = make_batch(batch_size).cuda()
            with torch.inference_mode():
                reference = partial(eager, batch)
                for variant, (module, nbytes) in forms.items():
                    ready = module if "fp8" in variant else _half(module)
                    compiled = torch.compile(ready.cuda(), mode="reduce-overhead")
                    fed = batch if batch.dtype == torch.long else batch.half()
                    candidate = partial(compiled, fed)
                    try:
                        candidate()
                    except Exception as exc:  # noqa: BLE001 — a kernel this GPU lacks: log, skip
                        log(
                            f"  {variant}, GPU batch {batch_size}: failed ({type(exc).__name__}: {exc})"[
                                :300
                            ]
                        )
                        continue
                    paired = paired_latency(
                        candidate,
                        reference,
                        warmup=5,
                        rounds=rounds,
                        time_cap_s=cap,
                        sync=torch.cuda.synchronize,
                    )
                    rows.append(
                        row(
                            name,
                            variant,
                            "torch-compile",
                            "cuda",
                            0,
                            batch_size,
                            nbytes / fp32_bytes,
                            paired,
                        )
                    )
                    log(f"  {variant}, GPU batch {batch_size}: {paired.ratio:.3f}")
    return rows


def _half(module: nn.Module, dtype=torch.float16) -> nn.Module:
    import copy

    return copy.deepcopy(module).to(dtype).eval()


class Float8Linear(nn.Module):
    """A Linear on the H100's fp8 tensor cores: e4m3 weights with one scale per output
    channel, activations scaled per row at run time, ``torch._scaled_mm`` into bf16."""

    E4M3_MAX = 448.0

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / self.E4M3_MAX
        # (in, out), column-major as _scaled_mm wants its second operand
        self.register_buffer("weight_t", (weight / scale).to(torch.float8_e4m3fn).t())
        self.register_buffer("weight_scale", scale.t().contiguous())
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        scale = rows.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / self.E4M3_MAX
        quantized = (rows.float() / scale).to(torch.float8_e4m3fn)
        out = torch._scaled_mm(
            quantized,
            self.weight_t,
            scale_a=scale,
            scale_b=self.weight_scale,
            bias=self.bias,
            out_dtype=torch.bfloat16,
        )
        return out.reshape(*x.shape[:-1], out.shape[-1])


def float8(module: nn.Module) -> nn.Module:
    """``module`` in bf16 with every Linear (both sides multiples of 16) on fp8."""
    model = _half(module, torch.bfloat16)
    for child in list(model.modules()):
        for attr, leaf in list(child.named_children()):
            if (
                isinstance(leaf, nn.Linear)
                and leaf.in_features % 16 == 0
                and leaf.out_features % 16 == 0
            ):
                setattr(child, attr, Float8Linear(leaf))
    return model


def run_rows(run_dir: Path) -> list[dict]:
    """Rows for the front of an autoslim search run on a real task: each point's test
    metric drop against the fp32 baseline, bytes and paired latency ratios, as measured
    on the runtime that ships it (the run's ``pareto.csv`` and ``summary.json``)."""
    import pandas as pd

    summary = json.loads((run_dir / "summary.json").read_text())
    info = json.loads((run_dir / "run.json").read_text())
    target = info["experiment_spec"].get("target", {})
    metric = next(name for name in summary["objectives"] if f"test_{name}" in summary["baseline"])
    base = summary["baseline"]
    rows = []
    for _, point in pd.read_csv(run_dir / "pareto.csv").iterrows():
        confirmed = point.get("confirmed_latency_ratio")
        rows.append(
            {
                "model": summary["experiment"],
                "variant": f"autoslim front trial {int(point['trial'])}: {point.get('deploy_form')}",
                "runtime": point.get("runtime", "torch"),
                "device": target.get("device", "cpu"),
                "threads": target.get("threads"),
                "batch": target.get("batch_size"),
                "bytes_ratio": round(point["size_bytes"] / base["size_bytes"], 4),
                "latency_ratio": round(float(point["latency_ratio"]), 4),
                "latency_ratio_ci": [
                    round(float(point["latency_ratio_lo"]), 4),
                    round(float(point["latency_ratio_hi"]), 4),
                ],
                "confirmed_latency_ratio": None
                if pd.isna(confirmed)
                else round(float(confirmed), 4),
                "metric": f"test_{metric}",
                "metric_drop": round(base[f"test_{metric}"] - point[f"test_{metric}"], 4),
                "source": str(run_dir),
            }
        )
    return rows


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="fp32 eager against ONNX Runtime, torch.compile and autoslim's "
        "deployable forms on ResNet-18 and BERT-base; paired latency ratios."
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", type=Path, help="also write the JSON object to this file")
    parser.add_argument("--quick", action="store_true", help="CPU rows only, 2 threads, few rounds")
    parser.add_argument(
        "--models", default="resnet18,bert-base", help="comma list of resnet18, bert-base"
    )
    parser.add_argument("--threads", default="4,16", help="CPU thread counts (not with --quick)")
    parser.add_argument(
        "--devices", default="cpu,cuda", help="comma list of cpu, cuda (cuda rows need a GPU)"
    )
    parser.add_argument(
        "--batches",
        help="comma list of batch sizes (default: 1 and 32 for ResNet-18, 1 and 16 for BERT)",
    )
    parser.add_argument(
        "--time-cap", type=float, help="seconds per paired timing (default 15 quick, 30 full)"
    )
    parser.add_argument(
        "--runs",
        nargs="*",
        type=Path,
        default=[],
        help="search run folders on real tasks whose fronts become rows with a metric drop",
    )
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    models = [m for m in args.models.split(",") if m]
    rounds, cap = (10, 15.0) if args.quick else (20, 30.0)
    cap = args.time_cap or cap
    devices = set(args.devices.split(","))
    threads = [2] if args.quick else [int(t) for t in args.threads.split(",")]
    rows = []
    for name in models:
        batches = [1, 32] if name == "resnet18" else [1, 16]
        if args.batches:
            batches = [int(b) for b in args.batches.split(",")]
        if "cpu" in devices:
            rows += cpu_rows(name, threads, batches, rounds, cap, log)
        if "cuda" in devices and not args.quick and torch.cuda.is_available():
            rows += gpu_rows(name, batches, rounds, cap, log)
    for run_dir in args.runs:
        rows += run_rows(run_dir)
    result = {"machine": machine(), "rows": rows}
    emit(result, out=args.out, print_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
