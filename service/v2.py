"""The Open Inference Protocol (KServe v2 / Triton HTTP/REST) beside the plain REST API.

Spec: kserve/open-inference-protocol `specification/protocol/inference_rest.md`, plus Triton's
binary tensor data extension, so that `tritonclient.http`, KServe and other v2 clients work
unchanged:

    GET  /v2                                              server metadata
    GET  /v2/health/live, /v2/health/ready                200, or 503 until the models are loaded
    GET  /v2/models/{name}[/versions/1]                   model metadata
    GET  /v2/models/{name}[/versions/1]/ready             200 / 404 / 503
    GET  /v2/models/{name}[/versions/1]/config            Triton-style model configuration
    POST /v2/models/{name}[/versions/1]/infer             inference, JSON or binary tensors

A model has numbered versions (`cnn.pt` is version 1, `cnn.v2.pt` version 2; the plain
paths serve the highest). It takes one input, `images`: grey levels 0-255 in
MNIST polarity (0 = background, 255 = ink), FP32 or UINT8 (other integer and float types too),
shaped [N, 1, 28, 28], [N, 28, 28] or [N, 784]. Its outputs: `probabilities` (FP32 [N, 10]),
`class_index` (INT64 [N], the argmax), `label` (BYTES [N], that class's name: "7", "Sneaker")
and, for digit models only, `digit` (INT64 [N], as `class_index`). Errors are
`{"error": "..."}` with 400 for bad input, 404 for an unknown model or version, 413 over a size
limit and 503 before the models are loaded.

Binary tensors: a request with the header `Inference-Header-Content-Length: L` carries L bytes
of JSON and then, in input order, the raw little-endian bytes of each input that has
`parameters.binary_data_size`. Outputs asked for with `parameters.binary_data: true` (or all, by
the request's `parameters.binary_data_output: true`) come back the same way, in an
`application/octet-stream` answer with the same header.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from service.deps import Registry
from service.errors import InputError
from service.pixels import check_has_ink
from service.predictor import Predictor

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol (v2)"])

SERVER_NAME = "mnist-serve"
# "pytorch", not Triton's "pytorch_libtorch": the models are eager nn.Modules rebuilt from
# state_dict weights and run by this Python process, not TorchScript files for libtorch.
PLATFORM = "pytorch"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
HEADER_LENGTH = "Inference-Header-Content-Length"
# Bodies up to this size (a few images as JSON, dozens as binary) are parsed on the event loop.
CHEAP_BODY_BYTES = 64 * 1024

INPUT = "images"
SIDE = 28
PIXELS = SIDE * SIDE
OUTPUTS = {"probabilities": "FP32", "digit": "INT64", "class_index": "INT64", "label": "BYTES"}
OUTPUT_SHAPES = {"probabilities": [-1, 10], "digit": [-1], "class_index": [-1], "label": [-1]}

# Wire datatypes accepted for the input (little-endian, as the binary extension requires).
DTYPES = {
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
OUT_DTYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}
SHAPES = "[N, 1, 28, 28], [N, 28, 28] or [N, 784]"
SCALE = "grey levels 0-255, MNIST polarity: 0 = background, 255 = ink"
FASHION_SCALE = (
    "grey levels 0-255, Fashion-MNIST form: 0 = background, 255 = the brightest part of the "
    "object (not 0-1, not mean/std normalised: the server normalises)"
)

MODEL_PARAMETERS = {
    "value_range": "0-255",
    "value_scale": f"{SCALE} (not 0-1, not mean/std normalised: the server normalises)",
    "input_shapes": SHAPES,
    "input_datatypes": "FP32 or UINT8; also FP16, FP64, INT8-INT64, UINT16-UINT64",
}


def _outputs(predictor: Predictor) -> dict[str, str]:
    """The model's outputs and their datatypes: `digit` only for digit models."""
    return {k: v for k, v in OUTPUTS.items() if k != "digit" or predictor.dataset == "mnist"}


def _class_parameters(predictor: Predictor) -> dict[str, str]:
    # v2 parameters are strings, numbers or booleans: the names as one "index: name" string.
    names = predictor.class_names
    scale = {} if predictor.dataset == "mnist" else {"value_scale": FASHION_SCALE}
    return {
        **scale,
        "dataset": predictor.dataset,
        "classes": ", ".join(f"{i}: {name}" for i, name in enumerate(names))
        + "; `class_index` is the argmax of `probabilities`, `label` its name",
    }


