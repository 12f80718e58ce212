"""Training oracles: a tiny model learns to reverse sequences; an interrupted and resumed run
reproduces the uninterrupted one exactly; averaging is the mean; the loss and schedule are right."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import reversal_pairs, tiny_model, write_model_dir, write_tsv
from safetensors.torch import load_file

import seqformer
from seqformer import TrainConfig, Translator
from seqformer.data.batching import bucket_batches, collate
from seqformer.errors import ConfigError, TrainingStopped
from seqformer.training import checkpoint as ckpt
from seqformer.training import optim
from seqformer.training import trainer as trainer_mod
from seqformer.training.average import average_checkpoints
from seqformer.training.optim import batch_loss, inverse_sqrt_lr, scheduled_lr, smoothed_loss
from seqformer.training.trainer import Trainer


def test_tiny_model_learns_to_reverse(tmp_path, spm_file):
    """~20 s on one free core: 800 updates of a 2+2-layer, d_model 64 model, then >= 95% exact match."""
    train = write_tsv(tmp_path / "train.tsv", reversal_pairs(3000, seed=1))
    cfg = TrainConfig(train=str(train), out=str(tmp_path / "run"), tokenizer=str(spm_file), preset="tiny",
                      max_tokens=600, lr=1e-3, warmup_steps=50, max_steps=800, precision="fp32",
                      label_smoothing=0.0, log_every=100, save_every=10_000, seed=1)
    overrides = dict(d_model=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=128, dropout=0.0)
    out = seqformer.train(cfg, overrides, progress=False)
    test = reversal_pairs(200, seed=2)
    translator = Translator.load(out)
    hyps = translator.translate([s for s, _ in test], beam_size=1)
    accuracy = sum(h == t for h, (_, t) in zip(hyps, test)) / len(test)
    assert accuracy >= 0.95, list(zip(hyps, test))[:10]
    losses = [r["loss"] for r in _log(out) if "loss" in r]
    assert losses[-1] < 0.1 < losses[0]


def test_separate_vocabularies_are_trained_per_side_and_learn(tmp_path):
    """joint_vocab=False: a source tokenizer from the source side only, a target one from the target side
    only, each used on its own side (swapped, the lowercase source would be all <unk> and nothing learnt)."""
    pairs = [(s, t.upper()) for s, t in reversal_pairs(3000, seed=1)]  # a..j in, A..J out
    train = write_tsv(tmp_path / "train.tsv", pairs)
    cfg = TrainConfig(train=str(train), out=str(tmp_path / "run"), joint_vocab=False, vocab_size=30, preset="tiny",
                      threads=1, max_tokens=600, lr=1e-3, warmup_steps=50, max_steps=800, precision="fp32",
                      label_smoothing=0.0, log_every=100, save_every=10_000, seed=1)
    overrides = dict(d_model=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=128, dropout=0.0)
    out = seqformer.train(cfg, overrides, progress=False)
    translator = Translator.load(out)
    tok = translator.tokenizer

    def letters(sp):  # the letters of a SentencePiece model's ordinary pieces
        return {c for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i))
                for c in sp.id_to_piece(i) if c.isalpha()}

    assert letters(tok.src) == set("abcdefghij") and letters(tok.tgt) == set("ABCDEFGHIJ")
    test = [(s, t.upper()) for s, t in reversal_pairs(200, seed=2)]
    hyps = translator.translate([s for s, _ in test], beam_size=1)
    accuracy = sum(h == t for h, (_, t) in zip(hyps, test)) / len(test)
    assert accuracy >= 0.95, list(zip(hyps, test))[:10]


def _log(out) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _resume_config(tmp_path, spm_file, name: str, max_steps: int) -> TrainConfig:
    train = tmp_path / "train.tsv"
    if not train.is_file():
        write_tsv(train, reversal_pairs(40, seed=3))
    return TrainConfig(train=str(train), out=str(tmp_path / name), tokenizer=str(spm_file), preset="tiny",
                       max_tokens=64, lr=2e-3, warmup_steps=4, max_steps=max_steps, precision="fp32",
                       label_smoothing=0.1, log_every=1, save_every=1000, seed=3)


RESUME_MODEL = dict(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=64, dropout=0.3,
                    attention_dropout=0.2)


@pytest.mark.parametrize("interrupt", ["max_steps", "signal"])
def test_resumed_run_reproduces_the_uninterrupted_run(tmp_path, spm_file, monkeypatch, interrupt):
    k = 7  # the 40 pairs make about 5 batches, so the interruption falls in the second epoch
    full = seqformer.train(_resume_config(tmp_path, spm_file, "full", 2 * k), RESUME_MODEL, progress=False)

    if interrupt == "max_steps":
        first = _resume_config(tmp_path, spm_file, "parts", k)
        seqformer.train(first, RESUME_MODEL, progress=False)
    else:
        original = Trainer.train_step

        def train_step(self, group):
            stats = original(self, group)
            if self.state.step == k:
                assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler, "no SIGINT handler installed"
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would: finish the step, save, return
            return stats

        monkeypatch.setattr(Trainer, "train_step", train_step)
        with pytest.raises(TrainingStopped, match=f"stopped by signal {int(signal.SIGINT)} at step {k}"):
            seqformer.train(_resume_config(tmp_path, spm_file, "parts", 2 * k), RESUME_MODEL, progress=False)
        monkeypatch.undo()
        assert not (tmp_path / "parts" / "model.safetensors").exists()  # a stopped run writes no model
    parts = tmp_path / "parts"
    assert [p.name for p in ckpt.list_checkpoints(parts / "checkpoints")] == [f"ckpt-{k:08d}.safetensors"]
    seqformer.train(_resume_config(tmp_path, spm_file, "parts", 2 * k), RESUME_MODEL, resume=True, progress=False)

    expected = [(r["step"], r["loss"], r["lr"]) for r in _log(full) if "loss" in r]
    got = [(r["step"], r["loss"], r["lr"]) for r in _log(parts) if "loss" in r]
    assert [s for s, _, _ in expected] == list(range(1, 2 * k + 1))
    epochs = [r["epoch"] for r in _log(full) if "loss" in r]
    assert epochs[k - 1] >= 1 and len(set(epochs[k:])) > 1  # stopped after an epoch; the resumed part crosses one
    assert got == expected
    assert [lr for _, _, lr in got] == pytest.approx([inverse_sqrt_lr(s, 2e-3, 4) for s in range(1, 2 * k + 1)])
    a, b = load_file(full / "model.safetensors"), load_file(parts / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_a_run_without_a_cooldown_resumes_into_one_exactly(tmp_path, spm_file):
    """How the bundled model's last leg was trained: a run stopped at k updates with no cool-down, resumed
    with max_steps=2k and cooldown_steps=k, is the run that had that schedule from the start, update by update."""
    k = 6
    cooldown = dict(max_steps=2 * k, cooldown_steps=k)
    full = seqformer.train(dataclasses.replace(_resume_config(tmp_path, spm_file, "full", 2 * k), **cooldown),
                           RESUME_MODEL, progress=False)
    seqformer.train(_resume_config(tmp_path, spm_file, "parts", k), RESUME_MODEL, progress=False)
    parts = seqformer.train(dataclasses.replace(_resume_config(tmp_path, spm_file, "parts", 2 * k), **cooldown),
                            RESUME_MODEL, resume=True, progress=False)

    expected = [(r["step"], r["loss"], r["lr"]) for r in _log(full) if "loss" in r]
    assert [(r["step"], r["loss"], r["lr"]) for r in _log(parts) if "loss" in r] == expected
    lrs = [lr for _, _, lr in expected]
    assert lrs[:k] == pytest.approx([inverse_sqrt_lr(s, 2e-3, 4) for s in range(1, k + 1)])
    assert lrs[k:] == pytest.approx([inverse_sqrt_lr(k, 2e-3, 4) * (k - i) / (k + 1) for i in range(k)])


class _Clock:
    """The trainer's time.perf_counter: one second per call, so that every update takes exactly one second."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_tokens_per_second_count_training_time_only(tmp_path, spm_file, monkeypatch):
    """Each update takes one second by the clock, each checkpoint write 1,000: tok_per_s is each update's tokens.
    The window began before the write, so the next line's speed was ~500x too low (as elapsed_s was not)."""
    clock = _Clock()
    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    save = trainer_mod.Trainer.save

    def slow_save(self) -> None:
        save(self)
        clock.now += 1000.0

    monkeypatch.setattr(trainer_mod.Trainer, "save", slow_save)
    cfg = dataclasses.replace(_resume_config(tmp_path, spm_file, "run", 6), save_every=2)
    records = [r for r in _log(seqformer.train(cfg, RESUME_MODEL, progress=False)) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r["tok_per_s"] for r in records] == [r["tokens"] for r in records]
    assert records[-1]["elapsed_s"] == 6.0


