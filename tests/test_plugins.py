"""Hookspecs are documented; third-party plugins come in through the entry-point group."""

from __future__ import annotations

import inspect
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from retain.core import hookspecs
from retain.core.pluginmanager import Registry, make_plugin_manager
from retain.core.errors import PluginError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "retain-sqlite-source"


def test_every_hookspec_has_a_docstring():
    specs = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(f, "retain_spec")]
    assert len(specs) >= 9
    for f in specs:
        doc = inspect.getdoc(f) or ""
        assert len(doc) > 40, f"hookspec {f.__name__} needs a docstring for plugin authors"


def test_builtins_come_through_the_entry_point_group():
    pm = make_plugin_manager()
    dists = {pm.get_name(p): d.project_name for p, d in pm.list_plugin_distinfo()}
    for name in ("sources", "preprocessors", "dedupers", "validators", "models", "strategies", "scenarios"):
        assert dists.get(name) == "retain"
    # and nothing registers built-ins on a second path
    assert Registry(make_plugin_manager(load_entrypoints=False)).by_kind["sources"] == {}


def test_a_name_registered_twice_is_an_error():
    from retain import hookimpl

    class Clash:
        @hookimpl
        def register_sources(self, register):
            register("jsonl", object)

    with pytest.raises(PluginError, match="registered twice"):
        Registry(make_plugin_manager(extra_plugins=[Clash()]))


def test_register_refuses_an_unknown_keyword():
    # suffix= for suffixes= used to be swallowed silently: the source then never matched a file.
    from retain import hookimpl

    class Typo:
        @hookimpl
        def register_sources(self, register):
            register("notes", object, suffix=(".notes",))

    with pytest.raises(PluginError, match=r"plugin '.*' registered source 'notes' with unknown keyword\(s\) "
                                          r"suffix \(a source takes: description, folder_markers, options, suffixes\)"):
        Registry(make_plugin_manager(extra_plugins=[Typo()]))


def test_the_registry_is_built_once_per_plugin_manager():
    from retain import hookimpl
    from retain.core.config import load_config
    from retain.core.engine import Engine

    class Counting:
        calls = 0

        @hookimpl
        def register_validators(self, register):
            Counting.calls += 1

    pm = make_plugin_manager(extra_plugins=[Counting()])
    engines = [Engine(load_config(None, []), pm=pm) for _ in range(3)]
    assert Registry.of(pm) is engines[0].registry is engines[2].registry
    assert Counting.calls == 1


def _make_db(path: Path, texts) -> Path:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE items (text TEXT)")
    db.executemany("INSERT INTO items VALUES (?)", [(t,) for t in texts])
    db.commit()
    db.close()
    return path


def test_installed_example_plugin_adds_a_source_used_by_update(tmp_path, base_model, new_texts, tiny_overrides):
    """Install examples/retain-sqlite-source for real and run `retain update --data x.db` with it."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--target", str(target), str(EXAMPLE)], check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    retain = [sys.executable, "-m", "retain.cli"]

    listing = subprocess.run([*retain, "plugins", "--json"], env=env, capture_output=True, text=True, check=True)
    plugins = {p["name"]: p for p in json.loads(listing.stdout)}
    assert plugins["sqlite"]["package"] == "retain-sqlite-source 0.1.0"
    assert plugins["sqlite"]["provides"] == ["source:sqlite"]

    db = _make_db(tmp_path / "notes.db", new_texts[:12] + [None, ""])
    sets = [a for s in tiny_overrides for a in ("--set", s)]
    run = subprocess.run([*retain, "update", "--data", str(db), "--model", str(base_model), "--json", *sets],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["counts"]["collected"] == 12 and report["counts"]["rejected"] == 2
    assert report["version"] == "0002"
    rejects = [json.loads(l) for l in (base_model / "rejects.jsonl").read_text().splitlines()]
    assert {r["line"] for r in rejects} == {13, 14} and {r["source"] for r in rejects} == {"sqlite"}
