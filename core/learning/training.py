"""Step 6, train: one experience on avalanche-lib's SupervisedTemplate, for causal-LM rows.

Avalanche's datasets and plugins are built for classification (one scalar
target per sample). We hand it a generic ``AvalancheDataset`` over
``TensorDataset(inputs, targets, task)`` with the target *sequence* as ``y``
and a token-level cross-entropy as the criterion; the template, EWC, replay,
SI, MAS and (A)GEM plugins then work unchanged on next-token prediction.

This module imports avalanche-lib (seconds): the engine imports it only when
a run trains.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute
from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from avalanche.training.templates.base import _experiences_parameter_as_iterable, _group_experiences_by_stream
from torch.utils.data import DataLoader, TensorDataset

from retain.core.quality import evaluation
from retain.core.learning.lm import IGNORE_INDEX, Rows, autocast, lm_loss, token_losses
from retain.core.learning.retry import retry_halving_batch
from retain.core.run import FINE_TUNING, Run
from retain.core.storage.store import fault_point
from retain.core.learning.strategy import TrainSettings
from retain.core.runtime.world import SOLO, ShardedBatches, World


def make_dataset(x: torch.Tensor, y: torch.Tensor) -> AvalancheDataset:
    """An AvalancheDataset of (inputs, target sequence, task label 0)."""
    t = torch.zeros(len(x), dtype=torch.long)
    return AvalancheDataset(
        [TensorDataset(x, y, t)],
        data_attributes=[
            DataAttribute(t, "targets_task_labels", use_in_getitem=False),
            # The whole target row as "targets": replay buffers only need it to exist.
            DataAttribute(y, "targets", use_in_getitem=False),
        ],
    )


def rows_dataset(rows, width: int, pad_id: int) -> tuple[AvalancheDataset, torch.Tensor]:
    """``rows`` as an AvalancheDataset of rows padded to ``width``, and each row's tokens.
    A shard's rows (``core/data/shards.py``) are read from its map as batches ask for them; rows in
    memory (``Rows``) are padded as a whole, as before shards."""
    if not hasattr(rows, "dataset"):
        x, y = pad_to(rows.x, rows.y, width, pad_id)
        return make_dataset(x, y), (y != IGNORE_INDEX).sum(1)
    t = torch.zeros(len(rows), dtype=torch.long)
    data = AvalancheDataset([rows.dataset(width)], data_attributes=[
        DataAttribute(t, "targets_task_labels", use_in_getitem=False),
        DataAttribute(t, "targets", use_in_getitem=False),  # only needs to exist (see make_dataset)
    ])
    return data, rows.lengths()


def pad_to(x: torch.Tensor, y: torch.Tensor, width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad rows to a fixed width so datasets of different updates (replay) can be mixed."""
    if x.size(1) >= width:
        return x[:, :width], y[:, :width]
    extra = width - x.size(1)
    return (torch.nn.functional.pad(x, (0, extra), value=pad_id),
            torch.nn.functional.pad(y, (0, extra), value=IGNORE_INDEX))


def lr_lambda(settings: TrainSettings, total_steps: int | Callable[[], int]) -> Callable[[int], float]:
    """Linear warm-up, then constant, or cosine decay to ``min_lr_ratio`` of the peak.

    The warm-up lasts ``warmup_steps``, or ``warmup_fraction`` of the steps when no
    step count is set (a re-warm of an update whose length varies). ``total_steps``
    may be a callable: the steps that still fit a time limit, so the decay lands by then.
    """
    total = total_steps if callable(total_steps) else (lambda: total_steps)
    floor = settings.min_lr_ratio

    def factor(step: int) -> float:
        steps = total()
        warmup = settings.warmup_steps or int(round(settings.warmup_fraction * steps))
        if warmup and step < warmup:
            return (step + 1) / warmup
        if settings.schedule == "cosine":
            span = max(1, steps - warmup)
            stable = int(round((1 - settings.cooldown_fraction) * span))  # at the peak, then the cooldown
            progress = min(1.0, max(0.0, (step - warmup - stable) / max(1, span - stable)))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0
    return factor


