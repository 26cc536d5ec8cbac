"""Turn an uploaded image (photo, scan, canvas export, tight crop) into an MNIST-form digit.

MNIST digits are light ink (255) on a black background (0), size-normalised so the longer
side of the ink's bounding box is 20 px (aspect ratio kept, anti-aliased), and placed in a
28x28 field so that the ink's centre of mass sits at the field's centre. `image_to_mnist`
rebuilds that normalisation:

1. grey levels at full size: alpha composited (over white, or over black for light ink on
   transparency), 16-bit and float modes scaled to 0-255; JPEGs decoded at reduced scale;
2. detection on a copy shrunk to DETECT_SIDE px (area averaging keeps thin strokes' ink):
   a. noise from neighbouring pixels' differences, which holds however much of the image is
      ink (a tight crop can be half ink);
   b. background: the larger of the histogram's two modes (Otsu), refined into a smooth
      quadratic surface fitted robustly, which removes uneven lighting;
   c. polarity: the smaller mode is the ink; when the two are close in size, the mode that
      holds most of the image's frame is the background, else the broader mode;
   d. ink mask: a threshold between the noise floor and the ink level (Otsu, clamped);
   e. digit: the strongest connected component plus the sizeable pieces near it, so specks,
      dust and marks far away are dropped;
3. the digit's box is cut once from the full-size image and area-resized so the digit is
   MID_SCALE x 20 px; there the ink is made soft (0..1), the box tightened, strokes far
   thinner or thicker than MNIST's brought into its range, the longer side scaled to 20 px,
   and the digit centred by mass in 28x28.

OpenCV does the pixel work (resizing, thresholds, connected components, distance transforms);
Pillow decodes (format allow-list, size limits, modes, EXIF). An image that already is an
MNIST digit comes out unchanged (step 0, `as_mnist_digit`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import InputError
from training.models import IMAGE_SIZE

# OpenCV's own thread pool would fight the server's workers for the cores; the work per image
# is small, so one thread is fastest.
cv2.setNumThreads(1)

# MNIST geometry: a 20 px box in a 28 px field; the test set's mean centre of mass is at
# (13.99, 14.01) in pixel-index coordinates, i.e. 14.0 with integer shifts.
BOX_SIZE = 20
CENTRE = 14.0
# Detection runs on a copy whose longer side is at most this: a digit filling a fifth of the
# image is still ~25 px there, and the analysis costs well under a millisecond.
DETECT_SIDE = 128
# When nothing digit-sized is found at DETECT_SIDE in a larger image (a small digit on a big
# sheet), detection is tried once more at this side.
RETRY_SIDE = 512
# JPEGs are decoded at 1/2, 1/4 or 1/8 scale while their longer side stays >= this.
DRAFT_SIDE = 512
# Below this size (on the shorter side) the background is taken as constant: no surface fit.
SMALL_SIDE = 48
# Detection averages 3x3 pixels first when the noise sigma is above this (grey levels).
BLUR_NOISE = 3.0
# An ink signal must clear the noise by this many sigmas and this many grey levels (of 255).
NOISE_SIGMAS = 5.0
MIN_CONTRAST = 20.0
# A digit's main component needs at least this share of the detection image's longer side...
MIN_DIGIT_SHARE = 0.08
# ...and this much ink (pixels at full intensity, at the detection resolution).
MIN_INK_PIXELS = 8.0
# Pieces kept beside the main component: at least this share of its ink, and no further from
# the digit's box than this fraction of the box's longer side.
PIECE_MIN_SHARE = 0.015
PIECE_MAX_GAP = 0.3
# Stroke width (2 * ink mass / gradient mass, in output px) of MNIST test digits: 5th
# percentile 2.0, median 2.6, 95th percentile 3.9. Outside [MIN, MAX] strokes are brought to
# TARGET at MID_SCALE times the output resolution, where a distance transform has fine steps.
STROKE_MIN = 1.9
STROKE_MAX = 4.5
STROKE_TARGET = 2.6
STROKE_THIN_TO = 3.0
MID_SCALE = 4

# Decoders tried on uploads. An allow-list: Pillow would otherwise also hand EPS files to
# Ghostscript and parse dozens of rarely used formats. The JPEG decoder also opens cameras'
# multi-picture (MPO) files; PPM covers the netpbm family.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
HIGH_BIT_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
EXIF_ORIENTATION = 0x0112
# Uploads up to this many pixels (MNIST-sized) are cheap: ~0.1 ms on the MNIST-form fast path.
CHEAP_PIXELS = 32 * 32
# Step 0: an image already in MNIST form is used as sent (see `as_mnist_digit`). Its peak must
# be full ink (every MNIST digit peaks at 254 or 255).
MNIST_FORM_MIN_PEAK = 250

BLANK = "no digit found: the image is blank or uniform"
NOTHING = "no digit found: nothing stands out from the background"
SPECKS = "no digit found: only specks or noise, nothing digit-sized"


# --------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Upload:
    """An upload whose header has been read and checked (format, size), pixels not decoded."""

    image: Image.Image  # opened lazily by Pillow: header parsed, no pixels yet
    data: bytes  # the file as sent, for OpenCV's decoder (`_png_grey`)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes into a fully loaded Pillow image (first frame, EXIF-upright)."""
    return load_upload(open_upload(data, max_pixels).image, draft_side=None)


