"""Multi30k task 1: train (or reuse) a model with recipes/multi30k-en-<tgt>.json, choose between its
best checkpoint and averages of its last checkpoints on val, and score test_2016_flickr once.

    python benchmarks/multi30k.py --tgt fr            # trains (< 90 min on the 2-core CPU), then scores
    python benchmarks/multi30k.py --tgt fr --no-train # scores an existing run

* sacreBLEU on detokenized, cased output (signature printed): the reproducible number.
* "paper BLEU" (``bleu_lc_tok``): what the Multi30k papers report, multi-bleu.perl on lowercased,
  Moses-tokenized text. Here: hypotheses and references lowercased, Moses punctuation-normalized and
  tokenized for the target language (sacremoses, no escaping, no aggressive hyphen splitting), then
  corpus BLEU on those tokens (sacreBLEU ``tokenize="none"``, which is multi-bleu's arithmetic).
* chrF (sacreBLEU defaults).
Also prints dev BLEU against training wall time from the run's train_log.jsonl (and plots it
to <run>/dev_bleu.png when matplotlib is installed). Needs ``pip install sacremoses``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF

from seqformer import Translator
from seqformer.data.corpus import read_lines

DATA = Path("../shared/data/multi30k")


def recipe_path(tgt: str) -> Path:
    return Path(f"recipes/multi30k-en-{tgt}.json")


def recipe_run(recipe: Path) -> Path:
    """The run directory that ``recipe`` trains into."""
    return Path(json.loads(recipe.read_text())["train"]["out"])


def model_dir(run: Path, name: str) -> Path:
    """Where candidate ``name`` lives: "best" is the run itself, "avgN" sits beside it."""
    return run if name == "best" else run.with_name(f"{run.name}-{name}")


def curve(run: Path) -> list[tuple[float, float]]:
    """(training minutes, dev BLEU) points from the run's log."""
    points, elapsed = [], 0.0
    for line in (run / "train_log.jsonl").read_text().splitlines():
        rec = json.loads(line)
        elapsed = rec.get("elapsed_s", elapsed)
        if "bleu" in rec:
            points.append((round(elapsed / 60, 1), round(rec["bleu"], 2)))
    return points


def label(run: Path, pair: str) -> str:
    """A curve's legend: the pair and the run's model shape, read from the run itself."""
    m = json.loads((run / "config.json").read_text())["model"]
    return f"{pair} (d{m['d_model']} {m['n_encoder_layers']}+{m['n_decoder_layers']})"


