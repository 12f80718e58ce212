"""Score a model on the Tatoeba EN->FR dev or test split (multi-reference sacreBLEU + chrF)
with greedy and beam search, and measure translation speed (sentences/s).

    python recipes/tatoeba_split.py            # once: writes work/tatoeba-en-fr/
    python benchmarks/tatoeba_eval.py --model src/seqformer/models/en-fr --split test

Every held-out English sentence is translated once and scored against all of its
French translations in the corpus (sacreBLEU with a variable number of references).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from seqformer import Translator
from seqformer.evaluation import ref_streams, score


def load_split(path: Path) -> tuple[list[str], list[list[str]]]:
    # split("\n"), not splitlines(): U+2028 and the like inside a sentence are no line breaks in JSON Lines
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]
    return [r["src"] for r in rows], [r["refs"] for r in rows]


def run(translator: Translator, src: list[str], refs: list[list[str]], beam: int, batch: int,
        length_penalty: float = 1.0, streams: int = 1) -> dict:
    start = time.perf_counter()
    hyps = translator.translate(src, beam_size=beam, batch_size=batch, length_penalty=length_penalty, streams=streams)
    seconds = time.perf_counter() - start
    result = score(hyps, ref_streams(refs))
    result.update(beam_size=beam, length_penalty=length_penalty, streams=streams, seconds=round(seconds, 1),
                  sentences_per_s=round(len(src) / seconds, 1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--data", default="work/tatoeba-en-fr", help="directory written by recipes/tatoeba_split.py")
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--beams", default="1,4", help="comma-separated beam sizes")
    ap.add_argument("--length-penalties", default="1.0", help="comma-separated length penalties (beam search)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", default="1", help="comma-separated stream counts (batches decoded at once)")
    ap.add_argument("--quantize", choices=("none", "int8"), default="none")
    ap.add_argument("--limit", type=int, default=0, help="only the first N sentences (smoke runs)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src, refs = load_split(Path(args.data) / f"{args.split}.multi.jsonl")
    if args.limit:
        src, refs = src[: args.limit], refs[: args.limit]
    translator = Translator.load(args.model, quantize=None if args.quantize == "none" else args.quantize)
    translator.translate(src[: args.batch_size], batch_size=args.batch_size)  # untimed: one-time costs (the output
    # projection's packed copy, oneDNN's first calls) land on no setting, not on the first one timed
    print(f"# {args.split}: {len(src)} English sentences, {sum(map(len, refs))} references; "
          f"model {args.model or 'bundled'}; {args.threads} threads; quantize={args.quantize}")
    for beam in (int(b) for b in args.beams.split(",")):
        for lp in (float(x) for x in args.length_penalties.split(",")) if beam > 1 else (1.0,):
            for streams in (int(n) for n in args.streams.split(",")):
                print(json.dumps(run(translator, src, refs, beam, args.batch_size, lp, streams)))


if __name__ == "__main__":
    main()
