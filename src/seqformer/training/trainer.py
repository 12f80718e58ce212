"""The training loop: token batches, warmup + inverse-sqrt Adam, label smoothing, mixed
precision, validation (loss + BLEU), atomic checkpoints and exact resume, on one process
or several (``torchrun``; see :mod:`seqformer.training.distributed`)."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from seqformer.config import INIT_FIELDS, PRESETS, ModelConfig, TrainConfig, from_dict, off_default, read_config, to_dict
from seqformer.data.batching import Batch, bucket_batches, collate, torch_seed
from seqformer.errors import ConfigError, DataError, ModelDirError, SeqformerError, TrainingStopped
from seqformer.io import (
    ModelDir,
    atomic_write_text,
    errors_name,
    import_state,
    load_weights,
    read_model_dir,
    save_weights,
    write_config,
)
from seqformer.model.transformer import Seq2SeqTransformer
from seqformer.threads import set_threads
from seqformer.training import checkpoint as ckpt
from seqformer.training import distributed
from seqformer.training.amp import Amp, bf16_supported
from seqformer.training.data import PreparedData, encode_pairs, prepare
from seqformer.training.distributed import Dist, shard
from seqformer.training.optim import apply_recipe, batch_loss, make_optimizer, scheduled_lr, time_cooldown_share
from seqformer.training.rundir import check_space, prepare_out, release
from seqformer.training.runlog import RunLog
from seqformer.training.validate import validate

__all__ = ["Trainer", "bf16_supported", "build_model_config", "train"]
DATA_ORDER_FIELDS = ("train", "max_len", "max_tokens", "update_freq", "seed")  # what the batches depend on
# what the updates from here on depend on (a resume without the run's --config changed them unsaid)
SCHEDULE_FIELDS = ("lr", "warmup_steps", "cooldown_steps", "cooldown_minutes", "label_smoothing", "clip_norm", "precision")
STOP_FIELDS = ("max_steps", "epochs", "max_minutes")  # raised on purpose to extend a run: said, not warned
VALIDATION_FIELDS = ("valid", "valid_bleu_lines", "valid_beam_size")  # what the best model was chosen by
RECIPE_CHANGES = (  # fields, how loudly a change is said, what it means
    (DATA_ORDER_FIELDS, logging.WARNING, ": the batches from here on differ from the original run's (not an exact resume)"),
    (SCHEDULE_FIELDS, logging.WARNING, ": the run continues with the new value (give the run's --config again to keep "
                                       "its recipe)"),
    (STOP_FIELDS, logging.INFO, ""),
)
log = logging.getLogger("seqformer")
MAX_BAD_STEPS = 20


def build_model_config(cfg: TrainConfig, data: PreparedData, overrides: dict[str, Any]) -> ModelConfig:
    tok = data.tokenizer
    sizes = {"src_vocab_size": tok.src.get_piece_size(), "tgt_vocab_size": tok.tgt.get_piece_size()}
    resized = next((k for k, n in sizes.items() if overrides.get(k, n) != n), None)
    if resized:  # embeddings of another size than the tokenizer's piece count: an IndexError or unused rows
        raise ConfigError(f"{resized}={overrides[resized]}: a new model's vocabulary sizes are its tokenizer's piece "
                          f"counts (here src {sizes['src_vocab_size']}, tgt {sizes['tgt_vocab_size']}), not a "
                          "setting: --vocab-size sets a new tokenizer's, or leave them out")
    return _model_config(cfg, *sizes.values(), tok.src is tok.tgt, overrides)


def _model_config(cfg: TrainConfig, src_vocab: int, tgt_vocab: int, share: bool,
                  overrides: dict[str, Any]) -> ModelConfig:
    """The recipe's preset with the tokenizer's sizes, then the recipe's own model fields."""
    moved = next((k for k in ("pad_id", "unk_id", "bos_id", "eos_id") if overrides.get(k, getattr(ModelConfig, k))
                  != getattr(ModelConfig, k)), None)
    if moved:  # the corpus is encoded with the tokenizer's ids: another id here would train on the wrong pieces
        raise ConfigError(f"{moved}={overrides[moved]}: a new model's special ids are those of its SentencePiece "
                          "tokenizer (pad_id 0, unk_id 1, bos_id 2, eos_id 3), not a setting")
    fields = dict(PRESETS[cfg.preset])
    fields.update(src_vocab_size=src_vocab, tgt_vocab_size=tgt_vocab, share_embeddings=share,
                  max_positions=max(512, cfg.max_len + 1))
    fields.update(overrides)
    if fields["share_embeddings"] and not share:  # equal sizes pass ModelConfig, but piece i is two subwords
        raise ConfigError("share_embeddings needs one tokenizer for both sides (a joint vocabulary): with separate "
                          "source and target tokenizers it would tie unrelated pieces; drop --share-embeddings")
    return from_dict(ModelConfig, fields)


