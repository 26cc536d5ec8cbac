"""MNIST and Fashion-MNIST from their four IDX files: locate, download, verify, parse, split, batch.

Both datasets use the same file names, sizes and format; a `DatasetSpec` holds what differs
(class names, checksums, mirrors, where the files are looked for).

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

# Canonical MD5s of the *decompressed* files (yann.lecun.com's originals). Checking the
# decompressed content makes the check independent of how a mirror or a distribution gzipped it.
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

# Fashion-MNIST (Zalando Research): MD5s of the decompressed files, the same content as the
# files the dataset's README lists (whose .gz MD5s differ from Debian's re-compressed copies).
FASHION_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Where `apt-get install dataset-fashion-mnist` (Debian, Ubuntu) puts the four .gz files.
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetSpec:
    """What differs between the IDX datasets this package trains on."""

    name: str  # the --dataset value and the `dataset.name` of the weights' metadata
    title: str
    classes: tuple[str, ...]  # class names, index = label
    checksums: dict[str, str]  # file stem -> MD5 of the decompressed file
    mirrors: tuple[str, ...]  # download fallback, tried in order
    env: str  # environment variable naming the folder with the files
    folders: tuple[Path, ...]  # looked in, in order, when neither --data-dir nor env is set;
    # the last one is where missing files are downloaded to


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist",
        "MNIST",
        tuple(str(d) for d in range(10)),
        FILES,
        MIRRORS,
        DATA_DIR_ENV,
        (DEFAULT_DATA_DIR,),
    ),
    "fashion-mnist": DatasetSpec(
        "fashion-mnist",
        "Fashion-MNIST",
        FASHION_CLASSES,
        FASHION_FILES,
        # torchvision's FashionMNIST mirror (the dataset authors' bucket)
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        "FASHION_MNIST_DATA_DIR",
        (DEBIAN_FASHION_DIR, DEFAULT_DATA_DIR.parent / "fashion-mnist"),
    ),
}


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(DATASETS)
        raise ValueError(f"unknown dataset {name!r}; choose one of: {known}") from None


class IDXError(ValueError):
    """A file that is not valid MNIST IDX data; the message names the file and the problem."""


class DatasetNotFound(FileNotFoundError):
    """The four IDX files are neither on disk nor downloadable."""


def default_data_dir(dataset: str = "mnist") -> Path:
    """$<env> if set, else the first of the spec's folders that holds all four files, else the
    last one (the download target)."""
    spec = dataset_spec(dataset)
    if os.environ.get(spec.env):
        return Path(os.environ[spec.env])
    for folder in spec.folders:
        if all(find_file(folder, stem) for stem in spec.checksums):
            return folder
    return spec.folders[-1]


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


def download(data_dir: Path, dataset: str = "mnist") -> None:
    """Fetch the missing files from the public mirrors; checksums are checked on load."""
    spec = dataset_spec(dataset)
    try:
        from torchvision.datasets.utils import download_url
    except ImportError as exc:  # pragma: no cover - torchvision is normally installed
        raise DatasetNotFound(f"cannot download: torchvision is not installed ({exc})") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    for stem in spec.checksums:
        if find_file(data_dir, stem):
            continue
        errors = []
        for mirror in spec.mirrors:
            try:
                download_url(mirror + stem + ".gz", str(data_dir), stem + ".gz")
                break
            except Exception as exc:  # any network failure: try the next mirror
                errors.append(f"{mirror}: {exc}")
                (data_dir / f"{stem}.gz").unlink(missing_ok=True)
        else:
            raise DatasetNotFound(f"could not download {stem}.gz: " + "; ".join(errors))


def missing_files_message(data_dir: Path, dataset: str = "mnist") -> str:
    spec = dataset_spec(dataset)
    names = ", ".join(f"{stem}.gz" for stem in spec.checksums)
    hint = (
        f" On Debian or Ubuntu, `apt-get install dataset-fashion-mnist` puts them into "
        f"{DEBIAN_FASHION_DIR}."
        if spec.name == "fashion-mnist"
        else ""
    )
    return (
        f"{spec.title} not found in {data_dir} and the download failed. Put the four files "
        f"{names} (gzip-compressed or not) into {data_dir}, or point --data-dir or ${spec.env} "
        f"at the folder that holds them.{hint}"
    )


def _checksum_error(path: Path, stem: str, digest: str, spec: DatasetSpec) -> IDXError:
    other = [s.title for s in DATASETS.values() if s is not spec and s.checksums[stem] == digest]
    why = f" (it is {other[0]}'s file, not {spec.title}'s)" if other else ""
    return IDXError(
        f"{path}: checksum mismatch: MD5 of the decompressed content is {digest}, "
        f"expected {spec.checksums[stem]}{why}"
    )


def load_split(
    data_dir: Path, split: str, verify: bool = True, dataset: str = "mnist"
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of `train` or `test` (alias `t10k`)."""
    spec = dataset_spec(dataset)
    data_dir = Path(data_dir)
    prefix = "train" if split == "train" else "t10k"
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem = f"{prefix}-{kind}"
        path = find_file(data_dir, stem)
        if path is None:
            raise DatasetNotFound(missing_files_message(data_dir, dataset))
        raw = _read_bytes(path)
        if verify:
            digest = hashlib.md5(raw).hexdigest()
            if digest != spec.checksums[stem]:
                raise _checksum_error(path, stem, digest, spec)
        parse = parse_idx_images if kind.startswith("images") else parse_idx_labels
        arrays.append(parse(raw, str(path)))
    images, labels = arrays
    if len(images) != len(labels):
        raise IDXError(f"{data_dir}: {prefix} has {len(images)} images but {len(labels)} labels")
    return images, labels


