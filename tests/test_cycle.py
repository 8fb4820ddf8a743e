"""The cycle's stages (core/cycle.py) as the entry points see them: small typed results,
the engine's public surface, who hears the steps."""

from __future__ import annotations

import json

from retain import hookimpl
from retain.core import cycle
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.pluginmanager import make_plugin_manager
from retain.core.storage.store import ModelStore
from retain.core.quality.validation import Verdict
from retain.core.storage.versions import validate_version

from conftest import TINY, write_jsonl


def test_the_gate_s_result_travels_as_json_and_says_whether_it_accepted():
    # A search's trial sends its Judged back as plain data; the search rebuilds it.
    judged = cycle.Judged({"new_loss_after": 1.5}, (Verdict("pass", "fine", validator="finite"),
                                                    Verdict("fail", "worse", validator="retention")),
                          [{"step": "lower the learning rate"}])
    again = cycle.Judged.from_json(json.loads(json.dumps(judged.to_json())))
    assert again == judged and not again.accepted
    assert cycle.Judged({}, (Verdict("warn", "slow", validator="duration"),), []).accepted


def test_the_engine_is_the_commands_and_nothing_else():
    # Methods that became API by accident (prepare, start, ingest, tokenize, commit, ...) are
    # the cycle's stages now: an entry point calls those, not the engine's insides.
    public = {name for name in vars(Engine) if not name.startswith("_")}
    assert public == {"train", "update", "import_model", "plan"}


class Listener:
    def __init__(self):
        self.heard = []

    @hookimpl
    def step_started(self, run, step):
        self.heard.append(step)

    @hookimpl
    def verdicts_given(self, run, verdicts, next_steps):
        self.heard.append("verdicts")


def test_an_update_is_announced_step_by_step_and_a_validation_not_at_all(base_model, new_texts, tmp_path):
    listener = Listener()
    pm = make_plugin_manager(extra_plugins=[listener])
    engine = Engine(load_config(None, TINY), pm=pm)
    report = engine.update([str(write_jsonl(tmp_path / "a.jsonl", new_texts[:12]))], base_model)
    assert listener.heard == ["load", "collect", "preprocess", "dedupe", "holdout", "tokenize", "precision",
                              "evaluate_before", "import", "train", "validate", "verdicts", "save"]
    listener.heard.clear()
    result = validate_version(engine, ModelStore(base_model, read_only=True), report["version"],
                              [str(write_jsonl(tmp_path / "b.jsonl", new_texts[20:30]))])
    assert result["items"] == 10 and result["verdicts"]
    assert listener.heard == []  # nobody follows a validation: as before the stages did its work