def _clash(have: ModelConfig, overrides: dict[str, Any]) -> str | None:
    """The first model field ``overrides`` asks to differ from ``have`` (how fresh weights would be drawn aside:
    existing weights replace them), or None."""
    return next((name for name, value in overrides.items()
                 if name not in INIT_FIELDS and getattr(have, name, value) != value), None)


class LossModule(nn.Module):
    """The model with its training loss as ``forward``, so DistributedDataParallel can wrap it."""

    def __init__(self, model: Seq2SeqTransformer, label_smoothing: float) -> None:
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        loss, nll, _ = batch_loss(self.model, batch, self.label_smoothing)
        return loss, nll


class Group(NamedTuple):
    """One update: this rank's batches and the token counts of the global batch (all ranks)."""

    batches: list[Batch]
    n_tgt: int
    n_src: int


def _to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    move = {name: getattr(batch, name).to(device, non_blocking=True) for name in ("src", "src_pad_mask", "tgt_in", "tgt_out")}
    return replace(batch, **move)


def _rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


class Trainer:
    """Owns the model, optimizer and position of one training run in ``cfg.out``."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, data: PreparedData, progress: bool = True,
                 dist: Dist | None = None) -> None:
        self.cfg, self.model_cfg, self.data = cfg, model_cfg, data
        self.dist = dist or Dist()
        self.device = self.dist.device
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.model = Seq2SeqTransformer(model_cfg).to(self.device)
        self.opt = make_optimizer(self.model, cfg)
        self.amp = Amp(cfg.precision, self.device)
        self.loss_fn = self.dist.wrap(LossModule(self.model, cfg.label_smoothing))
        if self.dist.rank:  # same initial weights everywhere, different dropout masks per rank
            torch.manual_seed(torch_seed(cfg.seed + self.dist.rank))
        self.state = ckpt.TrainState()
        self.progress = progress and self.dist.is_main
        self.runlog = RunLog(self.out, enabled=self.dist.is_main)
        self.lengths = [(len(s), len(t) + 1) for s, t in data.train]
        # Only rank 0 validates and writes the model directory.
        valid = encode_pairs(data.tokenizer, data.valid, cfg.max_len, model_cfg.eos_id) if data.valid else []
        if data.valid and not valid:  # said on every rank, so that none waits for the others at a collective
            raise DataError(f"{cfg.valid}: no sentence pair is shorter than max_len={cfg.max_len} subwords: "
                            "nothing to validate on")
        self.valid_examples = valid if self.dist.is_main else []
        self.stop_signal: int | None = None
        self._bad_in_row = 0
        self._warned_warmup = False  # said once per run: a cool-down by time began inside the warmup
        self._batches: tuple[int, list[list[int]]] = (-1, [])
        self._window = (0, time.perf_counter())  # tokens since the last log line, and when it was written
        self._saved_step = -1  # the step the newest checkpoint holds

    def resume(self) -> bool:
        found = ckpt.load_latest(self.ckpt_dir)
        if found is None:
            if ckpt.list_checkpoints(self.ckpt_dir):
                raise ModelDirError(f"{self.ckpt_dir}: no checkpoint verifies (all are damaged); "
                                    "move them away to start afresh")
            return False
        path, tensors, meta = found
        self.state = ckpt.restore(self.model, self.opt, tensors, meta, str(path), self.dist.rank)
        self.amp.load_state_tensors(tensors)
        self._saved_step = self.state.step
        log.info("resumed from %s (step %d)", path, self.state.step)
        if self.dist.is_main:
            for moved in ckpt.set_aside_newer(self.ckpt_dir, self.state.step):
                log.warning("set aside the damaged checkpoint as %s", moved)
        for change in apply_recipe(self.opt, self.cfg):
            log.warning("--resume: the recipe changes the optimizer's %s", change)
        saved, now = json.loads(meta.get("train_config", "{}")), to_dict(self.cfg)
        _report_recipe_changes(saved, now)
        self._warn_if_time_cooldown_moved(saved)
        self._restart_best_choice_if_incomparable(saved, now)
        if "preset" in saved and saved["preset"] != now["preset"]:
            log.warning("--resume: the run was made with preset %r, the command says %r: ignored, a resumed run "
                        "keeps its own model (%s/config.json)", saved["preset"], now["preset"], self.cfg.out)
        saved_world = 1 + sum(name.startswith("rng.torch.") for name in tensors)
        if saved_world != self.dist.world_size:
            log.warning("the checkpoint was written by %d process(es), this run has %d: the global batch "
                        "changes by that factor (adjust --update-freq to keep it)", saved_world, self.dist.world_size)
        return True

    def _warn_if_time_cooldown_moved(self, saved: dict[str, Any]) -> None:
        """A resume that changes where a cool-down by time ends (max_minutes, cooldown_minutes) moves the rate at
        once, with no re-warm: say from what to what, which an extended run's jump back up to full rate needs."""
        c, s = self.cfg, self.state
        before = {k: saved.get(k, 0.0) for k in ("max_minutes", "cooldown_minutes")}
        if not (c.cooldown_minutes or before["cooldown_minutes"]) or before == {k: getattr(c, k) for k in before}:
            return
        # the old schedule whole (a valid config when it ran), not old time fields over new step fields
        steps = {k: saved.get(k, getattr(c, k)) for k in ("lr", "warmup_steps", "max_steps", "cooldown_steps")}
        old = scheduled_lr(s.step + 1, replace(c, **before, **steps), s.elapsed_s)
        log.warning("--resume: the cool-down by time now ends at max_minutes=%g (over its last %g minutes), it "
                    "ended at %g (over %g): the rate at update %d goes from %.3g to %.3g", c.max_minutes,
                    c.cooldown_minutes, before["max_minutes"], before["cooldown_minutes"], s.step + 1, old,
                    scheduled_lr(s.step + 1, c, s.elapsed_s))

    def _restart_best_choice_if_incomparable(self, saved: dict[str, Any], now: dict[str, Any]) -> None:
        """A changed validation set, BLEU sample or (with BLEU) beam makes new scores incomparable with the
        best model's: choose afresh rather than keep (or lose) the best model on that comparison."""
        changed = [n for n in VALIDATION_FIELDS if n in saved and _differs(n, saved[n], now[n])
                   and (n != "valid_beam_size" or now["valid_bleu_lines"] > 0)]  # the beam only serves BLEU
        if changed and self.state.best_metric is not None:
            log.warning("--resume: %s changed: validation scores from here on do not compare with the best "
                        "model's: choosing afresh", ", ".join(changed))
            self.state.best_metric = self.state.best_nll = None
            self.state.bad_validations, self.state.best_kind = 0, ""

    def epoch_batches(self) -> list[list[int]]:
        """This epoch's batches (a pure function of seed and epoch, computed once per epoch)."""
        if self._batches[0] != self.state.epoch:
            self._batches = (self.state.epoch, bucket_batches(self.lengths, self.cfg.max_tokens, self.cfg.seed,
                                                              self.state.epoch))
        return self._batches[1]

    def next_indices(self) -> list[list[int]]:
        """The example indices of the next ``update_freq * world_size`` batches, advancing epochs as needed.

        Every rank walks the same batches, so the position in the epoch is the same everywhere. The last
        epoch of an ``epochs`` run ends its last update with its last batch (a shorter group), rather than
        filling the group from a next pass over the data; with several ranks, with as few of the next pass's
        batches as it takes to give every rank the same number.
        """
        group: list[list[int]] = []
        ranks = self.dist.world_size
        past_the_end = False  # the group reached into the pass after the last epoch: end it once the ranks can share it
        while len(group) < self.cfg.update_freq * ranks and not (past_the_end and len(group) % ranks == 0):
            batches = self.epoch_batches()
            if self.state.batch_in_epoch >= len(batches):
                if group and self.cfg.epochs and self.state.epoch + 1 >= self.cfg.epochs:
                    if len(group) % ranks == 0:
                        break  # the run's last update: done() sees the last epoch at its end
                    past_the_end = True
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                continue
            group.append(batches[self.state.batch_in_epoch])
            self.state.batch_in_epoch += 1
        return group

    def next_group(self) -> Group:
        """This rank's share of the next global batch, collated."""
        group = self.next_indices()
        mc = self.model_cfg
        mine = [collate([self.data.train[i] for i in idx], mc.pad_id, mc.decoder_start_id, mc.eos_id)
                for idx in shard(group, self.dist)]
        return Group(mine, sum(self.lengths[i][1] for idx in group for i in idx),
                     sum(self.lengths[i][0] for idx in group for i in idx))

    def train_step(self, group: Group) -> dict[str, float]:
        """One optimizer update; the loss is normalised by the global batch's target tokens."""
        self.model.train()
        elapsed = self._clock()
        lr = scheduled_lr(self.state.step + 1, self.cfg, elapsed)
        self._warn_if_cooling_in_warmup(self.state.step + 1, elapsed)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        norm = group.n_tgt / self.dist.world_size  # DDP averages gradients over ranks: undo its 1/world_size
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # summed loss, summed NLL
        for i, batch in enumerate(group.batches):
            with self.dist.no_sync(self.loss_fn, skip=i < len(group.batches) - 1):
                with self.amp.autocast():
                    loss, nll = self.loss_fn(_to_device(batch, self.device))
                self.amp.scale(loss / norm).backward()
            totals += torch.stack([loss.detach().double(), nll.double()])
        total_loss, total_nll = self.dist.all_sum(totals).tolist()
        if not math.isfinite(total_loss):
            return self._skip_step(unscaled=False)
        self.amp.unscale(self.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm or float("inf"))
        if not torch.isfinite(gnorm):
            return self._skip_step(unscaled=True)
        self._bad_in_row = 0
        self.amp.step(self.opt)
        self.state.step += 1
        return {"loss": total_loss / group.n_tgt, "nll": total_nll / group.n_tgt, "lr": lr,
                "tokens": group.n_tgt + group.n_src, "gnorm": float(gnorm)}

    def _clock(self) -> float:
        """The training time a cool-down by time follows: rank 0's, on every rank (another rank's clock also counts
        its waits while rank 0 validates or saves), so that all ranks update with the same rate."""
        if not (self.cfg.cooldown_minutes and self.dist.active):
            return self.state.elapsed_s
        mine = torch.tensor([self.state.elapsed_s if self.dist.is_main else 0.0], dtype=torch.float64, device=self.device)
        return float(self.dist.all_sum(mine)[0])

    def _skip_step(self, unscaled: bool) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        self.amp.skipped(unscaled)
        self.state.skipped_steps += 1
        self._bad_in_row += 1
        log.warning("skipped an update with a NaN/inf loss or gradient (%d in a row)", self._bad_in_row)
        if self._bad_in_row >= MAX_BAD_STEPS:
            raise SeqformerError(
                f"{MAX_BAD_STEPS} updates in a row had a NaN/inf loss or gradient: lower --lr "
                f"(now {self.cfg.lr}) or train with --precision fp32 (now {self.amp.name})")
        return {}

    def done(self) -> bool:
        c, s = self.cfg, self.state
        if c.max_steps and s.step >= c.max_steps:
            self._warn_if_cooldown_cut("max_steps")
            return True
        if c.epochs and s.epoch + (s.batch_in_epoch >= len(self.epoch_batches())) >= c.epochs:
            self._warn_if_cooldown_cut("epochs")
            return True  # the last epoch ends with its last batch, not when the next one is asked for
        # The time limit is rank 0's clock alone (the vote in fit() tells the others): another rank's also counts
        # its wait while rank 0 validates or writes a checkpoint, and would end the run early by that much.
        if c.max_minutes and self.dist.is_main and s.elapsed_s >= c.max_minutes * 60:
            self._warn_if_cooldown_cut("max_minutes")
            return True
        if c.patience and s.bad_validations >= c.patience:
            log.info("early stop: no validation improvement in %d checks", c.patience)
            return True
        return self.stop_signal is not None

    def _warn_if_cooldown_cut(self, limit: str) -> None:
        """A run stopped by ``limit`` before its cool-down (by updates or by time) ended: say so, since the model
        then ends at more than the rate the cool-down was to bring it down to."""
        c, s = self.cfg, self.state
        if not self.dist.is_main:
            return
        if c.cooldown_steps and s.step < c.max_steps:
            when, span = f"at update {s.step} of max_steps={c.max_steps}", f"{c.cooldown_steps} updates"
            began, lr = s.step > c.max_steps - c.cooldown_steps, scheduled_lr(s.step, c)
        elif c.cooldown_minutes and s.elapsed_s < c.max_minutes * 60:
            when = f"{c.max_minutes - s.elapsed_s / 60:.2f} minutes before max_minutes={c.max_minutes:g}"
            span = f"{c.cooldown_minutes:g} minutes"
            began, lr = time_cooldown_share(c, s.elapsed_s) < 1, scheduled_lr(s.step, c, s.elapsed_s)
        else:
            return
        log.warning("--%s ended the run %s: the cool-down over the last %s %s (lr %.3g now)", limit.replace("_", "-"),
                    when, span, "did not run to its end" if began else "never began", lr)

    def _warn_if_cooling_in_warmup(self, step: int, elapsed_s: float) -> None:
        """Once per run: a cool-down by time that begins inside the warmup scales a rate still rising, so the
        run never reaches its peak rate (the warmup or max_minutes is too long for this machine's speed)."""
        c = self.cfg
        cooling = c.cooldown_minutes and time_cooldown_share(c, elapsed_s) < 1
        if cooling and step <= c.warmup_steps and not self._warned_warmup and self.dist.is_main:
            self._warned_warmup = True
            log.warning("the cool-down by time began at update %d, inside the %d warmup updates: the rate never "
                        "reaches lr=%g (fewer warmup_steps, a shorter cooldown_minutes or a longer max_minutes "
                        "avoid it)", step, c.warmup_steps, c.lr)

    def save(self) -> None:
        """Write a checkpoint: every rank contributes its RNG state, rank 0 writes the file."""
        rng = self.dist.gather(_rng_state(self.device))
        self._saved_step = self.state.step
        if not self.dist.is_main:
            return
        extra = {f"rng.torch.{r}": cpu for r, (cpu, _) in enumerate(rng) if r > 0}
        extra.update({f"rng.cuda.{r}": gpu for r, (_, gpu) in enumerate(rng) if gpu is not None})
        extra.update(self.amp.state_tensors())
        ckpt.save_checkpoint(self.ckpt_dir, self.model, self.opt, self.state, extra, config=to_dict(self.cfg))
        ckpt.prune(self.ckpt_dir, self.cfg.keep_last, ckpt.spacing(self.cfg.save_every))  # as `average` picks them

    def write_model(self) -> None:
        """Write the current weights as the directory's model (best so far, or last without validation)."""
        if not self.dist.is_main:
            return
        info = {"train_config": to_dict(self.cfg), "step": self.state.step, "epoch": self.state.epoch,
                "elapsed_s": round(self.state.elapsed_s, 1), "best_valid": self.state.best_metric,
                "precision": self.amp.name, "world_size": self.dist.world_size, "torch": torch.__version__}
        try:
            save_weights(self.out / "model.safetensors", self.model)
            atomic_write_text(self.out / "training.json", json.dumps(info, indent=2) + "\n")
        except OSError as err:
            raise SeqformerError(f"{self.out}: cannot write the model ({err.strerror or err})") from None

    def run_validation(self) -> dict[str, float]:
        metrics = validate(self.model, self.data.tokenizer, self.valid_examples, self.data.valid, self.cfg)
        self.state.validated_step = self.state.step
        metric, nll = metrics.get("bleu", -metrics["valid_nll"]), metrics["valid_nll"]
        kind = "bleu" if "bleu" in metrics else "nll"
        s = self.state
        if s.best_kind and s.best_kind != kind:  # valid_bleu_lines changed on --resume: BLEU and -NLL don't compare
            log.warning("validation now scores %s, the best model so far was chosen by %s: choosing afresh",
                        kind, s.best_kind)
            s.best_metric = s.best_nll = None
        s.best_kind = kind
        # Equal BLEU (early checks all at 0.0, say): the lower dev NLL is the better model.
        tie_won = metric == s.best_metric and (s.best_nll is None or nll < s.best_nll)
        if s.best_metric is None or metric > s.best_metric or tie_won:
            s.best_metric, s.best_nll, s.bad_validations = metric, nll, 0
            self.write_model()
        else:
            s.bad_validations += 1
        return metrics

    def fit(self) -> None:
        self.runlog.truncate(self.state.step)  # drop records a killed run wrote after its last checkpoint
        bar = tqdm(total=self.cfg.max_steps or None, initial=self.state.step, disable=not self.progress,
                   dynamic_ncols=True, unit="step")
        last_tick = time.perf_counter()
        self._window = (0, last_tick)
        try:
            while not self.dist.any(self.done()):
                stats = self.train_step(self.next_group())
                now = time.perf_counter()
                self.state.elapsed_s += now - last_tick
                if stats:
                    self._after_step(stats, bar, now)
                last_tick = time.perf_counter()
                tokens, start = self._window  # logging, validation and saving are not training time either
                self._window = (tokens, start + (last_tick - now))
            bar.close()
            self.finish()
        finally:
            self.runlog.close()

    def _after_step(self, stats: dict[str, float], bar: tqdm, now: float) -> None:
        """Log, validate and checkpoint as the schedule says."""
        cfg, step = self.cfg, self.state.step
        tokens, start = self._window
        self._window = (tokens + int(stats["tokens"]), start)
        if step % cfg.log_every == 0:
            tps = self._window[0] / max(now - start, 1e-9)
            self._window = (0, now)
            rounded = {k: v if k == "lr" else round(v, 6) for k, v in stats.items()}  # lr: all its digits
            self.runlog.write({"step": step, "epoch": self.state.epoch, **rounded,
                               "tok_per_s": round(tps), "elapsed_s": round(self.state.elapsed_s, 1)})
            bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}", tok_s=f"{tps:.0f}")
        bar.update(1)
        if self.valid_examples and step % cfg.valid_every == 0:
            metrics = self.run_validation()
            self.runlog.write({"step": step, **metrics})
            bar.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        if step % cfg.save_every == 0:
            self.save()

    def finish(self) -> None:
        """Validate the final weights (unless the loop just did, or a signal stopped the run), then save, so
        the last checkpoint holds that validation's best score and patience count for a later --resume."""
        step = self.state.step
        validate_now = self.stop_signal is None and self.valid_examples and self.state.validated_step != step
        if validate_now:
            metrics = self.run_validation()
            self.runlog.write({"step": step, "final": True, **metrics})
        # Only rank 0 validates, so the decision is agreed on by all ranks: save() is a collective.
        if self.dist.any(bool(validate_now) or self._saved_step != step):
            self.save()
        if self.stop_signal is None and not self.valid_examples:
            self.write_model()


