"""Shared fixtures: a tiny model trained once per session on text that ships with Python."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from retain.core.config import load_config
from retain.demo import base_corpus, docstring_paragraphs

# A model small enough to train in seconds on 2 cores, same code paths as the default.
TINY = [
    "model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.vocab_size=300",
    "full_training.epochs=2", "full_training.max_seq_length=64", "full_training.batch_size=16",
    "fine_tuning.max_seq_length=64", "fine_tuning.epochs=2", "validation.retention_fraction=0.1",
    "validation.holdout_fraction=0.2", "device=cpu",
]


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # Tiny models: on a busy 2-core machine a second intra-op thread costs far more than
    # it gives (measured 4-50x slower steps). Subprocess tests keep torch's default.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture
def tiny_config():
    return load_config(None, TINY)


@pytest.fixture(scope="session")
def old_texts() -> list[str]:
    return base_corpus(240)


@pytest.fixture(scope="session")
def new_texts() -> list[str]:
    return docstring_paragraphs()[:60]


def write_jsonl(path: Path, texts, field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: t}) + "\n" for t in texts), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def _base_model(tmp_path_factory, old_texts) -> Path:
    from retain.core.engine import Engine

    root = tmp_path_factory.mktemp("base")
    data = write_jsonl(root / "old.jsonl", old_texts)
    Engine(load_config(None, TINY)).train([str(data)], root / "model")
    return root / "model"


def private_copy(model_dir: Path, tmp_path: Path) -> Path:
    """A test's own copy of a model trained once per session or module."""
    dst = tmp_path / "model"
    shutil.copytree(model_dir, dst)
    return dst


@pytest.fixture
def base_model(_base_model, tmp_path) -> Path:
    """A private copy of a tiny trained model directory (version 0001)."""
    return private_copy(_base_model, tmp_path)
