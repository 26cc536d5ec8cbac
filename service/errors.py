"""Every error leaves as JSON {"error": "..."} with a 4xx status that says what was wrong."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batcher import QueueFull

log = logging.getLogger("service")


class ServiceError(Exception):
    """A request the service answers with JSON {"error": message} and `status_code`."""

    status_code = 400

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class InputError(ServiceError, ValueError):
    """Input the service cannot turn into model input: 422 (400 for a body that is not what it
    claims to be, 413 for an image over the pixel limit, 415 for an unsupported encoding).
    `index` is the failing image of a batch, also named in the message; None for one input."""

    status_code = 422

    def __init__(
        self, message: str, status_code: int | None = None, index: int | None = None
    ) -> None:
        super().__init__(message if index is None else f"image {index}: {message}", status_code)
        self.index = index

    def for_item(self, index: int) -> InputError:
        """The same error, said of image `index` of a batch."""
        return InputError(self.message, self.status_code, index)


class ModelNotFound(ServiceError):
    """No loaded model, or no version of it, by the name the request gave: 404."""

    status_code = 404


class NotReady(ServiceError):
    """The models are not loaded yet (start-up) or no longer served (shutdown): 503."""

    status_code = 503


class PayloadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the limit of {limit} bytes")


def error_response(
    status: int, message: str, index: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict = {"error": message}
    if index is not None:
        body["index"] = index
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, getattr(exc, "index", None))

    @app.exception_handler(QueueFull)
    async def _busy(_: Request, exc: QueueFull) -> JSONResponse:
        return error_response(503, str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(PayloadTooLarge)
    async def _too_large(_: Request, exc: PayloadTooLarge) -> JSONResponse:
        return error_response(413, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        # The client hung up mid-body: nobody to answer, nothing went wrong here. 499 is the
        # conventional "client closed request" code; it only reaches the logs and metrics.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=499)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal error")


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413 without reading them into memory first.

    A declared Content-Length over the limit is refused before any body is read; a chunked body
    is counted as it streams in and stopped as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(413, str(PayloadTooLarge(self.max_bytes)))
            await response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)
