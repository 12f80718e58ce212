"""Request guards and error bodies: every error is JSON ``{"error": ..., "field": ...}``.

413 for a body over the size limit, 422 for a bad field (named), 503 when the
queue is full or the server is shutting down, 500 (without internals) when translation
itself fails; 499 (nginx's "client closed request", for the access log: nobody reads
it) when the client hung up before its translation was computed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seqformer.serve.batcher import Overloaded

log = logging.getLogger("seqformer.serve")


class FieldError(Exception):
    """A request field whose value is valid alone but not with the others (e.g. nbest > beam_size)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ClientGone(Exception):
    """The client closed the connection while its request waited: the request is dropped."""


async def _hung_up(request: Request) -> None:
    """Return when the client disconnects (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Awaitable[Any]) -> Any:
    """``work``'s result, or :class:`ClientGone` (``work`` cancelled) if the client hangs up first.

    Neither uvicorn nor Starlette cancels a plain handler when its client goes away, so without this an
    abandoned request kept its place in the queue and was translated for nobody.
    """
    job, gone = asyncio.ensure_future(work), asyncio.ensure_future(_hung_up(request))
    try:
        await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not job.done():  # the client left: cancel() only asks, so wait until the job has taken it
            job.cancel()
            await asyncio.wait({job})
    finally:  # (also when this handler itself is cancelled)
        gone.cancel()
        if not job.done():
            job.cancel()
    if job.cancelled():
        raise ClientGone
    return job.result()


def error_response(status: int, message: str, field: str | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status)


class BodyLimit:
    """Reject bodies over ``max_bytes`` with 413 before the app reads them (declared or streamed size)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._reject(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"request body larger than {self.max_bytes} bytes", "body")
        await response(scope, receive, send)


def _field_name(loc: tuple | list) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    if not parts or not isinstance(loc[-len(parts)], str):  # ("body", 0): a position in a body that is not JSON
        return "body"
    name = parts[0]
    for p in parts[1:]:
        name += f"[{p}]" if p.isdigit() else f".{p}"
    return name


_ECHO_DEPTH = 8  # the 422's detail nested deeper is cut ("..."; the input echoed in it at ~6 levels): 600 levels of
# [[[...]]] overflowed the stack (a 500)


def _printable(value: Any, depth: int = 0) -> Any:
    """``value`` with every string made encodable as UTF-8 (lone surrogates as backslash escapes), lists and
    objects below ``_ECHO_DEPTH`` levels replaced by "..."."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (list, dict)) and depth >= _ECHO_DEPTH:
        return "..."
    if isinstance(value, list):
        return [_printable(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_printable(k): _printable(v, depth + 1) for k, v in value.items()}
    return value


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    field = _printable(_field_name(first.get("loc", ())))
    # ctx may hold exceptions, and an echoed input NaN / Infinity or a lone surrogate ("\ud800": valid JSON, not
    # UTF-8), which JSON responses cannot carry: as strings, a surrogate as its escape.
    detail = _printable(json.loads(json.dumps(_printable(errors), default=str), parse_constant=str))
    return error_response(422, f"{field}: {first.get('msg', 'invalid value')}", field, detail=detail)


async def _field_error(request: Request, exc: FieldError) -> JSONResponse:
    return error_response(422, f"{exc.field}: {exc}", exc.field)


async def _client_gone(request: Request, exc: ClientGone) -> JSONResponse:
    return error_response(499, "client closed the connection")


async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
    response = error_response(503, f"server overloaded: {exc}")
    response.headers["Retry-After"] = "1"
    return response


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail), "field": None}, status_code=exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("request failed: %r", exc)
    return error_response(500, "internal error while translating")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(FieldError, _field_error)
    app.add_exception_handler(Overloaded, _overloaded)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