class LengthBatches:
    """Batch sampler: shuffled batches of similar-length sequences, reshuffled every epoch.

    With purely random batches the padding to each batch's longest row costs
    ~2.5x the real tokens on paragraph-sized items (measured on the demo
    corpus); sorting within windows of 50 batches keeps the order random at
    the batch level while padding stays a few percent.
    """

    def __init__(self, lengths: list[int] | torch.Tensor, batch_size: int, seed: int, window: int = 50):
        self.lengths, self.batch_size, self.window = lengths, batch_size, window
        self.generator = torch.Generator().manual_seed(seed)
        self._lengths = torch.as_tensor(lengths, dtype=torch.long)

    def epoch_rows(self) -> list[int] | torch.Tensor | None:
        """The rows one epoch trains on: None for all of them (a subclass may draw some in)."""
        return None

    def batches_for(self, n: int) -> int:
        """How many batches ``n`` rows make (the last batch of each window may be short)."""
        w = self.batch_size * self.window
        return sum(math.ceil(min(w, n - s) / self.batch_size) for s in range(0, n, w))

    def __len__(self) -> int:
        return self.batches_for(len(self.lengths))

    def __iter__(self):
        # Tensors, not lists of rows: 8 bytes a row whatever the corpus (the order is the one a
        # stable sort of Python lists gave: the same batches for the same seed). All rows: the
        # permutation is the order (no arange to index: 2 x 17 MB at 2.2 million rows).
        rows = self.epoch_rows()
        order = torch.randperm(len(self.lengths) if rows is None else len(rows), generator=self.generator)
        if rows is not None:
            order = torch.as_tensor(rows, dtype=torch.long)[order]
        w, size = self.batch_size * self.window, self.batch_size
        starts, ends = [], []
        for start in range(0, len(order), w):
            chunk = order[start:start + w]
            order[start:start + len(chunk)] = chunk[torch.argsort(self._lengths[chunk], stable=True)]
            first = torch.arange(start, start + len(chunk), size)
            starts.append(first)
            ends.append(torch.clamp(first + size, max=start + len(chunk)))
        if not starts:
            return
        starts_t, ends_t = torch.cat(starts), torch.cat(ends)
        for part in torch.randperm(len(starts_t), generator=self.generator).split(4096):  # not one list of all
            for i in part.tolist():
                yield order[int(starts_t[i]):int(ends_t[i])].tolist()


class LMTemplate(SupervisedTemplate):
    """avalanche's SupervisedTemplate with length-bucketed training batches.

    Plugins that bring their own loader (replay's ReplayDataLoader) replace
    this one in before_training_exp, as they would the default.
    """

    lengths: list[int] | None = None
    precision: str = "fp32"
    world: World = SOLO  # the processes training together (``core/runtime/world.py``)
    ddp = None  # several processes: the model wrapped in DistributedDataParallel

    def forward(self):
        # bf16 autocast around the forward only: the loss is taken in fp32 (RecordingCriterion)
        # and the backward runs outside autocast, as torch recommends.
        with autocast(self.device, self.precision):
            if not self.world.distributed:
                return super().forward()
            if self.ddp is None:
                # Built on the first step, once the template has the model on its device. Only
                # the training forward goes through it: plugins see the plain module (EWC's and
                # MAS's parameter names), and their own backward passes sync nothing.
                from torch.nn.parallel import DistributedDataParallel

                ids = [self.device.index] if self.device.type == "cuda" else None
                self.ddp = DistributedDataParallel(self.model, device_ids=ids)
            return self.ddp(self.mb_x)

    def make_train_dataloader(self, num_workers=0, shuffle=True, pin_memory=None,
                              persistent_workers=False, drop_last=False, **kwargs):
        data = self.adapted_dataset
        lengths = self.lengths
        if lengths is None or len(lengths) != len(data):  # a plugin changed the dataset
            lengths = [int((data[i][1] != IGNORE_INDEX).sum()) for i in range(len(data))]
        self.dataloader = self.loader(data, LengthBatches(lengths, self.train_mb_size, self.batch_seed()))

    @contextlib.contextmanager
    def training(self, experience) -> Iterator[None]:
        """What avalanche's ``train(experience)`` does around the epochs (``BaseTemplate.train``),
        so that the epochs are a loop of ours (``epochs``), each one ``train_epoch``."""
        if not self._distributed_check:
            self._check_distributed_training_compatibility()
            self._distributed_check = True
        self.is_training = True
        self._stop_training = False
        self.model.train()
        self.model.to(self.device)
        self._eval_streams = _group_experiences_by_stream([_experiences_parameter_as_iterable(experience)])
        self._before_training()
        self.experience = experience
        self._before_training_exp()
        yield
        self._after_training_exp()
        self._after_training()
        self._train_cleanup()

    def train_epoch(self) -> bool:
        """One epoch, as avalanche's own loop runs it (``BaseSGDTemplate._train_exp``); False,
        having trained nothing, once a plugin or the loop has stopped the training."""
        self._before_training_epoch()
        if self._stop_training:
            self._stop_training = False
            return False
        self.training_epoch()
        self._after_training_epoch()
        return True

    @staticmethod
    def batch_seed() -> int:
        """Follows torch.manual_seed without drawing from (and so shifting) the global stream."""
        return torch.initial_seed() % (2**31 - 1)

    def loader(self, data, batch_sampler) -> DataLoader:
        """A training loader over ``data`` with the template's loader settings and the given
        batch sampler (plugins that mix rows in, like replay, build theirs with it)."""
        args = self._obtain_common_dataloader_parameters(batch_size=self.train_mb_size, shuffle=True)
        for key in ("batch_size", "shuffle", "drop_last", "sampler"):
            args.pop(key, None)
        if self.world.distributed:  # every rank draws the same batches, and trains on its share of each
            batch_sampler = ShardedBatches(batch_sampler, self.world)
        return DataLoader(data, batch_sampler=batch_sampler, **args)


