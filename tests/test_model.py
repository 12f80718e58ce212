"""Model oracles: cached == uncached, padding never matters, the future never changes the past,
and the SDPA path equals both the written-out path and a per-query loop."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import random_ids, set_attention_impl, src_batch, tiny_config, tiny_model

from seqformer.model.attention import MultiHeadAttention
from seqformer.model.transformer import Seq2SeqTransformer

VARIANTS = [
    dict(pre_norm=False, positional="sinusoidal"),
    dict(pre_norm=True, positional="sinusoidal", sinusoid_layout="split", activation="gelu"),
    dict(pre_norm=False, positional="learned", share_embeddings=False, tie_output=False, final_logits_bias=True),
    dict(pre_norm=True, positional="learned"),
]
VARIANT_IDS = ["post-sin", "pre-sin-split", "post-learned-untied", "pre-learned"]


def _inputs(model, src_lengths=(5, 3, 7), tgt_len=6, seed=0):
    cfg = model.cfg
    src, mask = src_batch(random_ids(list(src_lengths), cfg.src_vocab_size, seed))
    tgt = torch.tensor(random_ids([tgt_len] * len(src_lengths), cfg.tgt_vocab_size, seed + 1))
    tgt[:, 0] = cfg.decoder_start_id
    return src, mask, tgt  # (B, S), (B, S), (B, T)


@pytest.mark.parametrize("impl", ["math", "sdpa"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@torch.no_grad()
def test_cached_decoding_equals_full_forward(variant, impl):
    model = tiny_model(seed=1, **variant)
    set_attention_impl(model, impl)
    src, mask, tgt = _inputs(model)
    full = model(src, mask, tgt).log_softmax(dim=-1)  # (B, T, V)
    memory = model.encode(src, mask)
    cache = model.new_cache()
    for t in range(tgt.size(1)):
        lp, _ = model.decode_step(tgt[:, t : t + 1], memory, mask, cache)
        torch.testing.assert_close(lp, full[:, t], atol=1e-5, rtol=1e-5)
    assert cache.step == tgt.size(1)
    assert cache.layers[0].length == tgt.size(1)


@pytest.mark.parametrize("impl", ["math", "sdpa"])
@torch.no_grad()
def test_cache_accepts_several_new_positions(impl):
    """Feeding 3 positions, then 2 at once (T=2 queries over S=5 cached keys), equals the full pass."""
    model = tiny_model(seed=2, pre_norm=True)
    set_attention_impl(model, impl)
    src, mask, tgt = _inputs(model, tgt_len=5)
    memory = model.encode(src, mask)
    full = model.decode(memory, mask, tgt)  # (B, 5, D)
    cache = model.new_cache()
    first, _ = model.decoder(tgt[:, :3], memory, mask, cache)
    second, _ = model.decoder(tgt[:, 3:], memory, mask, cache)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_cache_reorder_follows_rows():
    """After reorder(idx), decoding continues as if the chosen rows' prefixes had been decoded."""
    model = tiny_model(seed=4)
    src, mask, tgt = _inputs(model, src_lengths=(4, 6), tgt_len=4)
    memory = model.encode(src, mask)
    cache = model.new_cache()
    for t in range(3):
        model.decode_step(tgt[:, t : t + 1], memory, mask, cache)
    idx = torch.tensor([1, 1, 0])
    cache.reorder(idx)
    lp, _ = model.decode_step(tgt[idx, 3:4], memory[idx], mask[idx], cache)
    full = model(src[idx], mask[idx], tgt[idx]).log_softmax(dim=-1)[:, 3]
    torch.testing.assert_close(lp, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["math", "sdpa"])
