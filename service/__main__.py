"""`python -m service`: check the settings and the weights, then serve with uvicorn.

Options default to the MNIST_* environment settings (see service/config.py) and override them,
for uvicorn and the app alike.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import uvicorn
from pydantic import ValidationError

from service import drain
from service.config import describe, get_settings
from service.predictor import discover
from training.checkpoint import WeightsError, load_weights


def main(argv: list[str] | None = None) -> int:
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"error: invalid setting\n{describe(exc)}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default=settings.host, help="interface to bind (MNIST_HOST)")
    parser.add_argument("--port", type=int, default=settings.port, help="port (MNIST_PORT)")
    parser.add_argument(
        "--workers",
        type=int,
        default=settings.workers,
        help="uvicorn worker processes, each with its own model (MNIST_WORKERS)",
    )
    parser.add_argument(
        "--log-level",
        default=settings.log_level,
        choices=["debug", "info", "warning", "error"],
        help="uvicorn's logs and the app's own (MNIST_LOG_LEVEL)",
    )
    args = parser.parse_args(argv)
    # The app reads its settings from the environment, in this process (one worker) or in each
    # worker process: the flag reaches them there, and the cached settings are read again.
    os.environ["MNIST_LOG_LEVEL"] = args.log_level
    get_settings.cache_clear()

    # Fail fast with one clear line rather than a traceback from every worker.
    try:
        for path in discover(settings.weights_dir, settings.models):
            load_weights(path)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    # The workers size their thread pools to share the usable CPUs (service/threads.py): they
    # learn how many they are from WEB_CONCURRENCY, as under gunicorn or uvicorn's own CLI.
    os.environ["WEB_CONCURRENCY"] = str(args.workers)
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Each worker counts on its own; this folder lets /metrics sum them all.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mnist-metrics-")
    config = uvicorn.Config(
        "service.app:app",
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=drain.SHUTDOWN_TIMEOUT_S,
        access_log=False,  # the service logs one structured line per request instead
        # X-Forwarded-For is read by the app, from MNIST_TRUSTED_PROXIES only (uvicorn's own
        # default would trust any client on loopback).
        proxy_headers=False,
    )
    # uvicorn.run, with a drain on SIGTERM and a supervisor that lets go of the socket.
    return drain.serve(config)


if __name__ == "__main__":
    sys.exit(main())
