"""The ``bigram`` model family: registered here, light (no torch); the model is in ``model.py``.

A plugin module only registers: ``retain plugins`` imports it on every start, so
the torch code is imported when a model is first created or loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from retain.plugin import Config, VersionFiles, hookimpl, loads_adapters

if TYPE_CHECKING:
    from .model import BigramModel


class BigramFamily:
    """A byte-level bigram language model: one table of next-byte logits (an example family)."""

    def __init__(self, options: None = None):
        pass

    def create(self, config: Config, texts: Sequence[str], context: int) -> "BigramModel":
        from .model import BigramModel

        return BigramModel.fresh(context, seed=config.seed)

    def renew(self, config: Config, keep: "BigramModel", context: int) -> "BigramModel":
        """Random weights with ``keep``'s tokenizer: bytes never change, so it is ``create``."""
        return self.create(config, [], context)

    @loads_adapters  # a LoRA version (adapters only) loads from the version it builds on
    def load(self, files: VersionFiles, entry: dict[str, Any]) -> "BigramModel":
        from .model import BigramModel

        return BigramModel.saved(files, entry)

    def architecture_from_config(self, config: Config) -> dict[str, Any]:
        return {}  # nothing in the config shapes it: no "architecture changed" advice


@hookimpl
def register_models(register):
    register("bigram", BigramFamily)
