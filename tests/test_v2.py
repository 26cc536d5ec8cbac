"""The Open Inference Protocol (KServe v2 / Triton) endpoints: the spec's JSON shapes over ASGI,
then NVIDIA's own `tritonclient[http]` against a real `python -m service` process."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.predictor import Predictor
from tests.conftest import WEIGHTS_DIR, app_client, cpu_settings, started
from tests.servers import running_service

MAX_BATCH = 32
N = 16  # real MNIST test images per inference
DIGIT_OUTPUTS = ["probabilities", "digit", "class_index", "label"]  # a digit model's, in order


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(max_request_images=MAX_BATCH, max_request_bytes=2**21) as c:
        yield c


def json_input(arr: np.ndarray, datatype: str, nested: bool = True) -> dict:
    return {
        "name": "images",
        "datatype": datatype,
        "shape": list(arr.shape),
        "data": arr.tolist() if nested else arr.ravel().tolist(),
    }


def binary_request(
    arr: np.ndarray, datatype: str, outputs: list | None = None, binary_output: bool = True
) -> tuple[bytes, dict[str, str]]:
    """A request as the binary tensor data extension lays it out: JSON header, then tensors."""
    raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    request: dict = {
        "inputs": [
            {
                "name": "images",
                "datatype": datatype,
                "shape": list(arr.shape),
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "parameters": {"binary_data_output": binary_output},
    }
    if outputs is not None:
        request["outputs"] = outputs
    header = json.dumps(request).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def read_outputs(r: httpx.Response) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON answer and its tensors, from JSON data or from the binary tail."""
    length = r.headers.get("inference-header-content-length")
    header = json.loads(r.content[: int(length)] if length else r.content)
    tail = r.content[int(length) :] if length else b""
    dtypes = {"FP32": "<f4", "INT64": "<i8"}
    tensors, offset = {}, 0
    for out in header["outputs"]:
        size = out.get("parameters", {}).get("binary_data_size")
        if out["datatype"] == "BYTES":  # strings: JSON, or each a 4-byte length and its bytes
            values = np.array(out["data"] if size is None else bytes_elements(tail, offset, size))
            offset += size or 0
        elif size is None:
            values = np.array(out["data"], dtype=dtypes[out["datatype"]])
        else:
            values = np.frombuffer(tail[offset : offset + size], dtype=dtypes[out["datatype"]])
            offset += size
        tensors[out["name"]] = values.reshape(out["shape"])
    assert offset == len(tail)
    return header, tensors


def bytes_elements(tail: bytes, offset: int, size: int) -> list[str]:
    """Triton's binary BYTES layout: a 4-byte little-endian length, then the bytes, each."""
    out, end = [], offset + size
    while offset < end:
        length = int.from_bytes(tail[offset : offset + 4], "little")
        out.append(tail[offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    assert offset == end
    return out


def check_digits(tensors: dict[str, np.ndarray], labels: np.ndarray) -> None:
    probs, digits = tensors["probabilities"], tensors["digit"]
    assert probs.shape == (len(labels), 10) and digits.shape == (len(labels),)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == digits).all()
    assert digits.tolist() == labels.tolist()
    if "class_index" in tensors:  # the same index, and for digits the name is the digit
        assert tensors["class_index"].tolist() == digits.tolist()
    if "label" in tensors:
        assert tensors["label"].tolist() == [str(d) for d in labels]


# --------------------------------------------------------------------------- metadata, health


@pytest.mark.anyio
async def test_server_metadata_and_health(client: httpx.AsyncClient) -> None:
    meta = (await client.get("/v2")).json()
    assert meta["name"] == "mnist-serve" and meta["version"]
    assert "binary_tensor_data" in meta["extensions"]
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("version", ["", "/versions/1"])
@pytest.mark.parametrize("model", ["cnn", "mlp"])
async def test_model_metadata(client: httpx.AsyncClient, model: str, version: str) -> None:
    r = await client.get(f"/v2/models/{model}{version}")
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["name"] == model and meta["versions"] == ["1"]
    assert meta["platform"] == "pytorch"
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "digit", "datatype": "INT64", "shape": [-1]},
        {"name": "class_index", "datatype": "INT64", "shape": [-1]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
    ]
    params = meta["parameters"]
    assert params["value_range"] == "0-255"
    assert "0 = background, 255 = ink" in params["value_scale"]
    assert "[N, 784]" in params["input_shapes"] and "UINT8" in params["input_datatypes"]
    assert params["max_batch_size"] == MAX_BATCH and params["architecture"] == model
    # Parameter values are strings, numbers or booleans, as the spec's $parameters allow.
    assert all(isinstance(v, str | int | float | bool) for v in params.values())


