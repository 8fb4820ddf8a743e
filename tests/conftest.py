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
    # auto is bf16 on a CPU with native bf16 and fp32 on others: the same numbers on every machine
    "precision=fp32",
]


def lr(value) -> list[str]:
    """The overrides ``retain update --lr VALUE`` makes: low_lr's rate and every strategy's own."""
    from retain.core.learning.strategy import UPDATE_LEARNING_RATE_KEYS

    return [f"{key}={value}" for key in UPDATE_LEARNING_RATE_KEYS]


def _sigint_as_from_a_terminal() -> None:
    # A suite started as a background job or under nohup inherits SIGINT ignored, and so would
    # every process the tests start: the Ctrl-C tests would then test nohup, not Ctrl-C.
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_sigint_as_from_a_terminal()


def _no_module_named_after_the_checkout() -> None:
    # The checkout's root is the package (an __init__.py): pytest imports it as the module its
    # folder is named after ("retain" is already imported, as installed). A checkout in a folder
    # named like an installed module (`packaging`, `ray`) would take that module's place in
    # sys.modules for the rest of the session; importing the installed one first keeps it.
    import importlib
    import importlib.util
    import sys

    checkout = Path(__file__).resolve().parents[1]
    if not checkout.name.isidentifier() or checkout.name in sys.modules:
        return
    spec = importlib.util.find_spec(checkout.name)
    if spec is not None and checkout not in Path(spec.origin or checkout).resolve().parents:
        importlib.import_module(checkout.name)


_no_module_named_after_the_checkout()


@pytest.fixture(autouse=True)
def _no_import_left_running():
    # A run that fails before training leaves its background import of the training stack
    # going (core/runtime/preload.py); the next test would measure its allocations
    # (tracemalloc) or race it. Each test ends with it finished.
    yield
    import threading

    for thread in threading.enumerate():
        if thread.name.startswith("import retain."):
            thread.join()


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


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, old_texts) -> Path:
    """A tiny GPT-2 as a user would bring it: a transformers directory (GPT2Config, 2 layers,
    32-dim embeddings, context 64), a byte-level BPE tokenizer trained on local text, wrapped
    as a PreTrainedTokenizerFast without a pad token (GPT-2 has none), saved with
    save_pretrained. Built locally: no network."""
    pytest.importorskip("transformers", reason="the hf family needs the optional extra: pip install '.[hf]'")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from retain.plugins.gpt import EOS, train_tokenizer

    tokenizer = train_tokenizer(old_texts, 300)
    eos = tokenizer.token_to_id(EOS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=tokenizer.get_vocab_size(),
                        bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("gpt2") / "tiny-gpt2"
    GPT2LMHeadModel(config).save_pretrained(root)
    fast.save_pretrained(root)
    return root
