"""The real app with the shipped weights, driven over ASGI by httpx with real image bytes."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.config import Settings
from tests.conftest import WEIGHTS_DIR, app_client, cpu_settings, started
from tests.uploads import canvas, encode, paper, png_header_bomb
from training.checkpoint import load_weights
from training.models import normalize

pytestmark = pytest.mark.anyio

SMALL_LIMITS = dict(
    max_request_bytes=1_000_000,
    max_upload_bytes=400_000,
    max_request_images=4,
    max_image_pixels=1_000_000,
)


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(**SMALL_LIMITS) as c:
        yield c


def assert_prediction(body: dict) -> None:
    assert set(body) >= {"digit", "confidence", "probabilities", "model"}
    assert 0 <= body["digit"] <= 9
    assert len(body["probabilities"]) == 10
    assert sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-9)
    assert body["confidence"] == max(body["probabilities"])
    assert body["probabilities"][body["digit"]] == body["confidence"]
    # Every answer names its class; for a digit model the name is the digit.
    assert body["class_index"] == body["digit"] and body["label"] == str(body["digit"])


async def test_health_endpoints(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/health/ready"):
        r = await client.get(path)
        assert r.status_code == 200
        assert r.json()["status"] == "ok"
        assert r.json()["default_model"] == "cnn"
    assert (await client.get("/health/live")).json() == {"status": "ok"}


def test_renamed_settings_still_read_their_old_environment_names(monkeypatch) -> None:
    monkeypatch.setenv("MNIST_MAX_BATCH_SIZE", "7")  # now MNIST_MAX_REQUEST_IMAGES
    monkeypatch.setenv("MNIST_BATCH_MAX_SIZE", "9")  # now MNIST_BATCH_MAX_IMAGES
    settings = Settings()
    assert (settings.max_request_images, settings.batch_max_images) == (7, 9)
    monkeypatch.setenv("MNIST_MAX_REQUEST_IMAGES", "5")  # the new name wins over the old
    assert Settings().max_request_images == 5


async def test_not_ready_before_startup() -> None:
    app = create_app(cpu_settings())  # lifespan not run
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/health")).status_code == 503
        assert (await c.get("/health/ready")).status_code == 503
        assert (await c.get("/health/live")).status_code == 200
        r = await c.post("/predict", json={"pixels": [0] * 784})
        assert r.status_code == 503 and "not loaded" in r.json()["error"]


@pytest.mark.parametrize("shape", ["grid", "flat"])
async def test_json_pixels(client: httpx.AsyncClient, mnist_test, shape: str) -> None:
    images, labels = mnist_test
    for i in range(5):
        pixels = images[i].tolist() if shape == "grid" else images[i].ravel().tolist()
        r = await client.post("/predict", json={"pixels": pixels})
        assert r.status_code == 200, r.text
        assert_prediction(r.json())
        assert r.json()["digit"] == labels[i]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
async def test_upload_formats(client: httpx.AsyncClient, mnist_test, fmt: str) -> None:
    images, labels = mnist_test
    rng = np.random.default_rng(1)
    for i in range(3):
        data = encode(paper(images[i], rng, size=120), fmt)
        r = await client.post("/predict", files={"file": (f"d.{fmt.lower()}", data)})
        assert r.status_code == 200, r.text
        assert_prediction(r.json())
        assert r.json()["digit"] == labels[i]


async def test_pixel_arrays_reproduce_the_model_exactly(client: httpx.AsyncClient, mnist_test):
    """Pixel arrays go to the model as they are: same answers as the model on the test set."""
    images, _ = mnist_test
    model, _ = load_weights(WEIGHTS_DIR / "cnn.pt")
    import torch

    with torch.inference_mode():
        direct = torch.softmax(model(normalize(torch.from_numpy(images[:4]).unsqueeze(1))), 1)
    r = await client.post("/predict/batch", json={"images": [im.tolist() for im in images[:4]]})
    assert r.status_code == 200
    served = np.array([p["probabilities"] for p in r.json()["predictions"]])
    np.testing.assert_allclose(served, direct.double().numpy(), atol=1e-5)


async def test_batch_keeps_input_order(client: httpx.AsyncClient, mnist_test) -> None:
    images, labels = mnist_test
    rng = np.random.default_rng(2)
    files = [("files", (f"{i}.png", encode(paper(images[i], rng)), "image/png")) for i in range(4)]
    r = await client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    assert [p["digit"] for p in r.json()["predictions"]] == labels[:4].tolist()


async def test_model_choice_and_info(client: httpx.AsyncClient, mnist_test) -> None:
    images, labels = mnist_test
    for name in ("cnn", "mlp", "rnn"):
        r = await client.post(f"/predict?model={name}", json={"pixels": images[0].tolist()})
        assert r.status_code == 200 and r.json()["model"] == name
        assert r.json()["digit"] == labels[0]
    info = (await client.get("/model")).json()
    assert info["name"] == "cnn" and info["device"] == "cpu" and info["test_accuracy"] > 0.996
    assert len(info["sha256"]) == 64 and info["parameters"] > 100_000
    listed = (await client.get("/models")).json()
    assert listed["default"] == "cnn"
    assert [m["name"] for m in listed["models"]] == ["cnn", "fashion", "mlp", "rnn"]
    digit_models = [m for m in listed["models"] if m["dataset"] == "mnist"]
    assert [m["name"] for m in digit_models] == ["cnn", "mlp", "rnn"]
    assert all(m["class_names"] == [str(d) for d in range(10)] for m in digit_models)


async def test_include_image_returns_what_the_model_saw(client: httpx.AsyncClient, mnist_test):
    images, _ = mnist_test
    data = encode(paper(images[0], np.random.default_rng(3)))
    r = await client.post("/predict?include_image=true", files={"file": ("d.png", data)})
    seen = np.array(r.json()["image"])
    assert seen.shape == (28, 28) and seen.max() > 200 and seen[0].max() < 50


def _nan_body() -> bytes:
    return b'{"pixels": [' + b",".join([b"NaN"] + [b"0"] * 783) + b"]}"


BAD_REQUESTS = [
    # (id, request kwargs, status, message fragment)
    (
        "not-an-image",
        {"files": {"file": ("x.png", b"hello, not an image")}},
        422,
        "not a readable image",
    ),
    ("empty-file", {"files": {"file": ("x.png", b"")}}, 422, "empty"),
    (
        "truncated-png",
        {"files": {"file": ("x.png", encode(Image.new("L", (200, 200), 9))[:60])}},
        422,
        "image",
    ),
    (
        "bomb-header",
        {"files": {"file": ("x.png", png_header_bomb(100_000, 100_000))}},
        413,
        "too large",
    ),
    ("too-many-bytes", {"files": {"file": ("x.bin", b"\0" * 1_100_000)}}, 413, "limit"),
    ("file-over-limit", {"files": {"file": ("x.bin", b"\0" * 500_000)}}, 413, "limit"),
    (
        "wrong-content-type",
        {"content": b"abc", "headers": {"content-type": "text/plain"}},
        415,
        "content type",
    ),
    ("no-content-type", {"content": b"abc"}, 415, "content type"),
    ("missing-field", {"files": {"image": ("x.png", b"abc")}}, 422, "missing form field 'file'"),
    (
        "text-not-file",
        {"data": {"file": "abc"}, "files": {"other": ("x", b"1")}},
        422,
        "file upload",
    ),
    (
        "invalid-json",
        {"content": b"{nope", "headers": {"content-type": "application/json"}},
        400,
        "invalid JSON",
    ),
    ("no-pixels", {"json": {"pixel": []}}, 422, "pixels"),
    ("short", {"json": {"pixels": [0] * 783}}, 422, "784"),
    ("ragged", {"json": {"pixels": [[0] * 28] * 27 + [[0] * 27]}}, 422, "row"),
    (
        "nan",
        {"content": _nan_body(), "headers": {"content-type": "application/json"}},
        422,
        "finite",
    ),
    ("strings", {"json": {"pixels": ["a"] * 784}}, 422, "numbers"),
    ("too-bright", {"json": {"pixels": [256] * 784}}, 422, "0-255"),
    ("negative", {"json": {"pixels": [-1] * 784}}, 422, "0-255"),
    (
        "blank-canvas",
        {"files": {"file": ("x.png", encode(Image.new("RGBA", (300, 300))))}},
        422,
        "no digit found",
    ),
    (
        "white-page",
        {"files": {"file": ("x.png", encode(Image.new("L", (300, 300), 255)))}},
        422,
        "no digit found",
    ),
]


@pytest.mark.parametrize(
    ("request_kwargs", "status", "fragment"),
    [b[1:] for b in BAD_REQUESTS],
    ids=[b[0] for b in BAD_REQUESTS],
)
async def test_bad_input_gets_a_clear_4xx(
    client: httpx.AsyncClient, request_kwargs: dict, status: int, fragment: str
) -> None:
    r = await client.post("/predict", **request_kwargs)
    assert r.status_code == status, r.text
    assert fragment.lower() in r.json()["error"].lower()
    # ... and the server still answers correctly afterwards.
    ok = await client.post("/predict", json={"pixels": [0] * 392 + [255] * 392})
    assert ok.status_code == 200


async def test_chunked_body_over_limit_is_cut_off(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(150):
            yield b"\0" * 10_000

    r = await client.post(
        "/predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("body", "status", "fragment", "index"),
    [
        ({"images": []}, 422, "empty batch", None),
        ({"images": [[0] * 784] * 5}, 413, "limit of 4", None),
        ({"images": [[0] * 784, [0] * 10, [0] * 784]}, 422, "image 1", 1),
    ],
    ids=["empty", "over-limit", "bad-item"],
)
async def test_bad_batches(
    client: httpx.AsyncClient, body: dict, status: int, fragment: str, index: int | None
) -> None:
    r = await client.post("/predict/batch", json=body)
    assert r.status_code == status
    assert fragment in r.json()["error"]
    assert r.json().get("index") == index


NPY = {"content-type": "application/x-npy"}


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def forged_npy(shape: tuple[int, ...], data: bytes) -> bytes:
    """A .npy header that claims `shape` of uint8, followed by `data`."""
    buffer = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


@pytest.mark.parametrize("dtype", ["uint8", "int64", "float32", ">f8"])
@pytest.mark.parametrize("layout", ["grid", "flat", "fortran"])
async def test_npy_batches_answer_as_json_does(
    client: httpx.AsyncClient, mnist_test, dtype: str, layout: str
) -> None:
    images, labels = mnist_test
    batch = images[:4].astype(dtype)
    if layout == "flat":
        batch = batch.reshape(4, 784)
    elif layout == "fortran":
        batch = np.asfortranarray(batch)
    r = await client.post("/predict/batch", content=npy(batch), headers=NPY)
    assert r.status_code == 200, r.text
    as_json = await client.post(
        "/predict/batch", json={"images": [im.tolist() for im in images[:4]]}
    )
    served = [p["probabilities"] for p in r.json()["predictions"]]
    expected = [p["probabilities"] for p in as_json.json()["predictions"]]
    np.testing.assert_allclose(served, expected, atol=1e-6)
    assert [p["digit"] for p in r.json()["predictions"]] == labels[:4].tolist()


@pytest.mark.parametrize("shape", [(28, 28), (784,)])
async def test_npy_single_image(client: httpx.AsyncClient, mnist_test, shape: tuple) -> None:
    images, labels = mnist_test
    r = await client.post("/predict", content=npy(images[7].reshape(shape)), headers=NPY)
    assert r.status_code == 200, r.text
    assert_prediction(r.json())
    assert r.json()["digit"] == labels[7]


def _bad_pixel(value: float) -> np.ndarray:
    batch = np.zeros((3, 28, 28), dtype=np.float64)
    batch[1, 5, 6] = value
    return batch


BAD_NPY = [
    # (id, path, body, status, message fragment, index)
    ("garbage", "/predict/batch", b"not numpy at all", 400, "not a valid .npy", None),
    (
        "negative-shape",
        "/predict/batch",
        forged_npy((-1, -784), b"\0" * 784),
        400,
        "negative",
        None,
    ),
    ("truncated", "/predict/batch", npy(np.zeros((2, 28, 28), np.uint8))[:-5], 400, "bytes", None),
    # A header claiming 784 GB: refused from its size alone, nothing allocated.
    ("forged-shape", "/predict/batch", forged_npy((10**9, 28, 28), b"\0" * 64), 400, "bytes", None),
    ("strings", "/predict/batch", npy(np.array([["a"] * 784])), 422, "numbers", None),
    (
        "objects",
        "/predict/batch",
        npy(np.array([None, 1]), allow_pickle=True),
        422,
        "numbers",
        None,
    ),
    ("booleans", "/predict/batch", npy(np.ones((1, 784), bool)), 422, "numbers", None),
    ("wrong-shape", "/predict/batch", npy(np.zeros((3, 5), np.uint8)), 422, "shape", None),
    ("empty", "/predict/batch", npy(np.zeros((0, 28, 28), np.uint8)), 422, "empty batch", None),
    ("over-limit", "/predict/batch", npy(np.zeros((5, 784), np.uint8)), 413, "limit of 4", None),
    (
        "out-of-range",
        "/predict/batch",
        npy(_bad_pixel(300.0)),
        422,
        "image 1: pixels must be 0-255",
        1,
    ),
    ("nan", "/predict/batch", npy(_bad_pixel(np.nan)), 422, "image 1: pixels must be finite", 1),
    ("negative", "/predict/batch", npy(_bad_pixel(-1.0).astype(np.int16)), 422, "0-255", 1),
    ("batch-to-predict", "/predict", npy(np.zeros((2, 28, 28), np.uint8)), 422, "shape", None),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment", "index"),
    [b[1:] for b in BAD_NPY],
    ids=[b[0] for b in BAD_NPY],
)
async def test_bad_npy_bodies_get_a_clear_4xx(
    client: httpx.AsyncClient, path: str, body: bytes, status: int, fragment: str, index: int | None
) -> None:
    r = await client.post(path, content=body, headers=NPY)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    assert r.json().get("index") == index


async def test_bad_file_inside_a_batch_names_its_index(client: httpx.AsyncClient, mnist_test):
    images, _ = mnist_test
    good = encode(paper(images[0], np.random.default_rng(4)))
    files = [("files", ("a.png", good)), ("files", ("b.png", good)), ("files", ("c.png", b"??"))]
    r = await client.post("/predict/batch", files=files)
    assert r.status_code == 422 and r.json()["index"] == 2


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    r = await client.post("/predict?model=resnet", json={"pixels": [0] * 784})
    assert r.status_code == 404 and "resnet" in r.json()["error"]


async def test_openapi_documents_both_bodies_with_examples(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, field in (("/predict", "file"), ("/predict/batch", "files")):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert field in content["multipart/form-data"]["schema"]["properties"]
        assert "examples" in content["application/json"]["schema"]
    assert (await client.get("/docs")).status_code == 200


async def test_accuracy_on_realistic_uploads(client: httpx.AsyncClient, mnist_test) -> None:
    """A few hundred MNIST test digits as paper photos and canvas exports, through the API."""
    images, labels = mnist_test
    rng = np.random.default_rng(5)
    picks = rng.choice(len(images), 200, replace=False)
    correct = 0
    for n, i in enumerate(picks):
        img = paper(images[i], rng) if n % 2 else canvas(images[i], rng)
        data = encode(img, "JPEG" if n % 4 == 1 else "PNG")
        r = await client.post("/predict", files={"file": ("d", data)})
        assert r.status_code == 200, r.text
        correct += r.json()["digit"] == labels[i]
    assert correct / len(picks) >= 0.97


async def test_full_batching_queue_answers_503_with_retry_after(mnist_test) -> None:
    settings = cpu_settings(
        models=["mlp"],
        model="mlp",
        batch_max_delay_ms=300,
        batch_queue_limit=1,
    )
    app = create_app(settings)
    async with started(app) as c:
        batcher = next(iter(app.state.registry.batchers.values()))
        # One image queued while another request is still on its way: the collector
        # waits (up to 300 ms) for that one, so the queue of 1 is full meanwhile.
        with batcher.arriving():
            queued = asyncio.create_task(batcher.submit(mnist_test[0][:1]))
            await asyncio.sleep(0)
            busy = await c.post("/predict", json={"pixels": mnist_test[0][0].tolist()})
        assert (await queued).shape == (1, 10)
        after = await c.post("/predict", json={"pixels": mnist_test[0][0].tolist()})
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "1" and "busy" in busy.json()["error"]
    assert after.status_code == 200


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_move_with_requests(mnist_test) -> None:
    # Metrics are per process: a fresh app, so gauges reflect this app's three models.
    async with app_client() as client:
        await check_metrics(client, mnist_test)


async def check_metrics(client: httpx.AsyncClient, mnist_test) -> None:
    before = (await client.get("/metrics")).text
    images, labels = mnist_test
    await client.post("/predict?model=mlp", json={"pixels": images[0].tolist()})
    await client.post("/predict", json={"pixels": [1, 2, 3]})
    after = (await client.get("/metrics")).text
    ok = dict(endpoint="/predict", status="200", model="mlp")
    assert (
        metric(after, "mnist_requests_total", **ok)
        == metric(before, "mnist_requests_total", **ok) + 1
    )
    assert (
        metric(after, "mnist_errors_total", kind="invalid_input")
        == metric(before, "mnist_errors_total", kind="invalid_input") + 1
    )
    digit = dict(model="mlp", digit=str(labels[0]))
    assert (
        metric(after, "mnist_predicted_class_total", **digit)
        == metric(before, "mnist_predicted_class_total", **digit) + 1
    )
    assert metric(after, "mnist_images_predicted_total", model="mlp") > metric(
        before, "mnist_images_predicted_total", model="mlp"
    )
    assert metric(after, "mnist_batch_size_count", model="mlp") > 0
    assert metric(after, "mnist_inference_duration_seconds_count", model="mlp") > 0
    assert metric(after, "mnist_request_duration_seconds_count", endpoint="/predict") > 0
    assert metric(after, "mnist_models_loaded") == 4  # cnn, fashion, mlp, rnn
    assert metric(after, "mnist_model_ready", model="cnn") == 1
    assert metric(after, "mnist_device_info", device="cpu") == 1


async def test_uvicorn_access_records_are_not_even_built() -> None:
    import logging

    # The uvicorn CLI sets its access logger to INFO; the service writes its own access line,
    # and turns uvicorn's off to the point that no record is built for a request at all.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.setLevel(logging.INFO)
    async with app_client() as c:
        assert (await c.get("/health/live")).status_code == 200
        assert not uvicorn_access.isEnabledFor(logging.INFO)


async def test_one_structured_log_line_per_request(client: httpx.AsyncClient, caplog) -> None:
    import json
    import logging

    with caplog.at_level(logging.INFO, logger="service.access"):
        await client.post(
            "/predict/batch?model=mlp", json={"images": [[0] * 392 + [255] * 392] * 3}
        )
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "service.access"]
    assert len(lines) == 1
    assert lines[0] | {"latency_ms": 0} == {
        "method": "POST",
        "path": "/predict/batch",
        "status": 200,
        "latency_ms": 0,
        "model": "mlp",
        "images": 3,
        "client": "127.0.0.1",
    }
