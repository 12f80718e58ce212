"""The CLI's subcommands, one function each, operating on parsed arguments."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from seqformer.cli import picked
from seqformer.config import DecodeConfig, ModelConfig, TrainConfig, beam_given_with_sampling, from_dict, load_recipe
from seqformer.data.corpus import decode_lines, read_line_chunks, read_lines
from seqformer.errors import ConfigError, DataError
from seqformer.io import own_stream, write_output
from seqformer.threads import set_threads


def train(args: argparse.Namespace) -> int:
    from seqformer.training.trainer import train as run_training

    train_fields, model_fields = load_recipe(Path(args.config)) if args.config else ({}, {})
    train_fields.update(picked(args, TrainConfig))
    model_fields.update(picked(args, ModelConfig))
    cfg = from_dict(TrainConfig, train_fields)
    if not cfg.train or not cfg.out:
        raise DataError("train needs --train DATA and --out DIR (or a --config that sets them)")
    out = run_training(cfg, model_fields, resume=args.resume, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only rank 0 reports
        print(f"model written to {out}", file=sys.stderr)
    return 0


def _check_output(path: str | None, inputs: tuple[tuple[str, str | None], ...] = ()) -> None:
    """Fail before any work when an output file cannot be written, or is one of the command's ``inputs``
    ((flag, path) pairs: replacing that file with translations would lose it)."""
    if not path:
        return
    fd = own_stream(path)
    if fd is not None:  # /dev/stdout: written through as it is (a redirected stdout's file is not replaced)
        problem = _unwritable(fd)
        if problem:
            raise DataError(f"{path}: cannot be written ({problem})")
        return
    if Path(path).is_dir():
        raise DataError(f"{path}: is a folder; an output file name is needed")
    if Path(path).exists() and not Path(path).is_file():  # /dev/null, a named pipe: written into
        if not os.access(path, os.W_OK):
            raise DataError(f"{path}: cannot be written")
        return
    for flag, given in inputs:
        if given and Path(path).is_file() and Path(given).is_file() and Path(path).samefile(given):
            raise DataError(f"{path}: is also the {flag} file; write the output elsewhere")
    try:
        parent = Path(path).resolve().parent
    except (RuntimeError, OSError) as err:  # a symlink loop
        raise DataError(f"{path}: cannot be written ({err})") from None
    if not parent.is_dir():
        raise DataError(f"{path}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise DataError(f"{path}: output folder {parent} is not writable")


def _unwritable(fd: int) -> str:
    """Why this process cannot write to its file descriptor ``fd`` ("" when it can)."""
    if fd == 0:  # read-write on a terminal, but never an output
        return "it is standard input"
    if fd <= 2 and (sys.stdin, sys.stdout, sys.stderr)[fd] is None:  # closed at start: the number may be reused
        return f"file descriptor {fd} is closed"
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return f"file descriptor {fd} is closed"
    return f"file descriptor {fd} is open for reading only" if flags & os.O_ACCMODE == os.O_RDONLY else ""


def _need_stdout(what: str) -> None:
    """Fail before any work when stdout is closed (Python then has no sys.stdout): ``what`` would be lost."""
    if sys.stdout is None:
        raise DataError(f"stdout is closed: nowhere to write {what}")


def _translator(args: argparse.Namespace):
    from seqformer.translator import Translator

    set_threads(args.threads)
    return Translator.load(args.model, quantize=None if args.quantize == "none" else args.quantize)


def _decode_config(args: argparse.Namespace) -> DecodeConfig:
    given = picked(args, DecodeConfig)
    clash = beam_given_with_sampling(given)
    if clash:
        raise ConfigError(clash)
    return from_dict(DecodeConfig, given)


def _text_args(texts: list[str]) -> list[str]:
    """TEXT arguments, refused one-line if the shell passed bytes that are not UTF-8."""
    for n, text in enumerate(texts, start=1):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:  # Python keeps undecodable argv bytes as lone surrogates
            raise DataError(f"TEXT argument {n}: not valid UTF-8 (at character {err.start + 1})") from None
    return list(texts)


def _write_stdout(text: str) -> None:
    """UTF-8 whatever the locale says, as input is read: an emoji copied through cannot fail to print."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a stream without bytes underneath (an IDE's, a notebook's)
        sys.stdout.write(text)
    else:
        sys.stdout.flush()
        buffer.write(text.encode("utf-8"))
    sys.stdout.flush()


def _more_ready(fd: int) -> bool:
    """Whether input is waiting on ``fd`` (so a pipe's lines are batched, not held back for more)."""
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):  # not selectable: batch as the chunk size says
        return True


def _arriving_lines(fd: int) -> Iterator[tuple[bytes, bool]]:
    """The lines of ``fd`` as they arrive, each with whether more input is already waiting.

    Read from the descriptor itself: a buffered reader may hold lines that select() cannot see.
    """
    pending = bytearray()  # the start of a line still arriving (grown in place: a long line stays linear)
    while data := os.read(fd, 1 << 16):
        if b"\n" not in data:
            pending += data
            continue
        *lines, rest = (bytes(pending) + data).split(b"\n")
        pending = bytearray(rest)
        for i, line in enumerate(lines):
            yield line + b"\n", i + 1 < len(lines) or bool(pending) or _more_ready(fd)
    if pending:
        yield bytes(pending), False


# An --input file, and lines waiting on stdin, are translated this many batches at a time: sorted by length
# across them (less padding), and enough batches for --streams to decode at once.
INPUT_CHUNK_BATCHES = 16


