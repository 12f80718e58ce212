"""Dropout whose mask costs a fraction of PyTorch's on the CPU.

PyTorch's CPU dropout draws one Bernoulli sample per element from the Mersenne Twister, one at
a time: on a small model that is 7-15% of a training step (``benchmarks/train_throughput.py``).
Here every 64-bit draw of the same generator gives four 16-bit lanes, each compared with a
threshold, so an element is kept with probability ``1 - p`` rounded to a multiple of 1/65,536
(0.3 stays 0.3 to within 8e-6). The kept values are scaled by ``1 / (1 - p)`` as in
``nn.Dropout``, and the draws come from ``torch``'s default generator, so ``torch.manual_seed``
and saved RNG states (exact resume) govern them as before. Other devices use PyTorch's own
kernel, which is fused and fast there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LANES = 4  # 16-bit lanes per 64-bit draw
_LANE_VALUES = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> Tensor:
    """A CPU bool mask of ``shape``, each element True (kept) with probability 1 - p (to 1/65,536)."""
    n = 1
    for size in shape:
        n *= size
    draws = torch.empty((n + _LANES - 1) // _LANES, dtype=torch.int64)  # (ceil(n / 4),)
    draws.random_(-(1 << 63), None)  # every 64 bits random (a plain random_() leaves the sign bit 0)
    lanes = draws.view(torch.int16)[:n]  # (n,) uniform over [-32768, 32767]
    threshold = round(p * _LANE_VALUES) - _LANE_VALUES // 2  # P(lane >= threshold) = 1 - p
    return lanes.ge(threshold).view(shape)  # (*shape,) True = kept


class _Scale(torch.autograd.Function):
    """y = x * factor for a fixed factor tensor (the dropout mask, already scaled)."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: Tensor) -> Tensor:
        ctx.save_for_backward(factor)
        return x * factor

    @staticmethod
    def backward(ctx, grad: Tensor):
        (factor,) = ctx.saved_tensors
        return grad * factor, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` with the cheaper CPU mask above."""
    if not training or p == 0.0:
        return x
    if p == 1.0 or x.device.type != "cpu" or not x.is_floating_point():
        return F.dropout(x, p, training)
    # a float mask holding 0 or 1 / (1 - p): multiplying by it is ~5x faster than by a bool mask
    # (which PyTorch converts element by element), and the backward pass reuses it
    factor = keep_mask(x.shape, p).to(x.dtype).mul_(1.0 / (1.0 - p))  # (*x.shape,)
    return _Scale.apply(x, factor)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, ``train()``/``eval()``) with the cheaper CPU mask."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