def open_upload(data: bytes, max_pixels: int) -> Upload:
    """Read only the header of uploaded bytes: format and size checked, no pixels decoded.

    Cheap (microseconds), so the service can look at the size before deciding where to decode.
    """
    if not data:
        raise InputError("empty file: the upload contains no bytes")
    with _decode_errors():
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        _check_size(img.size, max_pixels)
    return Upload(img, data)


def load_upload(img: Image.Image, draft_side: int | None = DRAFT_SIDE) -> Image.Image:
    """Decode the pixels of an opened upload (first frame, EXIF-upright)."""
    with _decode_errors():
        if draft_side and img.format == "JPEG":
            # JPEG decodes at 1/2, 1/4, 1/8 scale directly, and straight to grey: far faster
            # for photos. CMYK stays CMYK (its grey needs the colour conversion).
            scale = min(draft_side / max(img.size), 1.0)
            mode = "L" if img.mode in ("L", "RGB", "YCbCr") else img.mode
            img.draft(mode, (round(img.width * scale), round(img.height * scale)))
        img.load()  # decode now so truncated or corrupt data fails here
    return _upright(img)


def upload_grey(upload: Upload) -> np.ndarray:
    """Full-size grey levels of an opened upload (see `to_grey`)."""
    grey = _png_grey(upload)
    return grey if grey is not None else to_grey(load_upload(upload.image))


