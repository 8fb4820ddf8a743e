"""What a strategy is: the base class every anti-forgetting strategy extends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class TrainSettings:
    """How one training run goes. Strategies may change it in ``configure``."""

    learning_rate: float
    epochs: int
    batch_size: int
    max_seq_length: int
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0


class Strategy:
    """Base class for anti-forgetting strategies. Override what you need.

    During a run the strategy object is registered as a pluggy plugin, so it
    can also implement hooks from ``retain.core.hookspecs`` (``training_penalty``,
    ``epoch_ended``, ...) with ``@hookimpl``-decorated methods.

    ``retain train`` runs the strategies of ``fine_tuning.strategy`` too, as the
    model's first experience: ``configure`` is not called there, but plugins,
    hooks and ``state_dict`` are, so the first update finds what it needs from
    the base data (a replay buffer, importances). ``run.parent`` is None then:
    there is no previous model to anchor to or distill from.
    """

    name: str = ""

    def configure(self, settings: TrainSettings, run: Any) -> None:
        """Adjust learning rate, epochs, schedule before training starts."""

    def avalanche_plugins(self, run: Any) -> list:
        """avalanche-lib plugins to add to the training template."""
        return []

    def classification_plugins(self, run: Any) -> list | None:
        """avalanche-lib plugins for a classification stream, or None if unsupported.

        ``retain compare --scenario split-digits`` trains a small MLP on
        (features, class, task) rows through the same ``fit`` and plugins, with
        ``run.kind == "classification"`` and no tokenizer. A strategy that adds
        no plugins (it only configures lr, epochs, schedule) works there as it
        is. Plugins written for token batches are not assumed to fit class
        labels: a strategy that has them opts in by overriding this method
        (returning classification-ready plugins, e.g. ``self.avalanche_plugins(run)``
        when they only read the model and the batch); otherwise compare reports
        it as not supporting the scenario. ``state_dict``/``load_state_dict``
        carry its state between experiences there as between updates.
        """
        # Opt-in rather than a default call of avalanche_plugins: an LM-specific
        # plugin (a text replay buffer) would fail deep inside training instead.
        return [] if type(self).avalanche_plugins is Strategy.avalanche_plugins else None

    def state_dict(self) -> dict[str, Any]:
        """What the next update needs: tensors and JSON-able values. Saved with the version."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned after the previous update (may be empty)."""