# --------------------------------------------------------------------------- helpers


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _model(request: Request, name: str, version: str | None = None) -> Predictor:
    """The latest version of `name`, or the one asked for (503 until loaded, else 404)."""
    registry = _registry(request)
    if version is None:
        return registry.get(name)
    return registry.get_version(name, version)


def _versions(request: Request, name: str) -> list[str]:
    return sorted(_registry(request).versions.get(name, {}), key=int)


def _bad(message: str, status: int = 400) -> InputError:
    return InputError(message, status_code=status)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _metadata(predictor: Predictor, max_batch: int, versions: list[str]) -> dict:
    info = predictor.info()
    return {
        "name": predictor.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, 1, SIDE, SIDE]}],
        "outputs": [
            {"name": name, "datatype": dtype, "shape": OUTPUT_SHAPES[name]}
            for name, dtype in _outputs(predictor).items()
        ],
        "parameters": {
            **MODEL_PARAMETERS,
            **_class_parameters(predictor),
            "max_batch_size": max_batch,
            "architecture": info["architecture"],
            "weights_sha256": info["sha256"],
            "device": info["device"],
        },
    }


_TRITON_TYPES = {"BYTES": "TYPE_STRING"}  # Triton's config name for the BYTES datatype


def _config(predictor: Predictor, max_batch: int) -> dict:
    """Triton's model configuration, as `tritonclient`'s get_model_config and perf_analyzer
    read it: dims leave out the batch dimension because max_batch_size > 0."""
    return {
        "name": predictor.name,
        "platform": PLATFORM,
        "max_batch_size": max_batch,
        "input": [{"name": INPUT, "data_type": "TYPE_FP32", "dims": [1, SIDE, SIDE]}],
        "output": [
            {
                "name": name,
                "data_type": _TRITON_TYPES.get(dtype, f"TYPE_{dtype}"),
                "dims": OUTPUT_SHAPES[name][1:],
            }
            for name, dtype in _outputs(predictor).items()
        ],
    }


# --------------------------------------------------------------------------- request parsing


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; values must be finite {SCALE}")


def _parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise _bad("invalid JSON: the request header is not UTF-8 text") from None
    except ValueError as exc:
        raise _bad(f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad("invalid inference request: expected a JSON object")
    return body


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Content-Encoding gzip or deflate (tritonclient's request_compression_algorithm),
    inflated to at most `limit` bytes so that a small bomb cannot take the memory."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise _bad(f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or none", 415)
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise _bad(f"body is not valid {encoding} data: {exc}") from None
    if len(data) > limit:
        raise _bad(f"decompressed request body exceeds the limit of {limit} bytes", 413)
    if not inflater.eof:
        raise _bad(f"body is truncated {encoding} data")
    return data


def _split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes | None]:
    """The JSON request, and the binary tail when Inference-Header-Content-Length is given."""
    if header_length is None:
        return _parse_json(body), None
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise _bad(
            f"{HEADER_LENGTH} {header_length!r} must be a whole number of bytes within the "
            f"body of {len(body)} bytes"
        )
    return _parse_json(body[:length]), body[length:]


def _flatten(data: object, dtype_name: str) -> tuple[list, list[int]]:
    """Flat values of JSON tensor data (flat or nested), and the shape of the nesting."""
    if not isinstance(data, list):
        raise _bad(f"input {INPUT!r}: 'data' must be a JSON array of numbers")
    values, nesting = data, [len(data)]
    while True:
        kinds = set(map(type, values))  # one C-level pass, no Python loop per value
        if list not in kinds:
            break
        if kinds != {list}:
            raise _bad(f"input {INPUT!r}: 'data' mixes arrays and numbers at one nesting level")
        lengths = set(map(len, values))
        if len(lengths) != 1:
            raise _bad(f"input {INPUT!r}: 'data' is ragged (rows of lengths {sorted(lengths)})")
        nesting.append(lengths.pop())
        values = list(itertools.chain.from_iterable(values))
    allowed = {int, float} if dtype_name.startswith("FP") else {int}
    bad = kinds - allowed
    if bad:
        found = ", ".join(sorted("true/false" if t is bool else t.__name__ for t in bad))
        wanted = "numbers" if dtype_name.startswith("FP") else "integers"
        raise _bad(f"input {INPUT!r}: {dtype_name} data must be {wanted}; found {found}")
    return values, nesting