def _report_recipe_changes(saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Name each recipe field the resuming command changes, saying what the change means."""
    for fields, level, meaning in RECIPE_CHANGES:
        for name in fields:
            if name in saved and _differs(name, saved[name], now[name]):
                log.log(level, "--resume: %s was %r, now %r%s", name, saved[name], now[name], meaning)


def _differs(name: str, saved: Any, now: Any) -> bool:
    """Whether a recipe field changed; paths are compared as the files they name."""
    if name in ("train", "valid") and saved and now:  # "data/train.tsv" and its absolute path: one file
        return os.path.realpath(saved) != os.path.realpath(now)
    return saved != now


def _existing_model_config(out: Path) -> ModelConfig | None:
    path = out / "config.json"
    if not path.is_file():
        return None
    config = read_config(out)
    with errors_name(path):
        return from_dict(ModelConfig, config["model"])


def _existing_tokenizer(out: Path, cfg: TrainConfig, model_cfg: ModelConfig | None) -> tuple[dict, int] | None:
    """A resumed run's tokenizer section (and end-of-sentence id), kept as the run made it: a new one (a
    --tokenizer, --vocab-size or --joint-vocab missing from the resuming command) would give its checkpoint's
    weights other ids. A --tokenizer that names other files than the run's is an error, not ignored."""
    if model_cfg is None:
        return None
    config = read_config(out)
    with errors_name(out / "config.json"):
        section = config["tokenizer"]
        names = section["src"], section["tgt"]
    files = cfg.tokenizer_files
    if files and (files[0].name, files[-1].name) != names:
        raise ConfigError(f"--resume: {out} was trained with the tokenizer {names[0]}"
                          f"{'' if names[0] == names[1] else ',' + names[1]}, the command gives {cfg.tokenizer}: "
                          "drop --tokenizer, or start a new --out")
    return section, model_cfg.eos_id


