"""The optimisation recipe: Adam(0.9, 0.98, 1e-9), linear warmup then inverse-sqrt decay (optionally
ending in a linear cool-down towards zero, by updates or by time), and the label-smoothed loss computed only on
real (non-padding) target positions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqformer.config import TrainConfig
from seqformer.data.batching import Batch
from seqformer.model.transformer import Seq2SeqTransformer


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Learning rate at (1-based) ``step``: linear ramp to ``peak`` over ``warmup`` steps, then peak*sqrt(warmup/step)."""
    step = max(step, 1)
    if warmup == 0:
        return peak / math.sqrt(step)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def scheduled_lr(step: int, cfg: TrainConfig, elapsed_s: float | None = None) -> float:
    """The recipe's learning rate at (1-based) ``step``, taken after ``elapsed_s`` seconds of training
    (needed only by a cool-down by time: there, leaving it out is an error rather than the rate undecayed).

    Inverse-sqrt throughout, except over the last ``cooldown_steps`` updates before ``max_steps``, where it
    falls linearly from the inverse-sqrt value at the start of the cool-down towards zero (reaching
    1/(cooldown_steps+1) of it at ``max_steps``). Up to the start of the cool-down the two schedules are the
    same, so a run trained without one can be resumed into one.

    With ``cooldown_minutes`` the cool-down is by the clock, for a run whose length is ``max_minutes``:
    over the last M minutes the inverse-sqrt value (still falling, unlike the step cool-down's value frozen at
    its start) is scaled by the share of the M minutes still left, so the rate reaches zero when the time does,
    however many updates the machine managed by then.
    """
    if cfg.cooldown_minutes:
        if elapsed_s is None:
            raise ValueError("scheduled_lr: a cool-down by time (cooldown_minutes) needs the elapsed time")
        return inverse_sqrt_lr(step, cfg.lr, cfg.warmup_steps) * time_cooldown_share(cfg, elapsed_s)
    start = cfg.max_steps - cfg.cooldown_steps
    if not cfg.cooldown_steps or step <= start:
        return inverse_sqrt_lr(step, cfg.lr, cfg.warmup_steps)
    left = max(cfg.max_steps - step + 1, 0)  # updates left, this one included
    return inverse_sqrt_lr(start, cfg.lr, cfg.warmup_steps) * left / (cfg.cooldown_steps + 1)


def time_cooldown_share(cfg: TrainConfig, elapsed_s: float) -> float:
    """The share of a cool-down by time (``cooldown_minutes``) still ahead after ``elapsed_s`` seconds of training:
    1 until it begins, 0 once ``max_minutes`` is up."""
    left_s = cfg.max_minutes * 60 - elapsed_s
    return min(max(left_s / (cfg.cooldown_minutes * 60), 0.0), 1.0)


def _fused_ok(params: list[torch.nn.Parameter]) -> bool:
    """PyTorch's fused Adam: one kernel per parameter instead of ~8 element-wise passes over each
    (the for-loop implementation is PyTorch's default on CPU), for floating-point parameters on one
    CPU or CUDA device."""
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= {"cpu", "cuda"} and all(p.is_floating_point() for p in params)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Adam:
    params = list(model.parameters())
    kind = torch.optim.AdamW if cfg.weight_decay > 0 else torch.optim.Adam
    extra = {"weight_decay": cfg.weight_decay} if cfg.weight_decay > 0 else {}
    return kind(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=_fused_ok(params), **extra)


def apply_recipe(opt: torch.optim.Optimizer, cfg: TrainConfig) -> list[str]:
    """Set the recipe's Adam settings on a resumed optimizer (loading its state brought the checkpoint's).

    Returns the settings that changed, as "name: old -> new". Without this a changed weight decay,
    beta or epsilon on ``--resume`` was silently dropped: a run resumed without weight decay from an
    AdamW checkpoint kept decaying with the old coefficient (the loaded group also brings AdamW's
    decoupled_weight_decay flag into Adam).
    """
    want = {"betas": tuple(cfg.adam_betas), "eps": cfg.adam_eps, "weight_decay": cfg.weight_decay}
    changed = []
    for group in opt.param_groups:
        for key, value in want.items():
            old = tuple(group[key]) if key == "betas" else group[key]
            if old != value and f"{key}: {old} -> {value}" not in changed:
                changed.append(f"{key}: {old} -> {value}")
            group[key] = value
    return changed


