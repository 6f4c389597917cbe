"""An offline natural-language corpus: sentences from the Python standard library's docstrings.

Every Python install carries it, so a text task needs no download. The docstrings change
a little between Python versions; to keep the corpus as stable as that allows:

- the modules are a fixed list of long-lived, pure-Python ones (present from 3.10 on);
- names are visited in sorted order and only objects defined in the module itself count,
  so re-exports and dict order never matter;
- sentences are split by one simple regex and filtered by length and by how much of them
  is prose (doctests and ASCII diagrams are dropped);
- splits are assigned by a salted SHA-256 of each sentence rather than a shuffle, so a
  sentence's split depends only on itself: a docstring edited in a new Python release
  changes the sentences it touches, not the membership of all the others.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import warnings
from collections.abc import Iterable, Iterator
from types import ModuleType

from autoslim.errors import AutoslimError

STDLIB_MODULES = (
    "abc",
    "argparse",
    "ast",
    "base64",
    "bisect",
    "calendar",
    "collections",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "email.message",
    "enum",
    "fractions",
    "functools",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "heapq",
    "hmac",
    "html.parser",
    "http.client",
    "http.cookiejar",
    "imaplib",
    "inspect",
    "ipaddress",
    "json",
    "json.decoder",
    "logging",
    "logging.handlers",
    "mailbox",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pprint",
    "queue",
    "random",
    "re",
    "shlex",
    "shutil",
    "smtplib",
    "socket",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "tokenize",
    "trace",
    "typing",
    "unittest.case",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "weakref",
    "zipfile",
)

# A sentence ends at . ! or ? followed by whitespace and a capital letter. Crude, but it is
# the same on every machine, which matters more here than linguistic precision.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# Share of letters and spaces below which a "sentence" is code, a table or a diagram.
_MIN_PROSE_SHARE = 0.85


def _docstrings(module: ModuleType) -> Iterator[str]:
    """The module's docstring, then its own public classes, functions and methods, by name."""
    yield module.__doc__ or ""
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj):
            yield obj.__doc__ or ""
        elif inspect.isclass(obj):
            yield obj.__doc__ or ""
            for attr, member in sorted(vars(obj).items()):
                if not attr.startswith("_") and inspect.isfunction(member):
                    yield member.__doc__ or ""


def split_sentences(text: str) -> list[str]:
    """Collapse whitespace (docstrings wrap lines) and split at sentence ends."""
    flat = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(flat) if s]


def is_prose(sentence: str, min_chars: int, max_chars: int) -> bool:
    """A complete sentence of reasonable length that is mostly words."""
    if (
        not min_chars <= len(sentence) <= max_chars
        or sentence[-1] not in ".!?"
        or ">>>" in sentence
    ):
        return False
    prose = sum(c.isalpha() or c == " " for c in sentence)
    return prose >= _MIN_PROSE_SHARE * len(sentence)


def stdlib_sentences(
    modules: Iterable[str] = STDLIB_MODULES, *, min_chars: int = 30, max_chars: int = 200
) -> list[str]:
    """Unique prose sentences from the modules' docstrings, sorted."""
    found: set[str] = set()
    # Some modules (typing) warn when deprecated aliases are touched; reading docs is harmless.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            try:
                module = importlib.import_module(name)
            except ImportError as exc:
                raise AutoslimError(f"corpus module {name!r} cannot be imported: {exc}") from None
            for doc in _docstrings(module):
                found.update(s for s in split_sentences(doc) if is_prose(s, min_chars, max_chars))
    return sorted(found)


def hash_order(sentences: Iterable[str], seed: int) -> list[str]:
    """A seeded, platform-independent shuffle: sort by SHA-256 of ``seed`` and the sentence."""

    def key(s: str) -> str:
        return hashlib.sha256(f"{seed}\0{s}".encode()).hexdigest()

    return sorted(set(sentences), key=key)


def split_corpus(
    sentences: Iterable[str], sizes: dict[str, int], seed: int
) -> dict[str, list[str]]:
    """Deal the hash-ordered sentences into splits of the given sizes, in ``sizes`` order."""
    ordered = hash_order(sentences, seed)
    needed = sum(sizes.values())
    if needed > len(ordered):
        raise AutoslimError(f"the corpus has {len(ordered)} sentences, the splits need {needed}")
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = ordered[start : start + size]
        start += size
    return splits


def corpus_digest(splits: dict[str, list[str]]) -> str:
    """A content hash of the splits (names, order and text), for cache keys."""
    digest = hashlib.sha256()
    for name in sorted(splits):
        digest.update(f"{name}\0{len(splits[name])}\0".encode())
        for sentence in splits[name]:
            digest.update(sentence.encode() + b"\0")
    return digest.hexdigest()[:16]
