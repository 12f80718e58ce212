"""Carve train/dev/test splits from ../shared/data/tatoeba-en-fr/train.tsv.gz.

Whole English sentences are held out with all their French translations, so the
test split's sources are never trained on. The split is a pure function of the
sentence text (a hash), so it is the same on every machine.

    python recipes/tatoeba_split.py ../shared/data/tatoeba-en-fr/train.tsv.gz work/tatoeba-en-fr
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from collections import defaultdict
from pathlib import Path

TEST_PERCENT = 2  # buckets 0-1 of 100
DEV_PERCENT = 1  # bucket 2


def bucket(english: str) -> int:
    return int(hashlib.sha1(english.encode("utf-8")).hexdigest(), 16) % 100


def main(src: str, out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    refs: dict[str, dict[str, list[str]]] = {"train": defaultdict(list), "dev": defaultdict(list),
                                             "test": defaultdict(list)}
    with gzip.open(src, "rt", encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 2 or not cols[0].strip() or not cols[1].strip():
                continue
            en, fr = cols[0].strip(), cols[1].strip()
            b = bucket(en)
            split = "test" if b < TEST_PERCENT else "dev" if b < TEST_PERCENT + DEV_PERCENT else "train"
            refs[split][en].append(fr)
    for split, groups in refs.items():
        with open(out / f"{split}.tsv", "w", encoding="utf-8") as f:
            for en, frs in groups.items():
                for fr in frs:
                    f.write(f"{en}\t{fr}\n")
        if split != "train":
            # One JSON object per English sentence with every reference: for multi-reference BLEU.
            with open(out / f"{split}.multi.jsonl", "w", encoding="utf-8") as f:
                for en, frs in groups.items():
                    f.write(json.dumps({"src": en, "refs": frs}, ensure_ascii=False) + "\n")
        n_pairs = sum(len(v) for v in groups.values())
        print(f"{split}: {len(groups)} English sentences, {n_pairs} pairs")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", nargs="?", default="../shared/data/tatoeba-en-fr/train.tsv.gz")
    ap.add_argument("out_dir", nargs="?", default="work/tatoeba-en-fr")
    args = ap.parse_args()
    main(args.src, args.out_dir)
