"""What the objects plugins hand to retain must provide: one typed protocol per kind.

This module is where each contract is written, once. A factory registered
through a ``register_*`` hook (``core/hookspecs.py``) returns one of these;
plugin authors import them from ``retain.plugin``. They are structural
(``typing.Protocol``): no base class to inherit, only these methods, except
strategies, which extend ``retain.plugin.Strategy`` (its defaults do nothing).
An optional method is a protocol of its own (``RenewsModels``, ...): retain
asks ``isinstance(obj, RenewsModels)`` (or ``hasattr``) before calling it.

``missing`` is how registration checks them (``core/pluginmanager.py``): a
factory that is a class (or a function annotated with the class it returns)
is checked when its plugin registers; the object a factory returns is checked
again when it is first built, with its data attributes. ``docs/plugins.md`` is
the reference, with examples and the order in which a run calls them.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # only for annotations: importing this module imports no torch
    import torch

    from retain.core.config import Config
    from retain.core.data.items import Item, Reject
    from retain.core.data.known import KnownItems
    from retain.core.learning.lm import Rows, Sample
    from retain.core.storage.store import VersionFiles, VersionWriter
    from retain.core.quality.validation import Evidence, Verdict


@runtime_checkable
class Source(Protocol):
    """Where items come from (``register_sources``)."""

    def read(self, location: str) -> Iterable["Item | Reject"]:
        """Yield an ``Item`` per usable record and a ``Reject`` (file, line, reason) per
        unusable one. Raise ``SourceError`` if ``location`` itself cannot be read."""
        ...


@runtime_checkable
class Preprocessor(Protocol):
    """Per-item cleaning (``register_preprocessors``)."""

    def __call__(self, item: "Item") -> "Item | Reject":
        """The item (changed with ``item.with_text(...)`` or not), or ``Reject.of(item, why)``."""
        ...


@runtime_checkable
class Deduper(Protocol):
    """What counts as already seen (``register_dedupers``). Optional: ``RemembersItems``."""

    def find_duplicates(self, items: list["Item"], known: "KnownItems") -> dict[int, str]:
        """``{index in items: reason}`` for each duplicate. A reason may be a
        ``Duplicate`` saying which item it repeats. Called once per batch of a run's
        items, in order, with the same ``known`` (``known.in_run``: earlier batches)."""
        ...


@runtime_checkable
class RemembersItems(Protocol):
    """A deduper's optional index of its own, kept with each version."""

    def remember(self, items: list["Item"], version: str, writer: "VersionWriter") -> None:
        """Called while ``version`` is written, with the items it trains on and holds out.
        Tag rows with ``version`` and call ``writer.store.ledger.mark_version(version)`` in the
        same transaction: they count once the version is in CURRENT's chain, and are dropped
        if it is never finished. Never pickle."""
        ...


@runtime_checkable
class Validator(Protocol):
    """One check of the quality gate (``register_validators``)."""

    # Optional: ``each_epoch = False`` on a validator that costs like a pass of training
    # (``generation`` samples text): early stopping's look after each epoch skips it, and the
    # gate runs it once, on the epoch kept. Absent means True.

    def validate(self, evidence: "Evidence") -> "Verdict":
        """``Verdict("pass" | "warn" | "fail", reason, numbers, remedy)``; any fail rejects."""
        ...


@runtime_checkable
class LanguageModel(Protocol):
    """A loaded causal language model: weights, tokenizer and what the engine needs of them.

    Returned by a ``ModelFamily``. The engine trains ``module`` (token ids
    ``[batch, time]`` -> logits ``[batch, time, vocab]``) on the rows that
    ``encode`` builds, scores held-out texts with ``token_losses``, and asks
    ``save`` to write the weights into a new version.
    """

    family: str            # the registered family name, stored in the manifest
    module: "torch.nn.Module"
    context: int           # the longest row ``module`` accepts, in tokens
    pad_id: int            # the id padding positions hold in ``Rows.x``

    def encode(self, texts: list[str], max_len: int) -> "Rows":
        """Training/scoring rows of at most ``max_len`` positions. A long text is split
        into several rows (``rows_from_ids`` does it), never cut."""
        ...

    # Optional: ``encode_ids(texts) -> list of id sequences``, each text's ids wrapped in the
    # boundary tokens ``encode`` adds: what the training shards hold (``core/data/shards.py``).
    # Without it the ids are read back from ``encode``'s rows, which is slower.

    def token_losses(self, logits: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
        """Per-position loss ``[batch, time]``, 0 at padding (``token_losses`` computes it)."""
        ...

    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                 seed: int) -> list["Sample"]:
        """One sampled continuation per prompt, stopping at the family's end token."""
        ...

    def architecture(self) -> dict[str, Any]:
        """What fixes the shape of the weights and the tokenizer (JSON). Compared with
        ``ModelFamily.architecture_from_config`` for the "architecture changed" advice."""
        ...

    def save(self, writer: "VersionWriter") -> dict[str, Any]:
        """Write the weights (safetensors only) and tokenizer into the version being
        written; return the manifest's ``model`` entry: at least ``{"family": ...,
        "architecture": ...}``, plus whatever ``ModelFamily.load`` needs back."""
        ...


