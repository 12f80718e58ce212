"""Running the app under uvicorn, with clear errors for what is missing."""

from __future__ import annotations

import importlib.util
import logging
import socket

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


def bind(cfg: ServeConfig) -> socket.socket:
    """The service's socket, bound before the model loads: a port in use or a host that does not
    resolve is a one-line error at once (uvicorn reported it after loading, and exited with status 3)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"--host {cfg.host}: cannot resolve it ({getattr(err, 'strerror', None) or err})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart without waiting
        sock.bind(address)
        sock.listen()  # connections wait in the backlog until the server accepts them
    except OSError as err:
        sock.close()
        raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port} ({err.strerror or err})") from None
    return sock


def run(translator: Translator, cfg: ServeConfig, sock: socket.socket) -> None:
    """Serve on ``sock`` (from :func:`bind`) until interrupted."""
    import uvicorn

    from seqformer.serve.app import create_app

    if not cfg.loopback:
        log.warning("listening on %s: reachable from other machines, with no authentication", cfg.host)
    config = uvicorn.Config(create_app(translator, cfg), host=cfg.host, port=cfg.port, access_log=cfg.access_log,
                            log_level="info", timeout_graceful_shutdown=5)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    # uvicorn logs this itself only when it opens the socket (scripts wait for this line)
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host,
                                            sock.getsockname()[1])
    uvicorn.Server(config).run(sockets=[sock])
