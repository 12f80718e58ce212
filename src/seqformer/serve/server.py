"""Running the app under uvicorn, with clear errors for what is missing."""

from __future__ import annotations

import errno
import importlib.util
import logging
import socket

from seqformer.errors import ConfigError, ModelDirError
from seqformer.serve.settings import ServeConfig
from seqformer.translator import Translator, default_model_dir

log = logging.getLogger("seqformer.serve")
DRAIN_S = 10.0  # at shutdown, how long the queue may take to finish before what is left gets 503
GRACE_S = 30.0  # then how long uvicorn waits for open requests (the running batch's) before cancelling them


def check_installed() -> None:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"seqformer serve needs {' and '.join(missing)}: pip install fastapi uvicorn (the [serve] extra)")


def check_model(model: str | None) -> None:
    """With no --model, the bundled model must be installed."""
    if model is None and not default_model_dir().is_dir():
        raise ModelDirError(f"no --model given and the bundled model is not installed ({default_model_dir()}); "
                            "pass --model DIR with a trained model directory")


def bind(cfg: ServeConfig) -> list[socket.socket]:
    """The service's sockets, bound before the model loads: a port in use or a host that does not resolve is a
    one-line error at once (uvicorn reported it after loading, and exited with status 3). Every address the
    host resolves to is bound (``localhost``: IPv4 and IPv6), as uvicorn does. Connections made while the model
    loads wait in the listen backlog and are answered once the server starts."""
    try:
        infos = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"--host {cfg.host}: cannot resolve it ({getattr(err, 'strerror', None) or err})") from None
    sockets: list[socket.socket] = []
    unique = list(dict.fromkeys((family, kind, proto, address) for family, kind, proto, _, address in infos))
    has_ipv4 = any(family == socket.AF_INET for family, *_ in unique)
    for family, kind, proto, address in unique:
        if cfg.port == 0 and sockets:  # port 0: one random port, on the first address that binds
            break
        sock = None
        try:
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart without waiting
            if family == socket.AF_INET6:  # its IPv4 twin is bound on its own; "::" alone takes both, whatever
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(has_ipv4))  # the OS's default
            sock.bind(address)
            sock.listen()  # SO_REUSEADDR lets two processes bind one port: only listen() finds the other
        except OSError as err:
            if sock is not None:
                sock.close()
            if err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) and len(unique) > 1:  # e.g. ::1 without IPv6
                continue
            for other in sockets:
                other.close()
            raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port} ({err.strerror or err})") from None
        sockets.append(sock)
    if not sockets:
        raise ConfigError(f"cannot listen on {cfg.host}:{cfg.port} (no usable address)")
    return sockets


def make_server(translator: Translator, cfg: ServeConfig, drain_s: float = DRAIN_S, grace_s: float = GRACE_S):
    """The uvicorn server of the app; ``server.run(sockets=...)`` serves until ``should_exit`` (a signal)."""
    import uvicorn

    from seqformer.serve.app import create_app

    app = create_app(translator, cfg)

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:  # uvicorn logs this only for sockets it opened itself; scripts wait for it
                host, port = (f"[{cfg.host}]" if ":" in cfg.host else cfg.host), sockets[0].getsockname()[1]
                logging.getLogger("uvicorn.error").info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)",
                                                        host, port)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # First the batcher, while every request still has its connection: new ones get 503, the queue
            # is served for up to drain_s (a second Ctrl-C cuts it short), then what is left gets 503.
            # (uvicorn alone waited 5 s, then cancelled the waiting requests: plain-text 500s.)
            app.state.batcher.close()
            await app.state.batcher.drain(drain_s, give_up=lambda: self.force_exit)
            await super().shutdown(sockets)

    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, access_log=cfg.access_log, log_level="info",
                            timeout_graceful_shutdown=grace_s)
    return Server(config)


def run(translator: Translator, cfg: ServeConfig, sockets: list[socket.socket]) -> None:
    """Serve on ``sockets`` (from :func:`bind`) until interrupted."""
    if not cfg.loopback:
        log.warning("listening on %s: reachable from other machines, with no authentication", cfg.host)
    make_server(translator, cfg).run(sockets=sockets)
