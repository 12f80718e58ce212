"""The service's configuration: address, dynamic batching and request limits.

No web framework is imported here, so the CLI can build its flags from it
without the optional ``serve`` dependencies installed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from seqformer.errors import ConfigError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class ServeConfig:
    """How ``seqformer serve`` listens, batches and bounds requests (one flag per field)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32  # sentences per model call (a request's texts are never split across calls); 1 = one request at a time
    batch_window_ms: float = 5.0  # how long the first queued request waits for company
    max_queue: int = 256  # units waiting for the model (sentences; attention: hypotheses; per-head: a batch); beyond: 503
    # batches computed at once (at most one per CPU thread), each on its own thread with an equal share of the
    # CPU threads: more throughput under load (a step's products are small), more latency for a request alone
    streams: int = 1
    max_body_bytes: int = 262_144
    max_texts: int = 32  # texts per request
    max_chars: int = 1000  # characters per text
    max_beam_size: int = 8
    max_nbest: int = 8
    access_log: bool = True

    def __post_init__(self) -> None:
        _check(0 <= self.port <= 65535, f"port must be in [0, 65535], found {self.port}")
        _check(self.max_batch >= 1, f"max_batch must be >= 1, found {self.max_batch}")
        _check(self.streams >= 1, f"streams must be >= 1, found {self.streams}")
        _check(0 <= self.batch_window_ms <= 1000, f"batch_window_ms must be in [0, 1000], found {self.batch_window_ms}")
        for name in ("max_body_bytes", "max_texts", "max_chars", "max_beam_size", "max_nbest"):
            _check(getattr(self, name) >= 1, f"{name} must be >= 1, found {getattr(self, name)}")
        _check(self.max_queue >= self.max_texts,
               f"max_queue ({self.max_queue}) must be >= max_texts ({self.max_texts}): a queue that cannot hold "
               "one request of one-sentence texts")

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
