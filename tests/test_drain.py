"""The drain's HTTP side on the real app (in process); tests/test_scale.py sends the real
SIGTERM to real worker processes."""

from __future__ import annotations

import signal

import pytest

from service import drain
from tests.conftest import app_client

pytestmark = pytest.mark.anyio


async def test_while_draining_readiness_is_503_and_every_answer_closes_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with app_client(models=["mlp"], model="mlp") as client:
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
