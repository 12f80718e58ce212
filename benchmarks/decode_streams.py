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
    alternating_rounds,
    benchmark_workdir,
    prepare_model,
    read_sentences,
    report_rounds,
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
        translator = Translator.load(path)
        opts = search_options(args)

        def run(streams: int):
            o = dict(opts, streams=streams)
            translator.translate_nbest(texts[: args.batch * streams], **o)  # warm-up
            return lambda: [res[0].tokens if res else [] for res in translator.translate_nbest(texts, **o)]

        runs = {"1 stream": run(1), f"{args.streams} streams": run(args.streams)}
        seconds, outputs = alternating_rounds(runs, args.rounds)
    tokens = sum(len(p) for p in outputs["1 stream"])
    print(f"model {path}: {len(texts)} sentences, beam {args.beam}, batch {args.batch}, {args.threads} threads, "
          f"{args.rounds} alternating rounds, {tokens} target tokens per round")
    print("\n".join(report_rounds(seconds, outputs)))


if __name__ == "__main__":
    main()
