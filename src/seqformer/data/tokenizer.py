"""SentencePiece subword tokenizers (joint or separate), trained on the user's data."""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from seqformer.errors import DataError, ModelDirError

PAD, UNK, BOS, EOS = 0, 1, 2, 3
UNK_PIECE = "<unk>"
SPECIAL_PIECES = ("<pad>", "</s>", "<s>", UNK_PIECE)  # never part of detokenised text


def train_sentencepiece(
    sentences: list[str], out_file: Path, vocab_size: int, model_type: str = "unigram",
    sample_lines: int = 1_000_000, seed: int = 1,
) -> Path:
    """Train a SentencePiece model with seqformer's special ids (pad 0, unk 1, <s> 2, </s> 3)."""
    from seqformer.io import atomic_write_bytes  # seqformer.io imports this module

    sentences = spm_sample(sentences, sample_lines, seed)
    model = io.BytesIO()
    try:
        _train(sentences, model, vocab_size, model_type)
    except RuntimeError as err:  # e.g. "Vocabulary size is smaller than required_chars. 16 vs 67"
        reason = str(err).strip().splitlines()[-1]
        advice = "raise --vocab-size" if "ocabulary size" in reason else "the corpus has no usable text"
        raise DataError(f"cannot train a {vocab_size}-piece SentencePiece model on this corpus ({reason}): "
                        f"{advice}") from None
    out_file = Path(out_file)
    atomic_write_bytes(out_file, model.getvalue())  # a run killed while writing leaves no half model to reuse
    return out_file


def spm_sample(sentences: list[str], sample_lines: int, seed: int) -> list[str]:
    """The lines a SentencePiece model is trained on: the non-empty ones, a seeded sample of ``sample_lines``
    when there are more."""
    sentences = [s for s in sentences if s]
    if len(sentences) > sample_lines:
        sentences = random.Random(seed).sample(sentences, sample_lines)
    return sentences


def _train(sentences: list[str], model: io.BytesIO, vocab_size: int, model_type: str) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        hard_vocab_limit=False,
        max_sentence_length=1 << 16,  # bytes; SentencePiece's default (4192) silently skips longer lines
        num_threads=2,
        minloglevel=2,
    )


def check_special_ids(proc: spm.SentencePieceProcessor, where: Path | str) -> None:
    """Refuse a SentencePiece model (one the user brings to training) whose special pieces are not at seqformer's
    ids: with spm_train's defaults (unk 0, <s> 1, </s> 2, no pad) an ordinary piece would end every sentence."""
    want = {"pad": PAD, "unk": UNK, "<s>": BOS, "</s>": EOS}
    have = dict(zip(want, (proc.pad_id(), proc.unk_id(), proc.bos_id(), proc.eos_id())))  # -1: none
    if have != want:
        shown = ", ".join(f"{k} {'none' if v < 0 else v}" for k, v in have.items())
        raise DataError(f"{where}: special pieces at {shown}; seqformer expects pad 0, unk 1, <s> 2, </s> 3 (train "
                        "it with spm_train --pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3, or leave out --tokenizer "
                        "to have seqformer train one)")


def split_lang_tag(text: str) -> tuple[str, str]:
    """Split off a leading target-language tag as Marian does: '>>fra<< Hi' -> ('>>fra<<', ' Hi')."""
    if text.startswith(">>"):
        end = text.find("<<")
        if end != -1:
            return text[: end + 2], text[end + 2 :]
    return "", text


@dataclass
class Vocab:
    """An explicit piece -> id table (Marian's vocab.json), used instead of SentencePiece's own ids.

    Pieces missing from the table map to ``unk_id``; ``special`` ids are left out of detokenised text.
    """

    ids: dict[str, int]
    pieces: dict[int, str]
    unk_id: int
    special: frozenset[int]

    @classmethod
    def load(cls, path: Path) -> Vocab:
        path = Path(path)
        try:
            table = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelDirError(f"{path}: vocabulary file not found") from None
        except json.JSONDecodeError as err:
            raise ModelDirError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        except UnicodeDecodeError:
            raise ModelDirError(f"{path}: not UTF-8 text") from None
        if not isinstance(table, dict) or UNK_PIECE not in table:
            raise ModelDirError(f"{path}: expected a JSON object of piece -> id that includes {UNK_PIECE!r}")
        bad = next(((p, i) for p, i in table.items() if not isinstance(i, int) or isinstance(i, bool) or i < 0), None)
        if bad is not None:
            raise ModelDirError(f"{path}: piece {bad[0]!r} has id {bad[1]!r}, expected a non-negative integer")
        ids = {str(piece): i for piece, i in table.items()}
        pieces = {i: piece for piece, i in ids.items()}
        return cls(ids, pieces, ids[UNK_PIECE], frozenset(ids[p] for p in SPECIAL_PIECES if p in ids))

    def __len__(self) -> int:
        return max(self.pieces) + 1

    def encode(self, pieces: list[str]) -> list[int]:
        return [self.ids.get(p, self.unk_id) for p in pieces]

    def to_pieces(self, ids: list[int]) -> list[str]:
        return [self.pieces.get(i, UNK_PIECE) for i in ids]


