"""Translation quality: seqformer vs Hugging Face MarianMTModel trained by the same recipe for the same time.

    bash recipes/tatoeba-en-fr-vs-marian.sh      # both sides, 40 minutes each (SEED=2 ... for another seed)

which runs (after recipes/tatoeba_split.py)

    seqformer train --config recipes/tatoeba-en-fr-40min.json --out RUN        # the seqformer side
    python benchmarks/bundled_vs_marian.py --minutes 40 --recipe recipes/tatoeba-en-fr-40min.json \
        --out RUN --seqformer-model RUN --split test --beams 1,4

    bash recipes/tatoeba-en-fr-vs-marian-clock.sh  # the cool-down by the clock, both sides at once, a core each

trains the MarianMTModel side with --no-score beside the seqformer run and scores both afterwards with --no-train.

MarianMTModel is given everything seqformer's trainer uses: the recipe's tokenizer (the
seqformer run's spm.model when the recipe's out directory has one, else one trained here by
seqformer's own code), its token-bucketed batches (max_tokens, seed, epoch after epoch), its
"model" section mapped onto MarianConfig, Adam(0.9, 0.98, 1e-9) with seqformer's schedule (linear
warmup, inverse-sqrt decay, the recipe's cool-down if it gets that far), label smoothing over non-padding
tokens normalised per target token, gradient clipping, and bf16 autocast where seqformer's "auto"
precision picks it. The clock counts batching and updates only, as the recipe's max_minutes does. The split's English
sentences are then translated with generate() (greedy and beam 4) under seqformer's rules
(length limit 1.2 * source + 10, </s> forced there, <pad> never emitted, length penalty 1,
a sentence done when its beam has finished) and scored with multi-reference sacreBLEU.
What is left is the peer's own: its random draws (HF's initialisation scheme is seqformer's
default, init "normal", but drawn in another order), logits over padding positions, and
sines-then-cosines position channels.

The trained model is saved (save_pretrained) in --work; --no-train re-scores it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path

import torch
from tatoeba_eval import load_split, run
from torch import Tensor
from train_throughput import marian_loss, marian_model
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, MarianMTModel
from transformers.utils.logging import disable_progress_bar

from seqformer import Translator
from seqformer.config import INIT_FIELDS, DecodeConfig, ModelConfig, TrainConfig, from_dict, load_recipe, to_dict
from seqformer.data.batching import Batch, bucket_batches, collate, encode_source, pad
from seqformer.data.tokenizer import Tokenizer
from seqformer.decoding.common import constrain, max_lengths
from seqformer.segment import split_sentences
from seqformer.threads import set_threads
from seqformer.training.amp import Amp
from seqformer.training.data import PreparedData, prepare
from seqformer.training.optim import make_optimizer, scheduled_lr
from seqformer.training.trainer import build_model_config

TOKENIZER_FILES = ("spm.model", "src.spm", "tgt.spm")  # what seqformer's data preparation writes


def prepare_data(cfg: TrainConfig, work: Path) -> tuple[PreparedData, str]:
    """Seqformer's own data preparation into ``work``, with the seqformer run's tokenizer when it has one."""
    work.mkdir(parents=True, exist_ok=True)
    run_dir = Path(cfg.out) if cfg.out else None
    copied = [n for n in TOKENIZER_FILES if run_dir is not None and (run_dir / n).is_file()]
    for name in copied:
        shutil.copyfile(run_dir / name, work / name)
    data = prepare(replace(cfg, out=str(work)), work)
    if cfg.tokenizer:
        origin = cfg.tokenizer
    elif data.spm_files[0] in copied:
        origin = str(run_dir / data.spm_files[0])
    else:
        origin = f"{work / data.spm_files[0]} ({cfg.out or 'the recipe'} has none: trained by seqformer's code)"
    return data, origin


def batch_stream(data: PreparedData, cfg: TrainConfig, mc: ModelConfig) -> Iterator[tuple[int, Batch]]:
    """(epoch, batch) without end, in the order seqformer's trainer walks them."""
    lengths = [(len(s), len(t) + 1) for s, t in data.train]
    for epoch in itertools.count():
        for idx in bucket_batches(lengths, cfg.max_tokens, cfg.seed, epoch):
            yield epoch, collate([data.train[i] for i in idx], mc.pad_id, mc.decoder_start_id, mc.eos_id)


