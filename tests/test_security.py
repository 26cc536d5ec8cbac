"""Access control (API keys, CORS, rate limits) and model-file safety, on the real app."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
import redis
import torch

from service.app import create_app
from service.config import Settings
from service.security import STORAGE_RETRY_S
from tests.conftest import WEIGHTS_DIR, app_client, cpu_settings, started
from tests.servers import free_port, redis_server
from training.checkpoint import WeightsError, load_weights

pytestmark = pytest.mark.anyio
PIXELS = {"pixels": [0] * 392 + [255] * 392}  # any pixel array with ink


def serve(**overrides) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    """The app serving the mlp alone, with `overrides`, and a client."""
    return app_client(models=["mlp"], model="mlp", **overrides)


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
    # The file is read when the settings load: its keys join those of the environment.
    settings = cpu_settings(models=["mlp"], model="mlp", api_keys_file=keys)
    assert settings.api_keys == ["from-env-1", "from-env-2", "from-file"]
    async with started(create_app(settings)) as client:
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


# ---------------------------------------------------------------------------------------------
# whom the rate limit counts, and where


async def test_a_rotating_api_key_header_does_not_escape_the_limit_when_keys_are_off() -> None:
    async with serve(rate_limit="3/minute") as client:
        statuses = [
            (await client.post("/predict", json=PIXELS, headers={"X-API-Key": f"k{i}"})).status_code
            for i in range(5)
        ]
        assert statuses == [200, 200, 200, 429, 429]
        bearer = {"Authorization": "Bearer another"}
        assert (await client.post("/predict", json=PIXELS, headers=bearer)).status_code == 429


async def test_with_keys_on_each_valid_key_has_its_own_bucket() -> None:
    async with serve(rate_limit="2/minute", api_keys=["a", "b"]) as client:

        async def status(key: str) -> int:
            r = await client.post("/predict", json=PIXELS, headers={"X-API-Key": key})
            return r.status_code

        assert [await status("a") for _ in range(3)] == [200, 200, 429]
        assert [await status("b") for _ in range(3)] == [200, 200, 429]
        # On the open /metrics, a made-up key counts against the address, not a bucket of its own.
        assert (await client.get("/metrics", headers={"X-API-Key": "x1"})).status_code == 200
        assert (await client.get("/metrics", headers={"X-API-Key": "x2"})).status_code == 200
        assert (await client.get("/metrics", headers={"X-API-Key": "x3"})).status_code == 429


def serve_from(peer: str, **overrides) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    """The app, with requests arriving from `peer` (the connection's address)."""
    return serve(peer=peer, **overrides)


async def forwarded_statuses(client: httpx.AsyncClient, addresses: list[str]) -> list[int]:
    statuses = []
    for address in addresses:
        r = await client.post("/predict", json=PIXELS, headers={"X-Forwarded-For": address})
        statuses.append(r.status_code)
    return statuses


async def test_x_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    rotating = [f"203.0.113.{i}" for i in range(4)]
    # Off by default: the header is ignored, the connection's address is the client.
    async with serve_from("127.0.0.1", rate_limit="2/minute") as client:
        assert await forwarded_statuses(client, rotating) == [200, 200, 429, 429]
    # Behind a trusted proxy: one bucket per client it names.
    async with serve_from("10.0.0.5", rate_limit="2/minute", trusted_proxies=["10.0.0.0/8"]) as c:
        assert await forwarded_statuses(c, ["198.51.100.7"] * 3) == [200, 200, 429]
        assert await forwarded_statuses(c, ["198.51.100.8"]) == [200]
        # A client's own X-Forwarded-For before the proxy's entry does not make it someone else.
        spoofed = ["192.0.2.1, 198.51.100.7", "192.0.2.2, 198.51.100.7"]
        assert await forwarded_statuses(c, spoofed) == [429, 429]
    # From a peer that is not a trusted proxy, the header is ignored.
    async with serve_from("192.0.2.50", rate_limit="2/minute", trusted_proxies=["10.0.0.0/8"]) as c:
        assert await forwarded_statuses(c, rotating) == [200, 200, 429, 429]


async def test_rate_limits_are_shared_through_redis() -> None:
    """Two apps (as two worker processes would) behind one Redis: one count between them."""
    with redis_server() as uri:
        async with (
            serve(rate_limit="3/minute", rate_limit_storage=uri) as first,
            serve(rate_limit="3/minute", rate_limit_storage=uri) as second,
        ):
            statuses = []
            for client in (first, second, first, second, first):
                statuses.append((await client.post("/predict", json=PIXELS)).status_code)
            assert statuses == [200, 200, 200, 429, 429]


async def test_an_unreachable_redis_fails_open_logged_and_counted(caplog) -> None:
    uri = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="service"):
        async with serve(rate_limit="1/minute", rate_limit_storage=uri) as client:
            before = storage_errors((await client.get("/metrics")).text)
            statuses = [(await client.post("/predict", json=PIXELS)).status_code for _ in range(3)]
            after = storage_errors((await client.get("/metrics")).text)
    assert statuses == [200, 200, 200]
    assert after - before >= 3  # the 3 predictions and the first /metrics went unchecked
    warnings = [r.getMessage() for r in caplog.records if "rate-limit storage" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per outage, not once per request
    assert f"127.0.0.1:{uri.rsplit(':', 1)[1]}" in warnings[0]


async def test_a_redis_outage_mid_run_fails_open_then_limits_resume(caplog) -> None:
    post = {"json": PIXELS}
    with caplog.at_level(logging.INFO, logger="service"), redis_server() as uri:
        async with serve(rate_limit="3/minute", rate_limit_storage=uri) as client:
            assert (await client.post("/predict", **post)).status_code == 200
            redis.Redis.from_url(uri).shutdown(nosave=True)  # Redis dies mid-run
            before = storage_errors((await client.get("/metrics")).text)
            statuses = [(await client.post("/predict", **post)).status_code for _ in range(5)]
            assert statuses == [200] * 5  # over the limit, but unchecked: fail open
            assert storage_errors((await client.get("/metrics")).text) - before >= 5
            port = int(uri.rsplit(":", 1)[1])
            with redis_server(port):  # back, empty; tried again after STORAGE_RETRY_S
                await asyncio.sleep(STORAGE_RETRY_S + 0.2)
                statuses = [(await client.post("/predict", **post)).status_code for _ in range(5)]
                assert statuses == [200, 200, 200, 429, 429]
    messages = [r.getMessage() for r in caplog.records if "rate-limit storage" in r.getMessage()]
    assert len(messages) == 2 and "answers again" in messages[1], messages


def storage_errors(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("mnist_rate_limit_storage_errors_total "):
            return float(line.split()[1])
    raise AssertionError("mnist_rate_limit_storage_errors_total missing from /metrics")


def test_unknown_rate_limit_storage_is_refused() -> None:
    with pytest.raises(ValueError, match="memory:// or redis://"):
        Settings(rate_limit_storage="memcached://127.0.0.1:11211")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"rate_limit": "fifty a second"}, "couldn't parse rate limit string"),
        ({"rate_limit": "5/fortnight"}, "no granularity matched"),
        ({"api_keys_file": "/nonexistent/keys.txt"}, "MNIST_API_KEYS_FILE: cannot read"),
        ({"trusted_proxies": "10.0.0.300"}, "does not appear to be an IPv4 or IPv6 network"),
        ({"trusted_proxies": "10.0.0.1/8"}, "has host bits set"),
        ({"trusted_proxies": "*,10.0.0.0/8"}, "give it alone"),
    ],
)
def test_access_settings_are_checked_when_they_load(overrides: dict, fragment: str) -> None:
    # Not when the middleware is first built (the first request), and not silently dropped:
    # uvicorn takes a malformed proxy address for a host name that never matches.
    with pytest.raises(ValueError, match=fragment):
        Settings(**overrides)
