#!/usr/bin/env bash
# seqformer against Hugging Face MarianMTModel trained by the same recipe for the same wall time on this
# CPU (issue 3's comparison, at a budget one sitting can afford): recipes/tatoeba-en-fr-40min.json is the
# bundled model's recipe (architecture, vocabulary, batches, Adam, label smoothing, clipping; the first
# weights drawn by seqformer's default init, now "normal", where the bundled model started from "xavier")
# with its schedule fitted to 40 minutes: 300 warmup updates to lr 8e-4, then linearly towards zero at update 1,000;
# training stops at update 1,000 or after 40 minutes of batching + updates, whichever comes first, on
# both sides. Both models (their last weights, no choice made) are then scored once on the test split,
# greedy and beam 4. About 100 minutes of wall time in all. Needs: pip install -e ".[bench]" (transformers)
#   bash recipes/tatoeba-en-fr-vs-marian.sh
#   SEED=2 bash recipes/tatoeba-en-fr-vs-marian.sh   # another seed on both sides (weights, dropout, batch order)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
SEED=${SEED:-1}
SUFFIX=$([ "$SEED" = 1 ] && echo "" || echo "-seed$SEED")
RUN=work/runs/tatoeba-en-fr-40min$SUFFIX

python recipes/tatoeba_split.py "$SHARED/data/tatoeba-en-fr/train.tsv.gz" work/tatoeba-en-fr
python -m seqformer train --config recipes/tatoeba-en-fr-40min.json --seed "$SEED" --out "$RUN" --resume
python benchmarks/bundled_vs_marian.py --minutes 40 --recipe recipes/tatoeba-en-fr-40min.json --seed "$SEED" \
  --out "$RUN" --work "work/bench-marian-40min$SUFFIX" --seqformer-model "$RUN" --split test --beams 1,4
