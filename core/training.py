"""One training experience on avalanche-lib's SupervisedTemplate, for causal-LM batches.

Avalanche's datasets and plugins are built for classification (one scalar
target per sample). We hand it a generic ``AvalancheDataset`` over
``TensorDataset(inputs, targets, task)`` with the target *sequence* as ``y``
and a token-level cross-entropy as the criterion; the template, EWC, replay,
SI, MAS and (A)GEM plugins then work unchanged on next-token prediction.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import torch
from torch.utils.data import TensorDataset

from .model import IGNORE_INDEX, lm_loss
from .strategy import TrainSettings


def make_dataset(x: torch.Tensor, y: torch.Tensor, task_labels: torch.Tensor | None = None):
    """An AvalancheDataset of (inputs, target sequence, task label: 0 unless given per row)."""
    from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute

    t = torch.zeros(len(x), dtype=torch.long) if task_labels is None else task_labels.long()
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


class _RecordingCriterion:
    """The task loss (token-level cross-entropy by default), remembered without penalties."""

    def __init__(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lm_loss) -> None:
        self.loss_fn = loss_fn
        self.last: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(logits, targets)
        self.last = loss.detach()
        return loss


def lr_lambda(settings: TrainSettings, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if settings.warmup_steps and step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        if settings.schedule == "cosine":
            span = max(1, total_steps - settings.warmup_steps)
            progress = min(1.0, (step - settings.warmup_steps) / span)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
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

    def __len__(self) -> int:
        n, w = len(self.lengths), self.batch_size * self.window
        return sum(math.ceil(min(w, n - s) / self.batch_size) for s in range(0, n, w))

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        batches = []
        for start in range(0, len(order), self.batch_size * self.window):
            chunk = sorted(order[start:start + self.batch_size * self.window], key=self.lengths.__getitem__)
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


def _lm_template_class():
    from avalanche.training.templates import SupervisedTemplate
    from torch.utils.data import DataLoader

    class LMTemplate(SupervisedTemplate):
        """avalanche's SupervisedTemplate with length-bucketed training batches.

        Plugins that bring their own loader (replay's ReplayDataLoader) replace
        this one in before_training_exp, as they would the default.
        """

        lengths: list[int] | None = None

        def make_train_dataloader(self, num_workers=0, shuffle=True, pin_memory=None,
                                  persistent_workers=False, drop_last=False, **kwargs):
            data = self.adapted_dataset
            lengths = self.lengths
            if lengths is None or len(lengths) != len(data):  # a plugin changed the dataset
                lengths = [int((data[i][1] != IGNORE_INDEX).sum()) for i in range(len(data))]
            args = self._obtain_common_dataloader_parameters(
                batch_size=self.train_mb_size, num_workers=num_workers, shuffle=shuffle,
                pin_memory=pin_memory, persistent_workers=persistent_workers, drop_last=drop_last)
            for key in ("batch_size", "shuffle", "drop_last", "sampler"):
                args.pop(key, None)
            # Follows torch.manual_seed without drawing from (and so shifting) the global stream.
            seed = torch.initial_seed() % (2**31 - 1)
            self.dataloader = DataLoader(data, batch_sampler=LengthBatches(lengths, self.train_mb_size, seed),
                                         **args)

    return LMTemplate


def fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, settings: TrainSettings, *,
        device: torch.device, pad_id: int | None, penalty: Callable[..., torch.Tensor | None],
        extra_plugins: list, on_step: Callable[[int, int, float], None],
        on_epoch: Callable[[int, float], None], template_hook: Callable[[Any], None] | None = None,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        task_labels: torch.Tensor | None = None) -> list[float]:
    """Train ``model`` on (x, y) for ``settings.epochs``; return the mean task loss per epoch.

    ``penalty(model, inputs, targets, logits)`` returns the summed extra loss
    terms (from the ``training_penalty`` hook) or None.

    By default (x, y) are token sequences: padded to ``max_seq_length`` with
    ``pad_id``, trimmed per batch, token cross-entropy. A ``loss(outputs,
    targets)`` says they are not (``retain compare``'s classification stream):
    rows are used as given, with per-row ``task_labels`` if any.
    """
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.core import SupervisedPlugin
    from avalanche.training.templates import SupervisedTemplate

    sequences = loss is None
    if sequences:
        x, y = pad_to(x, y, settings.max_seq_length, pad_id)
    experience = benchmark_from_datasets(train=[make_dataset(x, y, task_labels)]).train_stream[0]
    criterion = _RecordingCriterion() if sequences else _RecordingCriterion(loss)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(x) / settings.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(settings, steps_per_epoch * settings.epochs))
    epoch_losses: list[float] = []

    class EngineLoop(SupervisedPlugin):
        """Trims padding, adds hook penalties, clips, schedules and reports."""

        def before_training_epoch(self, strategy, **kw):
            self.total = torch.zeros((), dtype=torch.float64)
            self.count = 0

        def before_forward(self, strategy, **kw):
            if not sequences:
                return
            # Rows are padded to max_seq_length so replayed data can be mixed in;
            # compute only up to the longest real sequence of this batch.
            mb_y = strategy.mbatch[1]
            width = int((mb_y != IGNORE_INDEX).sum(1).max().clamp(min=1))
            strategy.mbatch[0] = strategy.mbatch[0][:, :width]
            strategy.mbatch[1] = mb_y[:, :width]

        def before_backward(self, strategy, **kw):
            extra = penalty(strategy.model, strategy.mb_x, strategy.mb_y, strategy.mb_output)
            if extra is not None:
                strategy.loss = strategy.loss + extra

        def before_update(self, strategy, **kw):
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(strategy.model.parameters(), settings.grad_clip)

        def after_update(self, strategy, **kw):
            scheduler.step()

        def after_training_iteration(self, strategy, **kw):
            loss = float(criterion.last)
            self.total += loss
            self.count += 1
            on_step(len(epoch_losses) + 1, self.count, loss)

        def after_training_epoch(self, strategy, **kw):
            mean = float(self.total / max(1, self.count))
            epoch_losses.append(mean)
            on_epoch(len(epoch_losses), mean)

    with warnings.catch_warnings():
        # avalanche warns about its own deprecations and about running without loggers
        warnings.simplefilter("ignore")
        # Rows that are not sequences have no lengths to bucket: avalanche's own template and loader.
        template_class = _lm_template_class() if sequences else SupervisedTemplate
        template = template_class(
            model=model, optimizer=optimizer, criterion=criterion,
            train_mb_size=settings.batch_size, train_epochs=settings.epochs,
            eval_mb_size=settings.batch_size, device=device,
            plugins=[*extra_plugins, EngineLoop()], evaluator=None,
        )
        if sequences:
            template.lengths = (y != IGNORE_INDEX).sum(1).tolist()
        if template_hook is not None:
            template_hook(template)
        template.train(experience)
    return epoch_losses
