"""Fault handling in training: SIGKILL then --resume reproduces the uninterrupted run,
SIGINT/SIGTERM save before exiting, damaged checkpoints are skipped, a full disk or an
unwritable directory gives a clear error, and NaN losses are skipped then stop training."""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
from dataclasses import replace

import pytest
from train_helpers import curve, spawn_train, tiny_config

from seqformer.cli import main
from seqformer.errors import ConfigError, ModelDirError, SeqformerError
from seqformer.training import checkpoint as ckpt
from seqformer.training import rundir
from seqformer.training import trainer as trainer_mod
from seqformer.training.runlog import read_log
from seqformer.training.trainer import MAX_BAD_STEPS, train


def _steps(out) -> list[int]:
    return [r[0] for r in curve(out)]


def _wait_for_step(proc, out, step: int, timeout: float = 120.0) -> int:
    """Poll the child's log until it has logged ``step``; returns the last logged step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"trainer exited early: {proc.communicate()[1][-2000:]}"
        steps = _steps(out)
        if steps and steps[-1] >= step:
            return steps[-1]
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no step {step} within {timeout}s")


def _records(out) -> list[dict]:
    """Log records without wall-clock fields."""
    drop = {"tok_per_s", "elapsed_s"}
    return [{k: v for k, v in r.items() if k not in drop} for r in read_log(out / "train_log.jsonl")]


def test_sigkill_then_resume_reproduces_the_uninterrupted_run(data_dir, tmp_path):
    # Dropout on and validation every 10 steps: RNG, optimizer, position and best score must all resume.
    base = dict(max_steps=40, save_every=6, valid=str(data_dir / "valid.tsv"), valid_every=10)
    train(tiny_config(data_dir, tmp_path / "whole", **base), progress=False)

    cfg = tiny_config(data_dir, tmp_path / "killed", **base)
    kill_at = random.randint(8, 30)
    proc = spawn_train(cfg)
    _wait_for_step(proc, tmp_path / "killed", kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    last = ckpt.list_checkpoints(tmp_path / "killed" / "checkpoints")[-1]
    resumed_from = ckpt.TrainState(**json.loads(ckpt.read_checkpoint(last)[1]["state"])).step
    assert resumed_from < 40, f"killed at step {kill_at} after the run finished"

    train(cfg, resume=True, progress=False)
    assert _records(tmp_path / "killed") == _records(tmp_path / "whole")
    assert _steps(tmp_path / "killed") == list(range(1, 41))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_a_checkpoint_then_resume_continues(data_dir, tmp_path, signum):
    cfg = tiny_config(data_dir, tmp_path / "run", max_steps=100_000, save_every=100_000)
    proc = spawn_train(cfg)
    _wait_for_step(proc, tmp_path / "run", 3)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]  # finished cleanly, but a script must not go on
    assert f"stopped by signal {int(signum)}" in err and "model written" not in err
    (path,) = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")
    step = ckpt.TrainState(**json.loads(ckpt.read_checkpoint(path)[1]["state"])).step
    assert step == _steps(tmp_path / "run")[-1] >= 3  # the step in progress was finished, then saved

    train(tiny_config(data_dir, tmp_path / "run", max_steps=step + 2), resume=True, progress=False)
    assert _steps(tmp_path / "run") == list(range(1, step + 3))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(data_dir, tmp_path, damage):
    cfg = tiny_config(data_dir, tmp_path / "run", max_steps=8, save_every=4)
    train(cfg, progress=False)
    first = _records(tmp_path / "run")
    newest = tmp_path / "run" / "checkpoints" / "ckpt-00000008.safetensors"
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-100] ^= 0xFF  # inside the tensor data: only the checksum notices
    newest.write_bytes(bytes(data))

    with pytest.warns(UserWarning, match=r"ckpt-00000008.*(unreadable|checksum mismatch).*previous checkpoint"):
        train(cfg, resume=True, progress=False)
    assert _records(tmp_path / "run") == first  # steps 5-8 recomputed from step 4, identically


def test_a_skipped_damaged_checkpoint_does_not_outrank_the_resumed_runs_new_ones(data_dir, tmp_path):
    # The resumed run's checkpoints have lower steps than the damaged one: left in place, pruning kept the
    # damaged file and deleted every good one (keep_last 1: nothing left to resume from).
    train(tiny_config(data_dir, tmp_path / "run", max_steps=8, save_every=4), progress=False)
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "ckpt-00000008.safetensors").write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="falling back"):
        train(tiny_config(data_dir, tmp_path / "run", max_steps=6, save_every=4, keep_last=1), resume=True,
              progress=False)
    assert [p.name for p in ckpt.list_checkpoints(ckpts)] == ["ckpt-00000006.safetensors"]
    assert (ckpts / "ckpt-00000008.safetensors.damaged").read_bytes() == b"damaged"  # kept for inspection
    assert ckpt.load_latest(ckpts)[0].name == "ckpt-00000006.safetensors"


def test_all_checkpoints_damaged_is_an_error(data_dir, tmp_path):
    cfg = tiny_config(data_dir, tmp_path / "run", max_steps=4, save_every=4)
    train(cfg, progress=False)
    (path,) = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(UserWarning), pytest.raises(ModelDirError, match="no checkpoint verifies"):
        train(cfg, resume=True, progress=False)


def test_disk_full_during_save_keeps_the_previous_checkpoint(data_dir, tmp_path, monkeypatch):
    real_write, calls = ckpt.atomic_write_bytes, []

    def write_then_fail_on_second(path, data):
        calls.append(path)
        if len(calls) < 2:
            return real_write(path, data)

        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with monkeypatch.context() as m:
            m.setattr(os, "fsync", no_space)  # the temporary file is written, then the disk is full
            return real_write(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", write_then_fail_on_second)
    cfg = tiny_config(data_dir, tmp_path / "run", max_steps=12, save_every=4)
    with pytest.raises(SeqformerError, match="ckpt-00000008.*No space left on device.*--resume"):
        train(cfg, progress=False)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["ckpt-00000004.safetensors"]  # no partial file
    ckpt.read_checkpoint(ckpt_dir / "ckpt-00000004.safetensors")  # verifies

    monkeypatch.setattr(ckpt, "atomic_write_bytes", real_write)  # space freed
    train(cfg, resume=True, progress=False)
    assert _steps(tmp_path / "run") == list(range(1, 13))


def test_unwritable_output_directory_fails_at_start_up(data_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = tiny_config(data_dir, blocker / "run")
    with pytest.raises(ConfigError, match="output directory is not writable"):
        train(cfg, progress=False)
    assert main(["train", "--train", cfg.train, "--out", cfg.out, "--tokenizer", cfg.tokenizer, "--quiet"]) == 1
    assert "seqformer: error:" in capsys.readouterr().err


def test_too_little_disk_space_fails_at_start_up(data_dir, tmp_path, monkeypatch):
    nearly_full = shutil.disk_usage(tmp_path)._replace(free=10_000)
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda path: nearly_full)
    with pytest.raises(ConfigError, match="MiB free, a checkpoint needs about"):
        train(tiny_config(data_dir, tmp_path / "run"), progress=False)
    assert not ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")


def test_resume_removes_files_left_half_written(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    partial = [tmp_path / "checkpoints" / ".ckpt-00000004.safetensors.x1.tmp", tmp_path / ".model.safetensors.x2.tmp",
               tmp_path / ".spm.model.x3.tmp"]  # a tokenizer copy, now atomic too
    for p in partial:
        p.write_bytes(b"half")
    keep = tmp_path / "notes.tmp"
    keep.write_text("the user's")
    rundir.prepare_out(tmp_path, resume=True)
    rundir.release(tmp_path)
    assert not any(p.exists() for p in partial) and keep.exists()


def _nan_on(calls: set[int] | None, monkeypatch) -> None:
    """Make batch_loss return a NaN loss on the given (1-based) calls, or always when None."""
    real, count = trainer_mod.batch_loss, [0]

    def loss_with_nan(model, batch, label_smoothing):
        count[0] += 1
        loss, nll, n = real(model, batch, label_smoothing)
        if calls is None or count[0] in calls:
            loss = loss * float("nan")
        return loss, nll, n

    monkeypatch.setattr(trainer_mod, "batch_loss", loss_with_nan)


@pytest.mark.parametrize("bad", ["no state", "a newer field"])
def test_a_checkpoint_whose_state_this_version_cannot_read_is_a_one_line_error(tmp_path, bad):
    """The checksum covers the tensors only: metadata from another version raised a raw KeyError / TypeError."""
    import torch

    from seqformer.errors import ModelDirError

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    path = ckpt.save_checkpoint(tmp_path, model, opt, ckpt.TrainState(step=3))
    tensors, meta = ckpt.read_checkpoint(path)
    if bad == "no state":
        del meta["state"]
    else:
        meta["state"] = json.dumps({**json.loads(meta["state"]), "ema_decay": 0.999})
    with pytest.raises(ModelDirError, match=r"ckpt-00000003.safetensors: its training state cannot be read"):
        ckpt.restore(model, opt, tensors, meta, str(path))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file locks")
def test_a_run_directory_in_use_by_another_run_is_refused(data_dir, tmp_path):
    """A --resume started while the first run still trains deleted its half-written checkpoint and interleaved
    both runs' files; now it is a one-line error naming the holder, and the directory is free once it ends."""
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)  # as another process's run holds it
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"4242\n")
    cfg = tiny_config(data_dir, out, max_steps=2)
    held = r"run: another seqformer process \(pid 4242: a training run, or an average written in place\) is using"
    with pytest.raises(ConfigError, match=held):
        train(cfg, progress=False)
    assert not ckpt.list_checkpoints(out / "checkpoints")
    os.close(fd)
    train(cfg, progress=False)
    train(replace(cfg, max_steps=4), resume=True, progress=False)  # released when the first run ended


