"""Tampered weights and layouts: each is refused with one AutoslimError line, never loaded."""

from __future__ import annotations

import json
import math

import pytest
import torch

import autoslim
from autoslim.errors import AutoslimError

from .tamper import rewrite_header, tampered_copy

W0, W4 = "0.weight", "4.weight"


def _set(name: str, key: str, value):
    def mutate(tensors, layout):
        layout[name][key] = value

    return mutate


def _grid(name: str, key: str, value):
    def mutate(tensors, layout):
        layout[name]["grid"][key] = value

    return mutate


def _meta(name: str, key: str, value):
    def mutate(tensors, layout):
        layout[name]["meta"][key] = value

    return mutate


def _tensor(key: str, change):
    def mutate(tensors, layout):
        tensors[key] = change(tensors[key].clone())

    return mutate


def _drop(key: str):
    def mutate(tensors, layout):
        del tensors[key]

    return mutate


def _add(key: str, value: torch.Tensor):
    def mutate(tensors, layout):
        tensors[key] = value

    return mutate


def _nan(t: torch.Tensor) -> torch.Tensor:
    t.view(-1)[0] = math.nan
    return t


def _inf(t: torch.Tensor) -> torch.Tensor:
    t.view(-1)[-1] = math.inf
    return t


def _set_first(value):
    def change(t: torch.Tensor) -> torch.Tensor:
        t.view(-1)[0] = value
        return t

    return change


CASES = {
    # shapes that ask for huge allocations or do not fit the model
    "huge levels shape": ("asym3_bitmap", _set(W4, "shape", [20000, 20000])),
    "huger levels shape": ("asym3_bitmap", _set(W4, "shape", [100000, 100000])),
    "negative shape": ("asym3_bitmap", _set(W4, "shape", [-1, 288])),
    "shape of another rank": ("asym5_dense", _set(W0, "shape", [8, 9])),
    "huge sparse shape": ("csr_fp32", _set(W4, "shape", [20000, 20000])),
    "huge meta shape": ("csr_fp32", _meta(W4, "shape", [100000, 100000])),
    "meta shape transposed": ("csr_fp32", _meta(W4, "shape", [288, 10])),
    # bit widths, counts and grid records
    "zero bits": ("asym3_bitmap", _grid(W4, "bits", 0)),
    "64 bits": ("asym3_bitmap", _grid(W4, "bits", 64)),
    "bits as text": ("asym5_dense", _grid(W0, "bits", "5")),
    "bits as float": ("asym5_dense", _grid(W0, "bits", 5.0)),
    "unknown grid kind": ("asym5_dense", _grid(W0, "kind", "fractal")),
    "unknown granularity": ("asym5_dense", _grid(W0, "granularity", "per_atom")),
    "group size of zero": (
        "asym5_dense",
        lambda t, lay: lay[W0]["grid"].update(granularity="group", group_size=0),
    ),
    "grid record not a mapping": ("asym5_dense", _set(W0, "grid", [3])),
    "negative nnz": ("asym3_bitmap", _set(W4, "nnz", -5)),
    "nnz past the weight": ("asym3_bitmap", _set(W4, "nnz", 10**12)),
    "nnz as text": ("asym3_bitmap", _set(W4, "nnz", "many")),
    "unknown encoding": ("asym5_dense", _set(W0, "enc", "zip")),
    "levels without a grid": ("asym5_dense", lambda t, lay: lay[W0].pop("grid")),
    "codebook bits 64": ("codebook", _grid(W0, "bits", 64)),
    "codebook record incomplete": ("codebook", lambda t, lay: lay[W0]["grid"].pop("per_channel")),
    # sparse metadata
    "unknown sparse format": ("csr_fp32", _meta(W4, "format", "rle")),
    "float64 meta dtype": ("csr_fp32", _meta(W4, "dtype", "float64")),
    "object meta dtype": ("csr_fp32", _meta(W4, "dtype", "object")),
    "value bits on floats": ("csr_fp32", _meta(W4, "value_bits", 4)),
    "negative stored": ("csr_fp32", _meta(W4, "stored", -1)),
    "stored past the matrix": ("csr_fp32", _meta(W4, "stored", 10**9)),
    "negative meta nnz": ("csr_fp32", _meta(W4, "nnz", -3)),
    "huge bsr block": ("bsr_fp32", _meta(W4, "block", [100000, 100000])),
    "zero bsr block": ("bsr_fp32", _meta(W4, "block", [0, 4])),
    "huge ellpack width": ("ellpack_fp32", _meta(W4, "width", 10**9)),
    "quantized values as floats": ("csr_int4", _meta(W4, "dtype", "float32")),
    "quantized values wider than the grid": ("csr_int4", _meta(W4, "value_bits", 8)),
    "meta not a mapping": ("csr_fp32", _set(W4, "meta", "csr")),
    # index arrays
    "indptr that does not start at 0": ("csr_fp32", _tensor(f"{W4}::indptr", _set_first(3))),
    "indptr pointing past the values": (
        "csr_fp32",
        _tensor(f"{W4}::indptr", lambda t: t.fill_(torch.iinfo(t.dtype).max)),
    ),
    "decreasing indptr": (
        "csc_fp32",
        _tensor(f"{W4}::indptr", lambda t: torch.from_numpy(t.numpy()[::-1].copy())),
    ),
    "column index past the matrix": (
        "csr_fp32",
        _tensor(f"{W4}::indices", lambda t: t.fill_(65535)),
    ),
    "coo row past the matrix": ("coo_fp32", _tensor(f"{W4}::rows", lambda t: t.fill_(255))),
    "dia offset past the matrix": ("dia_fp32", _tensor(f"{W4}::offsets", lambda t: t.fill_(65535))),
    "bsr block column past the matrix": (
        "bsr_fp32",
        _tensor(f"{W4}::indices", lambda t: t.fill_(255)),
    ),
    "signed index dtype": ("csr_fp32", _tensor(f"{W4}::indices", lambda t: t.to(torch.int32))),
    "short bitmap": ("fp16_sparse", _tensor(f"{W4}::bitmap", lambda t: t[:-1])),
    "short packed levels": ("asym3_bitmap", _tensor(f"{W4}::q", lambda t: t[:-1])),
    "long packed levels": ("asym5_dense", _tensor(f"{W0}::q", lambda t: torch.cat([t, t]))),
    "packed levels as int8": ("asym5_dense", _tensor(f"{W0}::q", lambda t: t.view(torch.int8))),
    "missing packed levels": ("asym5_dense", _drop(f"{W0}::q")),
    "missing indptr": ("csr_fp32", _drop(f"{W4}::indptr")),
    "missing values": ("csr_fp32", _drop(f"{W4}::values")),
    "values relabelled float16": ("csr_fp32", _tensor(f"{W4}::values", lambda t: t.half())),
    # plain tensors
    "NaN bias": ("fp32", _tensor("4.bias", _nan)),
    "infinite weight": ("fp32", _tensor(W0, _inf)),
    "NaN sparse value": ("fp16_sparse", _tensor(f"{W4}::values", _nan)),
    "NaN scale": ("sym4_sparse", _tensor("4.weight_scale", _nan)),
    "float64 bias": ("fp32", _tensor("4.bias", lambda t: t.double())),
    "bias of another shape": ("fp32", _tensor("4.bias", lambda t: torch.zeros(11))),
    "weight as int": ("fp32", _tensor(W0, lambda t: t.to(torch.int32))),
    "unknown extra tensor": ("fp32", _add("evil", torch.zeros(1))),
    "orphan encoded part": ("fp32", _add("nowhere.weight::q", torch.zeros(4, dtype=torch.uint8))),
    "missing bias": ("fp32", _drop("4.bias")),
    # the layout record itself
    "layout naming a missing tensor": (
        "asym5_dense",
        lambda t, lay: lay.update({"9.weight": lay[W0]}),
    ),
    "layout naming a bias": (
        "fp32",
        lambda t, lay: lay.update({"4.bias": {"enc": "int_dense", "shape": [10]}}),
    ),
    "layout entry not a mapping": ("asym5_dense", lambda t, lay: lay.update({W0: 7})),
    "layout as a list": ("asym5_dense", lambda t, lay: (lay.clear(), lay.update({"x": [1, 2]}))),
}


