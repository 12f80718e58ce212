"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class SeqformerError(Exception):
    """A problem the user can fix (bad input, bad config, missing file)."""


class ConfigError(SeqformerError):
    """An invalid configuration value or file."""


class DataError(SeqformerError):
    """Malformed or inconsistent input data."""


class ModelDirError(SeqformerError):
    """A missing or corrupt model directory or checkpoint."""
