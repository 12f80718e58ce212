"""CPU thread count for PyTorch, within what it can run."""

from __future__ import annotations

import os
import warnings

import torch

from seqformer.errors import ConfigError

THREADS_PER_CORE = 4  # above this, oversubscription only slows things down


def set_threads(n: int, name: str = "--threads") -> None:
    """Use ``n`` CPU threads (0 keeps PyTorch's choice).

    More than THREADS_PER_CORE per core are lowered to that, with a warning: PyTorch accepts 100000 and
    then dies with a segmentation fault at the first matrix product.
    """
    if n < 0:
        raise ConfigError(f"{name} must be >= 0 (0: PyTorch's choice), found {n}")
    most = THREADS_PER_CORE * (os.cpu_count() or 1)
    if n > most:
        warnings.warn(f"{name} {n} is more than {THREADS_PER_CORE} per CPU core: using {most}", stacklevel=2)
        n = most
    if n:
        torch.set_num_threads(n)
