"""Which task entries autoslim resolves, and how trust reaches the processes it starts."""

from __future__ import annotations

import os

import pytest

from autoslim import trust
from autoslim.errors import AutoslimError


def test_bundled_tasks_are_trusted_and_others_are_not():
    assert trust.is_trusted("autoslim.tasks.digits:make_task")
    assert not trust.is_trusted("autoslim.tasks.nowhere:make_task")
    assert not trust.is_trusted("autoslim.cli:main")
    with pytest.raises(AutoslimError, match="'os:system' is not trusted.*--trust-task"):
        trust.resolve_factory("os:system")


def test_an_installed_entry_point_is_trusted(monkeypatch):
    monkeypatch.setattr(trust, "_entry_point_tasks", lambda: frozenset({"mypkg.tasks:make_task"}))
    assert trust.is_trusted("mypkg.tasks:make_task")
    assert not trust.is_trusted("mypkg.tasks:other")


def test_registering_a_factory_resolves_it_without_an_import():
    def make_task():
        return "a task"

    trust.register_task("not_a_module_anywhere:make_task", make_task)
    try:
        assert trust.resolve_factory("not_a_module_anywhere:make_task") is make_task
        assert "not_a_module_anywhere:make_task" in trust.child_environment()[
            trust.TRUST_ENV
        ].split(",")
    finally:
        trust.unregister_task("not_a_module_anywhere:make_task")
    assert not trust.is_trusted("not_a_module_anywhere:make_task")


def test_trusted_lasts_for_the_block_and_reaches_children(monkeypatch):
    monkeypatch.delenv(trust.TRUST_ENV, raising=False)
    with trust.trusted(["json:loads"]):
        assert trust.is_trusted("json:loads") and os.environ[trust.TRUST_ENV] == "json:loads"
        assert not trust.is_trusted("json:dumps")
        with trust.trusted(True):
            assert trust.is_trusted("json:dumps")
        assert not trust.is_trusted("json:dumps")
    assert trust.TRUST_ENV not in os.environ and not trust.is_trusted("json:loads")
    with trust.trusted(False):
        assert trust.TRUST_ENV not in os.environ


@pytest.mark.parametrize("entry", ["no_colon", ":f", "m:", ""])
def test_malformed_entries_are_one_line(entry):
    with pytest.raises(AutoslimError, match="not of the form package.module:function"):
        trust.register_task(entry)