def plot(curves: dict[str, list[tuple[float, float]]], out: Path, dashed: frozenset[str] = frozenset()) -> None:
    """Dev BLEU against training wall time, one line per run, ``dashed`` ones dashed (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for label, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label,
                linestyle="--" if label in dashed else "-")
    ax.set_xlabel("training wall time (min, 2-core CPU)")
    ax.set_ylabel("val BLEU (greedy, cased sacreBLEU)")
    ax.set_title("Multi30k: seqformer")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def paper_tokens(lines: list[str], lang: str) -> list[str]:
    """Lowercased, Moses-tokenized text: what multi-bleu.perl scores in the Multi30k papers."""
    try:
        from sacremoses import MosesPunctNormalizer, MosesTokenizer
    except ImportError:
        sys.exit("benchmarks/multi30k.py: the paper-style BLEU needs sacremoses (pip install sacremoses)")
    norm, tok = MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang)
    return [tok.tokenize(norm.normalize(s.lower()), escape=False, return_str=True) for s in lines]


def scores(hyps: list[str], refs: list[str], lang: str) -> dict[str, float | str]:
    """Cased detokenized sacreBLEU, the paper-style lowercased tokenized BLEU, and chrF."""
    paper = BLEU(tokenize="none", force=True).corpus_score(paper_tokens(hyps, lang), [paper_tokens(refs, lang)])
    cased = BLEU()
    return {"sacrebleu": round(cased.corpus_score(hyps, [refs]).score, 2),
            "bleu_lc_tok": round(paper.score, 2),
            "lc_tok_ref_len": paper.ref_len,  # multi-bleu's reflen: the reference tokens the papers count against
            "chrf": round(CHRF().corpus_score(hyps, [refs]).score, 2),
            "sacrebleu_sig": str(cased.get_signature())}


def candidates(run: Path, averages: list[int]) -> dict[str, Path]:
    """The run's best-by-dev checkpoint and averages of its last N checkpoints."""
    found = {"best": run}
    for n in averages:
        out = found[f"avg{n}"] = model_dir(run, f"avg{n}")
        subprocess.run([sys.executable, "-m", "seqformer", "average", str(run), "--last", str(n), "--out", str(out)],
                       check=True)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tgt", choices=("fr", "de"), default="fr")
    ap.add_argument("--recipe", type=Path, help="another recipe than recipes/multi30k-en-<tgt>.json (its tgt_lang "
                    "must be --tgt)")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--resume", action="store_true", help="continue the recipe's stopped run (seqformer train --resume)")
    ap.add_argument("--averages", default="3,5,8", help="last-N checkpoint averages to try on val")
    ap.add_argument("--beam-size", type=int, default=4)
    ap.add_argument("--chosen", help="skip the choice on val and score this model (best, avg3, ...) on test")
    ap.add_argument("--curves", type=Path, help="only plot val BLEU vs time of the en-fr and en-de runs to this PNG")
    ap.add_argument("--also", action="append", default=[], metavar="RUN=LABEL",
                    help="with --curves: another run directory's curve, under LABEL (repeatable)")
    args = ap.parse_args()
    if args.curves:
        runs = [(f"EN-{t.upper()}", recipe_run(recipe_path(t))) for t in ("fr", "de")]
        curves = {label(run, pair): curve(run) for pair, run in runs if (run / "train_log.jsonl").exists()}
        dashed = set()
        for extra in args.also:
            path, sep, name = extra.partition("=")
            if not sep or not (Path(path) / "train_log.jsonl").is_file():
                ap.error(f"--also: expected RUN=LABEL with RUN/train_log.jsonl, found {extra!r}")
            curves[name] = curve(Path(path))
            dashed.add(name)
        plot(curves, args.curves, dashed=frozenset(dashed))
        return
    recipe = args.recipe or recipe_path(args.tgt)
    found = json.loads(recipe.read_text())["train"].get("tgt_lang")
    if found != args.tgt:
        ap.error(f"{recipe}: tgt_lang is {found!r}, expected {args.tgt!r} (--tgt)")
    run = recipe_run(recipe)
    if not args.no_train:
        resume = ["--resume"] if args.resume else []
        subprocess.run([sys.executable, "-m", "seqformer", "train", "--config", str(recipe), "--quiet", *resume],
                       check=True)
    # Choose on val (the dev set), then score test_2016_flickr once, with the chosen model only.
    split = {name: (read_lines(DATA / f"{name}.en.gz"), read_lines(DATA / f"{name}.{args.tgt}.gz"))
             for name in ("val", "test_2016_flickr")}
    if args.chosen:  # already chosen on val by an earlier run of this script
        chosen, model = args.chosen, model_dir(run, args.chosen)
    else:
        on_val = {}
        for name, model in candidates(run, [int(n) for n in args.averages.split(",")]).items():
            hyps = Translator.load(model).translate(split["val"][0], beam_size=args.beam_size)
            on_val[name] = (scores(hyps, split["val"][1], args.tgt), model)
            print(json.dumps({"split": "val", "model": name, **on_val[name][0]}), flush=True)
        chosen = max(on_val, key=lambda name: on_val[name][0]["sacrebleu"])
        model = on_val[chosen][1]
    translator = Translator.load(model)
    src, ref = split["test_2016_flickr"]
    start = time.perf_counter()
    hyps = translator.translate(src, beam_size=args.beam_size)
    seconds = time.perf_counter() - start
    print(json.dumps({"split": "test_2016_flickr", "pair": f"en-{args.tgt}", "model": chosen,
                      "beam_size": args.beam_size, **scores(hyps, ref, args.tgt),
                      "sentences_per_s": round(len(src) / seconds, 1)}))
    (run.parent / f"{run.name}.test.hyp").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    points = curve(run)
    print(json.dumps({"dev_bleu_vs_minutes": points}))
    plot({label(run, f"EN-{args.tgt.upper()}"): points}, run / "dev_bleu.png")


if __name__ == "__main__":
    main()
