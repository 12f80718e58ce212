"""The CPU dropout: PyTorch's distribution (keep 1 - p, scale 1 / (1 - p)) from a cheaper mask."""

from __future__ import annotations

import math

import pytest
import torch

from seqformer.config import ModelConfig
from seqformer.model.dropout import Dropout, dropout, keep_mask
from seqformer.model.transformer import Seq2SeqTransformer


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5, 0.9])
def test_keep_rate_is_one_minus_p_in_every_lane(p):
    # four 16-bit lanes per 64-bit draw: each lane must keep 1 - p (a draw whose top bit is
    # always 0 would keep every element of one lane in four)
    torch.manual_seed(0)
    n = 400_000
    kept = keep_mask((n,), p).float()  # (n,)
    sigma = math.sqrt(p * (1 - p) / (n // 4))
    for lane in range(4):
        assert abs(kept[lane::4].mean().item() - (1 - p)) < 5 * sigma, lane
    assert abs(kept.mean().item() - (1 - p)) < 5 * sigma / 2


def test_kept_values_scaled_dropped_zero_like_torch():
    torch.manual_seed(1)
    x = torch.rand(64, 33) + 0.5  # (64, 33) no zeros, so every zero below was dropped
    y = dropout(x, 0.25)
    kept = y != 0
    assert 0 < kept.sum() < x.numel()
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    # the same distribution as PyTorch's: mean 1 and variance p / (1 - p) for an input of ones
    ones = torch.ones(200_000)
    for out in (dropout(ones, 0.25), torch.nn.functional.dropout(ones, 0.25)):
        assert abs(out.mean().item() - 1) < 0.01 and abs(out.var().item() - 1 / 3) < 0.01


def test_gradient_is_the_same_mask():
    torch.manual_seed(2)
    x = (torch.rand(8, 5, 16) + 0.5).requires_grad_()
    g = torch.randn(8, 5, 16)
    y = dropout(x, 0.4)
    y.backward(g)
    factor = (y / x).detach()  # (8, 5, 16): 0 where dropped, 1 / keep rate (~1 / 0.6) where kept
    assert torch.isclose(factor, torch.tensor(0.0)).logical_or(torch.isclose(factor, torch.tensor(1 / 0.6),
                                                                             rtol=1e-4)).all()
    torch.testing.assert_close(x.grad, g * factor)


def test_lanes_of_one_draw_are_independent():
    # P(two lanes of the same 64-bit draw both kept) = (1 - p)^2, not 1 - p as with copied lanes
    torch.manual_seed(5)
    kept = keep_mask((400_000,), 0.5).view(-1, 4).float()  # (draws, lanes)
    for a, b in ((0, 1), (1, 2), (2, 3), (0, 3)):
        assert abs((kept[:, a] * kept[:, b]).mean().item() - 0.25) < 0.005


def test_eval_identity_training_drops_and_edge_rates():
    x = torch.randn(4, 7)
    module = Dropout(0.3).eval()
    assert module(x) is x
    assert dropout(x, 0.0) is x
    dropped = module.train()(torch.ones(1000))
    assert 0 < int((dropped == 0).sum()) < 1000
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    # within 2^-17 of 1 the lanes cannot express the rate: PyTorch's kernel, not a wrapped threshold
    assert (dropout(torch.ones(100_000), 0.999999) != 0).sum() < 50
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            dropout(x, bad)


@pytest.mark.parametrize("x", [torch.rand(7, 5).t(), torch.rand(3, 3, 3), torch.rand(()), torch.rand(0, 4),
                               torch.rand(50, 30).to(torch.bfloat16)], ids=["transposed", "odd-size", "scalar",
                                                                            "empty", "bf16"])
def test_any_shape_layout_and_dtype(x):
    torch.manual_seed(6)
    y = dropout(x + 0.5, 0.3)
    assert y.shape == x.shape and y.dtype == x.dtype
    kept = y != 0
    torch.testing.assert_close(y[kept], (x + 0.5)[kept] / 0.7, rtol=1e-2 if x.dtype == torch.bfloat16 else 1e-4,
                               atol=0)


def test_draws_follow_the_default_generator():
    # torch.manual_seed and a saved RNG state (the trainer's exact resume) replay the same masks
    torch.manual_seed(3)
    a = keep_mask((1000,), 0.3)
    state = torch.get_rng_state()
    b = keep_mask((1000,), 0.3)
    torch.set_rng_state(state)
    assert torch.equal(keep_mask((1000,), 0.3), b)
    assert not torch.equal(a, b)
    torch.manual_seed(3)
    assert torch.equal(keep_mask((1000,), 0.3), a)


def test_model_in_training_drops_and_replays_under_a_seed():
    cfg = ModelConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, n_heads=2, n_encoder_layers=1,
                      n_decoder_layers=1, d_ff=32, dropout=0.3, activation_dropout=0.2, attention_dropout=0.1)
    model = Seq2SeqTransformer(cfg).train()
    src = torch.randint(4, 20, (3, 6))  # (B, S)
    pad = torch.zeros(3, 6, dtype=torch.bool)  # (B, S) True = padding
    tgt = torch.randint(4, 20, (3, 5))  # (B, T)
    torch.manual_seed(4)
    first = model(src, pad, tgt)
    second = model(src, pad, tgt)
    torch.manual_seed(4)
    assert torch.equal(model(src, pad, tgt), first)
    assert not torch.equal(first, second)
    model.eval()
    assert torch.equal(model(src, pad, tgt), model(src, pad, tgt))
