"""avalanche-lib plugins adapted to causal-LM batches and to one experience per process.

Each ``retain update`` is a fresh process training one experience, so what an
avalanche plugin keeps in memory between experiences (importances, buffers,
memories) is restored here from the previous version at the start of the
experience, and read back by the strategy after it to be saved with the new
version. The engine starts an update's clock at one past experience, so the
plugins that skip the first experience apply what was restored.

This module imports torch and avalanche-lib: import it inside functions only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from avalanche.benchmarks.utils import AvalancheDataset
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import (AGEMPlugin, EWCPlugin, GEMPlugin, LwFPlugin, MASPlugin,
                                        ReplayPlugin, SynapticIntelligencePlugin)
from avalanche.training.regularization import LearningWithoutForgetting
from avalanche.training.storage_policy import ExemplarsBuffer, ReservoirSamplingBuffer
from avalanche.training.utils import ParamData, copy_params_dict

from retain.core.runtime.world import world_of
from retain.core.learning.lm import IGNORE_INDEX
from retain.core.learning.training import LengthBatches, make_dataset, pad_to

Tensors = dict[str, torch.Tensor]


def _param_data(model: torch.nn.Module, saved: Tensors, device) -> dict[str, ParamData]:
    """ParamData for every parameter of ``model``, in its order (EWC zips the two),
    from ``saved`` where a tensor of the right shape is there, zero otherwise."""
    out = {}
    for name, p in model.named_parameters():
        value = saved.get(name)
        value = value.to(device) if value is not None and value.shape == p.shape else torch.zeros_like(p)
        out[name] = ParamData(f"imp_{name}", p.shape, init_tensor=value.detach().clone(), device=device)
    return out


def trim(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns no row uses (memories are stored and replayed trimmed)."""
    width = int((y != IGNORE_INDEX).sum(1).max().clamp(min=1)) if len(y) else 1
    return x[:, :width].contiguous(), y[:, :width].contiguous()


