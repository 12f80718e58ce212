"""Self-contained model directories and atomic file writes.

A model directory holds ``config.json`` (format version, model and tokenizer
config), ``model.safetensors``, the SentencePiece model(s) and ``training.json``.
No pickle anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from seqformer.config import (
    FORMAT_VERSION,
    ModelConfig,
    check_sections,
    from_dict,
    read_config,
    to_dict,
)
from seqformer.data.tokenizer import Tokenizer
from seqformer.errors import ConfigError, DataError, ModelDirError
from seqformer.model.packed import PackedLinear


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over ``path`` (permissions ``mode``)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; model files are meant to be shared
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power loss only once its directory is synced
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_STD_STREAMS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}


def own_stream(path: str | Path) -> int | None:
    """The file descriptor that ``path`` names when it is one of this process's own (/dev/stdout, /dev/fd/N,
    /proc/self/fd/N): written through, never reopened (reopening a redirected stdout truncates its file, and
    replacing that file atomically would lose what ``>>`` appended to it)."""
    try:
        name = os.path.abspath(path)
    except OSError:  # a relative path from a working directory since removed
        return None
    if name in _STD_STREAMS:
        return _STD_STREAMS[name]
    match = re.fullmatch(rf"/(?:dev/fd|proc/self/fd|proc/{os.getpid()}/fd)/(\d+)", name)
    return int(match.group(1)) if match else None


def write_output(path: Path, data: bytes) -> None:
    """Write a user's output file: atomically, replacing a regular file (through a symbolic link, the file it
    points to) and keeping its permissions (a new one gets the umask's); into this process's own streams
    (/dev/stdout) and anything else that can be written (/dev/null, a named pipe) directly, never replacing
    the device, pipe or the file a stream is redirected to."""
    path = Path(path)
    fd = own_stream(path)
    if fd is not None:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()  # what was printed before goes first
        try:
            with os.fdopen(os.dup(fd), "wb") as f:
                f.write(data)
        except OSError as err:
            raise DataError(f"{path}: cannot be written ({err.strerror})") from None
        return
    if path.exists() and not path.is_file():
        with open(path, "wb") as f:
            f.write(data)
        return
    target = path.resolve() if path.is_symlink() else path
    if target.is_file():
        mode = target.stat().st_mode & 0o7777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    atomic_write_bytes(target, data, mode)


STAGE = ".staging"  # inside the target directory: the same filesystem, whatever is mounted where


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A directory to write ``out``'s new files into; when the block completes they replace the old ones.

    The files are built in ``out/.staging`` and moved in one ``os.replace`` each, config.json last, so an
    interrupted or failed build leaves ``out`` as it was (never new weights beside an old config for the
    length of a build). Other files in ``out`` (a model card, notes, or an older model's files that the new
    one does not have) are left alone; ``out`` itself stays the same directory (a symlink, a mount point or
    the working directory included). Builds write files only, no subdirectories.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ModelDirError(f"{out}: exists and is not a directory")
    if (out / "checkpoints").is_dir():  # its config.json and weights would be replaced: --resume would break
        raise ModelDirError(f"{out} is a training run (it holds checkpoints/): write the model to another directory")
    stage = out / STAGE
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(stage, ignore_errors=True)  # left by a killed build
    stage.mkdir()
    done = False
    try:
        yield stage
        names = sorted(p.name for p in stage.iterdir())
        for name in sorted(names, key=lambda n: n == "config.json"):  # config.json last
            os.replace(stage / name, out / name)
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not done and not any(out.iterdir()):  # a failed first build leaves no empty folder behind
            out.rmdir()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def export_state(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The state dict with tied aliases removed (a shared tensor is stored once)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in model.state_dict().items():
        key = tensor.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        t = tensor.detach().contiguous().clone()
        out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return out


def import_state(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors saved by :func:`export_state`, filling tied aliases; any mismatch is an error."""
    if any(isinstance(m, PackedLinear) for m in model.modules()):  # its state_dict() values are copies
        raise ValueError("import_state: the model has packed (inference) layers; load into a plain model, then pack")
    expected = export_state(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelDirError(f"{source}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    params = dict(model.state_dict())
    for name, value in tensors.items():
        if params[name].shape != value.shape:
            raise ModelDirError(f"{source}: {name} has shape {tuple(value.shape)}, config expects {tuple(params[name].shape)}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].dtype))


@dataclass
class ModelDir:
    """Everything read from a model directory."""

    path: Path
    model_cfg: ModelConfig
    tokenizer: Tokenizer
    meta: dict[str, Any]

    @property
    def src_lang(self) -> str:
        return self.meta.get("src_lang", "")

    @property
    def tgt_lang(self) -> str:
        return self.meta.get("tgt_lang", "")


def write_config(out: Path, model_cfg: ModelConfig, src_spm: str, tgt_spm: str, src_lang: str, tgt_lang: str,
                 weights_dtype: str = "float32", tokenizer_extra: dict[str, Any] | None = None) -> None:
    """``tokenizer_extra``: optional tokenizer keys (src_vocab, tgt_vocab, lang_tags; see Tokenizer.from_config)."""
    config = {
        "format_version": FORMAT_VERSION,
        "model": to_dict(model_cfg),
        "tokenizer": {"type": "sentencepiece", "src": src_spm, "tgt": tgt_spm, **(tokenizer_extra or {})},
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "weights_dtype": weights_dtype,
    }
    atomic_write_text(Path(out) / "config.json", json.dumps(config, indent=2) + "\n")


def save_weights(path: Path, model: nn.Module, dtype: torch.dtype | None = None,
                 metadata: dict[str, str] | None = None) -> None:
    """``metadata``: strings kept in the file's header (loading ignores them; :func:`weights_metadata` reads them)."""
    atomic_write_bytes(Path(path), st_save(export_state(model, dtype), metadata=metadata))


def weights_metadata(path: Path) -> dict[str, str]:
    """The header strings :func:`save_weights` was given for ``path`` (empty when none, or unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return {}


@contextlib.contextmanager
def errors_name(config_file: Path) -> Iterator[None]:
    """Reading a config file's fields: a missing key or a field of the wrong kind is a ModelDirError naming it."""
    try:
        yield
    except KeyError as err:
        raise ModelDirError(f"{config_file}: missing key {err}") from None
    except (ConfigError, TypeError) as err:
        raise ModelDirError(f"{config_file}: {err}") from None


def read_model_dir(path: Path) -> ModelDir:
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"{path}: model directory not found")
    try:
        data = read_config(path)
        check_sections(data, ("model", "tokenizer"), path / "config.json")
    except ConfigError as err:
        message = str(err)
        raise ModelDirError(message if message.startswith(str(path)) else f"{path / 'config.json'}: {message}") from None
    with errors_name(path / "config.json"):
        model_cfg = from_dict(ModelConfig, data["model"])
        tok = data["tokenizer"]
        tokenizer = Tokenizer.from_config(path, tok)
    return ModelDir(path=path, model_cfg=model_cfg, tokenizer=tokenizer, meta=data)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelDirError(f"{path}: weights file not found")
    try:
        return st_load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise ModelDirError(f"{path}: corrupt or truncated weights ({err})") from None


def copy_tokenizer(src_files: list[Path], out: Path) -> None:
    for f in src_files:
        target = Path(out) / Path(f).name
        if Path(f).resolve() != target.resolve():  # atomically: a run killed mid-copy left a cut model
            atomic_write_bytes(target, Path(f).read_bytes())
