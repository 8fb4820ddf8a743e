"""Bytes per version at the design document's size: an 88M-parameter model, full fine-tuning vs LoRA.

The built-in GPT at n_layer 12, d_model 768, n_head 12 (vocab 2048, context 512: 87.6M
parameters), and with ``--families gpt,hf`` the same shape as a transformers GPT-2
(``GPT2Config``, random init, built locally and brought in with ``retain import``). The
sizes do not depend on how well the model is trained, so the run is short: the base is one
epoch on a few Wikipedia paragraphs; then, each from a copy of the same base, one daily
update of Shakespeare speeches (one epoch) with full fine-tuning (``low_lr``), ``lora`` at
ranks 8 and 16, and ``lora`` rank 16 with ``replay``. Measured per update: the bytes of the
version directory, of its weights file (``model.safetensors``, ``hf/model.safetensors`` or
``adapter.safetensors``) and of its strategy state, the trained parameters, and seconds.

    .venv/bin/python benchmarks/lora_size.py                       # gpt only
    .venv/bin/python benchmarks/lora_size.py --families gpt,hf

One torch thread (as the tests), because the machine is shared: times are this run's only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The corpora live beside the checkout (../shared/data); RETAIN_DATA points elsewhere (a worktree).
DATA = Path(os.environ.get("RETAIN_DATA", REPO.parent / "shared" / "data"))
SIZE = ["model.n_layer=12", "model.n_head=12", "model.d_model=768", "model.vocab_size=2048",
        "full_training.max_seq_length=512", "fine_tuning.max_seq_length=512", "full_training.epochs=1",
        "fine_tuning.epochs=1", "full_training.batch_size=8", "fine_tuning.batch_size=8",
        "validation.retention_fraction=0.1", "validation.holdout_fraction=0.1", "validators=[finite]",
        "device=cpu"]
UPDATES = [("full fine-tuning (low_lr)", ["fine_tuning.strategy=[low_lr]"]),
           ("lora rank 8", ["fine_tuning.strategy=[lora]", "options.lora.rank=8", "options.lora.alpha=16"]),
           ("lora rank 16", ["fine_tuning.strategy=[lora]", "options.lora.rank=16", "options.lora.alpha=32"]),
           ("lora rank 16 + replay", ["fine_tuning.strategy=[lora,replay]", "options.lora.rank=16",
                                      "options.lora.alpha=32"])]


def texts(base_n: int, new_n: int, seed: int) -> tuple[list[str], list[str]]:
    lines = (DATA / "wikitext2-valid.txt").read_text(encoding="utf-8").splitlines()
    paras = [p.strip() for p in lines if len(p.strip()) >= 200 and not p.strip().startswith("=")]
    speeches = [s.strip() for s in (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")]
    speeches = [s for s in speeches if len(s) >= 80]
    return random.Random(seed).sample(paras, base_n), speeches[:new_n]


def write_jsonl(path: Path, items: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in items), encoding="utf-8")
    return path


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def gpt2_dir(root: Path, wiki: list[str]) -> Path:
    """A transformers GPT-2 of the built-in model's shape, random weights, a tokenizer trained on ``wiki``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from retain.plugins.gpt import EOS, train_tokenizer

    tok = train_tokenizer(wiki, 2048)
    eos = tok.token_to_id(EOS)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=512, vocab_size=tok.get_vocab_size(),
                        bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(root)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS).save_pretrained(root)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="gpt", help="gpt, hf, or gpt,hf")
    ap.add_argument("--work", type=Path, default=Path("lora-size-work"))
    ap.add_argument("--base-items", type=int, default=48)
    ap.add_argument("--new-items", type=int, default=33)  # the design document's day: 45 items, 12 duplicates
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"skipped: the shared corpora are not at {DATA}")
        sys.exit(0)

    import torch

    torch.set_num_threads(1)
    from retain.core.config import load_config
    from retain.core.engine import Engine
    from retain.core.storage.models import load_version
    from retain.core.storage.store import ModelStore

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    wiki, play = texts(args.base_items, args.new_items, args.seed)
    base_data = write_jsonl(args.work / "wikipedia.jsonl", wiki)
    new_data = write_jsonl(args.work / "shakespeare.jsonl", play)
    rows = []
    for fam in args.families.split(","):
        base = args.work / f"{fam}-base"
        cfg = load_config(None, [*SIZE, "fine_tuning.strategy=[replay]", f"seed={args.seed}"])
        t0 = time.perf_counter()
        if fam == "gpt":  # the base records replay's buffer, as a user's base would
            Engine(cfg).train([str(base_data)], base)
            how = "retain train, 1 epoch"
        else:
            Engine(cfg).import_model(gpt2_dir(args.work / "gpt2-source", wiki), base, [str(base_data)])
            how = "retain import of a GPT2Config directory"
        base_seconds = time.perf_counter() - t0
        store = ModelStore(base)
        params = sum(p.numel() for p in load_version(store).lm.module.parameters())
        rows.append({"family": fam, "update": f"base ({how})", "parameters": params, "trained": params,
                     "version_bytes": dir_bytes(base / "versions/0001"),
                     "weights_bytes": sum(p.stat().st_size for p in (base / "versions/0001").rglob("*.safetensors")
                                          if "strategy" not in p.parts),
                     "state_bytes": dir_bytes(base / "versions/0001/strategy"), "seconds": base_seconds})
        print(f"{fam}: base {params / 1e6:.1f}M parameters, {base_seconds:.0f}s", file=sys.stderr)
        for label, extra in UPDATES:
            work = args.work / f"{fam}-{label.split(' (')[0].replace(' ', '-').replace('+', 'and')}"
            shutil.copytree(base, work)
            t0 = time.perf_counter()
            report = Engine(load_config(None, [*SIZE, *extra, f"seed={args.seed}"])).update([str(new_data)], work)
            seconds = time.perf_counter() - t0
            vdir = work / "versions" / report["version"]
            weights = sum(p.stat().st_size for p in vdir.rglob("*.safetensors") if "strategy" not in p.parts)
            state = dir_bytes(vdir / "strategy") if (vdir / "strategy").is_dir() else 0
            rows.append({"family": fam, "update": label, "parameters": report["parameters"]["total"],
                         "trained": report["parameters"]["trainable"], "version_bytes": dir_bytes(vdir),
                         "weights_bytes": weights, "state_bytes": state, "seconds": seconds,
                         "new_loss": [report["metrics"]["new_loss_before"], report["metrics"]["new_loss_after"]]})
            print(f"  {label}: {dir_bytes(vdir) / 2**20:.1f} MiB, {seconds:.0f}s", file=sys.stderr)
    (args.work / "results.json").write_text(json.dumps(rows, indent=2))
    full = {r["family"]: r["version_bytes"] for r in rows if r["update"].startswith("full")}
    print("| family | version | trained parameters | version directory | weights file | strategy state | "
          "share of a full version | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = f"{100 * r['version_bytes'] / full[r['family']]:.1f}%" if r["family"] in full else "-"
        print(f"| {r['family']} | {r['update']} | {r['trained']:,} of {r['parameters']:,} | "
              f"{r['version_bytes'] / 2**20:,.1f} MiB | {r['weights_bytes'] / 2**20:,.1f} MiB | "
              f"{r['state_bytes'] / 2**20:,.2f} MiB | {share} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
