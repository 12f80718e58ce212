"""The Python API for translation: ``Translator.load(model_dir).translate([...])``."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from seqformer.config import DecodeConfig, beam_given_with_sampling
from seqformer.data.batching import encode_source, pad
from seqformer.decoding import Hypothesis, generate
from seqformer.errors import ConfigError, DataError
from seqformer.io import ModelDir, import_state, load_weights, read_model_dir
from seqformer.model.packed import pack_linears
from seqformer.model.transformer import Seq2SeqTransformer
from seqformer.passthrough import Held, hold_out, put_back
from seqformer.segment import join_pieces, split_sentences
from seqformer.threads import split_threads

_WARNING_SINK: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("warning_sink", default=None)


@contextlib.contextmanager
def warnings_to(sink: Callable[[str], None]) -> Iterator[None]:
    """Within this block (on this thread), the translator's warnings about its input go to ``sink`` instead of
    ``warnings.warn``. A server wants this: Python keeps every distinct warning text (these quote the input)
    in a registry for the life of the process."""
    token = _WARNING_SINK.set(sink)
    try:
        yield
    finally:
        _WARNING_SINK.reset(token)


def _warn(message: str, stacklevel: int) -> None:
    sink = _WARNING_SINK.get()
    if sink is not None:
        sink(message)
    else:
        warnings.warn(message, stacklevel=stacklevel + 1)


@dataclass
class Translation:
    """One hypothesis: detokenised text, its score and (on request) cross-attention."""

    text: str
    score: float
    logprob: float
    tokens: list[str]
    attention: list[list[float]] | None = None  # (T, S), averaged over layers and heads
    src_tokens: list[str] | None = None
    head_attention: list | None = None  # (L, H, T, S) per layer and head, only with per_head=True


def _restore(nbest: list[Translation], held: Held) -> list[Translation]:
    """Put a sentence's held-out symbols back into each of its hypotheses."""
    if not nbest and held.symbols:  # nothing but symbols: they are the translation
        return [Translation(text=held.symbols, score=0.0, logprob=0.0, tokens=[])]
    return [replace(t, text=put_back(t.text, held)) for t in nbest]


def default_model_dir() -> Path:
    """The English->French model shipped inside the package."""
    return Path(__file__).parent / "models" / "en-fr"