@pytest.mark.anyio
async def test_model_ready_and_config(client: httpx.AsyncClient) -> None:
    for path in ("/v2/models/cnn/ready", "/v2/models/rnn/versions/1/ready"):
        r = await client.get(path)
        assert r.status_code == 200 and r.json()["ready"] is True
    for path, fragment in (
        ("/v2/models/nope/ready", "unknown model 'nope'"),
        ("/v2/models/cnn/versions/2/ready", "no version '2'"),
        ("/v2/models/cnn/versions/2", "no version '2'"),
        ("/v2/models/nope", "unknown model"),
    ):
        r = await client.get(path)
        assert r.status_code == 404 and fragment in r.json()["error"], (path, r.text)
    config = (await client.get("/v2/models/cnn/config")).json()
    assert config["max_batch_size"] == MAX_BATCH
    assert config["input"] == [{"name": "images", "data_type": "TYPE_FP32", "dims": [1, 28, 28]}]
    assert [o["name"] for o in config["output"]] == DIGIT_OUTPUTS


@pytest.mark.anyio
async def test_not_ready_before_startup() -> None:
    app = create_app(cpu_settings())  # lifespan not run
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        assert (await c.get("/v2/health/live")).status_code == 200
        body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 784]}]}
        for r in (
            await c.get("/v2/health/ready"),
            await c.get("/v2/models/cnn"),
            await c.get("/v2/models/cnn/ready"),
            await c.get("/v2/models/cnn/versions/1/ready"),
            await c.post("/v2/models/cnn/infer", json=body),
        ):
            assert r.status_code == 503, r.url
            assert "not loaded" in r.json()["error"]


# --------------------------------------------------------------------------- inference, JSON


LAYOUTS = [
    # (datatype, shape of the images, nested data)
    ("FP32", (N, 1, 28, 28), True),
    ("FP32", (N, 1, 28, 28), False),
    ("FP32", (N, 28, 28), True),
    ("FP32", (N, 784), False),
    ("UINT8", (N, 784), True),
    ("UINT8", (N, 1, 28, 28), False),
    ("FP64", (N, 28, 28), False),
    ("INT64", (N, 784), False),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("datatype", "shape", "nested"), LAYOUTS)
