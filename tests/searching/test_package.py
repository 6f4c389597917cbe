"""The search package's shape: ``autoslim.search`` is a plain function, and the runners
build on the study's bookkeeping without importing each other (nor anything in a cycle)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
import types
from pathlib import Path

import pytest

import autoslim.searching

ROOT = Path(autoslim.searching.__file__).parents[2]


def import_every_search_module() -> None:
    for module in pkgutil.iter_modules(autoslim.searching.__path__):
        if module.name != "ray_backend" or importlib.util.find_spec("ray") is not None:
            importlib.import_module(f"autoslim.searching.{module.name}")


def test_autoslim_search_is_the_driver_function_before_and_after_submodule_imports():
    import autoslim
    from autoslim.searching.driver import search

    assert autoslim.search is search and inspect.isfunction(autoslim.search)
    import_every_search_module()
    assert autoslim.search is search  # an imported submodule does not rebind the name
    assert importlib.util.find_spec("autoslim.search") is None  # no package of that name


def test_the_search_package_is_an_ordinary_module():
    assert type(autoslim.searching) is types.ModuleType and not callable(autoslim.searching)


@pytest.fixture(scope="module")
def graph():
    """autoslim's import graph, imports inside functions included (grimp reads every import)."""
    grimp = pytest.importorskip("grimp")
    sys.path.insert(0, str(ROOT))  # grimp looks the package up on sys.path
    try:
        return grimp.build_graph("autoslim", cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))


def test_the_runners_do_not_import_each_other_or_the_driver(graph):
    runners = ("autoslim.searching.local", "autoslim.searching.ray_backend")
    for importer in runners:
        for imported in (*runners, "autoslim.searching.driver"):
            if imported != importer:
                assert not graph.chain_exists(importer=importer, imported=imported), (
                    f"{importer} → {imported}"
                )
