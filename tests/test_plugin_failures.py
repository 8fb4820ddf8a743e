"""A third-party plugin that raises mid-update is named in a PluginError (exit code 6),
and the current model, the ledger and the near-duplicate index are left as they were."""

from __future__ import annotations

import sqlite3

import pytest

from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.storage.models import load_version
from retain.core.errors import PluginError
from retain.core.hookspecs import hookimpl
from retain.core.pluginmanager import make_plugin_manager
from retain.core.storage.store import ModelStore
from retain.core.quality.validation import Verdict

from conftest import TINY, write_jsonl


class FlakyDeduper:
    def __init__(self, where: str):
        self.where = where

    def find_duplicates(self, items, known):
        if self.where == "dedupe":
            raise KeyError("index corrupted")
        return {}

    def remember(self, items, version, writer):
        if self.where == "remember":
            raise OSError("disk full")


class Flaky:
    """A third-party plugin that adds a preprocessor, a deduper and a validator, and raises at ``where``."""

    def __init__(self, where: str):
        self.__name__ = "acme-flaky"  # the name pluggy (and the error) give this plugin
        self.where = where

    def preprocess(self, item):
        if self.where == "preprocess" and item.line == 3:
            raise ValueError("cannot handle this item")
        return item

    def validate(self, evidence):
        if self.where == "validate":
            raise ZeroDivisionError("division by zero")
        return Verdict("pass", "fine")

    @hookimpl
    def register_preprocessors(self, register):
        register("acme_pre", lambda options: self.preprocess)

    @hookimpl
    def register_dedupers(self, register):
        register("acme_index", lambda options: FlakyDeduper(self.where))

    @hookimpl
    def register_validators(self, register):
        register("acme_gate", lambda options: self)

    @hookimpl
    def epoch_ended(self, run, epoch, loss):
        if self.where == "epoch":
            raise RuntimeError("dashboard unreachable")
        if self.where == "assign":  # hooks see the run read-only: a plugin returns what it changes
            run.after = None

    @hookimpl
    def training_penalty(self, run, model, inputs, targets, logits):
        if self.where == "penalty":
            raise ValueError("shape mismatch in penalty")
        return None


def _state(model_dir) -> tuple:
    store = ModelStore(model_dir)
    db = sqlite3.connect(model_dir / "ledger.sqlite")
    tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    # Every table's rows, but minhash_specs (the option sets in use: no rows of any version).
    rows = {t: db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables if t != "minhash_specs"}
    rows.setdefault("minhash_bands", 0)  # the index's tables may appear (empty) on the first write
    rows.setdefault("minhash_signatures", 0)
    db.close()
    leftovers = sorted(p.name for p in (model_dir / "versions").iterdir() if p.name.startswith("."))
    return store.current(), store.versions(), rows, leftovers


@pytest.mark.parametrize("where, named", [
    ("preprocess", "preprocessor 'acme_pre' failed on"),
    ("dedupe", "deduper 'acme_index' failed: KeyError"),
    ("penalty", "plugin 'acme-flaky' failed during the run: ValueError: shape mismatch"),
    ("epoch", "plugin 'acme-flaky' failed during the run: RuntimeError: dashboard unreachable"),
    ("validate", "validator 'acme_gate' failed: ZeroDivisionError"),
    ("remember", "plugin 'acme-flaky' failed during the run: OSError: disk full"),
    ("assign", r"plugin 'acme-flaky' failed during the run: AttributeError: the run is read-only to plugins "
               r"\(run.after\)"),
])
def test_failing_plugin_is_named_and_changes_nothing(where, named, base_model, new_texts, tmp_path):
    cfg = load_config(None, [*TINY, "fine_tuning.epochs=1", "preprocessors=[clean, acme_pre]",
                             "dedupers=[exact, minhash, acme_index]", "validators=[finite, acme_gate]"])
    engine = Engine(cfg, pm=make_plugin_manager(extra_plugins=[Flaky(where)]))
    before = _state(base_model)
    with pytest.raises(PluginError, match=named) as info:
        engine.update([str(write_jsonl(tmp_path / "n.jsonl", new_texts[:12]))], base_model)
    assert info.value.exit_code == 6
    assert _state(base_model) == before
    load_version(ModelStore(base_model))  # still loads, checksums verified