async def test_infer_json(
    client: httpx.AsyncClient, mnist_test, datatype: str, shape: tuple, nested: bool
) -> None:
    images, labels = mnist_test
    arr = images[:N].reshape(shape)
    arr = arr.astype(np.float32) if datatype.startswith("FP") else arr
    r = await client.post(
        "/v2/models/cnn/infer", json={"inputs": [json_input(arr, datatype, nested)]}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in r.headers
    answer, tensors = read_outputs(r)
    assert answer["model_name"] == "cnn" and answer["model_version"] == "1"
    assert "id" not in answer
    assert [o["name"] for o in answer["outputs"]] == DIGIT_OUTPUTS
    check_digits(tensors, labels[:N])


@pytest.mark.anyio
async def test_same_probabilities_as_the_rest_api(client: httpx.AsyncClient, mnist_test) -> None:
    images, _ = mnist_test
    v2 = await client.post(
        "/v2/models/cnn/infer", json={"inputs": [json_input(images[:4], "UINT8")]}
    )
    rest = await client.post("/predict/batch", json={"images": [im.tolist() for im in images[:4]]})
    _, tensors = read_outputs(v2)
    expected = np.array([p["probabilities"] for p in rest.json()["predictions"]])
    np.testing.assert_allclose(tensors["probabilities"], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.anyio
async def test_outputs_subset_and_id(client: httpx.AsyncClient, mnist_test) -> None:
    images, labels = mnist_test
    body = {
        "id": "req-42",
        "inputs": [json_input(images[:3], "UINT8")],
        "outputs": [{"name": "digit"}],
    }
    r = await client.post("/v2/models/mlp/infer", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["id"] == "req-42" and answer["model_name"] == "mlp"
    assert answer["outputs"] == [
        {"name": "digit", "datatype": "INT64", "shape": [3], "data": labels[:3].tolist()}
    ]
    # Outputs come back in the order asked for.
    body["outputs"] = [{"name": "digit"}, {"name": "probabilities"}]
    r = await client.post("/v2/models/mlp/versions/1/infer", json=body)
    assert [o["name"] for o in r.json()["outputs"]] == ["digit", "probabilities"]


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["cnn", "mlp", "rnn"])
async def test_every_model_and_the_version_path(
    client: httpx.AsyncClient, mnist_test, model: str
) -> None:
    images, labels = mnist_test
    body = {"inputs": [json_input(images[:N], "UINT8", nested=False)]}
    r = await client.post(f"/v2/models/{model}/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["model_name"] == model
    check_digits(read_outputs(r)[1], labels[:N])


# --------------------------------------------------------------------------- inference, binary


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("datatype", "dtype", "shape"),
    [
        ("FP32", np.float32, (N, 1, 28, 28)),
        ("UINT8", np.uint8, (N, 28, 28)),
        ("UINT8", np.uint8, (N, 784)),
        ("FP16", np.float16, (N, 784)),
        ("FP64", np.float64, (N, 1, 28, 28)),
        ("INT32", np.int32, (N, 28, 28)),
    ],
)
async def test_binary_in_and_out(
    client: httpx.AsyncClient, mnist_test, datatype: str, dtype: type, shape: tuple
) -> None:
    images, labels = mnist_test
    content, headers = binary_request(images[:N].astype(dtype).reshape(shape), datatype)
    r = await client.post("/v2/models/cnn/infer", content=content, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    answer, tensors = read_outputs(r)
    assert all(o["parameters"]["binary_data_size"] > 0 for o in answer["outputs"])
    assert all("data" not in o for o in answer["outputs"])
    assert answer["outputs"][0]["parameters"]["binary_data_size"] == N * 10 * 4
    assert answer["outputs"][1]["parameters"]["binary_data_size"] == N * 8
    check_digits(tensors, labels[:N])


@pytest.mark.anyio
async def test_binary_per_output_overrides(client: httpx.AsyncClient, mnist_test) -> None:
    images, labels = mnist_test
    # binary_data on an output overrides the request's binary_data_output, either way.
    outputs = [{"name": "probabilities", "parameters": {"binary_data": False}}, {"name": "digit"}]
    content, headers = binary_request(images[:N], "UINT8", outputs, binary_output=True)
    r = await client.post("/v2/models/cnn/infer", content=content, headers=headers)
    answer, tensors = read_outputs(r)
    assert "data" in answer["outputs"][0] and "parameters" not in answer["outputs"][0]
    assert answer["outputs"][1]["parameters"] == {"binary_data_size": N * 8}
    check_digits(tensors, labels[:N])

    outputs = [{"name": "digit", "parameters": {"binary_data": True}}]
    content, headers = binary_request(images[:N], "UINT8", outputs, binary_output=False)
    r = await client.post("/v2/models/cnn/infer", content=content, headers=headers)
    assert r.headers["content-type"] == "application/octet-stream"
    assert read_outputs(r)[1]["digit"].tolist() == labels[:N].tolist()

    # Binary in, all JSON out: a plain JSON answer without the header.
    content, headers = binary_request(images[:N], "UINT8", binary_output=False)
    r = await client.post("/v2/models/cnn/infer", content=content, headers=headers)
    assert r.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in r.headers
    check_digits(read_outputs(r)[1], labels[:N])


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_request(client: httpx.AsyncClient, mnist_test, encoding: str) -> None:
    import zlib

    images, labels = mnist_test
    content, headers = binary_request(images[:N], "UINT8")
    packed = gzip.compress(content) if encoding == "gzip" else zlib.compress(content)
    r = await client.post(
        "/v2/models/cnn/infer", content=packed, headers={**headers, "Content-Encoding": encoding}
    )
    assert r.status_code == 200, r.text
    check_digits(read_outputs(r)[1], labels[:N])


@pytest.mark.anyio
@pytest.mark.parametrize("batching", [True, False], ids=["batcher", "threadpool"])
async def test_inference_runs_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch, mnist_test, batching: bool
) -> None:
    threads: list[int] = []
    original = Predictor.predict

    def recording(self: Predictor, images: np.ndarray) -> np.ndarray:
        threads.append(threading.get_ident())
        return original(self, images)

    monkeypatch.setattr(Predictor, "predict", recording)
    async with app_client(models=["mlp"], model="mlp", batching=batching) as c:
        threads.clear()  # the warm-up pass at start-up does not count
        # Three images: an idle server runs passes of one or two on the loop itself.
        body = {"inputs": [json_input(mnist_test[0][:3], "UINT8")]}
        r = await c.post("/v2/models/mlp/infer", json=body)
    assert r.status_code == 200, r.text
    assert threads and threading.get_ident() not in threads


# --------------------------------------------------------------------------- errors


def _request(inputs: object = None, **extra: object) -> bytes:
    if inputs is None:
        inputs = [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": [1, 784],
                "data": [0] * 392 + [255] * 392,
            }
        ]
    return json.dumps({"inputs": inputs, **extra}).encode()


def _one(datatype: str = "UINT8", shape: list | None = None, data: object = None, **kw) -> bytes:
    spec = {
        "name": "images",
        "datatype": datatype,
        "shape": [1, 784] if shape is None else shape,
        "data": [0] * 392 + [255] * 392 if data is None else data,
        **kw,
    }
    return _request([spec])


def _raw_pixels(first: str) -> bytes:
    """JSON text with `first` (e.g. NaN) as the first pixel: not expressible via json.dumps."""
    values = ",".join([first] + ["0"] * 783)
    return (
        '{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 784], "data": ['
        + values
        + "]}]}"
    ).encode()


def _binary(size: int, nbytes: int, header_extra: int = 0) -> tuple[bytes, dict]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "datatype": "UINT8",
                    "shape": [1, 784],
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    length = str(len(header) + header_extra)
    return header + b"\0" * nbytes, {"Inference-Header-Content-Length": length}


INFER = "/v2/models/cnn/infer"
BAD = [
    # (id, path, body, headers, status, fragment of the error message)
    ("unknown-model", "/v2/models/nope/infer", _request(), {}, 404, "unknown model 'nope'"),
    ("bad-version", "/v2/models/cnn/versions/7/infer", _request(), {}, 404, "no version '7'"),
    ("wrong-shape", INFER, _one(shape=[1, 28, 27], data=[0] * 756), {}, 400, "shape [1, 28, 27]"),
    ("shape-not-ints", INFER, _one(shape=[1, "784"]), {}, 400, "'shape' must be"),
    ("empty-batch", INFER, _one(shape=[0, 784], data=[]), {}, 400, "empty batch"),
    ("too-many", INFER, _one(shape=[MAX_BATCH + 1, 784]), {}, 413, "exceeds the limit"),
    ("bytes-type", INFER, _one(datatype="BYTES"), {}, 400, "datatype 'BYTES' not accepted"),
    ("bool-type", INFER, _one(datatype="BOOL"), {}, 400, "datatype 'BOOL' not accepted"),
    ("too-few", INFER, _one(data=[0] * 783), {}, 400, "has 783 values, but shape [1, 784]"),
    ("too-many-values", INFER, _one(data=[0] * 785), {}, 400, "needs 784"),
    ("nan", INFER, _raw_pixels("NaN"), {}, 400, "NaN"),
    ("infinity", INFER, _raw_pixels("-Infinity"), {}, 400, "-Infinity"),
    ("overflow-to-inf", INFER, _raw_pixels("1e999"), {}, 400, "finite"),
    (
        "above-255",
        INFER,
        _one(data=[300] + [0] * 783),
        {},
        400,
        "0-255, MNIST polarity: 0 = background, 255 = ink; found 300 at",
    ),
    ("negative", INFER, _one("FP32", data=[0.0] * 9 + [-1.5] + [0.0] * 774), {}, 400, "index 9"),
    ("strings", INFER, _one(data=["0"] * 784), {}, 400, "must be integers; found str"),
    ("bools", INFER, _one(data=[True] * 784), {}, 400, "found true/false"),
    ("floats-in-uint8", INFER, _one(data=[0.5] * 784), {}, 400, "UINT8 data must be integers"),
    ("nulls", INFER, _one("FP32", data=[None] * 784), {}, 400, "found NoneType"),
    ("ragged", INFER, _one(shape=[2, 784], data=[[0] * 784, [0] * 783]), {}, 400, "ragged"),
    ("mixed", INFER, _one(data=[[0] * 783, 0]), {}, 400, "mixes arrays and numbers"),
    ("nest-vs-shape", INFER, _one(data=[[0] * 28] * 28), {}, 400, "nested data has shape"),
    (
        "no-data",
        INFER,
        _request([{"name": "images", "datatype": "UINT8", "shape": [1, 784]}]),
        {},
        400,
        "missing 'data'",
    ),
    ("input-name", INFER, _one(name="x"), {}, 400, "unknown input 'x'"),
    ("two-inputs", INFER, _request([json.loads(_one())["inputs"][0]] * 2), {}, 400, "exactly one"),
    ("no-inputs", INFER, b'{"outputs": []}', {}, 400, "'inputs' must be"),
    ("malformed-json", INFER, b'{"inputs": [', {}, 400, "invalid JSON"),
    ("not-utf8", INFER, b"\xff\xfe{}", {}, 400, "invalid JSON"),
    ("not-an-object", INFER, b"[1, 2]", {}, 400, "expected a JSON object"),
    (
        "unknown-output",
        INFER,
        _request(outputs=[{"name": "logits"}]),
        {},
        400,
        "unknown output 'logits'",
    ),
    ("output-twice", INFER, _request(outputs=[{"name": "digit"}] * 2), {}, 400, "twice"),
    (
        "binary-not-bool",
        INFER,
        _request(outputs=[{"name": "digit", "parameters": {"binary_data": "yes"}}]),
        {},
        400,
        "binary_data must be true or false",
    ),
    (
        "classification",
        INFER,
        _request(outputs=[{"name": "probabilities", "parameters": {"classification": 3}}]),
        {},
        400,
        "'classification' is not supported",
    ),
    ("id-not-string", INFER, _request(id=42), {}, 400, "'id' must be a string"),
    ("binary-size-vs-shape", INFER, *_binary(700, 700), 400, "needs 784"),
    ("binary-size-vs-body", INFER, *_binary(784, 700), 400, "700 bytes follow"),
    ("header-past-body", INFER, *_binary(784, 0, header_extra=10), 400, "within the body"),
    (
        "header-not-a-number",
        INFER,
        _request(),
        {"Inference-Header-Content-Length": "x"},
        400,
        "Inference-Header-Content-Length 'x'",
    ),
    ("size-without-header", INFER, _binary(784, 0)[0], {}, 400, "no Inference-Header"),
    (
        "bytes-without-size",
        INFER,
        _request() + b"\0" * 16,
        {"Inference-Header-Content-Length": str(len(_request()))},
        400,
        "no input declares binary_data_size",
    ),
    ("unknown-encoding", INFER, _request(), {"Content-Encoding": "br"}, 415, "Content-Encoding"),
    ("corrupt-gzip", INFER, b"not gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
    (
        "gzip-bomb",
        INFER,
        gzip.compress(b" " * (2**21 + 10)),
        {"Content-Encoding": "gzip"},
        413,
        "decompressed request body exceeds",
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "fragment"),
    [case[1:] for case in BAD],
    ids=[case[0] for case in BAD],
)
async def test_bad_requests_get_a_clear_error(
    client: httpx.AsyncClient, path: str, body: bytes, headers: dict, status: int, fragment: str
) -> None:
    r = await client.post(path, content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert fragment in r.json()["error"], r.json()


@pytest.mark.anyio
async def test_data_with_binary_size_is_refused(client: httpx.AsyncClient) -> None:
    header = _one(parameters={"binary_data_size": 784})
    r = await client.post(
        INFER,
        content=header + b"\0" * 784,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400 and "either 'data' or binary_data_size" in r.json()["error"]


@pytest.mark.anyio
async def test_openapi_lists_the_v2_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in (
        "/v2",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}/infer",
    ):
        assert path in paths
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert "example" in infer["requestBody"]["content"]["application/json"]


# --------------------------------------------------------------------------- tritonclient


@pytest.fixture(scope="module")
def triton_url() -> Iterator[str]:
    """A real `python -m service` process; the URL as tritonclient takes it (host:port)."""
    with running_service() as (base, _):
        yield base.removeprefix("http://")


@pytest.fixture(scope="module")
def triton(triton_url: str) -> Iterator:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=triton_url, network_timeout=60)
    yield client
    client.close()


@pytest.mark.slow
def test_tritonclient_health_and_metadata(triton) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("cnn") and triton.is_model_ready("mlp", "1")
    assert not triton.is_model_ready("nope") and not triton.is_model_ready("cnn", "2")
    server = triton.get_server_metadata()
    assert server["name"] == "mnist-serve" and "binary_tensor_data" in server["extensions"]
    for version in ("", "1"):
        meta = triton.get_model_metadata("cnn", version)
        assert meta["versions"] == ["1"] and meta["platform"] == "pytorch"
        assert meta["inputs"][0]["name"] == "images"
        assert meta["parameters"]["value_range"] == "0-255"
    assert triton.get_model_config("cnn")["max_batch_size"] == 256


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ["FP32", "UINT8"])
def test_tritonclient_infer(triton, mnist_test, datatype: str, binary: bool) -> None:
    import tritonclient.http as httpclient

    images, labels = mnist_test
    batch = images[:N].reshape(N, 1, 28, 28)
    batch = batch.astype(np.float32) if datatype == "FP32" else batch
    tensor = httpclient.InferInput("images", list(batch.shape), datatype)
    tensor.set_data_from_numpy(batch, binary_data=binary)
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
        httpclient.InferRequestedOutput("digit", binary_data=binary),
    ]
    result = triton.infer("cnn", [tensor], outputs=outputs, request_id=f"{datatype}-{binary}")
    assert result.get_response()["id"] == f"{datatype}-{binary}"
    probs, digits = result.as_numpy("probabilities"), result.as_numpy("digit")
    assert probs.dtype == np.float32 and digits.dtype == np.int64
    check_digits({"probabilities": probs, "digit": digits}, labels[:N])


