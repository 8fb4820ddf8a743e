"""Gradient-projection strategies with episodic memories: ``agem`` and ``gem``.

Each keeps a few token sequences of every update (the base model's and the most
recent ones) with the version, and projects each step's gradient so that the
loss on those memories does not rise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from retain.core.errors import ConfigError, PluginError
from retain.core.learning.strategy import Strategy


def memories_state(memories: list) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, (x, y) in enumerate(memories):
        out[f"x/{i}"], out[f"y/{i}"] = x, y
    return out


def memories_from(state: dict[str, Any]) -> list:
    count = sum(1 for k in state if k.startswith("x/"))
    return [(state[f"x/{i}"], state[f"y/{i}"]) for i in range(count)]


@dataclass
class AgemOptions:
    patterns_per_update: Annotated[int, Field(ge=1)] = 64  # sequences of each update kept in memory
    sample_size: Annotated[int, Field(ge=1)] = 16           # memory sequences per reference gradient
    max_memories: Annotated[int, Field(ge=1)] = 8           # updates remembered: the base model's and the latest ones

    def __post_init__(self):
        if self.max_memories > self.sample_size:
            raise ConfigError("config key 'options.agem.max_memories': must be <= sample_size "
                              f"({self.sample_size}), each memory gives at least one sequence per sample")


class _RememberingStrategy(Strategy):
    """Shared by agem and gem: the plugin's memories go in and out of the version's state."""

    def __init__(self, options):
        self.options = options
        self.memories: list = []
        self.plugin = None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memories = memories_from(state)

    def state_dict(self) -> dict[str, Any]:
        if self.plugin is not None:
            self.memories = self.plugin.memories()
        return memories_state(self.memories)


class Agem(_RememberingStrategy):
    """A-GEM: projects each gradient so the average loss on remembered sequences does not rise."""

    name = "agem"

    def avalanche_plugins(self, run) -> list:
        from retain.strategies.adapters import PersistentAGEM

        o = self.options
        self.plugin = PersistentAGEM(o.patterns_per_update, o.sample_size, o.max_memories,
                                     self.memories, run.lm.pad_id)
        return [self.plugin]


@dataclass
class GemOptions:
    patterns_per_update: Annotated[int, Field(ge=1)] = 16  # sequences of each update kept in memory
    memory_strength: Annotated[float, Field(ge=0)] = 0.5   # GEM's gamma: margin that favours backward transfer
    max_memories: Annotated[int, Field(ge=1)] = 4          # updates remembered (one constraint each): base + latest


class Gem(_RememberingStrategy):
    """GEM: projects each gradient so no remembered update's loss rises (one QP per step; slowest)."""

    name = "gem"

    def avalanche_plugins(self, run) -> list:
        import qpsolvers

        from retain.strategies.adapters import PersistentGEM

        if "quadprog" not in qpsolvers.available_solvers:  # avalanche's GEMPlugin solves with it
            raise PluginError("strategy 'gem' needs the quadprog QP solver, which is not installed: "
                              "pip install quadprog")
        o = self.options
        self.plugin = PersistentGEM(o.patterns_per_update, o.memory_strength, o.max_memories, self.memories)
        return [self.plugin]
