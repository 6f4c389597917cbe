"""Sparse Linear and Conv2d modules that run a sparse kernel only where it is measured faster.

On CPU the sparse kernel is ``torch.sparse`` CSR matmul; a layer uses it when its sparsity
is at or above the measured crossover for its shape, batch and threads
(:mod:`.crossover`) and runs dense otherwise. On CUDA the candidate is 2:4 semi-structured
fp16 (:mod:`.semi_structured`), used only when the weight is 2:4 and measured faster.

The CSR weight is kept as three plain buffers (``crow_indices``, ``col_indices``,
``values``) and assembled per call (~10 us): a sparse-layout buffer would break
``copy.deepcopy`` and ``state_dict`` round trips.

Conv2d is lowered to a matrix product: the weight is the ``[out, in*kh*kw]`` matrix and
the input is unfolded (im2col) into ``[in*kh*kw, batch*positions]`` columns. Its crossover is
timed on exactly that (unfold + CSR vs ``conv2d``). Grouped convolutions and non-zero
padding modes stay dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.sparse import crossover as xo
from autoslim.sparse import semi_structured

KERNELS = ("dense", "csr", "semi_structured")


def sparsity_of(weight: torch.Tensor) -> float:
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel()


def choose_kernel(sparsity: float, crossover: float | None) -> str:
    """CSR at or above the measured crossover, dense below it or when sparse never won."""
    return "csr" if crossover is not None and sparsity >= crossover else "dense"


class _KernelWeight(nn.Module):
    """A 2-D weight held either dense or as CSR buffers, with a matmul against columns."""

    def __init__(self, matrix: torch.Tensor, kernel: str) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise AutoslimError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        self.kernel = kernel
        self.shape = tuple(matrix.shape)
        matrix = matrix.detach().to(torch.float32)
        if kernel == "csr":
            csr = xo.to_csr(matrix)
            self.register_buffer("crow_indices", csr.crow_indices().clone())
            self.register_buffer("col_indices", csr.col_indices().clone())
            self.register_buffer("values", csr.values().clone())
        elif kernel == "semi_structured":
            self.packed = semi_structured.compress(matrix)
        else:
            self.register_buffer("weight", matrix.clone())

    def csr(self) -> torch.Tensor:
        # Built once and reused rather than per forward call; rebuilt if the buffers moved.
        cached = getattr(self, "_csr", None)
        if cached is None or cached.values().data_ptr() != self.values.data_ptr():
            cached = torch.sparse_csr_tensor(
                self.crow_indices, self.col_indices, self.values, self.shape, check_invariants=False
            )
            self._csr = cached
        return cached

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_csr", None)  # a sparse tensor cannot be copied; it is rebuilt on use
        return state

    def dense(self) -> torch.Tensor:
        """The weight as a dense matrix (what the sparse kernel computes with)."""
        if self.kernel == "csr":
            return self.csr().to_dense()
        if self.kernel == "semi_structured":
            return self.packed.to_dense().to(torch.float32)
        return self.weight

    def rows_times(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for a 2-D ``x`` of shape ``[batch, in]``."""
        if self.kernel == "csr":
            return xo.csr_linear(x, self.csr())
        if self.kernel == "semi_structured":
            return F.linear(x.to(torch.float16), self.packed).to(x.dtype)
        return F.linear(x, self.weight)


class SparseLinear(nn.Module):
    """``nn.Linear`` whose weight runs on the kernel measured fastest for it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kernel: str) -> None:
        super().__init__()
        self.matrix = _KernelWeight(weight, kernel)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        )

    @property
    def kernel(self) -> str:
        return self.matrix.kernel

    @classmethod
    def from_dense(
        cls,
        linear: nn.Linear,
        *,
        batch: int,
        threads: int,
        kernel: str | None = None,
        device: str = "cpu",
    ) -> SparseLinear:
        """Pick the kernel by measured crossover (or take ``kernel``) and convert the layer."""
        weight = linear.weight.detach()
        if kernel is None:
            if device.startswith("cuda"):
                kernel = semi_structured.choose_kernel(weight, batch)
            else:
                cross = xo.measure_crossover(weight.shape[0], weight.shape[1], batch, threads)
                kernel = choose_kernel(sparsity_of(weight), cross)
        return cls(weight, linear.bias, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = self.matrix.rows_times(flat)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


@dataclass(frozen=True)
class ConvGeometry:
    """What unfold needs from a Conv2d, without its weight."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of(cls, conv: nn.Conv2d) -> ConvGeometry:
        return cls(
            tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation)
        )

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        return tuple((size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))