def test_a_cooldown_by_time_follows_the_clock_and_resumes_exactly(tmp_path, spm_file, monkeypatch, caplog):
    """max_minutes=0.2 with cooldown_minutes=0.1, each update one second by the clock: 12 updates, the first 6 at
    the inverse-sqrt rate, update s > 6 at that rate times (13 - s) / 6, the share of the last 6 seconds still left
    when it began. Stopped after 9 updates by max_steps (which says the cool-down was cut) and resumed without
    that limit, it is the uninterrupted run exactly: the rate follows the elapsed time the checkpoint kept."""
    import logging

    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(perf_counter=_Clock().perf_counter))
    timed = dict(max_minutes=0.2, cooldown_minutes=0.1)
    full = seqformer.train(dataclasses.replace(_resume_config(tmp_path, spm_file, "full", 0), **timed),
                           RESUME_MODEL, progress=False)
    expected = [(r["step"], r["loss"], r["lr"]) for r in _log(full) if "loss" in r]
    assert [lr for _, _, lr in expected] == pytest.approx(
        [inverse_sqrt_lr(s, 2e-3, 4) * min(1.0, (13 - s) / 6) for s in range(1, 13)])

    with caplog.at_level(logging.WARNING, logger="seqformer"):
        seqformer.train(dataclasses.replace(_resume_config(tmp_path, spm_file, "parts", 9), **timed),
                        RESUME_MODEL, progress=False)
    assert "--max-steps ended the run 0.05 minutes before max_minutes=0.2: the cool-down over the last 0.1 minutes " \
           "did not run to its end" in caplog.text
    assert "inside the 4 warmup updates" not in caplog.text  # the cool-down began at update 7
    parts = seqformer.train(dataclasses.replace(_resume_config(tmp_path, spm_file, "parts", 0), **timed),
                            RESUME_MODEL, resume=True, progress=False)
    assert [(r["step"], r["loss"], r["lr"]) for r in _log(parts) if "loss" in r] == expected
    a, b = load_file(full / "model.safetensors"), load_file(parts / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_a_resume_keeps_the_runs_tokenizer_whatever_the_command_says(tmp_path, spm_file):
    """A run trained with --tokenizer and resumed without it (or with another one) must not train or take a
    new tokenizer: its checkpoint's weights are in the first one's ids. Resumed without the flag, it is the
    uninterrupted run exactly; resumed with another tokenizer file, it is a one-line error."""
    k = 5
    full = seqformer.train(_resume_config(tmp_path, spm_file, "full", 2 * k), RESUME_MODEL, progress=False)
    seqformer.train(_resume_config(tmp_path, spm_file, "parts", k), RESUME_MODEL, progress=False)
    parts = tmp_path / "parts"
    before = json.loads((parts / "config.json").read_text())["tokenizer"]
    other = tmp_path / "other.model"
    other.write_bytes(spm_file.read_bytes())
    with pytest.raises(ConfigError, match=r"--resume: .*parts was trained with the tokenizer spm.model, the command "
                                          r"gives .*other.model: drop --tokenizer"):
        seqformer.train(dataclasses.replace(_resume_config(tmp_path, spm_file, "parts", 2 * k), tokenizer=str(other)),
                        RESUME_MODEL, resume=True, progress=False)
    seqformer.train(dataclasses.replace(_resume_config(tmp_path, spm_file, "parts", 2 * k), tokenizer=""),
                    RESUME_MODEL, resume=True, progress=False)
    assert json.loads((parts / "config.json").read_text())["tokenizer"] == before
    expected = [(r["step"], r["loss"]) for r in _log(full) if "loss" in r]
    assert [(r["step"], r["loss"]) for r in _log(parts) if "loss" in r] == expected
    a, b = load_file(full / "model.safetensors"), load_file(parts / "model.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("minutes", [float("nan"), float("inf"), -1.0])
def test_max_minutes_must_be_a_finite_number(minutes):
    """NaN passed the old check (min() with NaN) and then never stopped the run (elapsed >= NaN is never true)."""
    with pytest.raises(ConfigError, match="max_minutes a finite number"):
        TrainConfig(max_minutes=minutes)


def test_cooldown_schedule():
    cfg = TrainConfig(lr=1e-3, warmup_steps=4, max_steps=100, cooldown_steps=40)
    plain = TrainConfig(lr=1e-3, warmup_steps=4, max_steps=100)
    assert [scheduled_lr(s, cfg) for s in range(1, 61)] == [scheduled_lr(s, plain) for s in range(1, 61)]
    assert [scheduled_lr(s, plain) for s in range(1, 101)] == [inverse_sqrt_lr(s, 1e-3, 4) for s in range(1, 101)]
    tail = [scheduled_lr(s, cfg) for s in range(60, 101)]
    steps = [a - b for a, b in zip(tail, tail[1:])]
    assert steps == pytest.approx([tail[0] / 41] * 40)  # a straight line from the value at update 60 ...
    assert tail[-1] == pytest.approx(tail[0] / 41) and scheduled_lr(101, cfg) == 0.0  # ... to zero after update 100
    assert all(a < b for a, b in zip(tail[1:], [scheduled_lr(s, plain) for s in range(61, 101)]))


@pytest.mark.parametrize("fields", [dict(cooldown_steps=10), dict(cooldown_steps=10, max_steps=5),
                                    dict(cooldown_steps=-1, max_steps=5)])
def test_a_cooldown_needs_a_max_steps_to_end_at(fields):
    with pytest.raises(ConfigError, match="cooldown_steps"):
        TrainConfig(**fields)


def test_cooldown_by_time_schedule():
    """The rate is the inverse-sqrt one until the last cooldown_minutes, then scaled by the share of them left."""
    cfg = TrainConfig(lr=1e-3, warmup_steps=4, max_minutes=10, cooldown_minutes=4)
    plain = TrainConfig(lr=1e-3, warmup_steps=4, max_minutes=10)
    for step in (1, 3, 50, 900):
        base = inverse_sqrt_lr(step, 1e-3, 4)
        assert [scheduled_lr(step, plain, t) for t in (0.0, 359.0, 500.0, 700.0)] == [base] * 4  # no clock without one
        assert [scheduled_lr(step, cfg, t) for t in (0.0, 360.0)] == [base, base]
        assert [scheduled_lr(step, cfg, t) for t in (420.0, 480.0, 540.0)] == pytest.approx([base * 0.75, base / 2,
                                                                                            base / 4])
        assert [scheduled_lr(step, cfg, t) for t in (600.0, 650.0)] == [0.0, 0.0]


@pytest.mark.parametrize("fields, error", [
    (dict(cooldown_minutes=1.0), "cooldown_minutes needs max_minutes .* found cooldown_minutes=1.0, max_minutes=0.0"),
    (dict(cooldown_minutes=2.0, max_minutes=1.0), "needs max_minutes .* found cooldown_minutes=2.0, max_minutes=1.0"),
    (dict(cooldown_minutes=-1.0, max_minutes=1.0), "cooldown_minutes must be a number >= 0, found -1.0"),
    (dict(cooldown_minutes=float("nan"), max_minutes=1.0), "cooldown_minutes must be a number >= 0, found nan")])
def test_a_cooldown_by_time_needs_a_max_minutes_to_end_at(fields, error):
    with pytest.raises(ConfigError, match=error):
        TrainConfig(max_steps=10, **fields)


def test_a_run_has_one_cooldown():
    with pytest.raises(ConfigError, match="give one cool-down, by updates or by time"):
        TrainConfig(max_steps=10, warmup_steps=0, cooldown_steps=5, max_minutes=2.0, cooldown_minutes=1.0)


def test_a_cooldown_by_time_needs_the_time():
    """Leaving the elapsed time out must not give the undecayed rate silently."""
    with pytest.raises(ValueError, match="needs the elapsed time"):
        scheduled_lr(5, TrainConfig(max_minutes=2.0, cooldown_minutes=1.0))


def test_the_rate_follows_the_trainers_shared_clock(tmp_path, spm_file, monkeypatch):
    """train_step takes the time from Trainer._clock (rank 0's on every rank; tests/test_distributed.py checks it),
    not from its own rank's state: with that clock at half of the cool-down left, every rate is half."""
    monkeypatch.setattr(Trainer, "_clock", lambda self: 30.0)
    cfg = dataclasses.replace(_resume_config(tmp_path, spm_file, "run", 3), max_minutes=1.0, cooldown_minutes=1.0)
    run = seqformer.train(cfg, RESUME_MODEL, progress=False)
    assert [r["lr"] for r in _log(run) if "loss" in r] == pytest.approx([inverse_sqrt_lr(s, 2e-3, 4) / 2
                                                                         for s in (1, 2, 3)])


def test_a_cooldown_by_time_inside_the_warmup_and_a_moved_end_are_said(tmp_path, spm_file, monkeypatch, caplog):
    """A cool-down by time that begins inside the warmup (here at update 2: warmup 4 updates of one second,
    cool-down over all 6 seconds) keeps the rate below its peak: one warning. A resume that moves where the
    cool-down ends (max_minutes raised) moves the rate at once: a warning naming the rate before and after."""
    import logging

    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(perf_counter=_Clock().perf_counter))
    cfg = dataclasses.replace(_resume_config(tmp_path, spm_file, "run", 0), max_minutes=0.1, cooldown_minutes=0.1)
    with caplog.at_level(logging.WARNING, logger="seqformer"):
        seqformer.train(cfg, RESUME_MODEL, progress=False)
    assert caplog.text.count("the cool-down by time began at update 2, inside the 4 warmup updates") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seqformer"):
        seqformer.train(dataclasses.replace(cfg, max_minutes=0.2), RESUME_MODEL, resume=True, progress=False)
    rate = inverse_sqrt_lr(7, 2e-3, 4)  # update 7, 6 of the 6 cool-down seconds left now: the full rate
    assert f"--resume: the cool-down by time now ends at max_minutes=0.2 (over its last 0.1 minutes), it ended at " \
           f"0.1 (over 0.1): the rate at update 7 goes from 0 to {rate:.3g}" in caplog.text


def test_a_cooldown_cannot_start_inside_the_warmup():
    """It would fall from the still-warming-up rate (update 0: lr/warmup), training far slower than asked."""
    assert TrainConfig(lr=1e-3, warmup_steps=10, max_steps=100, cooldown_steps=90).cooldown_steps == 90
    with pytest.raises(ConfigError, match="inside the 10 warmup updates.*<= max_steps - warmup_steps = 90"):
        TrainConfig(lr=1e-3, warmup_steps=10, max_steps=100, cooldown_steps=91)


def test_a_different_seed_gives_a_different_curve(tmp_path, spm_file):
    """The resume oracle above is not vacuous: dropout and batch order really depend on the RNG."""
    a = seqformer.train(_resume_config(tmp_path, spm_file, "a", 3), RESUME_MODEL, progress=False)
    cfg = _resume_config(tmp_path, spm_file, "b", 3)
    b = seqformer.train(dataclasses.replace(cfg, seed=4), RESUME_MODEL, progress=False)
    assert [r["loss"] for r in _log(a)] != [r["loss"] for r in _log(b)]


def test_average_is_the_mean_of_the_last_checkpoints(tmp_path, spm_file, tokenizer):
    vocab = tokenizer.src.get_piece_size()
    run = write_model_dir(tmp_path / "run", tiny_model(seed=0, src_vocab_size=vocab, tgt_vocab_size=vocab), spm_file)
    states = []
    for step in (1, 2, 3):
        model = tiny_model(seed=step, src_vocab_size=vocab, tgt_vocab_size=vocab)
        opt = torch.optim.Adam(model.parameters())
        (run / "checkpoints").mkdir(exist_ok=True)
        ckpt.save_checkpoint(run / "checkpoints", model, opt, ckpt.TrainState(step=step))
        states.append({n: p.detach().clone() for n, p in model.state_dict().items()})
    for dtype in ("float32", "float16"):
        out = average_checkpoints(run, last=2, out=tmp_path / f"avg-{dtype}", dtype=dtype)
        saved = load_file(out / "model.safetensors")
        assert json.loads((out / "config.json").read_text())["averaged_from"] == [
            "ckpt-00000002.safetensors", "ckpt-00000003.safetensors"]
        for name, value in saved.items():
            mean = ((states[1][name].double() + states[2][name].double()) / 2).float()
            expected = mean.half() if dtype == "float16" else mean
            assert torch.equal(value, expected), name
        loaded = Translator.load(out).model.state_dict()  # the directory loads as the averaged model
        for name, value in saved.items():
            assert torch.equal(loaded[name], value.float()), name


def assert_loss_is_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, eps: float, scale: float) -> None:
    """smoothed_loss on ``logits`` (any dtype, requiring grad) against F.cross_entropy computed in fp32 from the
    same values: summed loss, summed NLL, and the gradient of ``scale`` * loss in the logits' dtype."""
    reference_logits = logits.detach().to(torch.float32, copy=True).requires_grad_()
    loss, nll = smoothed_loss(logits, labels, eps)
    expected = F.cross_entropy(reference_logits, labels, label_smoothing=eps, reduction="sum")
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, F.cross_entropy(reference_logits.detach(), labels, reduction="sum"))
    (scale * loss).backward()
    (scale * expected).backward()
    assert logits.grad.dtype == logits.dtype
    torch.testing.assert_close(logits.grad, reference_logits.grad.to(logits.dtype))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_smoothed_loss_matches_torch_cross_entropy(eps):
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(9, 13, generator=gen) * 3).requires_grad_()
    labels = torch.randint(0, 13, (9,), generator=gen)
    assert_loss_is_cross_entropy(logits, labels, eps, scale=2.5)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_smoothed_loss_in_blocks_of_rows(monkeypatch, dtype, eps):
    # on CPU the loss goes through the logits a block of rows at a time (16 here: blocks of 16, 16, 16
    # and 2 rows); it must equal the whole-matrix reference, and with bf16 logits (as under bf16
    # autocast) give the reference's gradient, computed in fp32 from the same logits, in bf16
    monkeypatch.setattr(optim, "BLOCK_ELEMENTS", 1)
    assert optim._block_rows(13, torch.device("cpu")) == 16
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(50, 13, generator=gen) * 3).to(dtype).requires_grad_()
    labels = torch.randint(0, 13, (50,), generator=gen)
    assert_loss_is_cross_entropy(logits, labels, eps, scale=0.5)


