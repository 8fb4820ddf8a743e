"""Bounded memory beyond `retain train` (issue 24, item 4): the peak resident memory of the
commands and steps that read a corpus's items, at two corpus sizes, each in a fresh process.

    python benchmarks/bounded_commands.py --sizes 10MB,50MB --what status,auto
    python benchmarks/bounded_commands.py --sizes 20k,100k --what dedupe
    python benchmarks/bounded_commands.py --sizes 0.5MB,2MB --what validate

    dedupe    ingest (collect, preprocess, dedupe with ``[exact, minhash]``, hold out) and the
              minhash index of the kept items written as the save writes it (``remember``), on
              a corpus of distinct texts (``--sizes 20k``: items of 40 random words, seeded):
              ``data_scale.py``'s corpora repeat their paragraphs, which minhash rightly skips
    status    ``retain status --data CORPUS`` (``cli/versions.py``: plan, then count the tokens)
    auto      what ``--auto`` sends its trials: ``Measured.to_json`` of the ingested run and
              ``Measured.from_json`` of it (``tune/search.py``, ``tune/trial.py``)
    validate  ``retain validate --data CORPUS`` on an update of a tiny model (scores every item)

The corpora are ``data_scale.py``'s (the paragraphs of ``../shared/data``, numbered, shuffled);
the model for ``status`` and ``validate`` is a tiny one (conftest's TINY settings) trained on
200 of their paragraphs, then updated once. Run it with ``PYTHONPATH`` pointing at the code to
measure (before and after). Each line: what, size, items, peak RSS (the process's high-water
mark, reset after the imports) and its rise over the process's RSS before the step, seconds.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data_scale import DATA, build_corpus, paragraphs  # noqa: E402  (DATA: ../shared/data beside the checkout)

TINY = ["model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.vocab_size=300", "full_training.epochs=1",
        "full_training.max_seq_length=64", "fine_tuning.max_seq_length=64", "fine_tuning.epochs=1",
        "device=cpu", "precision=fp32", "validation.retention_max=64"]
SIZES = {"0.5MB": 500_000, "1MB": 1_000_000, "2MB": 2_000_000, "10MB": 10_000_000, "50MB": 50_000_000, "100MB": 100_000_000}


def peak_mb() -> float:
    """The process's high-water mark of resident memory (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def reset_peak() -> None:
    """The high-water mark back to the current resident memory (Linux: ``clear_refs`` 5), so that
    the imports' own peak does not hide the step's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(what: str, corpus: str, model: str) -> dict:
    from retain.core.config import load_config
    from retain.core.engine import Engine
    from retain.core.storage.store import ModelStore

    config = load_config(None, [*TINY, "dedupers=[exact, minhash]"] if what == "dedupe" else TINY)
    engine = Engine(config, allow_empty=True)
    import retain.core.learning.training  # noqa: F401  (imports before the baseline)
    import datasketch  # noqa: F401

    reset_peak()
    before = peak_mb()
    started = time.perf_counter()
    if what == "dedupe":
        from types import SimpleNamespace

        from retain.core import cycle
        from retain.core.run import FULL_TRAINING, Run
        from retain.core.storage.store import Ledger

        run = Run("b", FULL_TRAINING, config, Path(model), parent=None, writes=False)
        cycle.ingest(engine.setup, run, ModelStore(model), [corpus], None)
        ledger = Ledger(Path(tempfile.mkdtemp()) / "ledger.sqlite")
        writer = SimpleNamespace(store=SimpleNamespace(ledger=ledger))
        for name, deduper in engine.setup.dedupers:
            if hasattr(deduper, "remember"):
                deduper.remember(run.items + run.holdout, "0001", writer)
        items = len(run.items) + len(run.holdout)
    elif what == "status":
        from retain.cli.versions import _pending_items

        items, _ = _pending_items([corpus], ModelStore(model, read_only=True), config)
    elif what == "auto":
        from retain.core import cycle
        from retain.core.run import FINE_TUNING, Measured, Run

        store = ModelStore(model, read_only=True)
        run = Run("b", FINE_TUNING, config, Path(model), parent=store.current(), writes=False)
        cycle.ingest(engine.setup, run, store, [corpus], None)
        folder = tempfile.mkdtemp()
        try:
            spec = run.measured().to_json(Path(folder))
        except TypeError:  # before: no folder, every item listed
            spec = run.measured().to_json()
        items = len(Measured.from_json(spec).items)
    elif what == "validate":
        from retain.core.storage.versions import validate_version

        items = validate_version(engine, ModelStore(model, read_only=True), None, [corpus])["items"]
    return {"what": what, "items": items, "peak_rss_mb": round(peak_mb()), "rise_mb": round(peak_mb() - before),
            "seconds": round(time.perf_counter() - started, 1)}


def distinct_corpus(path: Path, items: int) -> None:
    """``items`` texts of 40 words drawn from 20,000 random ones (seeded): no two near each other."""
    if path.exists():
        return
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
             for _ in range(20_000)]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(items):
            f.write(json.dumps({"text": " ".join(rng.choices(words, k=40))}) + "\n")


def tiny_model(work: Path, data: Path) -> Path:
    """A tiny model and one update of it (0002): a version with a parent."""
    model = work / "model"
    if (model / "CURRENT").exists():
        return model
    from retain.core.config import load_config
    from retain.core.engine import Engine

    texts = paragraphs(data)
    for name, part in (("base", texts[:200]), ("new", texts[200:260])):
        (work / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    Engine(load_config(None, TINY)).train([str(work / "base.jsonl")], model)
    Engine(load_config(None, TINY)).update([str(work / "new.jsonl")], model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10MB,50MB", help="corpora: 10MB, 50MB... (data_scale.py's), 20k... "
                        "(distinct texts)")
    parser.add_argument("--what", default="dedupe,status,auto,validate")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bounded-commands"))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--child", nargs=3, metavar=("WHAT", "CORPUS", "MODEL"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    model = tiny_model(args.work, args.data)
    for size in args.sizes.split(","):
        corpus = args.work / f"corpus-{size}.jsonl"
        if size.endswith("k"):
            distinct_corpus(corpus, int(size[:-1]) * 1000)
        else:
            build_corpus(corpus, SIZES[size], args.data)
        for what in args.what.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", what, str(corpus), str(model)],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"{what} {size}: failed\n{out.stderr[-2000:]}", flush=True)
                continue
            print(json.dumps({"size": size, **json.loads(out.stdout.splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
