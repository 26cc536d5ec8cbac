"""Access control (API keys, CORS, rate limits) and model-file safety, on the real app."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import torch
from asgi_lifespan import LifespanManager

from service.app import create_app
from service.config import Settings
from tests.conftest import WEIGHTS_DIR
from training.checkpoint import WeightsError, load_weights

pytestmark = pytest.mark.anyio
PIXELS = {"pixels": [0] * 392 + [255] * 392}  # any pixel array with ink


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def serve(**overrides) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        weights_dir=WEIGHTS_DIR, device="cpu", models=["mlp"], model="mlp", **overrides
    )
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_auth_is_off_by_default() -> None:
    async with serve() as client:
        assert (await client.post("/predict", json=PIXELS)).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-API-Key": "wrong"}, 403),
        ({"X-API-Key": "s3cret-two"}, 200),
        ({"Authorization": "Bearer s3cret-one"}, 200),
        ({"Authorization": "Bearer nope"}, 403),
    ],
    ids=["none", "wrong", "header", "bearer", "wrong-bearer"],
)
async def test_api_keys(headers: dict, status: int) -> None:
    async with serve(api_keys=["s3cret-one", "s3cret-two"]) as client:
        r = await client.post("/predict", json=PIXELS, headers=headers)
        assert r.status_code == status
        if status != 200:
            assert "API key" in r.json()["error"]
        r = await client.get("/v2/models/mlp", headers=headers)
        assert r.status_code == status


async def test_keys_from_a_file_and_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# one key per line\nfrom-file\n")
    monkeypatch.setenv("MNIST_API_KEYS", "from-env-1, from-env-2")
    settings = Settings(
        weights_dir=WEIGHTS_DIR, device="cpu", models=["mlp"], model="mlp", api_keys_file=keys
    )
    assert settings.api_keys == ["from-env-1", "from-env-2"]
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for key, status in (("from-file", 200), ("from-env-2", 200), ("other", 403)):
                r = await client.post("/predict", json=PIXELS, headers={"X-API-Key": key})
                assert r.status_code == status


async def test_probes_and_metrics_stay_open_unless_configured() -> None:
    async with serve(api_keys=["k"]) as client:
        for path in ("/health", "/health/ready", "/health/live", "/v2/health/ready", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/model")).status_code == 401
    async with serve(api_keys=["k"], auth_probes=True, auth_metrics=True) as client:
        for path in ("/health", "/metrics"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers={"X-API-Key": "k"})).status_code == 200


async def test_cors_allow_list() -> None:
    async with serve(cors_origins=["https://app.example"]) as client:
        allowed = await client.post(
            "/predict", json=PIXELS, headers={"Origin": "https://app.example"}
        )
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.post(
            "/predict", json=PIXELS, headers={"Origin": "https://evil.example"}
        )
        assert "access-control-allow-origin" not in other.headers
        preflight = await client.options(
            "/predict",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200
    async with serve() as client:  # off by default: same-origin only
        r = await client.post("/predict", json=PIXELS, headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in r.headers


async def test_rate_limit_answers_429_with_retry_after() -> None:
    async with serve(rate_limit="3/minute") as client:
        statuses = [(await client.post("/predict", json=PIXELS)).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        r = await client.post("/predict", json=PIXELS)
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "rate limit" in r.json()["error"]
        assert (await client.get("/health")).status_code == 200  # probes are not limited


def write_meta_for(pt: Path, like: Path) -> None:
    meta = json.loads(like.read_text())
    meta["sha256"] = hashlib.sha256(pt.read_bytes()).hexdigest()
    pt.with_suffix(".json").write_text(json.dumps(meta))


class NotATensor:
    """Anything but tensors in a weights file: weights_only loading must refuse it."""

    def __reduce__(self):
        return (print, ("this would have run at load time",))


def test_weights_are_loaded_with_weights_only(tmp_path: Path) -> None:
    pt = tmp_path / "cnn.pt"
    torch.save({"payload": NotATensor()}, pt)
    write_meta_for(pt, WEIGHTS_DIR / "cnn.json")  # even with a matching checksum
    with pytest.raises(WeightsError, match="cannot load state_dict"):
        load_weights(pt)


def test_swapped_weights_are_refused(tmp_path: Path) -> None:
    shutil.copy(WEIGHTS_DIR / "mlp.pt", tmp_path / "cnn.pt")
    shutil.copy(WEIGHTS_DIR / "cnn.json", tmp_path / "cnn.json")
    with pytest.raises(WeightsError, match="does not match the metadata"):
        load_weights(tmp_path / "cnn.pt")


def test_weights_for_another_architecture_are_refused(tmp_path: Path) -> None:
    shutil.copy(WEIGHTS_DIR / "mlp.pt", tmp_path / "cnn.pt")
    write_meta_for(tmp_path / "cnn.pt", WEIGHTS_DIR / "cnn.json")  # checksum fixed up
    with pytest.raises(WeightsError, match="cannot load state_dict"):
        load_weights(tmp_path / "cnn.pt")


async def test_the_page_is_never_rate_limited() -> None:
    async with serve(rate_limit="2/minute") as client:
        for _ in range(4):
            assert (await client.get("/")).status_code == 200
            assert (await client.get("/static/app.js")).status_code == 200
        assert (await client.post("/predict", json=PIXELS)).status_code == 200
