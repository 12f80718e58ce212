"""sacreBLEU BLEU and chrF, with signatures, for one or several references per sentence."""

from __future__ import annotations

from typing import Any

from sacrebleu.metrics import BLEU, CHRF


def score(hyps: list[str], refs: list[list[str]]) -> dict[str, Any]:
    """Corpus BLEU and chrF. ``refs`` is a list of reference streams, each aligned with ``hyps``;
    a None entry in a stream means that sentence has fewer references."""
    bleu, chrf = BLEU(), CHRF()
    b = bleu.corpus_score(hyps, refs)
    c = chrf.corpus_score(hyps, refs)
    return {
        "bleu": round(b.score, 2),
        "chrf": round(c.score, 2),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "sentences": len(hyps),
    }


def ref_streams(groups: list[list[str]]) -> list[list[str | None]]:
    """Transpose per-sentence reference lists into sacreBLEU streams, padding with None."""
    width = max(len(g) for g in groups)
    return [[g[i] if i < len(g) else None for g in groups] for i in range(width)]
