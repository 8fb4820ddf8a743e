"""Items: what everything upstream of the tokenizer speaks in."""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any


def normalize_text(text: str) -> str:
    """Unicode-compatibility form, case-folded, whitespace collapsed.

    Two texts that differ only in case, spacing or Unicode form are the same item.
    """
    # split() and strip() take the same whitespace as the regex \s+ (str.isspace): the same
    # text as before, 3x faster than re.sub (tests/test_spool.py checks every code point)
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hash(text: str) -> str:
    return hashlib.sha256(normalize_text(text).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Item:
    """One unit of training data and where it came from."""

    text: str                 # what the model learns (after preprocessing: the cleaned text)
    source: str = ""          # plugin name, e.g. "jsonl"
    file: str = ""            # file path or other locator
    line: int | None = None   # 1-based line (or record) number, when there is one
    # anything else the source knows about the record; not hashed, not compared
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @functools.cached_property
    def hash(self) -> str:
        """The normalized text's sha256, computed once per item (dedupe, the ledger, data_hash);
        an item read back from a spool may come with it (``core/data/spool.py``)."""
        return text_hash(self.text)

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def with_text(self, text: str) -> "Item":
        return replace(self, text=text)


@dataclass(frozen=True)
class Reject:
    """Input that could not be used, and why. Goes to the rejects file, never silently away."""

    reason: str               # why the record could not be used: one line, shown to the user
    source: str = ""          # the source's name, e.g. "jsonl"
    file: str = ""            # file path or other locator
    line: int | None = None   # 1-based line (or record) number, when there is one
    excerpt: str = ""         # the record's first 200 characters, to find it

    @classmethod
    def of(cls, item: Item, reason: str) -> "Reject":
        return cls(reason, item.source, item.file, item.line, item.text[:200])

    def to_json(self) -> dict:
        return {"reason": self.reason, "source": self.source, "file": self.file,
                "line": self.line, "excerpt": self.excerpt}
