"""CPU thread count for PyTorch, within what it can run."""

from __future__ import annotations

import os

import torch

from seqformer.errors import ConfigError

THREADS_PER_CORE = 4  # above this, oversubscription only slows things down


def set_threads(n: int, name: str = "--threads") -> None:
    """Use ``n`` CPU threads (0 keeps PyTorch's choice).

    Counts far above the machine's cores are refused: PyTorch accepts 100000 and then dies with a
    segmentation fault at the first matrix product.
    """
    most = THREADS_PER_CORE * (os.cpu_count() or 1)
    if not 0 <= n <= most:
        raise ConfigError(f"{name} must be between 0 (PyTorch's choice) and {most} "
                          f"({THREADS_PER_CORE} per CPU core), found {n}")
    if n:
        torch.set_num_threads(n)
