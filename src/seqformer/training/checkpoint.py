"""Training checkpoints: one safetensors file per save (model, optimizer, RNG) with the
trainer's position in JSON metadata and a SHA-256 of the tensors. Written atomically,
verified on load; a damaged file is reported and the previous good one is used."""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from seqformer.errors import ModelDirError, SeqformerError
from seqformer.io import atomic_write_bytes, export_state, import_state

_NAME = re.compile(r"^ckpt-(\d{8})\.safetensors$")


@dataclass
class TrainState:
    """Where training stands: enough to continue exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    bad_validations: int = 0
    elapsed_s: float = 0.0
    skipped_steps: int = 0
    validated_step: int = -1  # the step the last validation scored (so a finished run resumed does not again)
    best_nll: float | None = None  # the best model's dev NLL: breaks ties of its BLEU
    best_kind: str = ""  # what best_metric measures: "bleu" or "nll" (-NLL); "" in older checkpoints


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
    return tensors, sd["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": dict(sorted(state.items())), "param_groups": groups}  # numeric order, as saved


def checkpoint_path(directory: Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.safetensors"


def save_checkpoint(directory: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: TrainState,
                    extra: dict[str, torch.Tensor] | None = None, config: dict[str, Any] | None = None) -> Path:
    """Write ``ckpt-<step>.safetensors`` atomically; ``extra`` holds more tensors (per-rank RNG, loss scale),
    ``config`` the training recipe that wrote it (JSON metadata, compared on resume).

    A failed write (disk full, I/O error) raises SeqformerError and leaves older checkpoints as they were.
    """
    tensors = {f"model.{k}": v.cpu() for k, v in export_state(model).items()}
    opt_tensors, groups = _flatten_optimizer(opt)
    tensors.update(opt_tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    tensors.update({k: v.cpu() for k, v in (extra or {}).items()})
    meta = {"state": json.dumps(state.__dict__), "param_groups": json.dumps(groups), "sha256": _digest(tensors)}
    if config is not None:
        meta["train_config"] = json.dumps(config)
    path = checkpoint_path(directory, state.step)
    try:
        atomic_write_bytes(path, st_save(tensors, metadata=meta))
    except OSError as err:
        raise SeqformerError(f"{path}: cannot write checkpoint ({err.strerror or err}); "
                             "older checkpoints are intact, free space and continue with --resume") from None
    return path


def remove_partial(directory: Path) -> None:
    """Delete temporary files left by a process killed while writing a checkpoint."""
    directory = Path(directory)
    if directory.is_dir():
        for tmp in directory.glob(".ckpt-*.tmp"):
            tmp.unlink(missing_ok=True)


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in step order."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def step_of(path: Path) -> int:
    """The update a checkpoint file was written at, from its name."""
    return int(_NAME.match(Path(path).name).group(1))


def spacing(save_every: int) -> int:
    """The fewest updates between two checkpoints that averaging and pruning count as two: half of ``save_every``."""
    return save_every // 2


def spaced(paths: list[Path], min_gap: int) -> list[Path]:
    """``paths`` (in step order) without each one fewer than ``min_gap`` updates before the next one kept,
    newest first: a run's final save (or a save at a stop) just after a regular one stands for both."""
    kept: list[Path] = []
    for path in reversed(paths):
        if not kept or step_of(kept[-1]) - step_of(path) >= min_gap:
            kept.append(path)
    return kept[::-1]


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a checkpoint, after verifying its checksum."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelDirError(f"{path}: unreadable checkpoint ({err})") from None
    if meta.get("sha256") != _digest(tensors):
        raise ModelDirError(f"{path}: checksum mismatch (file is corrupt)")
    return tensors, meta


def load_latest(directory: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]] | None:
    """The newest checkpoint that verifies; damaged newer ones are reported and skipped."""
    for path in reversed(list_checkpoints(directory)):
        try:
            tensors, meta = read_checkpoint(path)
        except ModelDirError as err:
            warnings.warn(f"{err}; falling back to the previous checkpoint", stacklevel=2)
            continue
        return path, tensors, meta
    return None


def set_aside_newer(directory: Path, step: int) -> list[Path]:
    """Rename the checkpoints after ``step`` (damaged ones a resume skipped) to ``*.damaged``.

    Left in place, they would outrank the resumed run's new checkpoints: ``prune`` keeps the highest
    steps (it would delete the good ones) and ``average --last N`` would pick them.
    """
    moved = []
    for path in list_checkpoints(directory):
        if step_of(path) > step:
            target = path.with_name(path.name + ".damaged")
            path.replace(target)
            moved.append(target)
    return moved


def restore(model: torch.nn.Module, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
            meta: dict[str, str], source: str, rank: int = 0) -> TrainState:
    """Load model, optimizer and this rank's RNG from a checkpoint; returns the trainer position.

    Rank 0's CPU generator is ``rng.torch``; other ranks' are ``rng.torch.<rank>`` (left seeded
    as they are if the checkpoint came from a run with fewer processes).
    """
    try:  # the digest covers the tensors, not this metadata: another version's may lack or add fields
        groups = json.loads(meta["param_groups"])
        state = TrainState(**json.loads(meta["state"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelDirError(f"{source}: its training state cannot be read by this version of seqformer ({err!r}): "
                            "resume from another checkpoint, or start a new --out") from None
    import_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source)
    for group in groups:
        for key in ("fused", "foreach"):  # the kernel is this optimizer's choice, not the saving one's: a
            if key in opt.defaults:  # pre-fused checkpoint would fall back to the for-loop (and on a GPU keep
                group[key] = opt.defaults[key]  # its step counters on the CPU, which the fused kernel refuses)
    opt.load_state_dict(_unflatten_optimizer(tensors, groups))
    cpu_key = "rng.torch" if rank == 0 else f"rng.torch.{rank}"
    if cpu_key in tensors:
        torch.set_rng_state(tensors[cpu_key])
    if torch.cuda.is_available() and f"rng.cuda.{rank}" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{rank}"])
    return state


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    tensors, _ = read_checkpoint(path)
    return {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}


def prune(directory: Path, keep_last: int, min_gap: int = 0) -> None:
    """Delete the checkpoints older than the newest ``keep_last`` that are ``min_gap`` updates apart (those
    :func:`spaced` keeps, which averaging takes): a final save just after a regular one does not push out a
    checkpoint ``average --last keep_last`` needs."""
    if keep_last <= 0:
        return
    every = list_checkpoints(directory)
    kept = spaced(every, min_gap)[-keep_last:]
    for path in every[: every.index(kept[0])] if kept else []:
        path.unlink(missing_ok=True)
