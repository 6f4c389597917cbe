"""Hutchinson estimates from Hessian-vector products, shared by pruning and mixed precision.

For Rademacher probes z (entries ±1 with equal odds), E[zᵀHz] = Tr(H) and
E[z ⊙ Hz] = diag(H), because E[z_i z_j] is 1 on the diagonal and 0 off it. Each probe
costs one Hessian-vector product, taken by double backward through the gradient graph,
so the Hessian itself is never formed. HAWQ-V2 sensitivity sums ``v * hv`` per layer
(a trace); OBD-style pruning keeps it element-wise (a diagonal).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def rademacher(shapes: Sequence[torch.Size], generator: torch.Generator) -> list[torch.Tensor]:
    """One ±1 tensor per shape, drawn from ``generator`` in order (so estimates are seeded)."""
    return [torch.randint(0, 2, shape, generator=generator).float() * 2 - 1 for shape in shapes]


def hessian_vector_products(
    loss: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    samples: int = 0,
    generator: torch.Generator | None = None,
    probes: Sequence[Sequence[torch.Tensor]] | None = None,
) -> Iterator[tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]]:
    """Yield ``(z, Hz)`` per probe, each a list over ``params``.

    Probes are ``samples`` Rademacher draws from ``generator``, or the given ``probes``
    (a test can enumerate every sign vector and get the exact diagonal). The gradient
    graph is built once and kept across probes.
    """
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    # A gradient that is constant (loss linear in it) or absent has a zero Hessian block:
    # leaving it out of the second backward is exact, and autograd would reject it.
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    draws = (
        probes
        if probes is not None
        else (rademacher([p.shape for p in params], generator) for _ in range(samples))
    )
    for vs in draws:
        vs = list(vs)
        hvs = torch.autograd.grad(
            [grads[i] for i in live],
            params,
            grad_outputs=[vs[i] for i in live],
            retain_graph=True,
            allow_unused=True,
        )
        yield (
            vs,
            tuple(
                torch.zeros_like(p) if hv is None else hv for p, hv in zip(params, hvs, strict=True)
            ),
        )


def hutchinson_diagonal(
    loss: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    samples: int = 0,
    generator: torch.Generator | None = None,
    probes: Sequence[Sequence[torch.Tensor]] | None = None,
) -> list[torch.Tensor]:
    """diag(H) of ``loss`` per parameter, the mean of z ⊙ Hz over the probes."""
    totals = [torch.zeros_like(p) for p in params]
    count = 0
    for vs, hvs in hessian_vector_products(
        loss, params, samples=samples, generator=generator, probes=probes
    ):
        for total, v, hv in zip(totals, vs, hvs, strict=True):
            total += (v * hv).detach()
        count += 1
    return [total / max(count, 1) for total in totals]