@runtime_checkable
class ModelFamily(Protocol):
    """A kind of model retain can train, load and save (``register_models``).

    ``create`` is a full training's start (random init, a tokenizer fitted to
    the base data if the family trains one); ``load`` reads a saved version
    back. ``files`` gives checksum-verified access to the version's files and,
    through ``files.of(version)`` and ``files.model(version)``, to another
    version's: a version that stores only a delta (the ``lora`` strategy's
    adapter weights) names in its entry the version it ``builds_on``, which is
    loaded first (decorate ``load`` with ``retain.plugin.loads_adapters``).

    Optional, each a protocol below: ``RenewsModels`` (``full_training.tokenizer:
    keep``), ``ImportsModels`` (``retain import``), ``ExportsModels`` (``retain export``).
    Annotate what ``create`` and ``load`` return with your ``LanguageModel`` class and it
    is checked when the family registers, not only when a model is first made.
    """

    def create(self, config: "Config", texts: Sequence[str], context: int) -> LanguageModel:
        """A full training's model: random weights, a tokenizer fitted to ``texts`` if the
        family trains one; rows of at most ``context`` tokens. ``texts`` is a sample of the
        items (``full_training.tokenizer_sample_mb``), read from disk as it is iterated: iterate
        it (once is cheapest) rather than copy it into a list."""
        ...

    def load(self, files: "VersionFiles", entry: dict[str, Any]) -> LanguageModel:
        """A saved version back, from its verified ``files`` and the manifest's ``model``
        ``entry`` (what ``LanguageModel.save`` returned)."""
        ...

    def architecture_from_config(self, config: "Config") -> dict[str, Any] | None:
        """The architecture ``config`` asks for explicitly (``config.asks(key)``), in
        ``LanguageModel.architecture()``'s keys; empty or None if it asks for nothing
        (then the model's own manifest says, and there is no advice on it)."""
        ...


@runtime_checkable
class RenewsModels(Protocol):
    """A family that can start a full training from an existing model's tokenizer."""

    def renew(self, config: "Config", keep: LanguageModel, context: int) -> LanguageModel:
        """Random weights and ``keep``'s tokenizer (``full_training.tokenizer: keep``); a
        family without ``renew`` makes that setting a config error."""
        ...


@runtime_checkable
class ImportsModels(Protocol):
    """A family ``retain import`` can bring a model in with."""

    def import_model(self, source: Path, tensors: dict | None, config: "Config") -> LanguageModel:
        """``source`` is a directory (``tensors`` None) or a weights file whose tensors retain
        already read safely (``torch.load(weights_only=True)`` or safetensors). May record
        in ``config`` what it imported: the version keeps it, so a retrain rebuilds it."""
        ...


@runtime_checkable
class ExportsModels(Protocol):
    """A family ``retain export`` can write out."""

    def export(self, lm: LanguageModel, out: Path, format: str) -> None:
        """Write ``lm`` into the empty folder ``out`` (``"hf"``: what transformers'
        ``from_pretrained`` loads)."""
        ...


@runtime_checkable
class Scenario(Protocol):
    """A stream of experiences ``retain compare --scenario NAME`` runs strategies on
    (``register_scenarios``). Optional: a static ``preload()``, imports done before the clock starts."""

    def build(self, request: Any, registry: Any) -> tuple[Any, "Config"]:
        """The stream (``name``, ``experiences``, ``metric``, ``higher_is_better``,
        ``fingerprints()``, ``describe()``) and the config, built once in the parent process;
        the stream must pickle (workers receive it)."""
        ...

    def run(self, names: list[str], stream: Any, config: "Config", seed: int, scratch: Path) -> dict:
        """One strategy composition over the whole stream, in a worker: ``{"supported": True,
        "R": R, "initial": b, "stages": [...], "train_seconds": s}`` with ``R[i][j]`` the metric
        on experience ``j`` after training through ``i``, or ``{"supported": False, "reason": ...}``."""
        ...


@runtime_checkable
class Logger(Protocol):
    """A tracker a run reports to (``register_loggers``), chosen with ``loggers: [...]``. Besides
    ``close``, it has a method named after each event hook it hears (``step_finished``,
    ``epoch_ended``, ``update_finished``, ``rolled_back``, ...), taking any of that hook's
    arguments by name."""

    def close(self, error: BaseException | None) -> None:
        """The run (or the rollback) is over: end what the logger opened. ``error`` is what
        ended the command early, or None."""
        ...


# --- checking a plugin against its contract ---------------------------------------------------

def methods(contract: type) -> list[str]:
    """The methods ``contract`` requires, in the order it declares them."""
    return [name for name, value in vars(contract).items()
            if callable(value) and (not name.startswith("_") or name == "__call__")]


def attributes(contract: type) -> list[str]:
    """The data attributes ``contract`` requires (its annotated names)."""
    return [name for name in vars(contract).get("__annotations__", {}) if not name.startswith("_")]


def missing(contract: type, target: Any) -> list[str]:
    """What ``target`` lacks of ``contract``: a class is checked for the methods, an instance
    for the methods and the data attributes (set in ``__init__``, a class cannot show them)."""
    if isinstance(target, type):  # defined by the class or a base, not by ``type`` or ``object``
        return [name for name in methods(contract)
                if not (any(name in vars(k) for k in target.__mro__[:-1]) and callable(getattr(target, name)))]
    absent = [name for name in methods(contract) if not callable(getattr(target, name, None))]
    return absent + [name for name in attributes(contract) if not hasattr(target, name)]


def produced_class(factory: Any) -> type | None:
    """The class ``factory`` makes: itself if it is a class, else what its return annotation
    names (None when it has none, or it cannot be resolved: then only the object is checked)."""
    if isinstance(factory, type):
        return factory
    try:
        made = typing.get_type_hints(factory).get("return")
    except Exception:  # a forward reference to what the module imports lazily: unknowable now
        return None
    return made if isinstance(made, type) else None