def test_inverse_sqrt_schedule():
    peak, warmup = 1e-3, 4
    assert [inverse_sqrt_lr(s, peak, warmup) for s in range(1, 5)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert inverse_sqrt_lr(16, peak, warmup) == pytest.approx(peak / 2)  # peak * sqrt(4 / 16)
    after = [inverse_sqrt_lr(s, peak, warmup) for s in range(4, 200)]
    assert all(a > b for a, b in zip(after, after[1:]))
    assert inverse_sqrt_lr(9, peak, 0) == pytest.approx(peak / 3)
    assert inverse_sqrt_lr(0, peak, warmup) == inverse_sqrt_lr(1, peak, warmup)


@torch.no_grad()
def test_loss_ignores_padding():
    """Summed over a padded batch, the loss equals the sum of each example's loss alone."""
    model = tiny_model(seed=8)
    cfg = model.cfg
    examples = [([5, 6, 7, 3], [8, 9]), ([5, 3], [10, 11, 12, 13, 14]), ([9, 8, 7, 6, 5, 4, 3], [4])]
    batch = collate(examples, cfg.pad_id, cfg.decoder_start_id, cfg.eos_id)
    loss, nll, n = batch_loss(model, batch, 0.1)
    assert n == 3 + 6 + 2
    alone = [batch_loss(model, collate([e], cfg.pad_id, cfg.decoder_start_id, cfg.eos_id), 0.1) for e in examples]
    torch.testing.assert_close(loss, sum(a[0] for a in alone), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nll, sum(a[1] for a in alone), atol=1e-5, rtol=1e-5)
    # And the NLL is the teacher-forced -log p of the labels.
    e = examples[1]
    src = torch.tensor([e[0]])
    lp = model(src, src.eq(cfg.pad_id), torch.tensor([[cfg.decoder_start_id, *e[1]]])).log_softmax(-1)[0]
    expected = -sum(lp[t, tok] for t, tok in enumerate(e[1] + [cfg.eos_id]))
    torch.testing.assert_close(alone[1][1], expected, atol=1e-5, rtol=1e-5)


def test_token_batches_cover_each_example_once_within_budget():
    lengths = [(n % 7 + 2, (n * 3) % 11 + 2) for n in range(100)]
    batches = bucket_batches(lengths, max_tokens=40, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(100))
    for b in batches:
        assert len(b) == 1 or max(max(lengths[i]) for i in b) * len(b) <= 40
    assert batches == bucket_batches(lengths, max_tokens=40, seed=1, epoch=0)
    assert batches != bucket_batches(lengths, max_tokens=40, seed=1, epoch=1)


def test_checkpoint_restores_model_optimizer_and_rng(tmp_path):
    model = tiny_model(seed=9)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(*_dummy(model)).sum().backward()
    opt.step()
    torch.manual_seed(123)
    path = ckpt.save_checkpoint(tmp_path, model, opt, ckpt.TrainState(step=5, epoch=1, batch_in_epoch=2))
    expected_draw = torch.rand(3)
    other = tiny_model(seed=10)
    other_opt = torch.optim.Adam(other.parameters(), lr=1e-3)
    tensors, meta = ckpt.read_checkpoint(path)
    state = ckpt.restore(other, other_opt, tensors, meta, str(path))
    assert (state.step, state.epoch, state.batch_in_epoch) == (5, 1, 2)
    assert torch.equal(torch.rand(3), expected_draw)
    for (n, p), q in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(p, q), n
    saved, loaded = opt.state_dict()["state"], other_opt.state_dict()["state"]
    assert saved and loaded.keys() == saved.keys()  # a restore that skipped the optimizer left this empty
    for i, pa in saved.items():
        assert pa.keys() == loaded[i].keys()
        assert all(torch.equal(torch.as_tensor(pa[k]), torch.as_tensor(loaded[i][k])) for k in pa), i


def _dummy(model):
    src = torch.tensor([[5, 6, 7, 3]])
    return src, src.eq(0), torch.tensor([[2, 8, 9]])



@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_the_recipes_label_smoothing_and_clipping_reach_the_updates(data_dir, tmp_path, monkeypatch, eps):
    # smoothed_loss is checked against F.cross_entropy above; this checks that the trainer hands it the
    # recipe's epsilon and clips at the recipe's norm (a resume test cannot: both runs would share a mistake).
    from train_helpers import curve, tiny_config

    from seqformer.training import trainer as trainer_mod

    smoothing, clipped_at, loss_fn, clip = [], [], trainer_mod.batch_loss, torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(trainer_mod, "batch_loss", lambda model, batch, ls: smoothing.append(ls) or loss_fn(model, batch, ls))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm, **kw: clipped_at.append(max_norm) or clip(params, max_norm, **kw))
    seqformer.train(tiny_config(data_dir, tmp_path / "run", max_steps=3, label_smoothing=eps, clip_norm=0.5),
                    progress=False)
    assert set(smoothing) == {eps} and clipped_at == [0.5] * 3
    records = curve(tmp_path / "run")
    losses, nlls = [r[2] for r in records], [r[3] for r in records]
    if eps == 0.0:  # the logged loss is the smoothed one, nll the plain one
        assert losses == pytest.approx(nlls, rel=1e-6)
    else:
        assert losses != pytest.approx(nlls, rel=1e-3)


