"""Shared fixtures: where the real MNIST files and the shipped weights are, the async backend,
and the real app with an httpx client over ASGI, built from settings."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:  # imported where used: importing the app reads MNIST_* settings
    import httpx
    from fastapi import FastAPI

    from service.config import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = REPO_ROOT / "weights"
MNIST_DIR = Path(
    os.environ.get("MNIST_DATA_DIR", REPO_ROOT.parent / "shared" / "datasets" / "mnist")
)
# Debian's dataset-fashion-mnist package (CI installs it) puts the four files here.
FASHION_DIR = Path(os.environ.get("FASHION_MNIST_DATA_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST files not found in {MNIST_DIR}: set MNIST_DATA_DIR")
    return MNIST_DIR


@pytest.fixture(scope="session")
def mnist_test(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real MNIST test split, parsed from its IDX files."""
    from training.data import load_split

    return load_split(mnist_dir, "test")


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(
            f"Fashion-MNIST files not found in {FASHION_DIR}: `apt-get install -y "
            "dataset-fashion-mnist`, or set FASHION_MNIST_DATA_DIR"
        )
    return FASHION_DIR


@pytest.fixture(scope="session")
def fashion_test(fashion_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The real Fashion-MNIST test split, parsed (and checksum-verified) from its IDX files."""
    from training.data import load_split

    return load_split(fashion_dir, "test", dataset="fashion-mnist")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """The async tests (pytest.mark.anyio) run on asyncio, the loop uvicorn serves on."""
    return "asyncio"


def cpu_settings(**overrides: Any) -> Settings:
    """The service's settings for tests: the shipped weights, on the CPU, plus `overrides`."""
    from service.config import Settings

    return Settings(**{"weights_dir": WEIGHTS_DIR, "device": "cpu", **overrides})


@asynccontextmanager
async def started(app: FastAPI, peer: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    """`app` started (its lifespan: weights loaded, verified, warmed up) and an httpx client
    talking to it over ASGI, its requests arriving from `peer`; stopped on the way out."""
    import httpx
    from asgi_lifespan import LifespanManager

    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@asynccontextmanager
async def app_client(peer: str = "127.0.0.1", **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The real app built from cpu_settings(**overrides), started, with a client (see started)."""
    from service.app import create_app

    async with started(create_app(cpu_settings(**overrides)), peer) as client:
        yield client
