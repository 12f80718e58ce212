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

With ``--paper-data`` the model is trained, chosen and tested on the papers' own preprocessing instead of
the raw text: every side lowercased, Moses punctuation-normalized and tokenized like the paper-style BLEU
(written once to work/multi30k-lctok/, then read by a recipe whose train/valid point there). Its output is
then lowercased tokenized text, so only the paper-style BLEU is reported, with chrF on the same text
(``chrf_lc_tok``); cased sacreBLEU does not apply.
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
from seqformer.io import atomic_write_text

DATA = Path("../shared/data/multi30k")
PAPER_DATA = Path("work/multi30k-lctok")  # --paper-data: derived from DATA, never committed
PAPER_RECIPE = "lowercase, sacremoses {} MosesPunctNormalizer + MosesTokenizer(escape=False)\n"  # what made PAPER_DATA


def trains_on_paper_data(train_cfg: dict) -> bool:
    """Whether a recipe's train section trains on the lowercased, tokenized copies under PAPER_DATA."""
    return Path(train_cfg["train"]).parent.resolve() == PAPER_DATA.resolve()


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
    return f"{pair} (d{m['d_model']} {m['n_encoder_layers']}+{m['n_decoder_layers']}, dropout {m['dropout']:g})"


CASED_AXIS = "val BLEU (greedy, cased sacreBLEU)"
PAPER_AXIS = "val BLEU (greedy; lowercased, tokenized)"  # a --paper-data run validates on that text (short: not clipped)


def plot(curves: dict[str, list[tuple[float, float]]], out: Path, dashed: frozenset[str] = frozenset(),
         ylabel: str = CASED_AXIS) -> None:
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
    ax.set_ylabel(ylabel)
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


def paper_bleu(hyp_tok: list[str], ref_tok: list[str]) -> dict[str, float]:
    """multi-bleu.perl's arithmetic on tokenized text: the BLEU and the reference length it counts against."""
    paper = BLEU(tokenize="none", force=True).corpus_score(hyp_tok, [ref_tok])
    return {"bleu_lc_tok": round(paper.score, 2),
            "lc_tok_ref_len": paper.ref_len}  # multi-bleu's reflen: the reference tokens the papers count against


def scores(hyps: list[str], refs: list[str], lang: str) -> dict[str, float | str]:
    """Cased detokenized sacreBLEU, the paper-style lowercased tokenized BLEU, and chrF."""
    cased = BLEU()
    return {"sacrebleu": round(cased.corpus_score(hyps, [refs]).score, 2),
            **paper_bleu(paper_tokens(hyps, lang), paper_tokens(refs, lang)),
            "chrf": round(CHRF().corpus_score(hyps, [refs]).score, 2),
            "sacrebleu_sig": str(cased.get_signature())}


def paper_scores(hyps: list[str], refs: list[str], lang: str) -> dict[str, float | str]:
    """--paper-data: the hypotheses are already lowercased tokenized text (scored as they come, as multi-bleu.perl
    scores fairseq's output); the paper-style BLEU and chrF on that text."""
    hyp_tok, ref_tok = [h.strip() for h in hyps], paper_tokens(refs, lang)
    return {**paper_bleu(hyp_tok, ref_tok), "chrf_lc_tok": round(CHRF().corpus_score(hyp_tok, [ref_tok]).score, 2)}


