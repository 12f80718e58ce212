"""Where a beam-search step's time goes: torch.profiler over seqformer fp32 decoding, grouped.

    python benchmarks/decode_profile.py                 # OPUS-MT's shape, random weights (decode_speed.py's model)
    python benchmarks/decode_profile.py --seqformer-model src/seqformer/models/en-fr --src FILE

Translates --sentences sentences (beam 4, batch 32, 2 threads) once unprofiled (wall time) and once
under the profiler, and prints each group's share of the operators' own CPU time: linear products
(the projections and the output layer), attention products (the batched products over the cache),
search (log-softmax, top-k, reordering; index_select also counts the embedding lookups) and the
rest. The wall time minus the operators' total is a lower bound on the time no operator accounts for
(Python between operators, tokenization): the profiler's own cost inflates the operators' times.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from decode_speed import add_model_options, benchmark_workdir, prepare_model, read_sentences, search_options
from torch.profiler import ProfilerActivity, profile

from seqformer.translator import Translator

GROUPS = {
    "linear products": ("mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "quantized::linear_dynamic"),
    "attention products": ("aten::bmm",),
    "search": ("aten::topk", "aten::_log_softmax", "aten::sort", "aten::index", "aten::index_select",
               "aten::_index_put_impl_", "aten::gather"),
}


def group_of(name: str) -> str:
    return next((g for g, names in GROUPS.items() if name in names), "rest")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_options(ap, sentences=64)
    ap.add_argument("--quantize", choices=("none", "int8"), default="none")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with benchmark_workdir(args, "seqformer-profile-") as workdir:
        path, _ = prepare_model(args, workdir)
        texts, _ = read_sentences(args)
        translator = Translator.load(path, quantize=None if args.quantize == "none" else args.quantize)
        opts = search_options(args)
        translator.translate_nbest(texts[: args.batch], **opts)  # warm-up
        start = time.perf_counter()
        translator.translate_nbest(texts, **opts)
        wall = time.perf_counter() - start
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            translator.translate_nbest(texts, **opts)
    spent: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        spent[group_of(event.key)] += event.self_cpu_time_total / 1e6
    total = sum(spent.values())
    print(f"model {path}: {len(texts)} sentences, beam {args.beam}, batch {args.batch}, {args.threads} threads, "
          f"quantize={args.quantize}")
    print(f"wall time unprofiled {wall:.2f} s; operators' own CPU time under the profiler {total:.2f} s")
    for group in (*GROUPS, "rest"):
        print(f"{group:<20}{spent[group]:>8.2f} s{spent[group] / total:>8.1%}")


if __name__ == "__main__":
    main()
