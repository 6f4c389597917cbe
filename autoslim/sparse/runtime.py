"""Putting pruned Linear layers on the sparse kernel, only where it was measured faster.

Called when an artifact is loaded for its target: each ``nn.Linear`` whose weight is at
least :data:`MIN_SPARSITY` zeros is compared against the cached, measured CSR/dense
crossover for its shape, batch and threads (:mod:`autoslim.sparse.crossover`); layers
below the crossover stay plain dense ``nn.Linear``. Convolutions stay dense: their CSR
lowering needs the input size, and was not measured faster on these CPUs.
"""

from __future__ import annotations

from torch import nn

from autoslim.recipe import Target
from autoslim.sparse.crossover import measure_crossover
from autoslim.sparse.execute import SparseLinear, choose_kernel, sparsity_of

# Below this no measured crossover on these machines was ever reached; skip the timing.
MIN_SPARSITY = 0.5


def _candidates(model: nn.Module, target: Target) -> list[tuple[str, nn.Linear]]:
    if not target.sparse_kernels or target.device != "cpu":
        return []
    return [
        (name, m)
        for name, m in model.named_modules()
        if type(m) is nn.Linear and sparsity_of(m.weight.detach()) >= MIN_SPARSITY
    ]


def warm_crossovers(model: nn.Module, target: Target) -> None:
    """Measure (and cache) the crossovers a later :func:`sparse_runtime` will read."""
    for _, linear in _candidates(model, target):
        measure_crossover(
            linear.out_features, linear.in_features, target.batch_size, target.threads
        )


def planned_kernels(model: nn.Module, target: Target) -> dict[str, str]:
    """Per qualifying Linear layer, the kernel :func:`sparse_runtime` runs: "csr" or "dense".

    Layers not listed run as they are (dense). The artifact writer calls this too, with the
    ``fastest`` storage policy, so the stored format and the kernel come from one decision.
    """
    plan = {}
    for name, linear in _candidates(model, target):
        crossover = measure_crossover(
            linear.out_features, linear.in_features, target.batch_size, target.threads
        )
        plan[name] = choose_kernel(sparsity_of(linear.weight.detach()), crossover)
    return plan


def sparse_runtime(model: nn.Module, target: Target) -> nn.Module:
    """Swap qualifying Linear layers for CSR ``SparseLinear``; return the model."""
    for name, kernel in planned_kernels(model, target).items():
        if kernel == "csr":
            linear = model.get_submodule(name)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(
                parent,
                child,
                SparseLinear.from_dense(
                    linear, batch=target.batch_size, threads=target.threads, kernel="csr"
                ),
            )
    return model
