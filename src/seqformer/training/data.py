"""Training data preparation: read the corpus, train or load the tokenizer, encode."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seqformer.config import TrainConfig
from seqformer.data.batching import Example
from seqformer.data.corpus import drop_empty, read_parallel
from seqformer.data.tokenizer import (
    EOS,
    Tokenizer,
    check_special_ids,
    piece_count,
    spm_sample,
    train_sentencepiece,
)
from seqformer.errors import DataError
from seqformer.io import ModelDir, atomic_write_text, copy_tokenizer

log = logging.getLogger("seqformer")


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    spm_files: tuple[str, str]  # file names inside the output directory (src, tgt)
    train: list[Example]
    valid: list[tuple[str, str]]
    tokenizer_extra: dict[str, Any] = field(default_factory=dict)  # an imported model's vocab tables / lang tags


def _tokenizer_files(cfg: TrainConfig, out: Path, pairs: list[tuple[str, str]], write: bool) -> tuple[str, str]:
    """Names of the tokenizer files in ``out``; with ``write``, copy or train them there first."""
    if cfg.tokenizer:
        files = cfg.tokenizer_files
        if write:
            for f in files:  # a bad file is named as the user gave it, before anything is copied
                check_special_ids(Tokenizer.load(f).src, f)
            _copy_in(files, out)
        names = [f.name for f in files]
        return names[0], names[-1]
    if not write:
        return ("spm.model", "spm.model") if cfg.joint_vocab else ("src.spm", "tgt.spm")
    sides = {"spm.model": None} if cfg.joint_vocab else {"src.spm": 0, "tgt.spm": 1}
    for name, side in sides.items():
        lines = spm_sample([s for p in pairs for s in p] if side is None else [p[side] for p in pairs],
                           cfg.spm_sample_lines, cfg.seed)
        recipe = _tokenizer_recipe(cfg, lines)
        if not _reused(out / name, cfg, recipe):
            log.info("training a%s SentencePiece model (%d pieces)", " joint" if side is None else "",
                     cfg.vocab_size)
            # first, so that a tokenizer a restart finds always has its settings beside it
            atomic_write_text(_recipe_file(out / name), json.dumps(recipe, indent=2) + "\n")
            train_sentencepiece(lines, out / name, cfg.vocab_size, cfg.spm_model_type, len(lines) or 1, cfg.seed)
    names = list(sides)
    return names[0], names[-1]


def _recipe_file(path: Path) -> Path:
    """Where what a run's tokenizer was trained on and with is kept, beside it."""
    return path.with_name(path.name + ".recipe.json")


def _tokenizer_recipe(cfg: TrainConfig, lines: list[str]) -> dict[str, Any]:
    """Everything that shapes a tokenizer seqformer trains: the exact text (the corpus side and sample it is
    trained on, by digest), vocabulary size and model type; what must match for a restart to keep it."""
    digest = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogatepass")).hexdigest()
    return {"vocab_size": cfg.vocab_size, "spm_model_type": cfg.spm_model_type, "text_sha256": digest,
            "text_lines": len(lines)}


def _copy_in(files: list[Path], out: Path) -> None:
    """Copy tokenizer files into ``out``, each with a recipe beside it that no training matches: a later run in
    ``out`` that trains its own tokenizer must not take a copied one with the same name for its own."""
    copy_tokenizer(files, out)
    for f in files:
        atomic_write_text(_recipe_file(out / Path(f).name), json.dumps({"copied_from": str(Path(f).resolve())}) + "\n")


