"""Import Hugging Face Marian / OPUS-MT checkpoints (``MarianMTModel`` directories).

A Marian directory holds ``config.json`` (``"model_type": "marian"``), ``model.safetensors``
or ``pytorch_model.bin``, ``source.spm``, ``target.spm`` and ``vocab.json`` (plus
``target_vocab.json`` when source and target vocabularies are separate). Marian is the
post-norm Transformer of the paper with sinusoidal positions laid out sines-then-cosines,
no <s> token (decoding starts from the pad id) and ids taken from ``vocab.json``, not from
SentencePiece; all of this maps onto :class:`ModelConfig` and the tokenizer's optional
vocabulary tables, so an imported model is an ordinary seqformer model directory.

Nothing here needs ``transformers``; the tests check parity against it.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from seqformer.config import FORMAT_VERSION, ModelConfig, read_json, to_dict
from seqformer.data.tokenizer import Tokenizer, Vocab
from seqformer.errors import ConfigError, ModelDirError
from seqformer.io import (
    ModelDir,
    atomic_write_text,
    copy_tokenizer,
    errors_name,
    import_state,
    load_weights,
    save_weights,
    staged_dir,
    write_config,
)
from seqformer.model.embeddings import sinusoid_table
from seqformer.model.transformer import Seq2SeqTransformer

ACTIVATIONS = {"swish": "swish", "silu": "silu", "gelu": "gelu", "relu": "relu"}

# Marian sublayer names -> seqformer's (order matters: the longer names first).
_RENAMES = (
    (".self_attn_layer_norm.", ".self_attn_res.norm."),
    (".encoder_attn_layer_norm.", ".cross_attn_res.norm."),
    (".encoder_attn.", ".cross_attn."),
    (".final_layer_norm.", ".ffn_res.norm."),
    (".fc1.", ".ffn.fc1."),
    (".fc2.", ".ffn.fc2."),
)


@dataclass
class MarianFiles:
    """The tokenizer files of a Marian directory (``tgt_vocab`` is ``vocab`` when shared)."""

    src_spm: Path
    tgt_spm: Path
    vocab: Path
    tgt_vocab: Path
    src_lang: str
    tgt_lang: str

    @property
    def separate(self) -> bool:
        return self.tgt_vocab != self.vocab

    def tokenizer(self) -> Tokenizer:
        return Tokenizer.load(self.src_spm, self.tgt_spm, self.vocab, self.tgt_vocab, lang_tags=True)

    def config_section(self) -> dict[str, Any]:
        """The optional keys of config.json's "tokenizer" section for these files."""
        return {"src_vocab": self.vocab.name, "tgt_vocab": self.tgt_vocab.name, "lang_tags": True}


def is_marian_dir(path: str | Path) -> bool:
    """True for a directory whose config.json says ``"model_type": "marian"``."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return read_json(config).get("model_type") == "marian"
    except ConfigError:
        return False


def hf_weights_file(path: Path) -> Path:
    """The file a Marian directory's weights are read from: model.safetensors, else pytorch_model.bin."""
    path = Path(path)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (path / name).is_file():
            return path / name
    if (path / "model.safetensors.index.json").is_file():
        raise ModelDirError(f"{path}: sharded checkpoints are not supported")
    raise ModelDirError(f"{path}: no model.safetensors or pytorch_model.bin")


def read_hf_weights(file: Path) -> dict[str, Tensor]:
    """The raw state dict in ``file`` (:func:`hf_weights_file`; pytorch_model.bin loaded with weights_only)."""
    if file.suffix == ".safetensors":
        return load_weights(file)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ModelDirError(f"{file}: cannot be read safely ({err})") from None


def _first(raw: dict[str, Tensor], *names: str) -> Tensor | None:
    return next((raw[n] for n in names if n in raw), None)


