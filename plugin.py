"""Everything a retain plugin uses, from one module: ``from retain.plugin import ...``.

``docs/plugins.md`` is the guide; what each object must provide is written once, in
the protocols below (``retain.core.contracts``), and checked when a plugin registers.

- Registering: ``hookimpl`` marks a plugin's hooks (``core/hookspecs.py``);
  ``STEPS`` are the steps a run announces, ``FULL_TRAINING``, ``FINE_TUNING`` and
  ``IMPORT`` the values of ``run.kind``.
- What a factory returns: ``Source``, ``Preprocessor``, ``Deduper`` (optionally
  ``RemembersItems``), ``Validator``, ``ModelFamily`` (optionally ``RenewsModels``,
  ``ImportsModels``, ``ExportsModels``) making a ``LanguageModel``, ``Scenario``,
  ``Logger``, and ``Strategy``, the base class strategies extend.
- What hooks and methods receive: ``Item``, ``Reject``, ``KnownItems``,
  ``Duplicate``, ``Evidence``, ``Verdict``, ``TrainSettings``, ``Config``,
  ``Run`` (as a read-only ``RunView``), ``Assessment``, ``VersionFiles``, ``VersionWriter``;
  ``UPDATE_LEARNING_RATE_KEYS``: the options ``--lr`` sets.
- For a model family: ``Rows``, ``Sample``, ``rows_from_ids``, ``token_losses``,
  ``IGNORE_INDEX`` (these load torch, on first use), ``loads_adapters``.
- Errors a user can fix: ``ConfigError`` (exit 3), ``SourceError`` (4),
  ``ModelError`` (5), ``StorageError`` (12); ``PluginError`` (6) is what retain
  makes of anything else a plugin raises.
- Helpers: ``lower_lr``, ``raise_lr``, ``fewer_epochs`` (a verdict's remedy),
  ``UPDATE_LEARNING_RATE_KEYS`` (the options `--lr` sets), ``plural``, ``percent`` (wording),
  ``on_interrupt``, ``release``, ``shielded`` (Ctrl-C).

Importing it imports no torch: a plugin's registering module stays as light as
``retain plugins`` needs it to be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _lazy_attributes
from .core.quality.advice import fewer_epochs, lower_lr, raise_lr
from .core.config import Config
from .core.contracts import (Deduper, ExportsModels, ImportsModels, LanguageModel, Logger, ModelFamily,
                             Preprocessor, RemembersItems, RenewsModels, Scenario, Source, Validator)
from .core.errors import ConfigError, ModelError, PluginError, RetainError, SourceError, StorageError
from .core.hookspecs import STEPS, hookimpl
from .core.runtime.interrupts import on_interrupt, release, shielded
from .core.data.items import Item, Reject
from .core.data.known import Duplicate, KnownItems
from .core.quality.retrain import Assessment
from .core.run import FINE_TUNING, FULL_TRAINING, IMPORT, Run, RunView
from .core.storage.store import VersionFiles, VersionWriter
from .core.learning.strategy import UPDATE_LEARNING_RATE_KEYS, Strategy, TrainSettings
from .core.quality.validation import Evidence, Verdict
from .core.wording import percent, plural
from .plugins.models import loads_adapters

if TYPE_CHECKING:
    from .core.learning.lm import IGNORE_INDEX, Rows, Sample, rows_from_ids, token_losses

# Names whose module imports torch: loaded when first asked for.
_TORCH = {name: "retain.core.learning.lm" for name in ("IGNORE_INDEX", "Rows", "Sample", "rows_from_ids", "token_losses")}

__all__ = [
    "hookimpl", "STEPS", "FULL_TRAINING", "FINE_TUNING", "IMPORT",
    "Source", "Preprocessor", "Deduper", "RemembersItems", "Validator", "ModelFamily", "RenewsModels",
    "ImportsModels", "ExportsModels", "LanguageModel", "Scenario", "Logger", "Strategy",
    "Item", "Reject", "KnownItems", "Duplicate", "Evidence", "Verdict", "TrainSettings", "Config", "Run", "RunView",
    "UPDATE_LEARNING_RATE_KEYS",
    "Assessment", "VersionFiles", "VersionWriter",
    *_TORCH, "loads_adapters",
    "RetainError", "ConfigError", "SourceError", "ModelError", "StorageError", "PluginError",
    "lower_lr", "raise_lr", "fewer_epochs", "plural", "percent", "on_interrupt", "release", "shielded",
]


__getattr__ = _lazy_attributes("retain.plugin", _TORCH, globals())


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