def _chunks(args: argparse.Namespace, batch_size: int) -> Iterator[list[str]]:
    """Inputs in chunks: TEXT arguments, the --input file, or stdin as it arrives.

    A file is read a chunk at a time, as it is translated. From stdin a chunk is translated as soon as no
    further line is waiting: a client that writes one line and waits for its translation gets it, a fast
    producer still gets chunks as large as a file's.
    """
    size = batch_size * INPUT_CHUNK_BATCHES
    if args.text:
        yield _text_args(args.text)
        return
    if args.input:
        yield from read_line_chunks(Path(args.input), size)
        return
    if sys.stdin is None:  # file descriptor 0 closed (cron, some service managers)
        raise DataError("nothing to translate: no TEXT, no --input, and stdin is closed")
    interactive = sys.stdin.isatty()
    waiting = [False]  # whether more input waits after the line just read

    def raw_lines() -> Iterator[bytes]:
        for line, more in _arriving_lines(sys.stdin.fileno()):
            waiting[0] = more
            yield line

    chunk: list[str] = []
    for line in decode_lines(raw_lines(), "<stdin>"):
        chunk.append(line)
        if interactive or len(chunk) >= size or not waiting[0]:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _as_json(text: str, nbest: list, with_attention: bool) -> str:
    hyps = []
    for h in nbest:
        d = asdict(h)
        d.pop("head_attention", None)  # per-head weights are for the server and plots
        if not with_attention:
            d.pop("attention")
            d.pop("src_tokens")
        hyps.append(d)
    return json.dumps({"input": text, "translations": hyps}, ensure_ascii=False)


def translate(args: argparse.Namespace) -> int:
    if args.attention and not args.json:
        raise ConfigError("--attention adds the cross-attention to --json output: give --json too")
    if args.text and args.input:
        raise ConfigError(f"give TEXT arguments or --input {args.input}, not both")
    _check_output(args.output, (("--input", args.input),))
    if not args.output:
        _need_stdout("the translations (give --output FILE)")
    cfg = _decode_config(args)
    if cfg.nbest > 1 and not args.json:
        raise ConfigError(f"--nbest {cfg.nbest} needs --json (plain output is one translation per input line)")
    translator = _translator(args)
    options: dict[str, Any] = asdict(cfg)
    if args.seed is not None:
        options["seed"] = args.seed
    collected: list[str] = []
    for chunk in _chunks(args, cfg.batch_size):
        results = translator.translate_nbest(chunk, need_attention=args.attention, split=not args.no_split, **options)
        lines = [_as_json(t, r, args.attention) if args.json else (r[0].text if r else "")
                 for t, r in zip(chunk, results)]
        if args.output:
            collected.extend(lines)
        else:
            _write_stdout("".join(line + "\n" for line in lines))
    if args.output:
        write_output(Path(args.output), "".join(line + "\n" for line in collected).encode("utf-8"))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from seqformer.evaluation import score

    src = read_lines(Path(args.src))
    if not src:
        raise DataError(f"{args.src}: no lines to evaluate")
    refs = [read_lines(Path(r)) for r in args.ref]
    for path, ref in zip(args.ref, refs):
        if len(ref) != len(src):
            raise DataError(f"{path} has {len(ref)} lines but {args.src} has {len(src)}: files must be line-aligned")
    _check_output(args.hyp_out, (("--src", args.src), *(("--ref", r) for r in args.ref)))
    _need_stdout("the scores")
    translator = _translator(args)
    cfg = _decode_config(args)
    hyps = translator.translate(src, split=not args.no_split, **asdict(cfg))
    if args.hyp_out:
        write_output(Path(args.hyp_out), "".join(h + "\n" for h in hyps).encode("utf-8"))
    result = score(hyps, refs, args.tokenize, translator.dir.tgt_lang)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(f"BLEU = {result['bleu']:.2f}  ({result['bleu_signature']})")
        print(f"chrF = {result['chrf']:.2f}  ({result['chrf_signature']})")
    return 0


def average(args: argparse.Namespace) -> int:
    from seqformer.training.average import average_checkpoints

    out = average_checkpoints(Path(args.run_dir), args.last, Path(args.out) if args.out else None, args.dtype)
    print(f"averaged model written to {out}", file=sys.stderr)
    return 0


def serve(args: argparse.Namespace) -> int:
    from seqformer.serve.server import bind, check_installed, check_model, run
    from seqformer.serve.settings import ServeConfig

    cfg = from_dict(ServeConfig, picked(args, ServeConfig))
    check_installed()
    check_model(args.model)
    sockets = bind(cfg)
    try:
        run(_translator(args), cfg, sockets)
    finally:
        for sock in sockets:
            sock.close()
    return 0


def attention(args: argparse.Namespace) -> int:
    from seqformer.plot import render

    _check_output(args.out)
    _need_stdout("the translation")
    text = _text_args([args.text])[0]
    best, matrix = render(_translator(args), text, Path(args.out), args.layer, args.head,
                          **asdict(_decode_config(args)))
    _write_stdout(best.text + "\n")  # UTF-8 whatever the locale, as translate writes (an emoji copied through)
    print(f"cross-attention ({len(matrix)} target x {len(matrix[0])} source subwords) written to {args.out}",
          file=sys.stderr)
    return 0


def import_marian(args: argparse.Namespace) -> int:
    from seqformer.marian import import_marian as convert

    out = convert(Path(args.hf_dir), Path(args.out_dir), args.dtype)
    print(f"model written to {out}", file=sys.stderr)
    return 0
