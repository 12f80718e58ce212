"""Multi-head attention: fast SDPA path plus a plain reference path that returns weights.

Mask convention (the only one in seqformer): ``key_pad_mask`` is (B, S) bool with
True = padding (do not attend). It is converted to SDPA's "True = may attend"
polarity in exactly one place, :func:`_allowed`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqformer.model.dropout import dropout as apply_dropout


def _allowed(key_pad_mask: Tensor | None) -> Tensor | None:
    """(B, S) True=padding -> (B, 1, 1, S) True=may attend, broadcast over heads and queries."""
    if key_pad_mask is None:
        return None
    return ~key_pad_mask[:, None, None, :]


def reference_attention(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, causal: bool, dropout: float = 0.0
) -> tuple[Tensor, Tensor]:
    """softmax(QK^T / sqrt(d)) V, written out. q: (B, H, T, Dh), k/v: (B, H, S, Dh).

    Returns the output (B, H, T, Dh) and the attention weights (B, H, T, S).
    On CPU with short sequences this plain path is also the fastest one (see
    ``attend``), so it supports attention dropout too.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
    if causal and scores.size(-2) > 1:  # one query (a cached step) sees every key: nothing to mask
        t, s = scores.shape[-2:]
        # Query i sits at absolute position s - t + i (a cache may hold s - t earlier keys).
        future = torch.ones(t, s, dtype=torch.bool, device=q.device).triu(s - t + 1)  # (T, S)
        scores = scores.masked_fill(future, float("-inf"))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = scores.float().softmax(dim=-1).to(q.dtype)  # (B, H, T, S)
    dropped = apply_dropout(weights, dropout)
    return dropped @ v, weights


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over ``n_heads`` heads with separate Q/K/V/out projections."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        # "auto": SDPA on GPUs; on CPU the written-out path, which measures several times
        # faster than SDPA's CPU kernels (forward + backward) at translation lengths.
        self.impl = "auto"

    def _use_sdpa(self, q: Tensor) -> bool:
        return self.impl == "sdpa" or (self.impl == "auto" and q.is_cuda)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values for ``memory`` (B, S, D): each (B, H, S, Dh)."""
        return self.split_heads(self.k_proj(memory)), self.split_heads(self.v_proj(memory))

    def attend(
        self,
        query: Tensor,
        k: Tensor,
        v: Tensor,
        key_pad_mask: Tensor | None = None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query`` (B, T, D) over projected keys/values (N, H, S, Dh).

        B = N * G: the G adjacent query rows of each key row (the beam of one source
        sentence, over its one copy of the encoder output) attend as G * T queries of one
        row, so keys/values are never copied per beam. ``key_pad_mask``: (N, S).
        Returns (B, T, D) and, when ``need_weights``, the weights (B, H, T, S).
        """
        b, t, d = query.shape
        n, h = k.size(0), self.n_heads
        g = b // n
        if b != n * g or (causal and g > 1):
            raise ValueError(f"{b} query rows cannot share {n} key rows (grouped queries are for cross-attention)")
        q = self.split_heads(self.q_proj(query))  # (B, H, T, Dh)
        if g > 1:
            q = q.reshape(n, g, h, t, self.head_dim).transpose(1, 2).reshape(n, h, g * t, self.head_dim)  # (N, H, G*T, Dh)
        allowed = _allowed(key_pad_mask)
        dropout = self.dropout if self.training else 0.0
        if need_weights or not self._use_sdpa(q):
            out, weights = reference_attention(q, k, v, allowed, causal, dropout)
            weights = weights if need_weights else None
        else:
            weights = None
            s = k.size(2)
            flag_causal = causal and t > 1 and allowed is None and t == s
            if causal and t > 1 and not flag_causal:
                past = ~torch.ones(t, s, dtype=torch.bool, device=q.device).triu(s - t + 1)  # (T, S)
                allowed = past if allowed is None else allowed & past
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=allowed, dropout_p=dropout, is_causal=flag_causal
            )  # (B, H, T, Dh)
        if g > 1:
            out = out.reshape(n, h, g, t, self.head_dim).transpose(1, 2)  # (N, G, H, T, Dh)
            if weights is not None:
                weights = weights.reshape(n, h, g, t, -1).transpose(1, 2).reshape(b, h, t, -1)  # (B, H, T, S)
        out = out.reshape(b, h, t, self.head_dim).transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.out_proj(out), weights
