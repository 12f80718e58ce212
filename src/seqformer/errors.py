"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class SeqformerError(Exception):
    """A problem the user can fix (bad input, bad config, missing file)."""


class ConfigError(SeqformerError):
    """An invalid configuration value or file."""


class DataError(SeqformerError):
    """Malformed or inconsistent input data."""


class ModelDirError(SeqformerError):
    """A missing or corrupt model directory or checkpoint."""


class TrainingStopped(SeqformerError):
    """Training was stopped by SIGINT/SIGTERM after saving a checkpoint: not finished, but resumable."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"stopped by signal {signum} at step {step}; checkpoint saved, continue with --resume")
        self.signum = signum
