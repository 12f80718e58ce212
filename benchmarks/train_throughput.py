"""Training throughput: seqformer vs Hugging Face MarianMTModel, same shape, same batches, same run.

    python benchmarks/train_throughput.py --steps 40 --rounds 2
    python benchmarks/train_throughput.py --steps 40 --rounds 2 --engines seqformer,seqformer-torch-dropout

Both models: d_model 256, 3+3 layers, 4 heads, FFN 1024, dropout 0.1 (``--shape tiny``: d_model 128,
4+4 layers, FFN 256, dropout 0.3, the shape of the Multi30k ``-tiny`` recipes), a joint 8k SentencePiece
vocabulary (trained here on the data), tied embeddings, label smoothing
0.1, Adam(0.9, 0.98), PyTorch's fused kernel for both (seqformer's trainer uses it; Hugging Face's
Trainer defaults to it with torch >= 2.8 in recent transformers). The batches are identical (seqformer's token-bucketed batches
of ``--max-tokens``, first ``--steps`` of epoch 0 after ``--warmup`` untimed steps).
Each engine runs in its own subprocess so peak memory (max RSS) is its own; with ``--rounds N``
each runs N times, in alternating order, and tokens/s are taken over all its rounds.
``seqformer-torch-dropout`` is seqformer with every dropout (embedding, residual, activation and
attention) through PyTorch's own kernel in place of its cheaper CPU mask
(``seqformer.model.dropout``): the ablation of that one change.
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
from seqformer.model import attention
from seqformer.model.dropout import Dropout
from seqformer.model.transformer import Seq2SeqTransformer
from seqformer.training.amp import bf16_supported
from seqformer.training.optim import batch_loss, make_optimizer

SHAPES = {  # "base": the comparison's shape; "tiny": Wu et al.'s Transformer-Tiny (the Multi30k recipes)
    "base": dict(d_model=256, n_heads=4, n_encoder_layers=3, n_decoder_layers=3, d_ff=1024, dropout=0.1),
    "tiny": dict(d_model=128, n_heads=4, n_encoder_layers=4, n_decoder_layers=4, d_ff=256, dropout=0.3),
}
ENGINES = ("seqformer", "marian", "seqformer-torch-dropout")


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


def use_torch_dropout() -> None:
    """The ablation: every seqformer dropout through PyTorch's own kernel (its per-element draws)."""
    Dropout.forward = lambda self, x: F.dropout(x, self.p, self.training)
    attention.apply_dropout = lambda x, p, training=True: F.dropout(x, p, training)


def seqformer_step(vocab: int, shape: dict):
    model = Seq2SeqTransformer(ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, **shape)).train()
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


def marian_step(vocab: int, shape: dict):
    model = marian_model(ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, **shape)).train()
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
    if args.engine == "seqformer-torch-dropout":
        use_torch_dropout()
    shape = SHAPES[args.shape]
    step = marian_step(vocab, shape) if args.engine == "marian" else seqformer_step(vocab, shape)
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
            "seconds": seconds, "tokens_per_s": round(tokens / seconds), "peak_rss_mb": round(peak_mb)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/tatoeba-en-fr/train.tsv.gz")
    ap.add_argument("--work", default="work/bench-train", help="where the benchmark's tokenizer is kept")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", choices=tuple(SHAPES), default="base")
    ap.add_argument("--engines", default="seqformer,marian",
                    help=f"comma-separated, the first is compared with the others; any of {','.join(ENGINES)}")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the engines this many times each, alternating their order, so that the "
                    "machine's drift slows them alike; tokens/s over all rounds")
    ap.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--precisions", help="comma-separated subset of bf16,fp32 (default: bf16,fp32 where the "
                    "CPU has native bf16, else fp32)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="bf16", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        print(json.dumps(run_engine(args)))
        return
    engines = [e for e in args.engines.split(",") if e]
    if len(set(engines)) != len(engines) or len(engines) < 2 or not set(engines) <= set(ENGINES) or args.rounds < 1:
        ap.error(f"--engines: expected two or more different ones of {','.join(ENGINES)}, found "
                 f"{args.engines!r}; --rounds: expected >= 1, found {args.rounds}")
    native_bf16 = bf16_supported(torch.device("cpu"))
    precisions = [p for p in (args.precisions or ("bf16,fp32" if native_bf16 else "fp32")).split(",") if p]
    if not set(precisions) <= {"bf16", "fp32"}:
        ap.error(f"--precisions: expected a subset of bf16,fp32, found {args.precisions!r}")
    print(f"precisions: {','.join(precisions)} (native bf16: {native_bf16}); "
          f"{os.cpu_count()} cores visible, {args.threads} threads; shape {args.shape}: {SHAPES[args.shape]}",
          flush=True)
    report(run_rounds(args, engines, precisions), engines, precisions)


def engine_command(args: argparse.Namespace, engine: str, precision: str) -> list[str]:
    return [sys.executable, __file__, "--data", args.data, "--work", args.work, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--max-tokens", str(args.max_tokens), "--threads", str(args.threads),
            "--shape", args.shape, "--engine", engine, "--precision", precision]


def run_rounds(args: argparse.Namespace, engines: list[str], precisions: list[str]) -> dict:
    """Every engine once per round, in its own process; odd rounds in reverse order."""
    results: dict[tuple[str, str], list[dict]] = {(e, p): [] for p in precisions for e in engines}
    for r in range(args.rounds):
        for precision in precisions:
            for engine in engines if r % 2 == 0 else engines[::-1]:
                out = subprocess.run(engine_command(args, engine, precision), check=True,
                                     capture_output=True, text=True).stdout
                result = {**json.loads(out.strip().splitlines()[-1]), "round": r + 1}
                results[(engine, precision)].append(result)
                print(json.dumps(result), flush=True)
    return results


def report(results: dict, engines: list[str], precisions: list[str]) -> None:
    def rate(runs: list[dict]) -> float:  # tokens/s over all rounds
        return sum(r["tokens"] for r in runs) / sum(r["seconds"] for r in runs)

    def peak(runs: list[dict]) -> int:
        return max(r["peak_rss_mb"] for r in runs)

    first = engines[0]
    for precision in precisions:
        a = results[(first, precision)]
        for other in engines[1:]:
            b = results[(other, precision)]
            rounds = ", ".join(f"{x['tokens_per_s'] / y['tokens_per_s']:.2f}" for x, y in zip(a, b))
            print(f"{precision}: {first} {rate(a):.0f} tok/s vs {other} {rate(b):.0f} tok/s = "
                  f"{rate(a) / rate(b):.2f}x (by round: {rounds}); peak RSS {peak(a)} vs {peak(b)} MB")
    if {"bf16", "fp32"} <= set(precisions) and {"seqformer", "marian"} <= set(engines):
        s, m = results[("seqformer", "bf16")], results[("marian", "fp32")]
        print(f"seqformer bf16 vs MarianMTModel fp32 (its default): {rate(s) / rate(m):.2f}x")


if __name__ == "__main__":
    main()
