"""CPU thread count for PyTorch, within what it can run."""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Iterator

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


_SPLIT = threading.Lock()


@contextlib.contextmanager
def split_threads(parts: int) -> Iterator[None]:
    """For the duration, give each of ``parts`` threads running PyTorch at once an equal share of its CPU
    threads (at least one), restoring the number afterwards. PyTorch's setting is shared: it sets the calling
    thread's count and the one every thread started later begins with (threads already running keep theirs), so
    start the threads inside; callers from other threads wait for the one inside (their shares would overwrite
    each other's)."""
    with _SPLIT:
        n = torch.get_num_threads()
        torch.set_num_threads(max(1, n // parts))
        try:
            yield
        finally:
            torch.set_num_threads(n)
