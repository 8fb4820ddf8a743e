"""Streams of experiences for ``retain compare``: what every strategy is shown, in order.

- ``text``: one experience per ``--data`` source (a file or a folder), each split
  into items to train on and held-out items to test on.
- ``daily``: the new data cut into days of N items, a share of them duplicates
  (of base items, earlier days, or the same day; some case/spacing variants),
  as in the seed's daily updates ("45 items, 12 duplicates skipped").
- ``split-digits``: scikit-learn's ``digits`` (1,797 8x8 images, shipped with
  scikit-learn, no download) in 5 experiences of 2 classes, the small-scale
  sibling of Split-MNIST; class- or task-incremental.

Streams are plain data (items, numpy arrays): they are built once in the
parent process and handed to every worker, so all strategies see the same
bytes; ``fingerprint`` hashes what each worker received.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, SourceError
from .items import Item


@dataclass
class TextExperience:
    name: str
    train: list[Item]
    test: list[Item]
    injected_duplicates: int = 0


@dataclass
class TextStream:
    """Experience 0 is the base model itself (its held-out items are the test data)."""

    name: str                      # "text" or "daily"
    experiences: list[TextExperience]
    base_items: list[Item] = field(default_factory=list)  # full_retrain's base data (may be empty)
    rejected: int = 0              # input records the sources or preprocessors refused

    metric = "loss"
    higher_is_better = False


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

    @property
    def task_classes(self) -> list[list[int]] | None:
        """Per task, the classes its head may answer (task-incremental only)."""
        return [e.classes for e in self.experiences] if self.setting == "task" else None


def fingerprint(*parts: Any) -> str:
    """sha256 over texts, items or arrays: what a worker actually trains and tests on."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (list, tuple)):
            for x in part:
                h.update((x.text if isinstance(x, Item) else str(x)).encode("utf-8"))
                h.update(b"\x00")
        elif hasattr(part, "tobytes"):
            h.update(str(part.dtype).encode() + str(part.shape).encode() + part.tobytes())
        else:
            h.update(str(part).encode("utf-8"))
        h.update(b"\x01")
    return h.hexdigest()


def split_test(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, test): a seeded sample held out, at least one item of each when there are two."""
    n = len(items)
    k = int(round(n * fraction))
    if fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    chosen = set(random.Random(seed).sample(range(n), k)) if k else set()
    return ([it for i, it in enumerate(items) if i not in chosen],
            [it for i, it in enumerate(items) if i in chosen])


def _variant(text: str) -> str:
    """The same item to the exact deduper: another case and spacing."""
    return "  " + text.upper().replace(" ", "   ")


def text_stream(groups: list[tuple[str, list[Item]]], *, test_fraction: float, seed: int) -> list[TextExperience]:
    """One experience per (name, items) group, each split into train and held-out test items."""
    out = []
    for k, (name, items) in enumerate(groups):
        train, test = split_test(items, test_fraction, seed + k)
        if not train or not test:
            raise SourceError(f"experience '{name}' has {len(items)} usable items: need at least 2 "
                              "(some to train on, some held out to test on)")
        out.append(TextExperience(name, train, test))
    return out


def daily_stream(items: list[Item], per_day: int, dup_share: float, *, test_fraction: float, seed: int,
                 base_items: list[Item] | None = None, days: int | None = None) -> list[TextExperience]:
    """Days of ``per_day`` items, ``round(per_day * dup_share)`` of them duplicates.

    Duplicates copy (exactly, or as a case/spacing variant) items already
    trained on: base items, earlier days' items, or this day's own. Held-out
    test items are never copied, so no test item is ever trained on.
    """
    if per_day < 2:
        raise ConfigError(f"--daily must be >= 2 items per day, got {per_day}")
    if not 0 <= dup_share < 1:
        raise ConfigError(f"--dup-share must be in [0, 1), got {dup_share}")
    n_dupes = int(round(per_day * dup_share))
    fresh_per_day = per_day - n_dupes
    n_days = len(items) // fresh_per_day
    if days is not None:
        n_days = min(n_days, days)
    if n_days < 1:
        raise SourceError(f"--daily {per_day} with --dup-share {dup_share} needs {fresh_per_day} new "
                          f"items per day; the data has {len(items)}")
    rng = random.Random(seed)
    seen: list[Item] = list(base_items or [])
    out = []
    for d in range(n_days):
        fresh = items[d * fresh_per_day:(d + 1) * fresh_per_day]
        train, test = split_test(fresh, test_fraction, seed + d)
        pool = seen + train
        dupes = []
        for i in range(n_dupes):
            src = rng.choice(pool)
            text = _variant(src.text) if i % 2 else src.text
            dupes.append(Item(text, "daily-duplicate", src.file, src.line, {"duplicate_of": src.origin}))
        day = train + dupes
        rng.shuffle(day)
        out.append(TextExperience(f"day{d + 1}", day, test, injected_duplicates=n_dupes))
        seen += train
    return out


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