def _check_range(flat: np.ndarray) -> None:
    values = flat.astype(np.float64, copy=False)
    bad = ~np.isfinite(values) | (values < 0) | (values > 255)
    if bad.any():
        index = int(np.argmax(bad))
        raise _bad(
            f"input {INPUT!r}: values must be finite {SCALE}; found {float(values[index]):g} at "
            f"flat index {index}"
        )


@dataclass
class InferRequest:
    images: np.ndarray  # (N, 28, 28), uint8 or float32, checked 0-255
    outputs: list[tuple[str, bool]]  # (name, binary), in answer order
    request_id: str | None


def _shape(spec: dict, max_batch: int) -> list[int]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _bad(f"input {INPUT!r}: 'shape' must be a list of non-negative integers")
    if shape[1:] not in ([1, SIDE, SIDE], [SIDE, SIDE], [PIXELS]):
        raise _bad(f"input {INPUT!r}: shape {shape} not accepted; send {SHAPES}")
    if shape[0] == 0:
        raise _bad(f"input {INPUT!r}: empty batch (N = 0); send at least one image")
    if shape[0] > max_batch:
        raise _bad(f"batch of {shape[0]} images exceeds the limit of {max_batch}", 413)
    return shape


def _input_images(spec: object, binary: bytes | None, max_batch: int) -> np.ndarray:
    if not isinstance(spec, dict):
        raise _bad("each entry of 'inputs' must be a JSON object")
    if spec.get("name") != INPUT:
        raise _bad(f"unknown input {spec.get('name')!r}: this model has one input, {INPUT!r}")
    dtype_name = spec.get("datatype")
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:  # lists are unhashable
        raise _bad(
            f"input {INPUT!r}: datatype {dtype_name!r} not accepted; send FP32 or UINT8 "
            f"({SCALE}), or another of {', '.join(DTYPES)}"
        )
    dtype = DTYPES[dtype_name]
    shape = _shape(spec, max_batch)
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad(f"input {INPUT!r}: 'parameters' must be a JSON object")
    size = params.get("binary_data_size")
    if size is not None:
        if not _is_int(size) or size < 0:
            raise _bad(f"input {INPUT!r}: binary_data_size must be a non-negative integer")
        if binary is None:
            raise _bad(
                f"input {INPUT!r} has binary_data_size but the request has no "
                f"{HEADER_LENGTH} header"
            )
        if "data" in spec:
            raise _bad(f"input {INPUT!r}: give either 'data' or binary_data_size, not both")
        if size != len(binary):
            raise _bad(
                f"input {INPUT!r}: binary_data_size is {size} but {len(binary)} bytes "
                "follow the JSON header"
            )
        if size != count * dtype.itemsize:
            raise _bad(
                f"input {INPUT!r}: {size} bytes of binary data, but shape {shape} of "
                f"{dtype_name} needs {count * dtype.itemsize}"
            )
        flat = np.frombuffer(binary, dtype=dtype)
    else:
        if binary:
            raise _bad(
                f"{len(binary)} bytes follow the JSON header but no input declares binary_data_size"
            )
        if "data" not in spec:
            raise _bad(f"input {INPUT!r}: missing 'data' (or parameters.binary_data_size)")
        values, nesting = _flatten(spec["data"], dtype_name)
        if len(nesting) > 1 and nesting != shape:
            raise _bad(
                f"input {INPUT!r}: nested data has shape {nesting}, but 'shape' is "
                f"{shape}; nest it as the shape says or send it flat"
            )
        if len(values) != count:
            raise _bad(
                f"input {INPUT!r}: 'data' has {len(values)} values, but shape {shape} needs {count}"
            )
        try:
            flat = np.asarray(values, dtype=np.float64)
        except OverflowError:
            raise _bad(f"input {INPUT!r}: values must be {SCALE}; found a huge integer") from None
    _check_range(flat)
    images = flat.reshape(shape[0], SIDE, SIDE)
    if images.dtype == np.uint8:
        return images  # the model's own normalize() scales uint8 exactly as in training
    return images.astype(np.float32)