def update(model: MarianMTModel, opt: torch.optim.Optimizer, amp: Amp, group: list[Batch], cfg: TrainConfig,
           step: int, elapsed_s: float) -> float | None:
    """One optimizer update as seqformer's Trainer.train_step (the rate by update count and, for a cool-down by
    time, by ``elapsed_s`` of training so far); the loss per target token, None if skipped (NaN/inf)."""
    for g in opt.param_groups:
        g["lr"] = scheduled_lr(step + 1, cfg, elapsed_s)
    opt.zero_grad(set_to_none=True)
    n_tgt = sum(b.n_tgt_tokens for b in group)
    total = 0.0
    for b in group:
        with amp.autocast():
            loss, _ = marian_loss(model, b, cfg.label_smoothing)
        amp.scale(loss / n_tgt).backward()
        total += float(loss.detach())
    if not math.isfinite(total):
        return skip(opt, amp, unscaled=False)
    amp.unscale(opt)
    if not torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm or math.inf)):
        return skip(opt, amp, unscaled=True)
    amp.step(opt)
    return total / n_tgt


def skip(opt: torch.optim.Optimizer, amp: Amp, unscaled: bool) -> None:
    opt.zero_grad(set_to_none=True)
    amp.skipped(unscaled)


def train_marian(model: MarianMTModel, data: PreparedData, cfg: TrainConfig, mc: ModelConfig, seconds: float) -> dict:
    """Train for ``seconds`` of batching + update time (or to the recipe's max_steps, whichever comes first);
    progress lines go to stderr every log_every steps."""
    amp, opt, stream = Amp(cfg.precision, torch.device("cpu")), make_optimizer(model, cfg), batch_stream(data, cfg, mc)
    model.train()
    step = skipped = tokens = epoch = 0
    elapsed, loss, window = 0.0, math.nan, (0, 0.0)  # window: tokens and seconds since the last progress line
    last = time.perf_counter()
    while elapsed < seconds and not (cfg.max_steps and step >= cfg.max_steps):
        group = [next(stream) for _ in range(cfg.update_freq)]
        epoch = group[-1][0]
        result = update(model, opt, amp, [b for _, b in group], cfg, step, elapsed)
        n = sum(b.n_src_tokens + b.n_tgt_tokens for _, b in group)
        now = time.perf_counter()
        elapsed, window, last = elapsed + now - last, (window[0] + n, window[1] + now - last), now
        if result is None:
            skipped += 1
            continue
        step, tokens, loss = step + 1, tokens + n, result
        if step % cfg.log_every == 0:
            print(json.dumps({"engine": "marian", "step": step, "epoch": epoch, "loss": round(loss, 4),
                              "tok_per_s": round(window[0] / window[1]), "elapsed_s": round(elapsed, 1)}),
                  file=sys.stderr, flush=True)
            window = (0, 0.0)
        last = time.perf_counter()
    return {"engine": "marian", "steps": step, "skipped": skipped, "epoch": epoch, "loss": round(loss, 4),
            "elapsed_s": round(elapsed, 1), "tokens": tokens, "tok_per_s": round(tokens / max(elapsed, 1e-9)),
            "precision": amp.name, "threads": torch.get_num_threads()}