def _check_unchanged(existing: ModelConfig, overrides: dict[str, Any], out: Path) -> None:
    """--resume continues the run's own model: a model flag that asks for another one is an error, not ignored."""
    name = _clash(existing, overrides)
    if name is not None:
        raise ConfigError(f"--resume: {out} trains {name}={getattr(existing, name)!r}, the command asks for "
                          f"{overrides[name]!r}: drop the flag, or start a new --out")


def _same_file(a: Path, b: Path) -> bool:
    """The same file, or one with the same bytes (a tokenizer is known by its content, not its name)."""
    try:
        return a.resolve() == b.resolve() or a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _tokenizer_options_ignored(cfg: TrainConfig) -> list[str]:
    """The options for training a new tokenizer set away from their defaults when one is given (--tokenizer, or
    --init-from's): they have no effect."""
    if not cfg.tokenizer:
        return []
    names = off_default(cfg, TrainConfig, ("vocab_size", "joint_vocab", "spm_model_type", "spm_sample_lines"))
    return [f"{k}={getattr(cfg, k)!r}" for k in names]


def _init_model_dir(cfg: TrainConfig, overrides: dict[str, Any]) -> tuple[TrainConfig, ModelDir | None]:
    """With ``init_from``, the recipe takes that model's tokenizer files and architecture."""
    if not cfg.init_from:
        return cfg, None
    mdir = read_model_dir(Path(cfg.init_from))
    name = _clash(mdir.model_cfg, overrides)
    if name is not None:
        raise ConfigError(f"--init-from {mdir.path} has {name}={getattr(mdir.model_cfg, name)!r}, "
                          f"the recipe asks for {overrides[name]!r}: the architecture comes from the model directory")
    tok = mdir.meta["tokenizer"]
    files = [str(mdir.path / tok["src"]), str(mdir.path / tok["tgt"])]
    given = cfg.tokenizer_files * (3 - len(cfg.tokenizer_files))  # a joint model stands for both sides
    if cfg.tokenizer and not all(_same_file(a, Path(b)) for a, b in zip(given, files)):
        raise ConfigError(f"--init-from {mdir.path} brings its own tokenizer: drop --tokenizer {cfg.tokenizer}")
    return replace(cfg, tokenizer=files[0] if files[0] == files[1] else ",".join(files)), mdir