def test_nan_loss_skips_the_update_and_counts_it(data_dir, tmp_path, monkeypatch):
    _nan_on({3, 5}, monkeypatch)
    cfg = tiny_config(data_dir, tmp_path / "run", max_steps=6, save_every=6)
    train(cfg, progress=False)
    (path,) = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")
    state = ckpt.TrainState(**json.loads(ckpt.read_checkpoint(path)[1]["state"]))
    assert (state.step, state.skipped_steps) == (6, 2)
    assert _steps(tmp_path / "run") == list(range(1, 7))


def test_repeated_nan_loss_stops_with_advice(data_dir, tmp_path, monkeypatch):
    _nan_on(None, monkeypatch)
    cfg = tiny_config(data_dir, tmp_path / "run", max_steps=100)
    with pytest.raises(SeqformerError, match=f"{MAX_BAD_STEPS} updates in a row.*lower --lr.*--precision fp32"):
        train(cfg, progress=False)


def test_the_same_training_file_spelled_another_way_is_an_exact_resume(data_dir, tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(data_dir)
    train(tiny_config(data_dir, tmp_path / "run", max_steps=2, train="train.tsv"), progress=False)
    with caplog.at_level(logging.WARNING, logger="seqformer"):
        train(tiny_config(data_dir, tmp_path / "run", max_steps=4), resume=True, progress=False)  # its absolute path
    assert "not an exact resume" not in caplog.text  # was: "train was 'train.tsv', now '/tmp/.../train.tsv'"


def test_resume_applies_the_recipes_adam_settings_and_warns_of_a_changed_data_order(data_dir, tmp_path, caplog):
    train(tiny_config(data_dir, tmp_path / "run", max_steps=4, weight_decay=0.1), progress=False)
    resumed = tiny_config(data_dir, tmp_path / "run", max_steps=6, weight_decay=0.0, adam_betas=(0.9, 0.99),
                          seed=4, preset="base", lr=1e-3)
    with caplog.at_level(logging.WARNING, logger="seqformer"):
        train(resumed, resume=True, progress=False)
    (path,) = [p for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints") if "06" in p.name]
    groups = json.loads(ckpt.read_checkpoint(path)[1]["param_groups"])
    # Loading the checkpoint's optimizer state brought back weight decay 0.1 (a decay the recipe no longer
    # asks for, carried into Adam with AdamW's decoupled flag), and the new betas were dropped.
    assert [(g["weight_decay"], tuple(g["betas"])) for g in groups] == [(0.0, (0.9, 0.99))] * len(groups)
    assert "weight_decay: 0.1 -> 0.0" in caplog.text and "betas: (0.9, 0.98) -> (0.9, 0.99)" in caplog.text
    assert "seed was 3, now 4" in caplog.text and "not an exact resume" in caplog.text
    assert "lr was 0.003, now 0.001: the run continues with the new value" in caplog.text  # was unsaid
    # a preset on --resume was silently ignored (the run keeps its own model): now said
    assert "the run was made with preset 'tiny', the command says 'base': ignored" in caplog.text
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["d_model"] == 64