def _embeddings(hf: dict[str, Any], raw: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """Encoder input, decoder input and output matrices, resolving HF's tied (unsaved) aliases."""
    shared = raw.get("model.shared.weight")
    enc = _first(raw, "model.encoder.embed_tokens.weight", "model.shared.weight")
    dec = _first(raw, "model.decoder.embed_tokens.weight")
    if dec is None and (shared is not None or hf.get("share_encoder_decoder_embeddings", True)):
        dec = shared if shared is not None else enc
    out = raw.get("lm_head.weight")
    if out is None and hf.get("tie_word_embeddings", True):
        out = dec
    if enc is None or dec is None or out is None:
        raise ModelDirError("Marian weights lack token embeddings or lm_head.weight")
    return enc, dec, out


def model_config(hf: dict[str, Any], enc: Tensor, dec: Tensor, out: Tensor, has_bias: bool, unk_id: int) -> ModelConfig:
    """A ModelConfig equivalent to a Marian config.json, given the resolved embedding matrices."""
    if hf.get("normalize_before", False):
        raise ConfigError("pre-norm Marian models (normalize_before) are not supported")
    for a, b in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf.get(a) != hf.get(b):
            raise ConfigError(f"Marian {a} ({hf.get(a)}) != {b} ({hf.get(b)}): seqformer needs them equal")
    act = hf.get("activation_function", "gelu")
    if act not in ACTIVATIONS:
        raise ConfigError(f"unsupported Marian activation_function {act!r} (supported: {sorted(ACTIVATIONS)})")
    eos = hf.get("eos_token_id", 0)
    eos = eos[0] if isinstance(eos, list) else eos
    pad = hf["pad_token_id"]
    start = hf.get("decoder_start_token_id")
    start = pad if start is None else start
    share = enc.shape == dec.shape and torch.equal(enc, dec)
    return ModelConfig(
        src_vocab_size=enc.size(0), tgt_vocab_size=dec.size(0), d_model=hf["d_model"],
        n_heads=hf["encoder_attention_heads"], n_encoder_layers=hf["encoder_layers"],
        n_decoder_layers=hf["decoder_layers"], d_ff=hf["encoder_ffn_dim"],
        dropout=hf.get("dropout", 0.1), attention_dropout=hf.get("attention_dropout", 0.0),
        activation_dropout=hf.get("activation_dropout", 0.0), activation=ACTIVATIONS[act],
        pre_norm=False, positional="sinusoidal", sinusoid_layout="split",
        max_positions=hf.get("max_position_embeddings", 1024), scale_embeddings=bool(hf.get("scale_embedding", False)),
        share_embeddings=share, tie_output=out.shape == dec.shape and torch.equal(out, dec),
        final_logits_bias=has_bias, layer_norm_eps=1e-5,  # torch's LayerNorm default, as HF Marian
        pad_id=pad, unk_id=unk_id, bos_id=start,  # Marian has no <s>
        eos_id=eos, decoder_start_id=start,
    )


def _check_positions(raw: dict[str, Tensor], cfg: ModelConfig) -> None:
    """Marian positions are fixed sinusoids; refuse a checkpoint whose saved table says otherwise."""
    for side in ("encoder", "decoder"):
        name = f"model.{side}.embed_positions.weight"
        saved = raw.get(name)
        if saved is None:
            continue
        table = sinusoid_table(saved.size(0), cfg.d_model, "split")
        if saved.shape != table.shape:
            raise ModelDirError(f"{name} is {tuple(saved.shape)}, expected (positions, d_model {cfg.d_model})")
        # within the rounding of the dtype it was saved in (a half-precision copy of the table is the table)
        atol = max(1e-4, torch.finfo(saved.dtype).eps) if saved.is_floating_point() else 1e-4
        if not torch.allclose(saved.float(), table, atol=atol):
            raise ModelDirError(f"{name} is not Marian's sinusoid table")


def convert_state(raw: dict[str, Tensor], enc: Tensor, dec: Tensor, out: Tensor, cfg: ModelConfig) -> dict[str, Tensor]:
    """Rename Marian tensors to seqformer's state-dict names (fp32); unknown tensors are an error."""
    tensors = {"encoder.embed.weight": enc}
    if not cfg.share_embeddings:
        tensors["decoder.embed.weight"] = dec
    if not cfg.tie_output:
        tensors["output.weight"] = out
    if cfg.final_logits_bias:
        tensors["final_logits_bias"] = raw["final_logits_bias"].reshape(-1)
    handled = {"model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
               "lm_head.weight", "final_logits_bias", "model.encoder.embed_positions.weight",
               "model.decoder.embed_positions.weight"}
    unknown = []
    for name, value in raw.items():
        if name in handled:
            continue
        short = name.removeprefix("model.")
        if not short.startswith(("encoder.layers.", "decoder.layers.")):
            unknown.append(name)
            continue
        for old, new in _RENAMES:
            short = short.replace(old, new)
        tensors[short] = value
    if unknown:
        raise ModelDirError(f"unexpected Marian tensors: {unknown[:5]}")
    return {k: v.float().contiguous() for k, v in tensors.items()}


def marian_files(path: Path) -> MarianFiles:
    tok_cfg_file = path / "tokenizer_config.json"
    tok_cfg = read_json(tok_cfg_file) if tok_cfg_file.is_file() else {}
    # As MarianTokenizer: separate only when its config says so (a target_vocab.json left beside a shared
    # vocabulary is not read); without a tokenizer_config.json, the files decide
    separate = tok_cfg.get("separate_vocabs", False) if tok_cfg_file.is_file() else (path / "target_vocab.json").is_file()
    files = MarianFiles(path / "source.spm", path / "target.spm", path / "vocab.json",
                        path / ("target_vocab.json" if separate else "vocab.json"),
                        tok_cfg.get("source_lang") or "", tok_cfg.get("target_lang") or "")
    for f in (files.src_spm, files.tgt_spm, files.vocab, files.tgt_vocab):
        if not f.is_file():
            raise ModelDirError(f"{f}: Marian tokenizer file not found")
    return files


def _check_vocab(cfg: ModelConfig, src_vocab: Vocab, tgt_vocab: Vocab, files: MarianFiles) -> None:
    """Every id of the vocabulary tables must have an embedding."""
    for name, vocab, size, file in (("source", src_vocab, cfg.src_vocab_size, files.vocab),
                                    ("target", tgt_vocab, cfg.tgt_vocab_size, files.tgt_vocab)):
        if len(vocab) > size:
            raise ModelDirError(f"{file}: {name} vocabulary has ids up to {len(vocab) - 1} but the model has only "
                                f"{size} embeddings")


@dataclass
class MarianImport:
    """A converted checkpoint: seqformer config, tensors under seqformer names, tokenizer files."""

    model_cfg: ModelConfig
    tensors: dict[str, Tensor]
    files: MarianFiles
    tokenizer: Tokenizer
    source: str = "Marian checkpoint"  # the weights file, for errors


def read_marian(path: str | Path) -> MarianImport:
    """Read and convert a local Marian directory (no network)."""
    path = Path(path)
    if (path / "config.json").is_file():
        read_json(path / "config.json")  # a malformed file is named with its line, not "not a Marian directory"
    if not is_marian_dir(path):
        raise ModelDirError(f"{path}: not a Hugging Face Marian directory (config.json with model_type 'marian')")
    hf = read_json(path / "config.json")
    weights = hf_weights_file(path)
    raw = read_hf_weights(weights)
    files = marian_files(path)
    tok = files.tokenizer()
    assert tok.src_vocab is not None and tok.tgt_vocab is not None
    with _naming(weights):
        enc, dec, out = _embeddings(hf, raw)
    with errors_name(path / "config.json"):
        cfg = model_config(hf, enc, dec, out, "final_logits_bias" in raw, tok.tgt_vocab.unk_id)
    with _naming(weights):
        _check_positions(raw, cfg)
        tensors = convert_state(raw, enc, dec, out, cfg)
    _check_vocab(cfg, tok.src_vocab, tok.tgt_vocab, files)
    return MarianImport(cfg, tensors, files, tok, str(weights))


@contextlib.contextmanager
def _naming(weights: Path) -> Iterator[None]:
    """What is wrong with the weights, said with the file they came from."""
    try:
        yield
    except ModelDirError as err:
        raise ModelDirError(f"{weights}: {err}") from None


def build_model(imp: MarianImport) -> Seq2SeqTransformer:
    model = Seq2SeqTransformer(imp.model_cfg)
    import_state(model, imp.tensors, imp.source)
    return model.eval()


def load_marian(path: str | Path) -> tuple[ModelDir, Seq2SeqTransformer]:
    """Convert in memory: what ``Translator.load`` needs, without writing a model directory."""
    imp = read_marian(path)
    meta = {
        "format_version": FORMAT_VERSION,
        "model": to_dict(imp.model_cfg),
        "tokenizer": {"type": "sentencepiece", "src": imp.files.src_spm.name, "tgt": imp.files.tgt_spm.name,
                      **imp.files.config_section()},
        "src_lang": imp.files.src_lang,
        "tgt_lang": imp.files.tgt_lang,
        "weights_dtype": "float32",
        "imported_from": "marian",
    }
    return ModelDir(path=Path(path), model_cfg=imp.model_cfg, tokenizer=imp.tokenizer, meta=meta), build_model(imp)


def import_marian(hf_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write ``out_dir`` as a seqformer model directory equivalent to the Marian model in ``hf_dir``."""
    if dtype not in ("float32", "float16"):  # anything else was written as float32 and recorded as asked
        raise ConfigError(f"dtype must be float32 or float16, found {dtype!r}")
    out = Path(out_dir)
    if out.resolve() == Path(hf_dir).resolve():  # its config.json would replace the original's
        raise ModelDirError(f"{out}: the output directory must not be the Hugging Face directory itself")
    if is_marian_dir(out):  # another one (the arguments swapped): its config.json, weights and vocab.json would go
        raise ModelDirError(f"{out}: holds a Hugging Face Marian model, which the import would overwrite: "
                            "write the seqformer model to another directory")
    imp = read_marian(hf_dir)
    original = read_json(Path(hf_dir) / "config.json")
    model = build_model(imp)
    files = imp.files
    with staged_dir(out) as stage:
        copy_tokenizer(sorted({files.src_spm, files.tgt_spm, files.vocab, files.tgt_vocab}), stage)
        save_weights(stage / "model.safetensors", model, torch.float16 if dtype == "float16" else None)
        write_config(stage, imp.model_cfg, files.src_spm.name, files.tgt_spm.name, files.src_lang, files.tgt_lang,
                     weights_dtype=dtype, tokenizer_extra=files.config_section())
        # The original config, for provenance (generation defaults such as num_beams live there).
        atomic_write_text(stage / "marian_config.json", json.dumps(original, indent=2) + "\n")
    return out
