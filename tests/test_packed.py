"""Prepacked (oneDNN) fp32 linear layers: the same function as the layers they replace."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from conftest import random_ids, src_batch, tiny_model, write_model_dir
from test_model import VARIANT_IDS, VARIANTS

import seqformer.model.packed as packed_mod
import seqformer.model.transformer as transformer_mod
from seqformer.config import DecodeConfig
from seqformer.decoding import generate
from seqformer.io import export_state, import_state
from seqformer.model.packed import PackedLinear, pack_linears, packing_available
from seqformer.translator import Translator

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")


@needs_onednn
def test_packing_works_wherever_pytorch_has_onednn():
    assert packing_available()  # its self-check passed: a broken path would fail here, not skip every test


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@torch.no_grad()
def test_packed_linear_computes_and_saves_like_linear(bias):
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 5, bias=bias)
    packed = PackedLinear(lin.weight, lin.bias).eval()
    for x in (torch.randn(6, 8), torch.randn(4, 3, 8).transpose(0, 1)):  # 2-D, and 3-D non-contiguous
        torch.testing.assert_close(packed(x), F.linear(x, lin.weight, lin.bias), atol=1e-6, rtol=1e-5)
    plain, saved = lin.state_dict(), packed.state_dict()
    assert list(saved) == list(plain) and all(torch.equal(saved[k], plain[k]) for k in plain)

    x = torch.randn(6, 8)  # (N, in)
    buffer = io.BytesIO()
    torch.save(packed, buffer)  # copies and pickles carry the weight (the oneDNN tensor itself cannot be copied)
    for twin in (copy.deepcopy(packed), torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)):
        assert torch.equal(twin(x), packed(x))

    other = torch.nn.Linear(8, 5, bias=bias)  # new weights loaded into the packed layer are used
    packed.load_state_dict(other.state_dict())
    torch.testing.assert_close(packed(x), other(x), atol=1e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="size mismatch for weight"):
        packed.load_state_dict(torch.nn.Linear(8, 4, bias=bias).state_dict())
    with pytest.raises(RuntimeError, match="Missing key" if bias else "Unexpected key"):
        packed.load_state_dict(torch.nn.Linear(8, 5, bias=not bias).state_dict())
    torch.testing.assert_close(packed(x), other(x), atol=1e-6, rtol=1e-5)  # a refused load changes nothing


@needs_onednn
def test_packed_layers_are_for_inference_only():
    model = tiny_model(seed=1)
    with pytest.raises(ValueError, match="training mode"):
        pack_linears(model.train())
    layer = PackedLinear(torch.randn(3, 4)).train()
    with pytest.raises(RuntimeError, match="for inference"):
        layer(torch.randn(2, 4))
    # weights written into a packed model's state_dict() values would be lost: importing is refused
    pack_linears(model.eval())
    with pytest.raises(ValueError, match="packed"):
        import_state(model, export_state(tiny_model(seed=2)), "other.safetensors")


def test_probing_for_onednn_leaves_the_random_stream_alone():
    torch.manual_seed(0)
    want = torch.rand(3)
    packing_available.cache_clear()
    torch.manual_seed(0)
    packing_available()
    assert torch.equal(torch.rand(3), want)


@needs_onednn
@pytest.mark.parametrize("tie_output", [True, False])
@torch.no_grad()
def test_translator_load_packs_every_linear_layer_and_the_output(tmp_path, spm_file, tokenizer, tie_output):
    vocab = tokenizer.src.get_piece_size()
    model = tiny_model(seed=9, src_vocab_size=vocab, tgt_vocab_size=vocab, tie_output=tie_output)
    n_linear = sum(type(m) is torch.nn.Linear for m in model.modules())
    loaded = Translator.load(write_model_dir(tmp_path / "m", model, spm_file)).model
    assert not any(type(m) is torch.nn.Linear for m in loaded.modules())
    assert sum(isinstance(m, PackedLinear) for m in loaded.modules()) == n_linear
    direct = Translator(model, Translator.load(tmp_path / "m").dir)
    texts = ["a b c", "d e f g h", "i j"]
    assert Translator(loaded, direct.dir).translate(texts, beam_size=3) == direct.translate(texts, beam_size=3)
    copy_ = loaded._output_copy  # the tied output weight's copy is packed too; an own output layer is used as is
    assert isinstance(copy_[1], PackedLinear) if tie_output else copy_ is None


@needs_onednn
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@torch.no_grad()
def test_a_packed_model_decodes_like_the_plain_one(variant):
    plain = tiny_model(seed=3, **variant)
    packed = copy.deepcopy(plain)
    packed.fast_output()  # as Translator.load does
    n_linear = sum(type(m) is torch.nn.Linear for m in plain.modules())
    assert pack_linears(packed) == n_linear > 0
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == n_linear
    saved, ref = packed.state_dict(), plain.state_dict()  # saves and compares like the plain model
    assert list(saved) == list(ref) and all(torch.equal(saved[k], ref[k]) for k in ref)

    src, mask = src_batch(random_ids([5, 3, 7], plain.cfg.src_vocab_size, seed=4))
    tgt = torch.tensor(random_ids([6, 6, 6], plain.cfg.tgt_vocab_size, seed=5))  # (B, T)
    tgt[:, 0] = plain.cfg.decoder_start_id
    full = packed(src, mask, tgt)  # (B, T, V)
    torch.testing.assert_close(full, plain(src, mask, tgt), atol=1e-5, rtol=1e-5)
    memory, cache = packed.encode(src, mask), packed.new_cache()  # cached decoding still equals the full forward
    for t in range(tgt.size(1)):
        lp, _ = packed.decode_step(tgt[:, t : t + 1], memory, mask, cache)  # (B, V)
        torch.testing.assert_close(lp, full[:, t].log_softmax(-1), atol=1e-5, rtol=1e-5)
    for cfg in (DecodeConfig(beam_size=1), DecodeConfig(beam_size=4, nbest=2)):
        want, got = generate(plain, src, mask, cfg), generate(packed, src, mask, cfg)
        assert [[h.tokens for h in n] for n in got] == [[h.tokens for h in n] for n in want]
    # a packed output layer is used as it is; a tied one gets one packed copy (not one per step)
    copy_ = packed._output_copy
    assert copy_ is None if packed.output is not None else isinstance(copy_[1], PackedLinear)


@needs_onednn
@torch.no_grad()
def test_a_packed_model_casts_like_the_plain_one():
    plain = tiny_model(seed=6)
    packed = copy.deepcopy(plain)
    packed.fast_output()
    n_linear = pack_linears(packed)
    src, mask = src_batch(random_ids([5, 3, 7], plain.cfg.src_vocab_size, seed=7))
    tgt = torch.tensor(random_ids([6, 6, 6], plain.cfg.tgt_vocab_size, seed=8))  # (B, T)
    tgt[:, 0] = plain.cfg.decoder_start_id
    layers = [m for m in packed.modules() if isinstance(m, PackedLinear)]

    # was: .double() left the packed layers in fp32 and the forward failed on float64 inputs
    torch.testing.assert_close(packed.double()(src, mask, tgt), plain.double()(src, mask, tgt), atol=1e-12, rtol=0)
    assert all(m.packed is None and m.plain.dtype == torch.float64 for m in layers)
    out = packed.to(torch.bfloat16)(src, mask, tgt)  # (B, T, V)
    assert out.dtype == torch.bfloat16 and all(m.weight.dtype == torch.bfloat16 for m in layers)
    torch.testing.assert_close(out, plain.to(torch.bfloat16)(src, mask, tgt), atol=0.05, rtol=0.02)

    packed.float(), plain.float()  # back to fp32 on the CPU: packed again, the same function as the plain layers
    assert len(layers) == n_linear and all(m.packed is not None and m.plain is None for m in layers)
    torch.testing.assert_close(packed(src, mask, tgt), plain(src, mask, tgt), atol=1e-5, rtol=1e-5)
    saved, ref = packed.state_dict(), plain.state_dict()  # the bf16 round trip rounded both alike
    assert all(torch.equal(saved[k], ref[k]) for k in ref)


@needs_onednn
@torch.no_grad()
def test_a_cast_packed_layer_loads_copies_and_pickles_in_its_dtype():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 5)
    layer = PackedLinear(lin.weight, lin.bias).eval().double()
    layer.load_state_dict(torch.nn.Linear(8, 5).state_dict())  # fp32 values copied into the layer's float64
    assert layer.packed is None and layer.weight.dtype == layer.bias.dtype == torch.float64
    x = torch.randn(3, 8, dtype=torch.float64)
    for other in (copy.deepcopy(layer), torch.load(_pickled(layer), weights_only=False)):
        assert other.weight.dtype == torch.float64 and torch.equal(other(x), layer(x))


def _pickled(module) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(module, buf)
    buf.seek(0)
    return buf


def _assert_fast_output_is_a_transposed_copy(model, **fast_output_options) -> None:
    """fast_output(**options) gives the plain logits through a (D, V) tensor copy, not a packed one."""
    src, mask = src_batch(random_ids([4, 2], model.cfg.src_vocab_size, seed=7))
    tgt = torch.tensor(random_ids([5, 5], model.cfg.tgt_vocab_size, seed=8))  # (B, T)
    plain = model(src, mask, tgt)  # (B, T, V)
    model.fast_output(**fast_output_options)
    torch.testing.assert_close(model(src, mask, tgt), plain, atol=1e-6, rtol=1e-6)
    copy_ = model._output_copy[1]
    assert isinstance(copy_, torch.Tensor) and copy_.shape == (model.cfg.d_model, model.cfg.tgt_vocab_size)


@torch.no_grad()
def test_the_output_copy_is_transposed_when_packing_is_declined():
    # decided when asked, not at the first projection (benchmarks rely on it)
    _assert_fast_output_is_a_transposed_copy(tiny_model(seed=6), pack=False)


@torch.no_grad()
def test_without_onednn_nothing_is_packed_and_the_output_copy_is_transposed(monkeypatch):
    monkeypatch.setattr(packed_mod, "packing_available", lambda: False)
    monkeypatch.setattr(transformer_mod, "packing_available", lambda: False)
    model = tiny_model(seed=6)
    before = [type(m) for m in model.modules()]
    assert pack_linears(model) == 0 and [type(m) for m in model.modules()] == before
    _assert_fast_output_is_a_transposed_copy(model)
