"""Calibrating the vocabulary-drift check (``retrain.max_token_drift``): tokens per byte of new
data under a tokenizer fitted to the base data, on the benchmarks' domain pairs.

For each pair, the byte-level BPE tokenizer ``retain train`` would fit to the base
items (same vocabulary size as the benchmark's model) encodes: the base items
themselves (the reference ``retain status`` compares with), more text of the
base domain never seen by the tokenizer (must stay quiet), and the new domain
(must fire). The last column is what a full retrain's new tokenizer, fitted to
base + new data, makes of the new domain: what a retrain would gain.

    .venv/bin/python benchmarks/vocabulary.py       # seconds; Wikipedia/Shakespeare need ../shared/data
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from forgetting import DATA, python_docs, speeches, wiki_paragraphs  # noqa: E402


def tokens_per_byte(tok, texts: list[str]) -> float:
    return sum(len(e.ids) for e in tok.encode_batch(texts)) / sum(len(t.encode("utf-8")) for t in texts)


def pairs(seed: int) -> list[tuple[str, int, list[str], list[str], list[str]]]:
    """(name, vocabulary size, base items, more of the base domain, new domain)."""
    from retain.demo import base_corpus, stdlib_functions

    rng = random.Random(seed)
    out = []
    docs = python_docs()
    rng.shuffle(docs)
    code = stdlib_functions()
    rng.shuffle(code)
    out.append(("Python docs -> stdlib code (forgetting.py --pair python-docs-code)", 2048, docs[:1500],
                docs[1500:1700], code[:800]))
    pydoc = base_corpus(2000)
    out.append(("language reference -> stdlib code (the tests' tiny model)", 1024, pydoc[:240], pydoc[240:300],
                code[:60]))
    if DATA.is_dir():
        wiki = wiki_paragraphs(DATA / "wikitext2-valid.txt")
        rng.shuffle(wiki)
        test = rng.sample(wiki_paragraphs(DATA / "wikitext2-test.txt"), 200)
        plays = speeches(DATA / "tinyshakespeare.txt")
        rng.shuffle(plays)
        out.append(("Wikipedia -> Shakespeare (forgetting.py)", 2048, wiki[:1500], test, plays[:825]))
        out.append(("Wikipedia -> Shakespeare (text_compare.py)", 1024, wiki[:1500], test, plays[:825]))
    return out


def main() -> None:
    from retain.plugins.gpt import train_tokenizer

    print("| pair | vocab | base items (tokens/byte) | more of the base domain | new domain | new domain, "
          "retrain's own tokenizer |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, vocab, base, more, new in pairs(0):
        tok = train_tokenizer(base, vocab)
        b = tokens_per_byte(tok, base)
        retrained = train_tokenizer(base + new, vocab)

        def rel(x: float) -> str:
            return f"{x:.3f} ({100 * (x / b - 1):+.0f}%)"
        print(f"| {name} | {vocab} | {b:.3f} | {rel(tokens_per_byte(tok, more))} | {rel(tokens_per_byte(tok, new))} | "
              f"{rel(tokens_per_byte(retrained, new))} |")


if __name__ == "__main__":
    main()
