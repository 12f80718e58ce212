"""seqformer fp32 decoding with oneDNN-prepacked linear layers against the same model's plain ones.

    python benchmarks/packed_linear.py                  # OPUS-MT's shape, random weights (decode_speed.py's model)
    python benchmarks/packed_linear.py --seqformer-model src/seqformer/models/en-fr --src FILE

Both translators live in one process and translate the same sentences (beam 4, batch 32, 2 threads)
in alternating rounds (plain first in odd rounds, packed first in even ones), so a machine whose speed
drifts over minutes (this shared one does) slows both alike. Prints each round's seconds, the ratio of
the totals (plain / packed: above 1 means packing is faster) and whether the outputs are identical.
"""

from __future__ import annotations

import argparse

import torch
from decode_speed import (
    add_model_options,
    benchmark_workdir,
    compare_translators,
    prepare_model,
    read_sentences,
    search_options,
)

import seqformer.model.packed as packed
import seqformer.model.transformer as transformer
from seqformer.translator import Translator


def load_plain(path: str) -> Translator:
    """The translator as it was before packing: MKL linear() and a (D, V) output copy."""
    saved = packed.packing_available
    packed.packing_available = transformer.packing_available = lambda: False
    try:
        plain = Translator.load(path)  # fast_output() decides at load whether to pack the output copy
    finally:
        packed.packing_available = transformer.packing_available = saved
    if plain.model._pack_output or any(isinstance(m, packed.PackedLinear) for m in plain.model.modules()):
        raise SystemExit("packed_linear: the plain translator came out packed; the comparison would be void")
    return plain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_options(ap, sentences=128)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with benchmark_workdir(args, "seqformer-packed-") as workdir:
        path, _ = prepare_model(args, workdir)
        texts, _ = read_sentences(args)
        engines = {"plain": load_plain(path), "packed": Translator.load(path)}
        if not packed.packing_available():
            raise SystemExit("packed_linear: this PyTorch has no oneDNN packing; nothing to compare")
        opts = search_options(args)
        compare_translators(args, path, texts, {name: (t, opts) for name, t in engines.items()})


if __name__ == "__main__":
    main()