def conv_lowerable(conv: nn.Conv2d) -> bool:
    """Whether unfold + matmul reproduces this conv (no groups, zero padding given as ints)."""
    return conv.groups == 1 and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def unfolded_conv(x: torch.Tensor, matrix: _KernelWeight, geometry: ConvGeometry) -> torch.Tensor:
    """Conv2d as ``W[out, in*kh*kw] @ im2col(x)``, returned as ``[batch, out, h, w]``."""
    g = geometry
    columns = F.unfold(x, g.kernel_size, g.dilation, g.padding, g.stride)
    batch, depth, positions = columns.shape
    out = matrix.rows_times(columns.transpose(1, 2).reshape(batch * positions, depth))
    height, width = g.output_size(tuple(x.shape[-2:]))
    return out.reshape(batch, height, width, -1).permute(0, 3, 1, 2)


def conv_kernels(
    conv: nn.Conv2d, input_size: tuple[int, int], batch: int, sparsity: float
) -> xo.Kernels:
    """Dense ``conv2d`` vs unfold + CSR for this conv's geometry at ``sparsity``."""
    generator = torch.Generator().manual_seed(0)
    weight = xo.random_sparse(conv.weight.shape[0], conv.weight[0].numel(), sparsity, generator)
    x = torch.randn(batch, conv.in_channels, *input_size, generator=generator)
    dense_weight, matrix, g = (
        weight.reshape(conv.weight.shape),
        _KernelWeight(weight, "csr"),
        ConvGeometry.of(conv),
    )
    dense = lambda: F.conv2d(x, dense_weight, None, g.stride, g.padding, g.dilation)  # noqa: E731
    return dense, (lambda: unfolded_conv(x, matrix, g))


def measure_conv_crossover(
    conv: nn.Conv2d,
    input_size: tuple[int, int],
    batch: int,
    threads: int,
    sparsities: tuple[float, ...] = xo.DEFAULT_SPARSITIES,
    *,
    repeats: int = 15,
    use_cache: bool = True,
) -> float | None:
    """CPU crossover of unfold + CSR vs dense conv2d for this conv's geometry (cached)."""
    key = f"conv2d|{tuple(conv.weight.shape)}|in={tuple(input_size)}|{ConvGeometry.of(conv)}|batch={batch}"
    kernels = lambda s: conv_kernels(conv, input_size, batch, s)  # noqa: E731
    return xo.cached_crossover(key, kernels, sparsities, threads, repeats, use_cache)


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` kept as is (dense) or lowered to a CSR product over unfolded input.

    The CSR form keeps no dense copy of the weight, so memory shrinks with it.
    """

    def __init__(self, conv: nn.Conv2d, kernel: str) -> None:
        super().__init__()
        self.dense_conv = conv if kernel == "dense" else None
        self.matrix = None
        if kernel != "dense":
            if not conv_lowerable(conv):
                raise AutoslimError(
                    "only ungrouped, zero-padded convolutions run sparse; use kernel='dense'"
                )
            self.matrix = _KernelWeight(
                conv.weight.detach().reshape(conv.weight.shape[0], -1), kernel
            )
            self.geometry = ConvGeometry.of(conv)
            bias = conv.bias
            self.bias = (
                None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
            )

    @property
    def kernel(self) -> str:
        return "dense" if self.matrix is None else self.matrix.kernel

    @classmethod
    def from_dense(
        cls,
        conv: nn.Conv2d,
        *,
        batch: int,
        input_size: tuple[int, int],
        threads: int,
        kernel: str | None = None,
    ) -> SparseConv2d:
        """Pick CSR or dense by the measured conv crossover (or take ``kernel``)."""
        if kernel is None:
            cross = (
                measure_conv_crossover(conv, input_size, batch, threads)
                if conv_lowerable(conv)
                else None
            )
            kernel = choose_kernel(sparsity_of(conv.weight.detach()), cross)
        return cls(conv, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.matrix is None:
            return self.dense_conv(x)
        out = unfolded_conv(x, self.matrix, self.geometry)
        return out if self.bias is None else out + self.bias.reshape(1, -1, 1, 1)
