"""Peak memory of loading and running a model, measured as resident-set growth.

On Linux, writing ``5`` to ``/proc/self/clear_refs`` resets the peak RSS (``VmHWM``), so
a fresh measuring process can read exactly how far loading the artifact and running one
batch pushed its memory. It includes the allocator's and runtime's own overhead, which
is what a deployment pays too. On CUDA the allocator's peak is read instead.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import torch

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def can_measure_rss_peak() -> bool:
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


def peak_memory_bytes(fn: Callable[[], object], *, device: str = "cpu") -> int:
    """Bytes of peak memory growth while ``fn`` runs (CPU: RSS, CUDA: allocator)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - before)
    if not can_measure_rss_peak():
        raise RuntimeError("peak RSS cannot be reset here (needs Linux /proc/self/clear_refs)")
    before = _status_kib("VmRSS")
    CLEAR_REFS.write_text("5")
    fn()
    peak = _status_kib("VmHWM")
    return max(0, (peak - before) * 1024)
