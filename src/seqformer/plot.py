"""Cross-attention heatmaps with matplotlib (the optional ``seqformer[plot]`` extra, Agg backend)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from seqformer.errors import ConfigError, SeqformerError
from seqformer.io import write_output
from seqformer.translator import Translation, Translator


def attention_matrix(t: Translation, layer: int | None = None, head: int | None = None) -> list[list[float]]:
    """The (T, S) cross-attention of ``t``: averaged, or of one decoder layer and/or head (0-based,
    negative counts from the end). Each row is a distribution over the source subwords."""
    if layer is None and head is None:
        if t.attention is None:
            raise ConfigError("this translation carries no attention (translate with need_attention=True)")
        return t.attention
    if t.head_attention is None:
        raise ConfigError("per-layer attention missing (translate with need_attention=True, per_head=True)")
    weights = torch.tensor(t.head_attention)  # (L, H, T, S)
    n_layers, n_heads = weights.shape[:2]
    if layer is not None:
        if not -n_layers <= layer < n_layers:
            raise ConfigError(f"--layer {layer} out of range: the decoder has {n_layers} layers (0..{n_layers - 1})")
        weights = weights[[layer]]  # (1, H, T, S)
    if head is not None:
        if not -n_heads <= head < n_heads:
            raise ConfigError(f"--head {head} out of range: the model has {n_heads} heads (0..{n_heads - 1})")
        weights = weights[:, [head]]  # (L', 1, T, S)
    return weights.mean(dim=(0, 1)).tolist()  # (T, S)


def plot_attention(matrix: list[list[float]], src_tokens: list[str], tgt_tokens: list[str], out: Path,
                   title: str = "") -> Path:
    """Write the heatmap (rows: target subwords, columns: source subwords) as a PNG."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SeqformerError("plotting needs matplotlib: pip install matplotlib (the [plot] extra)") from None
    rows, cols = len(matrix), len(matrix[0]) if matrix else 0
    fig = Figure(figsize=(max(4.0, 0.45 * cols + 2), max(3.0, 0.4 * rows + 1.5)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", vmin=0.0, aspect="auto")
    # parse_math off: text with two "$" is the text, not TeX (which garbled it, or failed on a backslash)
    ax.set_xticks(range(cols), labels=src_tokens[:cols], rotation=60, ha="right", fontsize=9, parse_math=False)
    ax.set_yticks(range(rows), labels=tgt_tokens[:rows], fontsize=9, parse_math=False)
    ax.set_xlabel("source subwords")
    ax.set_ylabel("target subwords")
    if title:
        ax.set_title(title, fontsize=10, parse_math=False)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    out = Path(out)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_output(out, buffer.getvalue())
    return out


def render(translator: Translator, text: str, out: Path, layer: int | None = None, head: int | None = None,
           **options: Any) -> tuple[Translation, list[list[float]]]:
    """Translate ``text`` as one segment and plot the best translation's attention to ``out``."""
    per_head = layer is not None or head is not None
    nbest = translator.translate_nbest([text], need_attention=True, split=False, per_head=per_head, **options)[0]
    if not nbest:
        raise ConfigError("nothing to translate: the text is empty")
    best = nbest[0]
    if best.attention is None and best.head_attention is None:  # only symbols that bypass the model
        raise ConfigError("no attention to plot: the text holds only symbols copied past the model (emoji, ...)")
    matrix = attention_matrix(best, layer, head)
    which = "average" if not per_head else f"layer {'avg' if layer is None else layer}, head {'avg' if head is None else head}"
    shown = best.text if len(best.text) <= 60 else best.text[:57] + "..."
    plot_attention(matrix, best.src_tokens or [], best.tokens + ["</s>"], out, f"{shown}  ({which})")
    return best, matrix
