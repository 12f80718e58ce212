"""Typed, frozen configuration objects, serialised to JSON with a format version.

One dataclass per concern: ``ModelConfig`` (the network), ``TrainConfig`` (the
recipe) and ``DecodeConfig`` (the search). Each validates itself on creation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from seqformer.errors import ConfigError

FORMAT_VERSION = 1

T = TypeVar("T")

ACTIVATIONS = ("relu", "gelu", "silu", "swish")
POSITIONALS = ("sinusoidal", "learned")
SINUSOID_LAYOUTS = ("interleaved", "split")
INITS = ("xavier", "normal")
INIT_FIELDS = ("init", "init_std")  # ModelConfig fields that only choose a scratch model's first weights


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def seed_in_range(seed: int) -> bool:
    """Whether torch takes ``seed`` as it is: a 64-bit integer, signed or not."""
    return -(2**63) <= seed < 2**64


def _check_seed(seed: int | None) -> None:
    _check(seed is None or seed_in_range(seed), f"seed must be a 64-bit integer (-2**63 to 2**64 - 1), found {seed}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an encoder-decoder Transformer (Vaswani et al., 2017)."""

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    d_model: int = 256
    n_heads: int = 4
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation: str = "relu"
    pre_norm: bool = False
    positional: str = "sinusoidal"
    sinusoid_layout: str = "interleaved"
    max_positions: int = 512
    scale_embeddings: bool = True
    share_embeddings: bool = True
    tie_output: bool = True
    final_logits_bias: bool = False
    layer_norm_eps: float = 1e-5
    pad_id: int = 0
    unk_id: int = 1
    bos_id: int = 2
    eos_id: int = 3
    decoder_start_id: int = 2
    # Initial weights of a model trained from scratch. "normal": every projection, embedding and learned
    # position N(0, init_std), biases zero (as BART and Hugging Face Marian start); measured to learn much
    # faster than "xavier" (README: 40 minutes of Tatoeba, Multi30k EN->DE). "xavier": Xavier-uniform
    # projections, embeddings N(0, d_model^-1/2) (close to fairseq's; the bundled model's first cycle).
    # Not architecture: --init-from ignores them.
    init: str = "normal"
    init_std: float = 0.02

    def __post_init__(self) -> None:
        _check(self.n_heads >= 1, f"n_heads must be >= 1, found {self.n_heads}")
        _check(self.d_model > 0 and self.d_model % self.n_heads == 0,
               f"d_model ({self.d_model}) must be a positive multiple of n_heads ({self.n_heads})")
        _check(min(self.src_vocab_size, self.tgt_vocab_size) >= 1,
               f"vocabulary sizes must be >= 1, found src {self.src_vocab_size}, tgt {self.tgt_vocab_size}")
        _check(self.n_encoder_layers >= 1 and self.n_decoder_layers >= 1, "need at least one layer on each side")
        _check(self.d_ff > 0, f"d_ff must be positive, found {self.d_ff}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0, f"{name} must be in [0, 1), found {value}")
        _check(self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, found {self.activation!r}")
        _check(self.positional in POSITIONALS, f"positional must be one of {POSITIONALS}, found {self.positional!r}")
        _check(self.sinusoid_layout in SINUSOID_LAYOUTS,
               f"sinusoid_layout must be one of {SINUSOID_LAYOUTS}, found {self.sinusoid_layout!r}")
        _check(self.max_positions > 1, f"max_positions must be > 1, found {self.max_positions}")
        _check(self.init in INITS, f"init must be one of {INITS}, found {self.init!r}")
        _check(0 < self.init_std < math.inf, f"init_std must be a finite number > 0, found {self.init_std}")
        _check(0 < self.layer_norm_eps < math.inf,
               f"layer_norm_eps must be a finite number > 0, found {self.layer_norm_eps}")
        if self.share_embeddings:
            _check(self.src_vocab_size == self.tgt_vocab_size,
                   "share_embeddings needs equal source and target vocabulary sizes")
        for name in ("pad_id", "unk_id", "bos_id", "eos_id", "decoder_start_id"):
            value = getattr(self, name)
            _check(0 <= value < self.tgt_vocab_size, f"{name} ({value}) outside the target vocabulary")
            if name in ("pad_id", "unk_id", "eos_id"):  # the source side's too (padding, </s> after each source)
                _check(value < self.src_vocab_size,
                       f"{name} ({value}) outside the source vocabulary (src_vocab_size {self.src_vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=256),
    "small": dict(d_model=256, n_heads=4, n_encoder_layers=3, n_decoder_layers=3, d_ff=1024),
    "base": dict(d_model=512, n_heads=8, n_encoder_layers=6, n_decoder_layers=6, d_ff=2048),
}


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe: data, tokenizer, optimisation and checkpointing."""

    train: str = ""
    valid: str = ""
    out: str = ""
    src_lang: str = "en"
    tgt_lang: str = "fr"
    preset: str = "small"
    vocab_size: int = 8000
    joint_vocab: bool = True
    tokenizer: str = ""
    init_from: str = ""  # a model directory: start from its weights, tokenizer and architecture (fresh optimizer)
    spm_model_type: str = "unigram"
    spm_sample_lines: int = 1_000_000
    max_len: int = 256
    max_tokens: int = 4096
    update_freq: int = 1
    lr: float = 1e-3
    warmup_steps: int = 1000
    cooldown_steps: int = 0  # the last N updates before max_steps: lr falls linearly, to 1/(N+1) of its start
    cooldown_minutes: float = 0.0  # the last M minutes before max_minutes: lr scaled down linearly by time left
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    max_steps: int = 0
    epochs: int = 0
    max_minutes: float = 0.0  # training time: batching and updates (validation and checkpoint writes not counted)
    precision: str = "auto"
    seed: int = 1
    threads: int = 0
    log_every: int = 50
    valid_every: int = 1000
    save_every: int = 1000
    keep_last: int = 5
    patience: int = 0
    valid_bleu_lines: int = 500
    valid_beam_size: int = 1

    @property
    def tokenizer_files(self) -> list[Path]:
        """``tokenizer`` as paths: one joint SentencePiece model, or source and target; empty when unset."""
        return [Path(p) for p in self.tokenizer.split(",")] if self.tokenizer else []

    def __post_init__(self) -> None:
        _check(self.preset in PRESETS, f"preset must be one of {tuple(PRESETS)}, found {self.preset!r}")
        _check(self.vocab_size >= 16, f"vocab_size must be >= 16, found {self.vocab_size}")
        _check(self.max_tokens > 0 and self.update_freq >= 1, "max_tokens and update_freq must be positive")
        _check(0 < self.lr < math.inf and self.warmup_steps >= 0,
               f"lr must be a finite number > 0 and warmup_steps >= 0, found lr={self.lr}, "
               f"warmup_steps={self.warmup_steps}")
        _check(0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), found {self.label_smoothing}")
        _check(self.precision in ("auto", "fp32", "bf16", "fp16"),
               f"precision must be auto, fp32, bf16 or fp16 (GPU only), found {self.precision!r}")
        _check(min(self.max_steps, self.epochs, self.max_minutes) >= 0 and math.isfinite(self.max_minutes),
               f"limits must be >= 0 (and max_minutes a finite number), found max_steps={self.max_steps}, "
               f"epochs={self.epochs}, max_minutes={self.max_minutes}")
        _check(self.cooldown_steps == 0 or 0 < self.cooldown_steps <= self.max_steps,
               f"cooldown_steps needs max_steps (the cool-down ends there) and must be >= 0 and <= max_steps, "
               f"found cooldown_steps={self.cooldown_steps}, max_steps={self.max_steps}")
        _check(self.cooldown_steps == 0 or self.max_steps - self.cooldown_steps >= self.warmup_steps,
               f"the cool-down would start at update {self.max_steps - self.cooldown_steps}, inside the "
               f"{self.warmup_steps} warmup updates (and from a learning rate still warming up): "
               f"cooldown_steps must be <= max_steps - warmup_steps = {self.max_steps - self.warmup_steps}")
        _check(self.cooldown_minutes >= 0, f"cooldown_minutes must be a number >= 0, found {self.cooldown_minutes}")
        _check(self.cooldown_minutes <= self.max_minutes,
               f"cooldown_minutes needs max_minutes (the cool-down ends there) and must be <= it, "
               f"found cooldown_minutes={self.cooldown_minutes}, max_minutes={self.max_minutes}")
        _check(not (self.cooldown_minutes and self.cooldown_steps),
               f"give one cool-down, by updates or by time, found cooldown_steps={self.cooldown_steps} and "
               f"cooldown_minutes={self.cooldown_minutes}")
        _check(self.max_len > 2, f"max_len must be > 2, found {self.max_len}")
        _check(self.clip_norm >= 0, f"clip_norm must be >= 0 (0: no clipping), found {self.clip_norm}")
        _check(0 <= self.weight_decay < math.inf, f"weight_decay must be a finite number >= 0, found {self.weight_decay}")
        _check(self.patience >= 0, f"patience must be >= 0 (0: never stop early), found {self.patience}")
        _check(self.valid_beam_size >= 1, f"valid_beam_size must be >= 1, found {self.valid_beam_size}")
        _check(self.spm_sample_lines >= 1, f"spm_sample_lines must be >= 1, found {self.spm_sample_lines}")
        _check_seed(self.seed)
        for name in ("log_every", "valid_every", "save_every"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, found {getattr(self, name)}")
        if self.tokenizer:
            files = self.tokenizer_files
            _check(len(files) in (1, 2), f"tokenizer must be one SentencePiece model or two (source,target), "
                                         f"found {len(files)}: {self.tokenizer!r}")
            if len(files) == 2 and files[0].resolve() != files[1].resolve():
                _check(files[0].name != files[1].name,
                       f"tokenizer: {files[0]} and {files[1]} have the same file name, and both are copied into "
                       f"the run directory under it (the target model would replace the source one): rename one")
        _check(self.spm_model_type in ("unigram", "bpe"), "spm_model_type must be unigram or bpe")
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        _check(len(self.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in self.adam_betas),
               f"adam_betas must be two numbers in [0, 1), found {self.adam_betas}")
        # 0 divides 0 by 0 for a weight no batch has reached yet (a learned position past the longest batch so far,
        # a source piece not yet seen with untied embeddings): NaN at the first update
        _check(MIN_ADAM_EPS <= self.adam_eps < math.inf,
               f"adam_eps must be a finite number >= {MIN_ADAM_EPS:.3g}, found {self.adam_eps}")


MIN_ADAM_EPS = 1.1754943508222875e-38  # float32's smallest normal number (below: subnormal, 0 on flush-to-zero CPUs)
MIN_TEMPERATURE = 1e-6  # lower ones underflow to 0 in float32 (the scaled scores become inf / NaN)


@dataclass(frozen=True)
class DecodeConfig:
    """How to search: greedy (beam_size=1), beam search, or sampling."""

    beam_size: int = 4
    nbest: int = 1
    length_penalty: float = 1.0
    max_len_a: float = 1.2
    max_len_b: int = 10
    min_len: int = 0
    sampling: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 32
    # batches decoded at once (at most one per CPU thread), each on its own thread with 1/streams of PyTorch's
    # CPU threads, as CTranslate2's inter_threads: small per-step products use one thread each better than two.
    # Same hypotheses as one stream, up to the rounding of products split over fewer threads
    streams: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        _check(self.beam_size >= 1, f"beam_size must be >= 1, found {self.beam_size}")
        _check(1 <= self.nbest, f"nbest must be >= 1, found {self.nbest}")
        if not self.sampling:
            _check(self.nbest <= self.beam_size, f"nbest ({self.nbest}) cannot exceed beam_size ({self.beam_size})")
        _check(MIN_TEMPERATURE <= self.temperature < math.inf,
               f"temperature must be a finite number >= {MIN_TEMPERATURE} (greedy search for none), found {self.temperature}")
        _check(self.top_k >= 0, f"top_k must be >= 0, found {self.top_k}")
        _check_seed(self.seed)
        _check(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1], found {self.top_p}")
        _check(math.isfinite(self.length_penalty), f"length_penalty must be a finite number, found {self.length_penalty}")
        _check(0 <= self.max_len_a < math.inf and self.max_len_b >= 1,
               f"max_len_a must be a number >= 0 and max_len_b >= 1, found {self.max_len_a} and {self.max_len_b}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, found {self.batch_size}")
        _check(self.streams >= 1, f"streams must be >= 1, found {self.streams}")
        if not self.sampling:  # they would be ignored: the search is greedy or beam search
            set_ = [f"{k}={getattr(self, k)}" for k in sampling_options_given(self)]
            _check(not set_, f"sampling options given without sampling ({', '.join(set_)}): turn it on (--sampling) "
                             "or leave them out")


def off_default(options: Any, cls: type, names: tuple[str, ...]) -> list[str]:
    """Those of ``names`` that ``options`` (a ``cls``, or anything with those attributes) sets away from the
    defaults of ``cls``'s fields."""
    return [k for k in names if getattr(options, k) != cls.__dataclass_fields__[k].default]


def sampling_options_given(options: Any) -> list[str]:
    """The fields only sampling reads (temperature, top_k, top_p, seed) that ``options`` (a DecodeConfig, or
    anything with those attributes) sets away from DecodeConfig's defaults."""
    return off_default(options, DecodeConfig, ("temperature", "top_k", "top_p", "seed"))


def beam_given_with_sampling(given: dict[str, Any], default_unsaid: bool = False) -> str | None:
    """Why options *given explicitly* (``given``: field -> value, as the user spelled them) cannot go
    together, or None: sampling draws ``nbest`` independent samples and has no beam, so a beam size
    above 1 beside it would be ignored (DecodeConfig cannot tell its default 4 from a given 4).
    ``default_unsaid``: the default beam size counts as not given (a caller passing a whole
    DecodeConfig as a dict, ``**asdict(cfg)``, carries it without having asked for it)."""
    beam = given.get("beam_size", 1)
    if default_unsaid and beam == DecodeConfig.__dataclass_fields__["beam_size"].default:
        beam = 1
    if given.get("sampling") and beam > 1:
        return (f"a beam size ({given['beam_size']}) has no effect with sampling, which draws nbest independent "
                "samples: leave the beam size out (or 1), or turn sampling off")
    return None


def _expected_type(hint: Any, value: Any) -> str:
    """'' when ``value`` fits the field type ``hint`` (as JSON spells it), else the type's name."""
    if type(None) in get_args(hint):  # X | None
        if value is None:
            return ""
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint is bool:
        return "" if isinstance(value, bool) else "true or false"
    if hint is int:
        return "" if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        return "" if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if hint is str:
        return "" if isinstance(value, str) else "a string"
    if get_origin(hint) is tuple:
        return "" if isinstance(value, (list, tuple)) else "a list"
    return ""


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict[str, Any], *, strict: bool = True) -> T:
    """Build ``cls`` from a dict, rejecting unknown keys (a typo is an error, not a no-op)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a JSON object of fields, found {type(data).__name__}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown and strict:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    hints = get_type_hints(cls)
    for name in known & set(data):
        expected = _expected_type(hints[name], data[name])
        if expected:
            raise ConfigError(f"{cls.__name__}.{name}: expected {expected}, found {data[name]!r}")
    try:
        return cls(**{k: v for k, v in data.items() if k in known})
    except TypeError as err:  # e.g. "lr": "0.001" or null in a JSON recipe
        raise ConfigError(f"{cls.__name__}: a value has the wrong type ({err})") from None


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a saved config.json up to FORMAT_VERSION (the one place format changes are handled)."""
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(f"unsupported model format_version {version!r} (this seqformer reads {FORMAT_VERSION})")
    model = data.get("model")
    if isinstance(model, dict) and "init" not in model:
        # Written before ModelConfig.init existed, when every model started from "xavier": keep saying so
        # (a resumed run rewrites config.json, and one with no checkpoint yet draws its weights from it).
        data = {**data, "model": {**model, "init": "xavier"}}
    return data


def read_config(directory: Path) -> dict[str, Any]:
    """A model or run directory's config.json, brought up to FORMAT_VERSION."""
    return migrate(read_json(Path(directory) / "config.json"))


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def check_sections(data: dict[str, Any], names: tuple[str, ...], path: Path) -> None:
    """Each of ``names`` that ``data`` (read from ``path``) has must be a JSON object."""
    for name in names:
        if name in data and not isinstance(data[name], dict):
            raise ConfigError(f"{path}: section '{name}' must be a JSON object, found {type(data[name]).__name__}")


def load_recipe(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JSON recipe: ``{"train": {TrainConfig fields}, "model": {ModelConfig fields}}``."""
    data = read_json(Path(path))
    unknown = sorted(set(data) - {"train", "model"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; expected 'train' and 'model'")
    check_sections(data, ("train", "model"), path)
    train_fields, model_fields = data.get("train", {}), data.get("model", {})
    from_dict(TrainConfig, train_fields)  # validate names and values early
    bad = sorted(set(model_fields) - {f.name for f in fields(ModelConfig)})
    if bad:
        raise ConfigError(f"{path}: unknown model field(s) {bad}")
    return train_fields, model_fields
