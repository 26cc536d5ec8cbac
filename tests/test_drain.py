"""The drain's HTTP side on the real app (in process); tests/test_scale.py sends the real
SIGTERM to real worker processes."""

from __future__ import annotations

import signal

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service import drain
from service.app import create_app
from service.config import Settings
from tests.conftest import WEIGHTS_DIR

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


async def test_while_draining_readiness_is_503_and_every_answer_closes_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings(weights_dir=WEIGHTS_DIR, device="cpu", models=["mlp"], model="mlp")
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/health/ready")).status_code == 200
            monkeypatch.setattr(drain.state, "draining", True)
            for path in ("/health/ready", "/health", "/v2/health/ready"):
                r = await client.get(path)
                assert r.status_code == 503, path
                assert r.json()["status"] == "draining"
                assert r.headers["connection"] == "close"
            live = await client.get("/health/live")
            assert live.status_code == 200, "liveness must hold: a draining pod is not dead"
            r = await client.post("/predict", json={"pixels": [0] * 392 + [255] * 392})
            assert r.status_code == 200, "requests are still served"
            assert r.headers["connection"] == "close"
            assert (await client.get("/v2/health/live")).status_code == 200


def test_the_handler_is_installed_only_under_uvicorn() -> None:
    before = signal.getsignal(signal.SIGTERM)
    assert drain.install_sigterm_handler(5) is False  # here: pytest's process, not uvicorn's
    assert signal.getsignal(signal.SIGTERM) is before