@pytest.mark.hostile
@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_artifact_is_one_line(tmp_path, artifacts, case):
    source, mutate = CASES[case]
    folder = tampered_copy(artifacts[source], tmp_path / "a", mutate)
    with pytest.raises(AutoslimError) as info:
        autoslim.load(folder)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message


def _relabel(dtype_from: str, dtype_to: str):
    def edit(header: dict) -> None:
        for key, info in header.items():
            if key != "__metadata__" and info["dtype"] == dtype_from:
                info["dtype"] = dtype_to
                return

    return edit


HEADER_CASES = {
    "U8 relabelled I8": ("asym5_dense", _relabel("U8", "I8")),
    "F32 relabelled I32": ("fp32", _relabel("F32", "I32")),
    "layout not JSON": (
        "asym5_dense",
        lambda h: h["__metadata__"].update({"autoslim.layout": "{oops"}),
    ),
    "layout a JSON list": (
        "asym5_dense",
        lambda h: h["__metadata__"].update({"autoslim.layout": "[1, 2]"}),
    ),
    "offsets past the file": (
        "fp32",
        lambda h: next(v for k, v in h.items() if k != "__metadata__").update(
            data_offsets=[0, 10**9]
        ),
    ),
    "shape that disagrees with the bytes": (
        "fp32",
        lambda h: h["0.weight"].update(shape=[100000, 100000]),
    ),
}


@pytest.mark.hostile
@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_tampered_header_is_one_line(tmp_path, artifacts, case):
    import shutil

    source, edit = HEADER_CASES[case]
    folder = tmp_path / "a"
    shutil.copytree(artifacts[source], folder)
    rewrite_header(folder, edit)
    with pytest.raises(AutoslimError) as info:
        autoslim.load(folder)
    assert "\n" not in str(info.value)


@pytest.mark.hostile
@pytest.mark.parametrize("garbage", [b"", b"\x00" * 7, b"\xff" * 64, json.dumps({"a": 1}).encode()])
def test_garbage_weights_file_is_one_line(tmp_path, artifacts, garbage):
    import shutil

    folder = tmp_path / "a"
    shutil.copytree(artifacts["fp32"], folder)
    (folder / "weights.safetensors").write_bytes(garbage)
    with pytest.raises(AutoslimError, match="damaged artifact"):
        autoslim.load(folder)


def test_every_untampered_artifact_loads_and_matches(artifacts):
    """The checks refuse nothing autoslim itself writes."""
    from tests.security.conftest import make_task

    task = make_task()
    batch = task.data.val.inputs[:4]
    for name, folder in artifacts.items():
        loaded = autoslim.load(folder)
        assert loaded(batch).shape == (4, 10), name
