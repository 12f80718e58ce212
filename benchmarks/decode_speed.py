"""Decode speed on CPU: seqformer (fp32, int8) against Hugging Face generate() and CTranslate2.

Builds a random Marian model with OPUS-MT's shape (d_model 512, 6+6 layers, 8 heads, FFN 2048,
16k shared vocabulary, fixed seed; tests/marian_fixture.py), or takes a local Marian directory
(--marian-dir) or a seqformer model directory (--seqformer-model; seqformer engines only), and
translates the same sentences (default: 512 built from a word list, so no data file is needed;
--src FILE for real text, --ref FILE for BLEU) with beam 4, batch 32 and 2 threads:

  seqformer-fp32, seqformer-int8 (dynamic int8 linear layers), hf (MarianMTModel.generate),
  ct2-float32, ct2-int8 (CTranslate2, converted from the Marian directory with its converter API).

With --streams N every engine decodes N batches at once, each on threads/N CPU threads: seqformer with its
``streams`` option, CTranslate2 with inter_threads=N (the batches submitted asynchronously), Hugging Face
through a pool of N Python threads written here (generate() has no such option).

Every engine runs in its own subprocess, so each peak RSS is its own (model load included).
All engines use the same search: beam 4, length penalty 1.0, stop when 4 hypotheses have ended,
<pad> never generated (CTranslate2: its own handling), at most --max-len tokens (HF gets seqformer's length limit through a
logits processor so that seqformer fp32 and HF must agree token for token; CTranslate2 is
compared as it comes). Printed: target tokens/s, peak RSS, ratios against HF, agreement with HF,
and BLEU of the int8 outputs against the fp32 ones of the same engine (the int8 cost; with
--ref, BLEU against the references too).

Needs the dev and bench extras: pip install -e '.[dev,bench]' (transformers, ctranslate2).

    python benchmarks/decode_speed.py                       # the real measurement (minutes)
    python benchmarks/decode_speed.py --small --sentences 8 # smoke test (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # marian_fixture: random Marian directories

ENGINES = ("seqformer-fp32", "seqformer-int8", "hf", "ct2-float32", "ct2-int8")


def add_model_options(p: argparse.ArgumentParser, sentences: int) -> None:
    """The model, sentence and search options of the decoding benchmarks (also decode_profile.py and
    packed_linear.py), read by :func:`prepare_model`, :func:`read_sentences` and :func:`search_options`."""
    p.add_argument("--marian-dir", help="a local Hugging Face Marian directory to benchmark")
    p.add_argument("--seqformer-model", help="a seqformer model directory (in decode_speed.py: seqformer engines only)")
    p.add_argument("--src", help="source sentences, one per line (default: generated)")
    p.add_argument("--sentences", type=int, default=sentences, help=f"number of sentences (default {sentences})")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--streams", type=int, default=1, help="batches decoded at once, each on threads/streams threads "
                   "(seqformer: streams=; CTranslate2: inter_threads; Hugging Face: a thread pool written here)")
    p.add_argument("--max-len", type=int, default=64, help="maximum target tokens per sentence")
    p.add_argument("--small", action="store_true", help="a tiny random model (smoke test)")
    p.add_argument("--workdir", help="keep the generated model (and outputs) here (default: a temporary directory)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_options(p, sentences=512)
    p.add_argument("--ref", help="reference translations, line-aligned with --src, for BLEU")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--job", help=argparse.SUPPRESS)
    return p.parse_args(argv)


@contextlib.contextmanager
def benchmark_workdir(args: argparse.Namespace, prefix: str) -> Iterator[Path]:
    """--workdir, or a temporary directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir


def search_options(args: argparse.Namespace) -> dict:
    """The Translator options of the benchmarks' search: beam, batch, a fixed length limit, no splitting."""
    return dict(beam_size=args.beam, batch_size=args.batch, max_len_a=0.0, max_len_b=args.max_len, split=False,
                streams=args.streams)


