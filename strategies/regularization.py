"""Regularization strategies: ``ewc``, ``si``, ``mas`` (importance-weighted pull towards the
previous weights) and ``lwf`` (distillation from the previous model).

Each saves what the next update needs with the version: the importances (the
anchor weights are the version's own weights, so they are not stored twice),
of the weights that trained only: with ``lora`` the frozen base never moves,
and its importances would be as large as the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from retain.core.learning.strategy import Strategy


def prefixed(prefix: str, tensors: dict) -> dict:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


def unprefixed(prefix: str, state: dict) -> dict:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in state.items() if k.startswith(prefix + "/")}


def trainable(run) -> set[str] | None:
    """Names of the weights this run trains (all of them, unless a strategy such as lora froze
    some); None when the run holds no model of its own (a compare scenario's classifier)."""
    if getattr(run, "model", None) is None:
        return None
    return {n for n, p in run.model.named_parameters() if p.requires_grad}


def only(names: set[str] | None, tensors: dict) -> dict:
    return tensors if names is None else {k: v for k, v in tensors.items() if k in names}


def no_importances(name: str) -> list[str]:
    """The warning of an importance-based strategy whose base recorded none."""
    return [f"the base version recorded no {name} importances (it was trained or updated without {name}): "
            f"this update is not held by {name}'s penalty, it only records importances for the next one "
            f"(`retain train --strategy replay,{name}` records them from the base data)"]


@dataclass
class EwcOptions:
    # weight of the penalty (the Fisher of an LM's weights is tiny; tuned on benchmarks/forgetting.py,
    # see BENCHMARKS.md)
    ewc_lambda: Annotated[float, Field(ge=0)] = 100000.0
    decay: Annotated[float, Field(ge=0, le=1)] = 1.0  # online EWC's gamma: past importances are scaled by it each update


class Ewc(Strategy):
    """Online EWC: keeps weights that mattered (Fisher, stored with the model) near their values."""

    name = "ewc"

    def __init__(self, options: EwcOptions):
        self.options = options
        self.importances: dict = {}
        self.plugin = None
        self.trained: set[str] | None = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importances = unprefixed("importance", state)

    def warnings(self, run) -> list[str]:
        return [] if self.importances else no_importances(self.name)

    def avalanche_plugins(self, run) -> list:
        from retain.strategies.adapters import OnlineEWC

        self.trained = trainable(run)
        self.plugin = OnlineEWC(self.options.ewc_lambda, self.options.decay, self.importances)
        return [self.plugin]

    def state_dict(self) -> dict[str, Any]:
        if self.plugin is not None:
            self.importances = only(self.trained, self.plugin.latest_importances())
        return prefixed("importance", self.importances)


@dataclass
class SiOptions:
    # weight of the penalty (avalanche clips importances at 1e-3, so it is large; tuned on
    # benchmarks/forgetting.py, see BENCHMARKS.md)
    si_lambda: Annotated[float, Field(ge=0)] = 1000.0
    eps: Annotated[float, Field(gt=0)] = 1e-7          # damping of the path-integral importance


class Si(Strategy):
    """Synaptic Intelligence: importances from each weight's contribution to the loss drop while training."""

    name = "si"

    def __init__(self, options: SiOptions):
        self.options = options
        self.importance: dict = {}
        self.cum_trajectory: dict = {}
        self.plugin = None
        self.trained: set[str] | None = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance = unprefixed("importance", state)
        self.cum_trajectory = unprefixed("cum_trajectory", state)

    def warnings(self, run) -> list[str]:
        return [] if self.importance else no_importances(self.name)

    def avalanche_plugins(self, run) -> list:
        from retain.strategies.adapters import PersistentSI

        self.trained = trainable(run)
        self.plugin = PersistentSI(self.options.si_lambda, self.options.eps, self.importance, self.cum_trajectory)
        return [self.plugin]

    def state_dict(self) -> dict[str, Any]:
        if self.plugin is not None:
            importance, cum = self.plugin.state()
            self.importance, self.cum_trajectory = only(self.trained, importance), only(self.trained, cum)
        return {**prefixed("importance", self.importance), **prefixed("cum_trajectory", self.cum_trajectory)}


@dataclass
class MasOptions:
    mas_lambda: Annotated[float, Field(ge=0)] = 1.0     # weight of the penalty
    alpha: Annotated[float, Field(ge=0, le=1)] = 0.5  # share of the past importances kept when this update's merge in


class Mas(Strategy):
    """Memory Aware Synapses: importances from how much each weight moves the model's outputs."""

    name = "mas"

    def __init__(self, options: MasOptions):
        self.options = options
        self.importance: dict = {}
        self.plugin = None
        self.trained: set[str] | None = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.importance = unprefixed("importance", state)

    def warnings(self, run) -> list[str]:
        return [] if self.importance else no_importances(self.name)

    def avalanche_plugins(self, run) -> list:
        from retain.strategies.adapters import PersistentMAS

        self.trained = trainable(run)
        self.plugin = PersistentMAS(self.options.mas_lambda, self.options.alpha, self.importance)
        return [self.plugin]

    def state_dict(self) -> dict[str, Any]:
        if self.plugin is not None:
            self.importance = only(self.trained, self.plugin.state())
        return prefixed("importance", self.importance)


@dataclass
class LwfOptions:
    alpha: Annotated[float, Field(ge=0)] = 5.0        # weight of the distillation term (avalanche's 1.0 barely helped
                                                      # on benchmarks/forgetting.py)
    temperature: Annotated[float, Field(gt=0)] = 2.0  # softmax temperature of teacher and student


class Lwf(Strategy):
    """Learning without Forgetting: distills the previous model's predictions on the new inputs."""

    name = "lwf"

    def __init__(self, options: LwfOptions):
        self.options = options

    def avalanche_plugins(self, run) -> list:
        import copy

        from retain.strategies.adapters import CausalLMLwF

        teacher = None
        if run.parent is not None:  # a full training has no previous model to distill
            teacher = copy.deepcopy(run.model).eval().requires_grad_(False)
        return [CausalLMLwF(self.options.alpha, self.options.temperature, teacher)]
