"""Steps 2-4 and the hold-out: new data in, as items, cleaned, without what the model saw.

    collect     sources read each ``--data`` spec into items and rejects
    preprocess  cleaning, per item (a cleaned item may become a reject)
    dedupe      skip what repeats the batch or what the current model learned or holds out
    hold out    a seeded sample of the rest is kept aside, never trained on

Deduplication runs on the cleaned text, the same text whose hash the ledger
keeps, so an item that cleaning changes is still recognised on the next run.

Memory is bounded by a batch, not by the corpus: each step reads the items in batches
(``spool.BATCH_ITEMS`` items or ``spool.BATCH_BYTES`` of text) and keeps what it keeps in
an item spool (``core/data/spool.py``: in memory while small, an unnamed temp file
beyond), ``run.items`` a view of it; rejects go to the rejects file batch by batch, the
run keeping their count, kinds and first few (``Rejects``); the report's skipped list
keeps its first ``SKIPPED_KEPT``. Dedupers see one batch at a time, in order, and a copy
in an earlier batch as one in the same batch (``KnownItems.in_run``).
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from retain.core.config import Config
from retain.core.errors import ModelError, PluginError, SourceError, StorageError
from retain.core.data.items import Item, Reject
from retain.core.data.spool import ItemSpool, ItemView, batched, without
from retain.core.pluginmanager import Registry

# What a report keeps of a run's duplicates and rejects, whole: the first few (a bounded report.json)
EXCERPTS_KEPT = 20
EXCERPT_CHARS = 200
SKIPPED_KEPT = 1000  # the report's skipped entries (one per duplicate): the first ones, the rest counted


class Rejects:
    """A run's rejects as it keeps them: how many, by kind, the first ``EXCERPTS_KEPT`` whole
    (every one is in the rejects file). ``rejects += [...]``, ``len``, ``rejects[0]`` as a list."""

    def __init__(self, rejects: Iterable[Reject] = ()):
        self.count, self.kinds, self.first = 0, Counter(), []
        self += rejects

    def __iadd__(self, rejects: Iterable[Reject]) -> "Rejects":
        for r in rejects:
            self.count += 1
            self.kinds[reject_kind(r.reason)] += 1
            if len(self.first) < EXCERPTS_KEPT:
                self.first.append(r)
        return self

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i):
        return self.first[i]


def _tally(rejects) -> Rejects:
    return rejects if isinstance(rejects, Rejects) else Rejects(rejects)


def source_for(spec: str, registry: Registry) -> tuple[str, str]:
    """``NAME:LOCATION``, or a path whose suffix (or folder-ness) picks the source."""
    sources = registry.by_kind["sources"]
    name, sep, rest = spec.partition(":")
    if sep and len(name) > 1:
        if name in sources:
            return name, rest
        if not Path(spec).exists():
            raise SourceError(f"unknown source '{name}' in --data {spec} (known: "
                              f"{', '.join(sorted(sources))}); `retain plugins` lists what is installed")
    path = Path(spec)
    if path.is_dir():  # a folder a source reads whole, or one whose files each pick their own
        return _marked_by(path, sources) or "", spec
    by_suffix = _suffix_source(path.name, sources)
    if by_suffix:
        return by_suffix, spec
    if not path.exists():
        raise SourceError(f"data source not found: {spec}")
    known = ", ".join(f"{r.name} ({' '.join(_base_suffixes(r.extra.get('suffixes', ()))) or 'NAME:...'})"
                      for r in sources.values())
    raise SourceError(f"cannot tell the format of {spec}; prefix it with a source name "
                      f"(e.g. jsonl:{spec}). Sources: {known}")


def _base_suffixes(suffixes) -> list[str]:
    """The suffixes to show: ``.jsonl``, not also its compressed forms ``.jsonl.gz``, ``.jsonl.zst``."""
    return [s for s in suffixes if not any(s != t and s.startswith(t) for t in suffixes)]


def _suffix_source(name: str, sources: dict) -> str | None:
    """The source whose longest registered suffix ends ``name``: ``a.jsonl.gz`` is jsonl's."""
    name = name.lower()
    found = [(len(s), reg.name) for reg in sources.values() for s in reg.extra.get("suffixes", ())
             if s and name.endswith(s.lower())]
    return max(found)[1] if found else None


