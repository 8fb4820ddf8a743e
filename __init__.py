"""retain: update an existing model with new data only, without forgetting.

Importing ``retain`` costs nothing: each name below loads its module on first use
(``ModelTrainer`` the engine, torch and avalanche-lib only when a model is trained
or evaluated), so the command line starts fast and handles Ctrl-C from its first
instruction (``retain/launch.py``).

Plugin authors import from ``retain.plugin``: every name a plugin uses, in one module.
The plugin names here (``Item``, ``hookimpl``, ...) are the same objects, kept for the
plugins written before it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_WHERE = {
    "ModelTrainer": "retain.trainer",
    "hookimpl": "retain.core.hookspecs",
    "Item": "retain.core.data.items", "Reject": "retain.core.data.items",
    "Strategy": "retain.core.learning.strategy", "TrainSettings": "retain.core.learning.strategy",
    "Verdict": "retain.core.quality.validation", "Evidence": "retain.core.quality.validation",
    **{name: "retain.core.errors" for name in ("RetainError", "ConfigError", "SourceError", "ModelError",
                                               "PluginError", "LockedError", "UpdateRejected", "Interrupted",
                                               "StorageError")},
}
__all__ = list(_WHERE)


def _lazy_attributes(module: str, where: dict[str, str], namespace: dict):
    """A module ``__getattr__`` that imports each name of ``where`` from its module when first
    asked for (so ``retain --help`` and a plugin's registering module import no torch), then keeps
    it in ``namespace``. The package root's and ``retain.plugin``'s."""
    def __getattr__(name: str):
        source = where.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        namespace[name] = value
        return value
    return __getattr__


__getattr__ = _lazy_attributes("retain", _WHERE, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
