"""Writing an exported model: checked before any work, assembled in a temporary folder
beside the output, then moved into place in one step, never over a file unless forced."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from autoslim.errors import AutoslimError


def check_output_files(paths: Sequence[Path], *, force: bool = False) -> None:
    """Refuse a folder, or an existing file unless ``force``, before minutes of work."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            raise AutoslimError(f"{path} is a folder; give the file to write")
        if path.exists() and not force:
            raise AutoslimError(f"{path} exists; pass --force to replace it")


@contextmanager
def scratch_folder(out: Path) -> Iterator[Path]:
    """A private folder beside ``out`` (same file system, so a rename is atomic), removed
    with whatever is left in it however the export ends."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def place(src: Path, dst: Path, *, force: bool = False) -> None:
    """Move ``src`` to ``dst`` atomically; without ``force`` an existing ``dst`` is kept
    (a hard link fails if ``dst`` appeared meanwhile, so nothing is ever clobbered)."""
    src.chmod(0o666 & ~_umask())
    if force:
        os.replace(src, dst)
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        raise AutoslimError(f"{dst} exists; pass --force to replace it") from None
    except OSError:  # a file system without hard links: check, then rename
        check_output_files([dst])
        os.replace(src, dst)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"
