"""Tiny synthetic corpora and configs shared by the training tests (distributed, faults)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from seqformer.config import TrainConfig
from seqformer.data.tokenizer import train_sentencepiece
from seqformer.training.runlog import read_log

WORDS = "red blue green cat dog bird runs sleeps eats big small old new tree house river".split()
CURVE_KEYS = ("step", "epoch", "loss", "nll", "lr", "gnorm", "tokens")


def write_corpus(directory: Path, n: int = 160, seed: int = 0) -> tuple[Path, Path]:
    """A copy-and-reverse task as TSV (train, valid): small enough to train in seconds."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n + 12):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 7))]
        lines.append(" ".join(words) + "\t" + " ".join(reversed(words)))
    train, valid = directory / "train.tsv", directory / "valid.tsv"
    train.write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    valid.write_text("\n".join(lines[n:]) + "\n", encoding="utf-8")
    return train, valid


def write_tokenizer(directory: Path) -> Path:
    return train_sentencepiece(WORDS * 3 + [" ".join(WORDS)], directory / "spm.model", 48, "bpe")


def tiny_config(data_dir: Path, out: Path, **overrides) -> TrainConfig:
    """fp32, one thread and no dropout by default: runs are bit-for-bit reproducible."""
    fields = dict(train=str(data_dir / "train.tsv"), valid="", out=str(out), tokenizer=str(data_dir / "spm.model"),
                  preset="tiny", max_tokens=96, lr=3e-3, warmup_steps=4, max_steps=12, precision="fp32", seed=3,
                  threads=1, log_every=1, valid_every=1000, save_every=4, keep_last=10, valid_bleu_lines=4)
    fields.update(overrides)
    return TrainConfig(**fields)


def cli_args(cfg: TrainConfig, model: dict | None = None) -> list[str]:
    """``seqformer train`` flags reproducing ``cfg`` (non-default fields only)."""
    args = []
    for name, value in cfg.__dict__.items():
        if value == TrainConfig.__dataclass_fields__[name].default:
            continue
        flag = name.replace("_", "-")
        args += [f"--{flag}" if value is True else f"--no-{flag}"] if isinstance(value, bool) else [f"--{flag}", str(value)]
    for name, value in (model or {}).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def spawn_train(cfg: TrainConfig, *extra: str, model: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "seqformer", "train", "--quiet", *cli_args(cfg, model), *extra]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def curve(out: Path) -> list[tuple]:
    """The training records of a run's log as comparable tuples (no timings)."""
    return [tuple(r.get(k) for k in CURVE_KEYS) for r in read_log(Path(out) / "train_log.jsonl") if "loss" in r]
