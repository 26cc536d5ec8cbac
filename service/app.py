"""The FastAPI application, built in one place: `uvicorn service.app:app`."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from PIL import Image
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service import drain, errors, routes, telemetry, threads, v2, web
from service.batcher import MicroBatcher
from service.config import Settings, get_settings
from service.deps import Registry
from service.fastroute import HotPath
from service.predictor import load_all
from service.security import AccessControl
from training.checkpoint import WeightsError
from training.device import device_name

log = logging.getLogger("service")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Loaded here, once per worker process, never at import time.
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        # The service writes one JSON access line per request itself (service.access); the
        # uvicorn CLI would add a plain one of its own for each (formatted and written on the
        # event loop): off, as `python -m service` always had it.
        uvicorn_access = logging.getLogger("uvicorn.access")
        uvicorn_access.handlers.clear()
        uvicorn_access.propagate = False
        # One pool per worker process, sized so the workers together fit the usable CPUs.
        choice = threads.decide(settings.torch_threads)
        telemetry.TORCH_THREADS.set(threads.apply(choice))
        log.info("torch threads: %d (%s)", torch.get_num_threads(), choice.why)
        app.state.prepare_pool = threads.PreparePool(choice.threads)
        # Pillow's own bomb guard, in line with ours (it errors at twice its limit).
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
        registry: Registry = app.state.registry
        try:
            loaded = load_all(
                settings.weights_dir,
                settings.models,
                settings.model,
                settings.device,
                settings.int8,
                settings.batch_max_images if settings.cuda_graphs else 0,
                settings.batch_max_images if settings.batching else 1,
            )
        except (WeightsError, ValueError) as exc:
            log.error("cannot start: %s", exc)
            raise RuntimeError(f"cannot start: {exc}") from None
        registry.add(loaded)
        registry.default = settings.model
        if settings.batching:
            for predictor in registry.all():
                batcher = MicroBatcher(
                    predictor.predict,
                    predictor.key,
                    settings.batch_max_images,
                    settings.batch_max_delay_ms / 1000,
                    settings.batch_queue_limit,
                )
                batcher.start()
                registry.batchers[predictor.key] = batcher
        # Everything loaded so far (torch, the models, the app's routes) lives as long as the
        # process: freezing it takes it out of the cyclic collector's full passes, which
        # otherwise scan it all and stall the event loop for tens of ms. Measured with the cnn
        # at 32 connections: p99 262 -> 50 ms, p50 unchanged.
        gc.collect()
        gc.freeze()
        registry.ready = True
        telemetry.MODELS_LOADED.set(len(registry.predictors))
        for name, predictor in registry.predictors.items():
            telemetry.MODEL_READY.labels(name).set(1)
            telemetry.DEVICE.labels(predictor.device.type, device_name(predictor.device)).set(1)
        # Under uvicorn: SIGTERM starts the drain (service/drain.py) before the shutdown.
        drain.install_sigterm_handler(settings.drain_seconds)
        yield
        gc.unfreeze()  # collectable again once this app is gone (tests build many apps)
        registry.ready = False
        for name in registry.predictors:
            telemetry.MODEL_READY.labels(name).set(0)
        for batcher in registry.batchers.values():
            await batcher.stop()
        registry.batchers.clear()
        app.state.prepare_pool.shutdown()

    app = FastAPI(
        title="MNIST digit recognition",
        version="0.1.0",
        description="Handwritten digit recognition: PNG/JPEG uploads or 28x28 pixel arrays in, "
        "digit and probabilities out.",
        lifespan=lifespan,
        # Metrics and logs are the service's own (Prometheus, JSON lines). FastAPI's built-in
        # OpenTelemetry, unused here, still looked up three providers and the environment on
        # every request (3.4% of a worker's samples in a py-spy profile under load).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.registry = Registry()
    app.state.settings = settings
    errors.install(app)
    app.include_router(routes.router)
    v2.install(app)
    web.install(app)
    # Middleware, innermost first: the predict endpoints' direct call (service/fastroute.py),
    # body limit, access control, telemetry (sees every answer, 401/429/413 included), CORS (so
    # preflight requests need no key), drain, proxy headers.
    app.add_middleware(HotPath, router=routes.router)
    app.add_middleware(errors.BodySizeLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(AccessControl, settings=settings)
    telemetry.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    # Outermost: readiness says 503 from the first moment of a drain.
    app.add_middleware(drain.DrainMiddleware)
    if settings.trusted_proxies:
        # The client address (rate limits, logs) from X-Forwarded-For, from these proxies only.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app


app = create_app()