class RecordingCriterion:
    """The task loss (token cross-entropy), remembered without the penalties added to it.

    In several processes each rank holds a shard of the batch: its summed token loss is
    divided by the tokens of the whole batch (all ranks), times the number of ranks that
    DDP's gradient average divides by. Dividing by its own shard's tokens instead would
    weigh a token of a short shard more, and 2 ranks would not train as 1 on the same batch
    (measured on the tests' tiny model, 2 ranks against 1: 8.5e-5 relative difference in the
    weights after an update with each rank's own mean, 5.4e-7 this way).
    ``last`` is the loss of the whole batch on every rank."""

    def __init__(self, world: World = SOLO) -> None:
        self.world = world
        self.last: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        world = self.world
        if not world.distributed:
            loss = lm_loss(logits.float(), targets)
            self.last = loss.detach()
            return loss
        summed = token_losses(logits.float(), targets).sum()
        totals = torch.stack([summed.detach().double(), (targets != IGNORE_INDEX).sum().double()])
        world.all_reduce_(totals)
        tokens = totals[1].clamp(min=1)
        self.last = (totals[0] / tokens).float()
        return summed * (world.size / tokens.float())


class EngineLoop(SupervisedPlugin):
    """Trims padding, adds hook penalties, clips, schedules and reports, around each step;
    stops at ``settings.max_seconds``.

    The schedule is built once the template has its loader (``before_training_exp``):
    plugins may have mixed rows in by then (replay), and its steps count too.
    """

    def __init__(self, settings: TrainSettings, criterion: RecordingCriterion,
                 penalty: Callable[..., torch.Tensor | None], on_step: Callable[[int, int, int, float, int], None],
                 on_epoch: Callable[[int, float], None], started: float | None = None,
                 on_time_up: Callable[[int, int, int], None] | None = None, world: World = SOLO):
        super().__init__()
        self.settings, self.criterion, self.world = settings, criterion, world
        self.on_time_up = on_time_up  # (epoch, step, steps per epoch): where max_seconds stopped it
        self.penalty, self.on_step, self.on_epoch = penalty, on_step, on_epoch
        self.epoch_losses: list[float] = []
        self.scheduler = None
        self.started = time.perf_counter() if started is None else started
        self.slowest_step = 0.0
        self.epoch_end_seconds = 0.0  # kept free before max_seconds for the work at an epoch's end
        self.out_of_time = False

    def before_training_exp(self, strategy, **kw):
        self.steps_per_epoch = len(strategy.dataloader)
        self.planned = self.fitting = self.steps_per_epoch * self.settings.epochs
        self.steps, self.step_seconds = 0, 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(strategy.optimizer,
                                                           lr_lambda(self.settings, lambda: self.fitting))

    def before_training_epoch(self, strategy, **kw):
        self.total = torch.zeros((), dtype=torch.float64)
        self.count = 0

    def before_forward(self, strategy, **kw):
        # Rows are padded to max_seq_length so replayed data can be mixed in;
        # compute only up to the longest real sequence of this batch.
        mb_y = strategy.mbatch[1]
        sampler = getattr(strategy.dataloader, "batch_sampler", None)
        if getattr(sampler, "stand_in", False):  # this rank has no rows of this batch: train on none
            mb_y = torch.full_like(mb_y, IGNORE_INDEX)
        width = int((mb_y != IGNORE_INDEX).sum(1).max().clamp(min=1))
        strategy.mbatch[0] = strategy.mbatch[0][:, :width]
        strategy.mbatch[1] = mb_y[:, :width]

    def before_backward(self, strategy, **kw):
        extra = self.penalty(strategy.model, strategy.mb_x, strategy.mb_y, strategy.mb_output)
        if extra is not None:
            strategy.loss = strategy.loss + extra

    def before_update(self, strategy, **kw):
        if self.settings.grad_clip:
            torch.nn.utils.clip_grad_norm_(strategy.model.parameters(), self.settings.grad_clip)

    def after_update(self, strategy, **kw):
        self.scheduler.step()

    def before_training_iteration(self, strategy, **kw):
        self.step_started = time.perf_counter()

    def after_training_iteration(self, strategy, **kw):
        fault_point("train-step")  # test-only: a process killed mid-update
        loss = float(self.criterion.last)
        self.total += loss
        self.count += 1
        tokens = int((strategy.mbatch[1] != IGNORE_INDEX).sum())  # this batch's trained positions
        self.on_step(len(self.epoch_losses) + 1, self.count, self.steps_per_epoch, loss, tokens)
        now = time.perf_counter()
        took = now - self.step_started
        self.slowest_step = max(self.slowest_step, took)
        self.steps += 1
        self.step_seconds += took
        limit = self.settings.max_seconds
        if not limit:
            return
        # Room for the next step and the epoch's end, with half again of each for a busy machine.
        left = limit - (now - self.started) - 1.5 * (self.slowest_step + self.epoch_end_seconds)
        # The steps that still fit, each with its share of the epochs' ends: the schedule is
        # squeezed into them, so a run cut short by its limit still ends its decay.
        per_step = 1.2 * (self.step_seconds / self.steps + self.epoch_end_seconds / self.steps_per_epoch)
        fitting = min(self.planned, self.steps + 1 + int(max(left, 0) / per_step))
        left, fitting = self.world.broadcast((left, fitting))  # rank 0's clock decides for all ranks
        if left < 0:
            # The next step would likely end past the limit: stop here (this epoch ends short).
            self.out_of_time = True
            strategy.stop_training()
            if self.on_time_up is not None:
                self.on_time_up(len(self.epoch_losses) + 1, self.count, self.steps_per_epoch)
            return
        self.fitting = fitting

    def after_training_epoch(self, strategy, **kw):
        mean = float(self.total / max(1, self.count))
        self.epoch_losses.append(mean)
        self.on_epoch(len(self.epoch_losses), mean)


