"""The FastAPI application: ``POST /translate``, ``GET /health``, ``GET /info`` and the page at ``/``.

(No ``from __future__ import annotations`` here: FastAPI reads the route's
annotations at runtime, and the request model is built inside ``create_app``.)
"""

from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse

from seqformer.config import DecodeConfig, to_dict
from seqformer.serve.batcher import Batcher
from seqformer.serve.limits import BodyLimit, install_error_handlers, unless_client_leaves
from seqformer.serve.schemas import ErrorBody, TranslateResponse, request_model
from seqformer.serve.service import options_of, request_cost, texts_of, translate_batch
from seqformer.serve.settings import ServeConfig
from seqformer.translator import Translator

PAGE = Path(__file__).resolve().parent.parent / "static" / "index.html"
_ERRORS = {413: {"model": ErrorBody}, 422: {"model": ErrorBody}, 503: {"model": ErrorBody}}


def create_app(translator: Translator, cfg: ServeConfig | None = None) -> FastAPI:
    """An app serving ``translator``; the batcher starts and stops with the app's lifespan."""
    from seqformer import __version__

    threads = torch.get_num_threads()
    cfg = cfg or ServeConfig()
    cfg = replace(cfg, streams=min(cfg.streams, threads))  # at most one per CPU thread, as translate --streams
    # each model thread sets its own share of the threads when it starts (PyTorch's count is per thread)
    share = partial(torch.set_num_threads, threads // cfg.streams) if cfg.streams > 1 else None
    batcher = Batcher(partial(translate_batch, translator), cfg.max_batch, cfg.batch_window_ms / 1000, cfg.max_queue,
                      streams=cfg.streams, thread_init=share)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            batcher.start()
            yield
            await batcher.stop()
        finally:  # PyTorch starts new threads at the count last set anywhere: the workers' share, until here
            torch.set_num_threads(threads)

    app = FastAPI(title="seqformer", version=__version__, lifespan=lifespan,
                  description=f"{translator.dir.src_lang or '?'}->{translator.dir.tgt_lang or '?'} translation")
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    install_error_handlers(app)
    translate_request = request_model(cfg, translator.model.cfg.tgt_vocab_size)
    info = _info(translator, cfg, __version__)  # the streams that run, not the number asked for

    @app.post("/translate", response_model=TranslateResponse, responses=_ERRORS)
    async def translate(req: translate_request, request: Request) -> dict:
        """Translate ``text`` or ``texts``; concurrent requests are batched together."""
        texts = texts_of(req)
        opts = options_of(req, cfg.max_batch, max_attention=cfg.max_nbest)  # one text's n-best at most
        cost = request_cost(texts, opts, cfg.max_batch, cfg.max_queue)
        results = await unless_client_leaves(request, batcher.submit(texts, opts, cost=cost))
        return {"results": [{"input": t, "translations": r} for t, r in zip(texts, results)]}

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 "ok"; 503 "draining" once shutdown has begun (a load balancer then sends new requests elsewhere)."""
        s = batcher.stats
        body = {"status": "draining" if batcher.closed else "ok", "queued": batcher.queued, "batches": s.batches,
                "requests": s.requests, "largest_batch": s.largest_batch}
        return JSONResponse(body, status_code=503 if batcher.closed else 200)

    @app.get("/info")
    async def get_info() -> dict:
        return info

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app


def _info(translator: Translator, cfg: ServeConfig, version: str) -> dict:
    mdir = translator.dir
    limits = {k: v for k, v in to_dict(cfg).items() if k not in ("host", "port", "access_log")}
    return {
        "name": "seqformer",
        "version": version,
        "model": mdir.path.name,
        "src_lang": mdir.src_lang,
        "tgt_lang": mdir.tgt_lang,
        "model_config": to_dict(translator.model.cfg),
        "decode_defaults": to_dict(DecodeConfig()),
        "limits": limits,
    }
