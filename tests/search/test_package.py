"""``autoslim.search`` stays the documented callable after its submodules are imported."""

from __future__ import annotations

import importlib


def test_autoslim_search_is_callable_before_and_after_submodule_imports(monkeypatch):
    import autoslim

    calls = []
    local = importlib.import_module("autoslim.search.local")
    monkeypatch.setattr(local, "search", lambda *a, **k: calls.append((a, k)) or "run")
    assert autoslim.search("exp.yaml", out="x") == "run"
    importlib.import_module("autoslim.search.ray_backend")
    assert autoslim.search("again.yaml") == "run"
    assert calls == [(("exp.yaml",), {"out": "x"}), (("again.yaml",), {})]
