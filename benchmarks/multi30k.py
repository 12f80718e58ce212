"""Multi30k task 1: train (or reuse) a model with recipes/multi30k-en-<tgt>.json, average its last
checkpoints, and score test_2016_flickr the two ways the field reports.

    python benchmarks/multi30k.py --tgt fr            # trains (<= 90 min on the 2-core CPU), then scores
    python benchmarks/multi30k.py --tgt fr --no-train # scores an existing run

* sacreBLEU on detokenized, cased output (signature printed): the reproducible number.
* "paper BLEU": lowercased and tokenized before scoring, as the Multi30k papers compute it with
  multi-bleu.perl on Moses-tokenized lowercased text; here sacreBLEU with ``lowercase=True`` and
  its ``13a`` tokenizer (Moses-like mteval tokenization) stands in for that pipeline.
* chrF (sacreBLEU defaults).
Also prints dev BLEU against training wall time from the run's train_log.jsonl (and plots it
to <run>/dev_bleu.png when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from seqformer import Translator
from seqformer.data.corpus import read_lines

DATA = Path("../shared/data/multi30k")


def curve(run: Path) -> list[tuple[float, float]]:
    """(training minutes, dev BLEU) points from the run's log."""
    points, elapsed = [], 0.0
    for line in (run / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        elapsed = rec.get("elapsed_s", elapsed)
        if "bleu" in rec:
            points.append((round(elapsed / 60, 1), round(rec["bleu"], 2)))
    return points


def plot(points: list[tuple[float, float]], out: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    ax.set_xlabel("training wall time (min, 2-core CPU)")
    ax.set_ylabel("dev BLEU (val, greedy)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tgt", choices=("fr", "de"), default="fr")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--average", type=int, default=5)
    ap.add_argument("--beam-size", type=int, default=4)
    args = ap.parse_args()
    recipe = Path(f"recipes/multi30k-en-{args.tgt}.json")
    run = Path(json.loads(recipe.read_text())["train"]["out"])
    seqformer = [sys.executable, "-m", "seqformer"]
    if not args.no_train:
        subprocess.run(seqformer + ["train", "--config", str(recipe), "--quiet"], check=True)
    avg = run.with_name(run.name + "-avg")
    subprocess.run(seqformer + ["average", str(run), "--last", str(args.average), "--out", str(avg)], check=True)
    src = read_lines(DATA / "test_2016_flickr.en.gz")
    ref = read_lines(DATA / f"test_2016_flickr.{args.tgt}.gz")
    for name, model in (("best", run), ("averaged", avg)):
        hyps = Translator.load(model).translate(src, beam_size=args.beam_size)
        cased, lower, chrf = BLEU(), BLEU(lowercase=True), CHRF()
        print(json.dumps({
            "model": name, "pair": f"en-{args.tgt}", "test": "test_2016_flickr",
            "sacrebleu": round(cased.corpus_score(hyps, [ref]).score, 2), "sacrebleu_sig": str(cased.get_signature()),
            "bleu_lc_tok": round(lower.corpus_score(hyps, [ref]).score, 2), "bleu_lc_tok_sig": str(lower.get_signature()),
            "chrf": round(chrf.corpus_score(hyps, [ref]).score, 2)}))
    points = curve(run)
    print(json.dumps({"dev_bleu_vs_minutes": points}))
    plot(points, run / "dev_bleu.png", f"Multi30k EN-{args.tgt.upper()}")


if __name__ == "__main__":
    main()
