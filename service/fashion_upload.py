"""Image uploads for Fashion-MNIST models: the steps the dataset's own images were made with.

Xiao, Rasul and Vollgraf (2017), "Fashion-MNIST", section 2: each product photo (a garment on
a light studio background) was trimmed of the edges close to the corner pixels' colour, its
longest edge resized to 28, sharpened with a Gaussian of sigma 1, its shortest edge extended to
28 with the object centred, and its grey levels negated (object light on dark).

Here the same, with one generalisation: the background level (the corners' median) is mapped
to 0 and the far end of the range to 255 (for a white background that is exactly the negation),
so a photo on a grey table, or a picture already light on dark, comes out in the dataset's form
too. An image that is already 28x28 is taken as the dataset's own form (only its polarity is
fixed). The digit pipeline (stroke-width correction, 20 px box, centre of mass) is not used: it
would distort clothes, which fill the whole 28x28 frame in this dataset.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from service.errors import InputError
from service.upload import decode_image

SIDE = 28
# The dataset's trimming threshold: 5% of the grey range from the corners' colour.
TRIM_TOLERANCE = 0.05 * 255
# Larger photos are area-averaged down to this side first: the result is 28 px anyway.
WORK_SIDE = 512
SHARPEN_SIGMA = 1.0


def fashion_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """Uploaded image bytes -> (28, 28) float32 grey levels in Fashion-MNIST form."""
    return photo_to_fashion(_grey(decode_image(data, max_pixels)))


def _grey(img: Image.Image) -> np.ndarray:
    """Float32 luminance 0-255; transparency composited over white (a product cut-out)."""
    try:
        if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, rgba)
        grey = img.convert("L")
    except ValueError as exc:
        raise InputError(f"unsupported image mode {img.mode!r}") from exc
    side = max(grey.size)
    if side > WORK_SIDE:
        scale = WORK_SIDE / side
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BOX)
    return np.asarray(grey, dtype=np.float32)


def _background(grey: np.ndarray) -> float:
    corners = grey[[0, 0, -1, -1], [0, -1, 0, -1]]
    return float(np.median(corners))


def _to_light_on_dark(grey: np.ndarray, background: float) -> np.ndarray:
    """Background -> 0, the far end of the range -> 255."""
    if background >= 128:  # light background: negate, as the dataset did
        out = (background - grey) * (255.0 / max(background, 1.0))
    else:
        out = (grey - background) * (255.0 / max(255.0 - background, 1.0))
    return np.clip(out, 0.0, 255.0)


def photo_to_fashion(grey: np.ndarray) -> np.ndarray:
    """A grey picture of one object (any size) -> (28, 28) float32 in Fashion-MNIST form."""
    background = _background(grey)
    if grey.shape == (SIDE, SIDE):
        return _to_light_on_dark(grey, background).astype(np.float32)
    differs = np.abs(grey - background) > TRIM_TOLERANCE
    if not differs.any():
        raise InputError(
            "no object found: the image is one flat colour (send a photo of one piece of "
            "clothing, a shoe or a bag on a plain background)"
        )
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    crop = _to_light_on_dark(grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], background)
    h, w = crop.shape
    scale = SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (width, height)
    # Area averaging to shrink (no aliasing), cubic to enlarge a small crop.
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    small = small.reshape(size[1], size[0])  # cv2 drops a dimension of size 1
    blurred = cv2.GaussianBlur(small, (0, 0), SHARPEN_SIGMA)
    sharp = np.clip(2.0 * small - blurred, 0.0, 255.0)  # unsharp mask, amount 1
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    top, left = (SIDE - size[1]) // 2, (SIDE - size[0]) // 2
    out[top : top + size[1], left : left + size[0]] = sharp
    return out


def check_pixel_request(dataset: str, normalize: bool) -> None:
    """`normalize: true` on pixel arrays runs the digit pipeline: refused for other models."""
    if normalize and dataset != "mnist":
        raise InputError(
            "normalize=true runs the digit upload pipeline, which a "
            f"{dataset} model does not use: send the array in the dataset's form (28x28, 0-255, "
            "object light on dark) with normalize=false, or upload the picture as a file"
        )
