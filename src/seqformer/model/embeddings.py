"""Token embeddings (scaled by sqrt(d_model)) and positional encodings."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoid_table(n_positions: int, dim: int, layout: str = "interleaved") -> Tensor:
    """Fixed sinusoidal encodings (Vaswani et al. 2017, section 3.5).

    ``interleaved`` puts sin at even and cos at odd channels as in the paper;
    ``split`` puts all sines first, then all cosines, as Hugging Face's Marian port (OPUS-MT models) does (its
    frequencies are this function's; native Marian and fairseq space theirs by log(10000) / (D/2 - 1)).
    """
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (P, 1)
    half = dim // 2
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, half, dtype=torch.float64) * 2 / dim)  # (D/2,)
    angles = position * inv_freq[None, :]  # (P, D/2)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    if layout == "interleaved":
        table[:, 0 : 2 * half : 2] = torch.sin(angles)
        table[:, 1 : 2 * half : 2] = torch.cos(angles)
    else:
        # Hugging Face Marian's layout: ceil(D/2) sines, then floor(D/2) cosines of the same frequencies.
        sentinel = (dim + 1) // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(0, sentinel, dtype=torch.float64) * 2 / dim)
        angles = position * freqs[None, :]  # (P, ceil(D/2))
        table[:, :sentinel] = torch.sin(angles)
        table[:, sentinel:] = torch.cos(angles[:, : dim - sentinel])
    return table.float()


class PositionalEncoding(nn.Module):
    """Adds position information: fixed sinusoids (a buffer) or learned vectors (a parameter)."""

    def __init__(self, kind: str, max_positions: int, dim: int, layout: str = "interleaved") -> None:
        super().__init__()
        self.kind = kind
        self.max_positions = max_positions
        if kind == "learned":
            self.weight = nn.Parameter(torch.randn(max_positions, dim) * dim**-0.5)
        else:
            self.register_buffer("table", sinusoid_table(max_positions, dim, layout), persistent=False)

    def forward(self, length: int, offset: int = 0) -> Tensor:
        """Encodings for positions ``offset .. offset+length-1``: (length, D)."""
        if offset + length > self.max_positions:
            raise ValueError(f"sequence of {offset + length} positions exceeds max_positions={self.max_positions}")
        table = self.weight if self.kind == "learned" else self.table
        return table[offset : offset + length]  # (T, D)


class TokenEmbedding(nn.Module):
    """Embedding lookup, multiplied by sqrt(d_model) when ``scale`` is set."""

    def __init__(self, vocab_size: int, dim: int, pad_id: int, scale: bool) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.weight = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.normal_(self.weight, mean=0.0, std=dim**-0.5)
        with torch.no_grad():
            self.weight[pad_id].zero_()
        self.scale = math.sqrt(dim) if scale else 1.0

    def forward(self, tokens: Tensor) -> Tensor:
        # padding_idx: a lookup of the padding row passes it no gradient (as nn.Embedding and Hugging Face
        # Marian). Padded positions are masked anyway; it matters where the padding id is also the decoder's
        # start token (Marian / OPUS-MT): fine-tuning then trains that row only as HF does, through a tied
        # output layer, not through the start token's lookup.
        return nn.functional.embedding(tokens, self.weight, padding_idx=self.pad_id) * self.scale  # (B, T, D)
