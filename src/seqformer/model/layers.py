"""Encoder and decoder layers: attention and feed-forward sublayers, each wrapped in
residual + LayerNorm (post-norm as in the paper, or pre-norm)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from seqformer.config import ModelConfig
from seqformer.decoding.cache import LayerCache
from seqformer.model.attention import MultiHeadAttention
from seqformer.model.dropout import Dropout

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "swish": F.silu}


class FeedForward(nn.Module):
    """Position-wise FFN: Linear -> activation -> dropout -> Linear."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.act = _ACTIVATIONS[cfg.activation]
        self.dropout = Dropout(cfg.activation_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))  # (B, T, D)


class Residual(nn.Module):
    """x + dropout(sublayer(x)), normalised after (post-norm) or before the sublayer (pre-norm)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.dropout)
        self.pre_norm = cfg.pre_norm

    def inner(self, x: Tensor) -> Tensor:
        """What the sublayer sees."""
        return self.norm(x) if self.pre_norm else x

    def outer(self, x: Tensor, sub_out: Tensor) -> Tensor:
        """Combine the input with the sublayer output."""
        y = x + self.dropout(sub_out)
        return y if self.pre_norm else self.norm(y)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.self_attn_res = Residual(cfg)
        self.ffn = FeedForward(cfg)
        self.ffn_res = Residual(cfg)

    def forward(self, x: Tensor, src_pad_mask: Tensor | None) -> Tensor:
        """x: (B, S, D); src_pad_mask: (B, S) True = padding."""
        h = self.self_attn_res.inner(x)
        k, v = self.self_attn.project_kv(h)
        attn, _ = self.self_attn.attend(h, k, v, key_pad_mask=src_pad_mask)
        x = self.self_attn_res.outer(x, attn)  # (B, S, D)
        return self.ffn_res.outer(x, self.ffn(self.ffn_res.inner(x)))  # (B, S, D)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.self_attn_res = Residual(cfg)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attention_dropout)
        self.cross_attn_res = Residual(cfg)
        self.ffn = FeedForward(cfg)
        self.ffn_res = Residual(cfg)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        src_pad_mask: Tensor | None,
        cache: LayerCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x: (B, T, D) target states; memory: (N, S, D) encoder output, where B = N * G: each
        source sentence's G decoder rows (a beam) are adjacent and share its memory row.

        With a ``cache``, ``x`` holds only the new positions; their keys/values are
        appended to the cache and cross-attention K/V are projected once per sentence.
        Returns (B, T, D) and cross-attention weights (B, H, T, S) if requested.
        """
        h = self.self_attn_res.inner(x)
        k, v = self.self_attn.project_kv(h)  # (B, H, T, Dh)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, H, T_past + T, Dh)
        attn, _ = self.self_attn.attend(h, k, v, causal=True)
        x = self.self_attn_res.outer(x, attn)  # (B, T, D)

        h = self.cross_attn_res.inner(x)
        if cache is not None and cache.cross_k is not None:
            ck, cv = cache.cross_k, cache.cross_v
        else:
            ck, cv = self.cross_attn.project_kv(memory)  # (B, H, S, Dh)
            if cache is not None:  # contiguous once per sentence, so no step copies them for its products
                ck, cv = ck.contiguous(), cv.contiguous()
                cache.cross_k, cache.cross_v = ck, cv
        attn, weights = self.cross_attn.attend(h, ck, cv, key_pad_mask=src_pad_mask, need_weights=need_weights)
        x = self.cross_attn_res.outer(x, attn)  # (B, T, D)
        return self.ffn_res.outer(x, self.ffn(self.ffn_res.inner(x))), weights