@dataclass
class MNIST:
    """The three splits as uint8 arrays: train (55k), validation (last 5k of train), test (10k).

    Named after the format; `spec` says which dataset (MNIST or Fashion-MNIST) it holds.
    """

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    data_dir: Path
    spec: DatasetSpec = DATASETS["mnist"]

    @property
    def checksums(self) -> dict[str, str]:
        return dict(self.spec.checksums)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes


def load_dataset(
    dataset: str = "mnist",
    data_dir: Path | None = None,
    allow_download: bool = True,
    validation_size: int = VALIDATION_SIZE,
) -> MNIST:
    """Load and verify a dataset; the last `validation_size` training images are held out."""
    spec = dataset_spec(dataset)
    data_dir = Path(data_dir) if data_dir else default_data_dir(dataset)
    if allow_download and not all(find_file(data_dir, stem) for stem in spec.checksums):
        try:
            download(data_dir, dataset)
        except DatasetNotFound as exc:
            raise DatasetNotFound(missing_files_message(data_dir, dataset) + f" ({exc})") from exc
        except OSError as exc:  # e.g. a read-only folder such as /usr/share/datasets
            raise DatasetNotFound(
                missing_files_message(data_dir, dataset) + f" (cannot download: {exc})"
            ) from exc
    train_x, train_y = load_split(data_dir, "train", dataset=dataset)
    test_x, test_y = load_split(data_dir, "test", dataset=dataset)
    cut = len(train_x) - validation_size
    return MNIST(
        train=(train_x[:cut], train_y[:cut]),
        val=(train_x[cut:], train_y[cut:]),
        test=(test_x, test_y),
        data_dir=data_dir,
        spec=spec,
    )


def load_mnist(
    data_dir: Path | None = None,
    allow_download: bool = True,
    validation_size: int = VALIDATION_SIZE,
) -> MNIST:
    """Load and verify MNIST (digits); see load_dataset."""
    return load_dataset("mnist", data_dir, allow_download, validation_size)


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

    def epoch_order(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, on the device."""
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

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model input and labels for these sample indices: gather, augment, normalise.

        Only tensor operations with fixed shapes, so the CUDA-graph step captures it too.
        """
        x = self.images.index_select(0, idx)
        if self.augment is not None:
            x = self.augment(x)
        x = normalize(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels.index_select(0, idx)

    def __len__(self) -> int:
        n = len(self.labels) // self.world_size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.epoch_order()
        for i in range(len(self)):
            yield self.batch(order[i * self.batch_size : (i + 1) * self.batch_size])
