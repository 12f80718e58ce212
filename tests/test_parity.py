"""Parity with torch.nn: seqformer's layers, with their weights copied into
nn.TransformerEncoderLayer / nn.TransformerDecoderLayer, give the same outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb_, tiny_config
from torch import nn

from seqformer.model.attention import MultiHeadAttention
from seqformer.model.embeddings import sinusoid_table
from seqformer.model.layers import DecoderLayer, EncoderLayer

CASES = [
    dict(pre_norm=False, activation="relu"),
    dict(pre_norm=True, activation="relu"),
    dict(pre_norm=True, activation="gelu", layer_norm_eps=1e-6),
]
CASE_IDS = ["post-norm-relu", "pre-norm-relu", "pre-norm-gelu"]


def _copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
    theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
    theirs.out_proj.weight.copy_(ours.out_proj.weight)
    theirs.out_proj.bias.copy_(ours.out_proj.bias)


def _copy(src: nn.Module, dst: nn.Module) -> None:
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)


def _reference(cls, cfg):
    return cls(cfg.d_model, cfg.n_heads, dim_feedforward=cfg.d_ff, dropout=0.0, activation=cfg.activation,
               layer_norm_eps=cfg.layer_norm_eps, batch_first=True, norm_first=cfg.pre_norm).eval()


@torch.no_grad()
def _encoder_pair(case):
    cfg = tiny_config(**case)
    ours = perturb_(EncoderLayer(cfg), seed=1, scale=0.3).eval()
    theirs = _reference(nn.TransformerEncoderLayer, cfg)
    _copy_attention(ours.self_attn, theirs.self_attn)
    _copy(ours.self_attn_res.norm, theirs.norm1)
    _copy(ours.ffn.fc1, theirs.linear1)
    _copy(ours.ffn.fc2, theirs.linear2)
    _copy(ours.ffn_res.norm, theirs.norm2)
    return ours, theirs


@torch.no_grad()
def _decoder_pair(case):
    cfg = tiny_config(**case)
    ours = perturb_(DecoderLayer(cfg), seed=2, scale=0.3).eval()
    theirs = _reference(nn.TransformerDecoderLayer, cfg)
    _copy_attention(ours.self_attn, theirs.self_attn)
    _copy_attention(ours.cross_attn, theirs.multihead_attn)
    _copy(ours.self_attn_res.norm, theirs.norm1)
    _copy(ours.cross_attn_res.norm, theirs.norm2)
    _copy(ours.ffn.fc1, theirs.linear1)
    _copy(ours.ffn.fc2, theirs.linear2)
    _copy(ours.ffn_res.norm, theirs.norm3)
    return ours, theirs


PAD = torch.tensor([[False] * 7, [False] * 4 + [True] * 3, [False] * 6 + [True]])  # (B, S) True = padding


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])  # no-grad may take torch's fast path
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_encoder_layer_matches_torch(case, grad):
    ours, theirs = _encoder_pair(case)
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(0))
    with torch.set_grad_enabled(grad):
        expected = theirs(x, src_key_padding_mask=PAD)
        got = ours(x, PAD)
    real = ~PAD
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@torch.no_grad()
def test_decoder_layer_matches_torch(case):
    ours, theirs = _decoder_pair(case)
    gen = torch.Generator().manual_seed(1)
    tgt, memory = torch.randn(3, 5, 32, generator=gen), torch.randn(3, 7, 32, generator=gen)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    expected = theirs(tgt, memory, tgt_mask=causal, memory_key_padding_mask=PAD, tgt_is_causal=True)
    got, _ = ours(tgt, memory, PAD)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_parity_is_sensitive_to_the_mask():
    """The comparison above would notice a dropped padding mask."""
    ours, theirs = _decoder_pair(CASES[0])
    gen = torch.Generator().manual_seed(1)
    tgt, memory = torch.randn(3, 5, 32, generator=gen), torch.randn(3, 7, 32, generator=gen)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    expected = theirs(tgt, memory, tgt_mask=causal, memory_key_padding_mask=PAD)
    got, _ = ours(tgt, memory, None)
    assert not torch.allclose(got[1], expected[1], atol=1e-3)


MODEL_CASES = [
    dict(pre_norm=False, positional="sinusoidal"),
    dict(pre_norm=True, positional="sinusoidal", activation="gelu"),
    dict(pre_norm=True, positional="learned", tie_output=False, share_embeddings=False, tgt_vocab_size=31),
]


@pytest.mark.parametrize("case", MODEL_CASES, ids=["post-norm", "pre-norm", "pre-norm-learned-untied"])
@torch.no_grad()
def test_whole_model_matches_a_torch_transformer_stack(case):
    """Embeddings, positions, every layer, the final pre-norm LayerNorms and the output projection, against
    nn.TransformerEncoder/Decoder with copied weights (the layer tests above cannot see the model around them)."""
    from seqformer.model.transformer import Seq2SeqTransformer

    cfg = tiny_config(**case)
    torch.manual_seed(0)
    ours = perturb_(Seq2SeqTransformer(cfg), seed=5, scale=0.3).eval()
    enc_layers, dec_layers = [], []
    for layer in ours.encoder.layers:
        theirs = _reference(nn.TransformerEncoderLayer, cfg)
        _copy_attention(layer.self_attn, theirs.self_attn)
        for a, b in ((layer.self_attn_res.norm, theirs.norm1), (layer.ffn.fc1, theirs.linear1),
                     (layer.ffn.fc2, theirs.linear2), (layer.ffn_res.norm, theirs.norm2)):
            _copy(a, b)
        enc_layers.append(theirs)
    for layer in ours.decoder.layers:
        theirs = _reference(nn.TransformerDecoderLayer, cfg)
        _copy_attention(layer.self_attn, theirs.self_attn)
        _copy_attention(layer.cross_attn, theirs.multihead_attn)
        for a, b in ((layer.self_attn_res.norm, theirs.norm1), (layer.cross_attn_res.norm, theirs.norm2),
                     (layer.ffn.fc1, theirs.linear1), (layer.ffn.fc2, theirs.linear2),
                     (layer.ffn_res.norm, theirs.norm3)):
            _copy(a, b)
        dec_layers.append(theirs)

    gen = torch.Generator().manual_seed(3)
    src = torch.randint(4, cfg.src_vocab_size, (3, 7), generator=gen)  # (B, S)
    src[PAD] = cfg.pad_id
    tgt = torch.randint(4, cfg.tgt_vocab_size, (3, 5), generator=gen)  # (B, T)

    def embed(module, ids):  # token embedding * sqrt(D) + positions, computed here from the raw weights
        pos = module.positions.weight if cfg.positional == "learned" else sinusoid_table(cfg.max_positions, cfg.d_model)
        return module.embed.weight[ids] * cfg.d_model**0.5 + pos[: ids.size(1)]  # (B, L, D)

    x = embed(ours.encoder, src)
    for layer in enc_layers:
        x = layer(x, src_key_padding_mask=PAD)
    if cfg.pre_norm:
        x = ours.encoder.final_norm(x)
    y = embed(ours.decoder, tgt)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    for layer in dec_layers:
        y = layer(y, x, tgt_mask=causal, memory_key_padding_mask=PAD, tgt_is_causal=True)
    if cfg.pre_norm:
        y = ours.decoder.final_norm(y)
    expected = y @ ours.output_weight.T  # (B, T, V)

    got = ours(src, PAD, tgt)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if cfg.pre_norm:  # the comparison notices a missing final LayerNorm
        ours.decoder.final_norm = None
        assert not torch.allclose(ours(src, PAD, tgt), expected, atol=1e-2)
