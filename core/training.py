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

import math
import time
import warnings
from typing import Callable

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute
from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch.utils.data import DataLoader, TensorDataset

from . import evaluation
from .lm import IGNORE_INDEX, Rows, autocast, lm_loss, token_losses
from .retry import retry_halving_batch
from .run import FINE_TUNING, Run
from .store import fault_point
from .strategy import TrainSettings
from .world import SOLO, ShardedBatches, World


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
            progress = min(1.0, (step - warmup) / span)
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

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 50):
        self.lengths, self.batch_size, self.window = lengths, batch_size, window
        self.generator = torch.Generator().manual_seed(seed)

    def epoch_rows(self) -> list[int]:
        """The rows one epoch trains on (all of them; a subclass may draw some in)."""
        return list(range(len(self.lengths)))

    def batches_for(self, n: int) -> int:
        """How many batches ``n`` rows make (the last batch of each window may be short)."""
        w = self.batch_size * self.window
        return sum(math.ceil(min(w, n - s) / self.batch_size) for s in range(0, n, w))

    def __len__(self) -> int:
        return self.batches_for(len(self.lengths))

    def __iter__(self):
        rows = self.epoch_rows()
        order = [rows[i] for i in torch.randperm(len(rows), generator=self.generator).tolist()]
        batches = []
        for start in range(0, len(order), self.batch_size * self.window):
            chunk = sorted(order[start:start + self.batch_size * self.window], key=self.lengths.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


class LMTemplate(SupervisedTemplate):
    """avalanche's SupervisedTemplate with length-bucketed training batches.

    Plugins that bring their own loader (replay's ReplayDataLoader) replace
    this one in before_training_exp, as they would the default.
    """

    lengths: list[int] | None = None
    precision: str = "fp32"
    world: World = SOLO  # the processes training together (``core/world.py``)
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
                 penalty: Callable[..., torch.Tensor | None], on_step: Callable[[int, int, int, float], None],
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
        self.on_step(len(self.epoch_losses) + 1, self.count, self.steps_per_epoch, loss)
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
        plugins: list, penalty: Callable[..., torch.Tensor | None], on_step: Callable[[int, int, int, float], None],
        on_epoch: Callable[[int, float], None], continuing: bool, started: float | None = None,
        stopper: Callable[[EngineLoop], SupervisedPlugin] | None = None, precision: str = "fp32",
        on_time_up: Callable[[int, int, int], None] | None = None, world: World = SOLO) -> list[float]:
    """Train ``module`` on ``rows`` for ``settings.epochs``; return the mean task loss per epoch.

    ``penalty(model, inputs, targets, logits)`` returns the summed extra loss
    terms or None. ``continuing``: this is not the model's first experience.
    ``started``: when the clock of ``settings.max_seconds`` started (default: now).
    ``stopper(loop)``: a plugin run after the loop at each epoch's end (early stopping).
    ``on_time_up(epoch, step, steps)``: called where ``settings.max_seconds`` stops the training.
    ``world``: the processes training together, each on its share of every batch.
    """
    x, y = pad_to(rows.x, rows.y, settings.max_seq_length, pad_id)
    experience = benchmark_from_datasets(train=[make_dataset(x, y)]).train_stream[0]
    criterion = RecordingCriterion(world)
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    loop = EngineLoop(settings, criterion, penalty, on_step, on_epoch, started, on_time_up, world)
    after = [stopper(loop)] if stopper is not None else []
    if world.distributed:
        # avalanche-lib lists every plugin not marked as made for distributed training; here the
        # engine (core/world.py) shares what each rank must agree on, for all of them.
        for plugin in [*plugins, loop, *after]:
            plugin.supports_distributed = True
    with warnings.catch_warnings():
        # avalanche warns about its own deprecations and about running without loggers
        warnings.simplefilter("ignore")
        template = LMTemplate(model=module, optimizer=optimizer, criterion=criterion,
                              train_mb_size=settings.batch_size, train_epochs=settings.epochs,
                              eval_mb_size=settings.batch_size, device=device,
                              plugins=[*plugins, loop, *after], evaluator=None)
        template.lengths = (y != IGNORE_INDEX).sum(1).tolist()
        template.precision = precision
        template.world = world
        if continuing:
            # Each update is a fresh template, but not the model's first experience: say so, or
            # avalanche plugins that skip the first one (EWC, MAS, GEM) ignore restored state.
            template.clock.train_exp_counter = 1
        template.train(experience)
    return loop.epoch_losses


