"""retain: update an existing model with new data only, without forgetting.

Importing ``retain`` is cheap: torch and avalanche-lib load only when a model
is trained or evaluated, and ``ModelTrainer`` (the engine) on first use.
"""

from retain.core.errors import (ConfigError, LockedError, ModelError, PluginError, RetainError,
                                SourceError, UpdateRejected)
from retain.core.hookspecs import hookimpl
from retain.core.items import Item, Reject
from retain.core.strategy import Strategy, TrainSettings
from retain.core.validation import Evidence, Verdict

__version__ = "0.1.0"
__all__ = ["ModelTrainer", "hookimpl", "Item", "Reject", "Strategy", "TrainSettings", "Verdict",
           "Evidence", "RetainError", "ConfigError", "SourceError", "ModelError", "PluginError",
           "LockedError", "UpdateRejected"]


def __getattr__(name: str):
    # `retain --help` must not pay for the engine's imports: ModelTrainer loads on first use.
    if name == "ModelTrainer":
        from retain.trainer import ModelTrainer

        return ModelTrainer
    raise AttributeError(f"module 'retain' has no attribute {name!r}")
