"""The gpt family encodes with tiktoken where that gives exactly the `tokenizers` ids
(plugins/fast_bpe.py): the same ids on every kind of text, and `tokenizers` wherever that
cannot be shown."""

import json
from pathlib import Path

import pytest

from retain.demo import base_corpus, docstring_paragraphs
from retain.plugins.fast_bpe import fast_encoder
from retain.plugins.gpt import EOS, PAD, train_tokenizer

pytest.importorskip("tiktoken", reason="the fast path needs tiktoken (a dependency of retain)")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

HARD_TEXTS = [
    "", " ", "  \n\n\t  x  ", "\r\n\r\nline\r\n", "it's 'twas I'll we've they're she'd I'm",
    "don’t — “quoted” … ½ × 10⁻³", "naïve café Zürich Ελληνικά русский 中文字符 日本語のテキスト 한국어",
    "emoji 😀👍🏽 flags 🇫🇷 zwj 👨‍👩‍👧", "def f(x):\n    return x ** 2  # 12345678901234567890\n",
    "tabs\tand\u00a0no-break\u2003em-space\u200bzero-width", "\u0301combining e\u0301 a\u0308",
    "<|endoftext|>", "before<|endoftext|>after <|pad|> and <|endof", "1,234.56 3.14e-10 0x1F 🙂🙂🙂",
    "A" * 3000, "ab " * 500, "\x00\x01\x7f control", "'''\"\"\"```", "  leading and trailing  ",
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(base_corpus(240) + docstring_paragraphs(), 600)


def _hf_ids(tokenizer, texts):
    return [e.ids for e in tokenizer.encode_batch(texts)]


def test_the_fast_encoder_gives_the_tokenizers_ids_on_every_kind_of_text(tokenizer):
    encoder = fast_encoder(tokenizer, tokenizer.to_str())
    assert encoder is not None  # a BpeTrainer byte-level BPE is what it is for
    texts = base_corpus(240) + docstring_paragraphs() + HARD_TEXTS
    assert encoder.encode(texts) == _hf_ids(tokenizer, texts)
    # A special token's string becomes its id, as `tokenizers` makes it (tiktoken alone would not).
    ids = encoder.encode(["x<|endoftext|>y"])[0]
    assert tokenizer.token_to_id(EOS) in ids


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data (the project's benchmark corpora)")
def test_the_same_ids_on_the_benchmark_corpora():
    paragraphs = [line.strip() for name in ("wikitext2-valid.txt", "wikitext2-test.txt")
                  for line in (SHARED / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    speeches = [s.strip() for s in (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")]
    texts = paragraphs + speeches
    for trained_on in (paragraphs[:1500], speeches[:1500]):  # both pairs' base tokenizers
        tokenizer = train_tokenizer(trained_on, 2048)
        encoder = fast_encoder(tokenizer, tokenizer.to_str())
        assert encoder is not None
        assert encoder.encode(texts) == _hf_ids(tokenizer, texts)


def test_a_tokenizer_it_cannot_match_keeps_the_tokenizers_library(tokenizer):
    spec = json.loads(tokenizer.to_str())
    # Merges out of id order: tiktoken would merge in another order.
    merges = spec["model"]["merges"]
    first, second = (m if isinstance(m, str) else " ".join(m) for m in merges[:2])
    a, b = (first.replace(" ", ""), second.replace(" ", ""))
    vocab = spec["model"]["vocab"]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    assert fast_encoder(tokenizer, json.dumps(spec)) is None
    # A normalizer or a prefix space: text is changed before the merges.
    for change in ({"normalizer": {"type": "Lowercase"}},
                   {"pre_tokenizer": {**json.loads(tokenizer.to_str())["pre_tokenizer"], "add_prefix_space": True}}):
        assert fast_encoder(tokenizer, json.dumps({**json.loads(tokenizer.to_str()), **change})) is None
    # Not a BPE at all.
    from tokenizers import Tokenizer, models, pre_tokenizers

    word = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    word.pre_tokenizer = pre_tokenizers.Whitespace()
    assert fast_encoder(word, word.to_str()) is None


def test_the_gpt_family_encodes_as_before(tokenizer):
    """GptModel's ids (boundary tokens included) with the fast path and with `tokenizers` alone."""
    import torch  # noqa: F401  (the family imports it)

    from retain.plugins.gpt import Architecture, GptModel, TransformerModel

    module = TransformerModel(Architecture(tokenizer.get_vocab_size(), 1, 2, 16, 32))
    fast, slow = GptModel(module, tokenizer), GptModel(module, tokenizer)
    slow._fast = None  # what a tokenizer it cannot match gets
    texts = docstring_paragraphs() + HARD_TEXTS
    got = fast.encode_ids(texts)
    assert fast._fast is not None
    assert [list(x) for x in got] == [list(x) for x in slow.encode_ids(texts)]
    assert got[0][0] == got[0][-1] == tokenizer.token_to_id(EOS) != tokenizer.token_to_id(PAD)
    rows_fast, rows_slow = fast.encode(texts, 32), slow.encode(texts, 32)
    assert torch.equal(rows_fast.x, rows_slow.x) and torch.equal(rows_fast.y, rows_slow.y)
