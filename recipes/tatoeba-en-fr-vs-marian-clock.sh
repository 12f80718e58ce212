#!/usr/bin/env bash
# seqformer against Hugging Face MarianMTModel, same recipe, same 40 minutes, both at once, a core each:
# recipes/tatoeba-en-fr-40min-clock.json is recipes/tatoeba-en-fr-40min.json (the bundled model's recipe at
# a 40-minute budget) with its cool-down by the clock instead of by updates: 300 warmup updates to lr 8e-4,
# then inverse-sqrt, scaled down linearly to zero over the last 20 of the 40 minutes of batching + updates,
# on each engine's own clock. So an engine that updates faster gets more updates in the same time, and also
# leaves its warmup (counted in updates, as in every recipe) sooner: more of its 40 minutes at the peak rate.
# The two train side by side on one thread each (the recipe's "threads": 1), so that what the machine does
# during the 40 minutes it does to both; the MarianMTModel side starts once the seqformer side has written
# the tokenizer both use, and each side's clock starts after its own data preparation (so the windows are
# offset by that, under a minute; seqformer's checkpoint writes and final dev loss fall outside its clock).
# Both models (their last weights, no choice made) are then scored once on the test split, greedy and beam 4,
# on 2 threads. About 45 minutes in all. Needs: pip install -e ".[bench]" (transformers)
#   bash recipes/tatoeba-en-fr-vs-marian-clock.sh
#   SEED=2 bash recipes/tatoeba-en-fr-vs-marian-clock.sh   # another seed on both sides (weights, dropout, order)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
SEED=${SEED:-1}
RECIPE=recipes/tatoeba-en-fr-40min-clock.json
RUN=work/runs/tatoeba-en-fr-40min-clock-seed$SEED
WORK=work/bench-marian-40min-clock-seed$SEED
LOG=work/logs/vs-marian-clock-seed$SEED

python -c "import transformers" || { echo "the MarianMTModel side needs transformers: pip install -e '.[bench]'" >&2; exit 1; }
python recipes/tatoeba_split.py "$SHARED/data/tatoeba-en-fr/train.tsv.gz" work/tatoeba-en-fr
if [ -e "$RUN" ] || [ -e "$WORK" ]; then
  echo "$RUN or $WORK exists: a comparison is one uninterrupted run of both sides (remove them to rerun)" >&2
  exit 1
fi
mkdir -p work/logs
SEQFORMER="" MARIAN=""
# background jobs of a script ignore Ctrl-C: stop both sides with the script, however it ends
trap 'kill $SEQFORMER $MARIAN 2>/dev/null || true' EXIT
python -m seqformer train --config "$RECIPE" --seed "$SEED" --out "$RUN" --quiet > "$LOG-seqformer.log" 2>&1 &
SEQFORMER=$!
until [ -f "$RUN/spm.model" ] || [ -f "$RUN/tgt.spm" ]; do  # the tokenizer both sides use (written whole)
  if ! kill -0 "$SEQFORMER" 2>/dev/null; then
    echo "the seqformer side stopped before writing its tokenizer: see $LOG-seqformer.log" >&2
    exit 1
  fi
  sleep 2
done
python benchmarks/bundled_vs_marian.py --minutes 40 --recipe "$RECIPE" --seed "$SEED" --out "$RUN" --work "$WORK" \
  --no-score > "$LOG-marian.log" 2>&1 &
MARIAN=$!
for _ in 1 2; do  # the first side to fail stops the other (the trap) instead of waiting out its 40 minutes
  wait -n || { echo "a side failed: see $LOG-seqformer.log and $LOG-marian.log" >&2; exit 1; }
done
trap - EXIT
grep -h '"steps"' "$LOG-marian.log" || true
python benchmarks/bundled_vs_marian.py --no-train --work "$WORK" --seqformer-model "$RUN" --split test --beams 1,4 \
  --threads 2
