"""Small random Hugging Face Marian (OPUS-MT layout) directories, built locally without any download.

``make_marian_dir`` trains tiny SentencePiece models on sentences made from a word list, writes
``vocab.json`` (and ``target_vocab.json``) whose ids are a shuffled numbering of the pieces (as in
real OPUS-MT conversions, where ids are not SentencePiece's), and saves a randomly initialised
``MarianMTModel`` with ``save_pretrained``. Used by tests/test_marian.py and benchmarks/decode_speed.py.
Needs ``transformers``.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import sentencepiece as spm
import torch

SRC_WORDS = ("the a cat dog house green small big red blue sat ran on under over near far away home "
             "tree river city road car friend teacher book table chair window door garden morning night "
             "always never often quickly slowly happy sad old new we they you she he it is was are were").split()
TGT_WORDS = ("le la un une chat chien maison verte petit grand rouge bleu assis couru sur sous pres loin "
             "arbre riviere ville route voiture ami professeur livre table chaise fenetre porte jardin matin "
             "nuit toujours jamais souvent vite lentement heureux triste vieux nouveau nous ils vous elle il est").split()
LANG_TAGS = (">>fra<<", ">>deu<<", ">>spa<<")


def sentences(words: tuple[str, ...] | list[str], n: int, seed: int, min_len: int = 3, max_len: int = 12) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = " ".join(rng.choice(words) for _ in range(rng.randint(min_len, max_len)))
        out.append(s[0].upper() + s[1:] + rng.choice([".", ".", "!", "?", ""]))
    return out


def _train_spm(texts: list[str], path: Path, vocab_size: int) -> list[str]:
    """Train a unigram model (pieces only: <unk> 0, </s> 1, no <s>/<pad>); return its ordinary pieces."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, unk_id=0, eos_id=1, bos_id=-1, pad_id=-1, hard_vocab_limit=False,
        num_threads=1, minloglevel=2,
    )
    path.write_bytes(buf.getvalue())
    proc = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    return [proc.id_to_piece(i) for i in range(proc.get_piece_size())
            if not (proc.is_control(i) or proc.is_unknown(i))]


def _vocab(pieces: list[str], size: int, rng: random.Random, pad_last: bool) -> dict[str, int]:
    """Marian-style table: </s> 0, <unk> 1, the pieces in shuffled order, fillers up to ``size``, <pad>."""
    pieces = list(dict.fromkeys(pieces))
    rng.shuffle(pieces)
    specials = ["</s>", "<unk>"] if pad_last else ["</s>", "<unk>", "<pad>"]
    body = [p for p in pieces if p not in specials]
    fillers = [f"\u2581x{i}" for i in range(max(0, size - len(specials) - len(body) - int(pad_last)))]
    table = specials + body + fillers + (["<pad>"] if pad_last else [])
    return {p: i for i, p in enumerate(table)}


def _randomise(model: torch.nn.Module, gen: torch.Generator, scale: float, eos: int, pad: int, eos_bias: float) -> None:
    """Weights large enough for peaked (tie-free) distributions; a final_logits_bias that favours </s>.

    The <pad> embedding stays zero, as in converted OPUS-MT models: Marian starts decoding from a
    zero vector, which HF emulates with the zero <pad> row (and CTranslate2 assumes).
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name:
                continue  # Marian's fixed sinusoids
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * scale / p.size(-1) ** 0.5)
                if "embed_tokens" in name or "shared" in name:
                    p[pad].zero_()
            elif "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        bias = model.final_logits_bias  # (1, V)
        bias.copy_(0.5 * torch.randn(bias.shape, generator=gen))
        bias[0, eos] += eos_bias


def make_marian_dir(
    path: Path, *, separate: bool = False, activation: str = "swish", tie_output: bool = True,
    scale_embedding: bool = True, d_model: int = 32, layers: int = 2, heads: int = 4, ffn: int = 64,
    vocab_size: int = 0, spm_size: int = 120, max_positions: int = 128, scale: float = 3.0,
    eos_bias: float = 4.0, seed: int = 0,
) -> Path:
    """Write a random MarianMTModel directory (config, weights, source/target.spm, vocab json files)."""
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    src_pieces = _train_spm(sentences(SRC_WORDS, 400, seed), path / "source.spm", spm_size)
    tgt_pieces = _train_spm(sentences(TGT_WORDS, 400, seed + 1), path / "target.spm", spm_size)
    if separate:
        src_vocab = _vocab(src_pieces, vocab_size, rng, pad_last=False)
        tgt_vocab = _vocab(tgt_pieces, vocab_size // 2 if vocab_size else 0, rng, pad_last=False)
        (path / "target_vocab.json").write_text(json.dumps(tgt_vocab, ensure_ascii=False), encoding="utf-8")
    else:
        src_vocab = tgt_vocab = _vocab(src_pieces + tgt_pieces + list(LANG_TAGS), vocab_size, rng, pad_last=True)
    (path / "vocab.json").write_text(json.dumps(src_vocab, ensure_ascii=False), encoding="utf-8")
    pad, eos = tgt_vocab["<pad>"], tgt_vocab["</s>"]
    assert src_vocab["<pad>"] == pad and src_vocab["</s>"] == eos
    cfg = MarianConfig(
        vocab_size=len(src_vocab), decoder_vocab_size=len(tgt_vocab), d_model=d_model,
        encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, activation_function=activation,
        max_position_embeddings=max_positions, scale_embedding=scale_embedding, pad_token_id=pad,
        eos_token_id=eos, forced_eos_token_id=eos, decoder_start_token_id=pad,
        share_encoder_decoder_embeddings=not separate, tie_word_embeddings=tie_output,
    )
    torch.manual_seed(seed)
    model = MarianMTModel(cfg).eval()
    _randomise(model, torch.Generator().manual_seed(seed), scale, eos, pad, eos_bias)
    model.generation_config.bad_words_ids = [[pad]]  # as in OPUS-MT configs: never generate <pad>
    model.save_pretrained(path)
    tok = MarianTokenizer(
        str(path / "source.spm"), str(path / "target.spm"), str(path / "vocab.json"),
        target_vocab_file=str(path / "target_vocab.json") if separate else None,
        source_lang="eng", target_lang="fra", separate_vocabs=separate,
    )
    tok.save_pretrained(path)
    return path


def hf_length_limit(limits: torch.Tensor, eos: int):
    """A ``LogitsProcessor`` that gives HF's ``generate`` seqformer's length limit: row i must end
    after ``limits[i]`` tokens, and the forced </s> keeps its own log-probability (HF's
    ``forced_eos_token_id`` scores it 0 instead). ``limits``: (rows,), beams included."""
    from transformers import LogitsProcessor

    class LengthLimit(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            at = limits.to(scores.device) <= input_ids.shape[1] - 1  # tokens generated after the start token
            if bool(at.any()):
                eos_col = scores[at, eos].clone()
                scores[at] = float("-inf")
                scores[at, eos] = eos_col
            return scores

    return LengthLimit()
