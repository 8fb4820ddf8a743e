"""The ``hf`` family's model: a Hugging Face transformers causal LM from a local directory.

Imports torch and transformers: ``retain.plugins.models`` (the registration) imports
it only when an hf model is created, loaded, imported or exported. Nothing is ever
fetched from a hub: every call passes ``local_files_only=True``, and ``HF_HUB_OFFLINE``
is set before transformers is imported. Weights are read and written as safetensors
only (``use_safetensors=True``); a directory holding only PyTorch ``.bin`` weights is
read through ``retain.core.storage.imports.read_state_dict`` (``torch.load(weights_only=True)``).
No ``trust_remote_code``: a model whose code lives in its directory is refused.

Also here: the built-in ``gpt`` mapped onto transformers' GPT-2 (``retain export``).
"""

from __future__ import annotations

import os
from array import array

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never the network

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from retain.core.errors import ConfigError, ModelError  # noqa: E402
from retain.core.learning.lm import ENCODE_CHUNK, Rows, Sample, rows_from_ids, token_losses  # noqa: E402
from retain.plugins.fast_bpe import FastEncoder, fast_encoder  # noqa: E402

try:
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
except ImportError:  # pragma: no cover - the optional extra is missing
    raise ModelError("hf models need transformers: pip install 'retain[hf]'") from None

transformers.utils.logging.set_verbosity_error()   # its warnings are not the user's
transformers.utils.logging.disable_progress_bar()  # "Loading weights: 100%" on every load

FOLDER = "hf"  # where a version keeps the model, as save_pretrained writes it
# What fixes the shape of the weights, whatever the config class calls it.
SHAPE_KEYS = ("model_type", "vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer",
              "num_attention_heads", "n_head", "num_key_value_heads", "intermediate_size", "n_inner",
              "max_position_embeddings", "n_positions")
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def context_of(config, tokenizer) -> int:
    """The longest sequence the model accepts: its position embeddings, else the tokenizer's limit."""
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    raise ModelError("cannot tell the model's context length: its config has no max_position_embeddings "
                     "and its tokenizer no model_max_length")


class CausalLMLogits(torch.nn.Module):
    """A transformers causal LM as the engine trains it: token ids in, logits out.

    Rows are padded on the right and attention is causal, so padding never reaches a
    real position: no attention mask is needed (the loss ignores padded targets)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


class HfModel:
    """The ``LanguageModel`` of the ``hf`` family: a transformers causal LM and its tokenizer."""

    family = "hf"

    def __init__(self, model, tokenizer):
        self.module = CausalLMLogits(model)
        self.tokenizer = tokenizer
        self.context = context_of(model.config, tokenizer)
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        # A tokenizer without a pad token (GPT-2's) pads with its end token: padded targets
        # are ignored and padding sits after every real token, so any id would do.
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
        self._fast: FastEncoder | None | bool = False  # built on the first encode (``plugins/fast_bpe.py``)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's ids: tiktoken where it gives exactly the tokenizer's (a byte-level BPE
        such as GPT-2's), else the tokenizer itself."""
        if self._fast is False:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)  # a fast (Rust) tokenizer's
            self._fast = fast_encoder(backend, backend.to_str()) if backend is not None else None
        if self._fast is not None:
            return self._fast.encode(texts)
        return [list(x) for x in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _start(self, ids: list[int]) -> list[int]:
        # Each text starts with the model's BOS (GPT-2: its one <|endoftext|>) and ends with EOS.
        start = self.bos_id if self.bos_id is not None else self.eos_id
        return ([start] if start is not None else []) + ids

    def _wrap(self, ids: list[int]) -> list[int]:
        return self._start(ids) + ([self.eos_id] if self.eos_id is not None else [])

    def encode_ids(self, texts: list[str]) -> list[array]:
        texts, ids = list(texts), []
        for start in range(0, len(texts), ENCODE_CHUNK):  # in chunks, as 4-byte ids (ENCODE_CHUNK)
            ids += [array("i", self._wrap(x)) for x in self._ids(texts[start:start + ENCODE_CHUNK])]
        return ids

    def encode(self, texts: list[str], max_len: int) -> Rows:
        return rows_from_ids(self.encode_ids(texts), max_len, self.pad_id)

    def token_losses(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return token_losses(logits, targets)

    @torch.no_grad()
    def generate(self, prompts: list[str], *, max_new_tokens: int, temperature: float,
                 seed: int) -> list[Sample]:
        """Through the model's own ``generate`` (its KV cache, its generation config), seeded."""
        model = self.module.model
        device = next(model.parameters()).device
        stop = {self.eos_id, self.pad_id} - {None}
        new = max(1, min(max_new_tokens, self.context - 1))
        was_training = model.training
        model.eval()
        samples = []
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                for prompt in prompts:
                    ids = self._start(self._ids([prompt])[0])
                    ids = ids[-(self.context - new):]  # room for the continuation in the context
                    x = torch.tensor([ids], device=device)
                    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {
                        "do_sample": False}
                    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                                         pad_token_id=self.pad_id, eos_token_id=self.eos_id, use_cache=True,
                                         **sampling)[0, len(ids):].tolist()
                    tokens = out[:next((i for i, t in enumerate(out) if t in stop), len(out))]
                    samples.append(Sample(prompt, self.tokenizer.decode(tokens, skip_special_tokens=True), tokens))
        finally:
            model.train(was_training)
        return samples

    def architecture(self) -> dict[str, Any]:
        config = self.module.model.config.to_dict()
        return {**{k: config[k] for k in SHAPE_KEYS if k in config}, "context": self.context}

    def save(self, writer) -> dict[str, Any]:
        folder = writer.folder(FOLDER)
        save_pretrained(self, folder)
        return {"family": self.family, "architecture": self.architecture(), "folder": FOLDER}


def save_pretrained(lm: HfModel, folder: Path) -> None:
    """The model and tokenizer as ``from_pretrained`` reads them: safetensors, JSON, nothing pickled."""
    lm.module.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    pickled = sorted(p.name for p in folder.rglob("*") if p.suffix in PICKLED)
    if pickled:  # pragma: no cover - transformers writes safetensors only
        raise ModelError(f"transformers wrote pickled files ({', '.join(pickled)}); refusing to keep them")


def _not_a_model(where: str, exc: Exception) -> Exception:
    from retain.core.learning.retry import is_out_of_memory

    if is_out_of_memory(exc):
        return exc  # core turns it into exit 11 with the remedy
    return ModelError(f"{where} is not a loadable transformers causal LM ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0] if str(exc) else ''})")


def load_tokenizer(folder: Path, where: str):
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise _not_a_model(f"{where} (its tokenizer)", exc) from None


def load_pretrained(folder: Path, where: str) -> HfModel:
    """A causal LM directory with safetensors weights, from disk only, in float32 (training)."""
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                     trust_remote_code=False, dtype=torch.float32)
    except Exception as exc:
        raise _not_a_model(where, exc) from None
    return HfModel(model, load_tokenizer(folder, where))


