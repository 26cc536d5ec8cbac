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
from typing import Any
from urllib.parse import parse_qsl

from fastapi import routing
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
BOOLS = {"true": True, "1": True, "false": False, "0": False}


def _kind(annotation: Any) -> str | None:
    """ "str" or "bool" for the query parameter types the fast path parses, else None."""
    if annotation is bool:
        return "bool"
    if annotation is str or set(typing.get_args(annotation)) == {str, type(None)}:
        return "str"
    return None


class LeanRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        full = super().get_route_handler()
        # Under include_router, FastAPI builds the handler for an "effective" route that may
        # carry the router's dependencies: use its dependant, as FastAPI itself does.
        context_var = getattr(routing, "_effective_route_context_var", None)
        context = context_var.get() if context_var is not None else None
        dependant = context.dependant if context is not None else self.dependant
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
                simple = False
                break
            fields[field.alias] = (field.name, kind, field.field_info.default)
        if not simple:
            return full
        request_name = dependant.request_param_name
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

        async def handler(request: Request) -> Response:
            values = parse(request.scope["query_string"])
            if values is None:
                return await full(request)
            values[request_name] = request
            return await call(**values)

        return handler