def _marked_by(folder: Path, sources: dict) -> str | None:
    """The source that reads ``folder`` whole: one of its ``folder_markers`` files is there
    (a Hugging Face ``save_to_disk`` folder: ``dataset_info.json`` or ``dataset_dict.json``)."""
    for reg in sources.values():
        if any((folder / marker).is_file() for marker in reg.extra.get("folder_markers", ())):
            return reg.name
    return None


def folder_files(folder: str, registry: Registry) -> list[tuple[str, str]]:
    """(source, file) for every file of a folder: by suffix, plain text for the rest; a
    subfolder a source reads whole (``_marked_by``) is one entry. A folder of ``.jsonl``
    files is read as JSON Lines, not as text."""
    sources = registry.by_kind["sources"]
    found, marked = [], []
    for path in sorted(Path(folder).rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or \
                any(m in path.parents for m, _ in marked):
            continue
        if path.is_dir() and (name := _marked_by(path, sources)):
            marked.append((path, name))
            found.append((name, str(path)))
        elif path.is_file():
            found.append((_suffix_source(path.name, sources) or "text", str(path)))
    return found


def collect(specs: list[str], registry: Registry, config: Config) -> tuple[list[Item], list[Reject]]:
    """Read every ``--data`` spec; a malformed record becomes a reject, never an error."""
    items: list[Item] = []
    rejects: list[Reject] = []
    for record in records(specs, registry, config):
        (items if isinstance(record, Item) else rejects).append(record)
    return items, rejects


def records(specs: list[str], registry: Registry, config: Config) -> Iterator[Item | Reject]:
    """Every record of every ``--data`` spec as the sources read it, one at a time."""
    for spec in specs:
        name, location = source_for(spec, registry)
        parts = folder_files(location, registry) if name == "" else [(name, location)]
        if name == "" and not parts:
            raise SourceError(f"data folder {spec} holds no files")
        for source_name, path in parts:
            source = registry.build("sources", source_name, config)
            try:
                yield from source.read(path)
            except SourceError:
                raise
            except Exception as exc:
                raise PluginError(f"source '{source_name}' failed on {path}: {type(exc).__name__}: {exc}") from exc


def python_items(data: Iterable[Any], field_name: str = "text") -> tuple[list[Item], list[Reject]]:
    """Items from Python values: strings, or dicts with a ``text`` field."""
    items, rejects = [], []
    for i, value in enumerate(data, 1):
        text = value.get(field_name) if isinstance(value, dict) else value
        if isinstance(text, str) and text.strip():
            meta = {k: v for k, v in value.items() if k != field_name} if isinstance(value, dict) else {}
            items.append(Item(text, "python", "<python>", i, meta))
        else:
            rejects.append(Reject(f"expected a non-empty string or a dict with a '{field_name}' string",
                                  "python", "<python>", i, repr(value)[:200]))
    return items, rejects


def preprocess(items: list[Item], registry: Registry, config: Config) -> tuple[list[Item], list[Reject]]:
    return clean(items, build_preprocessors(registry, config))


def build_preprocessors(registry: Registry, config: Config) -> list[tuple[str, Any]]:
    """The configured preprocessors, in order: built once a run, used on each batch."""
    return [(name, registry.build("preprocessors", name, config)) for name in config.preprocessors]


def clean(items: list[Item], processes: list[tuple[str, Any]]) -> tuple[list[Item], list[Reject]]:
    """``items`` through each preprocessor in turn: the cleaned ones, and those that became rejects."""
    rejects: list[Reject] = []
    for name, process in processes:
        kept = []
        for item in items:
            try:
                out = process(item)
            except Exception as exc:
                raise PluginError(f"preprocessor '{name}' failed on {item.origin}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            (kept if isinstance(out, Item) else rejects).append(out)
        items = kept
    return items, rejects


def nothing_usable(rejects: list[Reject] | Rejects, data: list[str], rejects_file: Path | None) -> str:
    """Why sources that were read gave no item: the rejects summarized by kind and count, or
    that they held no record at all. ``rejects_file``: where the details are, if they stay."""
    if not rejects:
        return f"no usable item: no records in --data {', '.join(data)}"
    rejects = _tally(rejects)
    kinds = rejects.kinds.most_common()
    shown = ", ".join(f'{n} "{kind}"' for kind, n in kinds[:4])
    if len(kinds) > 4:
        shown += f", {sum(n for _, n in kinds[4:])} of {len(kinds) - 4} other kinds"
    first = rejects[0]
    where = f"first: {first.file}:{first.line}" if first.line is not None else f"first: {first.file}"
    details = f"; details: {rejects_file}" if rejects_file is not None else ""
    records = "record" if len(rejects) == 1 else "records"
    return f"no usable item in {len(rejects)} {records}: {shown} ({where}{details})"


_LINE_PREFIX = re.compile(r"^line \d+: ")
_PARENTHESIS = re.compile(r"\s*\([^)]*\)")
_NUMBER = re.compile(r"(?<![\w-])\d[\d,]*")  # 1,024 and 7, not UTF-8's


def reject_kind(reason: str) -> str:
    """A reject's reason less what differs record to record (line numbers, sizes, the parser's
    detail): "invalid JSON: Expecting value (column 1)" is "invalid JSON"."""
    reason = _LINE_PREFIX.sub("", reason)
    head, sep, _ = reason.partition(": ")
    kind = head if sep and not any(c.isdigit() for c in head) else reason
    return _NUMBER.sub("N", _PARENTHESIS.sub("", kind)).strip()


def build_dedupers(registry: Registry, config: Config) -> list[tuple[str, Any]]:
    """The configured dedupers, in order: built once, used to find duplicates and to remember."""
    return [(name, registry.build("dedupers", name, config)) for name in config.dedupers]


def dedupe(items: list[Item], dedupers: list[tuple[str, Any]], known) -> tuple[list[Item], list[dict]]:
    """Run the dedupers; return kept items and a record of each skipped one."""
    skipped: list[dict] = []
    for name, deduper in dedupers:
        dupes = find_duplicates(name, deduper, items, known)
        skipped += skipped_entries(name, items, dupes, EXCERPTS_KEPT - len(skipped))
        items = [it for i, it in enumerate(items) if i not in dupes]
    return items, skipped


def find_duplicates(name: str, deduper, items: list[Item], known) -> dict[int, str]:
    """One deduper's ``{position: why}`` on ``items``; a failure is the plugin's or the ledger's."""
    try:
        return deduper.find_duplicates(items, known)
    except sqlite3.Error as exc:  # the ledger's database, not the plugin, failed
        raise _ledger_error(known, exc) from exc
    except Exception as exc:
        raise PluginError(f"deduper '{name}' failed: {type(exc).__name__}: {exc}") from exc


def skipped_entries(name: str, items: list[Item], dupes: dict[int, str], excerpts: int) -> list[dict]:
    """The report's record of each duplicate; the first ``excerpts`` say what was skipped
    (``retain report``)."""
    entries = []
    for i, reason in sorted(dupes.items()):
        entry = {"deduper": name, "origin": items[i].origin, "reason": str(reason), **getattr(reason, "details", {})}
        if len(entries) < excerpts:
            entry["excerpt"] = items[i].text[:EXCERPT_CHARS]
        entries.append(entry)
    return entries


def rejects_summary(rejects: list[Reject] | Rejects) -> dict[str, Any]:
    """The report's record of a run's rejects: how many, by kind, and the first few whole."""
    rejects = _tally(rejects)
    kinds = rejects.kinds.most_common()
    return {"count": len(rejects), "kinds": [{"kind": k, "count": n} for k, n in kinds[:EXCERPTS_KEPT]],
            "first": [r.to_json() for r in rejects.first[:EXCERPTS_KEPT]]}


def _ledger_error(known, exc: sqlite3.Error) -> ModelError | StorageError:
    """A ledger SQLite cannot open or read is the disk's fault (StorageError); one it reads
    as damaged ("not a database", "malformed") is the model directory's (ModelError)."""
    path = getattr(getattr(known, "ledger", None), "path", "the ledger")
    if isinstance(exc, sqlite3.OperationalError):
        return StorageError(f"cannot read the ledger {path}: {exc}")
    return ModelError(f"the ledger {path} is damaged: {exc}")


def split_holdout(items: list[Item], fraction: float, cap: int, seed: int) -> tuple[list[Item], list[Item]]:
    """(train, held out): a seeded random sample kept aside, never trained on.

    From 10 items on, a positive fraction holds out at least one; ``cap`` bounds
    it, and a cap of 0 holds out nothing."""
    chosen = set(holdout_positions(len(items), fraction, cap, seed))
    if not chosen:
        return items, []
    return ([it for i, it in enumerate(items) if i not in chosen],
            [it for i, it in enumerate(items) if i in chosen])


def holdout_positions(n: int, fraction: float, cap: int, seed: int) -> list[int]:
    """The positions ``split_holdout`` holds out of ``n`` items, ascending (none: hold out nothing)."""
    k = int(round(n * fraction))
    if fraction > 0 and n >= 10:
        k = max(k, 1)
    k = min(k, cap)
    if k <= 0 or k >= n:
        return []
    return sorted(random.Random(seed).sample(range(n), k))


def sample(values: list, cap: int, seed: int) -> list:
    """At most ``cap`` of ``values``, a seeded random sample (all of them if they fit)."""
    if len(values) <= cap:
        return values
    return random.Random(seed).sample(values, cap)


# --- the steps, on a run: each narrows ``run.items`` (a view of the run's spool) ----------------

def _batches(values: Iterable) -> Iterator[list]:
    """Records (items and rejects) in batches: at most ``BATCH_ITEMS`` of them or ``BATCH_BYTES`` of text."""
    from retain.core.data import spool

    batch, chars = [], 0
    for value in values:
        batch.append(value)
        chars += len(value.text) if isinstance(value, Item) else 0
        if len(batch) >= spool.BATCH_ITEMS or chars >= spool.BATCH_BYTES:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def collect_step(run, registry: Registry, store, data: list[str], items: list[Item] | None,
                 strict: bool) -> dict:
    """2. Collect: every --data spec (or the given items) into the run's spool, batch by batch;
    rejects appended to the rejects file as they come."""
    spool, run.rejects, path = ItemSpool(), Rejects(), None
    run.items = spool.view()  # the run holds its spool from here (closed with it, or on failure)
    for batch in _batches(items if items is not None else records(data, registry, run.config)):
        rejects = [r for r in batch if not isinstance(r, Item)]
        spool.extend(r for r in batch if isinstance(r, Item))
        if rejects and run.writes:
            path = store.append_rejects(rejects, run.id)
        run.rejects += rejects
    run.items = spool.view()
    run.counts.update(collected=len(run.items), rejected=len(run.rejects))
    if run.rejects and strict:
        first = run.rejects[0]
        raise SourceError(f"{len(run.rejects)} input records rejected (--strict); first: "
                          f"{first.file}:{first.line}: {first.reason}")
    return {"items": len(run.items), "rejected": len(run.rejects), "rejects_file": str(path) if path else None}


def preprocess_step(run, registry: Registry, store) -> dict:
    """3. Preprocess: the configured cleaners, in order, batch by batch. An item cleaning leaves
    as it is stays where it is in the spool; a changed one is appended to it (most items are
    clean: they are not written twice)."""
    import numpy as np

    processes = build_preprocessors(registry, run.config)
    items, rejected = run.items, 0
    spooled = isinstance(items, ItemView)
    index, kept_all, start = [], [], 0
    for batch in batched(items):
        kept, rejects = clean(batch, processes)
        if spooled:
            index.append(_positions_after_cleaning(items, batch, kept, start))
        else:
            kept_all += kept
        start += len(batch)
        if rejects and run.writes:
            store.append_rejects(rejects, run.id)
        run.rejects += rejects
        rejected += len(rejects)
    if spooled:
        run.items = ItemView(items.spool, np.concatenate(index) if index else np.zeros(0, np.int64))
    else:
        run.items = kept_all
    run.counts.update(rejected=len(run.rejects), preprocessed=len(run.items))
    return {"items": len(run.items), "rejected": rejected}


def _positions_after_cleaning(items: ItemView, batch: list[Item], kept: list[Item], start: int):
    """The spool positions of a batch's ``kept`` items: an unchanged item's own (the same object
    came back), a changed one's as it is appended."""
    import numpy as np

    where = {id(it): int(items.index[start + i]) for i, it in enumerate(batch)}
    changed = [it for it in kept if id(it) not in where]
    appended = iter(items.spool.extend(changed))
    return np.fromiter((where[id(it)] if id(it) in where else next(appended) for it in kept),
                       dtype=np.int64, count=len(kept))


def dedupe_step(run, dedupers: list[tuple[str, Any]], store) -> dict:
    """4. Skip duplicates: of each other, and of what CURRENT's chain learned or holds out.
    Batch by batch: each deduper sees the items of one batch and, through ``known.in_run``,
    those earlier batches kept; ``run.items`` becomes the kept ones."""
    import numpy as np

    from retain.core.data.known import HOLDOUT, EarlierBatches, KnownItems

    chain = store.chain(run.parent) if run.parent else []
    store.check_ledger(chain)  # a lost ledger is never read as "nothing learned yet"
    items = run.items
    knowns = [KnownItems(store.ledger, chain, EarlierBatches(items)) for _ in dedupers]
    kept_at = np.empty(len(items), dtype=np.int64)  # filled batch by batch: no list, no copy
    spooled = isinstance(items, ItemView)
    run.skipped, duplicates, contaminating, start, kept_count = [], 0, 0, 0, 0
    for batch in batched(items):
        kept, skipped = _dedupe_batch(batch, dedupers, knowns, start, excerpts=EXCERPTS_KEPT - duplicates)
        kept_at[kept_count:kept_count + len(kept)] = kept
        kept_count += len(kept)
        start += len(batch)
        duplicates += len(skipped)
        contaminating += sum(s.get("kind") == HOLDOUT for s in skipped)
        run.skipped += skipped[:max(0, SKIPPED_KEPT - len(run.skipped))]
    if spooled:
        # Hashes are not kept (32 bytes an item, the one thing left that grew with the corpus):
        # the save hashes the items again as it writes the ledger, and data_hash sorts there.
        run.items = items.take(kept_at[:kept_count])
    else:
        run.items = [items[i] for i in kept_at[:kept_count].tolist()]
    run.counts.update(duplicates=duplicates, contaminating=contaminating, new=len(run.items))
    return {"duplicates": duplicates, "contaminating": contaminating, "items": len(run.items)}


def _dedupe_batch(batch: list[Item], dedupers: list[tuple[str, Any]], knowns: list, start: int,
                  excerpts: int) -> tuple[list[int], list[dict]]:
    """The positions (``start`` is the batch's first) of the items of ``batch`` every deduper
    kept, and a record of each skipped one; each deduper's ``known`` learns what it kept."""
    positions = list(range(start, start + len(batch)))
    skipped: list[dict] = []
    for (name, deduper), known in zip(dedupers, knowns):
        dupes = find_duplicates(name, deduper, batch, known)
        skipped += skipped_entries(name, batch, dupes, excerpts - len(skipped))
        batch = [it for i, it in enumerate(batch) if i not in dupes]
        positions = [p for i, p in enumerate(positions) if i not in dupes]
        known.earlier.add([it.hash for it in batch], positions)
    return positions, skipped


def holdout_step(run) -> dict:
    """Keep a seeded sample aside: base items to measure retention later (full training, import),
    new items to measure learning now (update). The same items ``split_holdout`` holds out."""
    v = run.config.validation
    fraction, cap = ((v.retention_fraction, v.retention_max) if run.new_lineage
                     else (v.holdout_fraction, v.holdout_max))
    chosen = holdout_positions(len(run.items), fraction, cap, run.config.seed)
    if isinstance(run.items, ItemView):
        run.holdout = list(run.items.take(chosen))  # at most the cap: small
    else:
        run.holdout = [run.items[i] for i in chosen]
    run.items = without(run.items, chosen)
    run.counts.update(trained=len(run.items), holdout=len(run.holdout))
    return {"train": len(run.items), "held_out": len(run.holdout)}


def close_spool(items) -> None:
    """The spool behind ``items`` (a view) is dropped: its records, and its temp file if any."""
    spool = getattr(items, "spool", None)
    if spool is not None:
        spool.close()
