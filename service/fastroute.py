"""A route class for the hot endpoints: documented like any FastAPI route, called more cheaply.

FastAPI's per-request handler solves the endpoint's parameters in general: it builds the query
multidict, a scratch Response for dependencies, runs each parameter through pydantic, and more.
For /predict that was ~12% of a worker's CPU under load (py-spy, bench/RESULTS.md). The
endpoints that opt in take only the Request, plain `str | None` and `bool` query parameters and
return a Response themselves; for those, `LeanRoute` reads the query string directly when it is
simple (every name known and given once, booleans spelled true/false/1/0) and calls the
endpoint. Anything else (an unknown or repeated name, `include_image=maybe`, ...) goes through
FastAPI's own handler, so validation, defaults and error messages stay exactly FastAPI's.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import routing
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
BOOLS = {"true": True, "1": True, "false": False, "0": False}


def _kind(annotation: Any) -> str | None:
    """ "str" or "bool" for the query parameter types the fast path parses, else None."""
    if annotation is bool:
        return "bool"
    if annotation is str or set(typing.get_args(annotation)) == {str, type(None)}:
        return "str"
    return None


QueryParser = Callable[[bytes], dict[str, Any] | None]


def lean_query(dependant: Dependant) -> QueryParser | None:
    """For an endpoint that qualifies (it takes the Request and optional `str | None` / `bool`
    query parameters only, and returns a Response), a parser from a raw query string to its
    keyword arguments, which answers None when the query is not simple. None otherwise."""
    call = dependant.call
    simple = (
        call is not None
        and inspect.iscoroutinefunction(call)
        and dependant.request_param_name is not None
        and not (dependant.dependencies or dependant.body_params or dependant.path_params)
        and not (dependant.header_params or dependant.cookie_params)
        and not (dependant.response_param_name or dependant.background_tasks_param_name)
        and inspect.isclass(ret := typing.get_type_hints(call).get("return"))
        and issubclass(ret, Response)
    )
    fields = {}
    for field in dependant.query_params if simple else ():
        kind = _kind(field.field_info.annotation)
        if kind is None or field.field_info.is_required():
            return None
        fields[field.alias] = (field.name, kind, field.field_info.default)
    if not simple:
        return None
    defaults = {name: default for name, _, default in fields.values()}

    def parse(query: bytes) -> dict[str, Any] | None:
        values = dict(defaults)
        if not query:
            return values
        seen = set()
        for key, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if key not in fields or key in seen:
                return None
            if value == "":  # FastAPI's own rules for empty values apply
                return None
            seen.add(key)
            name, kind, _ = fields[key]
            if kind == "bool":
                if value not in BOOLS:
                    return None
                values[name] = BOOLS[value]
            else:
                values[name] = value
        return values

    return parse


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        full = super().get_route_handler()
        # Under include_router, FastAPI builds the handler for an "effective" route that may
        # carry the router's dependencies: use its dependant, as FastAPI itself does.
        context_var = getattr(routing, "_effective_route_context_var", None)
        context = context_var.get() if context_var is not None else None
        dependant = context.dependant if context is not None else self.dependant
        parse = lean_query(dependant)
        if parse is None:
            return full
        call, request_name = dependant.call, dependant.request_param_name
        assert call is not None and request_name is not None  # checked by lean_query

        async def handler(request: Request) -> Response:
            values = parse(request.scope["query_string"])
            if values is None:
                return await full(request)
            values[request_name] = request
            return await call(**values)

        return handler


@dataclass(frozen=True)
class _Hot:
    route: APIRoute
    parse: QueryParser
    call: Callable[..., Coroutine[Any, Any, Response]]
    request_name: str


class HotPath:
    """Pure ASGI middleware, the innermost of the app's: requests for the lean routes of
    `router` go straight to their endpoint.

    Between the app's middleware and a route, Starlette and FastAPI still spend ~40 us per
    request on this machine (routing through every route's regex, the exception middleware,
    two exit stacks, FastAPI's request wrapper, LeanRoute's handler): a tenth of a PNG /predict.
    For a request whose method and path are exactly a lean route's (no root_path) and whose
    query the route's parser takes, this calls the endpoint itself, answers its exceptions with
    the app's own exception handlers (Starlette's lookup: status code, then the class's MRO),
    and leaves anything without a handler to the server-error middleware, as Starlette does.
    Every middleware of the app (size limit, access control, telemetry, CORS, drain) runs as
    before: it sits outside. Anything else goes on through the router unchanged. The router
    must be included without a prefix or router dependencies (service/app.py), so that its
    routes are exactly what the app serves.
    """

    def __init__(self, app: ASGIApp, router: APIRouter) -> None:
        self.app = app
        self.routes: dict[tuple[str, str], _Hot] = {}
        for route in router.routes:
            if not isinstance(route, LeanRoute):
                continue
            parse = lean_query(route.dependant)
            call, request_name = route.dependant.call, route.dependant.request_param_name
            if parse is None or call is None or request_name is None:
                continue
            for method in route.methods:
                self.routes[(method, route.path)] = _Hot(route, parse, call, request_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        hot = (
            self.routes.get((scope["method"], scope["path"]))
            if scope["type"] == "http" and not scope.get("root_path")
            else None
        )
        values = hot.parse(scope["query_string"]) if hot is not None else None
        if hot is None or values is None:
            await self.app(scope, receive, send)
            return
        # What routing would have put in the scope (telemetry labels requests by the route).
        scope["route"], scope["endpoint"], scope["path_params"] = hot.route, hot.call, {}
        request = Request(scope, receive, send)
        values[hot.request_name] = request
        try:
            response = await hot.call(**values)
        except Exception as exc:
            handler = _exception_handler(scope["app"].exception_handlers, exc)
            if handler is None:
                raise
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
        await response(scope, receive, send)


def _exception_handler(handlers: dict[Any, Callable], exc: Exception) -> Callable | None:
    """The handler Starlette's exception middleware would pick; None for the catch-all one
    (Exception, 500), which belongs to the server-error middleware."""
    if isinstance(exc, HTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None
