"""The images people really send, through the real app: tight crops are read, blanks refused.

Tight crops come from training/synthetic_uploads.py, the renderer `bench/upload_accuracy.py`
measures with (the ink's own box of a real MNIST test digit, 0-2 px margin, either polarity,
32-128 px, some blurred); the no-digit images are real PNGs. The same no-digit rule holds for
pixel arrays, .npy bodies, batch items and v2 tensors.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.upload_accuracy import SEED
from tests.conftest import app_client
from tests.uploads import encode
from training.synthetic_uploads import cutoff, lowres, tight

pytestmark = pytest.mark.anyio

CROPS = 500
PER_REQUEST = 100


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client() as c:
        yield c


async def read_all(client: httpx.AsyncClient, uploads: list[bytes]) -> list[int | None]:
    """The digit the service reads in each upload (None where it answered 422)."""
    digits: list[int | None] = []
    for start in range(0, len(uploads), PER_REQUEST):
        chunk = uploads[start : start + PER_REQUEST]
        files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(chunk)]
        r = await client.post("/predict/batch", files=files)
        if r.status_code == 200:
            digits += [p["digit"] for p in r.json()["predictions"]]
            continue
        assert r.status_code == 422, r.text  # one refused image fails its request: go singly
        for data in chunk:
            one = await client.post("/predict", files={"file": ("d.png", data, "image/png")})
            digits.append(one.json()["digit"] if one.status_code == 200 else None)
    return digits


@pytest.mark.parametrize(("family", "minimum"), [(tight, 0.97), (lowres, 0.95), (cutoff, 0.93)])
async def test_tight_crops_are_read(
    client: httpx.AsyncClient, mnist_test: tuple[np.ndarray, np.ndarray], family, minimum: float
) -> None:
    images, labels = mnist_test
    count = CROPS if family is tight else CROPS // 5
    uploads = [family(images[i], np.random.default_rng([SEED, 99, i])) for i in range(count)]
    digits = await read_all(client, uploads)
    refused = sum(d is None for d in digits)
    accuracy = float(np.mean([d == label for d, label in zip(digits, labels, strict=False)]))
    assert refused == 0, f"{refused} clear digits refused"
    assert accuracy >= minimum, f"{family.__name__}: accuracy {accuracy:.3f} < {minimum}"


def speckled(size: int = 200, specks: int = 12, seed: int = 5) -> Image.Image:
    rng = np.random.default_rng(seed)
    page = np.full((size, size), 235, np.uint8)
    for y, x in rng.integers(5, size - 5, (specks, 2)):
        page[y : y + 2, x : x + 2] = 20  # dust: 2x2 px dark dots
    return Image.fromarray(page)


def no_digit_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(1)
    return {
        "white": Image.new("L", (120, 90), 255),
        "black-28": Image.new("L", (28, 28), 0),
        "grey-photo": Image.new("RGB", (400, 300), (120, 130, 140)),
        "transparent-canvas": Image.new("RGBA", (448, 448), (0, 0, 0, 0)),
        "gradient": Image.fromarray(np.tile(np.linspace(60, 200, 160), (120, 1)).astype(np.uint8)),
        "gaussian-noise": Image.fromarray(
            np.clip(rng.normal(128, 30, (200, 200)), 0, 255).astype(np.uint8)
        ),
        "uniform-noise": Image.fromarray(rng.integers(0, 256, (150, 150), dtype=np.uint8)),
        "specks": speckled(),
        "one-speck-64": speckled(64, 1),
    }


@pytest.mark.parametrize("name", list(no_digit_images()))
async def test_images_without_a_digit_are_refused(client: httpx.AsyncClient, name: str) -> None:
    data = encode(no_digit_images()[name], "PNG")
    r = await client.post("/predict", files={"file": ("x.png", data, "image/png")})
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("no digit found"), r.json()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def v2_body(images: np.ndarray) -> bytes:
    tensor = {
        "name": "images",
        "datatype": "UINT8",
        "shape": [len(images), 784],
        "data": images.reshape(-1).tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


BLANK = np.zeros((28, 28), np.uint8)
NPY = {"headers": {"Content-Type": "application/x-npy"}}
V2 = "/v2/models/cnn/infer"


@pytest.mark.parametrize(
    ("path", "kwargs", "index"),
    [
        ("/predict", {"json": {"pixels": BLANK.tolist()}}, None),
        ("/predict", {"json": {"pixels": [255] * 784}}, None),  # uniform: all ink
        ("/predict", {"content": npy(BLANK), **NPY}, None),
        ("/predict/batch", {"json": {"images": [[0] * 392 + [255] * 392, [9] * 784]}}, 1),
        ("/predict/batch", {"content": npy(np.stack([BLANK + 255, BLANK])), **NPY}, 0),
        (V2, {"content": v2_body(BLANK[None])}, None),
        (V2, {"content": v2_body(np.stack([BLANK + 200, BLANK]))}, 0),
    ],
    ids=["pixels", "uniform", "npy", "batch-json", "batch-npy", "v2", "v2-batch"],
)
async def test_blank_pixels_get_the_uploads_answer(
    client: httpx.AsyncClient, path: str, kwargs: dict, index: int | None
) -> None:
    upload = await client.post(
        "/predict", files={"file": ("b.png", encode(Image.fromarray(BLANK)))}
    )
    r = await client.post(path, **kwargs)
    assert r.status_code == upload.status_code == 422, r.text
    assert "no digit found: the image is blank or uniform" in r.json()["error"]
    assert r.json().get("index") == index