class Translator:
    """A loaded model directory ready to translate batches of sentences."""

    def __init__(self, model: Seq2SeqTransformer, model_dir: ModelDir) -> None:
        self.model = model.eval()
        self.dir = model_dir
        self.tokenizer = model_dir.tokenizer
        self.max_src_len = model.cfg.max_positions
        self._src_unknown = functools.lru_cache(maxsize=4096)(self.tokenizer.src_unknown)
        self._lang_tags: frozenset[str] | None = None  # the vocabulary's >>xx<< tags, found at the first tag given

    @classmethod
    def load(cls, path: str | Path | None = None, quantize: str | None = None) -> Translator:
        """Load a model directory (the bundled model when ``path`` is None).

        A Hugging Face Marian / OPUS-MT directory is converted in memory (see :mod:`seqformer.marian`).
        fp32 linear layers are prepacked for oneDNN where PyTorch has it (:mod:`seqformer.model.packed`);
        ``quantize="int8"`` makes them dynamic int8 layers instead.
        """
        from seqformer.marian import is_marian_dir, load_marian

        if quantize not in (None, "none", "int8"):
            raise ConfigError(f"quantize must be None, 'none' or 'int8', found {quantize!r}")
        path = Path(path) if path is not None else default_model_dir()
        if is_marian_dir(path):
            mdir, model = load_marian(path)
        else:
            mdir = read_model_dir(path)
            model = Seq2SeqTransformer(mdir.model_cfg)
            import_state(model, load_weights(mdir.path / "model.safetensors"), str(mdir.path / "model.safetensors"))
        model.eval()
        if quantize == "int8":
            model.untie_output()  # so that the output projection is quantized too
            with warnings.catch_warnings():  # PyTorch >= 2.10 warns that this API moves to torchao; it still works
                warnings.filterwarnings("ignore", message=r"(?s).*torch\.ao\.quantization is deprecated")
                warnings.filterwarnings("ignore", message=r"(?s).*quantized tensor creation functions")
                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        else:
            pack_linears(model)  # nothing where PyTorch has no oneDNN
            model.fast_output()
        return cls(model, mdir)

    def translate(self, texts: list[str], **options: Any) -> list[str]:
        """Best translation of each text. Options are :class:`DecodeConfig` fields (beam_size, ...)."""
        return [nbest[0].text if nbest else "" for nbest in self.translate_nbest(texts, **options)]

    def translate_nbest(self, texts: list[str], need_attention: bool = False, split: bool = True,
                        per_head: bool = False, **options: Any) -> list[list[Translation]]:
        """n-best translations with scores for each text; empty input gives an empty result.

        With ``split`` (default), a text of several sentences is translated sentence by
        sentence and the best translations joined, so long input is translated piecewise (only a
        single sentence longer than the model's positions is cut, with a warning). Input the
        tokenizer turns into no subwords at all (zero-width or direction marks) gives empty output.
        Symbols the source vocabulary cannot spell (emoji, ...) bypass the model and are copied
        into the translation (:mod:`seqformer.passthrough`).
        With ``need_attention`` and ``per_head``, hypotheses also carry per-layer, per-head weights.
        """
        if isinstance(texts, str):  # iterating it would translate each character on its own
            raise TypeError("texts must be a list of strings: translate([text]), not translate(text)")
        texts = list(texts)  # a generator would be used up by the first pass
        clash = beam_given_with_sampling(options, default_unsaid=True)  # **asdict(DecodeConfig(sampling=True)) is fine
        if clash:
            raise ConfigError(clash)
        cfg = DecodeConfig(**options)
        pieces: list[str] = []
        held: list[Held] = []
        owner: list[int] = []
        tags: set[str] = set()
        for i, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:  # a lone surrogate: SentencePiece would fail with a raw traceback
                raise DataError(f"text {i + 1}: not valid Unicode (a lone surrogate at character {err.start + 1})") from None
            tag, body = self.tokenizer.split_lang_tag(text.strip())  # ('', text) unless the model uses >>xx<< tags
            if tag:
                tags.add(tag)
            for part in split_sentences(body) if split else [body.strip()]:
                h = hold_out(part, self._src_unknown)
                pieces.append(f"{tag} {h.text}" if tag and h.text else h.text)  # each sentence keeps the tag
                held.append(h)
                owner.append(i)
        self._warn_unknown_tags(tags)
        if cfg.nbest > 1 or need_attention:
            split_texts = sum(1 for n in Counter(owner).values() if n > 1)
            if split_texts:
                _warn(f"{split_texts} text(s) of several sentences get one joined translation, without "
                      "an n-best list or attention (split=False / --no-split keeps a text whole)", stacklevel=2)
        results = self._translate_segments(pieces, cfg, need_attention, per_head)
        grouped: list[list[list[Translation]]] = [[] for _ in texts]
        for i, res, h in zip(owner, results, held):
            grouped[i].append(_restore(res, h))
        return [join_pieces(g) for g in grouped]

    def _translate_segments(self, texts: list[str], cfg: DecodeConfig, need_attention: bool,
                            per_head: bool = False) -> list[list[Translation]]:
        ids = self.tokenizer.encode_src(texts)
        eos = self.model.cfg.eos_id
        self._warn_unknown(texts, ids)
        for t, seq in zip(texts, ids):
            if len(seq) + 1 > self.max_src_len:
                _warn(f"input of {len(seq)} subwords truncated to {self.max_src_len - 1}: {t[:40]!r}...",
                      stacklevel=3)
        src = [encode_source(seq, eos, self.max_src_len) for seq in ids]
        # subwords besides a language tag: none (SentencePiece drops zero-width and direction marks) would
        # leave the model a bare </s> to invent a sentence from
        content = [len(seq) - bool(self.tokenizer.split_lang_tag(t)[0]) for t, seq in zip(texts, ids)]
        order = sorted(range(len(texts)), key=lambda i: -len(src[i]))
        chunks = [[i for i in order[start : start + cfg.batch_size] if content[i] > 0]
                  for start in range(0, len(order), cfg.batch_size)]
        chunks = [chunk for chunk in chunks if chunk]
        out: list[list[Translation]] = [[] for _ in texts]
        decoded = self._decode_batches([[src[i] for i in chunk] for chunk in chunks], cfg, need_attention)
        with contextlib.closing(decoded):  # an error here stops the streams at once
            for chunk, hyps in zip(chunks, decoded):
                for i, nbest in zip(chunk, hyps):
                    out[i] = [self._to_translation(h, src[i], need_attention, per_head) for h in nbest]
        return out

    def _decode_batches(self, batches: list[list[list[int]]], cfg: DecodeConfig,
                        need_attention: bool) -> Iterator[list[list[Hypothesis]]]:
        """Each batch's n-best hypotheses, in order, as they are ready: one batch after another, or
        ``cfg.streams`` at a time (at most one per CPU thread) on as many threads sharing PyTorch's CPU
        threads. Batches do not interact and seeded sampling draws from per-sentence generators, so the
        hypotheses are those of one stream, up to the rounding of products split over fewer threads."""
        pad_id = self.model.cfg.pad_id

        def decode(seqs: list[list[int]]) -> list[list[Hypothesis]]:
            batch = pad(seqs, pad_id)  # (B, S)
            return generate(self.model, batch, batch.eq(pad_id), cfg, need_attention)

        streams = min(cfg.streams, len(batches), torch.get_num_threads())
        if streams <= 1:
            yield from map(decode, batches)
            return
        with split_threads(streams):  # restored once the pool has stopped
            pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="seqformer-stream")
            try:
                yield from pool.map(decode, batches)  # the pool hands each free thread the next batch
            finally:
                pool.shutdown(cancel_futures=True)  # after an error, batches not yet started are dropped

    def _warn_unknown_tags(self, tags: set[str]) -> None:
        """One warning per call naming the language tags the model does not know: they reach it as <unk>, and it
        chooses the target language itself (a typo, a two-letter tag for a three-letter model, a single-target model)."""
        if not tags:
            return
        if self._lang_tags is None:  # threads translating at once may each look them up: the same set
            self._lang_tags = frozenset(self.tokenizer.known_lang_tags())
        known, unknown = sorted(self._lang_tags), sorted(tags - self._lang_tags)
        if unknown:
            have = f"its tags: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''}" if known else "it has none"
            _warn(f"language tag(s) {', '.join(unknown)} not in the model's vocabulary ({have}): they reach "
                  "it as <unk> and it picks the target language itself", stacklevel=3)

    def _warn_unknown(self, texts: list[str], ids: list[list[int]]) -> None:
        """One warning per call naming the characters that reach the model as <unk> (and so are lost)."""
        unk = self.tokenizer.src_unk_id  # not the model's (target) unk id: a Marian source vocabulary has its own
        lost = {ch for t, seq in zip(texts, ids) if unk in seq for ch in t if not ch.isspace() and self._src_unknown(ch)}
        if lost:
            shown = "".join(sorted(lost)[:20]) + ("..." if len(lost) > 20 else "")
            _warn(f"{len(lost)} character(s) outside the model's vocabulary reach it as <unk> "
                  f"and will be missing from the translation: {shown}", stacklevel=4)

    def _to_translation(self, hyp: Hypothesis, src_ids: list[int], need_attention: bool,
                        per_head: bool = False) -> Translation:
        tok = self.tokenizer
        attention = heads = None
        if need_attention and hyp.attention is not None:
            attention = hyp.attention.float().mean(dim=(0, 1))[:, : len(src_ids)].tolist()  # (T, S)
            heads = hyp.attention.float()[..., : len(src_ids)].tolist() if per_head else None  # (L, H, T, S)
        return Translation(
            text=tok.decode_tgt([hyp.tokens])[0],
            score=hyp.score,
            logprob=hyp.logprob,
            tokens=tok.tgt_pieces(hyp.tokens),
            attention=attention,
            src_tokens=tok.src_id_pieces(src_ids) if need_attention else None,
            head_attention=heads,
        )

    def with_options(self, **options: Any) -> DecodeConfig:
        return replace(DecodeConfig(), **options)
