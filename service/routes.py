"""The REST endpoints: predict, batch-predict, health and model info."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from service.batcher import Arrival
from service.config import Settings
from service.deps import ModelName, Registry, RegistryDep
from service.errors import InputError
from service.fashion_upload import check_pixel_request, fashion_upload
from service.fastroute import LeanRoute
from service.formparts import SMALL_BODY_BYTES, FilePart, split_files
from service.pixels import (
    check_has_ink,
    ndarray_batch_to_array,
    pixel_batch_to_array,
    pixels_to_array,
    read_npy,
)
from service.predictor import Predictor
from service.schemas import (
    BatchPixelsRequest,
    BatchPrediction,
    ErrorResponse,
    Health,
    ModelInfo,
    ModelList,
    PixelsRequest,
    Prediction,
)
from service.upload import is_cheap, open_upload, preprocess_upload, upload_to_mnist

router = APIRouter(route_class=LeanRoute)  # see service/fastroute.py
# A numpy array saved with numpy.save: the cheapest body for many images (no text to parse).
NPY_TYPE = "application/x-npy"
BATCH_SHAPES = "(N, 28, 28) or (N, 784)"
M = TypeVar("M", bound=BaseModel)

ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "malformed body (invalid JSON, multipart or .npy)",
        404: "unknown model",
        413: "body, file or image over the configured limits",
        415: "unsupported content type",
        422: "not a usable image or pixel array (e.g. no digit found)",
        503: "the model is not loaded yet",
    }.items()
}


def _body(file_field: str, json_model: type[BaseModel], many: bool) -> dict:
    """OpenAPI requestBody documenting both accepted bodies (the handler parses them itself)."""
    file_schema = {
        "type": "string",
        "format": "binary",
        "description": "an image: PNG, JPEG, BMP, GIF, WebP or TIFF",
    }
    if many:
        file_schema = {"type": "array", "items": file_schema}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [file_field],
                        "properties": {file_field: file_schema},
                    }
                },
                "application/json": {"schema": json_model.model_json_schema()},
                NPY_TYPE: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "a numpy array as numpy.save writes it (uint8, or any "
                        "integer or float type with values 0-255, MNIST polarity), shape "
                        + (BATCH_SHAPES if many else "(28, 28) or (784,)"),
                    }
                },
            },
        }
    }


def _state(request: Request) -> tuple[Registry, Settings]:
    # The predict handlers read these from the app directly rather than through Depends: each
    # dependency costs ~25 us of FastAPI's per-request solving, ~3% of a whole PNG prediction.
    state = request.app.state
    return state.registry, state.settings


def _content_kind(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return "multipart"
    if ctype == "application/json":
        return "json"
    if ctype == NPY_TYPE:
        return "npy"
    raise InputError(
        f"unsupported content type {ctype or '(none)'!r}: send multipart/form-data with the "
        f"image file, application/json with pixel arrays, or {NPY_TYPE} with a numpy array",
        status_code=415,
    )


async def _json_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # The stdlib parser also reads NaN and Infinity, which clients do send; they are then
        # refused by the pixel checks with a precise 422 rather than a generic 400.
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"invalid JSON: {exc}", status_code=400) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise InputError(f"invalid request body: {detail}", status_code=422) from None


async def _uploads(request: Request, field: str, settings: Settings) -> list[bytes]:
    """The files sent in `field`, in order: small plain bodies split by service/formparts.py,
    any other through Starlette's parser (same limits, same answers)."""
    max_files = settings.max_request_images + 1
    parts = await _small_form(request, max_files)
    if parts is None:
        return await _form_uploads(request, field, settings, max_files)
    items = [part for part in parts if part.field == field]
    if not items:
        raise InputError(f"missing form field {field!r}: send the image file in it")
    for item in items:
        _check_file_size(item.filename, len(item.data), settings)
    return [item.data for item in items]


async def _small_form(request: Request, max_files: int) -> list[FilePart] | None:
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > SMALL_BODY_BYTES:
        return None  # large or chunked: Starlette's parser streams it to a spooled file
    content_type = request.headers.get("content-type", "")
    return split_files(await request.body(), content_type, max_files)


def _check_file_size(filename: str | None, size: int, settings: Settings) -> None:
    if size > settings.max_upload_bytes:
        raise InputError(
            f"file {filename!r} exceeds the limit of {settings.max_upload_bytes} bytes",
            status_code=413,
        )


async def _form_uploads(
    request: Request, field: str, settings: Settings, max_files: int
) -> list[bytes]:
    form = await request.form(max_files=max_files, max_fields=100)
    try:
        items = form.getlist(field)
        if not items:
            raise InputError(f"missing form field {field!r}: send the image file in it")
        if not all(isinstance(item, UploadFile) for item in items):
            raise InputError(f"form field {field!r} must be a file upload, not text")
        data = []
        for item in items:
            content = await item.read(settings.max_upload_bytes + 1)
            _check_file_size(item.filename, len(content), settings)
            data.append(content)
        return data
    finally:
        await form.close()