def _png_grey(upload: Upload) -> np.ndarray | None:
    """Grey levels of a plain 8-bit PNG decoded by OpenCV, or None to let Pillow decode it.

    OpenCV's PNG decoder hands over a numpy array without Pillow's copy, ~1.2x faster on a
    drawing's RGBA export. It takes only the common case, where both decoders agree to within
    one grey level: one frame, no palette, no tRNS transparency, no EXIF block. Anything else,
    and any file OpenCV cannot decode, goes to Pillow, which also words the errors.
    """
    img = upload.image
    if (
        img.format != "PNG"
        or img.mode not in _OPENCV_PNG_MODES
        or "transparency" in img.info
        or "exif" in img.info
        or getattr(img, "n_frames", 1) != 1
    ):
        return None
    pixels = cv2.imdecode(np.frombuffer(upload.data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.dtype != np.uint8 or pixels.shape[:2] != img.size[::-1]:
        return None  # corrupt (Pillow says why), or 16 bits per channel (Pillow's 8-bit view)
    if pixels.ndim == 2:
        return pixels
    if pixels.shape[2] == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    grey = cv2.cvtColor(pixels, cv2.COLOR_BGRA2GRAY)  # grey + alpha arrives as BGRA too
    return _composite(grey, cv2.extractChannel(pixels, 3))


_OPENCV_PNG_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA"})


@contextlib.contextmanager
def _decode_errors() -> Iterator[None]:
    """Pillow's many exceptions -> InputError with the HTTP status to answer."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; make that an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image too large: {exc}", 413) from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            "not a readable image: the data is not in a format Pillow recognises "
            "(send PNG, JPEG, GIF, BMP, WebP, TIFF or PPM)"
        ) from exc
    except Exception as exc:  # plugins raise OSError, SyntaxError, ValueError, struct.error...
        raise InputError(f"truncated or corrupt image: {exc}") from exc


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InputError(
            f"image is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} pixels",
            413,
        )


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phones store photos sideways) and drop other frames."""
    try:
        if getattr(img, "n_frames", 1) == 1 and img.getexif().get(EXIF_ORIENTATION, 1) == 1:
            return img  # nothing to turn and no other frame: skip exif_transpose's copy
        return ImageOps.exif_transpose(img)  # also a single-frame copy of the current frame
    except Exception:  # a broken EXIF block must not reject otherwise fine pixels
        return img.copy()


# --------------------------------------------------------------------------- grey levels


def to_grey(img: Image.Image) -> np.ndarray:
    """Full-size luminance 0 (black) .. 255 (white), uint8."""
    if img.mode in HIGH_BIT_MODES:
        return _high_bit_grey(img)
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        if img.mode == "La":
            img = img.convert("LA")  # Pillow converts premultiplied "La" only to "LA"
        if img.mode == "LA":
            la = np.asarray(img)
            return _composite(la[..., 0], la[..., 1])
        rgba = np.asarray(img if img.mode == "RGBA" else img.convert("RGBA"))
        return _composite(cv2.cvtColor(rgba, cv2.COLOR_RGBA2GRAY), cv2.extractChannel(rgba, 3))
    if img.mode == "L":
        return np.asarray(img)
    try:
        return np.asarray(img.convert("L"))
    except ValueError:
        return np.asarray(_unusual_mode_grey(img))


def _unusual_mode_grey(img: Image.Image) -> Image.Image:
    if img.mode == "LAB":
        return img.getchannel("L")
    try:
        return img.convert("RGB").convert("L")
    except ValueError as exc:
        raise InputError(f"unsupported image mode {img.mode!r}") from exc


def _high_bit_grey(img: Image.Image) -> np.ndarray:
    """16-bit, 32-bit int and float images: scale their range to 0-255 rather than clip it."""
    # float64: the span of a float32 image (max - min) can overflow float32 itself.
    arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if img.mode == "F" and lo >= 0 and hi <= 1.0:
        arr = arr * 255.0  # float images in 0-1
    elif lo >= 0 and hi <= 255:
        pass  # 8-bit data stored wide (a real 16-bit picture is never that dark)
    elif lo >= 0 and hi <= 65535:
        arr = arr / 257.0  # 16-bit: 65535 -> 255
    elif hi > lo:
        arr = (arr - lo) * (255.0 / (hi - lo))
    else:
        arr = np.zeros_like(arr)  # uniform, outside every known range: no digit either way
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def _composite(lum: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Luminance composited over white (or over black for light ink on transparency), uint8."""
    if int(alpha.min()) == 255:
        return lum
    opaque = cv2.threshold(alpha, 127, 255, cv2.THRESH_BINARY)[1]
    share = cv2.countNonZero(opaque) / opaque.size
    # Light (e.g. white) ink drawn on a transparent canvas would vanish over white; an image
    # that is mostly opaque is paper or a photo, whose own colours decide the polarity.
    if 0 < share < 0.5 and cv2.mean(lum, mask=opaque)[0] > 160:
        return cv2.multiply(lum, alpha, scale=1 / 255)  # over black: lum * a
    # Over white: 255 - (255 - lum) * a, in 8-bit OpenCV passes (rounded, saturated).
    return cv2.bitwise_not(cv2.multiply(cv2.bitwise_not(lum), alpha, scale=1 / 255))


# --------------------------------------------------------------------------- the pipeline


def image_to_mnist(img: Image.Image) -> np.ndarray:
    """Any decoded image -> (28, 28) uint8 digit in MNIST polarity (0 background, 255 ink)."""
    return grey_to_mnist(to_grey(img))


def preprocess_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """Uploaded file bytes -> (28, 28) uint8 MNIST-style digit; raises InputError."""
    return upload_to_mnist(open_upload(data, max_pixels))


def upload_to_mnist(upload: Upload) -> np.ndarray:
    """An opened upload (`open_upload`) -> (28, 28) uint8 MNIST-style digit."""
    return grey_to_mnist(upload_grey(upload))


def is_cheap(upload: Upload) -> bool:
    """Whether preparing this opened upload takes tens of microseconds, not milliseconds:
    small enough to do on the event loop instead of paying a hop to a thread."""
    return upload.image.width * upload.image.height <= CHEAP_PIXELS


def as_mnist_digit(grey: np.ndarray) -> np.ndarray | None:
    """Step 0: the image as uint8 if it already is an MNIST digit, else None.

    MNIST form: 28x28, light ink on a black background (the outer ring is 0), peak at full ink,
    the ink's box 20 px on its longer side, and the centre of mass where the pipeline would put
    it (no shift). 98.9% of the MNIST test digits qualify; the model reads them better as they
    are (bench/RESULTS.md, "Uploads"). Checking costs ~15 us (~4 us for uint8 images).
    """
    if grey.shape != (IMAGE_SIZE, IMAGE_SIZE):
        return None
    if grey.dtype == np.uint8:
        return grey if _uint8_in_mnist_form(grey) else None
    row_mass = grey.sum(axis=1, dtype=np.float64)
    col_mass = grey.sum(axis=0, dtype=np.float64)
    # A few numpy calls on whole rows and columns: per-call overhead dominates at 28x28.
    rows, cols = np.flatnonzero(row_mass), np.flatnonzero(col_mass)
    if not rows.size or rows[0] == 0 or cols[0] == 0:
        return None  # blank, or ink on the top or left edge (or negative values: not MNIST)
    if rows[-1] == IMAGE_SIZE - 1 or cols[-1] == IMAGE_SIZE - 1:
        return None
    if max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 != BOX_SIZE:
        return None
    mass = row_mass.sum()
    if round(CENTRE - (row_mass @ _INDEX) / mass) or round(CENTRE - (col_mass @ _INDEX) / mass):
        return None
    peak = grey.max()
    if peak < MNIST_FORM_MIN_PEAK or peak > 255 or grey.min() < 0:
        return None
    return grey if grey.dtype == np.uint8 else np.rint(grey).astype(np.uint8)


_INDEX = np.arange(IMAGE_SIZE, dtype=np.float64)


def _uint8_in_mnist_form(grey: np.ndarray) -> bool:
    """`as_mnist_digit`'s rule for a uint8 image, in three OpenCV calls instead of a dozen numpy
    ones (a third of the time on every 28x28 upload). The box of the non-zero pixels and the
    moments are exact integer sums, so the answers are the same (tests/test_preprocess.py)."""
    x, y, w, h = cv2.boundingRect(grey)
    if not w or not x or not y or x + w == IMAGE_SIZE or y + h == IMAGE_SIZE:
        return False  # blank, or ink on an edge
    if max(w, h) != BOX_SIZE:
        return False
    m = cv2.moments(grey)
    if round(CENTRE - m["m01"] / m["m00"]) or round(CENTRE - m["m10"] / m["m00"]):
        return False
    return int(grey.max()) >= MNIST_FORM_MIN_PEAK


@dataclass
class Ink:
    """What detection found, in coordinates of the full-size image."""

    background: np.ndarray  # quadratic surface coefficients over [-1, 1] x [-1, 1]
    sign: float  # +1: ink lighter than the background; -1: darker
    cut: float  # residual below this is background (noise floor)
    strength: float  # residual of full ink above the cut
    box: tuple[int, int, int, int]  # top, left, bottom, right (exclusive), full-size px
    keep: np.ndarray  # the digit's pixels at detection resolution (uint8 0/1), inside `box`


def grey_to_mnist(grey: np.ndarray) -> np.ndarray:
    """Full-size grey levels (uint8 or float 0-255) -> (28, 28) uint8 MNIST-form digit."""
    digit = as_mnist_digit(grey)
    if digit is not None:
        return digit
    if grey.dtype != np.uint8:  # pixel arrays sent as numbers
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    if int(grey.max()) - int(grey.min()) < MIN_CONTRAST:
        raise InputError(BLANK)  # uniform (or a single pixel): cheaper to say so at once
    ink = _detect(grey, DETECT_SIDE)
    mid = _cut_out(grey, ink)
    return _centre(_fit_box(mid))


def _detect(grey: np.ndarray, side: int) -> Ink:
    """Find the digit on a copy of `grey` shrunk to `side` px; retry larger if too small."""
    factor = -(-max(grey.shape) // side)
    try:
        return _detect_on(_shrink_by(grey, factor), factor, grey.shape)
    except InputError as exc:
        if exc.message != SPECKS or factor <= 1 or side >= RETRY_SIDE:
            raise
        return _detect(grey, RETRY_SIDE)


def _shrink_by(grey: np.ndarray, factor: int) -> np.ndarray:
    """Average `factor` x `factor` blocks (the last partial row and column of blocks dropped):
    OpenCV's area resize has a fast path for whole factors, several times its general one."""
    if factor <= 1:
        return grey
    height, width = (max(1, side // factor) for side in grey.shape)
    block = grey[: height * factor, : width * factor]
    return cv2.resize(block, (width, height), interpolation=cv2.INTER_AREA)


def _detect_on(small: np.ndarray, factor: int, full: tuple[int, int]) -> Ink:
    """Detection on `small`, the full image shrunk by `factor` (of shape `full`)."""
    noise = _pixel_noise(small)
    floor = max(NOISE_SIGMAS * noise, MIN_CONTRAST)
    signal = _ink_signal(small, noise, floor)
    keep, (top, left, bottom, right) = _find_digit(signal, small, noise)
    full_box = (
        top * factor,
        left * factor,
        min(full[0], bottom * factor),
        min(full[1], right * factor),
    )
    cut = min(3.0 * noise, 0.25 * signal.level)
    strength = max(signal.level - cut, 1e-3)
    return Ink(
        signal.background, signal.sign, cut, strength, full_box, keep[top:bottom, left:right]
    )


def _find_digit(
    signal: Signal, small: np.ndarray, noise: float
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The digit's pixels (uint8, with a rim) and their box (top, left, bottom, right)."""
    # Averaging 3x3 tames pixel noise before thresholding; on a clean image it would only
    # dim strokes that the shrink has already thinned to a pixel.
    noisy = noise > BLUR_NOISE and min(small.shape) >= SMALL_SIDE
    detect = cv2.blur(signal.ink, (3, 3)) if noisy else signal.ink
    count, labels, stats = _components(detect > signal.threshold)
    keep, (top, left, bottom, right) = _select_digit(count, labels, stats, small.shape)
    # The rim: anti-aliased edges below the threshold, and a detection pixel's worth of room.
    keep = cv2.dilate(keep.view(np.uint8), _RIM)
    top, left = max(top - 1, 0), max(left - 1, 0)
    bottom, right = min(bottom + 1, small.shape[0]), min(right + 1, small.shape[1])
    return keep, (top, left, bottom, right)


@dataclass
class Signal:
    """The ink signal on the detection image and how to threshold it."""

    background: np.ndarray  # quadratic surface coefficients (a constant: only the first)
    sign: float  # +1: ink lighter than the background; -1: darker
    ink: np.ndarray  # float32, ink > 0, background ~ 0
    threshold: float  # ink above this is ink
    level: float  # typical full-ink strength


_RIM = np.ones((3, 3), np.uint8)


def _pixel_noise(grey: np.ndarray) -> float:
    """Noise sigma from differences of neighbouring pixels (robust: their median).

    Ink changes only at stroke edges, so most differences are pure noise whether the image is
    a tenth ink or half ink; a spread of the grey levels themselves would count the ink too.
    The quieter of the two directions counts: a narrow crop of a blurred 1 is edge from side
    to side, but not from top to bottom.
    """
    medians = [
        _median_level(cv2.absdiff(a, b))
        for a, b in ((grey[:, 1:], grey[:, :-1]), (grey[1:], grey[:-1]))
        if a.size
    ]
    if not medians:
        return 0.0
    # Rounding to whole grey levels floors a clean image's noise at 0: count it as 0.5 level.
    return 1.4826 * max(min(medians), 0.5) / np.sqrt(2.0)


def _median_level(values: np.ndarray) -> int:
    cum = np.cumsum(_histogram(values))
    return int(np.searchsorted(cum, cum[-1] / 2))


def _histogram(grey: np.ndarray) -> np.ndarray:
    return cv2.calcHist([np.ascontiguousarray(grey)], [0], None, [256], [0, 256]).ravel()


def _ink_signal(
    small: np.ndarray,
    noise: float,
    floor: float,
    flat: bool = False,
    frame_says: bool | None = None,
) -> Signal:
    """Background, polarity, ink signal and threshold of the detection image (uint8).

    The histogram's two modes (Otsu) give them at once: the larger mode is the background
    (even in a tight crop the background covers more than the ink, while the border can be
    mostly ink there), the other side is the ink, and Otsu's split is the threshold. When the
    background's own grey levels spread wider than noise explains (uneven lighting, shadows),
    a quadratic surface is fitted to it robustly and subtracted first. `frame_says` is the
    polarity the unflattened image's frame decided, which the flattened image keeps.
    """
    hist = _histogram(small)
    cum = np.cumsum(hist)
    total = float(cum[-1])
    split = _otsu_split(small)
    upper_share = (total - cum[split]) / total
    if not flat:
        frame_says = _frame_polarity(small, split, upper_share)
    upper_is_background = (
        frame_says if frame_says is not None else _upper_is_background(small, split, upper_share)
    )
    lo, hi = (split + 1, 256) if upper_is_background else (0, split + 1)
    low, median, high = _class_quantiles(cum, lo, hi, (SPREAD_Q, 0.5, 1 - SPREAD_Q))
    if not flat and high - low > 4.0 * noise + 8.0 and min(small.shape) >= SMALL_SIDE:
        return _flattened_signal(small, split, upper_is_background, noise, floor, frame_says)
    sign = -1.0 if upper_is_background else 1.0
    # Ink levels beyond the noise floor, read off the histogram: how many, and how strong.
    if sign < 0:
        edge = max(int(median - floor), 0)
        strong, ink_lo, ink_hi = float(cum[edge]), 0, edge + 1
    else:
        edge = min(int(median + floor), 255)
        strong, ink_lo, ink_hi = total - float(cum[edge]), edge + 1, 256
    if strong < MIN_INK_PIXELS / 2:
        raise InputError(BLANK if strong == 0 else NOTHING)
    # Typical full ink: the 90th percentile of the strong ink's strength.
    (ink_q,) = _class_quantiles(cum, ink_lo, ink_hi, (0.1 if sign < 0 else 0.9,))
    level = abs(ink_q - median)
    threshold = min(max(abs(split + 0.5 - median), floor), 0.5 * level)
    ink = cv2.subtract(small, float(median), dtype=cv2.CV_32F)
    ink *= np.float32(sign)
    background = np.zeros(6, dtype=np.float32)
    background[0] = median
    return Signal(background, sign, ink, threshold, level)


def _flattened_signal(
    small: np.ndarray,
    split: int,
    upper_is_background: bool,
    noise: float,
    floor: float,
    frame_says: bool | None,
) -> Signal:
    """Uneven background: fit the surface, subtract it (background at grey 128), and read the
    flattened image's histogram."""
    grey = small.astype(np.float32)
    coef = _fit_surface(grey, split, upper_is_background, noise)
    flat = grey - _evaluate_quadratic(coef, grey.shape) + np.float32(FLAT_LEVEL)
    flat_grey = np.clip(flat, 0, 255).astype(np.uint8)
    signal = _ink_signal(flat_grey, noise, floor, flat=True, frame_says=frame_says)
    signal.background = coef + signal.background - np.float32(FLAT_LEVEL) * _CONSTANT
    return signal


FLAT_LEVEL = 128
_CONSTANT = np.eye(6, dtype=np.float32)[0]


def _frame_polarity(small: np.ndarray, split: int, upper_share: float) -> bool | None:
    """Whether the lighter mode is the background, when the modes are close in size and the
    image's frame lies mostly in one of them; None when the frame cannot tell.

    A tight crop of a thick, blurred digit can be half ink, but even a crop to the ink's own
    box meets the ink only where strokes touch it: most of its frame is background.
    """
    if abs(upper_share - 0.5) > AMBIGUOUS_SHARE:
        return None
    upper = cv2.threshold(small, split, 1, cv2.THRESH_BINARY)[1]
    inner = upper[1:-1, 1:-1]
    frame_upper = (int(upper.sum()) - int(inner.sum())) / max(upper.size - inner.size, 1)
    if abs(frame_upper - 0.5) < FRAME_MAJORITY - 0.5:
        return None
    return frame_upper > 0.5


def _upper_is_background(small: np.ndarray, split: int, upper_share: float) -> bool:
    """Whether the lighter of the two modes is the background.

    Usually the larger mode is: ink covers a fifth of a photo and under half of a tight crop.
    A tight crop of a thick digit (a heavy 0) can be more ink than paper, though, so when the
    modes are close in size the broader one wins: strokes are narrow, so ink pixels lie closer
    to the other mode (mean distance, image edges not counted) than background pixels do.
    """
    if abs(upper_share - 0.5) > AMBIGUOUS_SHARE:
        return upper_share > 0.5
    upper = cv2.threshold(small, split, 1, cv2.THRESH_BINARY)[1]
    to_lower = cv2.distanceTransform(upper, cv2.DIST_L2, 3)
    to_upper = cv2.distanceTransform(1 - upper, cv2.DIST_L2, 3)
    broader = float(to_lower.sum()) / max(upper_share, 1e-6) >= float(to_upper.sum()) / max(
        1.0 - upper_share, 1e-6
    )
    return broader


# The background's spread: between these quantiles of its grey levels. Not the 5th and 95th:
# a canvas's anti-aliased stroke edges fall on the background's side of the split, and their
# tail alone made two drawings in three look unevenly lit (a surface fit of ~0.2 ms for nothing).
SPREAD_Q = 0.1
# Mode sizes within 50% +- this are too close to call by size alone.
AMBIGUOUS_SHARE = 0.15
# Then a mode that holds at least this share of the image's frame is the background.
FRAME_MAJORITY = 0.7


def _class_quantiles(
    cum: np.ndarray, lo: int, hi: int, quantiles: tuple[float, ...]
) -> tuple[int, ...]:
    """Grey levels at the given quantiles of the pixels with levels in [lo, hi)."""
    below = float(cum[lo - 1]) if lo else 0.0
    count = float(cum[hi - 1]) - below
    return tuple(lo + int(np.searchsorted(cum[lo:hi] - below, q * count)) for q in quantiles)


def _otsu_split(grey: np.ndarray) -> int:
    """Otsu's threshold of a uint8 image: levels <= it are the lower class."""
    return int(cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[0])


def _fit_surface(
    grey: np.ndarray, split: int, upper_is_background: bool, noise: float
) -> np.ndarray:
    """A quadratic background fitted robustly: least squares on the inlier pixels alternates
    with re-selecting the inliers (|residual| < 3 sigma of all residuals, robustly: the ink is
    the minority), seeded with the background's mode of the histogram."""
    step = max(1, int(np.sqrt(grey.size / 512)))  # 6 unknowns: ~500 samples are plenty
    sample = grey[::step, ::step].ravel().astype(np.float64)
    design = _quadratic_terms(grey.shape, step)
    inliers = sample > split if upper_is_background else sample <= split
    coef = np.zeros(6)
    coef[0] = _quantile(sample, 0.5)
    for _ in range(3):
        if np.count_nonzero(inliers) < 12:
            break
        # Normal equations over the inliers (a 0/1 weight, no copies of the rows): 6 unknowns
        # on coordinates in [-1, 1] are well conditioned, and this is far faster than lstsq.
        weighted = design.T * inliers
        coef = np.linalg.solve(weighted @ design + _RIDGE, weighted @ sample)
        fitted = sample - design @ coef
        inliers = np.abs(fitted) <= max(3.0 * _sigma(fitted), 3.0 * noise, 3.0)
    return coef.astype(np.float32)


_RIDGE = 1e-9 * np.eye(6)


def _quantile(values: np.ndarray, q: float) -> float:
    """The q-quantile (lower element, no interpolation) of an array, via np.partition."""
    flat = values.ravel()
    k = int(q * (flat.size - 1))
    return float(np.partition(flat, k)[k])


def _sigma(values: np.ndarray) -> float:
    """Robust standard deviation (scaled median absolute deviation)."""
    if values.size == 0:
        return 0.0
    values = values.ravel()[:: max(1, values.size // 20000)]  # a subsample is precise enough
    return 1.4826 * _quantile(np.abs(values - _quantile(values, 0.5)), 0.5)


def _axes(shape: tuple[int, int], step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates in [-1, 1] over `shape`, sampled at `step`."""
    height, width = shape
    ys = np.arange(0, height, step, dtype=np.float32) * (2.0 / max(height - 1, 1)) - 1.0
    xs = np.arange(0, width, step, dtype=np.float32) * (2.0 / max(width - 1, 1)) - 1.0
    return ys[:, None], xs[None, :]


@functools.lru_cache(maxsize=64)
def _quadratic_terms(shape: tuple[int, int], step: int) -> np.ndarray:
    """The quadratic's six terms at each sampled pixel, (n, 6) float64 (read-only: cached)."""
    ys, xs = _axes(shape, step)
    ys, xs = np.broadcast_arrays(ys, xs)
    terms = np.stack([np.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], axis=-1)
    terms = terms.reshape(-1, 6).astype(np.float64)
    terms.flags.writeable = False
    return terms


def _evaluate_quadratic(coef: np.ndarray, shape: tuple[int, int]) -> np.ndarray | float:
    return _surface(coef, shape, (0, 0, *shape), shape)


def _components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), 8)
    if count <= 1:
        raise InputError(NOTHING)
    return count, labels, stats


def _select_digit(
    count: int, labels: np.ndarray, stats: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The main ink component plus the sizeable pieces near it (broken strokes, dots), and
    their joint box (top, left, bottom, right)."""
    mass = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    main = int(np.argmax(mass))
    left, top, width, height = (int(v) for v in stats[main + 1, :4])
    if mass[main] < MIN_INK_PIXELS or max(width, height) < MIN_DIGIT_SHARE * max(shape):
        raise InputError(SPECKS)
    bottom, right = top + height, left + width
    keep = [main + 1]
    # Few candidates survive the share filter, so this loop is over pieces, not pixels.
    for i in np.flatnonzero(mass >= PIECE_MIN_SHARE * mass[main]):
        if i == main:
            continue
        lft, t, w, h = (int(v) for v in stats[i + 1, :4])
        gap = max(top - (t + h), t - bottom, left - (lft + w), lft - right, 0)
        if gap <= PIECE_MAX_GAP * max(bottom - top, right - left) + 1:
            keep.append(int(i) + 1)
            top, left = min(top, t), min(left, lft)
            bottom, right = max(bottom, t + h), max(right, lft + w)
    chosen = np.zeros(count, dtype=bool)
    chosen[keep] = True
    return chosen[labels], (top, left, bottom, right)


def _cut_out(grey: np.ndarray, ink: Ink) -> np.ndarray:
    """The digit's soft ink (0..1), cut once from the full-size image at MID_SCALE x 20 px."""
    top, left, bottom, right = ink.box
    # Whole-factor shrink to between 1 and 2 x the mid size: `_fit_box` does the rest.
    factor = max(1, max(bottom - top, right - left) // (MID_SCALE * BOX_SIZE))
    roi = _shrink_by(grey[top:bottom, left:right], factor).astype(np.float32)
    size = (roi.shape[1], roi.shape[0])
    # The background over the box, evaluated on the mid-size grid in full-image coordinates.
    residual = ink.sign * (roi - _surface(ink.background, grey.shape, ink.box, roi.shape))
    soft = np.clip((residual - ink.cut) * np.float32(1.0 / ink.strength), 0.0, 1.0)
    keep = cv2.resize(ink.keep, size, interpolation=cv2.INTER_NEAREST)
    return _crop(soft * keep)


def _surface(
    coef: np.ndarray, full: tuple[int, int], box: tuple[int, int, int, int], grid: tuple[int, int]
) -> np.ndarray | float:
    """The quadratic background over `box` of a `full`-size image, sampled on a `grid`-size
    raster (pixel centres of the resized box)."""
    c0, cx, cy, cxx, cxy, cyy = (float(c) for c in coef)
    if cx == cy == cxx == cxy == cyy == 0.0:
        return c0
    top, left, bottom, right = box
    rows = top - 0.5 + (np.arange(grid[0], dtype=np.float32) + 0.5) * ((bottom - top) / grid[0])
    cols = left - 0.5 + (np.arange(grid[1], dtype=np.float32) + 0.5) * ((right - left) / grid[1])
    ys = (rows * (2.0 / max(full[0] - 1, 1)) - 1.0)[:, None]
    xs = (cols * (2.0 / max(full[1] - 1, 1)) - 1.0)[None, :]
    return (c0 + cy * ys + cyy * ys * ys) + xs * (cx + cxx * xs + cxy * ys)


def _crop(soft: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(soft.any(axis=1))
    cols = np.flatnonzero(soft.any(axis=0))
    if rows.size == 0:
        raise InputError("no digit found: the ink vanished after removing the background")
    return soft[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _fit_box(mid: np.ndarray) -> np.ndarray:
    """Scale the crop's longer side to 20 px, normalising extreme stroke widths on the way."""
    box = _renormalise(_resize(mid, BOX_SIZE))
    width = stroke_width(box)
    if STROKE_MIN <= width <= STROKE_MAX:
        return box
    # Reshape at MID_SCALE x the output resolution, where a fraction of an output px is whole
    # pixels; then re-crop, since the digit's box grows or shrinks with its strokes.
    target = STROKE_TARGET if width < STROKE_MIN else STROKE_THIN_TO
    per_side = MID_SCALE * (target - width) / 2
    big = _renormalise(_resize(mid, BOX_SIZE * MID_SCALE))
    big = _reshape_strokes(np.pad(big, 2 * MID_SCALE * BOX_SIZE // 10), per_side)
    if not (big > 0).any():
        return box  # eroded away: keep the unnormalised box rather than nothing
    return _renormalise(_resize(_crop(big), BOX_SIZE))


def _reshape_strokes(ink: np.ndarray, per_side: float) -> np.ndarray:
    """Grow (per_side > 0) or shrink strokes by per_side px on each side.

    Euclidean distance to the stroke edge gives round (disk-shaped) growth and erosion, so
    curves and holes keep their shape, unlike a square max/min filter.
    """
    solid = (ink >= 0.5).astype(np.uint8)
    if per_side > 0:
        outside = cv2.distanceTransform(1 - solid, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        return np.maximum(ink, np.clip(per_side + 1.0 - outside, 0.0, 1.0))
    inside = cv2.distanceTransform(solid, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.clip(inside + per_side, 0.0, 1.0)


def _resize(img: np.ndarray, side: int) -> np.ndarray:
    height, width = img.shape
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == (width, height):
        return img
    # Area averaging when shrinking (anti-aliased, as MNIST's own scaling); linear when growing.
    method = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.clip(cv2.resize(img, size, interpolation=method), 0.0, 1.0)


def _renormalise(img: np.ndarray) -> np.ndarray:
    """Bring the typical ink level back to 1: shrinking thin strokes dims them."""
    peak = float(img.max())
    if peak <= 0:
        return img
    level = _quantile(img[img > 0.1 * peak], 0.9)
    return np.clip(img / level, 0.0, 1.0)


def stroke_width(img: np.ndarray) -> float:
    """Mean stroke width in pixels: 2 * ink mass / total gradient (both edges of a stroke)."""
    padded = cv2.copyMakeBorder(img.astype(np.float32), 2, 2, 2, 2, cv2.BORDER_CONSTANT, 0.0)
    # Central differences, as np.gradient takes inside the zero padding, at a tenth of its cost.
    grad_x = cv2.Sobel(padded, cv2.CV_32F, 1, 0, ksize=1, scale=0.5)
    grad_y = cv2.Sobel(padded, cv2.CV_32F, 0, 1, ksize=1, scale=0.5)
    edges = float(cv2.magnitude(grad_x, grad_y).sum())
    return 2.0 * float(padded.sum()) / edges if edges > 0 else 0.0


def _centre(box: np.ndarray) -> np.ndarray:
    """Place the box in a 28x28 field with its centre of mass at the centre (integer shift)."""
    # Not cv2.moments: it reads an (N, 2) float array as a contour's N points.
    mass = float(box.sum())
    top = round(CENTRE - float(box.sum(axis=1) @ np.arange(box.shape[0])) / mass)
    left = round(CENTRE - float(box.sum(axis=0) @ np.arange(box.shape[1])) / mass)
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    # Clip the paste to the field (a lopsided digit may overhang after centring, as in MNIST).
    y0, x0 = max(top, 0), max(left, 0)
    y1 = min(top + box.shape[0], IMAGE_SIZE)
    x1 = min(left + box.shape[1], IMAGE_SIZE)
    out[y0:y1, x0:x1] = box[y0 - top : y1 - top, x0 - left : x1 - left]
    return np.round(out * 255.0).astype(np.uint8)
