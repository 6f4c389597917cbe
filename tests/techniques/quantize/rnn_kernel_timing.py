"""Is torch's dynamic int8 GRU/LSTM faster than the fp32 layer it would replace?

Not a test (no timed assertion belongs in one): the measurement behind
``RNN_INT8_MIN_HIDDEN`` in ``autoslim/techniques/quantize/_kernels.py``. Each layer is
quantized to 8 bits by a quantize stage and moved onto the kernel the way loading moves
it (:func:`int8_dynamic_rnn`); fp32 and int8 are then timed in alternating rounds on the
same batch, so load on the machine slows both sides of a round alike. Prints the median
per-round ratio int8 / fp32 with its 25th-75th percentile.

    python tests/techniques/quantize/rnn_kernel_timing.py [THREADS] [ROUNDS]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings

import torch
from torch import nn

from autoslim.techniques.quantize import QuantizeConfig, WeightQuantHandler
from autoslim.techniques.quantize._kernels import int8_dynamic_rnn
from autoslim.techniques.quantize._marks import grid_of

SHAPES = [(64, 32), (64, 64), (128, 128), (256, 256), (512, 512)]  # (input, hidden)
BATCH, STEPS, CALLS = 64, 16, 3


def timed(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        model(x)
    return (time.perf_counter() - start) / CALLS


def main() -> None:
    warnings.simplefilter("ignore")  # torch.ao's quantized tensors are deprecated, still run
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    torch.set_num_threads(threads)
    print(f"threads {threads}, batch {BATCH}, {STEPS} steps, load {os.getloadavg()[0]:.1f}")
    for kind in (nn.GRU, nn.LSTM):
        for inputs, hidden in SHAPES:
            torch.manual_seed(0)
            model = nn.Sequential(kind(inputs, hidden, batch_first=True)).eval()
            WeightQuantHandler().apply(model, QuantizeConfig(default=8), None)
            layer = model[0]
            weights = [w for w in layer._flat_weights_names if w.startswith("weight_")]
            fast = int8_dynamic_rnn(layer, grid_of(layer, weights[0]), weights)
            x = torch.randn(BATCH, STEPS, inputs)
            fp32, int8 = [], []
            with torch.inference_mode():
                for _ in range(3):
                    layer(x), fast(x)
                for r in range(rounds):
                    if r % 2:
                        int8.append(timed(fast, x))
                        fp32.append(timed(layer, x))
                    else:
                        fp32.append(timed(layer, x))
                        int8.append(timed(fast, x))
            ratios = sorted(i / f for i, f in zip(int8, fp32, strict=True))
            q1, q3 = ratios[len(ratios) // 4], ratios[3 * len(ratios) // 4]
            print(
                f"{kind.__name__:4s} {inputs:4d}->{hidden:4d}: fp32 "
                f"{statistics.median(fp32) * 1e3:7.3f} ms, int8 {statistics.median(int8) * 1e3:7.3f}"
                f" ms, int8/fp32 {statistics.median(ratios):.2f} [{q1:.2f}, {q3:.2f}]",
                flush=True,
            )
    print(f"load after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
