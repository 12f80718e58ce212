"""The training loop: token batches, warmup + inverse-sqrt Adam, label smoothing, bf16
autocast, validation (loss + BLEU), atomic checkpoints and exact resume."""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from seqformer.config import (
    PRESETS,
    ModelConfig,
    TrainConfig,
    from_dict,
    read_json,
    to_dict,
)
from seqformer.data.batching import Batch, bucket_batches, collate
from seqformer.errors import ConfigError, SeqformerError
from seqformer.io import atomic_write_text, save_weights, write_config
from seqformer.model.transformer import Seq2SeqTransformer
from seqformer.training import checkpoint as ckpt
from seqformer.training.data import PreparedData, encode_pairs, prepare
from seqformer.training.optim import batch_loss, inverse_sqrt_lr, make_optimizer
from seqformer.training.validate import validate

log = logging.getLogger("seqformer")
MAX_BAD_STEPS = 20


def bf16_supported() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.cpu._is_avx512_bf16_supported())  # noqa: SLF001
    except AttributeError:
        return False


def build_model_config(cfg: TrainConfig, data: PreparedData, overrides: dict[str, Any]) -> ModelConfig:
    tok = data.tokenizer
    fields = dict(PRESETS[cfg.preset])
    fields.update(
        src_vocab_size=tok.src.get_piece_size(), tgt_vocab_size=tok.tgt.get_piece_size(),
        share_embeddings=tok.src is tok.tgt, max_positions=max(512, cfg.max_len + 1),
    )
    fields.update(overrides)
    return from_dict(ModelConfig, fields)


class Trainer:
    """Owns the model, optimizer and position of one training run in ``cfg.out``."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, data: PreparedData, progress: bool = True) -> None:
        self.cfg, self.model_cfg, self.data = cfg, model_cfg, data
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.model = Seq2SeqTransformer(model_cfg)
        self.opt = make_optimizer(self.model, cfg)
        self.state = ckpt.TrainState()
        self.progress = progress
        self.use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported())
        self.lengths = [(len(s), len(t) + 1) for s, t in data.train]
        self.valid_examples = encode_pairs(data.tokenizer, data.valid, cfg.max_len) if data.valid else []
        self.stop_signal: int | None = None
        self._bad_in_row = 0
        self._batches: tuple[int, list[list[int]]] = (-1, [])

    def autocast(self):
        if not self.use_bf16:
            return nullcontext()
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def resume(self) -> bool:
        found = ckpt.load_latest(self.ckpt_dir)
        if found is None:
            return False
        path, tensors, meta = found
        self.state = ckpt.restore(self.model, self.opt, tensors, meta, str(path))
        log.info("resumed from %s (step %d)", path, self.state.step)
        return True

    def epoch_batches(self) -> list[list[int]]:
        """This epoch's batches (a pure function of seed and epoch, computed once per epoch)."""
        if self._batches[0] != self.state.epoch:
            self._batches = (self.state.epoch, bucket_batches(self.lengths, self.cfg.max_tokens, self.cfg.seed,
                                                              self.state.epoch))
        return self._batches[1]

    def next_group(self) -> list[Batch]:
        """The next ``update_freq`` batches, advancing epochs as needed."""
        group = []
        while len(group) < self.cfg.update_freq:
            batches = self.epoch_batches()
            if self.state.batch_in_epoch >= len(batches):
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                continue
            idx = batches[self.state.batch_in_epoch]
            self.state.batch_in_epoch += 1
            mc = self.model_cfg
            group.append(collate([self.data.train[i] for i in idx], mc.pad_id, mc.decoder_start_id, mc.eos_id))
        return group

    def train_step(self, group: list[Batch]) -> dict[str, float]:
        """One optimizer update over ``group``; the loss is normalised by its target tokens."""
        self.model.train()
        lr = inverse_sqrt_lr(self.state.step + 1, self.cfg.lr, self.cfg.warmup_steps)
        for g in self.opt.param_groups:
            g["lr"] = lr
        n_tokens = sum(b.n_tgt_tokens for b in group)
        total_loss = total_nll = 0.0
        self.opt.zero_grad(set_to_none=True)
        for batch in group:
            with self.autocast():
                loss, nll, _ = batch_loss(self.model, batch, self.cfg.label_smoothing)
            (loss / n_tokens).backward()
            total_loss += float(loss.detach())
            total_nll += float(nll)
        if not math.isfinite(total_loss):
            return self._skip_step()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or float("inf"))
        if not torch.isfinite(gnorm):
            return self._skip_step()
        self._bad_in_row = 0
        self.opt.step()
        self.state.step += 1
        src_tokens = sum(b.n_src_tokens for b in group)
        return {"loss": total_loss / n_tokens, "nll": total_nll / n_tokens, "lr": lr,
                "tokens": n_tokens + src_tokens, "gnorm": float(gnorm)}

    def _skip_step(self) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        self.state.skipped_steps += 1
        self._bad_in_row += 1
        if self._bad_in_row >= MAX_BAD_STEPS:
            raise SeqformerError(
                f"{MAX_BAD_STEPS} updates in a row had a NaN/inf loss or gradient: lower --lr "
                f"(now {self.cfg.lr}) or train with --precision fp32")
        return {}

    def done(self) -> bool:
        c, s = self.cfg, self.state
        if c.max_steps and s.step >= c.max_steps:
            return True
        if c.epochs and s.epoch >= c.epochs:
            return True
        if c.max_minutes and s.elapsed_s >= c.max_minutes * 60:
            return True
        if c.patience and s.bad_validations >= c.patience:
            log.info("early stop: no validation improvement in %d checks", c.patience)
            return True
        return self.stop_signal is not None

    def save(self) -> None:
        ckpt.save_checkpoint(self.ckpt_dir, self.model, self.opt, self.state)
        ckpt.prune(self.ckpt_dir, self.cfg.keep_last)

    def write_model(self) -> None:
        """Write the current weights as the directory's model (best so far, or last without validation)."""
        save_weights(self.out / "model.safetensors", self.model)
        info = {"train_config": to_dict(self.cfg), "step": self.state.step, "epoch": self.state.epoch,
                "elapsed_s": round(self.state.elapsed_s, 1), "best_valid": self.state.best_metric,
                "precision": "bf16" if self.use_bf16 else "fp32", "torch": torch.__version__}
        atomic_write_text(self.out / "training.json", json.dumps(info, indent=2) + "\n")

    def run_validation(self) -> dict[str, float]:
        metrics = validate(self.model, self.data.tokenizer, self.valid_examples, self.data.valid, self.cfg)
        metric = metrics.get("bleu", -metrics["valid_nll"])
        s = self.state
        if s.best_metric is None or metric > s.best_metric:
            s.best_metric, s.bad_validations = metric, 0
            self.write_model()
        else:
            s.bad_validations += 1
        return metrics

    def log_line(self, record: dict[str, Any]) -> None:
        with open(self.out / "train_log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def fit(self) -> None:
        cfg = self.cfg
        bar = tqdm(total=cfg.max_steps or None, initial=self.state.step, disable=not self.progress,
                   dynamic_ncols=True, unit="step")
        window_tokens, window_start = 0, time.perf_counter()
        last_tick = time.perf_counter()
        while not self.done():
            stats = self.train_step(self.next_group())
            now = time.perf_counter()
            self.state.elapsed_s += now - last_tick
            last_tick = now
            if not stats:
                continue
            window_tokens += stats["tokens"]
            step = self.state.step
            if step % cfg.log_every == 0:
                tps = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                self.log_line({"step": step, "epoch": self.state.epoch, **{k: round(v, 6) for k, v in stats.items()},
                               "tok_per_s": round(tps), "elapsed_s": round(self.state.elapsed_s, 1)})
                bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}", tok_s=f"{tps:.0f}")
            bar.update(1)
            if self.valid_examples and step % cfg.valid_every == 0:
                metrics = self.run_validation()
                self.log_line({"step": step, **metrics})
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
            if step % cfg.save_every == 0:
                self.save()
            last_tick = time.perf_counter()
        bar.close()
        self.finish()

    def finish(self) -> None:
        self.save()
        if self.stop_signal is not None:
            log.warning("stopped by signal %d at step %d; continue with --resume", self.stop_signal, self.state.step)
            return
        if self.valid_examples:
            metrics = self.run_validation()
            self.log_line({"step": self.state.step, "final": True, **metrics})
        else:
            self.write_model()


