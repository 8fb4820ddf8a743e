"""The ``split-digits`` scenario of ``retain compare``: strategies on a classification stream.

scikit-learn's ``digits`` (1,797 8x8 images, shipped with scikit-learn, no
download) in 5 experiences of 2 classes, the small-scale sibling of
Split-MNIST; class- or task-incremental. A small MLP trains on avalanche-lib's
own ``SupervisedTemplate`` with a class cross-entropy; each experience builds
the strategies afresh, with their state from the previous experience's
``state_dict()``, exactly as between two ``retain update`` runs.

The scenario brings what classification needs: retain's strategies are
written for token batches, so each is run here only where its mechanism fits
class rows (``row_plugins``): strategies that only set the learning rate and
schedule, ``ewc`` (its plugin reads only the model, the batches and the loss),
and ``replay`` (a reservoir of rows instead of texts). The others are
reported as not supported, with the reason.

Imports torch and avalanche-lib: registered through ``retain.compare.scenarios``,
which imports it only when the scenario runs.
"""

from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.utils import AvalancheDataset, DataAttribute
from avalanche.core import SupervisedPlugin
from avalanche.models import MultiTaskModule
from avalanche.training.storage_policy import ReservoirSamplingBuffer
from avalanche.training.templates import SupervisedTemplate
from torch.utils.data import TensorDataset

from retain.core.config import Config
from retain.core.errors import ConfigError
from retain.core.learning.strategy import Strategy, TrainSettings

FULL_RETRAIN = "full_retrain"
# Split-Digits training defaults (the MLP's, not the LM's); --epochs and --set override them.
DIGITS_DEFAULTS = ["device=cpu", "full_training.learning_rate=0.001", "fine_tuning.learning_rate=0.0001",
                   "full_training.epochs=10", "fine_tuning.epochs=10", "full_training.batch_size=32",
                   "fine_tuning.batch_size=32"]
HIDDEN = 400  # two hidden layers of 400: the usual MLP of Split-MNIST studies (van de Ven et al.)


@dataclass
class DigitsExperience:
    name: str
    classes: list[int]
    task: int
    x_train: Any  # numpy float32 [n, 64], pixel values scaled to [0, 1]
    y_train: Any  # numpy int64 [n]
    x_test: Any
    y_test: Any


@dataclass
class DigitsStream:
    setting: str                    # "class" or "task" incremental
    experiences: list[DigitsExperience]

    name = "split-digits"
    metric = "accuracy"
    higher_is_better = True

    old_is_base = False    # "old" averages the experiences before the last one
    fwt_from = 1

    def fingerprints(self) -> dict[str, dict[str, str]]:
        from retain.compare.text import fingerprint

        return {e.name: {"train": fingerprint(e.x_train, e.y_train), "test": fingerprint(e.x_test, e.y_test)}
                for e in self.experiences}

    def describe(self) -> list[dict]:
        return [{"name": e.name, "classes": e.classes, "task": e.task, "train": len(e.y_train),
                 "test": len(e.y_test)} for e in self.experiences]

    @property
    def task_classes(self) -> list[list[int]] | None:
        """Per task, the classes its head may answer (task-incremental only)."""
        return [e.classes for e in self.experiences] if self.setting == "task" else None


def split_digits(setting: str = "class", *, seed: int = 0, test_fraction: float = 0.3) -> DigitsStream:
    """Split-Digits: classes (0,1), (2,3), ..., (8,9), one experience each, a stratified
    seeded train/test split. Task-incremental gives experience k the task label k."""
    if setting not in ("class", "task"):
        raise ConfigError(f"--setting must be 'class' or 'task', got {setting!r}")
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    experiences = []
    for k in range(5):
        classes = [2 * k, 2 * k + 1]
        tr, te = np.isin(y_tr, classes), np.isin(y_te, classes)
        experiences.append(DigitsExperience(f"digits {classes[0]}-{classes[1]}", classes,
                                            k if setting == "task" else 0,
                                            x_tr[tr], y_tr[tr], x_te[te], y_te[te]))
    return DigitsStream(setting, experiences)


