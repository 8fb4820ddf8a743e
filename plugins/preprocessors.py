"""Built-in preprocessors."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from retain.core.hookspecs import hookimpl
from retain.core.data.items import Item, Reject

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t]+")
_BLANKS = re.compile(r"\n{3,}")
_CONTROL_TAB_CR = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\t\r]")


def needs_cleaning(text: str) -> bool:
    """Would cleaning change ``text`` besides its Unicode form? A control character, \\r, a
    tab, two spaces, three newlines, whitespace opening or closing a line. Most items have
    none: a few scans of the text instead of regex passes over each line (10x faster)."""
    if not text or text[0].isspace() or text[-1].isspace() or "  " in text or "\n\n\n" in text \
            or _CONTROL_TAB_CR.search(text):
        return True
    return "\n" in text and any(line[:1].isspace() or line[-1:].isspace() for line in text.split("\n"))


@dataclass
class CleanOptions:
    min_chars: int = 1
    max_chars: int = 0  # 0: no limit; longer items are split into several sequences anyway


class Clean:
    """Unicode NFC, control characters removed, runs of spaces collapsed, trimmed."""

    def __init__(self, options: CleanOptions):
        self.options = options

    def __call__(self, item: Item) -> Item | Reject:
        text = item.text
        if needs_cleaning(text) or not unicodedata.is_normalized("NFC", text):
            text = clean_text(text)
        if len(text) < max(1, self.options.min_chars):
            return Reject.of(item, f"shorter than {self.options.min_chars} characters after cleaning")
        if self.options.max_chars and len(text) > self.options.max_chars:
            return Reject.of(item, f"longer than {self.options.max_chars} characters")
        return item.with_text(text) if text != item.text else item


def clean_text(text: str) -> str:
    """NFC, newlines as \\n, control characters out, runs of spaces and tabs as one space, each
    line and the whole trimmed, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _BLANKS.sub("\n\n", "\n".join(_SPACES.sub(" ", ln).strip() for ln in text.split("\n")))
    return text.strip()


@hookimpl
def register_preprocessors(register):
    register("clean", Clean, options=CleanOptions)
