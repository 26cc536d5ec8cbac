"""LeanRoute (service/fastroute.py) answers exactly as FastAPI's own route would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import orjson
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from service.errors import InputError
from service.fastroute import HotPath, LeanRoute, lean_query

pytestmark = pytest.mark.anyio

Name = Annotated[str | None, Query(description="a name")]


async def echo(request: Request, model: Name = None, include_image: bool = False) -> Response:
    if model == "boom":
        raise InputError("unknown model 'boom'", status_code=404)
    if model == "crash":
        raise RuntimeError("a bug")  # no handler but the catch-all: 500
    if model == "http":
        raise HTTPException(418, "teapot")
    body = {
        "model": model,
        "include_image": include_image,
        "path": request.url.path,
        # Only FastAPI's request wrapper puts its exit stack in the scope: HotPath does not.
        "direct": "fastapi_inner_astack" not in request.scope,
    }
    return Response(orjson.dumps(body), media_type="application/json")


def dep() -> int:
    return 1


async def with_dependency(n: Annotated[int, Depends(dep)], flag: bool = False) -> Response:
    return Response(orjson.dumps({"n": n, "flag": flag}), media_type="application/json")


def build() -> FastAPI:
    from service import errors

    app = FastAPI()
    errors.install(app)
    for prefix, route_class in (("lean", LeanRoute), ("plain", APIRoute), ("hot", LeanRoute)):
        router = APIRouter(route_class=route_class)
        router.add_api_route(f"/{prefix}/echo", echo, methods=["POST"])
        router.add_api_route(f"/{prefix}/dep", with_dependency, methods=["POST"])
        app.include_router(router)
    app.add_middleware(HotPath, router=router)  # the "hot" routes
    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build(), raise_app_exceptions=False)
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
    "model=crash",  # an unexpected one
    "model=http",  # an HTTPException
    "model=%ff",
    "&&",
]


@pytest.mark.parametrize("query", QUERIES)
async def test_same_answer_as_fastapi(client: httpx.AsyncClient, query: str) -> None:
    for kind in ("echo", "dep"):
        plain = await client.post(f"/plain/{kind}?{query}")
        for prefix in ("lean", "hot"):
            lean = await client.post(f"/{prefix}/{kind}?{query}")
            assert lean.status_code == plain.status_code, (prefix, kind, query, lean.text)
            assert lean.headers.get("content-type") == plain.headers.get("content-type")
            lean_body, plain_body = lean.json(), plain.json()
            if isinstance(lean_body, dict) and "path" in lean_body:
                assert lean_body.pop("path") == f"/{prefix}/{kind}"
                assert plain_body.pop("path") == f"/plain/{kind}"
                direct = lean_body.pop("direct")
                assert plain_body.pop("direct") is False
                # HotPath calls the endpoint itself exactly when the query is simple.
                simple = LeanRoute("/x", echo, methods=["POST"]).dependant
                assert direct is (
                    prefix == "hot" and lean_query(simple)(query.encode()) is not None
                )
            assert lean_body == plain_body, (prefix, kind, query)


async def test_hot_path_takes_only_its_exact_route(client: httpx.AsyncClient) -> None:
    assert (await client.post("/hot/echo")).json()["direct"] is True
    assert (await client.post("/hot/echo/")).status_code in (307, 404)  # the router's answer
    assert (await client.get("/hot/echo")).status_code == 405  # another method: the router
    assert (await client.post("/hot/echo?model=a&model=b")).json()["direct"] is False


def test_only_simple_endpoints_take_the_fast_path() -> None:
    def handler(endpoint) -> str:
        return LeanRoute("/x", endpoint, methods=["POST"]).get_route_handler().__qualname__

    assert handler(echo).startswith("LeanRoute.")
    assert not handler(with_dependency).startswith("LeanRoute.")  # FastAPI solves its Depends