def load_pickled_weights(folder: Path, where: str) -> HfModel:
    """A directory with only PyTorch ``.bin`` weights: read safely (weights_only), never unpickled."""
    from retain.core.storage.imports import read_state_dict

    files = sorted(folder.glob("pytorch_model*.bin"))
    tensors: dict = {}
    for path in files:
        tensors.update(read_state_dict(path))
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except Exception as exc:
        raise _not_a_model(where, exc) from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ModelError(f"{where}: the .bin weights do not fit its config.json (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    model.tie_weights()
    return HfModel(model, load_tokenizer(folder, where))


def import_dir(source: Path) -> HfModel:
    """``retain import DIR``: safetensors weights if it has them, else its ``.bin`` weights (safely)."""
    if not (source / "config.json").is_file():
        raise ModelError(f"{source} is not a transformers model directory: it has no config.json")
    if any(source.glob("*.safetensors")):
        return load_pretrained(source, str(source))
    if any(source.glob("pytorch_model*.bin")):
        return load_pickled_weights(source, str(source))
    raise ModelError(f"{source} holds no weights (no *.safetensors, no pytorch_model*.bin)")


def create(path: str) -> HfModel:
    """A full training's start: the architecture of ``path``'s config.json, random weights, its tokenizer."""
    if not path:
        raise ConfigError("config key 'model.path': the hf family builds its model from a local transformers "
                          "directory; set model.path, or bring a trained model in with `retain import DIR`")
    folder = Path(path)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise _not_a_model(f"model.path {path}", exc) from None
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return HfModel(model, load_tokenizer(folder, f"model.path {path}"))


def architecture_of(path: str) -> dict[str, Any]:
    """The shape keys of a directory's config.json (plain JSON: no transformers needed)."""
    import json

    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: config[k] for k in SHAPE_KEYS if k in config}


# --- the built-in gpt as transformers' GPT-2 (retain export --format hf) ------------------------

def gpt2_from_builtin(lm):
    """The built-in ``gpt`` model as a ``GPT2LMHeadModel`` with the same weights and a
    ``PreTrainedTokenizerFast`` around its tokenizer: pre-norm blocks, fused q/k/v in that
    order, exact GELU, LayerNorm eps 1e-5 and the tied head are GPT-2's own layout
    (transformers' Conv1D stores weights transposed)."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from retain.plugins.gpt import EOS, PAD

    arch = lm.module.arch
    config = GPT2Config(vocab_size=arch.vocab_size, n_positions=arch.context, n_embd=arch.d_model,
                        n_layer=arch.n_layer, n_head=arch.n_head, n_inner=4 * arch.d_model,
                        activation_function="gelu", resid_pdrop=arch.dropout, embd_pdrop=arch.dropout,
                        attn_pdrop=arch.dropout, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
                        bos_token_id=lm.eos_id, eos_token_id=lm.eos_id, pad_token_id=lm.pad_id)
    model = GPT2LMHeadModel(config)
    sd = {k: v.detach().cpu() for k, v in lm.module.state_dict().items()}
    mapped = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": sd["pos_emb.weight"],
              "transformer.ln_f.weight": sd["ln_f.weight"], "transformer.ln_f.bias": sd["ln_f.bias"]}
    for i in range(arch.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in (("ln1", "ln_1"), ("ln2", "ln_2")):
            mapped[theirs + b + ".weight"], mapped[theirs + b + ".bias"] = sd[ours + a + ".weight"], sd[ours + a + ".bias"]
        for a, b in (("qkv", "attn.c_attn"), ("proj", "attn.c_proj"), ("mlp.0", "mlp.c_fc"), ("mlp.2", "mlp.c_proj")):
            mapped[theirs + b + ".weight"] = sd[ours + a + ".weight"].t().contiguous()  # Conv1D: [in, out]
            mapped[theirs + b + ".bias"] = sd[ours + a + ".bias"]
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise ModelError(f"the gpt -> GPT-2 mapping is incomplete (missing {missing}, unexpected {unexpected})")
    model.tie_weights()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=lm.tokenizer, eos_token=EOS, bos_token=EOS, pad_token=PAD)
    tokenizer.model_max_length = arch.context
    return model.eval(), tokenizer


def export_builtin(lm, out: Path) -> None:
    model, tokenizer = gpt2_from_builtin(lm)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
