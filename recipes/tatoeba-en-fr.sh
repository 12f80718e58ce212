#!/usr/bin/env bash
# Reproduces the bundled English->French model from ../shared (see src/seqformer/models/en-fr/MODEL_CARD.md).
# Wall time on the 2-core CPU (AMD EPYC, fp32): about 445 minutes of training for the recipe's 11,800 updates
# (~2.25 s per update, validation every 500 included; the last 3,300 are the learning-rate cool-down), then
# ~5 minutes. Stop it any time and run it again: --resume continues exactly where it stopped (the shipped
# model was trained in five such legs).
#   bash recipes/tatoeba-en-fr.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
RUN=work/runs/tatoeba-en-fr

python recipes/tatoeba_split.py "$SHARED/data/tatoeba-en-fr/train.tsv.gz" work/tatoeba-en-fr
python -m seqformer train --config recipes/tatoeba-en-fr.json --resume
# Candidates: the last checkpoint alone and averages of the last 3 and 5; choose on the dev split (never on test).
for n in 1 3 5; do
  python -m seqformer average "$RUN" --last "$n" --out "$RUN-last$n"
  python benchmarks/tatoeba_eval.py --model "$RUN-last$n" --split dev --beams 4
done
CHOSEN=${CHOSEN:-$RUN-last3}  # the shipped model: on dev (beam 4) the average of the last 3 checkpoints (11,000-11,800) scored 34.51 BLEU, the last alone 34.23, the last 5 34.01
python recipes/export_bundled.py "$CHOSEN" src/seqformer/models/en-fr
cp "$RUN/training.json" src/seqformer/models/en-fr/  # the run's training state and config, for provenance
cp "$SHARED/data/tatoeba-en-fr/ABOUT-manythings.txt" src/seqformer/models/en-fr/
python benchmarks/tatoeba_eval.py --split test --beams 1,4
