"""Shared fixtures: where the real MNIST files and the shipped weights are."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

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
