"""What a strategy is: the base class every anti-forgetting strategy extends, the settings it
may change, and how its state is kept with a version."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal


@dataclass
class TrainSettings:
    """How one training run goes, from the config's ``fine_tuning`` (or ``full_training``)
    block. Strategies may change it in ``configure``; the report keeps what was used."""

    learning_rate: float    # peak learning rate of AdamW
    epochs: int             # passes over the run's rows
    batch_size: int         # rows per step (halved on out-of-memory, down to 1)
    max_seq_length: int     # longest row in tokens; longer items are split, never cut
    schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays to 10% of the peak
    warmup_steps: int = 0   # linear warm-up from 0 over this many steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off


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

    def state_dict(self) -> dict[str, Any]:
        """What the next update needs: tensors and JSON-able values. Saved with the version."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned after the previous update (may be empty)."""


# --- state kept with a version: tensors as safetensors, the rest as JSON ------------------------

def state_files(name: str) -> tuple[str, str]:
    return f"strategy/{name}.safetensors", f"strategy/{name}.json"


def read_state(files, name: str) -> dict[str, Any]:
    """What ``strategy.state_dict()`` returned when ``files``' version was written (or {})."""
    tensors_rel, json_rel = state_files(name)
    state: dict[str, Any] = {}
    if files.has(tensors_rel):
        state.update(files.tensors(tensors_rel))
    if files.has(json_rel):
        state.update(files.json(json_rel))
    return state


def write_state(writer, strategy: Strategy) -> None:
    import torch

    state = strategy.state_dict() or {}
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}
    other = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    tensors_rel, json_rel = state_files(strategy.name)
    if tensors:
        writer.write_tensors(tensors_rel, tensors)
    if other:
        writer.write_json(json_rel, other)


def build_strategies(registry, config, base=None) -> list[Strategy]:
    """The strategies of ``fine_tuning.strategy``, each with its state from the ``base``
    version (a ``LoadedVersion``; None for a full training, where they start empty)."""
    strategies = [registry.build("strategies", name, config) for name in config.fine_tuning.strategy]
    if base is not None:
        for strategy in strategies:
            strategy.load_state_dict(read_state(base.reader, strategy.name))
    return strategies
