"""The design document's "Manual Fine-Tuning" API, as written there (with our import path)."""

from __future__ import annotations

import pytest

from retain import ConfigError, ModelError, ModelTrainer, RetainError, UpdateRejected
from retain.core.config import load_config
from retain.core.storage.store import ModelStore

from conftest import TINY


def test_manual_fine_tuning_as_in_the_design_document(base_model, new_texts):
    trainer = ModelTrainer(load_config(None, TINY), verbose=False)
    trainer.load_model(base_model)
    new_data = new_texts[:20] + [{"text": new_texts[20], "source": "wiki"}]
    report = trainer.fine_tune(new_data, epochs=3, lr=0.002)
    assert report["counts"]["collected"] == 21
    assert len(report["epoch_losses"]) == 3 and report["settings"]["learning_rate"] == 0.002
    assert report["metrics"]["new_loss_after"] < report["metrics"]["new_loss_before"]
    version = trainer.save_model(base_model)
    assert version == "0002" and ModelStore(base_model).current() == "0002"


def test_trainer_reads_a_yaml_file_and_saves_into_a_new_directory(base_model, new_texts, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("model: {n_layer: 1, n_head: 2, d_model: 32, vocab_size: 300}\n"
                   "fine_tuning: {epochs: 1, max_seq_length: 64}\n")
    trainer = ModelTrainer(str(cfg), verbose=False)
    assert trainer.config.fine_tuning.epochs == 1
    trainer.load_model(base_model)
    with pytest.raises(RetainError, match="nothing to save"):
        trainer.save_model()
    trainer.fine_tune(new_texts[:10])
    copy = tmp_path / "fork"
    assert trainer.save_model(copy) == "0002"
    assert ModelStore(copy).chain() == ["0002", "0001"]
    assert ModelStore(base_model).current() == "0001"   # the original is untouched


def test_bad_items_in_python_data_are_reported(base_model):
    trainer = ModelTrainer(load_config(None, TINY), verbose=False).load_model(base_model)
    with pytest.raises(RetainError, match="item 2"):
        trainer.fine_tune(["fine text", 42])


# --- the command line's checks, in the API ----------------------------------------------------

@pytest.mark.parametrize("kwargs, key", [({"lr": float("nan")}, "fine_tuning.learning_rate"),
                                         ({"epochs": -1}, "fine_tuning.epochs"),
                                         ({"epochs": 0}, "fine_tuning.epochs"),
                                         ({"strategy": "nonesuch"}, "nonesuch")],
                         ids=["lr-nan", "epochs-negative", "epochs-zero", "unknown-strategy"])
def test_bad_arguments_raise_before_anything_runs(base_model, kwargs, key):
    from retain import PluginError

    trainer = ModelTrainer(load_config(None, TINY), verbose=False).load_model(base_model)
    with pytest.raises((ConfigError, PluginError), match=key):
        trainer.fine_tune(["some new text to learn from, long enough"], **kwargs)
    assert ModelStore(base_model).versions() == ["0001"]


def test_arguments_of_one_call_do_not_carry_over(base_model, new_texts):
    trainer = ModelTrainer(load_config(None, TINY), verbose=False).load_model(base_model)
    first = trainer.fine_tune(new_texts[:12], lr=5e-5, epochs=1)
    assert first["settings"]["learning_rate"] == 5e-5 and len(first["epoch_losses"]) == 1
    trainer.save_model()
    second = trainer.fine_tune(new_texts[12:24])
    # The default recipe again: rewarm peaks at the full training's rate, not at the last call's.
    assert trainer.config.fine_tuning.strategy == ["rewarm", "replay", "average"]
    assert second["settings"]["learning_rate"] == trainer.config.full_training.learning_rate == 1e-3
    assert len(second["epoch_losses"]) == trainer.config.fine_tuning.epochs == 2


def test_a_bare_string_is_one_item(base_model, new_texts):
    trainer = ModelTrainer(load_config(None, TINY), verbose=False).load_model(base_model)
    report = trainer.fine_tune(new_texts[0])
    assert report["counts"]["collected"] == 1


def test_fine_tune_returns_the_gates_verdict_before_the_save(base_model, new_texts):
    trainer = ModelTrainer(load_config(None, [*TINY, "options.learning.min_drop=0.99"]), verbose=False)
    report = trainer.load_model(base_model).fine_tune(new_texts[:20])
    assert report["gate"] == "rejected"
    assert any(v["validator"] == "learning" and v["status"] == "fail" for v in report["verdicts"])
    with pytest.raises(UpdateRejected):
        trainer.save_model()
    assert ModelStore(base_model).current() == "0001"   # kept as a rejected version, not current
    good = ModelTrainer(load_config(None, TINY), verbose=False).load_model(base_model)
    assert good.fine_tune(new_texts[20:40], lr=0.002)["gate"] == "accepted"


def test_a_path_that_is_not_a_model_raises_model_error(tmp_path):
    trainer = ModelTrainer(verbose=False)
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"\x80\x02")
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (weights, empty, tmp_path / "missing"):
        with pytest.raises(ModelError):
            trainer.load_model(path)


def test_discard_drops_a_rejected_candidate_without_writing_and_restores_the_loaded_weights(base_model,
                                                                                              new_texts):
    import torch

    trainer = ModelTrainer(load_config(None, [*TINY, "options.learning.min_drop=0.99"]), verbose=False)
    trainer.load_model(base_model)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    def files():  # (the ledger's -wal/-shm: SQLite's, while the trainer holds the ledger open)
        return sorted(str(p.relative_to(base_model)) for p in base_model.rglob("*")
                      if not p.name.endswith(("-wal", "-shm")))

    written = files()
    assert trainer.fine_tune(new_texts[:20])["gate"] == "rejected"
    trained = trainer.model.state_dict()
    assert any(not torch.equal(before[k], trained[k]) for k in before)  # training changed them in memory
    assert trainer.discard() is trainer
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the loaded version again
    assert files() == written  # nothing written
    assert ModelStore(base_model).versions() == ["0001"]
    with pytest.raises(ModelError, match="nothing to save"):
        trainer.save_model()
    with pytest.raises(ModelError, match="nothing to discard"):
        trainer.discard()
    assert trainer.fine_tune(new_texts[20:40])["gate"] == "rejected"  # and it can fine-tune again
