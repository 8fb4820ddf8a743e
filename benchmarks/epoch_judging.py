"""What early stopping costs at the size users run: one epoch's judgment against one epoch of a
daily update, on the design document's ~90M model (the built-in GPT at n_layer 12, d_model 768).

An update with early stopping scores its candidate after every epoch on the
retention set (``validation.eval_max_items``, 256 at most), the last full
training's held-out items (the cumulative drift) and the new held-out items,
and samples the ``generation`` validator's prompts. This measures, side by
side in one process (medians of ``--repeats`` alternating runs, first round
dropped), the seconds of

- one epoch of a daily update: 33 new items and as many replayed tokens
  (``rewarm,replay`` at share 0.5), batch 8;
- one epoch's judgment: scoring 64 retention items, 75 drift items and 7 new
  held-out items, and the generation validator.

Text: the Python language reference (ships with Python), items of ~500 bytes.
Context 512 (the default ``max_seq_length``). Random weights: time does not
depend on them.

    .venv/bin/python benchmarks/epoch_judging.py              # ~10 min on 2 busy cores
    .venv/bin/python benchmarks/epoch_judging.py --small      # the 0.7M default model, seconds
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="the default 0.7M model instead of the 88M one")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from retain.core.config import load_config
    from retain.core.quality.evaluation import score_texts
    from retain.core.learning.lm import lm_loss
    from retain.core.pluginmanager import Registry, default_plugin_manager
    from retain.demo import base_corpus
    from retain.plugins.models import GptFamily

    torch.set_num_threads(args.threads)
    size = [] if args.small else ["model.n_layer=12", "model.n_head=12", "model.d_model=768", "model.vocab_size=8192"]
    cfg = load_config(None, [*size, "device=cpu"])
    texts = base_corpus(1500)
    lm = GptFamily().create(cfg, texts, cfg.full_training.max_seq_length)
    params = sum(p.numel() for p in lm.module.parameters())
    new, replayed = texts[:33], texts[100:133]
    retention, drift, held = texts[200:264], texts[300:375], texts[400:407]
    generation = Registry.of(default_plugin_manager()).build("validators", "generation", cfg)
    optimizer = torch.optim.AdamW(lm.module.parameters(), lr=1e-4)
    seq = cfg.fine_tuning.max_seq_length

    def epoch() -> None:
        rows = lm.encode(new + replayed, seq)
        order = torch.randperm(len(rows))
        for start in range(0, len(order), 8):
            idx = order[start:start + 8]
            y = rows.y[idx]
            width = int((y != -100).sum(1).max())
            loss = lm_loss(lm.module(rows.x[idx, :width]), y[:, :width])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def judge() -> None:
        for group in (retention, drift, held):
            score_texts(lm, group, seq)

        class Evidence:  # what the generation validator reads
            model, settings = lm, None
        generation.validate(Evidence())

    times: dict[str, list[float]] = {"epoch": [], "judge": []}
    for r in range(args.repeats + 1):
        for name, fn in (("epoch", epoch), ("judge", judge)):
            t0 = time.perf_counter()
            fn()
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    e, j = statistics.median(times["epoch"]), statistics.median(times["judge"])
    print(f"model {params / 1e6:.1f}M parameters, context {seq}, {args.threads} torch threads, "
          f"medians of {args.repeats}")
    print("| work | seconds | vs one training epoch |")
    print("|---|---:|---:|")
    print(f"| one epoch of a daily update (33 new items + as many replayed tokens) | {e:.1f} | 1.00 |")
    print(f"| one epoch's judgment (64 + 75 + 7 items scored, 4 samples) | {j:.1f} | {j / e:.2f} |")


if __name__ == "__main__":
    main()