def _prepare(
    jobs: list[Callable[[], np.ndarray]],
    batch: bool,
    whole: Callable[[], np.ndarray | None] | None = None,
    digits: bool = True,
) -> np.ndarray:
    """Preprocess every input into one (N, 28, 28) array; an error names the failing image.

    `whole`, if given, first tries the whole batch in one go; when it cannot (it returns None),
    the jobs run one by one.
    """
    if whole is not None and (prepared := whole()) is not None:
        images = prepared
    elif len(jobs) == 1:  # a single image: np.stack's checks and copy for one array cost more
        images = _item(jobs[0], 0, batch)[np.newaxis].astype(np.float32, copy=False)
    else:
        images = np.stack([_item(job, index, batch) for index, job in enumerate(jobs)])
        images = images.astype(np.float32, copy=False)
    check_has_ink(images, batch, digits)  # pixel arrays too: no ink, no digit (or object)
    return images


def _item(job: Callable[[], np.ndarray], index: int, batch: bool) -> np.ndarray:
    try:
        return job()
    except InputError as exc:
        if batch:
            raise exc.for_item(index) from None
        raise


def _prediction(
    probs: np.ndarray, model: str, names: list[str], digits: bool, image: np.ndarray | None
) -> dict:
    index = int(probs.argmax())
    row = probs.tolist()  # Python floats once: the confidence is one of them
    answer = {"digit": index} if digits else {}  # `digit` only where the classes are digits
    answer.update(
        label=names[index],
        class_index=index,
        confidence=row[index],
        probabilities=row,
        model=model,
        image=None if image is None else np.rint(image).astype(np.uint8).tolist(),
    )
    return answer


async def _predict(
    request: Request,
    registry: Registry,
    predictor: Predictor,
    jobs: list[Callable[[], np.ndarray]],
    batch: bool,
    include_image: bool,
    cheap: bool = False,
    arrival: Arrival | None = None,
    whole: Callable[[], np.ndarray | None] | None = None,
) -> list[dict]:
    """Preprocess, then the forward pass (joined with others when batching is on): singles and
    batches take this one path. Cheap inputs (a 28x28 image, a pixel array) are prepared right
    here on the event loop: a thread hop costs more than their ~0.1 ms of work. The rest goes to
    the worker's prepare threads (service/threads.py, `PreparePool`), in arrival order, so that
    a large photo never stalls the event loop."""
    digits = predictor.dataset == "mnist"
    if cheap:
        images = _prepare(jobs, batch, whole, digits)
    else:
        if arrival is not None:
            # Uploads wait their turn on the prepare threads, one by one: a pass that waited
            # for them would wait its whole max delay on every request (8 canvas connections:
            # 485 -> 305 req/s). They join whichever pass is next.
            arrival.leave()
        # Set in the lifespan, before any model (and so any request here) exists.
        images = await request.app.state.prepare_pool.run(_prepare, jobs, batch, whole, digits)
    request.state.model, request.state.images = predictor.name, len(images)
    probs = await registry.infer(predictor, images, arrival)
    names = predictor.class_names
    return [
        _prediction(p, predictor.name, names, digits, img if include_image else None)
        for p, img in zip(probs, images, strict=True)
    ]


def _json(content: dict) -> Response:
    # orjson straight to bytes: the response_model still documents the shape, but the answer
    # skips a second validation pass and the slower stdlib encoder.
    return Response(orjson.dumps(content), media_type="application/json")


