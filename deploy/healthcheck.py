"""Container health check: exit 0 when GET /health/ready answers 200, else 1.

Used by the Dockerfile's HEALTHCHECK and docker-compose.yml; only the standard library, so the
image needs no curl. Reads MNIST_PORT (default 8000) and MNIST_HEALTH_URL (to check another
address). When API keys are configured (MNIST_API_KEYS or MNIST_API_KEYS_FILE) it sends the
first one, so the check still passes with MNIST_AUTH_PROBES=true. Every failure prints one
line, which `docker inspect` shows under State.Health.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def ready_url() -> str:
    if url := os.environ.get("MNIST_HEALTH_URL"):
        return url
    host = os.environ.get("MNIST_HOST", "0.0.0.0")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"  # listening on every interface: ask over loopback
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    port = os.environ.get("MNIST_PORT", "8000")
    return f"http://{host}:{port}/health/ready"


def api_key() -> str | None:
    """The first configured API key, read the way the service reads them."""
    keys = [key.strip() for key in os.environ.get("MNIST_API_KEYS", "").split(",")]
    if keys := [key for key in keys if key]:
        return keys[0]
    if path := os.environ.get("MNIST_API_KEYS_FILE"):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            if line.strip() and not line.startswith("#"):
                return line.strip()
    return None


def main() -> int:
    url = ready_url()
    timeout = float(os.environ.get("MNIST_HEALTH_TIMEOUT", "4"))
    request = urllib.request.Request(url)
    if key := api_key():
        request.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:  # 503 while loading, or any other error status
        status = exc.code
    except (OSError, ValueError) as exc:  # refused, timed out, bad URL
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
