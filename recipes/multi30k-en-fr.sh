#!/usr/bin/env bash
# Multi30k task 1, English->FR, from the raw files in ../shared/data/multi30k: trains a SentencePiece
# vocabulary and a d256 3+3 Transformer for 2,700 updates (the last 1,000 a linear lr cool-down towards zero;
# ~75 minutes of training on the 2-core CPU, recipes/multi30k-en-fr.json), chooses between the best
# checkpoint and averages of the last 3/5/8 on val, then scores test_2016_flickr once (cased sacreBLEU,
# lowercased tokenized BLEU as the papers compute it, chrF).
# About 80 minutes of wall time in all (measured: 79.7). Needs: pip install sacremoses matplotlib
#   bash recipes/multi30k-en-fr.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/multi30k.py --tgt fr "$@"