def batch_loss(model: Seq2SeqTransformer, batch: Batch, label_smoothing: float) -> tuple[Tensor, Tensor, int]:
    """Summed label-smoothed loss, summed NLL (for reporting), and the number of target tokens.

    Logits are computed only at non-padding positions: the output projection is the
    most expensive matrix product of a small model, so padding there is pure waste.
    """
    hidden = model.decode(model.encode(batch.src, batch.src_pad_mask), batch.src_pad_mask, batch.tgt_in)  # (B, T, D)
    real = batch.tgt_out.ne(batch.pad_id)  # (B, T) True = real token
    logits = model.project(hidden[real])  # (N, V)
    labels = batch.tgt_out[real]  # (N,)
    return smoothed_loss(logits, labels, label_smoothing) + (int(labels.numel()),)


BLOCK_ELEMENTS = 1 << 19  # logits handled a block of rows at a time on CPU: 2 MB of fp32 per temporary, in cache
GPU_BLOCK_ELEMENTS = 1 << 24  # on a GPU few, large blocks (each is a few kernel launches), temporaries bounded


def _block_rows(vocab: int, device: torch.device) -> int:
    per_block = BLOCK_ELEMENTS if device.type == "cpu" else GPU_BLOCK_ELEMENTS
    return max(16, per_block // vocab)


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy with a hand-written backward, a block of rows at a time.

    Autograd's version materialises several (N, V) fp32 temporaries (the upcast logits, the log-softmax,
    its gradient, the gather and mean gradients), each a pass through memory; under bf16 autocast that
    traffic costs more than the arithmetic. Here each block of rows is upcast and reduced while it is in
    cache, and the backward recomputes the block's softmax there instead of keeping an (N, V) fp32
    log-softmax from the forward: the logits are read once each way and the gradient written once, in
    the logits' dtype. Memory: the logits stay alive until the backward and the gradient is a new
    tensor (bf16 logits: 4 bytes per logit in all, where the fp32 log-softmax kept for the backward and its
    bf16 copy took 6; fp32 logits: 8 where that took 4).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        n, vocab = logits.shape
        rows = _block_rows(vocab, logits.device)
        nll = logits.new_empty(n, dtype=torch.float32)  # (N,) -log p(label)
        uniform = torch.empty_like(nll) if eps > 0 else None  # (N,) -mean(log p) over the vocabulary
        for i in range(0, n, rows):
            lprobs = torch.log_softmax(logits[i : i + rows], dim=-1, dtype=torch.float32)  # (r, V)
            nll[i : i + rows] = -lprobs.gather(1, labels[i : i + rows, None]).squeeze(1)
            if uniform is not None:
                uniform[i : i + rows] = -lprobs.mean(dim=-1)
        nll_total = nll.sum()
        # clone: one tensor may not be both outputs of a Function
        total = (1.0 - eps) * nll_total + eps * uniform.sum() if uniform is not None else nll_total.clone()
        ctx.mark_non_differentiable(nll_total)  # the NLL is for reporting only
        ctx.save_for_backward(logits, labels)
        ctx.eps = eps
        return total, nll_total

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_nll: Tensor):  # noqa: ARG004 - non-differentiable, always zero
        logits, labels = ctx.saved_tensors
        n, vocab = logits.shape
        rows = _block_rows(vocab, logits.device)
        grad = torch.empty_like(logits)  # (N, V) in the logits' dtype
        for i in range(0, n, rows):
            block = torch.softmax(logits[i : i + rows], dim=-1, dtype=torch.float32)  # (r, V)
            if ctx.eps > 0:
                block.sub_(ctx.eps / vocab)
            block.scatter_add_(1, labels[i : i + rows, None],
                               torch.full_like(labels[i : i + rows, None], ctx.eps - 1.0, dtype=block.dtype))
            grad[i : i + rows] = block.mul_(grad_loss)  # cast to the logits' dtype on the way
        return grad, None, None


def smoothed_loss(logits: Tensor, labels: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Summed label-smoothed cross-entropy and summed NLL. logits: (N, V), labels: (N,).

    The smoothed target puts 1 - eps on the label and eps spread uniformly over the vocabulary.
    """
    loss, nll = _SmoothedCrossEntropy.apply(logits, labels, eps)
    return loss, nll.detach()
