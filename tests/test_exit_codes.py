"""Failures a scheduler sees: input with no usable item is exit 4 (unless --allow-empty), a
closed stdout ends quietly. A cron job learns of a broken export from the exit code alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from retain.cli import app
from retain.core.storage.models import load_version
from retain.core.storage.store import ModelStore

from conftest import TINY, write_jsonl

runner = CliRunner()
SETS = [arg for s in TINY for arg in ("--set", s)]


def _wrong_field(path: Path) -> Path:
    return write_jsonl(path, [f"record {i} of an export whose field is renamed" for i in range(30)], field="body")


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _garbage(path: Path) -> Path:
    path.write_bytes(b"".join(b"\x00\x9f%d garbage <html> not json {\n" % i for i in range(25))
                     + b"".join(b"%d, plain words\n" % i for i in range(5)))
    return path


BROKEN = {"wrong field": (_wrong_field, 30, "30 \"field 'text' is missing, expected a string\""),
          "empty file": (_empty, 1, "1 \"empty file\""),
          "garbage": (_garbage, 30, "\"invalid UTF-8 at byte N\"")}


def _rejects(model: Path) -> list[dict]:
    path = model / "rejects.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_an_update_with_no_usable_item_exits_4_with_the_reasons_by_kind(base_model, tmp_path, case):
    make, records, kinds = BROKEN[case]
    data = make(tmp_path / "export.jsonl")
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), *SETS])
    assert r.exit_code == 4, r.output
    said = " ".join(r.output.split())  # one line, however the terminal wrapped it
    assert f"no usable item in {records} record" in said and kinds in said, said
    assert f"{base_model / 'rejects.jsonl'}" in said  # where the details are
    assert "Nothing new to learn" not in said
    assert len(_rejects(base_model)) == records  # the details were written before the error
    assert ModelStore(base_model).versions() == ["0001"]


def test_the_summary_counts_each_kind_of_reject(base_model, tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"body": f"b{i}"}) + "\n" for i in range(7)) + "not json\n" * 3)
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), *SETS, "--json"])
    assert r.exit_code == 4, r.output
    error = json.loads(r.stdout)["error"]
    assert error["kind"] == "data"
    assert error["message"].startswith("no usable item in 10 records: 7 \"field 'text' is missing, "
                                       "expected a string\", 3 \"invalid JSON\""), error


def test_a_source_with_no_records_at_all_exits_4(base_model, tmp_path):
    data = tmp_path / "export.csv"
    data.write_text("id,text\n")  # a header and nothing else
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), *SETS])
    assert r.exit_code == 4, r.output
    assert "no usable item" in " ".join(r.output.split())


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_allow_empty_makes_no_usable_item_exit_0(base_model, tmp_path, case):
    make, records, kinds = BROKEN[case]
    data = make(tmp_path / "export.jsonl")
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), *SETS, "--allow-empty"])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert f"no usable item in {records} record" in said and "Nothing new to learn" in said
    assert len(_rejects(base_model)) == records
    assert ModelStore(base_model).versions() == ["0001"]


def test_a_dry_run_fails_as_the_update_would_and_status_only_counts(base_model, tmp_path):
    data = _garbage(tmp_path / "export.jsonl")
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), *SETS, "--dry-run"])
    assert r.exit_code == 4 and "no usable item in 30 records" in " ".join(r.output.split()), r.output
    assert _rejects(base_model) == []  # a dry run writes nothing, and says nothing is written
    r = runner.invoke(app, ["status", "-m", str(base_model), "-d", str(data), *SETS, "--json"])
    assert r.exit_code == 0, r.output  # status reports what an update would learn: nothing
    assert "no usable item" not in r.output


def test_only_duplicates_is_nothing_new_and_exit_0(base_model, tmp_path, old_texts):
    data = write_jsonl(tmp_path / "again.jsonl", old_texts[:40])  # all learned by version 0001
    r = runner.invoke(app, ["update", "-d", str(data), "-m", str(base_model), *SETS])
    assert r.exit_code == 0, r.output
    assert "Nothing new to learn" in r.output and "no usable item" not in r.output
    assert ModelStore(base_model).versions() == ["0001"]


def test_a_train_with_no_usable_item_exits_4_and_leaves_no_model_dir(tmp_path):
    data = _wrong_field(tmp_path / "export.jsonl")
    r = runner.invoke(app, ["train", "-d", str(data), "-m", str(tmp_path / "m"), *SETS])
    assert r.exit_code == 4, r.output
    error = " ".join(r.output.split()).partition("error: ")[2]
    assert "no usable item in 30 records" in error and f"{data}:1" in error  # the first one, to look at
    assert "rejects.jsonl" not in error  # the new directory is undone: no file to point to
    assert not (tmp_path / "m").exists()
    r = runner.invoke(app, ["train", "-d", str(data), "-m", str(tmp_path / "m"), *SETS, "--allow-empty"])
    assert r.exit_code == 0, r.output
    assert ModelStore(tmp_path / "m").versions() == []


def test_an_import_whose_base_data_has_no_usable_item_exits_4(base_model, tmp_path):
    lm = load_version(ModelStore(base_model)).lm
    pth, tok = tmp_path / "model.pth", tmp_path / "tokenizer.json"
    torch.save(lm.module.state_dict(), pth)
    tok.write_text(lm.tokenizer_json, encoding="utf-8")
    data = _garbage(tmp_path / "base.jsonl")
    common = [str(pth), "--tokenizer", str(tok), "--set", "model.n_head=2", "--set", "device=cpu",
              "-d", str(data)]
    r = runner.invoke(app, ["import", *common, "-m", str(tmp_path / "m")])
    assert r.exit_code == 4 and "no usable item in 30 records" in " ".join(r.output.split()), r.output
    assert not (tmp_path / "m").exists()
    r = runner.invoke(app, ["import", *common, "-m", str(tmp_path / "m2"), "--allow-empty"])
    assert r.exit_code == 0, r.output
    assert ModelStore(tmp_path / "m2").versions() == ["0001"]


def test_a_closed_stdout_ends_quietly_and_the_update_is_saved(base_model, tmp_path, new_texts):
    """``retain update ... | head -1``: the reader goes after one line; the update goes on,
    saves, and exits with its own code, without a traceback."""
    data = write_jsonl(tmp_path / "new.jsonl", new_texts[:20])
    proc = subprocess.Popen([sys.executable, "-m", "retain", "update", "-d", str(data), "-m", str(base_model),
                             *SETS], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what head -1 does
    _, err = proc.communicate(timeout=300)
    err = err.decode(errors="replace")
    assert first.startswith(b"1. Load model"), first
    assert "Traceback" not in err and "internal error" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 0, err
    store = ModelStore(base_model)
    assert store.versions() == ["0001", "0002"] and store.current() == "0002"
