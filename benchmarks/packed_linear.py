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
import time

import torch
from decode_speed import add_model_options, benchmark_workdir, prepare_model, read_sentences, search_options

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
        for t in engines.values():
            t.translate_nbest(texts[: args.batch], **opts)  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in engines}
        outputs: dict[str, list[list[str]]] = {}
        for r in range(args.rounds):
            for name in (("plain", "packed") if r % 2 == 0 else ("packed", "plain")):
                start = time.perf_counter()
                results = engines[name].translate_nbest(texts, **opts)
                seconds[name].append(time.perf_counter() - start)
                outputs[name] = [res[0].tokens if res else [] for res in results]
    tokens = sum(len(p) for p in outputs["packed"])
    print(f"model {path}: {len(texts)} sentences, beam {args.beam}, batch {args.batch}, {args.threads} threads, "
          f"{args.rounds} alternating rounds, {tokens} target tokens per round")
    for name, s in seconds.items():
        print(f"{name:<8} seconds per round {' '.join(f'{x:.2f}' for x in s)}   "
              f"{tokens * len(s) / sum(s):.1f} tok/s")
    same = sum(a == b for a, b in zip(outputs["plain"], outputs["packed"])) / len(texts)
    print(f"packed vs plain: {sum(seconds['plain']) / sum(seconds['packed']):.2f}x the speed; "
          f"{same:.1%} of outputs identical")


if __name__ == "__main__":
    main()
