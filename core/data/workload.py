"""How big a run's work is, and its bounds, said before the work starts.

    cap_item_tokens  an item over ``max_item_tokens`` (of the run's block) is not trained on,
                     nor held out: it becomes a reject, in rejects.jsonl with its size and the
                     key to raise, and a warning says how many went (one record of millions
                     of tokens is a parsing mistake far more often than a document);
                     ``cap_long_items`` finds the longest before they are encoded whole
    announce         work far beyond the model's usual size (``FAR_BEYOND`` times the tokens
                     of its recent updates, or of its full training) is a warning with the
                     numbers (items, tokens, sequences, epochs, steps) and the time limit

``max_seconds`` (same block) bounds the training itself (``core/learning/training.py``).
"""

from __future__ import annotations

import itertools
import statistics
from typing import Callable

from retain.core.errors import SourceError
from retain.core.data.items import Reject
from retain.core.run import FINE_TUNING, Run
from retain.core.storage.store import ModelStore
from retain.core.wording import plural

FAR_BEYOND = 10          # times the usual tokens: announced
MIN_ANNOUNCED = 10_000   # tokens: less is never "far beyond", whatever the usual
RECENT = 5               # the usual size of an update: the median of the last RECENT updates
PIECE = 1 << 16          # characters: a long item's tokens are counted this many at a time


def block_name(run: Run) -> str:
    return "fine_tuning" if run.kind == FINE_TUNING else "full_training"


def cap_long_items(run: Run, store: ModelStore, warn: Callable[[str], None]) -> None:
    """Before tokenizing, with the tokenizer there is (an update's, an import's): an item that
    may be over the cap (a token is at least a byte, a character at most 4) is counted in
    pieces, stopping past the cap, so a record of millions of tokens is never encoded whole
    (one 10 MB CSV field: 8.5 million tokens, 3.3 GB and minutes to encode and drop)."""
    lm = run.base.lm if run.base is not None else run.lm
    name = block_name(run)
    cap = getattr(run.config, name).max_item_tokens
    if lm is None or not cap:
        return
    sizes = []
    for place, items in (("items", run.items), ("holdout", run.holdout)):
        for i, item in _maybe_long(items, cap):
            if 4 * len(item.text) > cap and (n := _tokens_up_to(lm, item.text, cap)) > cap:
                sizes.append((n, f"at least {n:,}", item, (place, i)))
    _reject(run, store, sizes, cap, warn)


def _maybe_long(items, cap: int):
    """(position, item) of the items that may hold more than ``cap`` tokens: of a spool's view,
    only those whose text has over cap / 4 bytes (a character is at least a byte) are read."""
    text_bytes = getattr(items, "text_bytes", None)
    if text_bytes is None:
        return enumerate(items)
    positions = [int(i) for i in (text_bytes() * 4 > cap).nonzero()[0]]
    return zip(positions, items.take(positions))


def _tokens_up_to(lm, text: str, cap: int) -> int:
    """``text``'s tokens, counted in pieces of ``PIECE`` characters until past ``cap``."""
    counted = 0
    for start in range(0, len(text), PIECE):
        counted += tokens_per_item(lm.encode([text[start:start + PIECE]], 4096), 1)[0]
        if counted > cap:
            break
    return counted


