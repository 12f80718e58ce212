"""Helpers for the serving tests: a tiny random model directory and generated sentences."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from seqformer.config import ModelConfig
from seqformer.data.tokenizer import Tokenizer, train_sentencepiece
from seqformer.io import save_weights, write_config
from seqformer.model.transformer import Seq2SeqTransformer

WORDS = ("the a one cat dog bird house garden river tree small big red green old new sees likes eats finds "
         "near under over with and quickly slowly today").split()


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))).capitalize() + "." for _ in range(n)]


def make_tiny_model(out: Path, seed: int = 0) -> Path:
    """A random 2+2-layer model (d_model 32, 4 heads) with a real SentencePiece vocabulary."""
    out.mkdir(parents=True, exist_ok=True)
    train_sentencepiece(sentences(300), out / "spm.model", vocab_size=80)
    vocab = Tokenizer.load(out / "spm.model").src.get_piece_size()
    cfg = ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=32, n_heads=4, n_encoder_layers=2,
                      n_decoder_layers=2, d_ff=64, dropout=0.0, max_positions=128,
                      init="xavier")  # spread-out logits: no near-ties for batched vs unbatched comparisons
    torch.manual_seed(seed)
    write_config(out, cfg, "spm.model", "spm.model", "en", "fr")
    save_weights(out / "model.safetensors", Seq2SeqTransformer(cfg))
    return out
