"""Shared helpers: tiny configs, random batches, a tiny tokenizer and model directory.

Everything here is small on purpose: the whole suite runs on one CPU thread.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # also inherited by CLI subprocesses

import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from seqformer.config import ModelConfig
from seqformer.data.batching import pad
from seqformer.data.tokenizer import Tokenizer, train_sentencepiece
from seqformer.io import save_weights, write_config
from seqformer.model.attention import MultiHeadAttention
from seqformer.model.transformer import Seq2SeqTransformer

torch.set_num_threads(1)  # session-wide: never compete with other work for cores

SYMBOLS = list("abcdefghij")


def tiny_config(**overrides) -> ModelConfig:
    """A model small enough to run in milliseconds (vocabulary 29, d_model 32, 2 + 2 layers)."""
    fields = dict(src_vocab_size=29, tgt_vocab_size=29, d_model=32, n_heads=4, n_encoder_layers=2,
                  n_decoder_layers=2, d_ff=64, dropout=0.0, max_positions=64)
    fields.update(overrides)
    return ModelConfig(**fields)


def perturb_(model: torch.nn.Module, seed: int, scale: float = 0.2) -> torch.nn.Module:
    """Add noise to every parameter so biases and LayerNorm gains are not their trivial 0/1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


def tiny_model(seed: int = 0, **overrides) -> Seq2SeqTransformer:
    """A randomly initialised (and perturbed) tiny model in eval mode."""
    torch.manual_seed(seed)
    model = Seq2SeqTransformer(tiny_config(**overrides))
    return perturb_(model, seed).eval()


def random_ids(lengths: list[int], vocab: int, seed: int, low: int = 4) -> list[list[int]]:
    """Token id lists of the given lengths, drawn from the non-special ids [low, vocab)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(low, vocab, (n,), generator=gen).tolist() for n in lengths]


def src_batch(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, S) ids and the (B, S) padding mask (True = padding)."""
    src = pad(seqs, pad_id)
    return src, src.eq(pad_id)


def set_attention_impl(model: torch.nn.Module, impl: str) -> None:
    for module in model.modules():
        if isinstance(module, MultiHeadAttention):
            module.impl = impl


def symbol_lines(n: int, seed: int, lo: int = 2, hi: int = 6) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(SYMBOLS) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def write_tsv(path: Path, pairs: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    return path


def reversal_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    return [(" ".join(s), " ".join(reversed(s))) for s in symbol_lines(n, seed)]


@pytest.fixture(scope="session")
def spm_file(tmp_path_factory) -> Path:
    """A SentencePiece model over the symbols a..j (one piece per symbol; 25 pieces)."""
    out = tmp_path_factory.mktemp("spm") / "spm.model"
    lines = [" ".join(s) for s in symbol_lines(2000, seed=0)]
    return train_sentencepiece(lines, out, vocab_size=30)


@pytest.fixture(scope="session")
def tokenizer(spm_file) -> Tokenizer:
    return Tokenizer.load(spm_file)


def write_model_dir(out: Path, model: Seq2SeqTransformer, spm: Path, dtype: torch.dtype | None = None) -> Path:
    """A complete model directory (config.json, model.safetensors, spm.model)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spm, out / "spm.model")
    write_config(out, model.cfg, "spm.model", "spm.model", "xx", "yy",
                 weights_dtype="float16" if dtype == torch.float16 else "float32")
    save_weights(out / "model.safetensors", model, dtype)
    return out


@pytest.fixture(scope="session")
def random_model(tokenizer) -> Seq2SeqTransformer:
    """An untrained tiny model over the fixture tokenizer's vocabulary (max_positions 24)."""
    vocab = tokenizer.src.get_piece_size()
    return tiny_model(seed=3, src_vocab_size=vocab, tgt_vocab_size=vocab, max_positions=24)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, random_model, spm_file) -> Path:
    """``random_model`` saved as a model directory. Tests must not modify it."""
    return write_model_dir(tmp_path_factory.mktemp("model"), random_model, spm_file)


def seqformer_command() -> list[str]:
    script = Path(sys.executable).with_name("seqformer")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "seqformer.cli"]


def run_seqformer(*args: str, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed ``seqformer`` command in a fresh process (one thread, text I/O)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    return subprocess.run([*seqformer_command(), *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def call_main(*args) -> int:
    """``seqformer.cli.main`` in-process, undoing the global warning setup it performs."""
    from seqformer.cli import main

    formatwarning = warnings.formatwarning
    try:
        with warnings.catch_warnings():
            return main([str(a) for a in args])
    finally:
        warnings.formatwarning = formatwarning


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A small generated corpus (train.tsv) and its SentencePiece model, shared by the training tests."""
    from train_helpers import write_corpus, write_tokenizer

    d = tmp_path_factory.mktemp("data")
    write_corpus(d)
    write_tokenizer(d)
    return d
