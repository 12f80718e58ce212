"""Request and response bodies. The request model is built per app, so its bounds
(and the OpenAPI schema) follow the configured limits."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from seqformer.config import MIN_TEMPERATURE, DecodeConfig
from seqformer.serve.settings import ServeConfig

MAX_TEMPERATURE = 10.0
MAX_LENGTH_PENALTY = 5.0


def request_model(cfg: ServeConfig, vocab_size: int) -> type[BaseModel]:
    """The body of ``POST /translate``: one ``text`` or a list of ``texts``, plus decoding options."""
    text = Annotated[str, StringConstraints(max_length=cfg.max_chars)]
    d = DecodeConfig()
    fields: dict[str, Any] = dict(
        text=(text | None, Field(None, description="one text to translate (or use 'texts')")),
        texts=(list[text] | None, Field(None, min_length=1, max_length=cfg.max_texts,
                                        description="several texts, translated together")),
        beam_size=(int, Field(min(d.beam_size, cfg.max_beam_size), ge=1, le=cfg.max_beam_size,
                              description="1 = greedy")),
        nbest=(int, Field(1, ge=1, le=cfg.max_nbest, description="alternatives per text (<= beam_size unless sampling)")),
        sampling=(bool, Field(False, description="sample: nbest samples per text, no beam (leave beam_size out)")),
        temperature=(float, Field(d.temperature, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE, allow_inf_nan=False)),
        top_k=(int, Field(d.top_k, ge=0, le=vocab_size, description="0 = no top-k filter")),
        top_p=(float, Field(d.top_p, gt=0, le=1, allow_inf_nan=False)),
        length_penalty=(float, Field(d.length_penalty, ge=0, le=MAX_LENGTH_PENALTY, allow_inf_nan=False)),
        seed=(int | None, Field(None, ge=0, le=2**31 - 1, description=(
            "sampling seed: a sentence samples the same again with the same seed and options, whatever "
            "other texts or requests it is batched with (int8 models: up to the batch's shared "
            "activation scale)"))),
        split=(bool, Field(True, description="translate multi-sentence text sentence by sentence")),
        attention=(bool, Field(False, description="include cross-attention (averaged) and subword tokens")),
        attention_heads=(bool, Field(False, description="also include per-layer, per-head attention (L, H, T, S)")),
    )
    # strict: "4" for beam_size, 1 for attention or 2.0 for nbest are 422s naming the field, as the config files'
    # loader refuses them (lax mode coerced them silently); an integer still fits a number field
    return create_model("TranslateRequest", __config__=ConfigDict(extra="forbid", strict=True), **fields)


class Hypothesis(BaseModel):
    text: str
    score: float = Field(description="length-normalised log-probability used for ranking")
    logprob: float
    tokens: list[str] = Field(description="target subwords (the end token is not listed)")
    attention: list[list[float]] | None = Field(
        None, description="(T, S) cross-attention averaged over layers and heads; row T-1 is the end token")
    src_tokens: list[str] | None = None
    head_attention: list[list[list[list[float]]]] | None = Field(
        None, description="(L, H, T, S) per layer and head, rounded to 4 decimals")


class Result(BaseModel):
    input: str
    translations: list[Hypothesis] = Field(description="n-best, best first; empty for empty input")


class TranslateResponse(BaseModel):
    results: list[Result]


class ErrorBody(BaseModel):
    error: str
    field: str | None = Field(None, description="the request field at fault, when there is one")
