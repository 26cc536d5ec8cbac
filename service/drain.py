"""A drain on SIGTERM that refuses no request, in front of uvicorn's own graceful shutdown.

On SIGTERM (Kubernetes, `docker stop`) each worker process
1. answers the readiness probes (/health/ready, /health, /v2/health/ready) with 503 at once, so
   that load balancers and Kubernetes stop routing to it, and adds `Connection: close` to every
   response, so that clients and proxies open their next request elsewhere;
2. keeps accepting and serving for MNIST_DRAIN_SECONDS, the time the routing takes to notice;
3. then hands over to uvicorn's shutdown: the listening socket closes, requests in flight get up
   to SHUTDOWN_TIMEOUT_S to finish.

SIGINT (Ctrl+C) skips the drain. A second SIGTERM during the drain changes nothing.

With several workers, uvicorn's supervisor (the parent process) holds a copy of the listening
socket that it never accepts on. `Supervisor` closes that copy when it starts the shutdown:
otherwise, once the workers closed theirs, new connections would still complete the TCP
handshake into the socket's backlog, where nobody accepts them, and be reset when the parent
exits. With the parent's copy gone, they are refused at once, which a proxy retries elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

import orjson
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("service")

# Longest uvicorn waits for requests in flight once the drain is over (its
# timeout_graceful_shutdown). Kubernetes' terminationGracePeriodSeconds and compose's
# stop_grace_period must cover MNIST_DRAIN_SECONDS plus this.
SHUTDOWN_TIMEOUT_S = 30

READY_PATHS = frozenset({"/health/ready", "/health", "/v2/health/ready"})


class DrainState:
    """Whether this process has begun its drain (set once, by the SIGTERM handler)."""

    def __init__(self) -> None:
        self.draining = False


state = DrainState()

SignalHandler = Callable[[int, FrameType | None], object]


def install_sigterm_handler(drain_seconds: float) -> bool:
    """Put the drain in front of the running uvicorn server's SIGTERM handler.

    Called from the app's startup, which uvicorn runs inside its signal capture: the handler in
    place is then the server's `handle_exit`. Anywhere else (an app under test, another server)
    nothing is changed and False is returned.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    uvicorn_exit = signal.getsignal(signal.SIGTERM)
    if not isinstance(getattr(uvicorn_exit, "__self__", None), uvicorn.Server):
        return False
    assert callable(uvicorn_exit)
    exit_handler: SignalHandler = uvicorn_exit

    def begin_drain(sig: int, frame: FrameType | None) -> None:
        if state.draining:
            return
        state.draining = True
        if drain_seconds <= 0:
            exit_handler(sig, frame)
            return
        log.info(
            "SIGTERM: draining for %.1f s (readiness answers 503), then shutting down",
            drain_seconds,
        )
        timer = threading.Timer(drain_seconds, exit_handler, (sig, None))
        timer.daemon = True  # a forced exit (Ctrl+C twice) must not wait for it
        timer.start()

    # uvicorn puts its own saved handlers back when it stops, which removes this one too.
    signal.signal(signal.SIGTERM, begin_drain)
    return True


class DrainMiddleware:
    """Pure ASGI middleware: during the drain, 503 on readiness, `Connection: close` on all."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not state.draining:
            await self.app(scope, receive, send)
            return
        if scope["path"] in READY_PATHS and scope["method"] in ("GET", "HEAD"):
            body = orjson.dumps(
                {
                    "status": "draining",
                    "ready": False,
                    "error": "shutting down: send requests elsewhere",
                }
            )
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [h for h in message.get("headers", []) if h[0].lower() != b"connection"]
                message = {**message, "headers": [*kept, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)


class Supervisor(Multiprocess):
    """uvicorn's multi-worker supervisor, which lets go of the listening socket at shutdown."""

    def terminate_all(self) -> None:
        for sock in self.sockets:
            sock.close()
        super().terminate_all()


def serve(config: uvicorn.Config) -> int:
    """Run uvicorn as `uvicorn.run` does, with `Supervisor` for several workers."""
    if config.workers > 1:
        Supervisor(config, sockets=[config.bind_socket()]).run()
        return 0
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else 3  # uvicorn's STARTUP_FAILURE
