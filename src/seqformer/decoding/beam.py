"""Batched beam search.

Each step ranks ``2 * beam`` candidates per sentence, so hypotheses that end in
</s> (finalised when they rank inside the top ``beam``) never starve the beam of
live continuations (as in fairseq). A sentence is done when ``beam`` hypotheses
have finished; its rows then leave the batch. Scores are log-probabilities divided
by length**length_penalty (</s> counted): the same search as HF's
``generate(num_beams=beam, early_stopping=True, length_penalty=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from seqformer.config import DecodeConfig

if TYPE_CHECKING:
    from seqformer.model.transformer import Seq2SeqTransformer

from seqformer.decoding.common import Hypothesis, constrain, normalise


@dataclass
class _Beams:
    """Live state of all active sentences: K rows each, laid out sentence-major."""

    sents: list[int]  # original sentence index of each active sentence
    tokens: Tensor  # (N*K, t) emitted tokens, start token excluded
    scores: Tensor  # (N, K) cumulative log-probabilities
    attn: Tensor | None = None  # (N*K, L, H, t, S) cross-attention history
    finished: dict[int, list[Hypothesis]] = field(default_factory=dict)


def _select(j: int, k: int, vocab: int, top_s: Tensor, top_i: Tensor, eos: int) -> tuple[list, list]:
    """Split sentence j's ranked candidates into finished (</s> within the top k) and live ones (first k)."""
    ended, live = [], []
    for c, (s, i) in enumerate(zip(top_s[j].tolist(), top_i[j].tolist())):
        if s == float("-inf"):
            break
        beam, tok = divmod(i, vocab)
        if tok == eos:
            if c < k:
                ended.append((j * k + beam, s))
        elif len(live) < k:
            live.append((j * k + beam, tok, s))
    return ended, live


def _in_place(live: list[tuple[int, int, float]], j: int, k: int) -> list[tuple[int, int, float]]:
    """Order sentence j's k live candidates (row, token, score) so that each parent row's first
    child takes the parent's own slot: the order of a sentence's beams is free, and this way the
    cache only copies rows into the slots of beams that died, instead of rebuilding every row."""
    slots: list[tuple[int, int, float] | None] = [None] * k
    extra = []
    for cand in live:
        offset = cand[0] - j * k
        if slots[offset] is None:
            slots[offset] = cand
        else:
            extra.append(cand)
    free = iter(i for i, c in enumerate(slots) if c is None)
    for cand in extra:
        slots[next(free)] = cand
    return slots  # type: ignore[return-value]


def _finish(state: _Beams, b: int, row: int, score: float, cfg: DecodeConfig, step_attn: Tensor | None) -> None:
    tokens = state.tokens[row].tolist()
    attn = None
    if step_attn is not None:
        past = state.attn[row] if state.attn is not None else None  # (L, H, t, S)
        now = step_attn[row][:, :, None]  # (L, H, 1, S)
        attn = now if past is None else torch.cat([past, now], dim=2)
    hyp = Hypothesis(tokens, normalise(score, len(tokens) + 1, cfg.length_penalty), score, attn)
    state.finished.setdefault(b, []).append(hyp)


def _keep_best(state: _Beams, b: int, k: int) -> None:
    """One step can finish more hypotheses than sentence b has free slots: keep the k best by
    normalised score, earlier ones included (as HF's generate(early_stopping=True) does)."""
    done = state.finished.get(b)
    if done is not None and len(done) > k:
        done.sort(key=lambda h: -h.score)
        del done[k:]


@torch.no_grad()
def beam_search(
    model: Seq2SeqTransformer,
    memory: Tensor,
    src_pad_mask: Tensor,
    limits: Tensor,
    cfg: DecodeConfig,
    need_attention: bool = False,
) -> list[list[Hypothesis]]:
    """Beam search for B sentences (memory (B, S, D), limits (B,)); returns the n-best per sentence."""
    mc, k = model.cfg, cfg.beam_size
    b_total = memory.size(0)
    # memory and src_pad_mask stay one row per sentence: the K decoder rows of a sentence share it.
    row_limits = limits.repeat_interleave(k, 0)  # (B*K,)
    scores = torch.full((b_total, k), float("-inf"))
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    state = _Beams(sents=list(range(b_total)), tokens=torch.zeros(b_total * k, 0, dtype=torch.long), scores=scores)
    cache = model.new_cache(limits)
    last = torch.full((b_total * k, 1), mc.decoder_start_id, dtype=torch.long)  # (N*K, 1)
    step = 0
    while state.sents:
        lp, attn = model.decode_step(last, memory, src_pad_mask, cache, need_weights=need_attention)  # (N*K, V)
        lp = constrain(lp, step, row_limits, cfg.min_len, mc.eos_id, mc.pad_id)
        vocab = lp.size(-1)
        n = len(state.sents)
        cand = (state.scores[:, :, None] + lp.view(n, k, vocab)).view(n, k * vocab)  # (N, K*V)
        top_s, top_i = cand.topk(min(2 * k, k * vocab), dim=-1)  # (N, 2K)
        step_attn = torch.stack([a[:, :, -1] for a in attn], dim=1) if need_attention else None  # (N*K, L, H, S)
        rows, toks, new_scores, kept, kept_at = [], [], [], [], []  # kept_at: kept sentences' memory rows
        for j, b in enumerate(state.sents):
            ended, live = _select(j, k, vocab, top_s, top_i, mc.eos_id)
            for row, s in ended:
                _finish(state, b, row, s, cfg, step_attn)
            _keep_best(state, b, k)
            if len(state.finished.get(b, [])) >= k or not live:
                continue
            while len(live) < k:  # tiny vocabularies: pad with dead copies
                live.append((live[0][0], live[0][1], float("-inf")))
            kept.append(b)
            kept_at.append(j)
            for row, tok, s in _in_place(live, j, k):
                rows.append(row)
                toks.append(tok)
                new_scores.append(s)
        if not kept:
            break
        idx = torch.tensor(rows, dtype=torch.long)
        new_tok = torch.tensor(toks, dtype=torch.long)
        if len(kept) < n:  # sentences left the batch: drop their memory rows too
            sources = torch.tensor(kept_at, dtype=torch.long)
            cache.reorder(idx, sources)
            memory, src_pad_mask = memory[sources], src_pad_mask[sources]
        else:
            cache.reorder_beams(idx)
        row_limits = row_limits[idx]
        if step_attn is not None:
            now = step_attn[idx][:, :, :, None]  # (N'*K, L, H, 1, S)
            state.attn = now if state.attn is None else torch.cat([state.attn[idx], now], dim=3)
        state.tokens = torch.cat([state.tokens[idx], new_tok[:, None]], dim=1)
        state.scores = torch.tensor(new_scores).view(len(kept), k)
        state.sents = kept
        last = new_tok[:, None]
        step += 1
    return [sorted(state.finished.get(b, []), key=lambda h: -h.score)[: cfg.nbest] for b in range(b_total)]
