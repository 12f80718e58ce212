"""Training throughput: seqformer vs Hugging Face MarianMTModel, same shape, same batches, one run.

    python benchmarks/train_throughput.py --steps 60

Both models: d_model 256, 3+3 layers, 4 heads, FFN 1024, a joint 8k SentencePiece
vocabulary (trained here on the data), tied embeddings, dropout 0.1, label smoothing
0.1, Adam(0.9, 0.98), PyTorch's fused kernel for both (seqformer's trainer uses it; Hugging Face's
Trainer defaults to it with torch >= 2.8 in recent transformers). The batches are identical (seqformer's token-bucketed batches
of ``--max-tokens``, first ``--steps`` of epoch 0 after ``--warmup`` untimed steps).
Each engine runs in its own subprocess so peak memory (max RSS) is its own.
Tokens/s counts source + target tokens. Needs ``transformers`` (the dev extra).

Precisions: bf16 autocast and fp32 where the processor has native bf16 (AVX-512-BF16/AMX),
fp32 only where it has not (emulated bf16 is several times slower than fp32 there and says
nothing about either engine); ``--precisions`` overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from seqformer.config import ModelConfig, TrainConfig
from seqformer.data.batching import Batch, bucket_batches, collate
from seqformer.data.corpus import read_parallel
from seqformer.data.tokenizer import EOS, Tokenizer, train_sentencepiece
from seqformer.model.transformer import Seq2SeqTransformer
from seqformer.training.amp import bf16_supported
from seqformer.training.optim import batch_loss, make_optimizer

SHAPE = dict(d_model=256, n_heads=4, n_encoder_layers=3, n_decoder_layers=3, d_ff=1024, dropout=0.1)


def make_batches(data: str, spm_dir: Path, n: int, max_tokens: int) -> tuple[list[Batch], int]:
    spm_dir.mkdir(parents=True, exist_ok=True)
    pairs = [p for p in read_parallel(data) if p[0] and p[1]]
    spm_file = spm_dir / "spm.model"
    if not spm_file.is_file():
        train_sentencepiece([s for p in pairs for s in p], spm_file, 8000)
    tok = Tokenizer.load(spm_file)
    src, tgt = tok.encode_src([s for s, _ in pairs]), tok.encode_tgt([t for _, t in pairs])
    examples = [(s + [EOS], t) for s, t in zip(src, tgt) if len(s) < 128 and len(t) < 128]
    order = bucket_batches([(len(s), len(t) + 1) for s, t in examples], max_tokens, seed=1, epoch=0)[:n]
    return [collate([examples[i] for i in idx], 0, 2, EOS) for idx in order], tok.src.get_piece_size()


def seqformer_step(vocab: int):
    model = Seq2SeqTransformer(ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, **SHAPE)).train()
    opt = make_optimizer(model, TrainConfig(lr=5e-4, adam_betas=(0.9, 0.98), adam_eps=1e-9))  # as its trainer

    def step(b: Batch) -> None:
        loss, _, n = batch_loss(model, b, 0.1)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def marian_model(mc: ModelConfig):
    """A Hugging Face MarianMTModel of the same architecture as ``mc`` (post-norm, fixed sinusoids)."""
    from transformers import MarianConfig, MarianMTModel

    if mc.pre_norm or mc.positional != "sinusoidal" or mc.final_logits_bias or mc.layer_norm_eps != 1e-5:
        raise ValueError("MarianMTModel is post-norm with sinusoidal positions, LayerNorm eps 1e-5 and no "
                         "trained logits bias: pre_norm, positional, final_logits_bias or layer_norm_eps cannot map")
    cfg = MarianConfig(
        vocab_size=mc.src_vocab_size, decoder_vocab_size=mc.tgt_vocab_size, d_model=mc.d_model,
        encoder_layers=mc.n_encoder_layers, decoder_layers=mc.n_decoder_layers, encoder_attention_heads=mc.n_heads,
        decoder_attention_heads=mc.n_heads, encoder_ffn_dim=mc.d_ff, decoder_ffn_dim=mc.d_ff, dropout=mc.dropout,
        attention_dropout=mc.attention_dropout, activation_dropout=mc.activation_dropout,
        activation_function=mc.activation, max_position_embeddings=mc.max_positions, pad_token_id=mc.pad_id,
        eos_token_id=mc.eos_id, forced_eos_token_id=mc.eos_id, decoder_start_token_id=mc.decoder_start_id,
        scale_embedding=mc.scale_embeddings, share_encoder_decoder_embeddings=mc.share_embeddings,
        tie_word_embeddings=mc.tie_output,
        init_std=mc.init_std,  # Hugging Face's own scheme (normal), at the recipe's spread
    )
    return MarianMTModel(cfg)


def marian_loss(model, b: Batch, label_smoothing: float) -> tuple[torch.Tensor, int]:
    """Summed label-smoothed cross-entropy over the non-padding target tokens, and their number."""
    # use_cache=False: training needs no generation cache (building one costs the peer time per layer)
    out = model(input_ids=b.src, attention_mask=(~b.src_pad_mask).long(), decoder_input_ids=b.tgt_in,
                use_cache=False)
    labels = b.tgt_out.masked_fill(b.tgt_out.eq(b.pad_id), -100)
    loss = F.cross_entropy(out.logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                           label_smoothing=label_smoothing, reduction="sum")
    return loss, b.n_tgt_tokens


def marian_step(vocab: int):
    model = marian_model(ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, **SHAPE)).train()
    # fused: Hugging Face Trainer's default optimizer with torch >= 2.8 (recent transformers) is the fused kernel
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-9, fused=True)

    def step(b: Batch) -> None:
        loss, n = marian_loss(model, b, 0.1)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run_engine(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    batches, vocab = make_batches(args.data, Path(args.work), args.steps + args.warmup, args.max_tokens)
    step = seqformer_step(vocab) if args.engine == "seqformer" else marian_step(vocab)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.precision == "bf16" else None
    tokens, start = 0, 0.0
    for i, b in enumerate(batches):
        if i == args.warmup:
            start = time.perf_counter()
        if ctx is None:
            step(b)
        else:
            with ctx():
                step(b)
        if i >= args.warmup:
            tokens += b.n_src_tokens + b.n_tgt_tokens
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"engine": args.engine, "precision": args.precision, "steps": args.steps, "tokens": tokens,
            "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds), "peak_rss_mb": round(peak_mb)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/tatoeba-en-fr/train.tsv.gz")
    ap.add_argument("--work", default="work/bench-train", help="where the benchmark's tokenizer is kept")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--engine", choices=("seqformer", "marian"), help=argparse.SUPPRESS)
    ap.add_argument("--precisions", help="comma-separated subset of bf16,fp32 (default: bf16,fp32 where the "
                    "CPU has native bf16, else fp32)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        print(json.dumps(run_engine(args)))
        return
    base = [sys.executable, __file__, "--data", args.data, "--work", args.work, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--max-tokens", str(args.max_tokens), "--threads", str(args.threads)]
    native_bf16 = bf16_supported(torch.device("cpu"))
    precisions = [p for p in (args.precisions or ("bf16,fp32" if native_bf16 else "fp32")).split(",") if p]
    if not set(precisions) <= {"bf16", "fp32"}:
        ap.error(f"--precisions: expected a subset of bf16,fp32, found {args.precisions!r}")
    print(f"precisions: {','.join(precisions)} (native bf16: {native_bf16}); "
          f"{os.cpu_count()} cores visible, {args.threads} threads", flush=True)
    results = {}
    for engine, precision in ((e, p) for p in precisions for e in ("seqformer", "marian")):
        out = subprocess.run(base + ["--engine", engine, "--precision", precision], check=True,
                             capture_output=True, text=True).stdout
        results[(engine, precision)] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(results[(engine, precision)]), flush=True)
    for precision in precisions:
        s, m = results[("seqformer", precision)], results[("marian", precision)]
        print(f"{precision}: seqformer {s['tokens_per_s']} tok/s vs MarianMTModel {m['tokens_per_s']} tok/s "
              f"= {s['tokens_per_s'] / m['tokens_per_s']:.2f}x; peak RSS {s['peak_rss_mb']} vs {m['peak_rss_mb']} MB")
    if "bf16" in precisions and "fp32" in precisions:
        s, m = results[("seqformer", "bf16")], results[("marian", "fp32")]
        print(f"seqformer bf16 vs MarianMTModel fp32 (its default): {s['tokens_per_s'] / m['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
