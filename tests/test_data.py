from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from training import data
from training.data import DatasetNotFound, IDXError, TensorLoader


def idx_images(images: np.ndarray, magic: int = 2051, count: int | None = None) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", magic, n if count is None else count, rows, cols) + images.tobytes()


def idx_labels(labels: np.ndarray, magic: int = 2049, count: int | None = None) -> bytes:
    return struct.pack(">II", magic, len(labels) if count is None else count) + labels.tobytes()


@pytest.fixture
def small() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (7, 28, 28), dtype=np.uint8), rng.integers(0, 10, 7, dtype=np.uint8)


def write_split(folder: Path, prefix: str, images: bytes, labels: bytes, gz: bool) -> None:
    for kind, raw in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
        path = folder / f"{prefix}-{kind}"
        if gz:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(raw))
        else:
            path.write_bytes(raw)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_valid_files_compressed_or_not(tmp_path: Path, small, gz: bool) -> None:
    images, labels = small
    write_split(tmp_path, "t10k", idx_images(images), idx_labels(labels), gz)
    got_images, got_labels = data.load_split(tmp_path, "test", verify=False)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize(
    ("make_images", "make_labels", "message"),
    [
        (lambda x: idx_images(x, magic=2049), None, "wrong magic number 2049, expected 2051"),
        (None, lambda y: idx_labels(y, magic=2051), "wrong magic number 2051, expected 2049"),
        (lambda x: idx_images(x)[:-5], None, "truncated"),
        (lambda x: idx_images(x)[:10], None, "truncated header"),
        (None, lambda y: idx_labels(y)[:-1], "truncated"),
        (lambda x: idx_images(x, count=99), None, "header says 99 images"),
        (None, lambda y: idx_labels(y[:5]), "7 images but 5 labels"),
        (lambda x: idx_images(x.reshape(7, 14, 56)), None, "images are 14x56"),
    ],
    ids=[
        "image-magic",
        "label-magic",
        "truncated-images",
        "short-header",
        "truncated-labels",
        "count-lies",
        "count-mismatch",
        "wrong-size",
    ],
)
def test_corrupt_files_name_file_and_problem(
    tmp_path: Path, small, make_images, make_labels, message: str
) -> None:
    images, labels = small
    raw_images = (make_images or idx_images)(images)
    raw_labels = (make_labels or idx_labels)(labels)
    write_split(tmp_path, "t10k", raw_images, raw_labels, gz=True)
    with pytest.raises(IDXError, match=message) as info:
        data.load_split(tmp_path, "test", verify=False)
    assert str(tmp_path) in str(info.value)


def test_not_gzip_is_a_clear_error(tmp_path: Path, small) -> None:
    _, labels = small
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(labels)))
    with pytest.raises(IDXError, match=r"t10k-images-idx3-ubyte\.gz: cannot read"):
        data.load_split(tmp_path, "test", verify=False)


def test_checksum_mismatch_names_the_file(tmp_path: Path, small) -> None:
    images, labels = small
    write_split(tmp_path, "t10k", idx_images(images), idx_labels(labels), gz=True)
    with pytest.raises(IDXError, match=r"t10k-images-idx3-ubyte\.gz: checksum mismatch"):
        data.load_split(tmp_path, "test", verify=True)


def test_missing_files_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFound) as info:
        data.load_mnist(tmp_path, allow_download=False)
    message = str(info.value)
    assert str(tmp_path) in message and "train-images-idx3-ubyte.gz" in message
    assert "MNIST_DATA_DIR" in message


def test_real_mnist_splits_and_checksums(mnist_dir: Path) -> None:
    mnist = data.load_mnist(mnist_dir, allow_download=False)
    assert mnist.train[0].shape == (55000, 28, 28)
    assert mnist.val[0].shape == (5000, 28, 28)
    assert mnist.test[0].shape == (10000, 28, 28)
    assert mnist.train[0].dtype == np.uint8
    # Every digit is present in each split, in roughly MNIST's proportions.
    for _, labels in (mnist.train, mnist.val, mnist.test):
        counts = np.bincount(labels, minlength=10)
        assert counts.min() > 0.07 * len(labels)


def test_loader_shuffles_train_but_not_test() -> None:
    import torch

    images = np.arange(64, dtype=np.uint8).repeat(784).reshape(64, 28, 28)
    labels = (np.arange(64) % 10).astype(np.uint8)
    cpu = torch.device("cpu")
    ordered = TensorLoader(images, labels, 16, cpu, shuffle=False)
    assert torch.cat([y for _, y in ordered]).tolist() == labels.tolist()
    shuffled = TensorLoader(images, labels, 16, cpu, shuffle=True, seed=1)
    first = torch.cat([x[:, 0, 0, 0] for x, _ in shuffled])
    shuffled.set_epoch(1)
    second = torch.cat([x[:, 0, 0, 0] for x, _ in shuffled])
    assert sorted(first.tolist()) == sorted(second.tolist())  # same images, new order
    assert first.tolist() != second.tolist()


def test_loader_shards_are_disjoint_across_ranks() -> None:
    import torch

    images = np.arange(40, dtype=np.uint8).repeat(784).reshape(40, 28, 28)
    labels = np.zeros(40, dtype=np.uint8)
    seen = []
    for rank in (0, 1):
        shard = TensorLoader(
            images, labels, 5, torch.device("cpu"), shuffle=True, seed=3, rank=rank, world_size=2
        )
        seen.append({round(float(x), 4) for x, _ in shard for x in x[:, 0, 0, 0]})
    assert not seen[0] & seen[1]
    assert len(seen[0]) == len(seen[1]) == 20
