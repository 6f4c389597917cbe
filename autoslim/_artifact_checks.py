"""Checks on an artifact's files before anything is decoded: it may come from anyone.

The model rebuilt from the recipe is the authority. Every stored weight must have the
shape and dtype of the tensor it fills, every layout record must describe that shape,
and every count that sizes an allocation (non-zeros, stored slots, block and group
sizes, index pointers) is bounded by it before a byte is allocated. So a 37 kB file
cannot ask for 40 GB, a relabelled dtype or a NaN cannot slip into a model. Each layout
entry is checked by the weight codec that reads it (:meth:`WeightCodec.check`), and an
entry no registered codec reads is refused. What is not one of these checks fails inside the decoder as one :class:`AutoslimError` line
(:func:`autoslim.artifact.load_artifact` turns any other exception into one).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from autoslim.errors import AutoslimError
from autoslim.registry import RegistryError, codec_for


def refuse_links(folder: Path) -> None:
    """An artifact is plain files: a link could point at any file on the machine (and
    would be counted in ``size_bytes``), so none is followed or accepted."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            if (Path(root) / name).is_symlink():
                raise AutoslimError(
                    f"artifact {folder} holds a symbolic link ({Path(root, name).relative_to(folder)}); "
                    "artifacts are plain files"
                )


def _fail(name: str, problem: str) -> None:
    raise AutoslimError(f"{name}: {problem}")


def check_tensors(
    tensors: Mapping[str, torch.Tensor], layout: object, expected: Mapping[str, torch.Tensor]
) -> None:
    """Everything :func:`autoslim.artifact.decode_state` will read, against ``expected``
    (the rebuilt model's ``state_dict``)."""
    if not isinstance(layout, dict) or not all(isinstance(v, dict) for v in layout.values()):
        _fail("layout", "not a mapping of weight names to records")
    for name, entry in layout.items():
        # a weight: ``weight``, or a GRU/LSTM's ``weight_ih_l0``, ``weight_hh_l1_reverse``, ...
        if name not in expected or not name.rpartition(".")[2].startswith("weight"):
            _fail(name, "the layout names a tensor the recipe's model does not have")
        if entry.get("enc") == "tied":
            _check_tied(name, entry, expected, tensors)
        else:
            _check_entry(name, entry, tuple(expected[name].shape), tensors)
    for key, tensor in tensors.items():
        owner = key.split("::", 1)[0]
        if "::" in key:
            if owner not in layout:
                _fail(key, "an encoded part of a weight the layout does not list")
            continue
        if key not in expected:
            _fail(key, "a tensor the recipe's model does not have")
        _check_plain(key, tensor, expected[key])


def _check_plain(name: str, tensor: torch.Tensor, reference: torch.Tensor) -> None:
    if tensor.dtype != reference.dtype:
        _fail(name, f"stored as {tensor.dtype}, the model holds {reference.dtype}")
    if tuple(tensor.shape) != tuple(reference.shape):
        _fail(
            name,
            f"stored with shape {tuple(tensor.shape)}, the model needs {tuple(reference.shape)}",
        )
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        _fail(name, "holds NaN or infinity")


def _check_entry(
    name: str, entry: dict, shape: tuple[int, ...], tensors: Mapping[str, torch.Tensor]
) -> None:
    """The codec that wrote ``entry`` checks it; one no codec reads is refused."""
    if list(entry.get("shape", [])) != list(shape):
        _fail(name, f"the layout's shape {entry.get('shape')} is not the model's {list(shape)}")
    try:
        codec = codec_for(entry)
    except RegistryError:
        _fail(name, f"unknown encoding {entry.get('enc')!r}")
    codec.check(name, entry, shape, tensors)


def _check_tied(
    name: str,
    entry: dict,
    expected: Mapping[str, torch.Tensor],
    tensors: Mapping[str, torch.Tensor],
) -> None:
    """A tied weight names another key of the same shape, which the file stores."""
    kept = entry.get("to")
    stored = isinstance(kept, str) and (
        kept in tensors or any(k.startswith(f"{kept}::") for k in tensors)
    )
    if kept == name or not stored:
        _fail(name, f"tied to {kept!r}, which the file does not store")
    if kept not in expected or expected[kept].shape != expected[name].shape:
        _fail(name, f"tied to {kept!r}, which is not a tensor of the same shape")
