"""Real `python -m service` processes on 127.0.0.1 for the tests that talk HTTP to one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(env: dict[str, str] | None = None, *args: str) -> tuple[subprocess.Popen, str]:
    """Start the service (CPU) on a free port; returns the process and its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=REPO_ROOT,
        # No drain unless a test asks for one: stopping takes no longer than it must.
        env={**os.environ, "MNIST_DEVICE": "cpu", "MNIST_DRAIN_SECONDS": "0", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(proc: subprocess.Popen, base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early: {proc.stdout.read()}")
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready within {timeout} s")


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM (graceful), then the output; killed if it does not end in 30 s."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@contextmanager
def running_service(
    env: dict[str, str] | None = None, *args: str, timeout: float = 60
) -> Iterator[tuple[str, subprocess.Popen]]:
    proc, base = start(env, *args)
    try:
        wait_ready(proc, base, timeout)
        yield base, proc
    finally:
        if proc.poll() is None:
            stop(proc)


def missing_tool(what: str, install: str) -> None:
    """Skip locally, fail in CI (CI=true): a CI without the tool must not pass silently."""
    import pytest

    message = f"{what} is not installed: {install}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must install it)")
    pytest.skip(message)


@contextmanager
def redis_server(port: int | None = None) -> Iterator[str]:
    """A real `redis-server` (Debian's package) on loopback (a free port unless given);
    yields its URI."""
    import shutil

    import redis

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.access(binary, os.X_OK):
        missing_tool("redis-server", "apt-get install redis-server")
    port = port or free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    uri = f"redis://127.0.0.1:{port}"
    try:
        client = redis.Redis.from_url(uri, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    raise AssertionError(f"redis-server exited: {proc.stdout.read()}") from None
                if time.monotonic() > deadline:
                    raise AssertionError("redis-server did not answer within 20 s") from None
                time.sleep(0.05)
        client.close()
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=10)