@pytest.mark.slow
@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_tritonclient_mlp_default_outputs(triton, mnist_test, compression: str | None) -> None:
    """No outputs named: tritonclient asks for all of them, binary (binary_data_output)."""
    import tritonclient.http as httpclient

    images, labels = mnist_test
    tensor = httpclient.InferInput("images", [N, 784], "UINT8")
    tensor.set_data_from_numpy(images[:N].reshape(N, 784))
    result = triton.infer(
        "mlp", [tensor], model_version="1", request_compression_algorithm=compression
    )
    assert result.get_response()["model_name"] == "mlp"
    outputs = result.get_response()["outputs"]
    assert all("binary_data_size" in o["parameters"] for o in outputs)
    check_digits(
        {"probabilities": result.as_numpy("probabilities"), "digit": result.as_numpy("digit")},
        labels[:N],
    )


@pytest.mark.slow
def test_tritonclient_sees_the_errors(triton) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    tensor = httpclient.InferInput("images", [2, 5], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 5), np.float32))
    with pytest.raises(InferenceServerException) as bad_shape:
        triton.infer("cnn", [tensor])
    assert bad_shape.value.status() == "400" and "shape [2, 5]" in bad_shape.value.message()

    tensor = httpclient.InferInput("images", [1, 784], "FP32")
    tensor.set_data_from_numpy(np.full((1, 784), 1000, np.float32))
    with pytest.raises(InferenceServerException) as out_of_range:
        triton.infer("cnn", [tensor])
    assert out_of_range.value.status() == "400" and "0-255" in out_of_range.value.message()

    with pytest.raises(InferenceServerException) as unknown:
        triton.get_model_metadata("nope")
    assert unknown.value.status() == "404"


