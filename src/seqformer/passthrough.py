"""Symbols the source vocabulary cannot spell (emoji, pictographs, unseen currency signs) are
kept away from the model, which never learned them and would hallucinate around ``<unk>``,
and copied into the translation instead.

Only symbols are held out (Unicode categories S* and private-use/unassigned code points, with
the joiners, variation selectors and marks that belong to them). An unknown letter, digit or
punctuation mark still goes to the model: removing it would change the words around it.
Where a symbol goes back: before the first word if it came before the first word; at the very
end if nothing but symbols and spaces followed it; otherwise before the translation's final
punctuation, in source order.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

_HELD_CATEGORIES = ("So", "Sk", "Sc", "Sm", "Co", "Cn")
_JOINERS = {"\u200d", "\ufe0e", "\ufe0f"}  # zero-width joiner, text/emoji variation selectors
_SKIN_TONES = frozenset(map(chr, range(0x1F3FB, 0x1F400)))  # emoji modifiers: a tone for the emoji before them
_KEYCAP = "\u20e3"  # combining enclosing keycap: turns the character before it into an emoji
_CLOSE_UP = ".!?,;:…"  # punctuation a held symbol's gap closes up to
_FINAL_PUNCT = re.compile(r"\s*[.!?…]+[\"'”»)\]]*\s*$")


def _is_tag(ch: str) -> bool:
    """Emoji tag characters: the invisible letters after a black flag that make it England's, Scotland's, ..."""
    return 0xE0020 <= ord(ch) <= 0xE007F


@dataclass(frozen=True)
class Held:
    """A sentence without its unknown symbols, and where they go back."""

    text: str  # what the model translates
    prefix: tuple[str, ...] = ()  # runs of symbols before the first known character
    inner: tuple[str, ...] = ()  # runs between known characters: before the final punctuation
    tail: tuple[str, ...] = ()  # runs after the last known character: at the very end

    @property
    def symbols(self) -> str:
        return " ".join(self.prefix + self.inner + self.tail)


def _attached(ch: str) -> bool:
    """A joiner, selector, mark, tag or skin tone: part of the character before it."""
    return ch in _JOINERS or unicodedata.category(ch).startswith("M") or _is_tag(ch) or ch in _SKIN_TONES


def _held_flags(text: str, is_unknown: Callable[[str], bool]) -> list[bool]:
    """Per character: is it part of a held-out symbol? Joiners and marks follow their base; a sequence joined
    by ZWJs or skin tones is held whole when any part of it is ("❤️‍🔥" with ❤ known and 🔥 not)."""
    flags: list[bool] = []
    for i, ch in enumerate(text):
        if _attached(ch) and ch not in _SKIN_TONES and flags:
            flags.append(flags[-1])
        elif text.startswith(_KEYCAP, i + 1) or text.startswith("\ufe0f" + _KEYCAP, i + 1):
            flags.append(is_unknown(_KEYCAP))  # "1️⃣": a digit, # or * on a keycap is an emoji, not a digit
        else:
            flags.append(unicodedata.category(ch) in _HELD_CATEGORIES and is_unknown(ch))
    start = 0
    for end in range(1, len(text) + 1):  # each sequence [start, end): a base and what is attached or joined to it
        if end < len(text) and (_attached(text[end]) or text[end - 1] == "\u200d"):
            continue
        if end - start > 1 and any(flags[start:end]):
            for k in range(start, end):
                flags[k] = flags[k] or _attached(text[k]) or unicodedata.category(text[k]) in _HELD_CATEGORIES
        start = end
    return flags


def hold_out(text: str, is_unknown: Callable[[str], bool]) -> Held:
    """Split ``text`` into what the model translates and the symbols it cannot read."""
    text = unicodedata.normalize("NFC", text)
    flags = _held_flags(text, is_unknown)
    if not any(flags):
        return Held(text)
    runs: list[tuple[int, int]] = []  # [start, end) of each held run
    for i, held in enumerate(flags):
        if held and (i == 0 or not flags[i - 1]):
            runs.append((i, i + 1))
        elif held:
            runs[-1] = (runs[-1][0], i + 1)
    known = [i for i, (ch, held) in enumerate(zip(text, flags)) if not held and not ch.isspace()]
    first, last = (known[0], known[-1]) if known else (len(text), -1)
    prefix = tuple(text[a:b] for a, b in runs if b <= first)
    tail = tuple(text[a:b] for a, b in runs if a > last and b > first)
    inner = tuple(text[a:b] for a, b in runs if first < a < last)
    return Held(_without(text, runs), prefix, inner, tail)


def _without(text: str, runs: list[tuple[int, int]]) -> str:
    """``text`` less the ``runs``: each run's gap closes to nothing before punctuation, else to one space; the
    spacing elsewhere is the text's own (".NET", "Quoi ?" stay as written)."""
    out = text[: runs[0][0]]
    for (_, end), start in zip(runs, [a for a, _ in runs[1:]] + [len(text)]):  # the text after each run
        piece = text[end:start].lstrip()
        out = out.rstrip() + ("" if piece[:1] and piece[0] in _CLOSE_UP else " ") + piece
    return " ".join(out.split())


def put_back(translation: str, held: Held) -> str:
    """The translation of ``held.text`` with the held-out symbols where they belong."""
    if not (held.prefix or held.inner or held.tail):
        return translation
    if not translation:
        return held.symbols
    out = translation
    if held.inner:
        end = _FINAL_PUNCT.search(out)
        cut = end.start() if end else len(out)
        out = f"{out[:cut]} {' '.join(held.inner)}{out[cut:]}"
    if held.prefix:
        out = f"{' '.join(held.prefix)} {out}"
    if held.tail:
        out = f"{out} {' '.join(held.tail)}"
    return out
