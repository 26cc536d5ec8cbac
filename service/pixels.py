"""Pixel arrays sent as JSON or .npy bodies: parsed, checked, and turned into model input.

These arrive already in MNIST form (28x28 grey levels 0-255, light ink on black), so no image
pipeline runs on them unless the client asks for it (`"normalize": true`). One rule is shared
with uploads: an image with no ink at all is no digit (`check_has_ink`).
"""

from __future__ import annotations

import io
import itertools
import math
import tokenize

import numpy as np
import torch

from service.errors import InputError
from service.upload import BLANK, MIN_CONTRAST, grey_to_mnist
from training.models import IMAGE_SIZE, normalize

# --------------------------------------------------------------------------- JSON pixels

_NUMBER_TYPES = (int, float, np.integer, np.floating)
_TYPE_NAMES = {
    bool: "booleans",
    str: "strings",
    type(None): "nulls",
    list: "lists",
    dict: "objects",
}


def check_has_ink(images: np.ndarray, batch: bool, digits: bool = True) -> None:
    """Refuse an image with no ink at all (blank or uniform: max - min < MIN_CONTRAST grey
    levels), as the upload pipelines do, so that an empty canvas sent as pixels gets the same
    422 as the same canvas uploaded as a PNG. `images` is (N, 28, 28); a batch's error names
    the first blank image. `digits`: the model reads digits (else objects, Fashion-MNIST)."""
    flat = images.reshape(len(images), -1)
    contrast = flat.max(axis=1).astype(np.float32) - flat.min(axis=1)
    blank = np.flatnonzero(contrast < MIN_CONTRAST)
    if blank.size:
        index = int(blank[0])
        message = BLANK if digits else BLANK.replace("no digit", "no object")
        raise InputError(message, index=index if batch else None)


def pixels_to_array(pixels: object, normalize_upload: bool = False) -> np.ndarray:
    """JSON pixels (28 lists of 28, or 784 numbers; 0-255, MNIST polarity) -> (28, 28) float32.

    Returned as sent unless `normalize_upload`, which runs the upload pipeline on them
    (polarity, crop, 20 px box, centring) for drawings that are not MNIST-normalised yet.
    """
    arr = _pixels_as_float(pixels)
    _check_values(arr)
    if normalize_upload:
        return grey_to_mnist(arr.astype(np.float32)).astype(np.float32)
    return arr.astype(np.float32)


def pixel_batch_to_array(batch: list) -> np.ndarray | None:
    """A whole batch of JSON pixel arrays -> (N, 28, 28) float32 in a few numpy passes, or None.

    None when the batch is not uniform (layouts mixed, an image of the wrong size) or holds a
    bad value: the caller then checks image by image with `pixels_to_array`, whose message
    names the image and what is wrong with it. Same checks, one pass over the batch instead of
    one per image (2x faster for 256 images).
    """
    side = IMAGE_SIZE
    if not batch or set(map(type, batch)) != {list} or not batch[0]:
        return None
    if isinstance(batch[0][0], list):  # 28 rows of 28 numbers each
        rows = list(itertools.chain.from_iterable(batch))
        if set(map(len, batch)) != {side} or set(map(type, rows)) != {list}:
            return None
        if set(map(len, rows)) != {side}:
            return None
    else:  # flat lists of 784
        rows = batch
        if set(map(len, batch)) != {side * side}:
            return None
    # Types first: np.fromiter would quietly take booleans (and the like) as numbers.
    if not all(map(_is_number_type, set(map(type, itertools.chain.from_iterable(rows))))):
        return None
    try:
        arr = np.fromiter(
            itertools.chain.from_iterable(rows), dtype=np.float64, count=len(batch) * side * side
        )
    except (ValueError, TypeError, OverflowError):  # e.g. an integer too large for a float
        return None
    return ndarray_batch_to_array(arr.reshape(len(batch), side * side))


def read_npy(body: bytes) -> np.ndarray:
    """A `.npy` body (what `numpy.save` writes) -> the array it holds, without copying it.

    The header is read with numpy's own format functions and checked before any data is
    touched: only numbers (no objects, so no pickles), and exactly as many data bytes as the
    header's shape needs, so a forged shape cannot make the service allocate. The values and
    the shape are checked by the caller, as for JSON pixel arrays.
    """
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read_header is None:
            raise ValueError(f"unsupported .npy version {version[0]}.{version[1]}")
        shape, fortran_order, dtype = read_header(stream)
        if any(side < 0 for side in shape):
            raise ValueError(f"negative size in shape {shape}")
    # numpy parses the header as a Python literal: a damaged one raises any of these.
    except (ValueError, TypeError, SyntaxError, EOFError, tokenize.TokenError) as exc:
        raise InputError(f"not a valid .npy body: {exc}", status_code=400) from None
    if dtype.kind not in "iuf" or dtype.itemsize > 8:
        raise InputError(f"pixels must be numbers, got a .npy array of {dtype}")
    count = math.prod(shape)
    if len(body) - stream.tell() != count * dtype.itemsize:
        raise InputError(
            f"not a valid .npy body: shape {shape} of {dtype} needs {count * dtype.itemsize} "
            f"bytes of data, got {len(body) - stream.tell()}",
            status_code=400,
        )
    flat = np.frombuffer(body, dtype=dtype, count=count, offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran_order else "C")