def write_paper_data(tgt: str) -> None:
    """Lowercased, normalized, tokenized copies of train and val (both sides) under PAPER_DATA, all made again
    when those there were made another way (another sacremoses version; bump PAPER_RECIPE with paper_tokens)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        made_by = PAPER_RECIPE.format(version("sacremoses"))
    except PackageNotFoundError:
        sys.exit("benchmarks/multi30k.py: the paper-style BLEU needs sacremoses (pip install sacremoses)")
    PAPER_DATA.mkdir(parents=True, exist_ok=True)
    stamp = PAPER_DATA / "MADE_BY"
    fresh = stamp.is_file() and stamp.read_text(encoding="utf-8") == made_by
    if not fresh:  # both directions' copies: a stamp made for one must not vouch for the other's old files
        for old in [*PAPER_DATA.glob("train.*"), *PAPER_DATA.glob("val.*")]:
            old.unlink()
    for split in ("train", "val"):
        for lang in ("en", tgt):
            out = PAPER_DATA / f"{split}.{lang}"
            if not out.exists():
                atomic_write_text(out, "\n".join(paper_tokens(read_lines(DATA / f"{split}.{lang}.gz"), lang)) + "\n")
    atomic_write_text(stamp, made_by)


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
    ap.add_argument("--paper-data", action="store_true", help="train and test on lowercased, Moses-tokenized text "
                    "as the papers do (the recipe's train/valid must point into work/multi30k-lctok/)")
    ap.add_argument("--resume", action="store_true", help="continue the recipe's stopped run (seqformer train --resume)")
    ap.add_argument("--averages", default="3,5,8", help="last-N checkpoint averages to try on val")
    ap.add_argument("--beam-size", type=int, default=4)
    ap.add_argument("--chosen", help="skip the choice on val and score this model (best, avg3, ...) on test")
    ap.add_argument("--curves", type=Path, help="only plot val BLEU vs time of the en-fr and en-de runs to this PNG "
                    "(with --recipe: of that recipe's run, on the tokenized-text axis if it trains on --paper-data's)")
    ap.add_argument("--also", action="append", default=[], metavar="RUN=LABEL",
                    help="with --curves: another run directory's curve, under LABEL (repeatable)")
    args = ap.parse_args()
    if args.curves:
        if args.recipe:  # that recipe's run: its pair, and the tokenized-text axis if it trains on that text
            section = json.loads(args.recipe.read_text())["train"]
            runs = [(f"EN-{section.get('tgt_lang', 'fr').upper()}", Path(section["out"]))]
            paper_axis = trains_on_paper_data(section)
        else:
            runs, paper_axis = [(f"EN-{t.upper()}", recipe_run(recipe_path(t))) for t in ("fr", "de")], False
        curves = {label(run, pair): curve(run) for pair, run in runs if (run / "train_log.jsonl").exists()}
        dashed = set()
        for extra in args.also:
            path, sep, name = extra.partition("=")
            if not sep or not (Path(path) / "train_log.jsonl").is_file():
                ap.error(f"--also: expected RUN=LABEL with RUN/train_log.jsonl, found {extra!r}")
            curves[name] = curve(Path(path))
            dashed.add(name)
        plot(curves, args.curves, dashed=frozenset(dashed), ylabel=PAPER_AXIS if paper_axis else CASED_AXIS)
        return
    recipe = args.recipe or recipe_path(args.tgt)
    train_cfg = json.loads(recipe.read_text())["train"]
    if train_cfg.get("tgt_lang") != args.tgt:
        ap.error(f"{recipe}: tgt_lang is {train_cfg.get('tgt_lang')!r}, expected {args.tgt!r} (--tgt)")
    if trains_on_paper_data(train_cfg) != args.paper_data:
        ap.error(f"{recipe}: train is {train_cfg['train']!r}: a recipe trains in {PAPER_DATA}/ exactly when "
                 "--paper-data is given")
    run = recipe_run(recipe)
    if args.paper_data:
        write_paper_data(args.tgt)
    if not args.no_train:
        resume = ["--resume"] if args.resume else []
        subprocess.run([sys.executable, "-m", "seqformer", "train", "--config", str(recipe), "--quiet", *resume],
                       check=True)
    # Choose on val (the dev set), then score test_2016_flickr once, with the chosen model only.
    split = {name: (read_lines(DATA / f"{name}.en.gz"), read_lines(DATA / f"{name}.{args.tgt}.gz"))
             for name in ("val", "test_2016_flickr")}
    score = paper_scores if args.paper_data else scores
    if args.paper_data:  # the model reads the source as it was trained on it; references stay raw (score tokenizes)
        split = {name: (paper_tokens(src, "en"), ref) for name, (src, ref) in split.items()}
    if args.chosen:  # already chosen on val by an earlier run of this script
        chosen, model = args.chosen, model_dir(run, args.chosen)
    else:
        on_val = {}
        for name, model in candidates(run, [int(n) for n in args.averages.split(",")]).items():
            hyps = Translator.load(model).translate(split["val"][0], beam_size=args.beam_size)
            on_val[name] = (score(hyps, split["val"][1], args.tgt), model)
            print(json.dumps({"split": "val", "model": name, **on_val[name][0]}), flush=True)
        key = "bleu_lc_tok" if args.paper_data else "sacrebleu"
        chosen = max(on_val, key=lambda name: on_val[name][0][key])
        model = on_val[chosen][1]
    translator = Translator.load(model)
    src, ref = split["test_2016_flickr"]
    start = time.perf_counter()
    hyps = translator.translate(src, beam_size=args.beam_size)
    seconds = time.perf_counter() - start
    print(json.dumps({"split": "test_2016_flickr", "pair": f"en-{args.tgt}", "model": chosen,
                      "beam_size": args.beam_size, **score(hyps, ref, args.tgt),
                      "sentences_per_s": round(len(src) / seconds, 1)}))
    (run.parent / f"{run.name}.test.hyp").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    points = curve(run)
    print(json.dumps({"dev_bleu_vs_minutes": points}))
    plot({label(run, f"EN-{args.tgt.upper()}"): points}, run / "dev_bleu.png",
         ylabel=PAPER_AXIS if args.paper_data else CASED_AXIS)


if __name__ == "__main__":
    main()
