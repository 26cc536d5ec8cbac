"""LeanRoute (service/fastroute.py) answers exactly as FastAPI's own route would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import orjson
import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from service.errors import InputError
from service.fastroute import LeanRoute

pytestmark = pytest.mark.anyio

Name = Annotated[str | None, Query(description="a name")]


async def echo(request: Request, model: Name = None, include_image: bool = False) -> Response:
    if model == "boom":
        raise InputError("unknown model 'boom'", status_code=404)
    body = {"model": model, "include_image": include_image, "path": request.url.path}
    return Response(orjson.dumps(body), media_type="application/json")


def dep() -> int:
    return 1


async def with_dependency(n: Annotated[int, Depends(dep)], flag: bool = False) -> Response:
    return Response(orjson.dumps({"n": n, "flag": flag}), media_type="application/json")


def build() -> FastAPI:
    from service import errors

    app = FastAPI()
    errors.install(app)
    for prefix, route_class in (("lean", LeanRoute), ("plain", APIRoute)):
        router = APIRouter(route_class=route_class)
        router.add_api_route(f"/{prefix}/echo", echo, methods=["POST"])
        router.add_api_route(f"/{prefix}/dep", with_dependency, methods=["POST"])
        app.include_router(router)
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


QUERIES = [
    "",
    "model=cnn",
    "model=mlp&include_image=true",
    "include_image=1",
    "include_image=0&model=a%20b",
    "include_image=false",
    "include_image=TRUE",  # not a fast-path spelling: FastAPI decides
    "include_image=yes",
    "include_image=maybe",  # 422 from FastAPI's validation
    "include_image=",
    "model=",
    "model=a&model=b",  # repeated
    "other=1",  # unknown names are ignored by FastAPI
    "model=boom",  # the endpoint's own error
    "model=%ff",
    "&&",
]


@pytest.mark.parametrize("query", QUERIES)
async def test_same_answer_as_fastapi(client: httpx.AsyncClient, query: str) -> None:
    for kind in ("echo", "dep"):
        lean = await client.post(f"/lean/{kind}?{query}")
        plain = await client.post(f"/plain/{kind}?{query}")
        assert lean.status_code == plain.status_code, (kind, query, lean.text, plain.text)
        lean_body, plain_body = lean.json(), plain.json()
        if isinstance(lean_body, dict) and "path" in lean_body:
            assert lean_body.pop("path") == f"/lean/{kind}"
            assert plain_body.pop("path") == f"/plain/{kind}"
        assert lean_body == plain_body, (kind, query)


def test_only_simple_endpoints_take_the_fast_path() -> None:
    def handler(endpoint) -> str:
        return LeanRoute("/x", endpoint, methods=["POST"]).get_route_handler().__qualname__

    assert handler(echo).startswith("LeanRoute.")
    assert not handler(with_dependency).startswith("LeanRoute.")  # FastAPI solves its Depends