def ndarray_batch_to_array(batch: np.ndarray) -> np.ndarray | None:
    """(N, 28, 28) or (N, 784) numbers -> (N, 28, 28) float32 in one pass, or None when a value
    is out of range (the caller then checks image by image to name the bad one)."""
    images = batch.reshape(len(batch), IMAGE_SIZE, IMAGE_SIZE)
    if images.dtype != np.uint8:  # uint8 is 0-255 by construction
        finite = np.isfinite(images).all()
        if not (finite and images.min() >= 0 and images.max() <= 255):
            return None
    return images.astype(np.float32)


def _pixels_as_float(pixels: object) -> np.ndarray:
    expected = "expected 28 rows of 28 numbers or a flat list of 784 numbers"
    if isinstance(pixels, np.ndarray):
        if pixels.dtype.kind not in "iuf":
            raise InputError(f"pixels must be numbers, got an array of {pixels.dtype}")
        if pixels.shape not in ((IMAGE_SIZE, IMAGE_SIZE), (IMAGE_SIZE * IMAGE_SIZE,)):
            raise InputError(f"{expected}; got an array of shape {pixels.shape}")
        return pixels.astype(np.float64).reshape(IMAGE_SIZE, IMAGE_SIZE)
    if not isinstance(pixels, list | tuple):
        raise InputError(f"{expected}; got a value of type {type(pixels).__name__}")
    if len(pixels) == IMAGE_SIZE * IMAGE_SIZE:
        values = pixels
    elif len(pixels) == IMAGE_SIZE:
        values = _rows(pixels, expected)
    else:
        raise InputError(f"{expected}; got a list of {len(pixels)} items")
    # set(map(type, ...)) iterates in C: one pass over the values without a Python loop.
    bad = {t for t in set(map(type, values)) if not _is_number_type(t)}
    if bad:
        names = ", ".join(sorted(_describe(t) for t in bad))
        raise InputError(f"pixels must be numbers 0-255; found {names}")
    try:
        arr = np.asarray(pixels, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"pixels are not all finite numbers: {exc}") from exc
    return arr.reshape(IMAGE_SIZE, IMAGE_SIZE)


def _rows(pixels: list | tuple, expected: str) -> itertools.chain:
    kinds = set(map(type, pixels))
    if not kinds <= {list, tuple}:
        names = ", ".join(sorted(_describe(t) for t in kinds - {list, tuple}))
        raise InputError(f"{expected}; got a list of 28 items that are not all rows ({names})")
    lengths = np.fromiter(map(len, pixels), dtype=np.int64, count=IMAGE_SIZE)
    wrong = np.flatnonzero(lengths != IMAGE_SIZE)
    if wrong.size:
        row = int(wrong[0])
        raise InputError(f"{expected}; row {row} has {lengths[row]} values")
    return itertools.chain.from_iterable(pixels)


def _is_number_type(kind: type) -> bool:
    return issubclass(kind, _NUMBER_TYPES) and not issubclass(kind, bool | np.bool_)


def _describe(kind: type) -> str:
    return _TYPE_NAMES.get(kind, f"{kind.__name__} values")


def _check_values(arr: np.ndarray) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise InputError(
            f"pixels must be finite: row {row}, column {col} is {arr[row, col]} "
            f"({int((~finite).sum())} NaN/infinite values)"
        )
    outside = (arr < 0) | (arr > 255)
    if outside.any():
        row, col = np.argwhere(outside)[0]
        raise InputError(
            f"pixels must be 0-255: row {row}, column {col} is {arr[row, col]:g} "
            f"({int(outside.sum())} values out of range)"
        )


# --------------------------------------------------------------------------- model input


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 or float 0-255 (or one (28, 28) image) -> (N, 1, 28, 28) float32."""
    arr = np.asarray(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise InputError(f"expected images of shape (N, 28, 28), got {arr.shape}")
    if arr.dtype == np.uint8:
        # normalize() scales uint8 itself. from_numpy shares the memory, and warns on a
        # read-only buffer (a v2 binary body): that one is copied (N x 784 bytes).
        arr = np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy()
        tensor = torch.from_numpy(arr)
    else:
        tensor = torch.from_numpy(arr.astype(np.float32) / np.float32(255.0))
    return normalize(tensor).unsqueeze(1).float()
