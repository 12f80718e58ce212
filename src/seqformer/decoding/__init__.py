"""Search strategies over ``encode`` / ``decode_step``: greedy, beam search and sampling."""

from __future__ import annotations

import torch
from torch import Tensor

from seqformer.config import DecodeConfig
from seqformer.decoding.beam import beam_search
from seqformer.decoding.cache import DecoderCache, LayerCache
from seqformer.decoding.common import Hypothesis, max_lengths
from seqformer.decoding.sampling import greedy_or_sample

__all__ = ["DecoderCache", "LayerCache", "Hypothesis", "generate"]


@torch.no_grad()
def generate(model, src: Tensor, src_pad_mask: Tensor, cfg: DecodeConfig,
             need_attention: bool = False) -> list[list[Hypothesis]]:
    """Translate a padded batch src (B, S) (src_pad_mask (B, S) True = padding): n-best lists per sentence."""
    memory = model.encode(src, src_pad_mask)  # (B, S, D)
    src_lengths = (~src_pad_mask).sum(dim=1)  # (B,)
    limits = max_lengths(src_lengths, cfg.max_len_a, cfg.max_len_b, model.cfg.max_positions - 1)
    if cfg.sampling or cfg.beam_size == 1:
        return greedy_or_sample(model, memory, src_pad_mask, limits, cfg, need_attention, src)
    return beam_search(model, memory, src_pad_mask, limits, cfg, need_attention)
