"""Multi-process training on CPU (gloo): two ranks with the same global batch as one
process give the same loss curve and weights, and the checkpoint they write translates."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
from train_helpers import cli_args, curve, env, tiny_config

from seqformer import Translator
from seqformer.errors import ConfigError
from seqformer.training import amp
from seqformer.training.checkpoint import list_checkpoints, model_tensors, read_checkpoint
from seqformer.training.distributed import Dist, shard
from seqformer.training.trainer import train

NO_DROPOUT = {"dropout": 0.0}


def test_shards_partition_the_global_batch():
    group = [[i] for i in range(6)]
    shards = [shard(group, Dist(rank=r, world_size=3)) for r in range(3)]
    assert sorted(x for s in shards for x in s) == group
    assert all(len(s) == 2 for s in shards)


def _torchrun(cfg, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "seqformer", "train", "--quiet", *cli_args(cfg, NO_DROPOUT), *extra]
    run = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("model written to") == 1  # rank 0 alone reports and writes
    return run


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_ranks_match_one_process_with_the_same_global_batch(data_dir, tmp_path):
    # 2 ranks x update_freq 2 == 1 process x update_freq 4: same batches, same loss normalisation.
    # The 2-rank run stops at step 3 and resumes, so exact resume is checked across ranks too.
    _torchrun(tiny_config(data_dir, tmp_path / "ddp", update_freq=2, max_steps=3, save_every=3))
    _torchrun(tiny_config(data_dir, tmp_path / "ddp", update_freq=2, max_steps=6, save_every=3), "--resume")

    ref = tiny_config(data_dir, tmp_path / "ref", update_freq=4, max_steps=6, save_every=3)
    train(ref, NO_DROPOUT, progress=False)

    got, want = curve(tmp_path / "ddp"), curve(tmp_path / "ref")
    assert [r[:2] for r in got] == [r[:2] for r in want] == [(s, 0) for s in range(1, 7)]
    for g, w in zip(got, want):
        assert g[2:] == pytest.approx(w[2:], rel=1e-5, abs=1e-6)  # loss, nll, lr, gnorm, tokens

    names = [p.name for p in list_checkpoints(tmp_path / "ddp" / "checkpoints")]
    assert names == [p.name for p in list_checkpoints(tmp_path / "ref" / "checkpoints")]
    a = model_tensors(tmp_path / "ddp" / "checkpoints" / names[-1])
    b = model_tensors(tmp_path / "ref" / "checkpoints" / names[-1])
    for name in a:
        if name.endswith("k_proj.bias"):
            # Softmax ignores a shift shared by all keys, so this gradient is rounding noise that Adam
            # (eps 1e-9) scales up to lr-sized steps: it differs between any two summation orders.
            continue
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)

    texts = ["red cat runs", "big old tree"]
    out = Translator.load(tmp_path / "ddp").translate(texts, beam_size=2)  # the model directory they write
    assert out == Translator.load(tmp_path / "ref").translate(texts, beam_size=2)


def test_fp16_needs_a_gpu():
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        amp.Amp("fp16", torch.device("cpu"))


@pytest.mark.parametrize("bf16", [True, False])
def test_auto_precision_is_bf16_where_the_device_has_it(monkeypatch, bf16):
    """"auto" (every run's default): bf16 where the device computes it, else fp32 on a CPU (emulated bf16 is
    several times slower) and fp16 on a GPU; a precision asked for by name is kept."""
    seen = []
    monkeypatch.setattr(amp, "bf16_supported", lambda device=None: seen.append(device.type) or bf16)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert amp.resolve_precision("auto", cpu) == ("bf16" if bf16 else "fp32")
    assert amp.resolve_precision("auto", gpu) == ("bf16" if bf16 else "fp16")
    assert seen == ["cpu", "cuda"]  # each asked about its own device
    assert [amp.resolve_precision(p, cpu) for p in ("fp32", "bf16")] == ["fp32", "bf16"]
    assert amp.resolve_precision("fp16", gpu) == "fp16"


def test_fp16_loss_scale_is_checkpointed_and_resumed(data_dir, tmp_path, monkeypatch):
    # CPU autocast supports float16 too: exercise the GradScaler path here (GPUs use the same code).
    monkeypatch.setattr(amp, "resolve_precision", lambda precision, device: "fp16")
    whole = tiny_config(data_dir, tmp_path / "whole", max_steps=6, save_every=3, precision="fp16")
    train(whole, NO_DROPOUT, progress=False)
    tensors, _ = read_checkpoint(list_checkpoints(tmp_path / "whole" / "checkpoints")[0])
    assert float(tensors["amp.scale"]) > 1 and int(tensors["amp.growth_tracker"]) == 3

    part = tiny_config(data_dir, tmp_path / "part", max_steps=3, save_every=3, precision="fp16")
    train(part, NO_DROPOUT, progress=False)
    train(tiny_config(data_dir, tmp_path / "part", max_steps=6, save_every=3, precision="fp16"), NO_DROPOUT,
          resume=True, progress=False)
    assert curve(tmp_path / "part") == curve(tmp_path / "whole")
    # The curve alone cannot tell (the scale only grows every 2000 clean steps): the resumed scaler's own
    # state must continue the saved one (a resume that dropped it restarts growth_tracker at 0: 3, not 6).
    last = {name: read_checkpoint(list_checkpoints(tmp_path / name / "checkpoints")[-1])[0] for name in ("part", "whole")}
    for key in ("amp.scale", "amp.growth_tracker"):
        assert torch.equal(last["part"][key], last["whole"][key]), key
    assert int(last["whole"]["amp.growth_tracker"]) == 6


def test_every_rank_takes_the_final_save_together():
    # Only rank 0 validates. When the last step was saved but not validated, rank 0 validates and saves
    # again; save() gathers from every rank, so a rank that skipped it left rank 0 waiting until the
    # process group timed out (two hours) and lost the final checkpoint.
    from types import SimpleNamespace

    from seqformer.training.trainer import Trainer

    saves = []

    def finish(rank, valid_examples, other_ranks_vote):  # Dist.any: the OR over all ranks' flags
        Trainer.finish(SimpleNamespace(
            state=SimpleNamespace(step=4, validated_step=3), stop_signal=None, valid_examples=valid_examples,
            _saved_step=4, dist=SimpleNamespace(any=lambda flag: flag or other_ranks_vote),
            run_validation=lambda: {"bleu": 1.0}, runlog=SimpleNamespace(write=lambda record: None),
            save=lambda: saves.append(rank), write_model=lambda: None))

    finish(0, ["example"], other_ranks_vote=False)  # validates: votes to save
    finish(1, [], other_ranks_vote=True)  # nothing to validate, already saved: must still join the save
    assert saves == [0, 1]


def test_the_time_limit_is_rank_zeros_clock():
    """Other ranks' elapsed time includes waiting while rank 0 validates or saves (time the limit excludes):
    had their clocks a vote, the any-rank vote would end a run early by that much."""
    from types import SimpleNamespace

    from seqformer import TrainConfig
    from seqformer.training.checkpoint import TrainState
    from seqformer.training.trainer import Trainer

    cfg = TrainConfig(max_minutes=1.0)
    for rank, waited in ((0, False), (1, True)):  # rank 1 has counted rank 0's checkpoint writes, rank 0 has not
        state = TrainState(elapsed_s=61.0 if waited else 59.0)
        trainer = SimpleNamespace(cfg=cfg, state=state, dist=Dist(rank=rank, world_size=2), stop_signal=None)
        assert Trainer.done(trainer) is False
    rank0 = SimpleNamespace(cfg=cfg, state=TrainState(elapsed_s=60.0), dist=Dist(rank=0, world_size=2), stop_signal=None)
    rank0._warn_if_cooldown_cut = lambda limit: Trainer._warn_if_cooldown_cut(rank0, limit)
    assert Trainer.done(rank0) is True


def test_a_cooldown_by_time_follows_rank_zeros_clock_on_every_rank():
    """Each rank computes its own learning rate: by its own clock (rank 1's counts its waits on rank 0) a cool-down
    by time would give the ranks different rates, and their weights would drift apart. Every rank takes rank 0's."""
    from types import SimpleNamespace

    from seqformer import TrainConfig
    from seqformer.training.checkpoint import TrainState
    from seqformer.training.trainer import Trainer

    def clock(cfg, elapsed, is_main, other_ranks):  # all_sum: this rank's value plus the others' (rank 0's: 59 s)
        return Trainer._clock(SimpleNamespace(cfg=cfg, state=TrainState(elapsed_s=elapsed), device="cpu",
                                              dist=SimpleNamespace(active=True, is_main=is_main,
                                                                   all_sum=lambda t: t + other_ranks)))

    timed = TrainConfig(max_minutes=2.0, cooldown_minutes=1.0)
    assert clock(timed, 61.0, is_main=False, other_ranks=59.0) == 59.0
    assert clock(timed, 59.0, is_main=True, other_ranks=0.0) == 59.0
    assert clock(TrainConfig(max_minutes=2.0), 61.0, is_main=False, other_ranks=59.0) == 61.0  # no collective needed


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_wrapping_for_several_processes_warns_of_nothing(tmp_path):
    """DDP's old buffer flag draws a FutureWarning on every rank in PyTorch >= 2.13: users saw it twice."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            wrapped = Dist(rank=0, world_size=2).wrap(torch.nn.Linear(2, 2))  # wrap() asks only "several?"
        assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    finally:
        dist.destroy_process_group()