def train_and_save(recipe: str, work: Path, minutes: float, overrides: dict) -> dict:
    """Build MarianMTModel from the recipe (its train fields updated by ``overrides``), train it for
    ``minutes``, save it with its tokenizer in ``work``."""
    train_fields, model_fields = load_recipe(Path(recipe))
    if train_fields.get("max_minutes") and float(train_fields["max_minutes"]) != minutes:
        raise SystemExit(f"--minutes {minutes}: {recipe} trains seqformer for max_minutes={train_fields['max_minutes']}; "
                         "both sides must stop (and cool down) on the same clock")
    # the clock that stops it is the one a cool-down by time (cooldown_minutes) runs out on
    cfg = from_dict(TrainConfig, {**train_fields, **overrides, "max_minutes": minutes})
    data, origin = prepare_data(cfg, work)
    mc = build_model_config(cfg, data, model_fields)
    print(f"# MarianMTModel by {recipe}: {len(data.train)} training pairs, tokenizer {origin}, "
          f"d_model {mc.d_model}, {mc.n_encoder_layers}+{mc.n_decoder_layers} layers, {mc.n_heads} heads, "
          f"FFN {mc.d_ff}, dropout {mc.dropout}, lr {cfg.lr}, warmup {cfg.warmup_steps}, "
          f"max_tokens {cfg.max_tokens}; {minutes} minutes", flush=True)
    set_threads(cfg.threads, "threads")  # the recipe's threads train both sides, as seqformer train sets them
    torch.manual_seed(cfg.seed)
    model = marian_model(mc)
    summary = train_marian(model, data, cfg, mc, minutes * 60)
    model.save_pretrained(work)
    info = {**summary, "recipe": recipe, "tokenizer": list(data.spm_files), "tokenizer_origin": origin,
            "model": to_dict(mc), "train_config": to_dict(cfg)}
    (work / "bench.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return summary


class SeqformerRules(LogitsProcessor):
    """seqformer's decoding constraints inside generate(): never <pad>, </s> forced once a row reaches its limit."""

    def __init__(self, limits: Tensor, mc: ModelConfig) -> None:
        self.limits, self.mc = limits, mc  # (B * beams,) output tokens allowed before </s>

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        step = input_ids.size(1) - 1  # tokens emitted after the start token
        return constrain(scores, step, self.limits, 0, self.mc.eos_id, self.mc.pad_id)


class MarianTranslator:
    """A trained MarianMTModel behind seqformer's ``Translator.translate`` interface and batching."""

    def __init__(self, model: MarianMTModel, tokenizer: Tokenizer, mc: ModelConfig) -> None:
        self.model, self.tokenizer, self.mc = model.eval(), tokenizer, mc
        # SeqformerRules forces </s> at the limit keeping its log-probability; HF's forced EOS would score it 0.
        model.generation_config.forced_eos_token_id = None

    @classmethod
    def load(cls, work: Path) -> tuple[MarianTranslator, dict]:
        info = json.loads((work / "bench.json").read_text(encoding="utf-8"))
        src, tgt = info["tokenizer"]
        mc = from_dict(ModelConfig, info["model"])
        return cls(MarianMTModel.from_pretrained(work), Tokenizer.load(work / src, work / tgt), mc), info

    def translate(self, texts: list[str], beam_size: int = 4, batch_size: int = 32,
                  length_penalty: float = 1.0, streams: int = 1) -> list[str]:
        """As seqformer's Translator: each text split into sentences, translated, and joined with spaces
        (one batch at a time: generate() has no ``streams``)."""
        if streams != 1:
            raise ValueError(f"MarianTranslator decodes one batch at a time, found streams={streams}")
        segments, owner = [], []
        for i, text in enumerate(texts):
            parts = split_sentences(text.strip())
            segments.extend(parts)
            owner.extend([i] * len(parts))
        out = self._translate_segments(segments, DecodeConfig(beam_size=beam_size, length_penalty=length_penalty),
                                       batch_size)
        joined: list[list[str]] = [[] for _ in texts]
        for i, segment, hyp in zip(owner, segments, out):
            if segment and hyp:  # as seqformer's join: a sentence translated as nothing adds no space
                joined[i].append(hyp)
        return [" ".join(parts) for parts in joined]

    def _translate_segments(self, texts: list[str], dc: DecodeConfig, batch_size: int) -> list[str]:
        mc = self.mc
        src = [encode_source(ids, mc.eos_id, mc.max_positions) for ids in self.tokenizer.encode_src(texts)]
        order = sorted(range(len(texts)), key=lambda i: -len(src[i]))  # longest first, as Translator
        out = [""] * len(texts)
        for start in range(0, len(order), batch_size):
            chunk = [i for i in order[start : start + batch_size] if texts[i]]
            if chunk:
                hyps = self._generate(pad([src[i] for i in chunk], mc.pad_id), dc)  # (B, S) in
                for i, text in zip(chunk, self.tokenizer.decode_tgt(hyps)):
                    out[i] = text
        return out

    @torch.no_grad()
    def _generate(self, src: Tensor, dc: DecodeConfig) -> list[list[int]]:
        """Token ids (without start and </s>) of the best hypothesis for each row of src (B, S)."""
        mc, beam = self.mc, dc.beam_size
        real = src.ne(mc.pad_id)  # (B, S) True = real token
        limits = max_lengths(real.sum(dim=1), dc.max_len_a, dc.max_len_b, mc.max_positions - 1)  # (B,)
        gen = GenerationConfig(num_beams=beam, do_sample=False, early_stopping=beam > 1, length_penalty=dc.length_penalty,
                               max_new_tokens=int(limits.max()) + 1, decoder_start_token_id=mc.decoder_start_id,
                               eos_token_id=mc.eos_id, pad_token_id=mc.pad_id)
        rules = LogitsProcessorList([SeqformerRules(limits.repeat_interleave(beam), mc)])  # rows are sentence-major
        ids = self.model.generate(input_ids=src, attention_mask=real.long(), generation_config=gen,
                                  logits_processor=rules)  # (B, 1 + T)
        rows = [row[1:] for row in ids.tolist()]
        return [row[: row.index(mc.eos_id)] if mc.eos_id in row else row for row in rows]


def seqformer_side(path: str, mc: ModelConfig, tokenizer_file: Path, threads: int) -> Translator:
    """Load the seqformer model, print how it was trained, and note where it differs from the Marian run
    (``threads``: those MarianMTModel trained on)."""
    translator = Translator.load(None if path == "bundled" else path)
    mdir = translator.dir
    info_file = mdir.path / "training.json"
    info = json.loads(info_file.read_text(encoding="utf-8")) if info_file.is_file() else {}
    trained_threads = info.get("train_config", {}).get("threads")
    print(json.dumps({"engine": "seqformer", "model": str(mdir.path), "steps": info.get("step"),
                      "epoch": info.get("epoch"), "elapsed_s": info.get("elapsed_s"), "precision": info.get("precision"),
                      "threads": trained_threads}))
    if trained_threads and trained_threads != threads:  # 0: PyTorch's default (one per physical core)
        print(f"# note: the seqformer model trained on {trained_threads} thread(s), MarianMTModel on {threads}")
    differ = [f.name for f in fields(ModelConfig) if f.name not in INIT_FIELDS  # how training began
              and getattr(translator.model.cfg, f.name) != getattr(mc, f.name)]
    if differ:
        print(f"# note: the seqformer model's architecture differs from the recipe's in {differ}")
    theirs = mdir.path / mdir.meta["tokenizer"]["src"]
    if not theirs.is_file() or theirs.read_bytes() != tokenizer_file.read_bytes():
        print(f"# note: the seqformer model's tokenizer {theirs} is not the one MarianMTModel used ({tokenizer_file})")
    return translator


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def compare(seqformer: dict, marian: dict) -> dict:
    return {"beam_size": seqformer["beam_size"], "seqformer_bleu": seqformer["bleu"], "marian_bleu": marian["bleu"],
            "bleu_ratio": ratio(seqformer["bleu"], marian["bleu"]), "seqformer_chrf": seqformer["chrf"],
            "marian_chrf": marian["chrf"], "chrf_ratio": ratio(seqformer["chrf"], marian["chrf"])}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, help="training time (batching + updates), as the recipe's max_minutes")
    ap.add_argument("--recipe", default="recipes/tatoeba-en-fr-40min.json",
                    help="the seqformer recipe both sides follow (the bundled model's, fitted to 40 minutes)")
    ap.add_argument("--seed", type=int, help="the recipe's seed replaced (first weights, dropout, batch order), "
                    "as seqformer train --seed")
    ap.add_argument("--out", help="the seqformer run of this recipe whose tokenizer MarianMTModel uses, when not "
                    "the recipe's out (as seqformer train --out)")
    ap.add_argument("--work", default="work/bench-marian", help="where the Marian model and its tokenizer are saved")
    ap.add_argument("--no-train", action="store_true", help="re-score the model already saved in --work")
    ap.add_argument("--no-score", action="store_true", help="train and save only (score later with --no-train)")
    ap.add_argument("--seqformer-model", help="also score this seqformer model directory ('bundled': the packaged one)")
    ap.add_argument("--data", default="work/tatoeba-en-fr", help="directory written by recipes/tatoeba_split.py")
    ap.add_argument("--split", choices=("dev", "test"), default="test")
    ap.add_argument("--beams", default="1,4", help="comma-separated beam sizes")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="only the first N sentences (smoke runs)")
    args = ap.parse_args()
    if args.no_train and args.no_score:
        ap.error("--no-train with --no-score leaves nothing to do")
    if not args.no_train and not (args.minutes and args.minutes > 0):
        ap.error("--minutes is required to train (or pass --no-train to re-score the saved model)")
    model = args.seqformer_model
    if model and model != "bundled" and not (Path(model) / "config.json").is_file():  # before hours of training
        ap.error(f"--seqformer-model {model}: no config.json there (a seqformer model directory)")
    return args