@pytest.mark.anyio
async def test_numbered_versions_of_one_model(tmp_path, mnist_test) -> None:
    # mlp.pt is version 1; mlp.v2.pt (here the cnn's weights) is version 2.
    import shutil

    for src, dst in (("mlp", "mlp"), ("cnn", "mlp.v2")):
        shutil.copy(WEIGHTS_DIR / f"{src}.pt", tmp_path / f"{dst}.pt")
        shutil.copy(WEIGHTS_DIR / f"{src}.json", tmp_path / f"{dst}.json")
    app = create_app(cpu_settings(weights_dir=tmp_path, model="mlp", models=["mlp"]))
    images, labels = mnist_test
    body = {
        "inputs": [
            {
                "name": "images",
                "datatype": "UINT8",
                "shape": [2, 784],
                "data": images[:2].ravel().tolist(),
            }
        ]
    }
    async with started(app) as c:
        meta = (await c.get("/v2/models/mlp")).json()
        assert meta["versions"] == ["1", "2"]
        for path, version in (
            ("/v2/models/mlp/infer", "2"),
            ("/v2/models/mlp/versions/1/infer", "1"),
            ("/v2/models/mlp/versions/2/infer", "2"),
        ):
            r = await c.post(path, json=body)
            assert r.status_code == 200, r.text
            assert r.json()["model_version"] == version
            digits = next(o for o in r.json()["outputs"] if o["name"] == "digit")["data"]
            assert digits == labels[:2].tolist()
        missing = await c.get("/v2/models/mlp/versions/3")
        assert missing.status_code == 404 and "available: 1, 2" in missing.json()["error"]
        info = (await c.get("/model")).json()
        assert info["version"] == "2" and info["architecture"] == "cnn"