def cap_item_tokens(run: Run, store: ModelStore, warn: Callable[[str], None]) -> dict:
    """Drop the items (trained or held out) over the cap from the run, as rejects. Call after
    ``prepare_model``: ``run.rows`` are the trained items' rows, ``owner`` their item."""
    from retain.core.storage.models import content_tokens

    cap = getattr(run.config, block_name(run)).max_item_tokens
    if not cap or not run.items:
        return {}
    trained = tokens_per_item(run.rows, len(run.items))
    over = {i for i, n in enumerate(trained) if n > cap}
    held = [(n, f"{n:,}", item, ("holdout", i)) for i, (n, item) in enumerate(zip(_held_out_tokens(run), run.holdout))
            if n > cap]
    if not over and not held:
        return {}
    run.rows = run.rows.without(over) if hasattr(run.rows, "without") else _without(run.rows, over)
    over_bytes = sum(len(run.items[i].text.encode("utf-8")) for i in over)
    _reject(run, store, [(trained[i], f"{trained[i]:,}", run.items[i], ("items", i)) for i in sorted(over)] + held,
            cap, warn)
    run.counts.update(tokens=content_tokens(run.rows, len(run.items)),
                      bytes=run.counts.get("bytes", 0) - over_bytes)
    return {"over_max_item_tokens": len(over) + len(held), "items": len(run.items), "sequences": len(run.rows),
            "tokens": run.rows.tokens, "held_out": len(run.holdout)}


def _reject(run: Run, store: ModelStore, sizes: list[tuple[int, str, object, tuple[str, int]]], cap: int,
            warn: Callable[[str], None]) -> None:
    """(tokens, as said, item, where: ("items" or "holdout", its position)): out of the run,
    into its rejects, with a warning."""
    from retain.core.data.spool import without

    if not sizes:
        return
    name = block_name(run)
    run.items = without(run.items, [i for *_, (place, i) in sizes if place == "items"])
    run.holdout = list(without(run.holdout, [i for *_, (place, i) in sizes if place == "holdout"]))
    rejects = [Reject.of(item, f"{said} tokens, over {name}.max_item_tokens ({cap:,}): split the record, "
                               "or raise the cap") for _, said, item, _ in sizes]
    if run.writes:
        store.append_rejects(rejects, run.id)
    run.rejects += rejects
    _, said, largest, _ = max(sizes, key=lambda size: size[0])
    warn(f"{plural(len(sizes), 'item')} over {name}.max_item_tokens ({cap:,} tokens) not used: the largest "
         f"has {said} tokens ({largest.origin}); " + ("they would go to rejects.jsonl (nothing is written)"
                                                      if not run.writes else "listed in rejects.jsonl"))
    if not run.items:
        raise SourceError(f"every item to train on is over {name}.max_item_tokens ({cap:,} tokens): "
                          "split the records, or raise the cap")
    run.counts.update(rejected=len(run.rejects), trained=len(run.items), holdout=len(run.holdout))


def tokens_per_item(rows, items: int) -> list[int]:
    """Each text's tokens in ``rows`` (its targets, less the end token every text predicts)."""
    from retain.core.learning.lm import IGNORE_INDEX

    if hasattr(rows, "item_tokens"):  # a token shard (core/data/shards.py): from its offsets
        return rows.item_tokens()
    per_item = [-1] * items
    for owner, n in zip(rows.owner.tolist(), (rows.y != IGNORE_INDEX).sum(1).tolist()):
        per_item[owner] += n
    return per_item


def _held_out_tokens(run: Run) -> list[int]:
    """The held-out items' tokens: scored at every judgment, they are bounded too."""
    if not run.holdout:
        return []
    rows = run.lm.encode([it.text for it in run.holdout], run.settings.max_seq_length)
    return tokens_per_item(rows, len(run.holdout))


def _without(rows, items: set[int]):
    """``rows`` less the rows of ``items``, the owners renumbered."""
    import torch

    from retain.core.learning.lm import Rows

    owners = rows.owner.tolist()
    keep = torch.tensor([o not in items for o in owners], dtype=torch.bool)
    renumber, n = {}, 0
    for o in sorted(set(owners) - items):
        renumber[o], n = n, n + 1
    owner = torch.tensor([renumber[o] for o in owners if o not in items], dtype=torch.long)
    return Rows(rows.x[keep], rows.y[keep], owner)