def test_pairs_longer_than_max_len_are_dropped_at_the_boundary():
    """A source is fed with its </s> and a target after <s>: max_len subwords on either side would need
    max_len + 1 positions, so pairs are kept up to max_len - 1 subwords a side (a model with
    max_positions == max_len would otherwise fail hours into a run, on the first such batch)."""
    from seqformer.training.data import encode_pairs

    class WordTokenizer:  # one subword per word
        def encode_src(self, texts):
            return [[4 + i for i, _ in enumerate(t.split())] for t in texts]

        encode_tgt = encode_src

    pairs = [("a b c", "x y z"), ("a b c d", "x"), ("a", "w x y z"), ("a b", "x y")]
    examples = encode_pairs(WordTokenizer(), pairs, max_len=4, eos_id=3)
    assert examples == [([4, 5, 6, 3], [4, 5, 6]), ([4, 5, 3], [4, 5])]
    batch = collate(examples, 0, 2, 3)
    assert batch.src.size(1) <= 4 and batch.tgt_in.size(1) <= 4


def test_validation_scores_are_the_plain_nll_and_the_translators_bleu(model_dir):
    # Early stopping and the best-model choice rest on these two numbers; elsewhere validate() is mocked.
    import sacrebleu

    from seqformer.data.batching import collate
    from seqformer.training.data import encode_pairs
    from seqformer.training.validate import validate

    translator = Translator.load(model_dir)
    model, tok, mc = translator.model, translator.tokenizer, translator.model.cfg
    pairs = reversal_pairs(20, seed=11)
    # Half the references are this model's own translations: a BLEU far from 0 that any reordering would lower.
    own = translator.translate([s for s, _ in pairs[:8]], beam_size=1, split=False)
    pairs = [(s, own[i] if i < 8 and i % 2 == 0 else t) for i, (s, t) in enumerate(pairs)]
    examples = encode_pairs(tok, pairs, max_len=64, eos_id=mc.eos_id)
    model.train()
    got = validate(model, tok, examples, pairs, TrainConfig(max_tokens=40, valid_bleu_lines=8))
    assert model.training  # handed back in training mode

    model.eval()
    with torch.no_grad():  # one example at a time, no label smoothing: the per-token mean NLL
        per = [batch_loss(model, collate([e], mc.pad_id, mc.decoder_start_id, mc.eos_id), 0.0) for e in examples]
    assert got["valid_nll"] == pytest.approx(sum(float(p[1]) for p in per) / sum(p[2] for p in per), rel=1e-5)
    hyps = translator.translate([s for s, _ in pairs[:8]], beam_size=1, split=False)  # input order kept
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [[t for _, t in pairs[:8]]]).score)
    assert got["bleu"] > 20


