"""``seqformer attention``: the matrix it plots and the PNG it writes."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from seqformer.cli import main
from seqformer.errors import ConfigError
from seqformer.plot import attention_matrix

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEXT = "The small dog sees a red bird."


@pytest.fixture(scope="module")
def best(translator):
    return translator.translate_nbest([TEXT], need_attention=True, per_head=True, split=False)[0][0]


def _expected(heads: torch.Tensor, layer: int | None, head: int | None) -> torch.Tensor:
    """The view the plot promises, from the per-head weights (L, H, T, S): one layer/head, or the mean over it."""
    picked = heads if layer is None else heads[layer : layer + 1 if layer != -1 else None]
    picked = picked if head is None else picked[:, head : head + 1 if head != -1 else None]
    return picked.mean(dim=(0, 1))  # (T, S)


@pytest.mark.parametrize("layer, head", [(None, None), (0, None), (None, 3), (1, 2), (-1, -1)])
def test_every_view_is_the_slice_it_names_and_a_distribution_over_the_source(best, layer, head):
    matrix = torch.tensor(attention_matrix(best, layer, head))  # (T, S)
    assert matrix.shape == (len(best.tokens) + 1, len(best.src_tokens))
    assert torch.allclose(matrix.sum(dim=1), torch.ones(len(matrix)), atol=1e-4)
    assert bool((matrix >= 0).all())
    heads = torch.tensor(best.head_attention)  # (L, H, T, S)
    assert torch.allclose(matrix, _expected(heads, layer, head), atol=1e-5)  # was: any mix of layers/heads passed
    if (layer, head) != (None, None):  # the views differ, so matching the named one means something
        assert not torch.allclose(matrix, heads.mean(dim=(0, 1)), atol=1e-4)


def test_average_view_is_the_mean_of_the_heads(best):
    heads = torch.tensor(best.head_attention)  # (L, H, T, S)
    assert torch.allclose(heads.mean(dim=(0, 1)), torch.tensor(best.attention), atol=1e-4)
    assert torch.allclose(torch.tensor(attention_matrix(best, 1, 2)), heads[1, 2], atol=1e-6)


def test_out_of_range_layer_or_head_is_named(best):
    with pytest.raises(ConfigError, match="--layer 2"):
        attention_matrix(best, 2, None)
    with pytest.raises(ConfigError, match="--head -5"):
        attention_matrix(best, None, -5)


def test_cli_writes_a_png(tiny_model_dir, tmp_path, capsys, translator):
    pytest.importorskip("matplotlib", reason="needs the plot extra: pip install 'seqformer[plot]'")
    out = tmp_path / "attn.png"
    assert main(["attention", TEXT, "--out", str(out), "--model", str(tiny_model_dir)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 2000
    captured = capsys.readouterr()
    assert captured.out.strip() == translator.translate_nbest([TEXT], split=False)[0][0].text.strip()
    assert "written to" in captured.err
    one_head = tmp_path / "head.png"
    assert main(["attention", TEXT, "--out", str(one_head), "--model", str(tiny_model_dir),
                 "--layer", "1", "--head", "0", "--beam-size", "2"]) == 0
    assert one_head.read_bytes()[:8] == PNG_MAGIC


def test_cli_plots_the_layer_and_head_it_names(tiny_model_dir, tmp_path, monkeypatch, translator):
    """What reaches the plot: the named head's matrix (not the average), with the source tokens as columns and
    the output tokens and </s> as rows."""
    from seqformer import plot

    drawn = []
    monkeypatch.setattr(plot, "plot_attention", lambda matrix, src, tgt, out, title: drawn.append((matrix, src, tgt)))
    assert main(["attention", TEXT, "--out", str(tmp_path / "x.png"), "--model", str(tiny_model_dir),
                 "--layer", "1", "--head", "0", "--beam-size", "2"]) == 0
    (matrix, src, tgt), = drawn
    hyp = translator.translate_nbest([TEXT], need_attention=True, per_head=True, split=False, beam_size=2)[0][0]
    heads = torch.tensor(hyp.head_attention)  # (L, H, T, S)
    assert torch.allclose(torch.tensor(matrix), heads[1, 0], atol=1e-6)
    assert not torch.allclose(torch.tensor(matrix), heads.mean(dim=(0, 1)), atol=1e-4)
    assert (src, tgt) == (hyp.src_tokens, [*hyp.tokens, "</s>"])


def test_cli_rejects_a_missing_layer(tiny_model_dir, tmp_path, capsys):
    assert main(["attention", TEXT, "--out", str(tmp_path / "x.png"), "--model", str(tiny_model_dir),
                 "--layer", "9"]) == 1
    assert "--layer 9 out of range" in capsys.readouterr().err


def test_cli_names_why_symbols_alone_have_no_attention(tiny_model_dir, tmp_path, capsys):
    """Emoji bypass the model, so there is no attention: say that (not 'translate with need_attention=True')."""
    assert main(["attention", "🍕", "--out", str(tmp_path / "x.png"), "--model", str(tiny_model_dir)]) == 1
    assert "only symbols copied past the model" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cli_prints_the_translation_whatever_the_locale_encodes(tiny_model_dir, tmp_path, monkeypatch):
    """An emoji copied through failed to print under a non-UTF-8 locale: a UnicodeEncodeError traceback."""
    pytest.importorskip("matplotlib", reason="needs the plot extra: pip install 'seqformer[plot]'")
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    assert main(["attention", TEXT + " 🍕", "--out", str(tmp_path / "x.png"), "--model", str(tiny_model_dir)]) == 0
    sys.stdout.flush()
    assert raw.getvalue().decode("utf-8").rstrip("\n").endswith("🍕")


def test_dollar_signs_are_text_not_tex(tmp_path):
    """Two "$" in a translation or subword made matplotlib read TeX: garbled, or a ValueError traceback."""
    pytest.importorskip("matplotlib", reason="needs the plot extra: pip install 'seqformer[plot]'")
    from seqformer.plot import plot_attention

    out = plot_attention([[0.5, 0.5], [1.0, 0.0]], ["$\\nope$", "</s>"], ["5$", "</s>"], tmp_path / "x.png",
                         title="Cela coûte 5 $\\bad et 10 $.")
    assert out.read_bytes()[:8] == PNG_MAGIC