def train(cfg: TrainConfig, model_overrides: dict[str, Any] | None = None, resume: bool = False,
          progress: bool = True) -> Path:
    """Train a model into ``cfg.out`` (a model directory); returns its path.

    Under ``torchrun`` each process calls this; rank 0 prepares the directory and tokenizer first.
    Raises :class:`TrainingStopped` when SIGINT/SIGTERM stopped the run (after saving a checkpoint).
    """
    if not cfg.out:
        raise ConfigError("an output directory is required (--out)")
    if cfg.patience and not cfg.valid:  # it counts validations without improvement: none would come (checked here,
        # on the whole config: a recipe may leave --valid to the command line)
        raise ConfigError(f"patience={cfg.patience} stops training when validation stops improving: it needs --valid")
    if not (cfg.max_steps or cfg.epochs or cfg.max_minutes):
        cfg = replace(cfg, epochs=10)
    d = distributed.setup()
    if not d.is_main:
        log.setLevel(logging.WARNING)
    threads = torch.get_num_threads()  # --threads is the run's: the caller's own setting comes back after it
    try:
        trainer = _make_trainer(cfg, model_overrides or {}, resume, progress, d)
        if resume and not trainer.resume():
            log.info("no checkpoint in %s: starting from scratch", trainer.ckpt_dir)
        with _signals_saved(trainer):
            trainer.fit()
        # Rank 0 may still be writing the model; a rank that tears down gloo before its peers can abort.
        d.barrier()
    finally:
        distributed.shutdown(d)
        release(Path(cfg.out))
        torch.set_num_threads(threads)
    if trainer.stop_signal is not None:
        raise TrainingStopped(trainer.stop_signal, trainer.state.step)
    return Path(cfg.out)


