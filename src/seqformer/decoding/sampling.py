"""Greedy decoding and sampling (temperature, top-k, top-p): one token per row per step.

Rows that emit </s> leave the batch (cache, memory and masks are shrunk), so a
long sentence does not keep finished short ones computing.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from seqformer.config import DecodeConfig

if TYPE_CHECKING:
    from seqformer.model.transformer import Seq2SeqTransformer

from seqformer.decoding.common import Hypothesis, constrain, normalise


def filter_logits(logprobs: Tensor, temperature: float, top_k: int, top_p: float) -> Tensor:
    """Scale by temperature, then keep the top-k and the smallest top-p nucleus. (N, V) -> (N, V) logits."""
    logits = logprobs / temperature
    if top_k > 0 and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (N, V)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop_sorted[:, 0] = False  # even when top_p is below float32's smallest number (it becomes 0 there)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def row_generators(src: Tensor, src_pad_mask: Tensor, seed: int, copies: int) -> list[torch.Generator]:
    """One generator per decoded row (sentence-major, ``copies`` per sentence), seeded from the seed, the
    sentence's source ids and the copy number: a sentence's samples do not depend on its batch
    neighbours or its place in the batch. src, src_pad_mask: (B, S)."""
    gens = []
    for ids, pad in zip(src.tolist(), src_pad_mask.tolist()):
        key = ",".join(str(i) for i, p in zip(ids, pad) if not p)
        for copy in range(copies):
            digest = hashlib.blake2b(f"{seed}/{copy}/{key}".encode(), digest_size=8).digest()
            gens.append(torch.Generator().manual_seed(int.from_bytes(digest, "little")))
    return gens


def pick(logprobs: Tensor, cfg: DecodeConfig, gens: list[torch.Generator] | None = None) -> Tensor:
    """Choose the next token of each row: argmax, or a draw from the filtered distribution, from the
    global generator or, given ``gens``, one uniform number from each row's own generator. (N,)"""
    if not cfg.sampling:
        return logprobs.argmax(dim=-1)
    probs = filter_logits(logprobs, cfg.temperature, cfg.top_k, cfg.top_p).softmax(dim=-1)  # (N, V)
    if gens is None:
        return torch.multinomial(probs, 1).squeeze(1)
    cum = probs.cumsum(dim=-1)  # (N, V)
    u = torch.cat([torch.rand(1, generator=g, dtype=cum.dtype) for g in gens]) * cum[:, -1]  # (N,) in [0, total)
    # the first token whose cumulative mass exceeds u: never one of probability zero
    return torch.searchsorted(cum, u[:, None], right=True).squeeze(1).clamp_(max=probs.size(-1) - 1)  # (N,)


@torch.no_grad()
def greedy_or_sample(
    model: Seq2SeqTransformer,
    memory: Tensor,
    src_pad_mask: Tensor,
    limits: Tensor,
    cfg: DecodeConfig,
    need_attention: bool = False,
    src: Tensor | None = None,
) -> list[list[Hypothesis]]:
    """Decode each of the B sentences (memory: (B, S, D)) ``nbest`` times when sampling, once when greedy.
    Seeded sampling needs ``src`` (B, S), the source ids its per-sentence generators are seeded from."""
    mc = model.cfg
    copies = cfg.nbest if cfg.sampling else 1
    gens = None
    if cfg.sampling and cfg.seed is not None:
        if src is None:
            raise ValueError("seeded sampling needs the source ids (src)")
        gens = row_generators(src, src_pad_mask, cfg.seed, copies)
    memory = memory.repeat_interleave(copies, 0)  # (N, S, D)
    src_pad_mask = src_pad_mask.repeat_interleave(copies, 0)  # (N, S)
    limits = limits.repeat_interleave(copies, 0)  # (N,)
    n = memory.size(0)
    cache = model.new_cache(limits)
    rows = torch.arange(n)  # original row of each active row
    last = torch.full((n, 1), mc.decoder_start_id, dtype=torch.long)  # (N, 1)
    outputs: list[list[int]] = [[] for _ in range(n)]
    logprob = [0.0] * n
    attn_steps: list[list[Tensor]] = [[] for _ in range(n)]
    results: list[Hypothesis | None] = [None] * n
    step = 0
    while rows.numel() > 0:
        lp, attn = model.decode_step(last, memory, src_pad_mask, cache, need_weights=need_attention)  # (N, V)
        lp = constrain(lp, step, limits, cfg.min_len, mc.eos_id, mc.pad_id)
        active = rows.tolist()  # original row of each row of this step
        tok = pick(lp, cfg, None if gens is None else [gens[r] for r in active])  # (N,)
        tok_lp = lp.gather(1, tok[:, None]).squeeze(1)  # (N,)
        step_attn = torch.stack([a[:, :, -1] for a in attn], dim=1) if need_attention else None  # (N, L, H, S)
        keep = []
        for j, (r, t, s) in enumerate(zip(active, tok.tolist(), tok_lp.tolist())):
            logprob[r] += s
            if step_attn is not None:
                attn_steps[r].append(step_attn[j])
            if t == mc.eos_id:
                length = len(outputs[r]) + 1
                att = torch.stack(attn_steps[r], dim=2) if need_attention else None  # (L, H, T, S)
                results[r] = Hypothesis(outputs[r], normalise(logprob[r], length, cfg.length_penalty), logprob[r], att)
            else:
                outputs[r].append(t)
                keep.append(j)
        step += 1
        if len(keep) < rows.numel():
            idx = torch.tensor(keep, dtype=torch.long)
            cache.reorder(idx)  # one memory row per decoder row here
            memory, src_pad_mask, limits = memory[idx], src_pad_mask[idx], limits[idx]
            rows, tok = rows[idx], tok[idx]
        last = tok[:, None]
    grouped = [results[i * copies : (i + 1) * copies] for i in range(n // copies)]
    return [sorted(g, key=lambda h: -h.score) for g in grouped]  # type: ignore[arg-type, union-attr]
