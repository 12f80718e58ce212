"""Dropout whose mask costs a fraction of PyTorch's on the CPU.

PyTorch's CPU dropout draws one Bernoulli sample per element from the Mersenne Twister, a
visible part of a small model's training step (what this saves: ``benchmarks/train_throughput.py
--engines seqformer,seqformer-torch-dropout``). Here every 64-bit draw of the same generator
gives four 16-bit lanes, each compared with a threshold, so an element is kept with probability
``1 - p`` rounded to a multiple of 1/65,536 (0.3 stays 0.3 to within 8e-6), and kept values are
scaled by the inverse of that keep rate (``nn.Dropout``: ``1 / (1 - p)``). The draws come from
``torch``'s default generator, so ``torch.manual_seed`` and saved RNG states (exact resume) govern
them as before; the masks differ from PyTorch's. Other devices, and p within 2^-17 of 1, use
PyTorch's own kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LANES = 4  # 16-bit lanes per 64-bit draw
_LANE_VALUES = 1 << 16


def _dropped_lanes(p: float) -> int:
    """How many of a lane's 65,536 values drop an element: round(p * 65,536)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return round(p * _LANE_VALUES)


def keep_mask(shape: torch.Size | tuple[int, ...], p: float) -> Tensor:
    """A CPU bool mask of ``shape``, each element True (kept) with probability 1 - p (to 1/65,536).

    p must round to fewer than 65,536 dropped values (p < 1 - 2^-17)."""
    dropped = _dropped_lanes(p)
    if dropped >= _LANE_VALUES:
        raise ValueError(f"keep_mask draws 16-bit lanes: p={p} rounds to dropping everything")
    return _keep_lanes(shape, dropped)


def _keep_lanes(shape: torch.Size | tuple[int, ...], dropped: int) -> Tensor:
    """keep_mask for an already checked count of dropping lane values (0 <= dropped < 65,536)."""
    n = math.prod(shape)
    draws = torch.empty((n + _LANES - 1) // _LANES, dtype=torch.int64)  # (ceil(n / 4),)
    draws.random_(-(1 << 63), None)  # every 64 bits random (a plain random_() leaves the sign bit 0)
    lanes = draws.view(torch.int16)[:n]  # (n,) uniform over [-32768, 32767]
    return lanes.ge(dropped - _LANE_VALUES // 2).view(shape)  # (*shape,) True = kept


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)`` with the cheaper CPU mask above."""
    dropped = _dropped_lanes(p)
    if not training or p == 0.0:
        return x
    if dropped >= _LANE_VALUES or x.device.type != "cpu" or not x.is_floating_point():
        return F.dropout(x, p, training)
    # A float mask of 0 and the inverse keep rate (exactly unbiased for the rounded p): multiplying by
    # it is faster than by a bool mask, which PyTorch converts element by element, and autograd saves
    # it for the backward pass, which is the same product.
    scale = _LANE_VALUES / (_LANE_VALUES - dropped)
    return x * _keep_lanes(x.shape, dropped).to(x.dtype).mul_(scale)  # (*x.shape,)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, ``train()``/``eval()``) with the cheaper CPU mask; never in place."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)