@router.post(
    "/predict",
    response_model=Prediction,
    responses=ERRORS,
    openapi_extra=_body("file", PixelsRequest, many=False),
    summary="Recognise one digit (or, with a Fashion-MNIST model, one piece of clothing)",
    description="One image as multipart/form-data in the field `file` (any size, dark ink on "
    "light paper or light on dark, transparent canvases too: it is cropped, scaled and centred "
    'as MNIST was), or JSON `{"pixels": ...}` already in MNIST form (28x28 or 784 grey '
    "levels 0-255, 0 = background), or the same as a numpy array in an `application/x-npy` "
    "body (`numpy.save`). The answer names the class (`label`, `class_index`; digit models "
    "also `digit`); `/models` lists each model's `class_names`. A Fashion-MNIST model's "
    "uploads go through that dataset's preprocessing instead (trimmed to the object, light "
    "backgrounds negated, longest edge scaled to 28, centred; 422 for a flat image), and "
    "`normalize=true` on arrays (the digit pipeline) is refused for it with a 422.",
)
async def predict(
    request: Request, model: ModelName = None, include_image: bool = False
) -> Response:
    registry, settings = _state(request)
    predictor = registry.get(model)
    with registry.arriving(predictor) as arrival:
        kind = _content_kind(request)
        if kind == "multipart":
            files = await _uploads(request, "file", settings)
            if len(files) != 1:
                raise InputError(
                    f"send one file in 'file' (got {len(files)}); use /predict/batch for several"
                )
            if predictor.dataset != "mnist":  # not digits: that dataset's own preprocessing
                job, cheap = partial(fashion_upload, files[0], settings.max_image_pixels), False
            else:
                upload = open_upload(files[0], settings.max_image_pixels)  # the header only
                job = partial(upload_to_mnist, upload)
                cheap = is_cheap(upload)
        elif kind == "npy":
            job = partial(pixels_to_array, read_npy(await request.body()))
            cheap = True
        else:
            body = await _json_body(request, PixelsRequest)
            check_pixel_request(predictor.dataset, body.normalize)
            job = partial(pixels_to_array, body.pixels, body.normalize)
            cheap = not body.normalize
        (answer,) = await _predict(
            request, registry, predictor, [job], False, include_image, cheap, arrival
        )
    return _json(answer)


@router.post(
    "/predict/batch",
    response_model=BatchPrediction,
    responses=ERRORS,
    openapi_extra=_body("files", BatchPixelsRequest, many=True),
    summary="Recognise several digits in one request",
    description='Multipart with the field `files` repeated, JSON `{"images": [pixels, '
    "...]}`, or an `application/x-npy` body holding an (N, 28, 28) or (N, 784) numpy array "
    "(the fastest for many images). One answer per input, in input order. A bad input fails "
    "the request with the index of the image that was wrong.",
)
async def predict_batch(
    request: Request, model: ModelName = None, include_image: bool = False
) -> Response:
    registry, settings = _state(request)
    predictor = registry.get(model)
    with registry.arriving(predictor) as arrival:
        whole, cheap = None, False
        kind = _content_kind(request)
        if kind == "multipart":
            files = await _uploads(request, "files", settings)
            prepare = preprocess_upload if predictor.dataset == "mnist" else fashion_upload
            jobs = [partial(prepare, f, settings.max_image_pixels) for f in files]
        elif kind == "npy":
            pixels = read_npy(await request.body())
            if pixels.ndim not in (2, 3) or pixels.shape[1:] not in ((28, 28), (784,)):
                raise InputError(f"expected an array of shape {BATCH_SHAPES}, got {pixels.shape}")
            # One vectorised pass; per-image checks (naming the bad one) only if it fails.
            jobs = [partial(pixels_to_array, image) for image in pixels]
            whole, cheap = partial(ndarray_batch_to_array, pixels), True
        else:
            body = await _json_body(request, BatchPixelsRequest)
            check_pixel_request(predictor.dataset, body.normalize)
            jobs = [partial(pixels_to_array, p, body.normalize) for p in body.images]
            if not body.normalize:  # all checked in one pass over the batch when uniform
                whole = partial(pixel_batch_to_array, body.images)
        if not jobs:
            raise InputError("empty batch: send at least one image")
        if len(jobs) > settings.max_request_images:
            raise InputError(
                f"batch of {len(jobs)} images exceeds the limit of {settings.max_request_images}",
                status_code=413,
            )
        predictions = await _predict(
            request, registry, predictor, jobs, True, include_image, cheap, arrival, whole
        )
    return _json({"predictions": predictions})


def _health(registry: Registry) -> JSONResponse:
    if not registry.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    default = registry.predictors[registry.default]
    return JSONResponse(
        Health(
            status="ok",
            models=sorted(registry.predictors),
            default_model=registry.default,
            device=default.device.type,
        ).model_dump()
    )


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"description": "not ready"}},
    summary="Ready to answer (model loaded and warmed up)",
)
async def health(registry: RegistryDep) -> JSONResponse:
    return _health(registry)


@router.get(
    "/health/ready",
    response_model=Health,
    responses={503: {"description": "not ready"}},
    summary="Readiness probe",
)
async def health_ready(registry: RegistryDep) -> JSONResponse:
    return _health(registry)


@router.get("/health/live", summary="Liveness probe: the process answers")
async def health_live() -> dict:
    return {"status": "ok"}


@router.get(
    "/model",
    response_model=ModelInfo,
    responses=ERRORS,
    summary="The default model (or ?model=NAME): architecture, figures, device",
)
async def model_info(registry: RegistryDep, model: ModelName = None) -> dict:
    return registry.get(model).info()


@router.get("/models", response_model=ModelList, summary="Every loaded model")
async def models(registry: RegistryDep) -> dict:
    registry.get(None)  # 503 until loaded
    return {
        "default": registry.default,
        "models": [p.info() for _, p in sorted(registry.predictors.items())],
    }
