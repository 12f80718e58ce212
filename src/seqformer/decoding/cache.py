"""The incremental-decoding cache: data passed in and returned, never module state."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class LayerCache:
    """Keys/values of one decoder layer.

    Self-attention K/V grow by one position per step; cross-attention K/V are
    projected from the encoder output once and reused for every step.
    """

    self_k: Tensor | None = None  # (B, H, T, Dh)
    self_v: Tensor | None = None  # (B, H, T, Dh)
    cross_k: Tensor | None = None  # (B, H, S, Dh)
    cross_v: Tensor | None = None  # (B, H, S, Dh)

    def select(self, indices: Tensor) -> None:
        for name in ("self_k", "self_v", "cross_k", "cross_v"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.index_select(0, indices))


@dataclass
class DecoderCache:
    """Per-layer caches plus the number of target positions already decoded."""

    layers: list[LayerCache] = field(default_factory=list)
    step: int = 0

    @classmethod
    def empty(cls, n_layers: int) -> DecoderCache:
        return cls(layers=[LayerCache() for _ in range(n_layers)], step=0)

    def reorder(self, indices: Tensor) -> None:
        """Keep rows ``indices`` (B',) of every cached tensor: beam reordering and dropping finished rows."""
        indices = indices.to(torch.long)
        for layer in self.layers:
            layer.select(indices)
