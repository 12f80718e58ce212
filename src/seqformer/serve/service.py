"""From a request body to model options and back: what runs on the model thread."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from seqformer.config import DecodeConfig, beam_given_with_sampling, sampling_options_given
from seqformer.segment import split_sentences
from seqformer.serve.limits import FieldError
from seqformer.translator import Translation, Translator, warnings_to

log = logging.getLogger("seqformer.serve")


@dataclass(frozen=True)
class Options:
    """Everything that must be equal for two requests to share a model call."""

    decode: DecodeConfig
    attention: bool = False
    heads: bool = False
    split: bool = True


def texts_of(req: Any) -> list[str]:
    """The request's texts: exactly one of ``text`` and ``texts`` must be given."""
    if (req.text is None) == (req.texts is None):
        raise FieldError("text", "give exactly one of 'text' (a string) or 'texts' (a list of strings)")
    return [req.text] if req.text is not None else list(req.texts)


def options_of(req: Any, batch_size: int, max_attention: int = 8) -> Options:
    """The request's model options; ``max_attention``: the most hypotheses a request may ask attention for."""
    if req.attention_heads and req.texts is not None and len(req.texts) > 1:
        # (layers x heads x target x source) numbers per hypothesis: a full batch of them could be gigabytes
        raise FieldError("attention_heads", "per-head attention is given for one text at a time, "
                                            f"found {len(req.texts)} texts")
    hyps = len(texts_of(req)) * req.nbest
    if req.attention and hyps > max_attention:  # a (target x source) matrix each: 32 x 8 of them could be ~100 MB
        raise FieldError("attention", f"attention is given for at most {max_attention} hypotheses per request "
                                      f"(texts x nbest), found {hyps}")
    given = [] if req.sampling else sampling_options_given(req)  # they would be ignored by beam search
    if given:
        raise FieldError(given[0], f"{given[0]} only applies with sampling: true")
    clash = beam_given_with_sampling({k: getattr(req, k) for k in req.model_fields_set})
    if clash:
        raise FieldError("beam_size", clash)
    if not req.sampling and req.nbest > req.beam_size:
        raise FieldError("nbest", f"nbest ({req.nbest}) cannot exceed beam_size ({req.beam_size}) without sampling")
    decode = DecodeConfig(beam_size=1 if req.sampling else req.beam_size, nbest=req.nbest, length_penalty=req.length_penalty,
                          sampling=req.sampling, temperature=req.temperature, top_k=req.top_k, top_p=req.top_p,
                          batch_size=batch_size, seed=req.seed if req.sampling else None)
    return Options(decode, attention=req.attention or req.attention_heads, heads=req.attention_heads, split=req.split)


def model_inputs(texts: list[str], opts: Options) -> int:
    """How many sentences the model will translate for ``texts`` (a text of 1,000 characters may be 250 short
    sentences)."""
    return sum(len(split_sentences(t)) for t in texts) if opts.split else len(texts)


def request_cost(texts: list[str], opts: Options, max_batch: int, max_queue: int) -> int:
    """What a request costs in the queue and in a batch: the sentences the model translates; with attention, at
    least its hypotheses (a matrix each to return); with per-head attention, a whole batch (or the whole queue,
    if that is smaller), so it runs alone (requests that pass the per-request limits one by one would otherwise
    meet in one model call: gigabytes)."""
    units = model_inputs(texts, opts)
    if opts.heads:
        return max(units, min(max_batch, max_queue))
    if opts.attention:
        return max(units, len(texts) * opts.decode.nbest)
    return units


def translate_batch(translator: Translator, texts: list[str], opts: Options) -> list[list[dict]]:
    """Run on the model thread: n-best lists of JSON-ready hypotheses, one list per text. Warnings about the
    input (they quote it) are logged: as Python warnings, each distinct text would be kept for the server's life."""
    with warnings_to(log.warning):
        results = translator.translate_nbest(texts, need_attention=opts.attention, split=opts.split,
                                             per_head=opts.heads, **asdict(opts.decode))
    return [[_hypothesis(t, opts) for t in nbest] for nbest in results]


def _hypothesis(t: Translation, opts: Options) -> dict:
    out: dict[str, Any] = {"text": t.text, "score": t.score, "logprob": t.logprob, "tokens": t.tokens}
    if opts.attention:
        out["attention"], out["src_tokens"] = t.attention, t.src_tokens
    if opts.heads and t.head_attention is not None:
        out["head_attention"] = [[[[round(x, 4) for x in row] for row in head] for head in layer]
                                 for layer in t.head_attention]  # (L, H, T, S)
    return out
