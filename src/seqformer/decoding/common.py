"""What every search strategy shares: hypotheses, length limits and step constraints."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class Hypothesis:
    """One output sequence (ids without start/end tokens) with its scores."""

    tokens: list[int]
    score: float  # length-normalised score used for ranking
    logprob: float  # total log-probability, end token included
    attention: Tensor | None = None  # (L, H, T, S) cross-attention, T = len(tokens) + 1


def max_lengths(src_lengths: Tensor, a: float, b: int, limit: int) -> Tensor:
    """Per-sentence output length limit ``a * src_len + b``, capped at the model's positions. (B,) -> (B,)"""
    # float64 as Python's own a * n + b (float32 makes 1.3 * 90 + 1 = 117.99999, one token short)
    return (src_lengths.double() * a + float(b)).clamp(min=1, max=limit).floor().long()  # clamped before the cast


def normalise(logprob: float, length: int, alpha: float) -> float:
    """Length penalty as in fairseq: score / length**alpha (alpha = 0 ranks by raw log-probability)."""
    return logprob / (length**alpha) if alpha != 0 else logprob


def constrain(logprobs: Tensor, step: int, limits: Tensor, min_len: int, eos_id: int, pad_id: int | None = None) -> Tensor:
    """Forbid </s> before ``min_len`` and <pad> always; force </s> once a row reaches its length limit.

    logprobs: (N, V) for N rows; limits: (N,) maximum number of tokens before </s>. A forced
    </s> keeps its own log-probability (as fairseq; HF's forced_eos_token_id scores it 0).
    """
    if pad_id is not None and pad_id != eos_id:
        logprobs[:, pad_id] = float("-inf")  # never an output (OPUS-MT configs ban it via bad_words_ids)
    at_limit = limits <= step  # (N,)
    # The length limit wins over min_len: a row at its limit always gets a finite </s>.
    eos_col = logprobs[at_limit, eos_id].clone() if bool(at_limit.any()) else None
    if step < min_len:
        logprobs[:, eos_id] = float("-inf")
    if eos_col is not None:
        logprobs[at_limit] = float("-inf")
        logprobs[at_limit, eos_id] = eos_col
    return logprobs
