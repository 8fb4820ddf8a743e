"""Split-Digits through retain's training code: a small MLP, its accuracy, one strategy's run.

Each experience is one ``training.fit`` call (the engine's avalanche template
and EngineLoop, with a class cross-entropy instead of the token loss), with a
freshly built strategy whose state comes from the previous experience's
``state_dict()``, exactly as between two ``retain update`` runs. Imports torch
and avalanche-lib: import it inside functions only.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F
from avalanche.models import MultiTaskModule

from .config import Config
from .scenarios import DigitsExperience, DigitsStream
from .strategy import TrainSettings

HIDDEN = 400  # two hidden layers of 400: the usual MLP of Split-MNIST studies (van de Ven et al.)


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


def train_experience(model, x, y, t, settings: TrainSettings, *, seed: int, plugins: list,
                     penalty=None, continuing: bool = False) -> list[float]:
    """One experience through ``training.fit``. Seeded so every strategy (and the avalanche
    reference) draws the same batch order; ``continuing`` starts the template's clock at
    one past experience, as the engine does for an update."""
    from .training import fit

    def start_clock(template) -> None:
        if continuing:
            template.clock.train_exp_counter = 1

    torch.manual_seed(seed)
    return fit(model, x, y, settings, device=torch.device("cpu"), pad_id=None,
               penalty=penalty or (lambda *a: None), extra_plugins=plugins,
               on_step=lambda *a: None, on_epoch=lambda *a: None, template_hook=start_clock,
               loss=F.cross_entropy, task_labels=t)


def settings_for(block) -> TrainSettings:
    # No gradient clipping: avalanche's strategies (the reference) do not clip.
    return TrainSettings(block.learning_rate, block.epochs, block.batch_size, max_seq_length=1, grad_clip=0.0)


def run_strategy(names: list[str], stream: DigitsStream, config: Config, seed: int, scratch: Path) -> dict:
    """R, the initial row and timings of one strategy (or ``full_retrain``) on the stream."""
    from .engine import Run
    from .pluginmanager import Registry, make_plugin_manager

    model = new_model(stream, seed)
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    initial = [accuracy(model, e) for e in stream.experiences]
    pm = make_plugin_manager()
    registry = Registry(pm)
    rows, stages, state = [], [], [{} for _ in names]
    train_seconds = 0.0
    for i, exp in enumerate(stream.experiences):
        t0 = time.perf_counter()
        if names == ["full_retrain"]:
            # Joint training from the same random init on every experience so far.
            model.load_state_dict(init_state)
            parts = [tensors(e, "train") for e in stream.experiences[:i + 1]]
            x, y, t = (torch.cat([p[k] for p in parts]) for k in range(3))
            train_experience(model, x, y, t, settings_for(config.full_training), seed=seed + i, plugins=[])
        else:
            run = Run(uuid.uuid4().hex[:12], "classification", config, scratch,
                      parent=None if i == 0 else f"experience {i}")
            run.model, run.device = model, torch.device("cpu")
            strategies = [registry.build("strategies", n, config) for n in names]
            settings = settings_for(config.fine_tuning)
            for s, st in zip(strategies, state):
                s.load_state_dict(st)
                s.configure(settings, run)
            run.settings = settings
            plugins = []
            for s in strategies:
                got = s.classification_plugins(run)
                if got is None:
                    return {"supported": False,
                            "reason": f"'{s.name}' has no classification variant (its plugins are "
                                      "written for token batches), so it cannot run on split-digits"}
                plugins += got
            for s in strategies:
                pm.register(s, name=f"strategy:{s.name}:{run.id}")

            def penalty(m, inputs, targets, logits, run=run):
                terms = [p for p in pm.hook.training_penalty(run=run, model=m, inputs=inputs,
                                                             targets=targets, logits=logits) if p is not None]
                return sum(terms) if terms else None
            try:
                train_experience(model, *tensors(exp, "train"), settings, seed=seed + i, plugins=plugins,
                                 penalty=penalty, continuing=i > 0)
            finally:
                for s in strategies:
                    pm.unregister(s)
            state = [s.state_dict() for s in strategies]
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        rows.append([accuracy(model, e) for e in stream.experiences])
        stages.append({"experience": exp.name, "status": "trained", "seconds": seconds})
    return {"supported": True, "R": rows, "initial": initial, "stages": stages,
            "train_seconds": train_seconds}
