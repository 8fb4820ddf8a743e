"""What the objects plugins hand to retain must provide: one typed protocol per kind.

A factory registered through a ``register_*`` hook (``core/hookspecs.py``)
returns one of these. They are structural (``typing.Protocol``): no base class
to inherit, only these methods, except strategies, which extend
``retain.Strategy`` (its defaults do nothing). ``docs/plugins.md`` is the
reference, with examples and the order in which a run calls them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Protocol, runtime_checkable

if TYPE_CHECKING:  # only for annotations: importing this module imports no torch
    import torch

    from .config import Config
    from .items import Item, Reject
    from .known import KnownItems
    from .lm import Rows, Sample
    from .store import VersionFiles, VersionWriter
    from .validation import Evidence, Verdict


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
    """What counts as already seen (``register_dedupers``).

    May also define ``remember(items, version, writer)`` to keep an index of
    its own for the new version (see the hookspec)."""

    def find_duplicates(self, items: list["Item"], known: "KnownItems") -> dict[int, str]:
        """``{index in items: reason}`` for each duplicate. A reason may be a
        ``retain.core.known.Duplicate`` saying which item it repeats."""
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
        into several rows (``retain.core.lm.rows_from_ids`` does it), never cut."""
        ...

    def token_losses(self, logits: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
        """Per-position loss ``[batch, time]``, 0 at padding (``retain.core.lm.token_losses``)."""
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
    loaded first (``retain.plugins.models.loads_adapters`` does it).

    Two optional methods, looked up with ``hasattr``:

    ``import_model(source: Path, tensors: dict | None, config) -> LanguageModel``
        ``retain import``: a directory (``tensors`` None) or a weights file
        already read safely (``torch.load(weights_only=True)`` or safetensors).
        May record in ``config`` what it imported (the version keeps it).
    ``export(lm, out: Path, format: str) -> None``
        ``retain export``: write ``lm`` into the empty folder ``out``
        (``"hf"``: what transformers' ``from_pretrained`` loads).
    """

    def create(self, config: "Config", texts: list[str], context: int) -> LanguageModel:
        ...

    def load(self, files: "VersionFiles", entry: dict[str, Any]) -> LanguageModel:
        ...

    def architecture_from_config(self, config: "Config") -> dict[str, Any] | None:
        """The architecture ``config`` asks for explicitly (``config.asks(key)``), in
        ``LanguageModel.architecture()``'s keys; empty or None if it asks for nothing
        (then the model's own manifest says, and there is no advice on it)."""
        ...