def _requested_outputs(body: dict, available: dict[str, str]) -> list[tuple[str, bool]]:
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("'parameters' must be a JSON object")
    default_binary = params.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise _bad("parameters.binary_data_output must be true or false")
    asked = body.get("outputs")
    if asked is None or asked == []:
        return [(name, default_binary) for name in available]
    if not isinstance(asked, list):
        raise _bad("'outputs' must be a list of {\"name\": ...} objects")
    outputs: list[tuple[str, bool]] = []
    for item in asked:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or name not in available:  # lists are unhashable
            raise _bad(f"unknown output {name!r}; this model gives {', '.join(available)}")
        if any(name == seen for seen, _ in outputs):
            raise _bad(f"output {name!r} requested twice")
        out_params = item.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise _bad(f"output {name!r}: 'parameters' must be a JSON object")
        for unsupported in ("classification", "shared_memory_region"):
            if unsupported in out_params:
                raise _bad(f"output {name!r}: parameter {unsupported!r} is not supported here")
        binary = out_params.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise _bad(f"output {name!r}: parameters.binary_data must be true or false")
        outputs.append((name, binary))
    return outputs


def _parse_request(
    body: bytes, header_length: str | None, max_batch: int, available: dict[str, str]
) -> InferRequest:
    request, binary = _split_body(body, header_length)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("'id' must be a string")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise _bad(f"'inputs' must be a list of exactly one tensor, {INPUT!r} ({SHAPES})")
    images = _input_images(inputs[0], binary, max_batch)
    return InferRequest(images, _requested_outputs(request, available), request_id)


# --------------------------------------------------------------------------- the answer


def _json_floats(values: np.ndarray) -> list[float]:
    # The shortest text that reads back as the same float32 (0.9987 rather than 0.99870002...).
    return [float(str(v)) for v in values]


def _bytes_tensor(values: list[str]) -> bytes:
    """Triton's binary BYTES layout: each element as a 4-byte little-endian length, then it."""
    parts = []
    for value in values:
        raw = value.encode()
        parts += [len(raw).to_bytes(4, "little"), raw]
    return b"".join(parts)


def _answer(
    parsed: InferRequest, probs: np.ndarray, model: str, version: str, names: list[str]
) -> tuple[bytes, dict[str, str], str]:
    n = len(probs)
    index = probs.argmax(axis=1).astype(OUT_DTYPES["INT64"])
    tensors = {
        "probabilities": probs.astype(OUT_DTYPES["FP32"]),
        "digit": index,
        "class_index": index,
    }
    outputs, tail = [], []
    for name, binary in parsed.outputs:
        out: dict[str, Any] = {
            "name": name,
            "datatype": OUTPUTS[name],
            "shape": [n, *OUTPUT_SHAPES[name][1:]],
        }
        if name == "label":
            labels = [names[i] for i in index.tolist()]
            if binary:
                raw = _bytes_tensor(labels)
                out["parameters"] = {"binary_data_size": len(raw)}
                tail.append(raw)
            else:
                out["data"] = labels
            outputs.append(out)
            continue
        tensor = tensors[name]
        if binary:
            raw = tensor.tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            flat = tensor.ravel()
            out["data"] = _json_floats(flat) if flat.dtype.kind == "f" else flat.tolist()
        outputs.append(out)
    answer: dict[str, Any] = {"model_name": model, "model_version": version}
    if parsed.request_id is not None:
        answer["id"] = parsed.request_id
    answer["outputs"] = outputs
    header = json.dumps(answer, separators=(",", ":"), allow_nan=False).encode()
    if not tail:
        return header, {}, "application/json"
    return header + b"".join(tail), {HEADER_LENGTH: str(len(header))}, "application/octet-stream"


# --------------------------------------------------------------------------- routes


@router.get("", summary="Server metadata")
async def server_metadata(request: Request) -> dict:
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


@router.get("/health/live", summary="Server live: the process answers")
async def server_live() -> dict:
    return {"live": True}


@router.get(
    "/health/ready",
    summary="Server ready: every model loaded and warmed up",
    responses={503: {"description": "not ready"}},
)
async def server_ready(request: Request) -> JSONResponse:
    if not _registry(request).ready:
        return JSONResponse(
            {"ready": False, "error": "the models are not loaded yet"}, status_code=503
        )
    return JSONResponse({"ready": True})