def rows_of(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The (inputs, targets) rows of a dataset built by ``make_dataset``."""
    if len(dataset) == 0:
        return torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.long)
    samples = [dataset[i] for i in range(len(dataset))]
    return trim(torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples]))


# --- weight averaging -----------------------------------------------------------------

class ParentAveraging(SupervisedPlugin):
    """At the end of training, each floating-point weight becomes
    ``parent + weight * (trained - parent)``, the parent being the weights training began with
    (``tied_weight`` instead of ``weight`` for a tensor tied under several names).

    With ``branch`` (the unaveraged weights the parent's update trained, ``average``'s
    ``branch`` option), training begins from ``parent + branch_share * (branch - parent)``
    instead (the whole branch at 1), and the parent is still the served weights: the
    candidate is ``parent + weight * (branch' - parent)``, where ``branch'`` trained on
    from there. ``trained`` keeps the weights before averaging (the next branch)."""

    def __init__(self, weight: float, branch: Tensors | None = None, tied_weight: float | None = None,
                 branch_share: float = 1.0):
        super().__init__()
        self.weight = weight
        self.branch_share = branch_share  # training begins at parent + branch_share x (branch - parent)
        # the share kept of a tensor tied under several names (None: ``weight``)
        self.tied_share = weight if tied_weight is None else tied_weight
        self.branch = branch
        self.parent: Tensors = {}
        self.trained: Tensors | None = None
        self.served: str | None = None  # the digest of the averaged weights (``fingerprint``)

    def before_training(self, strategy, **kw):
        state = strategy.model.state_dict()
        self.parent = {k: v.detach().clone() for k, v in state.items() if v.is_floating_point()}
        if self.branch:
            with torch.no_grad():
                for name, value in self.branch.items():
                    start = self.parent[name]
                    state[name].copy_(start + self.branch_share * (value.to(start.device, start.dtype) - start))

    def after_training(self, strategy, **kw):
        with torch.no_grad():
            state = strategy.model.state_dict()
            # Tied weights (the GPT's head and token embedding) share one storage, listed under each name:
            # kept once in the branch (the first name; copying it back fills both) and averaged once,
            # with ``tied_weight``.
            names: dict[int, int] = {}
            for value in state.values():
                names[value.data_ptr()] = names.get(value.data_ptr(), 0) + 1
            self.trained, seen = {}, set()
            for name, value in state.items():
                start = self.parent.get(name)
                if start is not None and value.data_ptr() not in seen:
                    seen.add(value.data_ptr())
                    self.trained[name] = value.detach().to("cpu", copy=True)
                    weight = self.weight if names[value.data_ptr()] == 1 else self.tied_share
                    value.copy_(start.to(value.device) + weight * (value - start.to(value.device)))
            self.served = fingerprint(state)
        self.parent = {}

    def restore_trained(self, model) -> None:
        """``model`` back to the weights training left, before the averaging (``trained``): the
        same training judged as the recipe without ``average`` (``--auto``'s free trial). A tied
        tensor, kept once, fills every name it has."""
        state = model.state_dict()
        with torch.no_grad():
            for name, value in self.trained.items():
                state[name].copy_(value.to(state[name].device, state[name].dtype))


def fingerprint(tensors: Tensors) -> str:
    """A digest of floating-point weights (names, shapes, bytes): which served weights a branch
    was trained beside."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        value = tensors[name]
        if not value.is_floating_point():
            continue
        value = value.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# --- replay -------------------------------------------------------------------------

RESERVOIR_CHUNK = 65536  # texts the replay reservoir draws from at a time


def _chunks(values, size: int):
    chunk = []
    for value in values:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class TextReservoir(ExemplarsBuffer):
    """Replay storage over item texts: avalanche's reservoir sampling picks the items,
    and the buffer the template replays is their token rows.

    Texts rather than token rows: they are what a version saves (JSON, readable, no
    old dataset needed), and every item then has the same chance to be kept however
    many sequences it splits into.
    """

    def __init__(self, max_size: int, new_texts: Callable[[], list[str]],
                 encode: Callable[[list[str]], AvalancheDataset],
                 texts: list[str] | None = None, keys: torch.Tensor | None = None):
        super().__init__(max_size)
        self.reservoir = ReservoirSamplingBuffer(max_size)
        if texts:
            # The reservoir's random keys come back with the texts: sampling continues
            # across updates exactly as if it had never stopped.
            self.reservoir.buffer = AvalancheDataset([list(texts)])
            self.reservoir._buffer_weights = keys.float()
            self.reservoir.resize(None, max_size)
        self.new_texts = new_texts
        self.encode = encode
        self._rows: AvalancheDataset | None = None

    @property
    def texts(self) -> list[str]:
        buf = self.reservoir.buffer
        return [buf[i] for i in range(len(buf))]

    @property
    def keys(self) -> torch.Tensor:
        return self.reservoir._buffer_weights

    @property
    def buffer(self) -> AvalancheDataset:
        if len(self.reservoir.buffer) == 0:
            return self._buffer  # ExemplarsBuffer's empty dataset: ReplayPlugin then skips replay
        if self._rows is None:
            self._rows = self.encode(self.texts)
        return self._rows

    def post_adapt(self, agent, exp) -> None:
        # The experience holds token rows; the run's items are the texts behind them, read
        # ``RESERVOIR_CHUNK`` at a time (a corpus's texts are never all in memory): one chunk
        # is the reservoir's update as it always was; after each of several, the buffer keeps
        # only the texts it kept, not the chunk it drew them from.
        updated = False
        for chunk in _chunks(self.new_texts(), RESERVOIR_CHUNK):
            if updated:
                self.reservoir.buffer = AvalancheDataset([self.texts])
            self.reservoir.update_from_dataset(AvalancheDataset([chunk]))
            updated = True
        if updated:
            self._rows = None
            world = world_of(agent)
            if world.distributed:  # several processes: rank 0's draw is every rank's buffer
                kept, keys = world.broadcast((self.texts, self.keys.cpu()))
                self.reservoir.buffer = AvalancheDataset([list(kept)])
                self.reservoir._buffer_weights = keys

    def resize(self, strategy, new_size: int) -> None:
        self.max_size = new_size
        self.reservoir.resize(strategy, new_size)
        self._rows = None


class MixedLengthBatches(LengthBatches):
    """Every epoch: all the new rows, and past rows drawn from a pool until they hold
    ``pool_tokens`` tokens, batched by similar length like the new rows alone.

    The pool is drawn in a fresh random order, cycled: over epochs and updates
    every buffered item comes back before any comes back twice.
    """

    def __init__(self, new_lengths: list[int] | torch.Tensor, pool_lengths: list[int] | torch.Tensor,
                 pool_tokens: float, batch_size: int, seed: int, on_drawn: Callable[[int], None]):
        super().__init__(torch.cat([torch.as_tensor(new_lengths, dtype=torch.long),
                                    torch.as_tensor(pool_lengths, dtype=torch.long)]), batch_size, seed)
        self.n_new, self.pool_tokens, self.on_drawn = len(new_lengths), pool_tokens, on_drawn
        self.queue: list[int] = []

    def draw(self) -> list[int]:
        pool = len(self.lengths) - self.n_new
        chosen, tokens = [], 0
        while tokens < self.pool_tokens and len(chosen) < 100 * pool:
            if not self.queue:
                self.queue = torch.randperm(pool, generator=self.generator).tolist()
            i = self.n_new + self.queue.pop()
            chosen.append(i)
            tokens += int(self._lengths[i])
        self.on_drawn(tokens)
        return chosen

    def epoch_rows(self) -> torch.Tensor:
        return torch.cat([torch.arange(self.n_new), torch.tensor(self.draw(), dtype=torch.long)])

    def __len__(self) -> int:
        pool = self._lengths[self.n_new:]
        expected = round(self.pool_tokens / (int(pool.sum()) / len(pool))) if len(pool) else 0
        return self.batches_for(self.n_new + expected)


class TokenShareReplay(SupervisedPlugin):
    """Replay by tokens: the update's loader holds the new rows and, each epoch, past rows
    holding ``share`` of the epoch's tokens, mixed in length-bucketed batches.

    avalanche-lib's ReplayPlugin adds a fixed number of replayed *rows* to every batch
    (ReplayDataLoader); for text that weighs a one-line item like a page, and ties the
    replayed amount to the batch size. This plugin swaps in the loader the same way
    (``before_training_exp``) and updates the storage as ReplayPlugin does.
    """

    def __init__(self, storage: "TextReservoir", share: float, on_replayed: Callable[[int], None],
                 cap: Callable[[float, int], float] | None = None, on_capped: Callable[[float], None] | None = None):
        super().__init__()
        self.storage, self.share, self.on_replayed = storage, share, on_replayed
        self.cap, self.on_capped = cap, on_capped  # the work budget: most tokens replayed per epoch

    def pool_tokens(self, strategy, new_tokens: float) -> float:
        """Past tokens replayed per epoch: ``share`` of the epoch's, within the work budget."""
        wanted = self.share / (1 - self.share) * new_tokens
        if self.cap is None:
            return wanted
        most = self.cap(new_tokens, strategy.train_epochs)
        if most >= wanted:
            return wanted
        if self.on_capped is not None:
            self.on_capped(most / (most + new_tokens) if new_tokens else 0.0)
        return most

    def before_training_exp(self, strategy, **kwargs):
        memory = self.storage.buffer
        if len(memory) == 0 or self.share <= 0:
            return  # nothing learned before (a full training): the template's own loader
        new, new_lengths = strategy.adapted_dataset, self.new_lengths(strategy)
        _, y = rows_of(memory)
        pool_lengths = (y != IGNORE_INDEX).sum(1).tolist()
        pool_tokens = self.pool_tokens(strategy, float(torch.as_tensor(new_lengths).sum()))
        if pool_tokens <= 0:
            return
        sampler = MixedLengthBatches(new_lengths, pool_lengths, pool_tokens, strategy.train_mb_size,
                                     strategy.batch_seed(), self.on_replayed)
        strategy.dataloader = strategy.loader(new.concat(memory), sampler)

    def new_lengths(self, strategy) -> list[int] | torch.Tensor:
        new = strategy.adapted_dataset
        lengths = strategy.lengths if strategy.lengths is not None else []
        return lengths if len(lengths) == len(new) else \
            [int((new[i][1] != IGNORE_INDEX).sum()) for i in range(len(new))]

    def after_training_exp(self, strategy, **kwargs):
        self.storage.post_adapt(strategy, strategy.experience)


class HistoryReplay(TokenShareReplay):
    """Token-share replay drawn from the token shards of every version of the chain
    (``core/data/shards.py``: ``History``), not from the reservoir's texts: past items in a seeded
    random order over the whole history, enough for every epoch's share, read from the maps as
    batches ask for them. The reservoir is still kept up to date (the state a version saves)."""

    def __init__(self, storage: "TextReservoir", share: float, on_replayed: Callable[[int], None],
                 history, width: int, pad_id: int, cap: Callable[[float, int], float] | None = None,
                 on_capped: Callable[[float], None] | None = None, base: str | None = None,
                 base_share: float | None = None):
        super().__init__(storage, share, on_replayed, cap, on_capped)
        self.history, self.width, self.pad_id = history, width, pad_id
        self.base, self.base_share = base, base_share  # a cap: at most this share from the full training's shard
        self.drawn = None  # the past rows this run drew (``DrawnRows``)

    def before_training_exp(self, strategy, **kwargs):
        if self.share <= 0 or self.history.items == 0:
            return
        from retain.core.learning.training import rows_dataset

        new, new_lengths = strategy.adapted_dataset, self.new_lengths(strategy)
        pool_tokens = self.pool_tokens(strategy, float(torch.as_tensor(new_lengths).sum()))
        if pool_tokens <= 0:
            return
        generator = torch.Generator().manual_seed(strategy.batch_seed())
        self.drawn = self.history.draw(pool_tokens * strategy.train_epochs, self.width, self.pad_id, generator,
                                       self.base, self.base_share)
        if len(self.drawn) == 0:
            return
        memory, pool_lengths = rows_dataset(self.drawn, self.width, self.pad_id)
        sampler = MixedLengthBatches(new_lengths, pool_lengths, pool_tokens, strategy.train_mb_size,
                                     strategy.batch_seed(), self.on_replayed)
        strategy.dataloader = strategy.loader(new.concat(memory), sampler)


class ItemReplay(ReplayPlugin):
    """ReplayPlugin updating its storage through ``post_adapt``: its own ``after_training_exp``
    calls the deprecated ``update``, whose warning avalanche forces on even when silenced."""

    def after_training_exp(self, strategy, **kwargs):
        self.storage_policy.post_adapt(strategy, strategy.experience)


# --- regularization ---------------------------------------------------------------------

class OnlineEWC(EWCPlugin):
    """EWCPlugin (online mode) whose importances outlive the process.

    The anchor is the loaded model: it *is* what EWC saved at the end of the
    previous update (the version's own weights), so only importances are stored.
    """

    def __init__(self, ewc_lambda: float, decay_factor: float, importances: Tensors):
        super().__init__(ewc_lambda, mode="online", decay_factor=decay_factor)
        self.restored = importances

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        past = strategy.clock.train_exp_counter - 1
        if past >= 0 and self.restored:
            self.importances[past] = _param_data(strategy.model, self.restored, strategy.device)
            self.saved_params[past] = copy_params_dict(strategy.model)

    def after_training_exp(self, strategy, **kwargs):
        super().after_training_exp(strategy, **kwargs)
        if self.importances:  # several processes: the same importances on every rank
            world_of(strategy).average_(p.data for p in self.importances[max(self.importances)].values())

    def latest_importances(self) -> Tensors:
        if not self.importances:
            return {}
        return {k: p.data.detach().cpu() for k, p in self.importances[max(self.importances)].items()}


class PersistentSI(SynapticIntelligencePlugin):
    """SynapticIntelligencePlugin whose importances and cumulated path integrals
    outlive the process (the anchor is again the loaded model, taken at the start).

    Also fixes SI on CPU: the plugin snapshots weights with ``param.detach().cpu()``,
    which on a CPU model is the live parameter, not a copy, so the anchor and the
    "weights before this step" move with the model and every importance is 0.
    """

    def __init__(self, si_lambda: float, eps: float, importance: Tensors, cum_trajectory: Tensors):
        super().__init__(si_lambda, eps=eps)
        self.restored = (importance, cum_trajectory)

    def before_training_exp(self, strategy, **kwargs):
        importance, cum = self.restored
        if importance:
            self.create_syn_data(strategy.model, self.ewc_data, self.syn_data, self.excluded_parameters)
            for name, imp in self.ewc_data[1].items():
                if name in importance and importance[name].numel() == imp.data.numel():
                    imp.data = importance[name].flatten().clone()
                    self.syn_data["cum_trajectory"][name].data = cum[name].flatten().clone()
        super().before_training_exp(strategy, **kwargs)
        self._own_copies(self.ewc_data[0])  # the anchor: weights at the start of the update

    def before_training_iteration(self, strategy, **kwargs):
        super().before_training_iteration(strategy, **kwargs)
        self._own_copies(self.syn_data["old_theta"])  # weights before this step

    @staticmethod
    def _own_copies(snapshots) -> None:
        for snap in snapshots.values():
            snap.data = snap.data.clone()

    def state(self) -> tuple[Tensors, Tensors]:
        return ({k: v.data.detach().cpu().clone() for k, v in self.ewc_data[1].items()},
                {k: v.data.detach().cpu().clone() for k, v in self.syn_data["cum_trajectory"].items()})


class PersistentMAS(MASPlugin):
    """MASPlugin whose importances outlive the process.

    On [batch, time, vocab] logits MASPlugin's ``norm(out, dim=1)`` runs over the
    time axis: summed and squared that way it is still the squared L2 norm of the
    output up to a constant, so the importances are right up to lambda's scale.
    """

    def __init__(self, lambda_reg: float, alpha: float, importance: Tensors):
        super().__init__(lambda_reg=lambda_reg, alpha=alpha)
        self.restored = importance

    def before_training_exp(self, strategy, **kwargs):
        super().before_training_exp(strategy, **kwargs)
        if self.restored:
            self.importance = _param_data(strategy.model, self.restored, strategy.device)
            self.params = dict(copy_params_dict(strategy.model))

    def before_backward(self, strategy, **kwargs):
        # An update whose parent carried no MAS state has nothing to protect yet;
        # MASPlugin would raise, since the clock says this is not the first experience.
        if self.importance:
            super().before_backward(strategy, **kwargs)

    def after_training_exp(self, strategy, **kwargs):
        if not self.importance:  # first MAS experience: importances of this one only
            self.params = dict(copy_params_dict(strategy.model))
            self.importance = self._get_importance(strategy)
        else:
            super().after_training_exp(strategy, **kwargs)
        # several processes: the same importances on every rank
        world_of(strategy).average_(p.data for p in self.importance.values())

    def state(self) -> Tensors:
        return {k: v.data.detach().cpu().clone() for k, v in (self.importance or {}).items()}


class _TokenLwF(LearningWithoutForgetting):
    """Distillation over the vocabulary at every real (non-padding) token position."""

    def __init__(self, alpha: float, temperature: float, teacher: torch.nn.Module | None):
        super().__init__(alpha, temperature)
        self.prev_model = teacher
        self.mask: torch.Tensor | None = None

    def _lwf_penalty(self, out, x, curr_model):
        if self.prev_model is None:
            return 0
        with torch.no_grad():
            prev = self.prev_model(x)
        vocab = range(out.size(-1))  # every token is an "active unit" of a language model
        return self._distillation_loss(out[self.mask], prev[self.mask], vocab)


class CausalLMLwF(LwFPlugin):
    """LwFPlugin for a causal LM whose teacher is the model the update started from.

    LwFPlugin fails on our data: after each experience it reads the classes seen per
    task (``dataset.task_set``), which an LM dataset has no notion of, and it would
    distill [batch, time, vocab] logits along the time axis. Here every vocabulary
    entry is a class, distillation runs per token (padding excluded), and the
    teacher is the loaded previous version, so nothing needs to be stored.
    """

    def __init__(self, alpha: float, temperature: float, teacher: torch.nn.Module | None):
        super().__init__(alpha, temperature)
        self.lwf = _TokenLwF(alpha, temperature, teacher)

    def before_backward(self, strategy, **kwargs):
        self.lwf.mask = strategy.mb_y != IGNORE_INDEX
        super().before_backward(strategy, **kwargs)

    def after_training_exp(self, strategy, **kwargs):
        # The next update's teacher is the version this one saves: no copy to keep.
        pass


# --- episodic memories (gradient projection) -------------------------------------------------

class PersistentAGEM(AGEMPlugin):
    """AGEMPlugin whose per-update memories outlive the process.

    Memories hold token rows (inputs, targets), stored trimmed of padding and padded
    to a common width when restored (AGEM samples across them in one batch). At most
    ``max_memories`` are kept: the base model's (the first) and the most recent ones.
    """

    def __init__(self, patterns_per_experience: int, sample_size: int, max_memories: int,
                 memories: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int):
        super().__init__(patterns_per_experience, sample_size)
        self.max_memories = max_memories
        width = max((x.size(1) for x, _ in memories), default=1)
        for x, y in memories:
            self.update_memory(make_dataset(*pad_to(x, y, width, pad_id)))

    def after_training_exp(self, strategy, **kwargs):
        super().after_training_exp(strategy, **kwargs)
        if len(self.buffers) > self.max_memories:
            self.buffers = self.buffers[:1] + self.buffers[len(self.buffers) - self.max_memories + 1:]

    def memories(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [rows_of(b) for b in self.buffers]


class PersistentGEM(GEMPlugin):
    """GEMPlugin whose per-update memories outlive the process.

    GEMPlugin indexes its memories by the clock's experience counter, which in a
    one-experience process is 0 or 1, not the number of past updates: here the
    counter is read as the number of memories held (the clock is put back after).
    """

    def __init__(self, patterns_per_experience: int, memory_strength: float, max_memories: int,
                 memories: list[tuple[torch.Tensor, torch.Tensor]]):
        super().__init__(patterns_per_experience, memory_strength)
        self.max_memories = max_memories
        for t, (x, y) in enumerate(memories):
            self.memory_x[t], self.memory_y[t] = x, y
            self.memory_tid[t] = torch.zeros(len(x), dtype=torch.long)

    @contextmanager
    def _clock_reads_memories(self, strategy):
        clock = strategy.clock
        real = clock.train_exp_counter
        clock.train_exp_counter = len(self.memory_x)
        try:
            yield
        finally:
            clock.train_exp_counter = real

    def before_training_iteration(self, strategy, **kwargs):
        with self._clock_reads_memories(strategy):
            super().before_training_iteration(strategy, **kwargs)

    def after_backward(self, strategy, **kwargs):
        with self._clock_reads_memories(strategy):
            super().after_backward(strategy, **kwargs)

    def after_training_exp(self, strategy, **kwargs):
        t = len(self.memory_x)
        self.update_memory(strategy.experience.dataset, t, strategy.train_mb_size)
        self.memory_x[t], self.memory_y[t] = trim(self.memory_x[t], self.memory_y[t])
        keep = sorted(self.memory_x)
        if len(keep) > self.max_memories:  # the base model's memory and the most recent ones
            keep = keep[:1] + keep[len(keep) - self.max_memories + 1:]
        self.memory_x, self.memory_y, self.memory_tid = (
            {i: d[k] for i, k in enumerate(keep)} for d in (self.memory_x, self.memory_y, self.memory_tid))

    def memories(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.memory_x[t], self.memory_y[t]) for t in sorted(self.memory_x)]