def _reused(path: Path, cfg: TrainConfig, want: dict[str, Any]) -> bool:
    """Whether an earlier start of this run left a tokenizer at ``path`` that this one keeps (said in the log).
    One trained on other text or with other settings (its ``.recipe.json``; without one, from a seqformer
    before those files: more pieces than ``vocab_size``) belongs to another recipe: an error, so that no
    weights are trained in the wrong pieces."""
    if not path.is_file():
        return False
    pieces = piece_count(path)
    recipe = _recipe_file(path)
    delete = "delete it (or the run directory) to train a new one"
    if recipe.is_file():
        try:
            kept = json.loads(recipe.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            kept = None
        if not isinstance(kept, dict):
            raise DataError(f"{recipe}: not the JSON seqformer writes beside a tokenizer: {delete}")
        if "copied_from" in kept:
            raise DataError(f"{path}: a tokenizer an earlier run copied from {kept['copied_from']}, not one trained "
                            f"for this recipe: {delete}")
        changed = next((k for k in want if kept.get(k) != want[k]), None)
        if changed in ("text_sha256", "text_lines"):
            raise DataError(f"{path}: a tokenizer an earlier run trained on other text (another corpus, side, "
                            f"spm_sample_lines or seed): {delete}")
        if changed:
            raise DataError(f"{path}: a tokenizer left by an earlier run with {changed}={kept.get(changed)!r}, this "
                            f"recipe has {changed}={want[changed]!r}: {delete}")
    elif pieces > cfg.vocab_size:
        raise DataError(f"{path}: a tokenizer of {pieces} pieces from an earlier run, this recipe asks for "
                        f"vocab_size={cfg.vocab_size}: {delete}")
    log.info("keeping %s (%d pieces) from an earlier start of this run; delete it to train a new one", path, pieces)
    return True


def _init_tokenizer(init: ModelDir, out: Path, write: bool) -> tuple[Tokenizer, tuple[str, str], dict[str, Any]]:
    """The tokenizer of an --init-from model directory, copied into ``out``: its SentencePiece models and,
    for an imported Marian model, its own piece -> id tables and language tags (the weights' ids)."""
    section = init.meta["tokenizer"]
    files = Tokenizer.files(section)
    if write:
        _copy_in([init.path / f for f in files.values()], out)
    local = {**section, **{k: Path(f).name for k, f in files.items()}}
    extra = {k: local[k] for k in _EXTRA_KEYS if k in local}
    return Tokenizer.from_config(out, local), (local["src"], local["tgt"]), extra


_EXTRA_KEYS = ("src_vocab", "tgt_vocab", "lang_tags")  # an imported model's tokenizer keys beyond the two files


def _run_tokenizer(section: dict[str, Any], out: Path) -> tuple[Tokenizer, tuple[str, str], dict[str, Any]]:
    """The tokenizer a resumed run already has in ``out`` (config.json's "tokenizer" section): never re-trained
    or replaced, whatever the command's tokenizer options, since the checkpoint's weights are in its ids."""
    extra = {k: section[k] for k in _EXTRA_KEYS if k in section}
    return Tokenizer.from_config(out, section), (section["src"], section["tgt"]), extra


def encode_pairs(tok: Tokenizer, pairs: list[tuple[str, str]], max_len: int, eos_id: int = EOS) -> list[Example]:
    """Encode and drop pairs longer than ``max_len`` subwords on either side (counted in the log)."""
    src_ids = tok.encode_src([s for s, _ in pairs])
    tgt_ids = tok.encode_tgt([t for _, t in pairs])
    examples = [(s + [eos_id], t) for s, t in zip(src_ids, tgt_ids) if len(s) < max_len and len(t) < max_len]
    if len(examples) < len(pairs):
        log.info("dropped %d pairs longer than max_len=%d", len(pairs) - len(examples), max_len)
    return examples


def prepare(cfg: TrainConfig, out: Path, write: bool = True, init: ModelDir | None = None,
            run: tuple[dict[str, Any], int] | None = None) -> PreparedData:
    """Read and encode the corpus; ``write=False`` (ranks other than 0) only loads the tokenizer rank 0 wrote.
    ``init``: the --init-from model directory, whose tokenizer and end-of-sentence id the data then uses.
    ``run``: a resumed run's tokenizer section and end-of-sentence id, which take precedence over both."""
    pairs = drop_empty(read_parallel(cfg.train, cfg.src_lang, cfg.tgt_lang), cfg.train)
    if not pairs:
        raise DataError(f"{cfg.train}: no non-empty sentence pairs")
    valid = read_parallel(cfg.valid, cfg.src_lang, cfg.tgt_lang) if cfg.valid else []
    valid = drop_empty(valid, cfg.valid)
    if cfg.valid and not valid:  # validation, the best-model choice and early stopping would be off, unsaid
        raise DataError(f"{cfg.valid}: no non-empty sentence pairs to validate on")
    if run is not None:
        tok, names, extra = _run_tokenizer(run[0], out)
        return PreparedData(tok, names, encode_pairs(tok, pairs, cfg.max_len, run[1]), valid, extra)
    if init is not None:
        tok, names, extra = _init_tokenizer(init, out, write)
        return PreparedData(tok, names, encode_pairs(tok, pairs, cfg.max_len, init.model_cfg.eos_id), valid, extra)
    src_name, tgt_name = _tokenizer_files(cfg, out, pairs, write)
    tok = Tokenizer.load(out / src_name, out / tgt_name)
    return PreparedData(tok, (src_name, tgt_name), encode_pairs(tok, pairs, cfg.max_len), valid)
