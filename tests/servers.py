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
        env={**os.environ, "MNIST_DEVICE": "cpu", **(env or {})},
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
