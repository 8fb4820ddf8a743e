"""What a strategy is: the base class every anti-forgetting strategy extends, the settings it
may change, and how its state is kept with a version."""

from __future__ import annotations

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
    schedule: Literal["constant", "cosine"] = "constant"  # cosine: decays to min_lr_ratio of the peak
    warmup_steps: int = 0   # linear warm-up from 0 over this many steps
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    warmup_fraction: float = 0.0  # warm-up over this share of the run's steps (when warmup_steps is 0)
    min_lr_ratio: float = 0.1     # where cosine ends, as a fraction of the peak
    cooldown_fraction: float = 1.0  # cosine decays over this last share of the steps after warm-up, at the peak before
    max_seconds: float = 0.0      # stop training after this many seconds (0: no limit)
    # Which setting the rate came from (the step line and the report say so): a strategy that
    # sets its own rate names its option; otherwise the block's learning_rate.
    learning_rate_from: str = ""
    epochs_from: str = ""   # why fewer epochs than the block's were trained (the replay's work budget), or ""


# The config keys an update's explicit learning rate (``retain update --lr``,
# ``ModelTrainer.fine_tune(lr=)``) sets: low_lr's rate and every built-in strategy's own rate,
# so the rate asked for is the rate trained at whatever the recipe.
UPDATE_LEARNING_RATE_KEYS = ("fine_tuning.learning_rate", "options.rewarm.peak_lr", "options.naive.learning_rate",
                             "options.lora.learning_rate")


class Strategy:
    """Base class for anti-forgetting strategies. Override what you need.

    The run it is given is a read-only view (``core/run.py``): what a strategy changes, it
    returns. During a run the strategy object is registered as a pluggy plugin, so it
    can also implement hooks from ``retain.core.hookspecs`` (``training_penalty``,
    ``epoch_ended``, ...) with ``@hookimpl``-decorated methods.

    ``retain train`` runs the strategies of ``fine_tuning.strategy`` too, as the
    model's first experience: ``configure`` is not called there, but plugins,
    hooks and ``state_dict`` are, so the first update finds what it needs from
    the base data (a replay buffer, importances). ``run.parent`` is None then:
    there is no previous model to anchor to or distill from.
    """

    name: str = ""

    def configure(self, settings: TrainSettings, run: Any) -> Any:
        """Adjust learning rate, epochs, schedule before training starts. ``run`` is read-only:
        a strategy that wraps the model returns the wrapped one (``lora``), else None."""

    def warnings(self, run: Any) -> list[str]:
        """What the user should know before this update trains (after ``configure``): e.g. state
        the base never recorded, so the strategy cannot do its part this time."""
        return []

    def avalanche_plugins(self, run: Any) -> list:
        """avalanche-lib plugins to add to the training template."""
        return []

    def counts(self) -> dict[str, int]:
        """After training: what it adds to the report's ``counts`` (``replay_tokens``)."""
        return {}

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
    """The strategies of a run, each with its state.

    An update (``base``, a ``LoadedVersion``) builds ``fine_tuning.strategy``; each
    strategy gets the state of the newest version in ``base``'s chain that kept one
    (usually ``base`` itself; further back when updates ran without it, so a replay
    buffer the full training recorded is found however the updates since were made).
    A full training (``base`` None) also builds ``full_training.record``, empty, to
    record their state from the base data for later updates.
    """
    names = list(config.fine_tuning.strategy)
    if base is None:
        names += [n for n in config.full_training.record if n not in names]
    strategies = [registry.build("strategies", name, config) for name in names]
    if base is not None:
        chain = base.reader.store.chain(base.version)
        for strategy in strategies:
            strategy.load_state_dict(latest_state(base.reader, chain, strategy.name))
    return strategies


def latest_state(files, chain: list[str], name: str) -> dict[str, Any]:
    """The state strategy ``name`` saved in the newest version of ``chain`` that kept one."""
    for version in chain:  # a strategy that keeps no state (rewarm) walks it all: summaries
        if name in files.store.summary(version)["states"]:
            return read_state(files if version == files.version else files.of(version), name)
    return {}