def fit(module: torch.nn.Module, rows: Rows, settings: TrainSettings, *, device: torch.device, pad_id: int,
        plugins: list, penalty: Callable[..., torch.Tensor | None], on_step: Callable[[int, int, int, float, int], None],
        on_epoch: Callable[[int, float], None], continuing: bool, started: float | None = None,
        judging: "Judging | None" = None, precision: str = "fp32",
        on_time_up: Callable[[int, int, int], None] | None = None, world: World = SOLO) -> "Trained":
    """Train ``module`` on ``rows`` for ``settings.epochs`` (``epochs``, the loop).

    ``penalty(model, inputs, targets, logits)`` returns the summed extra loss
    terms or None. ``continuing``: this is not the model's first experience.
    ``started``: when the clock of ``settings.max_seconds`` started (default: now).
    ``judging``: early stopping's look after each epoch. ``on_time_up(epoch, step, steps)``:
    called where ``settings.max_seconds`` stops the training.
    ``world``: the processes training together, each on its share of every batch.
    """
    data, lengths = rows_dataset(rows, settings.max_seq_length, pad_id)
    experience = benchmark_from_datasets(train=[data]).train_stream[0]
    criterion = RecordingCriterion(world)
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    loop = EngineLoop(settings, criterion, penalty, on_step, on_epoch, started, on_time_up, world)
    if world.distributed:
        # avalanche-lib lists every plugin not marked as made for distributed training; here the
        # engine (core/runtime/world.py) shares what each rank must agree on, for all of them.
        for plugin in [*plugins, loop]:
            plugin.supports_distributed = True
    with warnings.catch_warnings():
        # avalanche warns about its own deprecations and about running without loggers
        warnings.simplefilter("ignore")
        template = LMTemplate(model=module, optimizer=optimizer, criterion=criterion,
                              train_mb_size=settings.batch_size, train_epochs=settings.epochs,
                              eval_mb_size=settings.batch_size, device=device,
                              plugins=[*plugins, loop], evaluator=None)
        template.lengths = lengths
        template.precision = precision
        template.world = world
        if continuing:
            # Each update is a fresh template, but not the model's first experience: say so, or
            # avalanche plugins that skip the first one (EWC, MAS, GEM) ignore restored state.
            template.clock.train_exp_counter = 1
        return epochs(template, experience, loop, settings.epochs, judging)


