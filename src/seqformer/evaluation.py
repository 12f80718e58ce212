"""sacreBLEU BLEU and chrF, with signatures, for one or several references per sentence."""

from __future__ import annotations

from typing import Any

from sacrebleu.metrics import BLEU, CHRF

# Targets written without spaces between words, whose BLEU 13a would count clause by clause (near 0):
# Chinese gets sacreBLEU's own "zh" tokenizer; Japanese and Korean characters ("char"), since sacreBLEU's
# MeCab tokenizers need packages and dictionaries seqformer does not install.
_UNSPACED = {"zh": "zh", "zho": "zh", "chi": "zh", "cmn": "zh", "yue": "zh", "ja": "char", "jpn": "char",
             "ko": "char", "kor": "char"}


def bleu_tokenizer(tgt_lang: str) -> str:
    """sacreBLEU's tokenizer for a target language code ("zh", "zho_Hans", "ja-JP", ...): 13a unless unspaced."""
    base = tgt_lang.replace("-", "_").split("_")[0].lower()
    return _UNSPACED.get(base, BLEU.TOKENIZER_DEFAULT)


def score(hyps: list[str], refs: list[list[str]], tokenize: str | None = None, tgt_lang: str = "") -> dict[str, Any]:
    """Corpus BLEU and chrF. ``refs`` is a list of reference streams, each aligned with ``hyps``;
    a None entry in a stream means that sentence has fewer references. BLEU tokenizes with ``tokenize``
    (one of sacreBLEU's), else as :func:`bleu_tokenizer` says for ``tgt_lang``."""
    bleu, chrf = BLEU(tokenize=tokenize or bleu_tokenizer(tgt_lang)), CHRF()
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
