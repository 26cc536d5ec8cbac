"""Fashion-MNIST end to end: the real files (Debian's dataset-fashion-mnist), a short real
training run, the shipped weights/fashion.pt served over REST and v2 with its class names, and
the upload rules for a model that does not read digits."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import WEIGHTS_DIR, app_client
from tests.test_training import QUICK
from tests.uploads import encode, paper, product_photo
from training import data, run
from training.augment import RandomErasing, RandomHFlip
from training.recipes import FASHION_RECIPES, RECIPES

CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
N = 64  # real test images per check


# --------------------------------------------------------------------------- data


def test_real_files_verify_and_split(fashion_dir: Path) -> None:
    fashion = data.load_dataset("fashion-mnist", fashion_dir, allow_download=False)
    assert fashion.train[0].shape == (55000, 28, 28) and fashion.val[0].shape == (5000, 28, 28)
    assert fashion.test[0].shape == (10000, 28, 28)
    assert list(fashion.classes) == CLASSES
    assert fashion.checksums == data.FASHION_FILES
    # The test split has exactly 1000 of each class; the images are light objects on black.
    assert np.bincount(fashion.test[1], minlength=10).tolist() == [1000] * 10
    assert np.median(fashion.test[0][:, 0, 0]) == 0


def test_the_other_datasets_files_are_named_in_the_error(mnist_dir: Path) -> None:
    with pytest.raises(data.IDXError, match=r"checksum mismatch.*it is MNIST's file"):
        data.load_split(mnist_dir, "test", dataset="fashion-mnist")


def test_missing_files_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(data.DatasetNotFound) as info:
        data.load_dataset("fashion-mnist", tmp_path, allow_download=False)
    message = str(info.value)
    assert "Fashion-MNIST not found" in message and "FASHION_MNIST_DATA_DIR" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_default_folder(monkeypatch, tmp_path: Path, fashion_dir: Path) -> None:
    monkeypatch.setenv("FASHION_MNIST_DATA_DIR", str(tmp_path))
    assert data.default_data_dir("fashion-mnist") == tmp_path
    monkeypatch.delenv("FASHION_MNIST_DATA_DIR")
    expected = data.DEBIAN_FASHION_DIR if data.DEBIAN_FASHION_DIR.is_dir() else None
    if expected is not None:  # installed: the Debian folder wins over the download target
        assert data.default_data_dir("fashion-mnist") == expected


# --------------------------------------------------------------------------- augmentation


def test_flips_for_clothes_never_for_digits() -> None:
    assert not any(r.hflip for r in RECIPES.values())  # a mirrored 2 is not a 2
    assert FASHION_RECIPES["cnn"].hflip and FASHION_RECIPES["cnn"].augment
    x = torch.rand(256, 1, 28, 28)
    torch.testing.assert_close(RandomHFlip(p=1.0)(x), x.flip(-1))
    torch.testing.assert_close(RandomHFlip(p=0.0)(x), x)
    flipped = (RandomHFlip()(x) != x).flatten(1).any(1).float().mean().item()
    assert 0.35 < flipped < 0.65


def test_random_erasing_blanks_one_rectangle() -> None:
    x = torch.ones(512, 1, 28, 28)
    out = RandomErasing(p=1.0, area=(0.1, 0.2))(x)
    erased = (out == 0).flatten(1).sum(1).float() / (28 * 28)
    assert (erased > 0.03).all() and (erased < 0.3).all()
    for image in out[:16, 0]:
        rows, cols = (image == 0).nonzero(as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == len(rows)  # the zeros fill their bounding box: one rectangle
    assert torch.equal(RandomErasing(p=0.0)(x), x)


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_short_real_training_run(tmp_path: Path, fashion_dir: Path) -> None:
    code = run.main(
        [
            "--dataset",
            "fashion-mnist",
            "--model",
            "mlp",
            "--epochs",
            "2",
            *QUICK,
            "--data-dir",
            str(fashion_dir),
            "--out",
            str(tmp_path / "weights"),
            "--run-dir",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    meta = json.loads((tmp_path / "weights" / "fashion-mlp.json").read_text())
    assert meta["dataset"]["name"] == "fashion-mnist"
    assert meta["dataset"]["checksums_md5"] == data.FASHION_FILES
    assert meta["class_names"] == CLASSES
    assert meta["recipe"]["hflip"] is True
    assert meta["test"]["accuracy"] > 0.7  # chance is 0.1
    for plot in ("curves.png", "confusion.png", "samples.png", "worst.png"):
        assert (tmp_path / "run" / plot).stat().st_size > 1000


def test_shipped_weights_record_dataset_and_classes() -> None:
    meta = json.loads((WEIGHTS_DIR / "fashion.json").read_text())
    assert meta["dataset"]["name"] == "fashion-mnist" and meta["class_names"] == CLASSES
    assert meta["architecture"]["name"] == "cnn"
    assert meta["test"]["accuracy"] >= 0.935 and meta["device"] != "x86_64"  # GPU-trained


# --------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(max_request_images=N) as c:
        yield c


def upload(img: Image.Image, fmt: str = "PNG") -> dict:
    return {"file": (f"item.{fmt.lower()}", encode(img, fmt))}


@pytest.mark.anyio
async def test_models_list_the_classes(client: httpx.AsyncClient) -> None:
    listed = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
    assert listed["fashion"]["dataset"] == "fashion-mnist"
    assert listed["fashion"]["class_names"] == CLASSES
    assert listed["cnn"]["dataset"] == "mnist"
    assert listed["cnn"]["class_names"] == [str(d) for d in range(10)]
    info = (await client.get("/model?model=fashion")).json()
    assert info["class_names"] == CLASSES and info["classes"] == list(range(10))
    assert "Fashion-MNIST form" in info["input"]["pixels"]
    assert "Fashion-MNIST pipeline" in info["input"]["uploads"]
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert {"label", "class_index", "digit"} <= set(schemas["Prediction"]["properties"])
    assert {"class_names", "dataset"} <= set(schemas["ModelInfo"]["properties"])


@pytest.mark.anyio
async def test_pixel_arrays_and_npy_name_the_class(client: httpx.AsyncClient, fashion_test):
    images, labels = fashion_test
    r = await client.post("/predict?model=fashion", json={"pixels": images[0].tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "digit" not in body  # not a digit model
    assert body["label"] == CLASSES[body["class_index"]] == CLASSES[labels[0]]
    assert body["probabilities"][body["class_index"]] == body["confidence"]

    buf = io.BytesIO()
    np.save(buf, images[:N])
    r = await client.post(
        "/predict/batch?model=fashion",
        content=buf.getvalue(),
        headers={"content-type": "application/x-npy"},
    )
    assert r.status_code == 200, r.text
    got = [p["label"] for p in r.json()["predictions"]]
    correct = sum(g == CLASSES[y] for g, y in zip(got, labels[:N], strict=True))
    assert correct >= 0.85 * N, got
    # The same arrays as JSON give the same answers.
    r = await client.post(
        "/predict/batch?model=fashion", json={"images": [im.tolist() for im in images[:N]]}
    )
    assert [p["label"] for p in r.json()["predictions"]] == got


@pytest.mark.anyio
async def test_normalize_is_the_digit_pipeline_and_is_refused(client, fashion_test) -> None:
    images, _ = fashion_test
    for path, body in (
        ("/predict", {"pixels": images[0].tolist(), "normalize": True}),
        ("/predict/batch", {"images": [images[0].tolist()], "normalize": True}),
    ):
        r = await client.post(f"{path}?model=fashion", json=body)
        assert r.status_code == 422
        assert "digit upload pipeline" in r.json()["error"]


@pytest.mark.anyio
async def test_product_photos_get_the_datasets_preprocessing(client, fashion_test) -> None:
    images, labels = fashion_test
    rng = np.random.default_rng(16)
    correct = 0
    for i in range(N):
        fmt = "JPEG" if i % 2 else "PNG"
        r = await client.post(
            "/predict?model=fashion&include_image=true",
            files=upload(product_photo(images[i], rng), fmt),
        )
        assert r.status_code == 200, r.text
        correct += r.json()["label"] == CLASSES[labels[i]]
        seen = np.array(r.json()["image"], dtype=np.float32)
        # Light object on black, filling the frame along its longer side, centred.
        assert seen.shape == (28, 28) and seen[0, 0] < 20 and seen.max() > 150
        assert np.abs(seen - images[i]).mean() < 40
    assert correct >= 0.8 * N, correct


@pytest.mark.anyio
async def test_dataset_form_uploads_are_taken_as_they_are(client, fashion_test) -> None:
    images, _ = fashion_test
    r = await client.post(
        "/predict?model=fashion&include_image=true",
        files=upload(Image.fromarray(images[3])),
    )
    assert r.status_code == 200
    assert np.array_equal(np.array(r.json()["image"]), images[3])
    # Batch uploads take the same path.
    files = [("files", (f"{i}.png", encode(Image.fromarray(images[i])))) for i in range(8)]
    r = await client.post("/predict/batch?model=fashion", files=files)
    assert r.status_code == 200
    direct = await client.post(
        "/predict/batch?model=fashion", json={"images": [im.tolist() for im in images[:8]]}
    )
    assert r.json()["predictions"] == direct.json()["predictions"]


@pytest.mark.anyio
async def test_upload_errors_are_clear(client: httpx.AsyncClient) -> None:
    flat = Image.new("RGB", (120, 80), (240, 240, 240))
    r = await client.post("/predict?model=fashion", files=upload(flat))
    assert r.status_code == 422 and "no object found" in r.json()["error"]
    r = await client.post(
        "/predict/batch?model=fashion", files=[("files", ("a.png", encode(flat)))]
    )
    assert r.status_code == 422 and r.json()["index"] == 0
    r = await client.post("/predict?model=fashion", files={"file": ("x.png", b"not an image")})
    assert r.status_code == 422 and "not a readable image" in r.json()["error"]


@pytest.mark.anyio
async def test_digit_models_keep_the_digit_pipeline(client, mnist_test) -> None:
    images, labels = mnist_test
    img = paper(images[0], np.random.default_rng(1))
    r = await client.post("/predict?model=cnn", files=upload(img))
    body = r.json()
    assert body["digit"] == labels[0] and body["label"] == str(labels[0])
    blank = Image.new("L", (100, 100), 255)
    r = await client.post("/predict?model=cnn", files=upload(blank))
    assert r.status_code == 422 and "no digit" in r.json()["error"]


# --------------------------------------------------------------------------- v2


@pytest.mark.anyio
async def test_v2_metadata_and_labels(client: httpx.AsyncClient, fashion_test) -> None:
    images, labels = fashion_test
    meta = (await client.get("/v2/models/fashion")).json()
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "class_index", "label"]
    assert meta["outputs"][2]["datatype"] == "BYTES"
    params = meta["parameters"]
    assert params["dataset"] == "fashion-mnist" and "9: Ankle boot" in params["classes"]
    assert "Fashion-MNIST form" in params["value_scale"]
    config = (await client.get("/v2/models/fashion/config")).json()
    assert config["output"][2] == {"name": "label", "data_type": "TYPE_STRING", "dims": []}

    tensor = {"name": "images", "datatype": "UINT8", "shape": [N, 784]}
    body = {"inputs": [{**tensor, "data": images[:N].ravel().tolist()}]}
    r = await client.post("/v2/models/fashion/infer", json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert set(outputs) == {"probabilities", "class_index", "label"}
    index, names = outputs["class_index"]["data"], outputs["label"]["data"]
    assert outputs["label"]["shape"] == [N] and names == [CLASSES[i] for i in index]
    assert sum(n == CLASSES[y] for n, y in zip(names, labels[:N], strict=True)) >= 0.85 * N

    # Binary: the labels as Triton lays BYTES out (4-byte length, then the UTF-8 bytes).
    raw = images[:N].tobytes()
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "label", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = await client.post(
        "/v2/models/fashion/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    tail, got = r.content[length:], []
    while tail:
        size = int.from_bytes(tail[:4], "little")
        got.append(tail[4 : 4 + size].decode())
        tail = tail[4 + size :]
    assert got == names

    body["outputs"] = [{"name": "digit"}]
    r = await client.post("/v2/models/fashion/infer", json=body)
    assert r.status_code == 400 and "unknown output 'digit'" in r.json()["error"]