class DigitsMLP(MultiTaskModule):
    """64 -> 400 -> 400 -> 10, ReLU. Task-incremental: one 2-class head per task, as a
    mask over the shared 10-way output (logits of other tasks' classes set to -1e4, finite
    so distillation losses stay finite); targets stay the digit labels."""

    def __init__(self, task_classes: list[list[int]] | None = None, n_features: int = 64, n_classes: int = 10):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(n_features, HIDDEN), torch.nn.ReLU(),
                                        torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU())
        self.head = torch.nn.Linear(HIDDEN, n_classes)
        allowed = None
        if task_classes is not None:
            allowed = torch.zeros(len(task_classes), n_classes, dtype=torch.bool)
            for t, classes in enumerate(task_classes):
                allowed[t, classes] = True
        self.register_buffer("allowed", allowed, persistent=False)

    def adaptation(self, experience) -> None:
        # Fixed heads: nothing to grow (and fit builds the optimizer before the template adapts).
        pass

    def forward(self, x: torch.Tensor, task_labels=None) -> torch.Tensor:
        logits = self.head(self.body(x))
        if self.allowed is None or task_labels is None:
            return logits
        if isinstance(task_labels, int):
            task_labels = torch.full((len(x),), task_labels, dtype=torch.long, device=x.device)
        return logits.masked_fill(~self.allowed[task_labels], -1e4)

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.forward(x, task_label)


