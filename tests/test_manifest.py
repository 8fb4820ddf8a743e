"""Manifests are typed (core/storage/manifest.py): every manifest written so far reads, the writer
writes nothing the model does not describe, and a field of the wrong type is one ModelError."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.errors import ModelError
from retain.core.storage.manifest import FORMAT, Manifest, read_manifest
from retain.core.storage.store import ModelStore

from conftest import TINY

# The fields of the first format-1 manifest (the foundation's writer): every later field is optional.
FIRST_FORMAT_1 = {"parent", "created_at", "kind", "status", "architecture", "config", "counts", "metrics",
                  "epoch_losses", "verdicts", "strategies", "timings", "data_hash", "run", "replaces",
                  "format", "version", "files"}


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _manifest(model, version="0001"):
    return model / "versions" / version / "manifest.json"


def test_the_writer_writes_only_fields_the_model_describes(base_model):
    data = json.loads(_manifest(base_model).read_text())
    assert data["format"] == FORMAT and set(data) <= set(Manifest.model_fields), set(data) - set(Manifest.model_fields)
    assert read_manifest(data, "0001").files == data["files"]


def test_a_first_format_1_manifest_still_reads(base_model):
    # A version written before model families, settings, precision, retention pools, --auto and
    # shared files: the foundation's fields only.
    path = _manifest(base_model)
    data = json.loads(path.read_text())
    old = {k: v for k, v in data.items() if k in FIRST_FORMAT_1}
    assert set(old) == FIRST_FORMAT_1 and "model" not in old
    path.write_text(json.dumps(old))
    store = ModelStore(base_model)
    assert store.manifest("0001") == old
    assert store.summary("0001") == {"parent": None, "kind": "full_training", "status": "accepted", "pruned": False,
                                     "builds_on": None, "states": ["replay"], "epochs": len(old["epoch_losses"]),
                                     "counts": {k: old["counts"][k] for k in ("trained", "holdout", "tokens", "bytes",
                                                                              "replay_tokens") if k in old["counts"]}}
    history = _cli("history", "--model", base_model, "--json")
    assert history.exit_code == 0, history.output
    assert [(r["version"], r["status"]) for r in json.loads(history.output)] == [("0001", "accepted")]
    status = _cli("status", "--model", base_model, *[a for o in TINY for a in ("--set", o)])
    assert status.exit_code == 0, status.output


def test_fields_a_later_retain_adds_are_kept(base_model):
    path = _manifest(base_model)
    data = {**json.loads(path.read_text()), "written_by_a_later_retain": {"x": 1}}
    path.write_text(json.dumps(data))
    assert ModelStore(base_model).manifest("0001")["written_by_a_later_retain"] == {"x": 1}


@pytest.mark.parametrize("field, value, message", [
    ("counts", "many", "manifest.json field 'counts' is invalid (Input should be a valid dictionary, got str)"),
    ("strategies", [1], "manifest.json field 'strategies[0]' is invalid"),
    ("format", 2, "unknown manifest format"),
    ("parent", "../0000", "names an invalid parent '../0000'"),
])
def test_a_manifest_that_does_not_fit_is_one_model_error_naming_the_field(base_model, field, value, message):
    path = _manifest(base_model)
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    with pytest.raises(ModelError, match="version 0001: ") as err:
        ModelStore(base_model).manifest("0001")
    assert message in str(err.value)
    history = _cli("history", "--model", base_model)  # CURRENT names it: a model error (exit 5), no traceback
    assert history.exit_code == 5 and message in " ".join(history.output.split()), history.output