def usual_tokens(run: Run, store: ModelStore) -> tuple[int, str] | None:
    """The model's usual tokens per run of this kind, and what they are: the median of its last
    updates (an update), else the tokens of the full training (or import) that made it."""
    if not store.exists():
        return None
    chain = store.chain(run.parent) if run.parent else store.chain()
    if run.kind == FINE_TUNING:
        recent = [t for v in chain if store.summary(v)["kind"] == FINE_TUNING
                  and (t := store.summary(v)["counts"].get("tokens"))][:RECENT]
        if recent:
            usual = int(statistics.median(recent))
            if len(recent) == 1:
                return usual, f"the last update: {usual:,} tokens"
            return usual, f"the last {len(recent)} updates: median {usual:,} tokens"
    root = store.lineage_root(chain)
    tokens = store.summary(root)["counts"].get("tokens") if root else None
    if not tokens:
        return None
    kind = "import" if store.summary(root)["kind"] == "import" else "full training"
    return tokens, f"the {kind} {root}: {tokens:,} tokens"


def announce(run: Run, store: ModelStore, warn: Callable[[str], None]) -> dict:
    """A warning before training when the work is far beyond the model's usual size."""
    tokens = run.counts.get("tokens", 0)
    usual = usual_tokens(run, store)
    if usual is None or tokens < max(MIN_ANNOUNCED, FAR_BEYOND * usual[0]):
        return {}
    name, s = block_name(run), run.settings
    steps = -(-len(run.rows) // s.batch_size) * s.epochs
    limit = (f"{name}.max_seconds ({s.max_seconds:g} s) bounds the training" if s.max_seconds else
             f"no time limit: set {name}.max_seconds to bound it, or stop it with Ctrl-C (nothing is saved)")
    warn(f"this run is {tokens / usual[0]:,.0f}x the model's usual size: {plural(len(run.items), 'item')}, "
         f"{tokens:,} tokens -> {len(run.rows):,} sequences x {plural(s.epochs, 'epoch')} = {steps:,} steps "
         f"at batch size {s.batch_size}, before any replayed rows (usual: {usual[1]}); {limit}")
    return {"usual_tokens": usual[0], "times_usual": round(tokens / usual[0], 1)}


def announce_plan(run: Run, store: ModelStore, warn: Callable[[str], None]) -> dict:
    """What a dry run can say without tokenizing (it loads no tokenizer): each item's tokens
    estimated from its bytes, at the tokens per byte of the full training (or import) that
    made the model; the items the cap would reject, and the size against the usual."""
    chain = store.chain(run.parent)
    root = store.lineage_root(chain)
    counts = store.summary(root)["counts"] if root else {}
    if not counts.get("tokens") or not counts.get("bytes"):
        return {}
    per_byte = counts["tokens"] / counts["bytes"]
    name = block_name(run)
    cap = getattr(run.config, name).max_item_tokens
    over, tokens, items = [], 0, 0
    for it in itertools.chain(run.items, run.holdout):  # in order: a spool's items are not all in memory
        n, items = round(len(it.text.encode("utf-8")) * per_byte), items + 1
        if cap and n > cap:
            over.append((n, it.origin))
        else:
            tokens += n
    if over:
        largest, where = max(over)
        warn(f"about {plural(len(over), 'item')} over {name}.max_item_tokens ({cap:,} tokens) would go to "
             f"rejects.jsonl: the largest has about {largest:,} tokens ({where}), estimated from its bytes")
    usual = usual_tokens(run, store)
    if usual is None or tokens < max(MIN_ANNOUNCED, FAR_BEYOND * usual[0]):
        return {"estimated_tokens": tokens}
    warn(f"this update is about {tokens / usual[0]:,.0f}x the model's usual size: {plural(items, 'item')}, "
         f"about {tokens:,} tokens, estimated at the model's {per_byte:.2f} tokens per byte (usual: {usual[1]}); "
         + (f"{name}.max_seconds ({run.config.fine_tuning.max_seconds:g} s) would bound the training"
            if run.config.fine_tuning.max_seconds else f"no time limit: set {name}.max_seconds to bound it"))
    return {"estimated_tokens": tokens, "usual_tokens": usual[0]}