@torch.no_grad()
def test_beam_rows_share_one_memory_row(impl):
    """G decoder rows per sentence over one memory row (how beam search decodes) give the same
    log-probs and cross-attention weights as a memory copied G times, through the cache's growth
    (more steps than its spare capacity) and a reorder that drops a sentence mid-way."""
    from seqformer.decoding.cache import GROW

    model = tiny_model(seed=6)
    set_attention_impl(model, impl)
    g, steps = 3, GROW + 4
    src, mask, tgt = _inputs(model, src_lengths=(5, 3, 7), tgt_len=steps, seed=4)
    tgt = tgt.repeat_interleave(g, 0)  # (N*G, T)
    tgt[1::g, 1:] = tgt.flip(0)[1::g, 1:]  # the rows of a beam differ after the start token
    memory = model.encode(src, mask)  # (N, S, D)
    shared, copied = model.new_cache(), model.new_cache()
    mem_c, mask_c = memory.repeat_interleave(g, 0), mask.repeat_interleave(g, 0)  # (N*G, S, D), (N*G, S)
    rows, sources = torch.arange(tgt.size(0)), torch.arange(memory.size(0))
    for t in range(steps):
        if t == GROW - 2:  # sentence 1 leaves; sentence 0's rows swap places
            sources = torch.tensor([0, 2])
            keep = torch.tensor([1, 0, 2, 6, 7, 8])
            shared.reorder(keep, sources)
            copied.reorder(keep)
            rows, memory, mask, mem_c, mask_c = rows[keep], memory[sources], mask[sources], mem_c[keep], mask_c[keep]
        weights = t % 2 == 0  # with weights cross-attention takes the written-out path, else SDPA's (impl)
        a, wa = model.decode_step(tgt[rows, t : t + 1], memory, mask, shared, need_weights=weights)
        b, wb = model.decode_step(tgt[rows, t : t + 1], mem_c, mask_c, copied, need_weights=weights)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert len(wa) == len(wb) == (len(model.decoder.layers) if weights else 0)
        for x, y in zip(wa, wb):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    full = model(src[[0, 0, 0, 2, 2, 2]], mask_c, tgt[rows]).log_softmax(dim=-1)[:, -1]  # (6, V)
    torch.testing.assert_close(a, full, atol=1e-5, rtol=1e-5)
    assert shared.layers[0].cross_k.size(0) == 2 and copied.layers[0].cross_k.size(0) == 6


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@torch.no_grad()
def test_padding_never_changes_results(variant):
    """A sentence's encoder states and logits are the same alone and batched with longer, padded ones."""
    model = tiny_model(seed=5, **variant)
    src, mask, tgt = _inputs(model, src_lengths=(4, 9, 7), tgt_len=8, seed=3)
    alone_src, alone_mask = src[:1, :4], mask[:1, :4]
    assert not alone_mask.any() and mask[0, 4:].all()
    memory = model.encode(src, mask)
    torch.testing.assert_close(memory[:1, :4], model.encode(alone_src, alone_mask), atol=1e-5, rtol=1e-5)
    # The target of sentence 0 is 5 tokens long; right-pad it to 8 in the batch.
    tgt[0, 5:] = model.cfg.pad_id
    logits = model(src, mask, tgt)
    alone = model(alone_src, alone_mask, tgt[:1, :5])
    torch.testing.assert_close(logits[:1, :5], alone, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padding_is_really_masked():
    """Sanity check for the test above: the padded keys are not ignored by accident elsewhere."""
    model = tiny_model(seed=5)
    src, mask = src_batch([[5, 6, 7, 8, 9]])
    unmasked = model.encode(src[:, :4], torch.zeros(1, 4, dtype=torch.bool))
    extra_key = model.encode(src, mask)[:, :4]  # a 5th real token changes the first four states
    assert not torch.allclose(unmasked, extra_key, atol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@torch.no_grad()
def test_future_never_changes_the_past(variant):
    model = tiny_model(seed=6, **variant)
    src, mask, tgt = _inputs(model, tgt_len=7)
    before = model(src, mask, tgt)
    for j in (1, 4, 6):
        changed = tgt.clone()
        changed[:, j] = (changed[:, j] + 1 - 4) % (model.cfg.tgt_vocab_size - 4) + 4
        after = model(src, mask, changed)
        torch.testing.assert_close(after[:, :j], before[:, :j], atol=1e-6, rtol=1e-6)
        assert not torch.allclose(after[:, j], before[:, j], atol=1e-4)  # position j does see token j


def _loop_attention(q, k, v, key_pad, causal):
    """Attention one query at a time over the keys it may see. q: (B, H, T, Dh), k/v: (B, H, S, Dh)."""
    b, h, t, d = q.shape
    s = k.size(2)
    out = torch.zeros_like(q)
    for bi in range(b):
        for i in range(t):
            keys = [j for j in range(s) if not key_pad[bi, j] and (not causal or j <= s - t + i)]
            for hi in range(h):
                scores = torch.stack([q[bi, hi, i] @ k[bi, hi, j] for j in keys]) / math.sqrt(d)
                out[bi, hi, i] = scores.softmax(0) @ v[bi, hi, keys]
    return out


@pytest.mark.parametrize("causal,t", [(False, 5), (True, 5), (True, 2), (True, 1)])
@torch.no_grad()
def test_attention_paths_match_a_per_query_loop(causal, t):
    """SDPA path == written-out path == a loop, with key padding, causal masks and T != S (a cached step)."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(d_model=16, n_heads=2).eval()
    query, memory = torch.randn(3, t, 16), torch.randn(3, 5, 16)
    key_pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    k, v = mha.project_kv(memory)
    results = {}
    for impl in ("math", "sdpa"):
        mha.impl = impl
        results[impl], _ = mha.attend(query, k, v, key_pad_mask=key_pad, causal=causal)
    expected = _loop_attention(mha.split_heads(mha.q_proj(query)), k, v, key_pad, causal)
    expected = mha.out_proj(expected.transpose(1, 2).reshape(3, t, 16))
    torch.testing.assert_close(results["math"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results["sdpa"], expected, atol=1e-5, rtol=1e-5)
    _, weights = mha.attend(query, k, v, key_pad_mask=key_pad, causal=causal, need_weights=True)
    assert weights.shape == (3, 2, t, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, t))
    assert weights[1, :, :, 3:].eq(0).all()  # padding gets no weight


@pytest.mark.parametrize("pre_norm", [False, True])
@torch.no_grad()
def test_sdpa_model_equals_reference_model(pre_norm):
    """Whole model, both attention implementations: full forward and cached steps agree."""
    model = tiny_model(seed=7, pre_norm=pre_norm)
    src, mask, tgt = _inputs(model)
    outs = {}
    for impl in ("math", "sdpa"):
        set_attention_impl(model, impl)
        memory = model.encode(src, mask)
        cache = model.new_cache()
        steps = [model.decode_step(tgt[:, t : t + 1], memory, mask, cache)[0] for t in range(tgt.size(1))]
        outs[impl] = (model(src, mask, tgt), torch.stack(steps, 1))
    torch.testing.assert_close(outs["sdpa"][0], outs["math"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["sdpa"][1], outs["math"][1], atol=1e-5, rtol=1e-5)


def test_sinusoids_follow_the_paper():
    from seqformer.model.embeddings import sinusoid_table

    table = sinusoid_table(10, 8)
    pos, i = 7, 2  # channel pair i uses frequency 10000^(-2i/d)
    angle = pos / 10000 ** (2 * i / 8)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    split = sinusoid_table(10, 8, "split")
    assert split[pos, i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert split[pos, 4 + i].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_positions_beyond_the_table_are_an_error():
    model = tiny_model(max_positions=8)
    src, mask = src_batch([list(range(4, 13))])  # 9 positions
    with pytest.raises(ValueError, match="max_positions"):
        model.encode(src, mask)


def test_shared_embeddings_are_one_tensor():
    model = tiny_model()
    assert model.encoder.embed.weight is model.decoder.embed.weight is model.output_weight
    untied = tiny_model(share_embeddings=False, tie_output=False)
    assert untied.encoder.embed.weight is not untied.decoder.embed.weight
    assert untied.output_weight is untied.output.weight


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[2]], ids=["tied", "untied-bias"])
@torch.no_grad()
def test_fast_output_gives_the_same_logits_and_follows_the_weights(variant):
    model = tiny_model(seed=8, **variant).eval()
    src, mask, tgt = _inputs(model)
    plain = model(src, mask, tgt)  # (B, T, V)
    model.fast_output()
    torch.testing.assert_close(model(src, mask, tgt), plain, atol=1e-6, rtol=1e-6)
    assert not any("output_copy" in name for name in model.state_dict())
    model.output_weight.mul_(2.0)  # e.g. new weights imported in place: the copy must not go stale
    doubled = model(src, mask, tgt)
    model.fast_output(False)
    torch.testing.assert_close(doubled, model(src, mask, tgt), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(doubled, plain)


@pytest.mark.parametrize("tie,positional", [(True, "sinusoidal"), (False, "learned")])
def test_initialisation_follows_the_config(tie, positional):
    """"normal": every projection, embedding and learned position N(0, init_std), padding row and
    biases zero; "xavier": projections U(+-sqrt(6 / (fan_in + fan_out))), embeddings and learned positions
    N(0, d^-1/2). The two are told apart by their spread, so a scheme that is ignored (or applied to the
    wrong tensors) fails."""
    extra = dict(d_model=64, d_ff=256, share_embeddings=tie, tie_output=tie, src_vocab_size=400,
                 tgt_vocab_size=400, positional=positional)
    torch.manual_seed(0)
    normal = Seq2SeqTransformer(tiny_config(init="normal", init_std=0.05, **extra))
    torch.manual_seed(0)
    xavier = Seq2SeqTransformer(tiny_config(init="xavier", **extra))
    checked = 0
    for (name, p), (_, q) in zip(normal.named_parameters(), xavier.named_parameters()):
        if p.dim() == 2:
            rows = p[1:] if "embed" in name else p  # row 0: padding
            assert rows.std().item() == pytest.approx(0.05, rel=0.1), name
            own = "embed" in name or "positions" in name
            expected = 64**-0.5 if own else math.sqrt(2 / sum(q.shape))
            assert q.std().item() == pytest.approx(expected, rel=0.1), name
            checked += 1
        elif name.endswith(".bias") and "norm" not in name:
            assert not p.any() and not q.any(), name
    assert checked > 10
    for model in (normal, xavier):
        for emb in {id(model.encoder.embed): model.encoder.embed, id(model.decoder.embed): model.decoder.embed}.values():
            assert not emb.weight[model.cfg.pad_id].any()


@torch.no_grad()
def test_dropout_is_off_in_eval_mode():
    noisy = tiny_model(seed=6, dropout=0.3, attention_dropout=0.3, activation_dropout=0.3)  # eval mode
    clean = Seq2SeqTransformer(tiny_config(dropout=0.0)).eval()
    clean.load_state_dict(noisy.state_dict())
    src, mask = src_batch(random_ids([6, 4], 29, seed=3))
    tgt = torch.tensor(random_ids([5, 5], 29, seed=4))  # (B, T)
    torch.testing.assert_close(noisy(src, mask, tgt), clean(src, mask, tgt), rtol=0, atol=0)
    noisy.train()  # the control: the same dropout rates do change the output in training mode
    assert not torch.allclose(noisy(src, mask, tgt), clean(src, mask, tgt))
