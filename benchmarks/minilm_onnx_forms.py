"""Which ONNX Runtime forms of the real MiniLM encoder run faster, measured side by side.

The fp32 graph exported by autoslim, then ONNX Runtime's own quantizers: dynamic int8
MatMul weights with the embedding tables int8, fp32 or 4-bit (``GatherBlockQuantized``),
and 4-bit MatMul weights (``MatMulNBits``, accuracy levels 0 and 4). Each is timed in
paired rounds against the fp32 model in eager PyTorch on one batch of the task's
validation sentences, in non-spinning sessions; ``cosine`` is the mean cosine between
its sentence embeddings and fp32's. This is why autoslim's ``onnxruntime`` runtime offers
int8 and 4-bit embedding tables and no 4-bit MatMul.

    python benchmarks/minilm_onnx_forms.py --out benchmarks/results/minilm_onnx_forms_2core.json
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
from autoslim.deploy.onnx import (
    build_onnx,
    onnx_session,
    quantize_4bit,
    quantize_dynamic,
    quantize_gather_4bit,
)
from autoslim.measure.paired import paired_latency
from autoslim.recipe import Recipe

TASK = {
    "entry": "autoslim.tasks.minilm:make_task",
    "params": {"n_train": 64, "n_val": 64, "n_test": 64, "max_seq_len": 64},
}
BOTH = ("MatMul", "Gather")


def forms(folder: Path, task) -> dict[str, Path]:
    recipe = Recipe.from_dict({"task": TASK})
    artifact = save_artifact(task.build_model().eval(), recipe, folder / "fp32", task=task)
    loaded = load_artifact(artifact, task=task, runtime=False)
    fp32 = build_onnx(loaded, artifact, folder, "none", 1)
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
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
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
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        reference = model(batch)
        for name, path in forms(Path(tmp), task).items():
            run = onnx_session(path, threads=args.threads)
            got = torch.from_numpy(run(batch))
            paired = paired_latency(
                lambda r=run: r(batch), lambda: model(batch), warmup=2, rounds=10
            )
            rows.append(
                {
                    "form": name,
                    "bytes_ratio": round(path.stat().st_size / fp32_bytes, 4),
                    "latency_ratio": round(paired.ratio, 4),
                    "latency_ratio_ci": [round(paired.ratio_lo, 4), round(paired.ratio_hi, 4)],
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
