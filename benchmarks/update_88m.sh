#!/usr/bin/env bash
# The design document's size, one update end to end: a real `retain train` of the built-in GPT at
# 12 layers x 768 (88M parameters; 1 epoch on 150 WikiText-2 paragraphs), then a 3-epoch
# `retain update` of 41 new paragraphs with the default recipe and config (precision auto), as a
# user runs them; prints the update's timings (where its wall time goes) and counts.
# Usage: bash benchmarks/update_88m.sh   (WORK: its folder, default /tmp/update-88m;
#                                          RETAIN_DATA: the corpora, default ../shared/data;
#                                          POOL=75: hold out half the base, a retention pool of 75
#                                          as the design document's 1,500-item base gives, instead
#                                          of the default 5%: 8 items)
set -e
cd "$(dirname "$0")/.."
W=${WORK:-/tmp/update-88m}
D=${RETAIN_DATA:-$(pwd)/../shared/data}
R=.venv/bin/retain
mkdir -p "$W"
python3 - "$D" "$W" <<'PY'
import json, random, sys
data, work = sys.argv[1:]
def paras(p):
    return [l.strip() for l in open(p, encoding="utf-8") if len(l.strip()) >= 200 and not l.strip().startswith("=")]
random.seed(0)
base, new = paras(f"{data}/wikitext2-valid.txt"), paras(f"{data}/wikitext2-test.txt")
random.shuffle(base); random.shuffle(new)
for name, texts in (("base", base[:150]), ("new", new[:41])):
    open(f"{work}/{name}.jsonl", "w").write("".join(json.dumps({"text": t}) + "\n" for t in texts))
PY
SETS="--set model.n_layer=12 --set model.n_head=12 --set model.d_model=768 --set model.vocab_size=2048
      --set full_training.epochs=1 --set full_training.max_seq_length=512"
if [ "${POOL:-}" = 75 ]; then SETS="$SETS --set validation.retention_fraction=0.5"; fi
rm -rf "$W/model"
uptime
/usr/bin/time -f "train wall %e s" $R train -d "$W/base.jsonl" -m "$W/model" $SETS --json -q > "$W/train.json"
uptime
/usr/bin/time -f "update wall %e s" $R update -d "$W/new.jsonl" -m "$W/model" --epochs 3 --json -q > "$W/update.json" || true
uptime
python3 - "$W/update.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(json.dumps(r["timings"], indent=1)); print(r.get("status"), r.get("settings", {}).get("learning_rate"), r.get("counts"))
PY