def main() -> None:
    args = parse_args()
    disable_progress_bar()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    src, refs = load_split(Path(args.data) / f"{args.split}.multi.jsonl")
    if args.limit:
        src, refs = src[: args.limit], refs[: args.limit]
    print(f"# {args.threads} threads on {os.cpu_count()} CPUs (training: the recipe's threads where it sets them), "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    if not args.no_train:
        overrides = {k: v for k, v in (("seed", args.seed), ("out", args.out)) if v is not None}
        print(json.dumps(train_and_save(args.recipe, work, args.minutes, overrides)), flush=True)
        torch.set_num_threads(args.threads)  # scoring on --threads, whatever the recipe trained on
        if args.no_score:
            return
    marian, info = MarianTranslator.load(work)
    if args.no_train:
        print(json.dumps({k: info[k] for k in ("engine", "steps", "epoch", "elapsed_s", "precision", "threads")}))
    print(f"# {args.split}: {len(src)} English sentences, {sum(map(len, refs))} references", flush=True)
    beams = [int(b) for b in args.beams.split(",")]
    marian_results = {}
    for beam in beams:
        marian_results[beam] = {"engine": "marian", **run(marian, src, refs, beam, args.batch_size)}
        print(json.dumps(marian_results[beam]), flush=True)
    if not args.seqformer_model:
        return
    translator = seqformer_side(args.seqformer_model, marian.mc, work / info["tokenizer"][0], info["threads"])
    for beam in beams:
        result = {"engine": "seqformer", **run(translator, src, refs, beam, args.batch_size)}
        print(json.dumps(result), flush=True)
        print(json.dumps(compare(result, marian_results[beam])), flush=True)


if __name__ == "__main__":
    main()
