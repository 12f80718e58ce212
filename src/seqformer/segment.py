"""Sentence splitting for long input: translate piecewise instead of truncating."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seqformer.translator import Translation

# A boundary is end punctuation (optionally closed by a quote or bracket) followed by
# whitespace and something that can start a sentence.
_BOUNDARY = re.compile(r"([.!?…][\"'”»)\]]*)\s+(?=[\"'“«(\[¿¡]?[A-Z0-9À-ÖØ-Þ])")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences; whitespace-only input gives [""]."""
    text = " ".join(text.split())
    if not text:
        return [""]
    return [s.strip() for s in _BOUNDARY.sub("\\1\n", text).split("\n") if s.strip()]


def join_pieces(pieces: list[list[Translation]]) -> list[Translation]:
    """Combine the n-best lists of a text's sentences: one sentence keeps its n-best,
    several give one hypothesis joining the best of each (scores summed)."""
    from seqformer.translator import Translation

    pieces = [p for p in pieces if p]
    if not pieces:
        return []
    if len(pieces) == 1:
        return pieces[0]
    best = [p[0] for p in pieces]
    return [Translation(
        text=" ".join(b.text for b in best),
        score=sum(b.score for b in best),
        logprob=sum(b.logprob for b in best),
        tokens=[t for b in best for t in b.tokens],
    )]
