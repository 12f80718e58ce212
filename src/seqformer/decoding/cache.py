"""The incremental-decoding cache: data passed in and returned, never module state."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

# Self-attention K/V live in buffers with room for more positions, so a step writes its new position
# in place instead of concatenating (copying) the whole history: room for the search's length limit
# when it says one (``capacity``), else for this many more positions at a time.
GROW = 16


@dataclass
class LayerCache:
    """Keys/values of one decoder layer.

    Self-attention K/V have one row per decoder row and grow by one position per step
    (buffers of capacity >= ``length``). Cross-attention K/V are projected from the encoder
    output once and have one row per *source sentence*: the K rows of a beam share them.
    """

    self_k: Tensor | None = None  # (R, H, capacity, Dh)
    self_v: Tensor | None = None  # (R, H, capacity, Dh)
    length: int = 0  # filled positions of self_k / self_v
    cross_k: Tensor | None = None  # (N, H, S, Dh)
    cross_v: Tensor | None = None  # (N, H, S, Dh)
    capacity: int = 0  # positions to make room for at the first append (0: GROW at a time)

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add new positions k, v (R, H, T1, Dh); return all keys and values so far (R, H, length, Dh)."""
        end = self.length + k.size(2)
        if self.self_k is None or end > self.self_k.size(2):
            self.self_k, self.self_v = self._grown(self.self_k, k, end), self._grown(self.self_v, v, end)
        self.self_k[:, :, self.length : end] = k
        self.self_v[:, :, self.length : end] = v
        self.length = end
        return self.self_k[:, :, :end], self.self_v[:, :, :end]

    def _grown(self, old: Tensor | None, new: Tensor, end: int) -> Tensor:
        r, h, _, dh = new.shape
        buf = new.new_empty(r, h, max(end + GROW, self.capacity), dh)  # (R, H, capacity, Dh)
        if old is not None:
            buf[:, :, : self.length] = old[:, :, : self.length]
        return buf

    def select_rows(self, rows: Tensor) -> None:
        if self.self_k is not None:
            self.self_k, self.self_v = self.self_k.index_select(0, rows), self.self_v.index_select(0, rows)

    def copy_rows(self, dst: Tensor, src: Tensor) -> None:
        """Overwrite rows ``dst`` with rows ``src`` in place (no row is both a source and a destination)."""
        if self.self_k is not None:
            end = self.length
            self.self_k[dst, :, :end] = self.self_k[src, :, :end]
            self.self_v[dst, :, :end] = self.self_v[src, :, :end]

    def select_sources(self, sources: Tensor) -> None:
        if self.cross_k is not None:
            self.cross_k, self.cross_v = self.cross_k.index_select(0, sources), self.cross_v.index_select(0, sources)


@dataclass
class DecoderCache:
    """Per-layer caches plus the number of target positions already decoded."""

    layers: list[LayerCache] = field(default_factory=list)
    step: int = 0

    @classmethod
    def empty(cls, n_layers: int, capacity: int = 0) -> DecoderCache:
        """``capacity``: the most target positions the search will decode (its length limit), if known."""
        return cls(layers=[LayerCache(capacity=capacity) for _ in range(n_layers)], step=0)

    def reorder(self, rows: Tensor, sources: Tensor | None = None) -> None:
        """Keep rows ``rows`` (R',) of the self-attention cache and rows ``sources`` (N',) of the
        cross-attention cache (default: ``rows``, for one memory row per decoder row): dropping
        finished rows, or any reordering where the memory handed to ``decode_step`` follows."""
        rows = rows.to(torch.long)
        sources = rows if sources is None else sources.to(torch.long)
        for layer in self.layers:
            layer.select_rows(rows)
            layer.select_sources(sources)

    def reorder_beams(self, rows: Tensor) -> None:
        """Beam reordering: row i continues the hypothesis of row ``rows[i]`` (R,), a row of the same
        sentence, so the memory and its cross-attention cache stay as they are. Copies only the rows
        that change, in place, when the rows they copy from stay (as beam search arranges)."""
        rows = rows.to(torch.long)
        moves = _in_place_moves(rows)
        for layer in self.layers:
            if moves is None:
                layer.select_rows(rows)
            elif moves[0].numel():
                layer.copy_rows(*moves)


def _in_place_moves(rows: Tensor) -> tuple[Tensor, Tensor] | None:
    """(dst, src) such that copying rows src onto rows dst in place equals ``index_select(rows)``
    (same row count), or None when it cannot: a row that is copied is itself overwritten.
    Beam search orders its beams so that this is the usual case (see ``beam._in_place``)."""
    here = torch.arange(rows.numel(), device=rows.device)
    moved = rows != here  # (R,)
    dst = moved.nonzero().squeeze(1)
    src = rows[dst]
    if bool(moved[src].any()):
        return None
    return dst, src