def test_the_fused_optimizer_makes_the_recipes_adam_updates():
    # make_optimizer picks PyTorch's fused Adam(W) kernel; it must compute the recipe's update, the one
    # PyTorch's plain for-loop Adam(W) computes from the same gradients (betas, eps, decay all reaching it).
    from seqformer.training.optim import make_optimizer

    for decay in (0.0, 0.1):
        cfg = TrainConfig(lr=3e-3, adam_betas=(0.8, 0.95), adam_eps=1e-6, weight_decay=decay)
        fused_model, plain_model = tiny_model(0), tiny_model(0)
        fused = make_optimizer(fused_model, cfg)
        kind = torch.optim.AdamW if decay else torch.optim.Adam
        plain = kind(plain_model.parameters(), lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=decay,
                     foreach=False)
        assert fused.defaults["fused"] and type(fused) is kind
        for step in range(4):
            for model, opt in ((fused_model, fused), (plain_model, plain)):
                opt.zero_grad()
                torch.manual_seed(step)
                src, mask, tgt = _dummy(model)
                model(src, mask, tgt).logsumexp(-1).sum().backward()
                opt.step()
        for (name, a), b in zip(fused_model.named_parameters(), plain_model.parameters()):
            if "k_proj.bias" not in name:  # softmax ignores a key bias: its gradient is rounding noise, which Adam scales up
                assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name
        assert not torch.equal(fused_model.output_weight, tiny_model(0).output_weight)  # it did move


