"""MNIST from its four IDX files: locate, (optionally) download, verify, parse, split, batch.

The IDX format (big-endian): images are magic 2051, count, rows, cols, then count*rows*cols
uint8 pixels row-major; labels are magic 2049, count, then count uint8 labels. Files may be
gzip-compressed (`.gz`) or not.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.models import IMAGE_SIZE, normalize

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# Canonical MD5s of the *decompressed* files (yann.lecun.com's originals).
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
# The mirrors torchvision uses, in its order.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DATA_DIR_ENV = "MNIST_DATA_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "mnist"
VALIDATION_SIZE = 5000


class IDXError(ValueError):
    """A file that is not valid MNIST IDX data; the message names the file and the problem."""


class DatasetNotFound(FileNotFoundError):
    """The four MNIST files are neither on disk nor downloadable."""


def default_data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise IDXError(f"{path}: cannot read ({exc})") from exc


def parse_idx_images(raw: bytes, name: str = "<images>") -> np.ndarray:
    """Parse an IDX3 image file's bytes into a (count, 28, 28) uint8 array."""
    if len(raw) < 16:
        raise IDXError(f"{name}: truncated header ({len(raw)} bytes, need 16)")
    magic, count, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != IMAGES_MAGIC:
        raise IDXError(f"{name}: wrong magic number {magic}, expected {IMAGES_MAGIC} for images")
    if (rows, cols) != (IMAGE_SIZE, IMAGE_SIZE):
        raise IDXError(f"{name}: images are {rows}x{cols}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    expected = 16 + count * rows * cols
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise IDXError(
            f"{name}: {what}: header says {count} images ({expected} bytes), file has {len(raw)}"
        )
    # copy: frombuffer views are read-only, and torch wants writable memory
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols).copy()


def parse_idx_labels(raw: bytes, name: str = "<labels>") -> np.ndarray:
    """Parse an IDX1 label file's bytes into a (count,) uint8 array of digits 0-9."""
    if len(raw) < 8:
        raise IDXError(f"{name}: truncated header ({len(raw)} bytes, need 8)")
    magic, count = struct.unpack(">II", raw[:8])
    if magic != LABELS_MAGIC:
        raise IDXError(f"{name}: wrong magic number {magic}, expected {LABELS_MAGIC} for labels")
    if len(raw) != 8 + count:
        what = "truncated" if len(raw) < 8 + count else "has trailing bytes"
        raise IDXError(
            f"{name}: {what}: header says {count} labels ({8 + count} bytes), file has {len(raw)}"
        )
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8).copy()
    if labels.size and labels.max() > 9:
        raise IDXError(f"{name}: label {int(labels.max())} out of range 0-9")
    return labels


def find_file(data_dir: Path, stem: str) -> Path | None:
    """The file for `stem` in data_dir, compressed or not (also torchvision's raw/ layout)."""
    for folder in (data_dir, data_dir / "raw", data_dir / "MNIST" / "raw"):
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                return candidate
    return None


def download(data_dir: Path) -> None:
    """Fetch the missing files from the public mirrors; checksums are checked on load."""
    try:
        from torchvision.datasets.utils import download_url
    except ImportError as exc:  # pragma: no cover - torchvision is normally installed
        raise DatasetNotFound(f"cannot download: torchvision is not installed ({exc})") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    for stem in FILES:
        if find_file(data_dir, stem):
            continue
        errors = []
        for mirror in MIRRORS:
            try:
                download_url(mirror + stem + ".gz", str(data_dir), stem + ".gz")
                break
            except Exception as exc:  # any network failure: try the next mirror
                errors.append(f"{mirror}: {exc}")
                (data_dir / f"{stem}.gz").unlink(missing_ok=True)
        else:
            raise DatasetNotFound(f"could not download {stem}.gz: " + "; ".join(errors))


def missing_files_message(data_dir: Path) -> str:
    names = ", ".join(f"{stem}.gz" for stem in FILES)
    return (
        f"MNIST not found in {data_dir} and the download failed. Put the four files {names} "
        f"(gzip-compressed or not) into {data_dir}, or point --data-dir or ${DATA_DIR_ENV} at "
        "the folder that holds them."
    )


def load_split(data_dir: Path, split: str, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of `train` or `test` (alias `t10k`)."""
    data_dir = Path(data_dir)
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem = f"{prefix}-{kind}"
        path = find_file(data_dir, stem)
        if path is None:
            raise DatasetNotFound(missing_files_message(data_dir))
        raw = _read_bytes(path)
        if verify:
            digest = hashlib.md5(raw).hexdigest()
            if digest != FILES[stem]:
                raise IDXError(
                    f"{path}: checksum mismatch: MD5 of the decompressed content is {digest}, "
                    f"expected {FILES[stem]}"
                )
        parse = parse_idx_images if kind.startswith("images") else parse_idx_labels
        arrays.append(parse(raw, str(path)))
    images, labels = arrays
    if len(images) != len(labels):
        raise IDXError(f"{data_dir}: {prefix} has {len(images)} images but {len(labels)} labels")
    return images, labels


@dataclass
class MNIST:
    """The three splits as uint8 arrays: train (55k), validation (last 5k of train), test (10k)."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    data_dir: Path

    @property
    def checksums(self) -> dict[str, str]:
        return dict(FILES)


def load_mnist(
    data_dir: Path | None = None,
    allow_download: bool = True,
    validation_size: int = VALIDATION_SIZE,
) -> MNIST:
    """Load and verify MNIST; the last `validation_size` training images are held out."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    if allow_download and not all(find_file(data_dir, stem) for stem in FILES):
        try:
            download(data_dir)
        except DatasetNotFound as exc:
            raise DatasetNotFound(missing_files_message(data_dir) + f" ({exc})") from exc
    train_x, train_y = load_split(data_dir, "train")
    test_x, test_y = load_split(data_dir, "test")
    cut = len(train_x) - validation_size
    return MNIST(
        train=(train_x[:cut], train_y[:cut]),
        val=(train_x[cut:], train_y[cut:]),
        test=(test_x, test_y),
        data_dir=data_dir,
    )


class TensorLoader:
    """Batches from tensors that live on the training device (GPU or CPU).

    The whole split is converted uint8 -> float in [0, 1] once and kept on the device, so
    there is no per-sample DataLoader on the hot path. Shuffling is a `randperm` on the device;
    augmentation (if given) runs on the device on each batch, then the batch is normalised.
    Under DDP each rank takes every world_size-th index of the same permutation.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        batch_size: int,
        device: torch.device,
        shuffle: bool,
        augment=None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.images = self.images.unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28) in [0, 1]
        self.labels = torch.from_numpy(np.ascontiguousarray(labels)).to(device).long()
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.augment = augment
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.channels_last = channels_last
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Same permutation on every rank for a given epoch (as DistributedSampler does)."""
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, device=self.device, generator=gen)
        else:
            order = torch.arange(n, device=self.device)
        if self.world_size > 1:
            # Equal shard sizes on every rank keep collective calls in step.
            per_rank = n // self.world_size
            order = order[self.rank :: self.world_size][:per_rank]
        return order

    def __len__(self) -> int:
        n = len(self.labels) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._indices()
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            x = self.images[idx]
            if self.augment is not None:
                x = self.augment(x)
            x = normalize(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[idx]
