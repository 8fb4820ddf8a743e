"""The design document's "Manual Fine-Tuning" API, as written there (with our import path)."""

from __future__ import annotations

import pytest

from retain import ModelTrainer, RetainError
from retain.core.config import load_config
from retain.core.store import ModelStore

from conftest import TINY


def test_manual_fine_tuning_as_in_the_seed(base_model, new_texts):
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
