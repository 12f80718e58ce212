"""The encoder-decoder. ``encode`` and ``decode_step`` are all a search strategy needs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqformer.config import ModelConfig
from seqformer.decoding.cache import DecoderCache
from seqformer.model.dropout import Dropout
from seqformer.model.embeddings import PositionalEncoding, TokenEmbedding
from seqformer.model.layers import DecoderLayer, EncoderLayer
from seqformer.model.packed import PackedLinear, packable, packing_available


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, embed: TokenEmbedding) -> None:
        super().__init__()
        self.embed = embed
        self.positions = PositionalEncoding(cfg.positional, cfg.max_positions, cfg.d_model, cfg.sinusoid_layout)
        self.dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_encoder_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.pre_norm else None

    def forward(self, src: Tensor, src_pad_mask: Tensor) -> Tensor:
        """src: (B, S) token ids; src_pad_mask: (B, S) True = padding. Returns (B, S, D)."""
        x = self.dropout(self.embed(src) + self.positions(src.size(1)))  # (B, S, D)
        mask = src_pad_mask if bool(src_pad_mask.any()) else None
        for layer in self.layers:
            x = layer(x, mask)
        return self.final_norm(x) if self.final_norm is not None else x


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, embed: TokenEmbedding) -> None:
        super().__init__()
        self.embed = embed
        self.positions = PositionalEncoding(cfg.positional, cfg.max_positions, cfg.d_model, cfg.sinusoid_layout)
        self.dropout = Dropout(cfg.dropout)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_decoder_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps) if cfg.pre_norm else None

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        src_pad_mask: Tensor | None,
        cache: DecoderCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """tgt: (B, T) ids (only new positions when ``cache`` is given); memory: (B, S, D).

        Returns hidden states (B, T, D) and per-layer cross-attention weights (B, H, T, S).
        """
        offset = cache.step if cache is not None else 0
        x = self.dropout(self.embed(tgt) + self.positions(tgt.size(1), offset))  # (B, T, D)
        attentions = []
        for i, layer in enumerate(self.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            x, weights = layer(x, memory, src_pad_mask, layer_cache, need_weights)
            if weights is not None:
                attentions.append(weights)
        if cache is not None:
            cache.step += tgt.size(1)
        return (self.final_norm(x) if self.final_norm is not None else x), attentions


class Seq2SeqTransformer(nn.Module):
    """Vaswani et al. (2017) encoder-decoder with optional pre-norm, learned positions and tying."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        src_embed = TokenEmbedding(cfg.src_vocab_size, cfg.d_model, cfg.pad_id, cfg.scale_embeddings)
        tgt_embed = src_embed if cfg.share_embeddings else TokenEmbedding(
            cfg.tgt_vocab_size, cfg.d_model, cfg.pad_id, cfg.scale_embeddings
        )
        self.encoder = Encoder(cfg, src_embed)
        self.decoder = Decoder(cfg, tgt_embed)
        self.output = None if cfg.tie_output else nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self.final_logits_bias = nn.Parameter(torch.zeros(cfg.tgt_vocab_size)) if cfg.final_logits_bias else None
        self.fast_output_on, self._pack_output = False, False  # see fast_output()
        self._output_copy: tuple[tuple, nn.Module | Tensor] | None = None  # (weight's identity, its fast copy)
        self._init_weights()

    def _init_weights(self) -> None:
        """Projections (and, for "normal", embeddings and learned positions) per ``cfg.init``; biases
        zero; LayerNorms and sinusoids as built. "xavier" keeps the embeddings' own N(0, d^-1/2)."""
        normal = self.cfg.init == "normal"
        for name, p in self.named_parameters():
            if p.dim() == 2 and normal:  # projections, embeddings and learned positions alike
                with torch.no_grad():
                    p.normal_(std=self.cfg.init_std)
                    if "embed" in name:
                        p[self.cfg.pad_id].zero_()
            elif p.dim() == 2 and "embed" not in name and "positions" not in name:
                nn.init.xavier_uniform_(p)
            elif name.endswith(".bias") and "norm" not in name:
                nn.init.zeros_(p)

    @property
    def output_weight(self) -> Tensor:
        return self.decoder.embed.weight if self.output is None else self.output.weight

    def untie_output(self) -> None:
        """Give a tied model its own output layer holding a copy of the embedding weights: same
        logits, but a module that int8 quantization can reach (the projection onto the
        vocabulary is a large share of each decoding step). For inference copies only."""
        if self.output is None:
            self.output = nn.Linear(self.cfg.d_model, self.cfg.tgt_vocab_size, bias=False)
            self.output.weight = nn.Parameter(self.decoder.embed.weight.detach().clone())

    def fast_output(self, on: bool = True, pack: bool | None = None) -> None:
        """Project onto the vocabulary, when not training, through a copy of the output weight laid
        out for speed (same values): prepacked for oneDNN (``pack``; default: where PyTorch has it,
        :mod:`seqformer.model.packed`), else a contiguous (D, V) copy, which MKL multiplies faster
        than linear() does the (V, D) weight. This projection is a large share of each decoding step.
        The copy is made at the first projection and remade whenever the weight changes, moves or is
        cast; it is not in state_dict(). An output layer already packed or int8 is used as it is."""
        self.fast_output_on = on
        self._pack_output = packing_available() if pack is None else pack
        self._output_copy = None

    def _fast_project(self, hidden: Tensor) -> Tensor:
        """hidden (..., D) times the output weight's fast copy, made or remade here: (..., V)."""
        w = self.output_weight  # (V, D)
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        if self._output_copy is None or self._output_copy[0] != key:  # threads decoding at once may each make
            # one at the first projection: equal copies, the last one is kept
            pack = self._pack_output and packable(w)
            self._output_copy = (key, PackedLinear(w).eval() if pack else w.detach().t().contiguous())
        copy = self._output_copy[1]
        return copy(hidden) if isinstance(copy, PackedLinear) else hidden @ copy  # (..., V)

    def encode(self, src: Tensor, src_pad_mask: Tensor) -> Tensor:
        """src: (B, S); src_pad_mask: (B, S) True = padding. Returns memory (B, S, D)."""
        return self.encoder(src, src_pad_mask)

    def project(self, hidden: Tensor) -> Tensor:
        """Hidden states (..., D) to vocabulary logits (..., V)."""
        plain = self.output is None or type(self.output) is nn.Linear  # not a packed or int8 module of its own
        if self.fast_output_on and plain and not self.training:
            logits = self._fast_project(hidden)  # (..., V)
        elif self.output is not None:
            # Called as a module so that packed and dynamically quantized (int8) copies work too.
            logits = self.output(hidden)  # (..., V)
        else:
            logits = F.linear(hidden, self.output_weight)  # (..., V)
        if self.final_logits_bias is not None:
            logits = logits + self.final_logits_bias
        return logits

    def decode(self, memory: Tensor, src_pad_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced decoder states for all positions: (B, T, D). tgt_in: (B, T)."""
        mask = src_pad_mask if bool(src_pad_mask.any()) else None
        hidden, _ = self.decoder(tgt_in, memory, mask)
        return hidden

    def forward(self, src: Tensor, src_pad_mask: Tensor, tgt_in: Tensor) -> Tensor:
        """Logits (B, T, V) for every target position, given the shifted target ``tgt_in`` (B, T)."""
        return self.project(self.decode(self.encode(src, src_pad_mask), src_pad_mask, tgt_in))

    def new_cache(self, limits: Tensor | None = None) -> DecoderCache:
        """An empty decoding cache, with room for the search's length ``limits`` (R,) if given: the most tokens
        of any row, plus the step that emits its </s>."""
        capacity = int(limits.max()) + 1 if limits is not None and limits.numel() else 0
        return DecoderCache.empty(len(self.decoder.layers), capacity)

    def decode_step(
        self,
        tokens: Tensor,
        memory: Tensor,
        src_pad_mask: Tensor,
        cache: DecoderCache,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor]]:
        """One incremental step. tokens: (B, 1) the last emitted token of each row.

        Returns log-probabilities (B, V) in float32 and, if asked, per-layer
        cross-attention weights (B, H, 1, S). ``cache`` is updated in place.
        """
        mask = src_pad_mask if bool(src_pad_mask.any()) else None
        hidden, attn = self.decoder(tokens, memory, mask, cache, need_weights)  # (B, 1, D)
        logits = self.project(hidden[:, -1])  # (B, V)
        return logits.float().log_softmax(dim=-1), attn
