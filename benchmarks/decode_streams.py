"""seqformer decoding several batches at once (``streams``) against one batch after another, same threads.

    python benchmarks/decode_streams.py                  # OPUS-MT's shape, random weights (decode_speed.py's model)
    python benchmarks/decode_streams.py --seqformer-model src/seqformer/models/en-fr --src FILE --sentences 930

One translator translates the same sentences (beam 4, batch 32, 2 threads) with streams=1 (each batch on
both threads) and streams=N (--streams, default 2 here: N batches at once, each on threads/N threads) in
alternating rounds of one process, so that the machine's drift slows both alike. Prints each round's
seconds, the ratio of the totals (above 1 means N streams are faster) and whether the outputs are identical
(products on one thread or two may round differently, so a rare difference is possible).
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

from seqformer.translator import Translator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_options(ap, sentences=128)
    ap.add_argument("--rounds", type=int, default=4)
    ap.set_defaults(streams=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with benchmark_workdir(args, "seqformer-streams-") as workdir:
        path, _ = prepare_model(args, workdir)
        texts, _ = read_sentences(args)
        translator, opts = Translator.load(path), search_options(args)
        runs = {"1 stream": (translator, dict(opts, streams=1)),
                f"{args.streams} streams": (translator, dict(opts, streams=args.streams))}
        compare_translators(args, path, texts, runs)


if __name__ == "__main__":
    main()
