"""Sentence splitting for long input: translate piecewise instead of truncating."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seqformer.translator import Translation

_OPENERS = "\"'“«([¿¡"  # what may open a sentence before its first letter
# A boundary candidate is end punctuation (optionally closed by a quote or bracket) followed by whitespace
# and a letter or digit of any script or case (optionally after an opener), or a CJK full stop,
# exclamation or question mark, or a run of them (which needs no space after it; a full-width period "．" counts
# unless a digit stands next to it: "３．５", "１．はじめに", "Ｎｏ．５").
_CLOSERS = "\"'”’»)]）》〉】」』"  # what may close a sentence after its end punctuation
_CJK_STOP = r"(?:[。！？]|(?<!\d)．(?!\d))+"  # "？！", "．．．" end once; \d matches full-width digits too
_BOUNDARY = re.compile(
    rf"(?P<end>[.!?…][{re.escape(_CLOSERS)}]*)\s+(?=[{re.escape(_OPENERS)}]?[^\W_])"
    rf"|(?P<cjk>{_CJK_STOP}[{re.escape(_CLOSERS)}]*)\s*(?=\S)"
)
# Words whose period is not a sentence end: titles and abbreviations that do not end sentences (words
# such as "no" or "Inc." that often do are below); single capitals (initials) and dotted runs of one- or
# two-letter parts (e.g, i.e, U.S, a.m, Ph.D) are recognised by shape, and so are list markers (one- or
# two-digit numbers in a text that starts with one).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr mt vs cf fig approx dept capt sgt lt cmdr gen col maj adm brig cpl pvt gov sen "
    "rep rev hon pres supt jan feb apr jun jul aug sep sept oct nov".split()
)
_BEFORE_NUMBER = frozenset("no nos nr p pp art vol ch sec pt".split())  # "p. 12", "No. 5"; "I said no." ends
_BEFORE_LOWER = frozenset("etc inc ltd co corp bros".split())  # "etc. and more"; "pears, etc. Then" ends
_DOTTED = re.compile(r"(?:[^\W\d_]{1,2}\.)+[^\W\d_]{1,2}")
_LIST_START = re.compile(r"[(\[]?\d{1,2}[.)] ")  # "1. Buy milk 2. Call Sam"
_NEXT_WORD = re.compile(rf"[{re.escape(_CLOSERS)} ]*(.?)", re.DOTALL)  # group 1: the next word's first character


def _is_abbreviation(text: str, period: int) -> bool:
    """Whether the word before ``text[period]`` (a period; words are single-space separated) is an abbreviation."""
    start = text.rfind(" ", 0, period) + 1
    word = text[start:period].lstrip(_OPENERS)
    lower = word.lower()
    after = _NEXT_WORD.match(text, period + 1).group(1)  # matched in place: a slice of the rest per period was quadratic
    if lower in _ABBREVIATIONS:
        return True
    if lower in _BEFORE_NUMBER and after.isdigit():
        return True
    if (lower in _BEFORE_LOWER and after.islower()) or (lower == "al" and text[max(start - 3, 0) : start] == "et "):
        return True
    if word.isdigit() and len(word) <= 2:  # a list marker: splitting strands it ("I am 25." still ends)
        return start == 0 or _LIST_START.match(text) is not None
    if len(word) == 1:
        return word.isupper()  # an initial ("J. Smith"); "the letter a." can end a sentence
    return len(word) <= 5 and "." in word and _DOTTED.fullmatch(word) is not None


def _next_letter(text: str, m: re.Match) -> str:
    return text[m.end()].lstrip(_OPENERS) or text[m.end() + 1 : m.end() + 2]


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences; whitespace-only input gives [""].

    A sentence may start with a letter of any case or script or a digit, so lower-case and
    non-Latin input is split too; a period after an abbreviation ("Mr.", "e.g.", an initial) is not an end.
    """
    text = " ".join(text.split())
    if not text:
        return [""]
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        end = m.group("end")
        if end and end[0] == "." and _is_abbreviation(text, m.start()):
            continue
        # Before a lower-case word, neither an ellipsis ("Wait... what?") nor a quotation closed inside
        # the sentence ('"Why?" she asked.') ends it.
        pause = end and (len(end) > 1 or end[0] == "…" or text[m.start() - 2 : m.start()] == "..")
        if pause and _next_letter(text, m).islower():
            continue
        sentences.append(text[start : m.end(m.lastgroup)])
        start = m.end()
    sentences.append(text[start:])
    return [s.strip() for s in sentences if s.strip()]


_CJK_END = re.compile(rf"{_CJK_STOP}[{re.escape(_CLOSERS)}]*$")  # a sentence that wants no space after it


def _joined(texts: list[str]) -> str:
    """Sentences in a row: a space between them, except after a CJK full stop, exclamation or question mark."""
    parts: list[str] = []
    for text in texts:
        if parts and not _CJK_END.search(parts[-1]):
            parts.append(" ")
        parts.append(text)
    return "".join(parts)


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
        text=_joined([b.text for b in best if b.text]),  # a sentence translated as nothing adds no space
        score=sum(b.score for b in best),
        logprob=sum(b.logprob for b in best),
        tokens=[t for b in best for t in b.tokens],
    )]