def train(run: Run, pm, judge: Callable[[bool], tuple] | None = None, world: World = SOLO) -> None:
    """Train ``run.lm`` on ``run.rows`` with the run's strategies; fills ``run.epoch_losses``.

    ``judge(last)``, when given (updates with ``fine_tuning.early_stopping``), scores and
    judges the model after every epoch: the update stops early and keeps its best
    epoch (``core/early_stopping.py``); each epoch's record is ``run.early_stopping``.

    Out of memory: the weights are restored and the run retries with half the
    batch size, down to 1 (``core/retry.py``); each retry is in ``run.oom_retries``.
    ``world``: the processes training together (``core/world.py``).
    """
    settings = run.settings
    started = time.perf_counter()
    trackers: list = []  # early stopping's record, one per attempt (out-of-memory retries)
    if judge is not None:
        judge = world.on_writer(judge)  # validators run once, on rank 0; every rank stops alike
    judges: list = []    # early stopping itself, one per attempt: its seconds

    def penalty(model, inputs, targets, logits):
        terms = [t for t in pm.hook.training_penalty(run=run, model=model, inputs=inputs, targets=targets,
                                                     logits=logits) if t is not None]
        return sum(terms) if terms else None

    def on_step(epoch: int, step: int, steps: int, loss: float) -> None:
        pm.hook.training_progress(run=run, epoch=epoch, epochs=settings.epochs, step=step, steps=steps,
                                  loss=loss)

    def on_epoch(epoch: int, loss: float) -> None:
        pm.hook.epoch_ended(run=run, epoch=epoch, loss=loss)

    def on_time_up(epoch: int, step: int, steps: int) -> None:
        block = "fine_tuning" if run.kind == FINE_TUNING else "full_training"
        kept = "the best judged epoch is kept" if judge is not None else "the weights trained until then are kept"
        pm.hook.warning_raised(run=run, message=f"training stopped at its time limit ({block}.max_seconds "
                               f"{settings.max_seconds:g} s) after step {step:,} of {steps:,} of epoch {epoch} of "
                               f"{settings.epochs}; {kept}")

    def stopper(loop: EngineLoop) -> SupervisedPlugin:
        from .early_stopping import EarlyStopping, Tracker

        stop = run.config.fine_tuning.early_stopping
        trackers.append(Tracker(stop.patience, stop.min_delta))
        # Each epoch's judgment is kept in the time reserved before max_seconds: until one is
        # measured, 4x what scoring the same texts took before training (the gate also scores
        # the drift items and samples text: measured 3.5x on the tests' tiny model).
        loop.epoch_end_seconds = 4 * run.timings.get("evaluate_before", 0.0)

        def keep(scores) -> None:  # the kept epoch's scores, if the gate can reuse them (all items)
            run.after = None if scores is None or evaluation.part(run, scores) else scores
        judges.append(EarlyStopping(trackers[-1], judge, loop, settings.epochs, keep))
        return judges[-1]

    def attempt() -> list[float]:
        run.after = None
        plugins = [p for s in run.strategies for p in s.avalanche_plugins(run)]
        return fit(run.model, run.rows, settings, device=run.device, pad_id=run.lm.pad_id, plugins=plugins,
                   penalty=penalty, on_step=on_step, on_epoch=on_epoch, continuing=run.parent is not None,
                   started=started, stopper=stopper if judge is not None else None, precision=run.precision,
                   on_time_up=on_time_up, world=world)

    def on_oom(failed: int, retry: int, error: str) -> None:
        run.oom_retries.append({"batch_size": failed, "retry_batch_size": retry, "error": error})
        pm.hook.warning_raised(run=run, message=f"out of memory at batch_size {failed} ({error}); weights "
                               f"restored, retrying with batch_size {retry}")

    pm.hook.update_started(run=run)
    run.epoch_losses = retry_halving_batch(attempt, run.model, settings, on_oom)
    run.early_stopping = trackers[-1].to_json() if trackers else None
    if judges:  # measuring after each epoch, part of "train": reported so validation's share is whole
        run.timings["judge_epochs"] = sum(sum(j.seconds) for j in judges)
