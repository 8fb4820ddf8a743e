"""Vocabulary drift: does the new data still fit the tokenizer the base was trained with?

A tokenizer is fitted to the base corpus once, by the full training; no update
can change it. When new data needs markedly more tokens per byte than the base
data did, the model sees that domain through a vocabulary that does not fit:
every text is longer, costs more to train and to run, and each token carries
less. Only a full retrain with a new tokenizer fixes that, so ``retain status``
(and the end of ``retain update``) recommends one, with the numbers.

Tokens are counted without a text's boundary tokens (``models.content_tokens``)
and bytes as UTF-8: the ratio does not depend on how the data is cut into items.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

from retain.core.storage.store import ModelStore


def tokens_per_byte(counts: dict[str, Any]) -> float | None:
    tokens, size = counts.get("tokens"), counts.get("bytes")
    return tokens / size if tokens is not None and size else None


def measure_texts(lm, texts: Iterable[str]) -> dict[str, int]:
    """{"tokens", "bytes"} of ``texts`` under ``lm``'s tokenizer, encoded a batch at a time
    (``retain status --data`` on a corpus: one batch's rows in memory, not the corpus's)."""
    from retain.core.data.spool import BATCH_ITEMS
    from retain.core.storage.models import content_tokens

    tokens = size = 0
    texts = iter(texts)
    while batch := list(itertools.islice(texts, BATCH_ITEMS)):
        tokens += content_tokens(lm.encode(batch, lm.context), len(batch))
        size += sum(len(t.encode("utf-8")) for t in batch)
    return {"tokens": tokens, "bytes": size}


def drift(store: ModelStore, root: str | None, since: list[str], pending: dict[str, int] | None,
          limit: float):
    """The ``vocabulary`` check of ``retain status``: tokens per byte of what was learned since
    the last full training ``root`` (plus ``pending`` data) against the base data's."""
    from retain.core.quality.retrain import Check

    base = tokens_per_byte(store.summary(root)["counts"]) if root else None
    if base is None:
        return Check("vocabulary", False, "the base data's tokens per byte were not recorded: vocabulary "
                     "drift not measured", {})
    tokens = size = 0
    for version in since:
        summary = store.summary(version)
        if summary["status"] != "accepted":
            continue
        counts = summary["counts"]
        tokens, size = tokens + counts.get("tokens", 0), size + counts.get("bytes", 0)
    if pending:
        tokens, size = tokens + pending.get("tokens", 0), size + pending.get("bytes", 0)
    if not size:
        return Check("vocabulary", False, f"no new data since the last full training; its base data takes "
                     f"{base:.3f} tokens per byte", {"base_tokens_per_byte": base},
                     "no new data to compare with the tokenizer")
    new = tokens / size
    rise = new / base - 1
    numbers = {"base_tokens_per_byte": base, "new_tokens_per_byte": new, "rise": rise, "threshold": limit,
               "new_bytes": size}
    what = (f"new data takes {new:.3f} tokens per byte under this tokenizer, the base data {base:.3f} "
            f"({100 * rise:+.0f}%)")
    if rise > limit:
        return Check("vocabulary", True, f"{what}: the tokenizer does not fit the new data, and no update can "
                     "change a vocabulary (a full retrain trains a new tokenizer)", numbers)
    return Check("vocabulary", False, f"{what}, within {100 * limit:.0f}%", numbers,
                 f"tokenizer fits the new data ({100 * rise:+.0f}% tokens per byte, retrain above "
                 f"+{100 * limit:.0f}%)")