def _make_trainer(cfg: TrainConfig, overrides: dict[str, Any], resume: bool, progress: bool, d: Dist) -> Trainer:
    out = Path(cfg.out)
    set_threads(cfg.threads, "threads")
    torch.manual_seed(cfg.seed)

    cfg, init = _init_model_dir(cfg, overrides)
    init_cfg = init.model_cfg if init else None
    ignored = _tokenizer_options_ignored(cfg)
    if ignored and d.is_main:
        log.warning("%s ignored: the tokenizer comes from %s", ", ".join(ignored),
                    f"--init-from {cfg.init_from}" if init else f"--tokenizer {cfg.tokenizer}")

    if init is None:  # a bad model flag fails now, not after reading the corpus and training the tokenizer
        joint = len({f.resolve() for f in cfg.tokenizer_files}) == 1 if cfg.tokenizer else cfg.joint_vocab
        _model_config(cfg, cfg.vocab_size, cfg.vocab_size, joint, overrides)

    def prepare_main() -> tuple[PreparedData, ModelConfig]:
        prepare_out(out, resume)
        existing = _existing_model_config(out) if resume else None
        data = prepare(cfg, out, init=init, run=_existing_tokenizer(out, cfg, existing))
        if existing is not None:
            _check_unchanged(existing, overrides, out)
        model_cfg = existing or init_cfg or build_model_config(cfg, data, overrides)
        if cfg.max_len > model_cfg.max_positions:  # a long batch would stop the run hours in
            raise ConfigError(f"max_len={cfg.max_len} subwords exceeds the model's max_positions="
                              f"{model_cfg.max_positions}: lower --max-len to {model_cfg.max_positions}")
        write_config(out, model_cfg, data.spm_files[0], data.spm_files[1], cfg.src_lang, cfg.tgt_lang,
                     tokenizer_extra=data.tokenizer_extra)
        return data, model_cfg

    prepared = d.main_first(prepare_main)
    if prepared is None:  # another rank: rank 0 has written the tokenizer and config.json
        existing = _existing_model_config(out)
        run = _existing_tokenizer(out, cfg, existing) if resume else None
        prepared = prepare(cfg, out, write=False, init=init, run=run), existing
    data, model_cfg = prepared
    if not data.train:
        raise DataError(f"{cfg.train}: no sentence pair is shorter than max_len={cfg.max_len} subwords")
    over = d.is_main and sum(max(len(src), len(tgt) + 1) > cfg.max_tokens for src, tgt in data.train)
    if over:  # on a GPU such a batch can run out of memory hours into the run
        log.warning("%d training pair(s) are longer than max_tokens=%d subwords: each makes a batch of its own, "
                    "over that budget (raise --max-tokens or lower --max-len to %d)", over, cfg.max_tokens,
                    cfg.max_tokens - 1)
    trainer = Trainer(cfg, model_cfg, data, progress, d)
    if cfg.init_from:  # a checkpoint found by --resume replaces these weights afterwards
        weights = Path(cfg.init_from) / "model.safetensors"
        import_state(trainer.model, load_weights(weights), str(weights))
    d.main_first(lambda: check_space(out, trainer.model))
    return trainer


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