def test_resuming_a_checkpoint_of_the_plain_optimizer_runs_the_fused_one(tmp_path):
    # A checkpoint written before fused Adam brings fused=None in its param groups; restored as saved, a
    # resumed run would silently fall back to the slow for-loop update (and keep Adam's step counters
    # where the fused kernel refuses them on a GPU).
    from seqformer.training.optim import make_optimizer

    model = tiny_model(0)
    old = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    model(*_dummy(model)).sum().backward()
    old.step()
    path = ckpt.save_checkpoint(tmp_path, model, old, ckpt.TrainState(step=1))
    assert not json.loads(ckpt.read_checkpoint(path)[1]["param_groups"])[0]["fused"]
    fresh = tiny_model(1)
    opt = make_optimizer(fresh, TrainConfig())
    tensors, meta = ckpt.read_checkpoint(path)
    ckpt.restore(fresh, opt, tensors, meta, str(path))
    assert all(g["fused"] for g in opt.param_groups)
    for p_old, p_new in zip(old.state_dict()["state"].values(), opt.state_dict()["state"].values()):
        assert all(torch.equal(torch.as_tensor(p_old[k]), torch.as_tensor(p_new[k])) for k in p_old)
    fresh(*_dummy(fresh)).sum().backward()
    opt.step()  # and the fused kernel accepts the restored state
    assert all(int(s["step"]) == 2 for s in opt.state.values())