@dataclass
class Tokenizer:
    """Source and target SentencePiece processors (the same object when the vocabulary is joint).

    By default token ids are SentencePiece's own. Imported models (Marian / OPUS-MT) number
    pieces with their own tables instead (``src_vocab``/``tgt_vocab``), and may start the
    source with a target-language tag such as ``>>fra<<`` that is kept as one token (``lang_tags``).
    """

    src: spm.SentencePieceProcessor
    tgt: spm.SentencePieceProcessor
    src_vocab: Vocab | None = None
    tgt_vocab: Vocab | None = None
    lang_tags: bool = False

    @classmethod
    def load(cls, src_file: Path, tgt_file: Path | None = None, src_vocab: Path | None = None,
             tgt_vocab: Path | None = None, lang_tags: bool = False) -> Tokenizer:
        src = _load(src_file)
        tgt = src if tgt_file is None or Path(tgt_file) == Path(src_file) else _load(tgt_file)
        sv = Vocab.load(src_vocab) if src_vocab is not None else None
        same = tgt_vocab is None or (src_vocab is not None and Path(tgt_vocab) == Path(src_vocab))
        tv = sv if same else Vocab.load(tgt_vocab)
        return cls(src, tgt, sv, tv, lang_tags)

    @classmethod
    def from_config(cls, model_dir: Path, section: dict) -> Tokenizer:
        """From config.json's "tokenizer" section: "src", "tgt" and optional "src_vocab", "tgt_vocab", "lang_tags"."""
        d = Path(model_dir)
        src_vocab, tgt_vocab = section.get("src_vocab"), section.get("tgt_vocab")
        return cls.load(d / section["src"], d / section["tgt"], d / src_vocab if src_vocab else None,
                        d / tgt_vocab if tgt_vocab else None, bool(section.get("lang_tags", False)))

    @staticmethod
    def files(section: dict) -> dict[str, str]:
        """The files config.json's "tokenizer" section names, by key ("src", "tgt", "src_vocab", "tgt_vocab"):
        what a copy of the model directory must carry for ``from_config`` to load it."""
        return {k: section[k] for k in ("src", "tgt", "src_vocab", "tgt_vocab") if section.get(k)}

    def split_lang_tag(self, text: str) -> tuple[str, str]:
        """(tag, rest) when this tokenizer keeps language tags, else ('', text)."""
        return split_lang_tag(text) if self.lang_tags else ("", text)

    def known_lang_tags(self) -> list[str]:
        """The >>xx<< tags the source vocabulary holds (any other tag reaches the model as <unk>)."""
        pieces = self.src_vocab.ids if self.src_vocab is not None else (
            self.src.id_to_piece(i) for i in range(self.src.get_piece_size()))
        return sorted(p for p in pieces if p.startswith(">>") and p.endswith("<<"))

    def encode_src(self, texts: list[str]) -> list[list[int]]:
        if self.src_vocab is None and not self.lang_tags:
            return self.src.encode(texts)
        pieces = [self.src_pieces(t) for t in texts]
        if self.src_vocab is None:
            return [[self.src.piece_to_id(p) for p in seq] for seq in pieces]
        return [self.src_vocab.encode(seq) for seq in pieces]

    @property
    def src_unk_id(self) -> int:
        """The source side's unknown-token id (a Marian source vocabulary has its own)."""
        return self.src_vocab.unk_id if self.src_vocab is not None else self.src.unk_id()

    def src_unknown(self, text: str) -> bool:
        """Does the source vocabulary spell ``text`` with the unknown token?"""
        return self.src_unk_id in self.encode_src([text])[0]

    def encode_tgt(self, texts: list[str]) -> list[list[int]]:
        if self.tgt_vocab is None:
            return self.tgt.encode(texts)
        return [self.tgt_vocab.encode(seq) for seq in self.tgt.encode(texts, out_type=str)]

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        """Detokenise; an unknown-token id is dropped rather than printed as SentencePiece's ' ⁇ '."""
        vocab = self.tgt_vocab
        if vocab is not None:  # as Marian's tokenizer: drop specials, join pieces, '▁' -> ' '
            # an id the table lacks (embeddings past its end) is dropped too: its "<unk>" piece printed " ⁇ "
            pieces = [[p for i, p in zip(seq, vocab.to_pieces(seq)) if i in vocab.pieces and i not in vocab.special]
                      for seq in ids]
            return [self.tgt.decode_pieces(p).replace("\u2581", " ").strip() for p in pieces]
        unk = self.tgt.unk_id()
        return self.tgt.decode([[i for i in seq if i != unk] for seq in ids])

    def src_pieces(self, text: str) -> list[str]:
        tag, body = self.split_lang_tag(text)
        return ([tag] if tag else []) + self.src.encode(body, out_type=str)

    def src_id_pieces(self, ids: list[int]) -> list[str]:
        return self.src_vocab.to_pieces(ids) if self.src_vocab is not None else [self.src.id_to_piece(i) for i in ids]

    def tgt_pieces(self, ids: list[int]) -> list[str]:
        return self.tgt_vocab.to_pieces(ids) if self.tgt_vocab is not None else [self.tgt.id_to_piece(i) for i in ids]


def piece_count(path: Path) -> int:
    """The number of pieces of the SentencePiece model at ``path``."""
    return _load(path).get_piece_size()


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
