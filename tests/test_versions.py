"""The version store (history, rollback, validate, prune) and when to retrain from scratch (status)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retain.cli import app
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.storage.models import load_version
from retain.core.errors import UpdateRejected
from retain.core.storage.store import HOLDOUT, TOKENIZER, WEIGHTS, ModelStore

from conftest import TINY, write_jsonl, lr

SETS = [arg for o in TINY for arg in ("--set", o)]
runner = CliRunner(env={"COLUMNS": "200"})


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _json(*args):
    result = _cli(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _weights_digest(store: ModelStore, version: str | None = None) -> str:
    """A hash of the loaded weights themselves (not of the file)."""
    state = load_version(store, version).model.state_dict_for_save()
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].numpy().tobytes())
    return h.hexdigest()


def _update(model_dir, path, *extra) -> dict:
    try:
        return Engine(load_config(None, [*TINY, *extra])).update([str(path)], model_dir)
    except UpdateRejected as exc:
        return exc.report


@pytest.fixture(scope="module")
def _history(tmp_path_factory, _base_model, new_texts) -> tuple[Path, dict]:
    """0001 full training, 0002 accepted update, 0003 rejected update (lr 1.0)."""
    root = tmp_path_factory.mktemp("history")
    model = root / "model"
    shutil.copytree(_base_model, model)
    store = ModelStore(model)
    digests = {"0001": _weights_digest(store)}
    assert _update(model, write_jsonl(root / "a.jsonl", new_texts[:30]))["status"] == "accepted"
    digests["0002"] = _weights_digest(store)
    assert _update(model, write_jsonl(root / "b.jsonl", new_texts[30:45]),
                   *lr(1.0))["status"] == "rejected"
    return model, digests


@pytest.fixture
def history_model(_history, tmp_path) -> tuple[Path, dict]:
    model, digests = _history
    dst = tmp_path / "model"
    shutil.copytree(model, dst)
    return dst, digests


def test_history_lists_accepted_and_rejected_versions(history_model):
    model, _ = history_model
    rows = _json("history", "--model", model)
    assert [(r["version"], r["parent"], r["kind"], r["status"], r["current"]) for r in rows] == [
        ("0001", None, "full_training", "accepted", False),
        ("0002", "0001", "fine_tuning", "accepted", True),
        ("0003", "0002", "fine_tuning", "rejected", False),
    ]
    assert rows[1]["items_learned"] == ModelStore(model).manifest("0002")["counts"]["trained"] > 0
    assert rows[1]["metrics"]["new_loss_after"] < rows[1]["metrics"]["new_loss_before"]
    assert "retention" in rows[2]["failed"] and rows[2]["learning_rate"] == 1.0
    table = _cli("history", "--model", model).output
    assert "*0002" in table and "rejected:" in table and "accepted" in table


def test_rollback_restores_an_earlier_version_exactly(history_model, new_texts, tmp_path):
    model, digests = history_model
    store = ModelStore(model)
    result = _cli("rollback", "--model", model)
    assert result.exit_code == 0 and "0002 -> 0001" in result.output
    assert store.current() == "0001"
    assert _weights_digest(store) == digests["0001"]
    # What 0002 learned no longer counts as known: the ledger follows CURRENT's chain.
    pending = write_jsonl(tmp_path / "again.jsonl", new_texts[:30])
    assert _json("status", "--model", model, "--data", pending, *SETS)["checks"][0]["numbers"]["pending"] == 30

    forward = _cli("rollback", "--model", model, "2")
    assert forward.exit_code == 0 and store.current() == "0002"
    assert _weights_digest(store) == digests["0002"]

    refused = _cli("rollback", "--model", model, "0003")
    assert refused.exit_code == 5 and "rejected by the quality gate" in refused.output
    assert store.current() == "0002"


def test_rollback_refuses_a_modified_version(history_model):
    model, _ = history_model
    weights = model / "versions/0001" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    result = _cli("rollback", "--model", model)
    assert result.exit_code == 5 and "checksum" in result.output
    assert ModelStore(model).current() == "0002"


def test_validate_on_demand(history_model, new_texts, tmp_path):
    model, _ = history_model
    unseen = write_jsonl(tmp_path / "unseen.jsonl", new_texts[45:60])
    good = _json("validate", "--model", model, "--version", "0002", "--data", unseen, *SETS)
    assert good["passed"] and good["parent"] == "0001" and good["already_learned"] == 0
    assert {v["validator"] for v in good["verdicts"]} >= {"finite", "retention", "learning", "generation"}
    assert good["metrics"]["new_holdout_items"] == 15

    bad = _cli("validate", "--model", model, "--version", "3", "--data", unseen, *SETS)
    assert bad.exit_code == 10 and "fail retention" in bad.output and "--lr 0.5" in bad.output

    seen = write_jsonl(tmp_path / "seen.jsonl", new_texts[:10])
    warned = _cli("validate", "--model", model, "--data", seen, *SETS)
    assert "trained on or held out by this version's chain" in warned.output

    root = _cli("validate", "--model", model, "--version", "0001", "--data", unseen, *SETS)
    assert root.exit_code == 5 and "no parent" in root.output


def test_prune_keeps_what_the_chain_needs(history_model, old_texts, new_texts, tmp_path):
    model, digests = history_model
    store = ModelStore(model)
    assert _cli("rollback", "--model", model).exit_code == 0
    report = _update(model, write_jsonl(tmp_path / "c.jsonl", new_texts[45:57]))
    assert report["version"] == "0004" and store.chain() == ["0004", "0001"]

    preview = _json("prune", "--model", model, "--keep", "1", "--dry-run", "--no-keep-full-trainings")
    assert (preview["keep"], preview["stub"], preview["delete"]) == (["0004"], ["0001"], ["0002", "0003"])
    assert store.versions() == ["0001", "0002", "0003", "0004"]

    assert _cli("prune", "--model", model, "--keep", "1", "--no-keep-full-trainings").exit_code == 0
    assert store.versions() == ["0001", "0004"]
    stub = model / "versions/0001"
    assert not (stub / WEIGHTS).exists() and (stub / HOLDOUT).exists()
    assert "pruned" in store.manifest("0001")
    assert store.ledger.count(["0002"]) == {}  # deleted versions' rows are gone
    # The chain still works: what 0001 learned is still known, its held-out items still
    # measure retention, and the drift baseline is still there.
    old = write_jsonl(tmp_path / "old.jsonl", old_texts[:20])
    status = _json("status", "--model", model, "--data", old, *SETS)
    assert status["checks"][0]["numbers"]["pending"] == 0
    assert status["checks"][2]["numbers"]["full_training"] == "0001"
    assert _weights_digest(store) == _weights_digest(store, "0004")
    refused = _cli("rollback", "--model", model, "0001")
    assert refused.exit_code == 5 and "pruned" in refused.output
    assert [r["pruned"] for r in _json("history", "--model", model)] == [True, False]


def test_prune_counts_the_current_chain_not_a_branch_a_rollback_abandoned(base_model, new_texts, tmp_path):
    store = ModelStore(base_model)
    for i in range(2):
        assert _update(base_model, write_jsonl(tmp_path / f"{i}.jsonl", new_texts[15 * i:15 * i + 15]),
                       "validators=[finite]")["status"] == "accepted"
    assert _cli("rollback", "--model", base_model).exit_code == 0  # 0003 abandoned, 0002 current
    report = _update(base_model, write_jsonl(tmp_path / "2.jsonl", new_texts[30:45]), "validators=[finite]")
    assert report["version"] == "0004" and store.chain() == ["0004", "0002", "0001"]
    # The last 2 accepted versions of the current chain are 0004 and 0002 (not 0003, off the chain);
    # the full training stays whole as the config's prune.keep_full_trainings says.
    plan = _json("prune", "--model", base_model, "--keep", "2")
    assert (plan["keep"], plan["stub"], plan["delete"]) == (["0001", "0002", "0004"], [], ["0003"])
    rolled = _cli("rollback", "--model", base_model)  # back to 0004's parent: it was kept whole
    assert rolled.exit_code == 0 and store.current() == "0002", rolled.output
    # --no-keep-full-trainings says otherwise: the full training becomes a stub.
    plan = _json("prune", "--model", base_model, "--keep", "1", "--no-keep-full-trainings")
    assert (plan["keep"], plan["stub"]) == (["0002"], ["0001"])


def test_keep_policy_prunes_after_each_update_and_identical_files_are_shared(base_model, new_texts, tmp_path):
    store = ModelStore(base_model)
    for i in range(3):
        report = _update(base_model, write_jsonl(tmp_path / f"{i}.jsonl", new_texts[15 * i:15 * i + 15]),
                         "prune.keep_last=1", "validators=[finite]")
        assert report["status"] == "accepted"
    assert report["pruned"] == {"keep": ["0001", "0004"], "stub": ["0003"], "delete": []}
    versions = base_model / "versions"
    # The full training stays whole (prune.keep_full_trainings), the updates between are stubs.
    assert [(versions / v / WEIGHTS).exists() for v in store.versions()] == [True, False, False, True]
    assert all("pruned" in store.manifest(v) and not (versions / v / "retention.jsonl").exists()
               for v in ("0002", "0003"))
    # The tokenizer never changes: one file on disk, linked from every version.
    assert len({(versions / v / TOKENIZER).stat().st_ino for v in store.versions()}) == 1
    assert "tokenizer.json" in store.manifest("0004")["shared_with_parent"]
    assert WEIGHTS not in store.manifest("0004")["shared_with_parent"]  # weights changed: a new file
    assert load_version(store).lm.tokenizer.get_vocab_size() == load_version(store, "0001").lm.tokenizer.get_vocab_size()
    # Without keep_full_trainings, the full training becomes a stub like the others.
    last = _update(base_model, write_jsonl(tmp_path / "last.jsonl", new_texts[45:60]), "prune.keep_last=1",
                   "prune.keep_full_trainings=false", "validators=[finite]")
    assert last["status"] == "accepted", last["verdicts"]
    assert [(versions / v / WEIGHTS).exists() for v in store.versions()] == [False, False, False, False, True]
    assert _cli("status", "--model", base_model, *SETS).exit_code == 0


# --- full retrain or fine-tune? ----------------------------------------------------------------

def _check(status: dict, name: str) -> dict:
    return next(c for c in status["checks"] if c["name"] == name)


def test_status_says_fine_tuning_is_fine_and_why(history_model):
    model, _ = history_model
    status = _json("status", "--model", model, *SETS)
    assert status["retrain"] is False
    assert status["summary"].startswith("Fine-tuning is fine: ")
    assert "architecture and tokenizer unchanged" in status["summary"]
    printed = _cli("status", "--model", model, *SETS).output.splitlines()
    # One "ok <check>: <reason>" line per check, in order, then the summary line.
    matches = [re.fullmatch(r"\s+(ok|retrain)\s+([\w ]+): (.+)", line) for line in printed]
    marked = [(m[1], m[2], m[3]) for m in matches if m]
    assert marked == [("ok", c["name"], c["reason"]) for c in status["checks"]], printed
    last = max(i for i, m in enumerate(matches) if m)
    assert " ".join(" ".join(printed[last + 1:]).split()) == status["summary"]  # the console may wrap it


def test_status_recommends_retrain_for_many_new_items(history_model, new_texts, tmp_path):
    model, _ = history_model
    learned = ModelStore(model).manifest("0002")["counts"]
    n = learned["trained"] + learned["holdout"]
    over = _json("status", "--model", model, *SETS, "--set", f"retrain.max_new_items={n - 1}")
    assert over["retrain"] and _check(over, "new_items")["retrain"]
    assert "major data change" in over["summary"]
    # Pending data counts too: 15 unseen items push it over a limit that learned items alone are under.
    pending = write_jsonl(tmp_path / "pending.jsonl", new_texts[45:60])
    limit = ["--set", f"retrain.max_new_items={n + 10}"]
    assert not _json("status", "--model", model, *SETS, *limit)["retrain"]
    with_pending = _json("status", "--model", model, *SETS, *limit, "--data", pending)
    assert _check(with_pending, "new_items")["retrain"] and "15 more pending" in with_pending["summary"]


def test_status_recommends_retrain_when_the_updates_cost_more_than_a_retrain(history_model):
    # Token-steps of the updates since the full training (tokens x epochs run + replayed tokens), read
    # here from the manifests, against a retrain on the base and their tokens at full_training.epochs.
    model, _ = history_model
    store = ModelStore(model)
    since = [v for v in store.chain() if store.manifest(v)["kind"] != "full_training"]
    steps = sum(store.manifest(v)["counts"]["tokens"] * len(store.manifest(v)["epoch_losses"])
                + store.manifest(v)["counts"].get("replay_tokens", 0) for v in since)
    retrain = 2 * (store.manifest("0001")["counts"]["tokens"] + sum(store.manifest(v)["counts"]["tokens"] for v in since))
    assert steps > 0 and since
    status = _json("status", "--model", model, *SETS)
    work = _check(status, "update_work")
    assert work["numbers"]["token_steps"] == steps and work["numbers"]["retrain_token_steps"] == retrain
    share = steps / retrain
    under = _json("status", "--model", model, *SETS, "--set", f"retrain.max_update_work={share * 0.99:.6f}")
    assert _check(under, "update_work")["retrain"] and under["retrain"]
    assert "training from scratch is now the cheaper way on" in under["summary"]
    over = _json("status", "--model", model, *SETS, "--set", f"retrain.max_update_work={share * 1.01:.6f}")
    assert not _check(over, "update_work")["retrain"]
    off = _json("status", "--model", model, *SETS, "--set", "retrain.max_update_work=0")
    assert not _check(off, "update_work")["retrain"]


def test_status_recommends_retrain_when_architecture_or_tokenizer_changes(history_model):
    model, _ = history_model
    arch = _json("status", "--model", model, *SETS, "--set", "model.d_model=64")
    assert arch["retrain"] and "architecture (d_model 32 -> 64)" in _check(arch, "architecture")["reason"]
    tok = _json("status", "--model", model, *SETS, "--set", "model.vocab_size=500")
    assert tok["retrain"] and "tokenizer (vocab_size 300 -> 500)" in _check(tok, "architecture")["reason"]


def test_status_recommends_retrain_after_cumulative_retention_drift(base_model, new_texts, tmp_path):
    # Two updates at a high learning rate without replay, each accepted by its gate (here:
    # finiteness only).
    for i, chunk in enumerate((new_texts[:30], new_texts[30:60])):
        report = _update(base_model, write_jsonl(tmp_path / f"{i}.jsonl", chunk), "fine_tuning.strategy=low_lr",
                         *lr(0.01), "fine_tuning.epochs=3", "validators=[finite]")
        assert report["status"] == "accepted"
    strict = ["--set", "retrain.max_retention_drift=0.03"]
    status = _json("status", "--model", base_model, *SETS, *strict)
    drift = _check(status, "retention_drift")
    assert drift["numbers"]["loss_now"] > drift["numbers"]["loss_after_full_training"]
    assert drift["numbers"]["drift"] > 0.03 and drift["retrain"] and status["retrain"]
    assert "even if each update passed" in status["summary"]
    lenient = _json("status", "--model", base_model, *SETS,
                    "--set", f"retrain.max_retention_drift={2 * drift['numbers']['drift']:.4f}")
    assert not _check(lenient, "retention_drift")["retrain"]


def test_status_recommends_retrain_after_rejections_in_a_row(history_model, new_texts, tmp_path):
    model, _ = history_model
    k2 = ["--set", "retrain.max_rejected_in_row=2"]
    assert not _check(_json("status", "--model", model, *SETS, *k2), "rejections")["retrain"]
    assert _update(model, write_jsonl(tmp_path / "d.jsonl", new_texts[45:60]),
                   *lr(1.0))["status"] == "rejected"
    status = _json("status", "--model", model, *SETS, *k2)
    check = _check(status, "rejections")
    assert check["retrain"] and check["numbers"]["versions"] == ["0003", "0004"]
    assert "rejected the last 2 updates" in status["summary"]
