"""Command line: ``seqformer train | translate | evaluate | average | serve | attention | import-marian``.

Training and decoding flags map one-to-one onto the fields of ``TrainConfig``,
``ModelConfig`` and ``DecodeConfig`` (``--warmup-steps`` sets ``warmup_steps``).
User mistakes print one line on stderr and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from seqformer.config import DecodeConfig, ModelConfig, TrainConfig
from seqformer.errors import ConfigError, SeqformerError, TrainingStopped

_DECODE_SKIP = {"seed"}
_TRAIN_POSITIONAL = {"train", "valid", "out"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: set[str] = frozenset(),
                       title: str | None = None) -> None:
    """One flag per dataclass field; defaults are left to the dataclass (argparse default is None)."""
    group = parser.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default
        help_text = f"default: {default!r}"
        if isinstance(default, bool):
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif isinstance(default, tuple):
            group.add_argument(_flag(f.name), dest=f.name, type=float, nargs=len(default), default=None,
                               help=help_text)
        else:
            kind = type(default) if default is not None else int
            group.add_argument(_flag(f.name), dest=f.name, type=kind, default=None, help=help_text)


def picked(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` the user actually gave on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


class _Parser(argparse.ArgumentParser):
    """A flag mistake is one line naming the flag, as every other user error is (not a usage block)."""

    def error(self, message: str):
        self.exit(2, f"seqformer: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from seqformer import __version__

    parser = _Parser(prog="seqformer", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"seqformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on parallel text")
    p.add_argument("--config", help="JSON recipe with 'train' and 'model' sections; flags override it")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dataclass_args(p, TrainConfig, title="training (TrainConfig)")
    add_dataclass_args(p, ModelConfig, skip={"src_vocab_size", "tgt_vocab_size"}, title="model (ModelConfig)")

    p = sub.add_parser("translate", help="translate text, a file, or stdin")
    p.add_argument("text", nargs="*", help="sentences to translate (none: read --input or stdin)")
    _add_model_args(p)
    p.add_argument("--input", help="file with one sentence per line")
    p.add_argument("--output", help="write translations here (a file atomically) instead of stdout")
    p.add_argument("--json", action="store_true", help="one JSON object per input with n-best and scores")
    p.add_argument("--attention", action="store_true", help="with --json: include cross-attention")
    p.add_argument("--no-split", action="store_true", help="do not split long input into sentences")
    add_dataclass_args(p, DecodeConfig, skip=_DECODE_SKIP, title="decoding (DecodeConfig)")
    p.add_argument("--seed", type=int, default=None,
                   help="sampling seed: a sentence then samples the same whatever it is batched with "
                   "(int8: up to the batch's shared activation scale)")

    p = sub.add_parser("evaluate", help="BLEU and chrF of a model's translations against references")
    _add_model_args(p)
    p.add_argument("--src", required=True, help="source sentences, one per line")
    p.add_argument("--ref", required=True, action="append", help="reference file (repeat for several)")
    p.add_argument("--hyp-out", help="also write the translations to this file")
    p.add_argument("--json", action="store_true", help="print scores as JSON")
    p.add_argument("--no-split", action="store_true", help="translate each line whole, not sentence by sentence")
    p.add_argument("--tokenize", choices=BLEU_TOKENIZERS, default=None,
                   help="sacreBLEU's tokenizer for BLEU (default: 13a; zh for a Chinese target, char for Japanese "
                        "or Korean, by the model's target language)")
    add_dataclass_args(p, DecodeConfig, skip=_DECODE_SKIP | {"sampling", "temperature", "top_k", "top_p", "nbest"},
                       title="decoding (DecodeConfig)")

    p = sub.add_parser("average", help="average the last N checkpoints of a run into a model directory")
    p.add_argument("run_dir", help="training output directory (holds checkpoints/)")
    p.add_argument("--last", type=int, default=5, help="number of checkpoints to average (the newest, about save_every apart)")
    p.add_argument("--out", help="model directory to write (default: RUN_DIR itself)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")

    p = sub.add_parser("import-marian", help="convert a local Hugging Face Marian / OPUS-MT directory to a model directory")
    p.add_argument("hf_dir", help="directory with config.json, model.safetensors or pytorch_model.bin, *.spm, vocab.json")
    p.add_argument("out_dir", help="seqformer model directory to write")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="dtype of the saved weights")
    _add_serving_parsers(sub)
    return parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model directory (default: the bundled English-French model)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: PyTorch's choice)")
    p.add_argument("--quantize", choices=("none", "int8"), default="none", help="dynamic int8 linear layers")


def _add_serving_parsers(sub) -> None:
    from seqformer.serve.settings import ServeConfig

    p = sub.add_parser("serve", help="HTTP translation service and web page (needs seqformer[serve])")
    _add_model_args(p)
    add_dataclass_args(p, ServeConfig, title="service (ServeConfig)")

    p = sub.add_parser("attention", help="plot the cross-attention of a translation as a PNG (needs seqformer[plot])")
    p.add_argument("text", help="the sentence to translate")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--layer", type=int, default=None, help="one decoder layer, 0-based (default: average of all)")
    p.add_argument("--head", type=int, default=None, help="one attention head, 0-based (default: average of all)")
    _add_model_args(p)
    add_dataclass_args(p, DecodeConfig, skip=_DECODE_SKIP | {"sampling", "temperature", "top_k", "top_p", "nbest"},
                       title="decoding (DecodeConfig)")


# sacreBLEU's tokenizers that need nothing more (its spm/flores ones download a model; MeCab needs packages)
BLEU_TOKENIZERS = ("13a", "intl", "zh", "char", "none")
_PATH_OPTIONS = ("input", "output", "hyp_out", "model", "out", "train", "valid", "src", "ref", "config", "tokenizer",
                 "init_from")
_PATH_ARGUMENTS = ("hf_dir", "out_dir", "run_dir")  # positional: "" would be the working directory


def _refuse_empty_paths(args: argparse.Namespace) -> None:
    """An empty path (an unset shell variable: --output "$OUT") is an error, not "not given": --input ""
    would read stdin, --output "" print to the screen, --hyp-out "" write nothing."""
    for name in _PATH_OPTIONS:
        value = getattr(args, name, None)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and not v.strip() for v in values):
            raise ConfigError(f"--{name.replace('_', '-')} is empty: give a path")
    for name in _PATH_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"{name.upper()} is empty: give a path")


def _discard_stdout() -> None:
    """Point stdout at /dev/null: what its buffer still holds for the reader that left would fail again when
    Python flushes it at exit ("Exception ignored ... BrokenPipeError" and status 120)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor underneath (an IDE's stream): nothing to do
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"seqformer: warning: {msg}\n"
    from seqformer import commands

    try:
        _refuse_empty_paths(args)
        return getattr(commands, args.command.replace("-", "_"))(args)
    except TrainingStopped as err:  # not an error, but not finished either: a script must not go on as if it were
        print(f"seqformer: {err}", file=sys.stderr)
        return 128 + err.signum
    except SeqformerError as err:
        print(f"seqformer: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("seqformer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`| head -1`): not an error
        try:
            sys.stdout.flush()
        except BrokenPipeError:  # it was stdout's reader (not another pipe's): what it still holds goes nowhere
            _discard_stdout()
        return 0
    except OSError as err:  # e.g. an output path that cannot be written
        where = f"{err.filename}: " if err.filename else ""
        print(f"seqformer: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