def alternating_rounds(runs: dict[str, Callable[[], list[list[str]]]],
                       rounds: int) -> tuple[dict[str, list[float]], dict[str, list[list[str]]]]:
    """Time two runs (each returning one token list per sentence) in alternating rounds of one process, the
    first one first in odd rounds and second in even ones, so that a machine whose speed drifts over minutes
    (this shared one does) slows both alike: the seconds of every round, and each run's last outputs."""
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    outputs: dict[str, list[list[str]]] = {}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            outputs[name] = runs[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds, outputs


def report_rounds(seconds: dict[str, list[float]], outputs: dict[str, list[list[str]]]) -> list[str]:
    """Each run's seconds per round and tokens/s; then the second run's speed against the first's (the ratio
    of their tokens/s, each counting its own output: above 1 means the second is faster) and the share of
    identical outputs."""
    base, new = list(seconds)
    speed = {name: sum(len(p) for p in outputs[name]) * len(s) / sum(s) for name, s in seconds.items()}
    lines = [f"{name:<10} seconds per round {' '.join(f'{x:.2f}' for x in s)}   {speed[name]:.1f} tok/s"
             for name, s in seconds.items()]
    same = sum(a == b for a, b in zip(outputs[base], outputs[new])) / len(outputs[base])
    lines.append(f"{new} vs {base}: {speed[new] / speed[base]:.2f}x the speed; {same:.1%} of outputs identical")
    return lines


def compare_translators(args: argparse.Namespace, path: str, texts: list[str], runs: dict[str, tuple]) -> None:
    """packed_linear.py and decode_streams.py: two (Translator, options) runs over ``texts``, each warmed up
    (one batch per stream), timed in :func:`alternating_rounds` and printed by :func:`report_rounds`."""

    def timed(translator, opts: dict) -> Callable[[], list[list[str]]]:
        translator.translate_nbest(texts[: args.batch * opts.get("streams", 1)], **opts)  # warm-up
        return lambda: [res[0].tokens if res else [] for res in translator.translate_nbest(texts, **opts)]

    seconds, outputs = alternating_rounds({name: timed(*run) for name, run in runs.items()}, args.rounds)
    tokens = sum(len(p) for p in next(iter(outputs.values())))
    print(f"model {path}: {len(texts)} sentences, beam {args.beam}, batch {args.batch}, {args.threads} threads, "
          f"{args.rounds} alternating rounds, {tokens} target tokens per round")
    print("\n".join(report_rounds(seconds, outputs)))


# --------------------------------------------------------------------------- workers (one per subprocess)


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM belongs to the process image, whereas ru_maxrss
    also counts what the parent had resident before exec."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: KiB on Linux, bytes on macOS


def _batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_seqformer(job: dict) -> dict:
    import torch

    from seqformer.translator import Translator

    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    translator = Translator.load(job["model"], quantize="int8" if job["engine"].endswith("int8") else None)
    load_s = time.perf_counter() - start
    opts = dict(beam_size=job["beam"], batch_size=job["batch"], max_len_a=0.0, max_len_b=job["max_len"],
                streams=job["streams"])
    translator.translate_nbest(job["texts"][: job["batch"] * job["streams"]], split=False, **opts)  # warm-up
    start = time.perf_counter()
    results = translator.translate_nbest(job["texts"], split=False, **opts)
    seconds = time.perf_counter() - start
    return dict(load_s=load_s, seconds=seconds, pieces=[r[0].tokens if r else [] for r in results],
                texts=[r[0].text if r else "" for r in results])


def run_hf(job: dict) -> dict:
    import torch
    from marian_fixture import hf_length_limit
    from transformers import MarianMTModel, MarianTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    model = MarianMTModel.from_pretrained(job["model"]).eval()
    tok = MarianTokenizer.from_pretrained(job["model"])
    load_s = time.perf_counter() - start
    pad, eos, beams = model.config.pad_token_id, model.config.eos_token_id, job["beam"]

    def translate(texts: list[str]) -> tuple[list[list[str]], list[str]]:
        enc = tok(texts, return_tensors="pt", padding=True)
        limits = torch.full((len(texts) * beams,), job["max_len"])
        with torch.inference_mode():
            out = model.generate(**enc, num_beams=beams, do_sample=False, early_stopping=True, length_penalty=1.0,
                                 max_new_tokens=job["max_len"] + 2, bad_words_ids=[[pad]],
                                 logits_processor=[hf_length_limit(limits, eos)])
        pieces = []
        for row in out[:, 1:].tolist():
            row = row[: row.index(eos)] if eos in row else row
            pieces.append(tok.convert_ids_to_tokens(row))
        return pieces, tok.batch_decode(out, skip_special_tokens=True)

    # generate() has no streams option: with --streams, batches go to a pool of threads sharing the CPU threads
    torch.set_num_threads(max(1, job["threads"] // job["streams"]))
    pool = ThreadPoolExecutor(max_workers=job["streams"]) if job["streams"] > 1 else None

    def run_all(texts: list[str]) -> list[tuple[list[list[str]], list[str]]]:
        chunks = _batches(texts, job["batch"])
        return list(pool.map(translate, chunks)) if pool else [translate(chunk) for chunk in chunks]

    run_all(job["texts"][: job["batch"] * job["streams"]])  # warm-up
    start = time.perf_counter()
    pieces, texts = [], []
    for p, t in run_all(job["texts"]):
        pieces += p
        texts += t
    return dict(load_s=load_s, seconds=time.perf_counter() - start, pieces=pieces, texts=texts)


def run_ct2(job: dict) -> dict:
    import ctranslate2
    import sentencepiece as spm

    start = time.perf_counter()
    translator = ctranslate2.Translator(job["ct2_dir"], device="cpu", compute_type=job["engine"].split("-")[1],
                                        intra_threads=max(1, job["threads"] // job["streams"]),
                                        inter_threads=job["streams"])
    src_spm = spm.SentencePieceProcessor(model_file=job["src_spm"])
    detok = spm.SentencePieceProcessor(model_file=job["tgt_spm"])
    load_s = time.perf_counter() - start
    opts = dict(beam_size=job["beam"], length_penalty=1.0, max_decoding_length=job["max_len"],
                max_batch_size=job["batch"])
    warm = [translator.translate_batch(chunk, asynchronous=True, **opts)  # warm-up, every replica
            for chunk in _batches(job["src_pieces"][: job["batch"] * job["streams"]], job["batch"])]
    [r.result() for chunk in warm for r in chunk]
    start = time.perf_counter()  # from text to text, as the other engines are timed
    # the source tokenization a CTranslate2 user runs; the pieces translated are seqformer's (job["src_pieces"]),
    # equal for text without >>xx<< tags, which Marian's tokenizer keeps whole
    src_spm.encode(job["texts"], out_type=str)
    pieces = []
    if job["streams"] > 1:  # batches submitted at once, so that its inter_threads workers run them side by side
        pending = [translator.translate_batch(chunk, asynchronous=True, **opts)
                   for chunk in _batches(job["src_pieces"], job["batch"])]
        pieces = [r.result().hypotheses[0] for chunk in pending for r in chunk]
    else:
        for chunk in _batches(job["src_pieces"], job["batch"]):
            pieces += [r.hypotheses[0] for r in translator.translate_batch(chunk, **opts)]
    texts = [detok.decode_pieces([p for p in hyp if p not in ("</s>", "<unk>")]).replace("\u2581", " ").strip()
             for hyp in pieces]
    seconds = time.perf_counter() - start
    return dict(load_s=load_s, seconds=seconds, pieces=pieces, texts=texts)


def convert_ct2(job: dict) -> dict:
    import ctranslate2

    for quant in ("float32", "int8"):
        out = Path(job["workdir"]) / f"ct2-{quant}"
        ctranslate2.converters.TransformersConverter(job["model"]).convert(str(out), quantization=quant, force=True)
    return {}


def worker(engine: str, job_file: str) -> None:
    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    run = {"convert-ct2": convert_ct2, "hf": run_hf}.get(engine)
    run = run or (run_seqformer if engine.startswith("seqformer") else run_ct2)
    result = run(job)
    result["peak_rss_mb"] = _peak_rss_mb()
    Path(job["result"]).write_text(json.dumps(result, ensure_ascii=False), encoding="utf-8")


# --------------------------------------------------------------------------- the driver


def spawn(engine: str, job: dict, workdir: Path, threads: int) -> dict:
    """Run one engine in a fresh interpreter; returns its result (or the error)."""
    job = dict(job, engine=engine, result=str(workdir / f"{engine}.json"))
    job_file = workdir / f"{engine}.job.json"
    job_file.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, __file__, "--worker", engine, "--job", str(job_file)], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]}
    return json.loads(Path(job["result"]).read_text(encoding="utf-8"))


def prepare_model(args: argparse.Namespace, workdir: Path) -> tuple[str, bool]:
    """(model directory, is_marian)."""
    if args.seqformer_model:
        from seqformer.marian import is_marian_dir

        return args.seqformer_model, is_marian_dir(args.seqformer_model)
    if args.marian_dir:
        return args.marian_dir, True
    from marian_fixture import make_marian_dir

    shape = (dict(d_model=64, layers=2, heads=4, ffn=256, vocab_size=2000, spm_size=200) if args.small else
             dict(d_model=512, layers=6, heads=8, ffn=2048, vocab_size=16000, spm_size=400))
    path = workdir / ("marian-small" if args.small else "marian-opus-shape")
    if not (path / "config.json").is_file():
        make_marian_dir(path, max_positions=512, seed=0, scale=3.0, eos_bias=6.0, **shape)
    return str(path), True


def read_sentences(args: argparse.Namespace) -> tuple[list[str], list[str] | None]:
    if args.src:
        src = Path(args.src).read_text(encoding="utf-8").splitlines()[: args.sentences]
        ref_file = getattr(args, "ref", None)  # only decode_speed.py has --ref
        ref = Path(ref_file).read_text(encoding="utf-8").splitlines()[: len(src)] if ref_file else None
        return src, ref
    from marian_fixture import SRC_WORDS, sentences

    return sentences(SRC_WORDS, args.sentences, seed=123, min_len=4, max_len=30), None


def bleu(hyps: list[str], refs: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(hyps, [refs]).score


def report(results: dict[str, dict], refs: list[str] | None) -> list[str]:
    hf = results.get("hf", {})
    lines = [f"{'engine':<16}{'tokens':>8}{'seconds':>9}{'tok/s':>9}{'x HF':>7}{'peak MB':>9}{'x HF':>7}"
             f"{'same as HF':>12}{'BLEU int8/fp32':>16}" + ("   BLEU ref" if refs else "")]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"{name:<16}failed: {r['error']}")
            continue
        tokens = sum(len(p) for p in r["pieces"])
        speed = tokens / r["seconds"]
        row = f"{name:<16}{tokens:>8}{r['seconds']:>9.2f}{speed:>9.1f}"
        if "seconds" in hf:
            hf_speed = sum(len(p) for p in hf["pieces"]) / hf["seconds"]
            same = sum(a == b for a, b in zip(r["pieces"], hf["pieces"])) / len(hf["pieces"])
            row += f"{speed / hf_speed:>7.2f}{r['peak_rss_mb']:>9.0f}{r['peak_rss_mb'] / hf['peak_rss_mb']:>7.2f}"
            row += f"{same:>12.1%}"
        else:
            row += f"{'':>7}{r['peak_rss_mb']:>9.0f}{'':>7}{'':>12}"
        fp32 = results.get(name.replace("int8", "fp32").replace("ct2-fp32", "ct2-float32"), {})
        row += f"{bleu(r['texts'], fp32['texts']):>16.1f}" if name.endswith("int8") and "texts" in fp32 else f"{'':>16}"
        if refs:
            row += f"{bleu(r['texts'], refs):>11.1f}"
        lines.append(row)
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args.worker, args.job)
        return 0
    with benchmark_workdir(args, "seqformer-bench-") as workdir:
        model, is_marian = prepare_model(args, workdir)
        texts, refs = read_sentences(args)
        if refs is not None and len(refs) != len(texts):
            raise SystemExit(f"--ref has {len(refs)} lines for {len(texts)} source sentences")
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # the same length-sorted batches everywhere
        texts = [texts[i] for i in order]
        refs = None if refs is None else [refs[i] for i in order]  # (were left in file order: scored misaligned)
        from seqformer.translator import Translator

        tok = Translator.load(model).tokenizer
        job = dict(model=model, texts=texts, beam=args.beam, batch=args.batch, threads=args.threads, streams=args.streams,
                   max_len=args.max_len, workdir=str(workdir), src_spm="", tgt_spm="",
                   src_pieces=[tok.src_pieces(t) + ["</s>"] for t in texts])
        engines = [e for e in args.engines.split(",") if e in ENGINES and (is_marian or e.startswith("seqformer"))]
        if is_marian:
            job["src_spm"], job["tgt_spm"] = str(Path(model) / "source.spm"), str(Path(model) / "target.spm")
        if any(e.startswith("ct2") for e in engines):
            err = spawn("convert-ct2", job, workdir, args.threads).get("error")
            if err:
                print(f"CTranslate2 conversion failed: {err}", file=sys.stderr)
                engines = [e for e in engines if not e.startswith("ct2")]
        print(f"model {model}: {len(texts)} sentences, beam {args.beam}, batch {args.batch}, "
              f"{args.threads} threads, {args.streams} stream(s), at most {args.max_len} tokens", file=sys.stderr)
        results = {}
        for engine in engines:
            extra = {"ct2_dir": str(workdir / engine)} if engine.startswith("ct2") else {}
            results[engine] = spawn(engine, dict(job, **extra), workdir, args.threads)
            print(f"  {engine} done", file=sys.stderr)
        print("\n".join(report(results, refs)))
        fp32, hf = results.get("seqformer-fp32", {}), results.get("hf", {})
        if "pieces" in fp32 and "pieces" in hf:
            diff = [i for i, (a, b) in enumerate(zip(fp32["pieces"], hf["pieces"])) if a != b]
            print(f"seqformer fp32 vs HF: {'identical' if not diff else f'{len(diff)} sentences differ, e.g. #{diff[0]}'}")
        if args.json:
            Path(args.json).write_text(json.dumps({k: {m: v for m, v in r.items() if m != "texts"}
                                                   for k, r in results.items()}, ensure_ascii=False), encoding="utf-8")
        return 0


if __name__ == "__main__":
    sys.exit(main())
