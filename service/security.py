"""Access control: API keys and per-client rate limits, both off until configured.

- API keys (MNIST_API_KEYS, comma-separated, and/or MNIST_API_KEYS_FILE, one per line) are
  sent in the `X-API-Key` header (or `Authorization: Bearer <key>`). No key: 401; a wrong key:
  403. Keys are compared with `hmac.compare_digest`, against every configured key, so the time
  taken says nothing about how much of a key was right.
- Rate limits (MNIST_RATE_LIMIT, e.g. "50/second" or "1000/minute") count per API key when one
  is sent, else per client address, with the `limits` library's moving window; over the limit:
  429 with Retry-After.
- Health probes and /metrics stay open unless MNIST_AUTH_PROBES / MNIST_AUTH_METRICS say
  otherwise; so do the web page and its static files (the page then asks for a key).
"""

from __future__ import annotations

import hmac
import math
import time
from pathlib import Path

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from service.config import Settings
from service.errors import error_response

PROBE_PATHS = ("/health", "/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready")
PAGE_PATHS = ("/", "/favicon.ico")


def load_keys(settings: Settings) -> list[bytes]:
    keys = list(settings.api_keys)
    if settings.api_keys_file:
        text = Path(settings.api_keys_file).read_text()
        keys += [
            line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
        ]
    return [k.encode() for k in keys]


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
        self.limit: RateLimitItem | None = (
            parse(settings.rate_limit) if settings.rate_limit else None
        )
        self.limiter = MovingWindowRateLimiter(MemoryStorage()) if self.limit else None
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
        presented = self._presented_key(scope)
        if self.keys and not self._is_open(path):
            if presented is None:
                response = error_response(
                    401,
                    "missing API key: send it in the X-API-Key header",
                    headers={"WWW-Authenticate": "ApiKey"},
                )
                await response(scope, receive, send)
                return
            if not self._key_is_valid(presented):
                await error_response(403, "invalid API key")(scope, receive, send)
                return
        limited = not path.startswith(PROBE_PATHS) and not self._is_open_page(path)
        if self.limiter and self.limit and limited:
            client = (scope.get("client") or ("unknown", 0))[0]
            who = "key:" + presented.decode(errors="replace") if presented else "ip:" + client
            if not self.limiter.hit(self.limit, who):
                reset = self.limiter.get_window_stats(self.limit, who).reset_time
                retry = max(1, math.ceil(reset - time.time()))
                response = error_response(
                    429,
                    f"rate limit of {self.limit} exceeded; retry in {retry} s",
                    headers={"Retry-After": str(retry)},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
