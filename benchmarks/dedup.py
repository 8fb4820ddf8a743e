"""Dedup at scale: exact and minhash duplicate checks of a 10,000-item update against a
ledger of 10k, 100k and 1M learned items, and minhash recall by Jaccard similarity.

    python benchmarks/dedup.py --write BENCHMARKS.md

One ledger.sqlite is grown in stages (versions of 10,000 items each, 5% held
out) and copied at each size; then every deduper checks the same update
against each copy in a fresh process (cold start: open the ledger, look up,
answer), the sizes and dedupers interleaved in every repeat so that machine
load hits them alike; the table gives medians and each check's time relative
to the same deduper's at the smallest ledger. The update holds 1,000 exact copies of learned items, 1,000
near-duplicates (one character changed) of others and 8,000 new items; 5% of
the repeated items are held-out ones (counted as contaminating).

The 2,000 repeated items are indexed with their real MinHash band keys and
signatures; the other ledger items get random band keys and signatures through
the same index API, because computing a million real signatures takes minutes
and a lookup costs the same whatever produced the key (random keys make no
chance candidates, so "verified" counts only the real matches). Peak memory is
the process's peak RSS (it includes the interpreter and imports: see the
"before check" column). "verified" is the minhash candidates checked against
the threshold with their stored signatures, and the time that took (inside
the check's time).

Recall: pairs of texts (60 random words; a few of them replaced) binned by the
exact Jaccard similarity of their character 5-gram sets, with the default
options (threshold 0.8, 128 permutations); each variant is checked against its
original as a learned item (indexed in a fresh ledger) and within one batch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sections import write_section  # benchmarks/ is the script's folder: on sys.path

STAGE = 10_000       # items per version
REPEATED = 2_000     # learned items the update repeats (1,000 exactly, 1,000 nearly)
UPDATE = 10_000
HOLDOUT_EVERY = 20   # 5% of learned items are held out


def words(seed: int) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]


def text(n: int, vocab: list[str]) -> str:
    """A deterministic ~45-word paragraph, different for every n."""
    rng = random.Random(n * 7919 + 17)
    return " ".join(rng.choice(vocab) for _ in range(45)) + f" ({n})."


def typo(t: str) -> str:
    i = len(t) // 2
    return t[:i] + ("x" if t[i] != "x" else "y") + t[i + 1:]


def version_name(stage: int) -> str:
    return f"{stage + 1:04d}"


def role(n: int) -> str:
    return "holdout" if n % HOLDOUT_EVERY == 0 else "train"


# --- filling the ledger and the index ------------------------------------------------

def fill(db: Path, start_stage: int, end_stage: int) -> float:
    """Add versions start_stage..end_stage-1 (10,000 items each); returns seconds."""
    from retain.core.data.items import text_hash
    from retain.core.data.nearindex import NearDuplicateIndex
    from retain.core.storage.store import Ledger
    from retain.plugins.dedupers import MinhashDeduper, MinhashOptions

    t0 = time.perf_counter()
    ledger = Ledger(db)
    ledger.db.execute("PRAGMA cache_size = -262144")  # 256 MiB while filling: faster bulk inserts
    spec = MinhashDeduper(MinhashOptions()).spec
    index = NearDuplicateIndex(ledger, spec)
    sid = index.spec_id()
    vocab = words(0)
    rng = random.Random(start_stage)
    for stage in range(start_stage, end_stage):
        version = version_name(stage)
        first = stage * STAGE
        if stage == 0:  # the items the update repeats: real texts, real band keys
            texts = [text(n, vocab) for n in range(REPEATED)]
            hashes = [text_hash(t) for t in texts]
            rows = [(h, role(n), "bench", f"corpus:{n}") for n, h in enumerate(hashes)]
            from retain.core.data.nearindex import band_keys, signature_bytes, signatures
            sigs = signatures(spec, texts)
            keys = [band_keys(sid, spec, m) for m in sigs]
            values = [signature_bytes(m) for m in sigs]
            first = REPEATED
        else:
            hashes, rows, keys, values = [], [], [], []
        for n in range(first, (stage + 1) * STAGE):
            h = f"{rng.getrandbits(256):064x}"
            hashes.append(h)
            rows.append((h, role(n), "bench", f"corpus:{n}"))
            keys.append([rng.getrandbits(64) - (1 << 63) for _ in range(spec.bands)])
            values.append(rng.randbytes(4 * spec.num_perm))
        ledger.add(version, rows)
        index.add_keys(version, zip(hashes, keys, values))
    ledger.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    ledger.close()
    return time.perf_counter() - t0


# --- one measurement, in its own process ----------------------------------------------

def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or at its peak (VmHWM). Not getrusage's ru_maxrss: on
    Linux that carries the parent's peak across fork+exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(db: Path, deduper_name: str, stages: int) -> dict:
    from retain.core.data.items import Item
    from retain.core.data.known import KnownItems
    from retain.core.storage.store import Ledger
    from retain.plugins.dedupers import ExactDeduper, MinhashDeduper, MinhashOptions

    vocab = words(0)
    items = ([Item(text(n, vocab), "bench", "update", i) for i, n in enumerate(range(1000))]
             + [Item(typo(text(n, vocab)), "bench", "update", 1000 + i) for i, n in enumerate(range(1000, 2000))]
             + [Item(text(10**9 + n, vocab), "bench", "update", 2000 + n) for n in range(UPDATE - 2000)])
    chain = [version_name(s) for s in reversed(range(stages))]
    if deduper_name == "minhash":
        import datasketch  # noqa: F401 - imported before the clock starts, like the engine's plugins
        import scipy.integrate  # noqa: F401
    before = rss_mb()
    t0 = time.perf_counter()
    ledger = Ledger(db)  # cold: opened, as a new update process would
    dropped = ledger.forget_versions_except(chain)  # what recover() does at every start
    t_recover = time.perf_counter() - t0
    deduper = ExactDeduper() if deduper_name == "exact" else MinhashDeduper(MinhashOptions())
    dupes = deduper.find_duplicates(items, KnownItems(ledger, chain))
    seconds = time.perf_counter() - t0
    peak = rss_mb("VmHWM")
    kinds = [getattr(r, "details", {}).get("kind") for r in dupes.values()]
    stats = getattr(deduper, "stats", {})
    return {"seconds": seconds, "recover_ms": t_recover * 1000, "dropped": dropped, "rss_before_mb": before,
            "peak_rss_mb": peak, "found": len(dupes), "contaminating": kinds.count("holdout"),
            "verified": stats.get("verified", 0), "verify_ms": stats.get("verify_s", 0.0) * 1000}


# --- recall by similarity -------------------------------------------------------------

BINS = [(0.5, 0.6), (0.6, 0.7), (0.7, 0.75), (0.75, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.0)]


def similar_pairs(per_bin: int, seed: int = 0) -> dict[tuple[float, float], list[tuple[str, str]]]:
    """``per_bin`` (text, variant) pairs per Jaccard bin [lo, hi) of their char 5-gram sets."""
    from retain.core.data.nearindex import shingles

    rng = random.Random(seed)
    vocab = words(seed + 1)
    pairs: dict[tuple[float, float], list[tuple[str, str]]] = {b: [] for b in BINS}
    while any(len(p) < per_bin for p in pairs.values()):
        base = [rng.choice(vocab) for _ in range(60)]
        variant = list(base)
        for i in rng.sample(range(60), rng.randint(1, 16)):
            variant[i] = rng.choice(vocab)
        a, b = " ".join(base), " ".join(variant)
        sa, sb = set(shingles(a, "char", 5)), set(shingles(b, "char", 5))
        jaccard = len(sa & sb) / len(sa | sb)
        for lo, hi in BINS:
            if lo <= jaccard < hi and len(pairs[(lo, hi)]) < per_bin:
                pairs[(lo, hi)].append((a, b))
    return pairs


def recall(workdir: Path, per_bin: int) -> list[dict]:
    """Share of the pairs in each bin that the minhash deduper (default options) catches."""
    from retain.core.data.items import Item
    from retain.core.data.known import KnownItems
    from retain.core.data.nearindex import NearDuplicateIndex
    from retain.core.storage.store import Ledger
    from retain.plugins.dedupers import MinhashDeduper, MinhashOptions

    workdir.mkdir(parents=True, exist_ok=True)
    deduper = MinhashDeduper(MinhashOptions())
    rows = []
    for (lo, hi), pairs in similar_pairs(per_bin).items():
        db = workdir / "recall.sqlite"
        for p in workdir.glob("recall.sqlite*"):
            p.unlink()
        ledger = Ledger(db)
        originals = [a for a, _ in pairs]
        NearDuplicateIndex(ledger, deduper.spec).remember("0001", [(Item(t).hash, t) for t in originals])
        ledger.add("0001", [(Item(t).hash, "train", "bench", f"o:{i}") for i, t in enumerate(originals)])
        dupes = deduper.find_duplicates([Item(b) for _, b in pairs], KnownItems(ledger, ["0001"]))
        learned = sum(dupes[i].details["matched_hash"] == Item(pairs[i][0]).hash for i in dupes)
        ledger.close()
        batch = [Item(t) for pair in pairs for t in pair]
        dupes = deduper.find_duplicates(batch, KnownItems(None, []))
        within = sum(i % 2 == 1 and dupes[i].details["matched_hash"] == batch[i - 1].hash for i in dupes)
        rows.append({"bin": (lo, hi), "pairs": len(pairs), "learned": learned / len(pairs),
                     "batch": within / len(pairs)})
    for p in workdir.glob("recall.sqlite*"):
        p.unlink()
    return rows


def recall_table(rows: list[dict]) -> str:
    from retain.plugins.dedupers import MinhashDeduper, MinhashOptions

    spec = MinhashDeduper(MinhashOptions()).spec
    head = ("| Jaccard of the pair | pairs | caught against learned items | caught within a batch |\n"
            "|---|---:|---:|---:|\n")
    body = "".join(f"| {lo:.2f} to {hi:.2f} | {r['pairs']} | {r['learned']:.1%} | {r['batch']:.1%} |\n"
                   for r in rows for lo, hi in [r["bin"]])
    return (head + body + f"\nThreshold 0.8, {spec.num_perm} permutations, {spec.bands} bands of "
            f"{spec.rows} rows.\n")


# --- the whole run ------------------------------------------------------------------

def run(workdir: Path, sizes: list[int], repeats: int) -> tuple[list[dict], str]:
    workdir.mkdir(parents=True, exist_ok=True)
    growing = workdir / "ledger.sqlite"
    for p in workdir.glob("ledger*.sqlite*"):
        p.unlink()
    copies, done = {}, 0
    for size in sizes:
        stages = size // STAGE
        fill_s = fill(growing, done, stages)
        done = stages
        copies[size] = workdir / f"ledger-{size}.sqlite"
        shutil.copyfile(growing, copies[size])
        print(f"ledger at {size:,} items ({growing.stat().st_size / 2**20:.0f} MiB), "
              f"filled in {fill_s:.0f} s", file=sys.stderr)
    growing.unlink()
    runs: dict[tuple[str, int], list[dict]] = {}
    for rep in range(repeats):
        for size in sizes:
            for name in ("exact", "minhash"):
                out = subprocess.run([sys.executable, __file__, "--measure", name, "--db", str(copies[size]),
                                      "--stages", str(size // STAGE)], capture_output=True, text=True, check=True)
                runs.setdefault((name, size), []).append(json.loads(out.stdout))
        print(f"repeat {rep + 1}/{repeats} done", file=sys.stderr)
    rows = []
    for name in ("exact", "minhash"):
        for size in sizes:
            r = runs[(name, size)]
            med = {k: statistics.median(x[k] for x in r) for k in r[0]}
            rows.append({"deduper": name, "ledger": size, "db_mib": copies[size].stat().st_size / 2**20, **med})
        base = rows[-len(sizes)]["seconds"]
        for row in rows[-len(sizes):]:
            row["ratio"] = row["seconds"] / base
    for p in copies.values():
        p.unlink()
    return rows, table(rows, repeats)


def table(rows: list[dict], repeats: int) -> str:
    head = ("| deduper | ledger items | ledger.sqlite | check of 10k items | vs smallest ledger | items/s "
            "| recover() at start | peak RSS | RSS before check | duplicates found | of which contaminating "
            "| verified |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(
        f"| {r['deduper']} | {r['ledger']:,} | {r['db_mib']:.0f} MiB | {r['seconds']:.2f} s | {r['ratio']:.2f}x "
        f"| {UPDATE / r['seconds']:,.0f} | {r['recover_ms']:.1f} ms | {r['peak_rss_mb']:.0f} MiB "
        f"| {r['rss_before_mb']:.0f} MiB | {r['found']:,.0f} | {r['contaminating']:,.0f} "
        f"| {verified(r)} |\n" for r in rows)
    return head + body + f"\nMedians of {repeats} runs, each a fresh process.\n"


def verified(r: dict) -> str:
    if r["deduper"] != "minhash":
        return ""
    return f"{r['verified']:,.0f} in {r['verify_ms']:.0f} ms"


SECTION = "## Dedup at scale (issue 7)"




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="ledger sizes (multiples of 10000)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--parts", default="scale,recall", help="what to measure: scale, recall or both")
    ap.add_argument("--pairs", type=int, default=200, help="recall: pairs per similarity bin")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/retain-dedup-bench"))
    ap.add_argument("--write", type=Path, help="put the table into this BENCHMARKS.md")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--stages", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.db, args.measure, args.stages)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    parts = set(args.parts.split(","))
    t0 = time.perf_counter()
    md = ""
    if "scale" in parts:
        md += run(args.workdir, sizes, args.repeats)[1]
    if "recall" in parts:
        md += ("\n" if md else "") + recall_table(recall(args.workdir, args.pairs))
    print(md)
    if args.write:
        import platform

        cmd = "python benchmarks/dedup.py " + " ".join(a for a in sys.argv[1:])
        text = (f"{SECTION}\n\nCommand: `{cmd}` ({time.perf_counter() - t0:.0f} s in all on "
                f"{os.cpu_count()} CPUs, Python {platform.python_version()}).\n\n"
                + __doc__.split("\n\n", 2)[2].strip() + "\n\n" + md)
        write_section(args.write, SECTION, text)


if __name__ == "__main__":
    main()