@dataclass(frozen=True)
class Judging:
    """Early stopping (``core/learning/early_stopping.py``): ``judge(last)`` scores the model as it is now
    and returns ``(scores, verdicts)``; ``last``: no epoch follows (the schedule's last, or out
    of time), whose scores the gate reuses: the whole retention set. After the others it may
    score a part (the budget). ``reserve``: the seconds kept for the first judgment before
    ``max_seconds``; ``seconds``: each judgment's, appended (out-of-memory retries included)."""

    judge: Callable[[bool], tuple]
    patience: int
    min_delta: float
    reserve: float
    seconds: list = field(default_factory=list)


@dataclass(frozen=True)
class Trained:
    """What the epochs did: each one's mean task loss; with early stopping, its record and the
    kept epoch's scores (None where the gate must score the candidate again)."""

    epoch_losses: list[float]
    early_stopping: dict[str, Any] | None = None
    kept_scores: Any = None


def epochs(template: LMTemplate, experience, loop: EngineLoop, count: int, judging: Judging | None) -> Trained:
    """The epoch loop: for each epoch, train it (avalanche's template and the strategies' plugins
    do the steps), judge it, keep the best, stop. The best epoch's weights are put back before
    the plugins' end of training (EWC's importances, ...), so what is saved is what was judged."""
    from retain.core.learning.early_stopping import Epoch, Tracker

    tracker = Tracker(judging.patience, judging.min_delta) if judging is not None else None
    snapshot, kept = None, None
    if judging is not None:
        loop.epoch_end_seconds = judging.reserve
    with template.training(experience):
        for number in range(1, count + 1):
            if not template.train_epoch():  # stopped: out of time, or by early stopping
                break
            if judging is None:
                continue
            started = time.perf_counter()
            last = number >= count or loop.out_of_time
            scores, verdicts = judging.judge(last)
            failed = [v.validator for v in verdicts if v.status == "fail"]
            epoch = Epoch(number, _mean(scores.new), _mean(scores.retention), not failed, failed,
                          loop.epoch_losses[-1], None if scores.retention is None else len(scores.retention))
            if tracker.see(epoch):
                snapshot, kept = _weights(template.model), scores
            judging.seconds.append(time.perf_counter() - started)
            loop.epoch_end_seconds = max(loop.epoch_end_seconds if number > 1 else 0.0, judging.seconds[-1])
            if (tracker.stopped or last) and tracker.best is not epoch and snapshot is not None:
                template.model.load_state_dict(snapshot)
            if tracker.stopped:
                template.stop_training()
    # A plugin that changed the weights after the kept epoch was judged (its end of training):
    # those scores are not the candidate's, and the gate scores the candidate again.
    if snapshot is not None and _changed(template.model, snapshot):
        kept = None
    return Trained(loop.epoch_losses, tracker.to_json() if tracker is not None else None, kept)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _changed(model: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return any(not torch.equal(now[k].detach().cpu(), v) for k, v in snapshot.items())


def _mean(t) -> float | None:
    return None if t is None else float(t.mean())


def train(run: Run, pm, registry=None, world: World = SOLO) -> None:
    """Train ``run.lm`` on ``run.rows`` with the run's strategies; fills ``run.epoch_losses``.

    With ``registry`` (updates with ``fine_tuning.early_stopping``) the gate's validators judge
    the model after every epoch: the update stops early and keeps its best epoch
    (``epochs``); each epoch's record is ``run.early_stopping``.

    Out of memory: the weights are restored and the run retries with half the
    batch size, down to 1 (``core/learning/retry.py``); each retry is in ``run.oom_retries``.
    ``world``: the processes training together (``core/runtime/world.py``).
    """
    settings, view = run.settings, run.view()
    started = time.perf_counter()
    judging = _judging(run, registry, world) if registry is not None else None
    retries: list[dict] = []

    def penalty(model, inputs, targets, logits):
        terms = [t for t in pm.hook.training_penalty(run=view, model=model, inputs=inputs, targets=targets,
                                                     logits=logits) if t is not None]
        return sum(terms) if terms else None

    def on_step(epoch: int, step: int, steps: int, loss: float, tokens: int) -> None:
        pm.hook.training_progress(run=view, epoch=epoch, epochs=settings.epochs, step=step, steps=steps,
                                  loss=loss, tokens=tokens)

    def on_epoch(epoch: int, loss: float) -> None:
        pm.hook.epoch_ended(run=view, epoch=epoch, loss=loss)

    def on_time_up(epoch: int, step: int, steps: int) -> None:
        block = "fine_tuning" if run.kind == FINE_TUNING else "full_training"
        kept = "the best judged epoch is kept" if judging is not None else "the weights trained until then are kept"
        pm.hook.warning_raised(run=view, message=f"training stopped at its time limit ({block}.max_seconds "
                               f"{settings.max_seconds:g} s) after step {step:,} of {steps:,} of epoch {epoch} of "
                               f"{settings.epochs}; {kept}")

    def attempt() -> Trained:
        plugins = [p for s in run.strategies for p in s.avalanche_plugins(view)]
        return fit(run.model, run.rows, settings, device=run.device, pad_id=run.lm.pad_id, plugins=plugins,
                   penalty=penalty, on_step=on_step, on_epoch=on_epoch, continuing=run.parent is not None,
                   started=started, judging=judging, precision=run.precision, on_time_up=on_time_up,
                   world=world)

    def on_oom(failed: int, retry: int, error: str) -> None:
        retries.append({"batch_size": failed, "retry_batch_size": retry, "error": error})
        pm.hook.warning_raised(run=view, message=f"out of memory at batch_size {failed} ({error}); weights "
                               f"restored, retrying with batch_size {retry}")

    pm.hook.update_started(run=view)
    run.after = None
    try:
        trained = retry_halving_batch(attempt, run.model, settings, on_oom)
    finally:
        run.oom_retries += retries
    run.epoch_losses, run.early_stopping = trained.epoch_losses, trained.early_stopping
    kept = trained.kept_scores  # the kept epoch's scores, if the gate can reuse them (all items)
    run.after = None if kept is None or evaluation.part(run, kept) else kept
    for strategy in run.strategies:  # what they counted while training (replay's tokens)
        run.counts.update(strategy.counts())
    if judging is not None:  # measuring after each epoch, part of "train": reported so validation's share is whole
        run.timings["judge_epochs"] = sum(judging.seconds)


def _judging(run: Run, registry, world: World) -> Judging:
    """Early stopping's look after each epoch: the model's scores and the gate's verdicts
    (``gate.judge_epoch``), run by rank 0 alone in several processes (every rank stops alike)."""
    from retain.core.quality.gate import judge_epoch

    def judge(last: bool) -> tuple:
        return judge_epoch(registry, run.config, run, last)
    stop = run.config.fine_tuning.early_stopping
    # Each epoch's judgment is kept in the time reserved before max_seconds: until one is
    # measured, 4x what scoring the same texts took before training (the gate also scores
    # the drift items and samples text: measured 3.5x on the tests' tiny model).
    return Judging(world.on_writer(judge), stop.patience, stop.min_delta,
                   4 * run.timings.get("evaluate_before", 0.0))
