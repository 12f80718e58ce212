"""Running the app under uvicorn, with clear errors for what is missing."""

from __future__ import annotations

import importlib.util
import logging

from seqformer.errors import ConfigError, ModelDirError
from seqformer.serve.settings import ServeConfig
from seqformer.translator import Translator, default_model_dir

log = logging.getLogger("seqformer.serve")


def check_installed() -> None:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"seqformer serve needs {' and '.join(missing)}: pip install 'seqformer[serve]'")


def check_model(model: str | None) -> None:
    """With no --model, the bundled model must be installed."""
    if model is None and not default_model_dir().is_dir():
        raise ModelDirError(f"no --model given and the bundled model is not installed ({default_model_dir()}); "
                            "pass --model DIR with a trained model directory")


def run(translator: Translator, cfg: ServeConfig) -> None:
    """Serve until interrupted."""
    import uvicorn

    from seqformer.serve.app import create_app

    if not cfg.loopback:
        log.warning("listening on %s: reachable from other machines, with no authentication", cfg.host)
    uvicorn.run(create_app(translator, cfg), host=cfg.host, port=cfg.port, access_log=cfg.access_log,
                log_level="info", timeout_graceful_shutdown=5)
