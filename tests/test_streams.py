"""Decoding several batches at once (``streams``): same output as one batch after another, threads shared."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch
from conftest import call_main, symbol_lines

import seqformer.translator as translator_module
from seqformer.config import DecodeConfig
from seqformer.errors import ConfigError
from seqformer.translator import Translator

TEXTS = [" ".join(words) for words in symbol_lines(30, seed=41, lo=1, hi=9)]


def outcome(nbest_lists) -> list:
    return [[(h.text, h.score, h.tokens, h.attention) for h in nbest] for nbest in nbest_lists]


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("quantize", [None, "int8"])
@pytest.mark.parametrize("options", [dict(beam_size=1), dict(beam_size=3, nbest=2),
                                     dict(sampling=True, top_k=5, seed=7)], ids=["greedy", "beam", "sampling"])
def test_streams_translate_exactly_as_one_stream(model_dir, options, quantize):
    attention = "sampling" not in options  # attention rows must follow their own sentences too
    translator = Translator.load(model_dir, quantize=quantize)  # fresh: the streams make the output copy first
    with torch_threads(3):  # each of the 3 streams gets 1 thread, as the single stream below
        three = translator.translate_nbest(TEXTS, batch_size=4, streams=3, need_attention=attention, **options)
    one = translator.translate_nbest(TEXTS, batch_size=4, need_attention=attention, **options)
    assert outcome(three) == outcome(one)  # equal, not close: each batch is decoded alone, on one thread
    assert len({n[0].text for n in one}) >= 10  # not vacuous: many different outputs that could be swapped


def stream_threads(monkeypatch) -> list[tuple[str, int]]:
    """(thread name, PyTorch threads) of every batch decoded from now on."""
    seen: list[tuple[str, int]] = []
    real = translator_module.generate

    def recording(*args, **kwargs):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return real(*args, **kwargs)

    monkeypatch.setattr(translator_module, "generate", recording)
    return seen


def test_streams_share_the_threads_and_give_them_back(model_dir, monkeypatch):
    seen = stream_threads(monkeypatch)
    translator = Translator.load(model_dir)
    with torch_threads(2):
        translator.translate(TEXTS, batch_size=3, streams=2)
        assert torch.get_num_threads() == 2
        translator.translate(TEXTS[:12], batch_size=3, streams=5)  # more streams than threads: one per thread
        assert torch.get_num_threads() == 2
    assert len(seen) == 14  # 30 sentences in batches of 3, then 12
    assert {threads for _, threads in seen} == {1}  # each of the 2 streams got 1 of the 2 threads
    names = {name for name, _ in seen}
    assert len(names) == 2 and all(name.startswith("seqformer-stream") for name in names)


def test_a_failing_batch_fails_the_call_and_restores_the_threads(model_dir, monkeypatch):
    calls = []
    real = translator_module.generate

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("batch 3 failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(translator_module, "generate", failing)
    translator = Translator.load(model_dir)
    with torch_threads(2):
        with pytest.raises(RuntimeError, match="batch 3 failed"):
            translator.translate(TEXTS, batch_size=2, streams=2)
        assert torch.get_num_threads() == 2
    assert len(calls) < 15  # batches not yet started when it failed were dropped


def test_streams_must_be_positive():
    with pytest.raises(ConfigError, match="streams must be >= 1, found 0"):
        DecodeConfig(streams=0)


def test_translate_input_file_with_streams(model_dir, tmp_path, capsys, monkeypatch):
    lines = TEXTS + ["", "a b"]  # 32 lines, batches of 1: two chunks of 16 batches
    (tmp_path / "in.txt").write_text("".join(x + "\n" for x in lines))
    seen = stream_threads(monkeypatch)
    with torch_threads(2):
        rc = call_main("translate", "--model", model_dir, "--input", tmp_path / "in.txt", "--batch-size", "1",
                       "--streams", "2", "--beam-size", "2")
    assert rc == 0
    assert len({name for name, _ in seen}) == 2  # --streams reached the translator: batches on 2 threads
    expected = Translator.load(model_dir).translate(lines, batch_size=1, beam_size=2)
    assert capsys.readouterr().out == "".join(t + "\n" for t in expected)