def tensors(exp: DigitsExperience, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(getattr(exp, f"x_{split}"))
    y = torch.from_numpy(getattr(exp, f"y_{split}"))
    return x, y, torch.full((len(x),), exp.task, dtype=torch.long)


@torch.no_grad()
def accuracy(model: torch.nn.Module, exp: DigitsExperience) -> float:
    was_training = model.training
    model.eval()
    x, y, t = tensors(exp, "test")
    correct = int((model(x, t).argmax(1) == y).sum())
    model.train(was_training)
    return correct / len(y)


def new_model(stream: DigitsStream, seed: int) -> DigitsMLP:
    torch.manual_seed(seed)
    return DigitsMLP(stream.task_classes)


def make_dataset(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> AvalancheDataset:
    """(features, class, task) rows as an AvalancheDataset with class and task attributes."""
    return AvalancheDataset([TensorDataset(x, y, t)], data_attributes=[
        DataAttribute(t, "targets_task_labels", use_in_getitem=False),
        DataAttribute(y, "targets", use_in_getitem=False)])


class Penalty(SupervisedPlugin):
    """The ``training_penalty`` hook's terms added to the loss, as the engine adds them."""

    def __init__(self, penalty):
        super().__init__()
        self.penalty = penalty

    def before_backward(self, strategy, **kw):
        extra = self.penalty(strategy.model, strategy.mb_x, strategy.mb_y, strategy.mb_output)
        if extra is not None:
            strategy.loss = strategy.loss + extra


def train_experience(model, x, y, t, settings: TrainSettings, *, seed: int, plugins: list,
                     penalty=None, continuing: bool = False) -> None:
    """One experience on avalanche's SupervisedTemplate: AdamW at the run's learning rate,
    no gradient clipping (avalanche's reference strategies do not clip). Seeded so every
    strategy (and the avalanche reference) draws the same batch order; ``continuing``
    starts the template's clock at one past experience, as the engine does for an update."""
    torch.manual_seed(seed)
    experience = benchmark_from_datasets(train=[make_dataset(x, y, t)]).train_stream[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    extra = [Penalty(penalty)] if penalty is not None else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # avalanche's own deprecations, no loggers
        template = SupervisedTemplate(model=model, optimizer=optimizer, criterion=F.cross_entropy,
                                      train_mb_size=settings.batch_size, train_epochs=settings.epochs,
                                      eval_mb_size=settings.batch_size, device=torch.device("cpu"),
                                      plugins=[*plugins, *extra], evaluator=None)
        if continuing:
            template.clock.train_exp_counter = 1
        template.train(experience)


def settings_for(block) -> TrainSettings:
    return TrainSettings(block.learning_rate, block.epochs, block.batch_size, max_seq_length=1, grad_clip=0.0)


# Strategies whose avalanche plugins read only the model, the batches and the loss: class rows fit.
ROW_AGNOSTIC = {"ewc"}


def row_plugins(strategy: Strategy, run, buffers: dict[str, Any]) -> list | None:
    """avalanche plugins that give ``strategy``'s mechanism on class rows, or None if it has none."""
    if type(strategy).avalanche_plugins is Strategy.avalanche_plugins:
        return []  # it only configures the learning rate and schedule (and hooks): fits any rows
    if strategy.name in ROW_AGNOSTIC:
        return strategy.avalanche_plugins(run)
    if strategy.name == "replay":
        from retain.strategies.adapters import ItemReplay

        # The same reservoir sampling as the text replay, over the rows themselves; the buffer
        # lives for the whole stream (this process), as a version would carry it. Every image
        # is one row of the same size, so a share of the tokens is a share of the rows: avalanche's
        # ReplayPlugin, with share / (1 - share) replayed rows per new row in each batch.
        o = strategy.options
        if o.share == 0:
            return []
        buffer = buffers.setdefault("replay", ReservoirSamplingBuffer(o.buffer_size))
        per_batch = max(1, round(o.per_new * run.settings.batch_size))
        return [ItemReplay(mem_size=o.buffer_size, batch_size_mem=per_batch, storage_policy=buffer)]
    return None


class DigitsScenario:
    """Split-Digits (scikit-learn digits, 5 x 2 classes), class- or task-incremental."""

    def build(self, request, registry) -> tuple[DigitsStream, Config]:
        from retain.compare.text import scenario_config

        fraction = 0.3 if request.test_fraction is None else request.test_fraction
        stream = split_digits(request.setting, seed=request.seed, test_fraction=fraction)
        extra = list(DIGITS_DEFAULTS)
        if request.epochs:
            extra += [f"full_training.epochs={request.epochs}", f"fine_tuning.epochs={request.epochs}"]
        return stream, scenario_config(request, None, extra)

    def run(self, names: list[str], stream: DigitsStream, config: Config, seed: int, scratch: Path) -> dict:
        """R, the initial row and timings of one strategy (or ``full_retrain``) on the stream."""
        from retain.core.pluginmanager import Registry, make_plugin_manager
        from retain.core.run import Run

        model = new_model(stream, seed)
        init_state = {k: v.clone() for k, v in model.state_dict().items()}
        initial = [accuracy(model, e) for e in stream.experiences]
        pm = make_plugin_manager()
        registry = Registry.of(pm)
        rows, stages, state, buffers = [], [], [{} for _ in names], {}
        train_seconds = 0.0
        for i, exp in enumerate(stream.experiences):
            t0 = time.perf_counter()
            if names[0] in (FULL_RETRAIN, f"{FULL_RETRAIN}_keep"):  # no tokenizer: the same retrain
                # Joint training from the same random init on every experience so far.
                model.load_state_dict(init_state)
                parts = [tensors(e, "train") for e in stream.experiences[:i + 1]]
                x, y, t = (torch.cat([p[k] for p in parts]) for k in range(3))
                train_experience(model, x, y, t, settings_for(config.full_training), seed=seed + i, plugins=[])
            else:
                run = Run(uuid.uuid4().hex[:12], "classification", config, scratch,
                          parent=None if i == 0 else f"experience {i}", device=torch.device("cpu"))
                run.settings = settings_for(config.fine_tuning)
                strategies = [registry.build("strategies", n, config) for n in names]
                plugins = []
                for s, st in zip(strategies, state):
                    s.load_state_dict(st)
                    s.configure(run.settings, run)
                    got = row_plugins(s, run, buffers)
                    if got is None:
                        return {"supported": False,
                                "reason": f"'{s.name}' has no classification variant (its plugins are "
                                          "written for token batches), so it cannot run on split-digits"}
                    plugins += got
                self._train_with_hooks(pm, run, model, exp, strategies, plugins, seed + i, continuing=i > 0)
                state = [s.state_dict() for s in strategies]
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            rows.append([accuracy(model, e) for e in stream.experiences])
            stages.append({"experience": exp.name, "status": "trained", "seconds": seconds})
        return {"supported": True, "R": rows, "initial": initial, "stages": stages,
                "train_seconds": train_seconds}

    @staticmethod
    def _train_with_hooks(pm, run, model, exp, strategies, plugins, seed: int, continuing: bool) -> None:
        for s in strategies:  # strategies are plugins while they train: their training_penalty fires
            pm.register(s, name=f"strategy:{s.name}:{run.id}")

        def penalty(m, inputs, targets, logits):
            terms = [p for p in pm.hook.training_penalty(run=run, model=m, inputs=inputs, targets=targets,
                                                         logits=logits) if p is not None]
            return sum(terms) if terms else None
        try:
            train_experience(model, *tensors(exp, "train"), run.settings, seed=seed, plugins=plugins,
                             penalty=penalty, continuing=continuing)
        finally:
            for s in strategies:
                pm.unregister(s)
