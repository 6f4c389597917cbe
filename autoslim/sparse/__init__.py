"""Sparse weight storage and execution: formats, format choice, checks, kernels."""

from __future__ import annotations

from autoslim.sparse.formats import FORMATS, Encoded, decode, decode_tensor, encode, formula_nbytes

__all__ = ["FORMATS", "Encoded", "decode", "decode_tensor", "encode", "formula_nbytes"]
