"""SentencePiece subword tokenizers (joint or separate), trained on the user's data."""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from seqformer.errors import ModelDirError

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def train_sentencepiece(
    sentences: list[str], out_file: Path, vocab_size: int, model_type: str = "unigram",
    sample_lines: int = 1_000_000, seed: int = 1,
) -> Path:
    """Train a SentencePiece model with seqformer's special ids (pad 0, unk 1, <s> 2, </s> 3)."""
    sentences = [s for s in sentences if s]
    if len(sentences) > sample_lines:
        sentences = random.Random(seed).sample(sentences, sample_lines)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        hard_vocab_limit=False,
        num_threads=2,
        minloglevel=2,
    )
    out_file = Path(out_file)
    out_file.write_bytes(model.getvalue())
    return out_file


@dataclass
class Tokenizer:
    """Source and target SentencePiece processors (the same object when the vocabulary is joint)."""

    src: spm.SentencePieceProcessor
    tgt: spm.SentencePieceProcessor

    @classmethod
    def load(cls, src_file: Path, tgt_file: Path | None = None) -> Tokenizer:
        src = _load(src_file)
        tgt = src if tgt_file is None or Path(tgt_file) == Path(src_file) else _load(tgt_file)
        return cls(src, tgt)

    def encode_src(self, texts: list[str]) -> list[list[int]]:
        return self.src.encode(texts)

    def encode_tgt(self, texts: list[str]) -> list[list[int]]:
        return self.tgt.encode(texts)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return self.tgt.decode(ids)

    def src_pieces(self, text: str) -> list[str]:
        return self.src.encode(text, out_type=str)

    def tgt_pieces(self, ids: list[int]) -> list[str]:
        return [self.tgt.id_to_piece(i) for i in ids]


def _load(path: Path) -> spm.SentencePieceProcessor:
    path = Path(path)
    if not path.is_file():
        raise ModelDirError(f"{path}: SentencePiece model not found")
    proc = spm.SentencePieceProcessor()
    try:
        proc.load(str(path))
    except (OSError, RuntimeError) as err:
        raise ModelDirError(f"{path}: not a valid SentencePiece model ({err})") from None
    return proc
