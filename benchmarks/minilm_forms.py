"""Which int8 forms of the real MiniLM encoder run faster, and how faithfully, measured side
by side on ONNX Runtime and OpenVINO.

The fp32 graph exported by autoslim, then each runtime's own quantizers:

- ONNX Runtime: dynamic int8 MatMul weights with the embedding tables int8, fp32 or 4-bit
  (``GatherBlockQuantized``); 4-bit MatMul weights (``MatMulNBits``, accuracy levels 0
  and 4); static QDQ int8 of every op;
- OpenVINO: the fp32 IR; ONNX Runtime's QDQ graph (every op, and MatMuls only); NNCF's
  transformer preset (SmoothQuant, sensitive ops kept in float).

Each is timed in paired rounds against the fp32 model in eager PyTorch on one batch of
the task's validation sentences, in non-spinning sessions. ``fidelity`` is the task's
metric on the test split (Spearman of pairwise cosine similarities against fp32's),
``cosine`` the mean cosine between its sentence embeddings and fp32's. This is why
autoslim's ``onnxruntime`` runtime offers int8 and 4-bit embedding tables and no 4-bit
MatMul, and why ``openvino`` quantizes models with attention through NNCF.

    python benchmarks/minilm_forms.py --out benchmarks/results/minilm_forms_2core.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

from autoslim.artifact import load_artifact, save_artifact
from autoslim.deploy import onnx as onnx_deploy
from autoslim.deploy.onnx import (
    build_onnx,
    onnx_session,
    quantize_4bit,
    quantize_dynamic,
    quantize_gather_4bit,
)
from autoslim.measure.paired import paired_latency
from autoslim.recipe import Recipe
from autoslim.tasks.minilm import similarity_spearman

TASK = {
    "entry": "autoslim.tasks.minilm:make_task",
    "params": {"n_train": 512, "n_val": 256, "n_test": 256, "max_seq_len": 64},
}
BOTH = ("MatMul", "Gather")


def onnx_forms(folder: Path, fp32: Path, calibration: list) -> dict[str, Path]:
    int8 = quantize_dynamic(fp32, folder / "int8.onnx")
    return {
        "fp32": fp32,
        "int8 MatMul, fp32 embeddings": int8,
        "int8 MatMul, int8 embeddings": quantize_dynamic(
            fp32, folder / "int8_gather8.onnx", ["MatMul", "Gemm", "Gather"]
        ),
        "int8 MatMul, 4-bit embeddings": quantize_gather_4bit(int8, folder / "int8_gather4.onnx"),
        "4-bit MatMul (accuracy level 0) + 4-bit embeddings": quantize_4bit(
            fp32, folder / "w4a0.onnx", BOTH, 0
        ),
        "4-bit MatMul (accuracy level 4) + 4-bit embeddings": quantize_4bit(
            fp32, folder / "w4a4.onnx", BOTH, 4
        ),
        "static QDQ int8": onnx_deploy.quantize_static(fp32, folder / "qdq.onnx", calibration),
    }


def openvino_forms(folder: Path, fp32: Path, calibration: list) -> dict[str, Path]:
    import openvino as ov

    from autoslim.deploy.openvino import nncf_int8

    def save(model, name: str) -> Path:
        ov.save_model(model, str(folder / f"{name}.xml"), compress_to_fp16=False)
        return folder / f"{name}.xml"

    def converted(graph: Path):
        bare = onnx_deploy.finish(graph, graph.with_name(f"{graph.stem}.bare.onnx"), {}, keep=False)
        return ov.convert_model(str(bare))

    matmuls = folder / "qdq_matmul.onnx"
    onnx_deploy.quantize_static(fp32, matmuls, calibration, op_types=["MatMul", "Gemm"])
    return {
        "fp32": save(converted(fp32), "ov_fp32"),
        "ONNX Runtime's static QDQ int8": save(
            converted(onnx_deploy.quantize_static(fp32, folder / "ov_qdq.onnx", calibration)),
            "ov_qdq",
        ),
        "ONNX Runtime's static QDQ int8, MatMuls only": save(converted(matmuls), "ov_qdq_mm"),
        "NNCF int8, transformer preset": save(nncf_int8(converted(fp32), calibration), "ov_nncf"),
    }


def sessions(folder: Path, task) -> dict[str, tuple]:
    """form name -> (run, files whose bytes ship)."""
    from autoslim.deploy.openvino import openvino_session

    recipe = Recipe.from_dict({"task": TASK})
    artifact = save_artifact(task.build_model().eval(), recipe, folder / "fp32", task=task)
    loaded = load_artifact(artifact, task=task, runtime=False)
    fp32 = build_onnx(loaded, artifact, folder, "none", 1)
    calibration = onnx_deploy.calibration_data(loaded, 8)
    out = {
        f"onnxruntime {name}": (lambda p=path, t=None: onnx_session(p, threads=t), [path])
        for name, path in onnx_forms(folder, fp32, calibration).items()
    }
    for name, xml in openvino_forms(folder, fp32, calibration).items():
        out[f"openvino {name}"] = (
            lambda p=xml, t=None: openvino_session(p, threads=t),
            [xml, xml.with_suffix(".bin")],
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15, help="paired timing rounds")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    from autoslim.task import load_task

    task = load_task(Recipe.from_dict({"task": TASK}).task)
    model = task.build_model().eval()
    batch = task.example_batch(args.batch)
    fp32_bytes = sum(p.numel() * 4 for p in model.parameters())
    rows = []
    test_inputs, test_targets = task.data.test.inputs, task.data.test.targets
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        reference = model(batch)
        for name, (open_session, files) in sessions(Path(tmp), task).items():
            run = open_session(t=args.threads)
            got = torch.from_numpy(run(batch))
            embedded = torch.cat([torch.from_numpy(run(x)) for x in test_inputs.split(64)])
            paired = paired_latency(
                lambda r=run: r(batch), lambda: model(batch), warmup=2, rounds=args.rounds
            )
            rows.append(
                {
                    "form": name,
                    "bytes_ratio": round(sum(f.stat().st_size for f in files) / fp32_bytes, 4),
                    "latency_ratio": round(paired.ratio, 4),
                    "latency_ratio_ci": [round(paired.ratio_lo, 4), round(paired.ratio_hi, 4)],
                    "fidelity": round(similarity_spearman(embedded.float(), test_targets), 4),
                    "cosine": round(float(torch.cosine_similarity(got, reference).mean()), 4),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr)
    result = {"threads": args.threads, "batch": args.batch, "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
