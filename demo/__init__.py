"""``retain demo``: the whole story on text that ships with Python itself. Built on core;
it prints through the CLI's renderer.

Base corpus: paragraphs of the language reference (``pydoc_data.topics``).
New data: docstrings of standard-library modules, plus duplicates of three
kinds (repeats in the batch, case/spacing variants, items the base already
learned), so every step of the update has something to do.
"""

from __future__ import annotations

import importlib
import json
import random
import time
from pathlib import Path

from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.errors import ModelError

# Pure-Python modules with substantial docstrings, present on every CPython 3.10+.
DOC_MODULES = [
    "argparse", "ast", "base64", "bisect", "calendar", "cmd", "codecs", "collections", "colorsys",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "doctest", "email", "enum", "fileinput", "fnmatch", "fractions", "ftplib", "functools",
    "getopt", "gettext", "glob", "gzip", "heapq", "hmac", "html", "http", "imaplib", "inspect",
    "ipaddress", "json", "logging", "mailbox", "netrc", "numbers", "operator", "optparse",
    "pathlib", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "pprint",
    "pydoc", "queue", "quopri", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex",
    "shutil", "smtplib", "socket", "socketserver", "statistics", "string", "struct", "subprocess",
    "tabnanny", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace",
    "traceback", "turtle", "typing", "unittest", "uuid", "warnings", "wave", "weakref", "zipfile",
]

N_BASE = 1500       # the design document's "All 1,500"
N_NEW = 33          # the design document's "Preprocess (33 items)"
N_DUPES = 12        # the design document's "Skip duplicates (12)"


def base_corpus(n: int = N_BASE) -> list[str]:
    from pydoc_data.topics import topics

    paras = [p.strip() for key in sorted(topics) for p in topics[key].split("\n\n")]
    paras = [p for p in paras if len(p) >= 80]
    return random.Random(0).sample(paras, min(n, len(paras)))


def docstring_paragraphs() -> list[str]:
    out = []
    for name in DOC_MODULES:
        try:
            doc = importlib.import_module(name).__doc__ or ""
        except Exception:  # a module missing from a trimmed Python: just skip it
            continue
        out += [p.strip() for p in doc.split("\n\n") if len(p.strip()) >= 80]
    return out


def stdlib_functions(max_chars: int = 1500) -> list[str]:
    """Every function of the standard library's top-level modules, its docstring removed
    (docstrings are the documentation's domain), 80 to ``max_chars`` characters: code, a
    domain a tokenizer fitted to English prose encodes in markedly more tokens per byte."""
    import ast
    import os

    out = []
    for path in sorted(Path(os.__file__).parent.glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = source.splitlines()
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                code = lines[node.lineno - 1:first.lineno - 1] + lines[first.end_lineno:node.end_lineno]
            else:
                code = lines[node.lineno - 1:node.end_lineno]
            text = "\n".join(code)
            if 80 <= len(text) <= max_chars:
                out.append(text)
    return out


def new_batch(base: list[str]) -> list[str]:
    """33 new paragraphs + 12 duplicates (4 repeats, 4 case/space variants, 4 already learned)."""
    rng = random.Random(1)
    fresh = rng.sample(docstring_paragraphs(), N_NEW)
    repeats = rng.sample(fresh, 4)
    variants = ["  " + p.upper().replace(" ", "   ") for p in rng.sample(fresh, 4)]
    learned = rng.sample(base, 4)
    batch = fresh + repeats + variants + learned
    rng.shuffle(batch)
    return batch


def _write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")


def run_demo(model_dir: Path, console=None, device: str | None = None, overrides: list[str] | None = None) -> dict:
    started = time.perf_counter()
    model_dir = Path(model_dir)
    if model_dir.exists() and any(model_dir.iterdir()):
        raise ModelError(f"{model_dir} already exists; remove it or pass --model NEW_DIR")
    data_dir = model_dir / "demo-data"
    data_dir.mkdir(parents=True)
    base = base_corpus()
    _write_jsonl(data_dir / "base.jsonl", base)
    _write_jsonl(data_dir / "new.jsonl", new_batch(base))

    # The embedded config as is (10 epochs of full training, 3 of fine-tuning), except
    # a larger share of the new items held out, so "learning" is measured on more than 3.
    cfg = load_config(None, ["validation.holdout_fraction=0.2", *(overrides or [])])
    listeners = []
    if console is not None:
        from retain.render import ConsoleRenderer
        listeners.append(ConsoleRenderer(console))
    engine = Engine(cfg, listeners=listeners, device=device)
    say = console.print if console is not None else (lambda *a, **k: None)

    say("\n[bold cyan]== Full training: base model on the Python language reference ==[/]", highlight=False)
    trained = engine.train([str(data_dir / "base.jsonl")], model_dir, force=True)  # (demo-data/ is ours)
    say("\n[bold cyan]== Fine-tuning: 45 new items (module docstrings, with duplicates) ==[/]", highlight=False)
    updated = engine.update([str(data_dir / "new.jsonl")], model_dir)

    m = updated["metrics"]
    report = {"train": trained, "update": updated, "seconds": time.perf_counter() - started}
    if console is not None:
        from rich.table import Table
        import math

        table = Table(title="Before / after the update (held-out items, never trained on)")
        for col in ("items", "loss before", "loss after", "ppl before", "ppl after", "change"):
            table.add_column(col, justify="right")
        for label, b, a, n in (
            ("old: language ref.", m["retention_loss_before"], m["retention_loss_after"], m["retention_items"]),
            ("new: docstrings", m["new_loss_before"], m["new_loss_after"], m["new_holdout_items"]),
        ):
            table.add_row(f"{label} ({n})", f"{b:.3f}", f"{a:.3f}", f"{math.exp(b):.1f}",
                          f"{math.exp(a):.1f}", f"{100 * (a - b) / b:+.1f}%")
        console.print(table)
        t_train, t_update = trained["timings"]["total"], updated["timings"]["total"]
        console.print(f"Full training: {t_train:.0f}s on {trained['counts']['trained']} items; "
                      f"update: {t_update:.0f}s on {updated['counts']['trained']} new items "
                      f"({t_train / t_update:.1f}x faster). Total {report['seconds']:.0f}s. "
                      f"Model in {model_dir}/")
    return report
