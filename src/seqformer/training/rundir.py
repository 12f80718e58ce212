"""The run directory: checked writable (and roomy enough) before training starts, and
cleared of temporary files a killed run left behind."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from seqformer.errors import ConfigError
from seqformer.training import checkpoint as ckpt


def prepare_out(out: Path, resume: bool) -> None:
    """Create ``out`` and ``out/checkpoints``; refuse an unwritable directory or an unasked-for restart."""
    # A model directory (imported, averaged, exported) has weights but was never a run (no checkpoints/ folder,
    # which a run makes first thing): a new config.json beside its weights would break it.
    if (out / "model.safetensors").is_file() and not (out / "checkpoints").is_dir():
        raise ConfigError(f"{out} already holds a model (model.safetensors) and no training run: choose a new --out "
                          f"(to start from that model: --init-from {out})")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"{out}: output directory is not writable ({err.strerror or err})") from None
    _lock(out)
    if not resume and ckpt.list_checkpoints(out / "checkpoints"):
        raise ConfigError(f"{out} already holds checkpoints: pass --resume to continue, or choose a new --out")
    ckpt.remove_partial(out / "checkpoints")
    for tmp in out.glob(".*.tmp"):  # left by a process killed mid-write (atomic writes: .NAME.RANDOM.tmp)
        tmp.unlink(missing_ok=True)


_LOCKS: dict[Path, int] = {}  # run directory -> the open lock file this process holds on it


def _lock(out: Path) -> None:
    """Hold ``out/.lock`` for the run's life: a second run on the same directory (a --resume started while the
    first still trains) would delete its half-written checkpoint and interleave both runs' files."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"{out}: another seqformer process (pid {holder}: a training run, or an average written in "
                          "place) is using this directory: wait for it to end (or stop it), or choose a new --out") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _LOCKS[out.resolve()] = fd


@contextlib.contextmanager
def held(out: Path) -> Iterator[None]:
    """Hold ``out``'s run lock for a block: refused (one line) while a training run uses the directory."""
    try:
        _lock(Path(out))
    except OSError as err:  # the lock file cannot be made: a read-only directory
        raise ConfigError(f"{out}: cannot write in this directory ({err.strerror or err})") from None
    try:
        yield
    finally:
        release(out)


def release(out: Path) -> None:
    """Let go of ``out``'s lock (the kernel does too when the process ends)."""
    fd = _LOCKS.pop(Path(out).resolve(), None)
    if fd is not None:
        os.close(fd)


def check_space(out: Path, model: nn.Module) -> None:
    """Fail now, not hours later, if the disk cannot hold even two checkpoints."""
    n_bytes = 3 * 4 * sum(p.numel() for p in model.parameters())  # weights + two Adam moments, fp32
    free = shutil.disk_usage(out).free
    if free < 2 * n_bytes:
        raise ConfigError(f"{out}: only {free / 2**20:.0f} MiB free, a checkpoint needs about {n_bytes / 2**20:.0f} MiB")