def _existing_model_config(out: Path) -> ModelConfig | None:
    path = out / "config.json"
    if not path.is_file():
        return None
    return from_dict(ModelConfig, read_json(path)["model"])


def train(cfg: TrainConfig, model_overrides: dict[str, Any] | None = None, resume: bool = False,
          progress: bool = True) -> Path:
    """Train a model into ``cfg.out`` (a model directory); returns its path."""
    if not cfg.out:
        raise ConfigError("an output directory is required (--out)")
    if not (cfg.max_steps or cfg.epochs or cfg.max_minutes):
        cfg = replace(cfg, epochs=10)
    out = Path(cfg.out)
    _prepare_out(out, resume)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = prepare(cfg, out)
    model_cfg = (_existing_model_config(out) if resume else None) or build_model_config(cfg, data, model_overrides or {})
    write_config(out, model_cfg, data.spm_files[0], data.spm_files[1], cfg.src_lang, cfg.tgt_lang)
    trainer = Trainer(cfg, model_cfg, data, progress)
    if resume and not trainer.resume():
        log.info("no checkpoint in %s: starting from scratch", trainer.ckpt_dir)
    with _signals_saved(trainer):
        trainer.fit()
    return out


def _prepare_out(out: Path, resume: bool) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{out}: output directory is not writable ({err.strerror})") from None
    if not resume and ckpt.list_checkpoints(out / "checkpoints"):
        raise ConfigError(f"{out} already holds checkpoints: pass --resume to continue, or choose a new --out")


class _signals_saved:
    """On SIGINT/SIGTERM, finish the current step, save a checkpoint and return."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:  # noqa: ARG002
        self.trainer.stop_signal = signum

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
