"""Checkpoint averaging: the mean of the last N checkpoints' weights, written as a model directory."""

from __future__ import annotations

import contextlib
import json
import shutil
import warnings
from pathlib import Path

import torch

from seqformer.data.tokenizer import Tokenizer
from seqformer.errors import ModelDirError
from seqformer.io import atomic_write_bytes, import_state, read_model_dir, save_weights, staged_dir, weights_metadata
from seqformer.model.transformer import Seq2SeqTransformer
from seqformer.training.checkpoint import list_checkpoints, model_tensors, spaced, spacing
from seqformer.training.rundir import held


def average_tensors(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Element-wise mean of the model tensors of ``paths`` (accumulated in float64); checkpoints of
    different models (other tensor names or shapes) are an error naming the first that differs."""
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        tensors = model_tensors(path)
        if total and tensors.keys() != total.keys():
            odd = sorted(set(tensors) ^ set(total))
            raise ModelDirError(f"{path}: not the same model as {paths[0].name} (tensor {odd[0]} is in only one)")
        for name, value in tensors.items():
            acc = total.setdefault(name, torch.zeros_like(value, dtype=torch.float64))
            if acc.shape != value.shape:
                raise ModelDirError(f"{path}: {name} has shape {tuple(value.shape)}, {tuple(acc.shape)} in "
                                    f"{paths[0].name}: not the same model")
            acc += value.double()
    return {name: (acc / len(paths)).float() for name, acc in total.items()}


BEST_KEPT = "model.best.safetensors"  # the best-checkpoint model an in-place average replaced
AVERAGED = "averaged_from"  # in an average's config.json and weights header: the checkpoints it is the mean of


def average_checkpoints(run_dir: Path, last: int, out: Path | None = None, dtype: str = "float32") -> Path:
    """Average the newest ``last`` checkpoints of ``run_dir`` about ``save_every`` apart (a final save just after a
    regular one stands for both) into ``out`` (default: ``run_dir``); the new directory gets every tokenizer file
    the run's config names and the run's ``training.json``. In place, the run's best-checkpoint model is first kept
    as ``model.best.safetensors`` (not an earlier average), and the average is refused while a training run uses
    the directory."""
    if last < 1:
        raise ModelDirError(f"--last must be >= 1, found {last}")
    out = Path(out) if out is not None else Path(run_dir)
    in_place = out.resolve() == Path(run_dir).resolve()
    # In place, a training run still writing here would replace the average with its next best model
    with held(out) if in_place and (out / "checkpoints").is_dir() else contextlib.nullcontext():
        return _average(Path(run_dir), last, out, dtype, in_place)


def _average(run_dir: Path, last: int, out: Path, dtype: str, in_place: bool) -> Path:
    every = list_checkpoints(run_dir / "checkpoints")
    if not every:
        raise ModelDirError(f"{run_dir / 'checkpoints'}: no checkpoints to average")
    # The last N checkpoints save_every apart: a final save 2 updates after a regular one would count that
    # model twice (the newer stands for both)
    paths = spaced(every, spacing(_save_every(every[-1])))[-last:]
    if len(paths) < last:
        warnings.warn(f"{run_dir / 'checkpoints'} holds {len(paths)} checkpoint(s) at least half of save_every "
                      f"apart, fewer than --last {last}: averaging those {len(paths)}", stacklevel=3)
    mdir = read_model_dir(run_dir)  # config.json checked (its sections, fields and tokenizer files) first
    config = mdir.meta
    averaged_before = AVERAGED in config  # an earlier in-place average's mark in config.json (set anew below)
    model = Seq2SeqTransformer(mdir.model_cfg)
    import_state(model, average_tensors(paths), f"average of {len(paths)} checkpoints")
    config["weights_dtype"] = dtype
    config[AVERAGED] = [p.name for p in paths]
    if in_place:  # the run's own model: same files, two atomic writes
        if _written_by_training(out, config_marked=averaged_before):
            # pruning may have removed the best checkpoint: this file is then the only copy of that model
            atomic_write_bytes(out / BEST_KEPT, (out / "model.safetensors").read_bytes())
        _write(out, model, config, dtype)
        return out
    with staged_dir(out) as stage:  # built aside, then moved in file by file (config.json last)
        names = set(Tokenizer.files(config["tokenizer"]).values())  # vocab tables too (imported models)
        for name in sorted(names | ({"training.json"} if (run_dir / "training.json").is_file() else set())):
            shutil.copyfile(run_dir / name, stage / name)
        _write(stage, model, config, dtype)
    return out


def _save_every(checkpoint: Path) -> int:
    """The save_every of the recipe that wrote ``checkpoint`` (1 when its header does not say)."""
    try:
        return max(int(json.loads(weights_metadata(checkpoint)["train_config"])["save_every"]), 1)
    except (KeyError, ValueError, TypeError):
        return 1


def _written_by_training(run_dir: Path, config_marked: bool) -> bool:
    """Whether the run's model.safetensors is the trainer's (its best or last model), not an earlier average.
    An average says so in its weights' header, which neither a resume (it rewrites config.json) nor a copy
    (``cp -r`` gives new file times) changes. Averages written before that mark were marked in config.json only:
    for those, the trainer's model is the one no newer than training.json (written after each model it writes)."""
    model, info = run_dir / "model.safetensors", run_dir / "training.json"
    if not model.is_file():
        return False
    if AVERAGED in weights_metadata(model):
        return False
    if not config_marked:
        return True
    return info.is_file() and model.stat().st_mtime_ns <= info.stat().st_mtime_ns


def _write(out: Path, model: Seq2SeqTransformer, config: dict, dtype: str) -> None:
    save_weights(out / "model.safetensors", model, torch.float16 if dtype == "float16" else None,
                 metadata={AVERAGED: json.dumps(config[AVERAGED])})
    atomic_write_bytes(out / "config.json", (json.dumps(config, indent=2) + "\n").encode())
