"""Prometheus metrics (`GET /metrics`) and one structured log line per request.

With several uvicorn workers each process counts on its own; `python -m service` then sets
PROMETHEUS_MULTIPROC_DIR so that /metrics, whichever worker answers, sums all of them.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import time

import orjson
from fastapi import APIRouter, FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics import MetricWrapperBase
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("service.access")

REQUESTS = Counter(
    "mnist_requests_total", "HTTP requests answered", ["method", "endpoint", "status", "model"]
)
REQUEST_SECONDS = Histogram(
    "mnist_request_duration_seconds",
    "Time from request start to the response's end",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INFERENCE_SECONDS = Histogram(
    "mnist_inference_duration_seconds",
    "Forward pass time, per pass",
    ["model"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
BATCH_SIZE = Histogram(
    "mnist_batch_size",
    "Images per forward pass",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
IMAGES = Counter("mnist_images_predicted_total", "Images predicted", ["model"])
PREDICTED = Counter("mnist_predicted_class_total", "Predictions by digit", ["model", "digit"])
ERRORS = Counter("mnist_errors_total", "Error answers by kind", ["kind"])
RATE_LIMIT_STORAGE_ERRORS = Counter(
    "mnist_rate_limit_storage_errors_total",
    "Requests let through unchecked (fail open) because the rate-limit storage did not answer",
)
MODELS_LOADED = Gauge(
    "mnist_models_loaded", "Models loaded in this process", multiprocess_mode="max"
)
MODEL_READY = Gauge(
    "mnist_model_ready", "1 when the model answers", ["model"], multiprocess_mode="max"
)
TORCH_THREADS = Gauge(
    "mnist_torch_threads", "CPU threads of torch per worker process", multiprocess_mode="max"
)
DEVICE = Gauge(
    "mnist_device_info",
    "The device models run on (value 1)",
    ["device", "name"],
    multiprocess_mode="max",
)

ERROR_KINDS = {
    400: "malformed_request",
    499: "client_disconnected",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "rate_limited",
    503: "unavailable",
    500: "internal",
}

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@functools.lru_cache(maxsize=4096)
def child(metric: MetricWrapperBase, *labels: str) -> MetricWrapperBase:
    """`metric.labels(*labels)`, looked up once: prometheus_client checks and converts the
    labels on every call, ~1-2 us each, several times per request. The label sets are few
    (routes, statuses, models, digits); the bound only keeps a flood of odd methods small."""
    return metric.labels(*labels)


@functools.lru_cache(maxsize=4096)
def request_children(
    method: str, endpoint: str, status: int, model: str
) -> tuple[MetricWrapperBase, MetricWrapperBase]:
    """The request counter's and the duration histogram's children for one answer's labels,
    in one cached lookup (bounded as `child`)."""
    return REQUESTS.labels(method, endpoint, str(status), model), REQUEST_SECONDS.labels(endpoint)


def observe_inference(model: str, images: int, seconds: float, digits: list[int]) -> None:
    child(INFERENCE_SECONDS, model).observe(seconds)
    child(BATCH_SIZE, model).observe(images)
    child(IMAGES, model).inc(images)
    # One increment per class in the pass, not one per image.
    for digit, count in collections.Counter(digits).items():
        child(PREDICTED, model, str(digit)).inc(count)


def count_error(status: int) -> None:
    child(ERRORS, ERROR_KINDS.get(status, str(status))).inc()


class RequestTelemetry:
    """Pure ASGI middleware: metrics and one JSON log line per HTTP request (no image data)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self._record(scope, status, time.perf_counter() - start)

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        # The route template, never the raw path: unknown paths must not grow label sets.
        endpoint = getattr(route, "path", None) or "unmatched"
        state = scope.get("state") or {}
        model = state.get("model") or (scope.get("path_params") or {}).get("name") or ""
        requests, duration = request_children(scope["method"], endpoint, status, model)
        requests.inc()
        duration.observe(seconds)
        if status >= 400:
            count_error(status)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                orjson.dumps(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "latency_ms": round(seconds * 1000, 3),
                        "model": model or None,
                        "images": state.get("images"),
                        "client": (scope.get("client") or ("", 0))[0],
                    }
                ).decode()
            )


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.add_middleware(RequestTelemetry)
