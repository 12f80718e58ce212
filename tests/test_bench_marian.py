"""The scoring side of benchmarks/bundled_vs_marian.py: MarianMTModel and seqformer decoded under one set of rules.

Issue 3's comparison scores a trained MarianMTModel through ``MarianTranslator`` (generate() with
seqformer's length limit, </s> forced there, <pad> never emitted) and the seqformer model through
``Translator``, both via ``tatoeba_eval.run``. On the same weights the two must give the same
translations, or the comparison measures the decoders rather than the training.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import SYMBOLS, perturb_, symbol_lines, tiny_config, write_model_dir

from seqformer import Translator
from seqformer.io import import_state
from seqformer.marian import _embeddings, convert_state
from seqformer.model.transformer import Seq2SeqTransformer

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bundled_vs_marian import MarianTranslator  # noqa: E402
from tatoeba_eval import run  # noqa: E402
from train_throughput import marian_model  # noqa: E402


@pytest.fixture(scope="module")
def twins(tmp_path_factory, tokenizer, spm_file) -> tuple[MarianTranslator, Translator]:
    """A random MarianMTModel behind MarianTranslator, and the same weights as a seqformer model directory."""
    vocab = tokenizer.src.get_piece_size()
    mc = tiny_config(src_vocab_size=vocab, tgt_vocab_size=vocab, max_positions=24, sinusoid_layout="split")
    torch.manual_seed(5)
    hf = marian_model(mc).eval()
    positions = {n: t.clone() for n, t in hf.state_dict().items() if "embed_positions" in n}
    perturb_(hf, seed=5)  # peaked distributions, not near-uniform ones; the fixed sinusoids put back:
    hf.load_state_dict(positions, strict=False)  # the conversion (as the import) takes seqformer's own
    raw = hf.state_dict()
    enc, dec, out = _embeddings(hf.config.to_dict(), raw)
    model = Seq2SeqTransformer(mc)
    import_state(model, convert_state(raw, enc, dec, out, mc), "MarianMTModel")
    path = write_model_dir(tmp_path_factory.mktemp("twin"), model.eval(), spm_file)
    return MarianTranslator(hf, tokenizer, mc), Translator.load(path)


TEXTS = [" ".join(s) for s in symbol_lines(9, seed=11, lo=1, hi=9)] + [""]  # and an empty text


@pytest.mark.parametrize("beam", [1, 4])
def test_same_weights_same_translations(twins, beam):
    marian, seqformer = twins
    theirs = marian.translate(TEXTS, beam_size=beam, batch_size=3)  # batches of different lengths: padding
    ours = seqformer.translate(TEXTS, beam_size=beam, batch_size=3)
    assert theirs == ours
    assert len(set(ours)) > 3 and ours[-1] == ""  # not one degenerate string for every input
    assert any(set(t.split()) <= set(SYMBOLS) and t for t in ours)


def test_scored_through_the_benchmarks_run(twins):
    # tatoeba_eval.run is what both the comparison and the eval script call (it passes streams=)
    marian, seqformer = twins
    refs = [[t] for t in TEXTS]
    theirs, ours = run(marian, TEXTS, refs, 4, 3), run(seqformer, TEXTS, refs, 4, 3)
    assert (theirs["bleu"], theirs["chrf"]) == (ours["bleu"], ours["chrf"])
    with pytest.raises(ValueError, match="streams=2"):
        run(marian, TEXTS, refs, 4, 3, streams=2)
