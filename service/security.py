"""Access control: API keys and per-client rate limits, both off until configured.

- API keys (MNIST_API_KEYS, comma-separated, and/or MNIST_API_KEYS_FILE, one per line) are
  sent in the `X-API-Key` header (or `Authorization: Bearer <key>`). No key: 401; a wrong key:
  403. Keys are compared with `hmac.compare_digest`, against every configured key, so the time
  taken says nothing about how much of a key was right.
- Rate limits (MNIST_RATE_LIMIT, e.g. "50/second" or "1000/minute") count per valid API key,
  else per client address, with the `limits` library's moving window; over the limit: 429
  with Retry-After. A header that is not a configured key buckets nothing: with keys off, a
  new X-API-Key value on each request cannot escape the limit. The client address is the
  connection's, or, from the proxies in MNIST_TRUSTED_PROXIES only, the one their
  X-Forwarded-For names (uvicorn's ProxyHeadersMiddleware, installed by the app).
- The counts live in MNIST_RATE_LIMIT_STORAGE: `memory://` (each worker process counts on its
  own) or `redis://host:port` (one count across every worker and replica). When the storage
  fails, requests are let through (fail open: a Redis outage must not take the API down),
  logged, and counted in `mnist_rate_limit_storage_errors_total`.
- Health probes and /metrics stay open unless MNIST_AUTH_PROBES / MNIST_AUTH_METRICS say
  otherwise; so do the web page and its static files (the page then asks for a key).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Receive, Scope, Send

from service import telemetry
from service.config import Settings
from service.errors import error_response

log = logging.getLogger("service")

PROBE_PATHS = ("/health", "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready")
PAGE_PATHS = ("/", "/favicon.ico")

# A shared storage answers in well under a millisecond; one that does not answer within this
# is treated as down rather than left to hold every request up.
STORAGE_TIMEOUT_S = 0.5
# After a storage failure, requests go unchecked for this long before it is tried again, so
# that an unreachable Redis costs one timeout per worker per interval, not one per request.
STORAGE_RETRY_S = 2.0


def load_keys(settings: Settings) -> list[bytes]:
    # api_keys holds those of MNIST_API_KEYS_FILE too, read when the settings loaded.
    return [k.encode() for k in settings.api_keys]


def limit_storage(uri: str) -> Storage:
    """The asyncio variant of the `limits` storage that MNIST_RATE_LIMIT_STORAGE names."""
    if uri.startswith("memory://"):
        return storage_from_string("async+" + uri)
    # redis:// or rediss:// (checked by the settings): redis-py's asyncio client, short timeouts,
    # its errors wrapped in limits' StorageError.
    return storage_from_string(
        "async+" + uri,
        implementation="redispy",
        wrap_exceptions=True,
        socket_timeout=STORAGE_TIMEOUT_S,
        socket_connect_timeout=STORAGE_TIMEOUT_S,
    )


class RateLimiter:
    """A moving-window limit per client, counted in the configured storage; fails open."""

    def __init__(self, limit: RateLimitItem, storage_uri: str) -> None:
        self.limit = limit
        self.storage_uri = storage_uri
        self.limiter = MovingWindowRateLimiter(limit_storage(storage_uri))
        self.retry_at = 0.0  # while the storage is down: when to try it again
        self.down = False

    def _failed(self, exc: Exception) -> None:
        telemetry.RATE_LIMIT_STORAGE_ERRORS.inc()
        if not self.down:
            log.warning(
                "rate-limit storage %s failed (%s): requests pass unchecked until it answers",
                self.storage_uri.split("@")[-1],  # no password in the log
                exc,
            )
        self.down = True
        self.retry_at = time.monotonic() + STORAGE_RETRY_S

    async def retry_after(self, who: str) -> int | None:
        """Seconds to wait when `who` is over the limit, else None (counted as a hit)."""
        if self.down and time.monotonic() < self.retry_at:
            telemetry.RATE_LIMIT_STORAGE_ERRORS.inc()
            return None
        try:
            if await self.limiter.hit(self.limit, who):
                if self.down:
                    log.info("rate-limit storage answers again: limits apply")
                    self.down = False
                return None
            reset = (await self.limiter.get_window_stats(self.limit, who)).reset_time
        except (StorageError, OSError, TimeoutError) as exc:
            self._failed(exc)
            return None
        self.down = False
        return max(1, math.ceil(reset - time.time()))


class AccessControl:
    """Pure ASGI middleware in front of the app (inside CORS, so preflights pass)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.keys = load_keys(settings)
        self.open_paths = set(PAGE_PATHS)
        if not settings.auth_probes:
            self.open_paths.update(PROBE_PATHS)
        if not settings.auth_metrics:
            self.open_paths.add("/metrics")
        self.limiter = (
            RateLimiter(parse(settings.rate_limit), settings.rate_limit_storage)
            if settings.rate_limit
            else None
        )
        self.active = bool(self.keys) or self.limiter is not None  # else nothing to check

    def _is_open(self, path: str) -> bool:
        return path in self.open_paths or self._is_open_page(path)

    @staticmethod
    def _is_open_page(path: str) -> bool:
        # The web page and its files: never behind a key, never counted against the limit.
        return path in PAGE_PATHS or path.startswith("/static/")

    def _presented_key(self, scope: Scope) -> bytes | None:
        headers = dict(scope["headers"])
        if b"x-api-key" in headers:
            return headers[b"x-api-key"]
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            return auth[7:].strip()
        return None

    def _key_is_valid(self, presented: bytes) -> bool:
        valid = False
        for key in self.keys:  # no early exit: every key is compared every time
            valid |= hmac.compare_digest(presented, key)
        return valid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or not self.active:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        presented = self._presented_key(scope) if self.keys else None
        valid = presented is not None and self._key_is_valid(presented)
        if self.keys and not self._is_open(path):
            if presented is None:
                response = error_response(
                    401,
                    "missing API key: send it in the X-API-Key header",
                    headers={"WWW-Authenticate": "ApiKey"},
                )
                await response(scope, receive, send)
                return
            if not valid:
                await error_response(403, "invalid API key")(scope, receive, send)
                return
        limited = not path.startswith(PROBE_PATHS) and not self._is_open_page(path)
        if self.limiter and limited:
            if valid and presented is not None:
                # A digest: the keys themselves are not written into a shared storage.
                who = "key:" + hashlib.sha256(presented).hexdigest()[:32]
            else:
                who = "ip:" + (scope.get("client") or ("unknown", 0))[0]
            retry = await self.limiter.retry_after(who)
            if retry is not None:
                response = error_response(
                    429,
                    f"rate limit of {self.limiter.limit} exceeded; retry in {retry} s",
                    headers={"Retry-After": str(retry)},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