async def _infer(request: Request, predictor: Predictor) -> Response:
    registry = _registry(request)
    with registry.arriving(predictor) as arrival:
        settings = request.app.state.settings
        body = await request.body()
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        header_length = request.headers.get(HEADER_LENGTH)
        # Decompressing, parsing and checking up to max_request_images images is CPU work: off the
        # loop, unless the body is small (a few images), where a thread hop costs more.
        cheap = encoding == "identity" and len(body) <= CHEAP_BODY_BYTES
        if encoding != "identity":
            body = await run_in_threadpool(_decompress, body, encoding, settings.max_request_bytes)
        args = (body, header_length, settings.max_request_images, _outputs(predictor))
        parsed = _parse_request(*args) if cheap else await run_in_threadpool(_parse_request, *args)
        # As on the REST paths: an image with no ink is no digit (or object).
        check_has_ink(parsed.images, len(parsed.images) > 1, predictor.dataset == "mnist")
        # The model runs on the micro-batcher's thread (joined with concurrent REST and v2
        # requests; a full queue answers 503) or, with batching off, in the threadpool.
        probs = await registry.infer(predictor, parsed.images, arrival)
    answer = (parsed, probs, predictor.name, predictor.version, predictor.class_names)
    if cheap:
        content, headers, media_type = _answer(*answer)
    else:
        content, headers, media_type = await run_in_threadpool(_answer, *answer)
    return Response(content, headers=headers, media_type=media_type)


ERRORS = {
    400: {"description": "malformed request or tensor (shape, datatype, values)"},
    404: {"description": "unknown model or version"},
    413: {"description": "batch or body over the configured limits"},
    415: {"description": "unsupported Content-Encoding (gzip, deflate or none)"},
    422: {"description": "an image with no ink: no digit (or object) found"},
    503: {"description": "the models are not loaded yet"},
}
INFER_DOC = dict(
    summary="Inference: JSON or binary tensors",
    description=f"One input, `{INPUT}`: {SCALE}; FP32 or UINT8; shape {SHAPES}. Outputs "
    "`probabilities` (FP32 [N, 10]), `class_index` (INT64 [N]), `label` (BYTES [N], the class "
    "name) and, for digit models, `digit` (INT64 [N]); a model's metadata lists its classes "
    "(`parameters.classes`). Fashion-MNIST models take the same tensors, in that dataset's "
    "form (object light on dark). Binary tensors: "
    f"`{HEADER_LENGTH}` bytes of JSON, then the raw little-endian tensor bytes.",
    responses=ERRORS,
    response_class=Response,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "title": "inference_request"},
                    "example": {
                        "id": "42",
                        "inputs": [
                            {
                                "name": INPUT,
                                "datatype": "UINT8",
                                "shape": [1, PIXELS],
                                "data": [0] * PIXELS,
                            }
                        ],
                        "outputs": [{"name": "digit"}, {"name": "probabilities"}],
                    },
                },
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)


@router.get("/models/{name}", summary="Model metadata", responses=ERRORS)
async def model_metadata(request: Request, name: str) -> dict:
    return _metadata(
        _model(request, name),
        request.app.state.settings.max_request_images,
        _versions(request, name),
    )


@router.get("/models/{name}/versions/{version}", summary="Model metadata", responses=ERRORS)
async def model_version_metadata(request: Request, name: str, version: str) -> dict:
    return _metadata(
        _model(request, name, version),
        request.app.state.settings.max_request_images,
        _versions(request, name),
    )


@router.get("/models/{name}/ready", summary="Model ready", responses=ERRORS)
async def model_ready(request: Request, name: str) -> dict:
    return {"name": _model(request, name).name, "ready": True}


@router.get("/models/{name}/versions/{version}/ready", summary="Model ready", responses=ERRORS)
async def model_version_ready(request: Request, name: str, version: str) -> dict:
    return {"name": _model(request, name, version).name, "ready": True}


@router.get("/models/{name}/config", summary="Model configuration (Triton)", responses=ERRORS)
async def model_config(request: Request, name: str) -> dict:
    return _config(_model(request, name), request.app.state.settings.max_request_images)


@router.get(
    "/models/{name}/versions/{version}/config",
    summary="Model configuration (Triton)",
    responses=ERRORS,
)
async def model_version_config(request: Request, name: str, version: str) -> dict:
    return _config(_model(request, name, version), request.app.state.settings.max_request_images)


@router.post("/models/{name}/infer", **INFER_DOC)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, _model(request, name))


@router.post("/models/{name}/versions/{version}/infer", **INFER_DOC)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, _model(request, name, version))


def install(app: FastAPI) -> None:
    """Serve the v2 protocol on `app` beside its REST routes."""
    app.include_router(router)
