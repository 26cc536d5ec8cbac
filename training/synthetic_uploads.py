"""Synthetic uploads: MNIST digits rendered as the images people send to the service.

Each family turns a 28x28 MNIST digit (and a seeded random generator) into the bytes of an
image file as users upload them: photos of paper, drawing-app canvases, marker and fine-pen
strokes, thresholding scanners, chalk boards, a segmenter's tight crops (also cut off at an
edge), low-resolution scans scaled up, 12-megapixel phone photos. `bench/upload_accuracy.py`
measures the service's pipeline on test digits rendered this way; `training.upload_views`
renders training digits the same way to teach a model what the pipeline hands it.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image
from scipy import ndimage


def upscale(digit: np.ndarray, size: int) -> np.ndarray:
    """MNIST 28x28 uint8 -> ink coverage 0..1 with the 20 px digit box scaled to `size` px."""
    side = max(8, round(28 * size / 20))
    img = Image.fromarray(digit).resize((side, side), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(img, dtype=np.float32) / 255.0, 0.0, 1.0)


def rotate(cover: np.ndarray, degrees: float) -> np.ndarray:
    img = Image.fromarray(cover).rotate(degrees, Image.Resampling.BICUBIC, expand=True)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def place(cover: np.ndarray, rng: np.random.Generator, margin: tuple[float, float]) -> np.ndarray:
    """Put the coverage map at a random position on a larger empty canvas."""
    h, w = cover.shape
    ch = int(h * rng.uniform(*margin))
    cw = int(w * rng.uniform(*margin))
    y, x = rng.integers(0, ch - h + 1), rng.integers(0, cw - w + 1)
    out = np.zeros((ch, cw), dtype=np.float32)
    out[y : y + h, x : x + w] = cover
    return out


def lighting(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Multiplicative illumination: a linear gradient in a random direction plus vignetting."""
    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ys, xs = ys / max(h - 1, 1) - 0.5, xs / max(w - 1, 1) - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xs + np.sin(angle) * ys
    light = 1.0 - rng.uniform(0.0, 0.45) * (ramp + 0.5)
    return light - rng.uniform(0.0, 0.5) * (xs**2 + ys**2)


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def to_rgb(grey_or_rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(grey_or_rgb, 0, 255).round().astype(np.uint8))


def random_size(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # log-uniform: many small, some big


def paper(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    cover = rotate(upscale(digit, random_size(rng, 40, 400)), rng.uniform(-8, 8))
    cover = place(cover, rng, (1.2, 2.5))
    paper_rgb = rng.uniform(175, 250) - rng.uniform(0, 30, size=3)  # white to cream/grey
    ink_rgb = rng.uniform(0, 90, size=3)  # black, blue-black, pencil grey
    a = cover[..., None]
    rgb = (paper_rgb * (1 - a) + ink_rgb * a) * lighting(cover.shape, rng)[..., None]
    rgb += rng.normal(0, rng.uniform(1, 10), size=rgb.shape)
    img = to_rgb(rgb)
    if rng.random() < 0.3:
        img = img.convert("L")
    return encode(img, "JPEG", quality=int(rng.integers(50, 96)))


def canvas(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    cover = place(upscale(digit, random_size(rng, 40, 300)), rng, (1.1, 2.5))
    ink = rng.integers(0, 256, size=3)
    rgba = np.zeros((*cover.shape, 4), dtype=np.uint8)
    # What a transparent pixel's colour is differs by app: black, white, or the ink colour.
    rgba[..., :3] = rng.choice([0, 255]) if rng.random() < 0.5 else ink
    rgba[cover > 0, :3] = ink
    rgba[..., 3] = np.round(cover * 255).astype(np.uint8)
    return encode(Image.fromarray(rgba), "PNG")


def dark_on_light(cover: np.ndarray, rng: np.random.Generator, fmt: str = "PNG") -> bytes:
    paper_level, ink_level = rng.uniform(200, 255), rng.uniform(0, 70)
    grey = paper_level * (1 - cover) + ink_level * cover + rng.normal(0, 3, size=cover.shape)
    return encode(to_rgb(grey), fmt)


def thick(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    # Dilate at 2x MNIST resolution with a disk: strokes gain 2-6 MNIST px of width.
    big = upscale(digit, 40)
    radius = int(rng.integers(2, 7))
    disk = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
    big = ndimage.grey_dilation(big, footprint=disk)
    cover = upscale((big * 255).astype(np.uint8), random_size(rng, 40, 300))
    return dark_on_light(place(cover, rng, (1.2, 2.0)), rng)


def skeleton(solid: np.ndarray) -> np.ndarray:
    """One-pixel-wide centre lines of a binary image (Zhang-Suen thinning, vectorised)."""
    img = np.pad(solid.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            # Neighbours clockwise from north: P2..P9 in Zhang and Suen's naming.
            p = [
                np.roll(img, shift, (0, 1))
                for shift in ((1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1))
            ]
            count = sum(q.astype(np.int32) for q in p)
            turns = sum(((p[k] == 0) & (p[(k + 1) % 8] == 1)).astype(np.int32) for k in range(8))
            n, e, s, w = p[0], p[2], p[4], p[6]
            if step == 0:
                keep_a, keep_b = n * e * s, e * s * w
            else:
                keep_a, keep_b = n * e * w, n * s * w
            delete = (img == 1) & (count >= 2) & (count <= 6) & (turns == 1)
            delete &= (keep_a == 0) & (keep_b == 0)
            if delete.any():
                img[delete] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def thin(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    # A fine pen: the skeleton of the (binarised, upscaled) digit drawn with a narrow nib.
    size = random_size(rng, 120, 400)
    lines = skeleton(upscale(digit, size) > 0.5)
    pen = max(1.0, size * rng.uniform(0.005, 0.015))  # radius: stroke 1-3 % of the digit
    reach = int(np.ceil(pen))
    disk = np.hypot(*np.mgrid[-reach : reach + 1, -reach : reach + 1]) <= pen
    cover = ndimage.binary_dilation(lines, structure=disk).astype(np.float32)
    cover = ndimage.uniform_filter(cover, 3)  # a little anti-aliasing
    return dark_on_light(place(cover, rng, (1.2, 2.0)), rng)


def stretched(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    binary = digit > rng.integers(60, 190)
    size = random_size(rng, 30, 250)
    stretch = rng.uniform(0.45, 0.8) if rng.random() < 0.5 else rng.uniform(1.25, 2.0)
    sx, sy = (size * stretch, size) if rng.random() < 0.5 else (size, size * stretch)
    img = Image.fromarray(binary).resize(
        (max(4, round(28 * sx / 20)), max(4, round(28 * sy / 20))), Image.Resampling.NEAREST
    )
    cover = place(np.asarray(img, dtype=np.float32), rng, (1.1, 1.8))
    page = Image.fromarray(cover < 0.5)  # mode "1": ink black, paper white
    return encode(page, "PNG" if rng.random() < 0.5 else "BMP")


def chalk(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    cover = place(upscale(digit, random_size(rng, 40, 300)), rng, (1.2, 2.5))
    board = np.array([30, 60, 40]) * rng.uniform(0.5, 1.5)
    a = cover[..., None] * rng.uniform(0.6, 1.0)  # chalk is not fully opaque
    rgb = board * (1 - a) + rng.uniform(200, 250) * a
    rgb = rgb * lighting(cover.shape, rng)[..., None] + rng.normal(0, 6, size=rgb.shape)
    return encode(to_rgb(rgb), "JPEG", quality=int(rng.integers(60, 96)))


def raw(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    return encode(Image.fromarray(digit), "PNG")


def ink_box(digit: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """The ink's bounding box (top, left, bottom, right) grown by `margin` px, in the image."""
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    return (
        max(rows[0] - margin, 0),
        max(cols[0] - margin, 0),
        min(rows[-1] + 1 + margin, digit.shape[0]),
        min(cols[-1] + 1 + margin, digit.shape[1]),
    )


def scaled(cover: np.ndarray, side: int, method: int = Image.Resampling.BICUBIC) -> np.ndarray:
    """Coverage 0..1 resized so its longer side is `side` px (aspect ratio kept)."""
    h, w = cover.shape
    size = (max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w))))
    img = Image.fromarray(cover.astype(np.float32)).resize(size, method)
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)


def scan(cover: np.ndarray, rng: np.random.Generator) -> bytes:
    """Coverage as a grey scan in either polarity, a little noise, PNG or JPEG."""
    if rng.random() < 0.5:  # dark on light
        back, ink = rng.uniform(190, 255), rng.uniform(0, 70)
    else:  # light on dark
        back, ink = rng.uniform(0, 60), rng.uniform(190, 255)
    grey = back + (ink - back) * cover + rng.normal(0, rng.uniform(0.5, 4), size=cover.shape)
    if rng.random() < 0.3:
        return encode(to_rgb(grey), "JPEG", quality=int(rng.integers(70, 96)))
    return encode(to_rgb(grey), "PNG")


def tight(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A segmenter's crop: the ink's own box with 0-2 px margin, 32-128 px, maybe blurred."""
    top, left, bottom, right = ink_box(digit, int(rng.integers(0, 3)))
    cover = scaled(digit[top:bottom, left:right] / 255.0, random_size(rng, 32, 128))
    if rng.random() < 0.5:
        cover = ndimage.gaussian_filter(cover, rng.uniform(0.5, 1.5))
    return scan(cover, rng)


def cutoff(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A crop that cuts 1-3 px (at MNIST scale) into the digit at one edge."""
    top, left, bottom, right = ink_box(digit, 2)
    inner = ink_box(digit, 0)
    cut = int(rng.integers(1, 4))
    edge = int(rng.integers(0, 4))
    if edge == 0:
        top = inner[0] + cut
    elif edge == 1:
        left = inner[1] + cut
    elif edge == 2:
        bottom = inner[2] - cut
    else:
        right = inner[3] - cut
    return scan(scaled(digit[top:bottom, left:right] / 255.0, random_size(rng, 32, 128)), rng)


def lowres(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A small scan (the crop at 10-16 px) scaled up with nearest-neighbour or bilinear."""
    top, left, bottom, right = ink_box(digit, int(rng.integers(0, 3)))
    small = scaled(
        digit[top:bottom, left:right] / 255.0, int(rng.integers(10, 17)), Image.Resampling.BOX
    )
    method = Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BILINEAR
    return scan(scaled(small, random_size(rng, 48, 128), method), rng)


def other_writers(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """scikit-learn's 8x8 digits (16 grey levels, other writers), scaled up, either polarity.
    `digit` is the 8x8 image in 0-255."""
    method = Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BILINEAR
    return scan(scaled(digit / 255.0, random_size(rng, 32, 128), method), rng)


def phone(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A 12-megapixel phone photo (4000x3000) of a digit on paper, JPEG."""
    cover = rotate(upscale(digit, random_size(rng, 300, 1200)), rng.uniform(-8, 8))
    h, w = cover.shape
    sheet = np.zeros((3000, 4000), dtype=np.float32)
    y, x = rng.integers(0, 3000 - h), rng.integers(0, 4000 - w)
    sheet[y : y + h, x : x + w] = cover
    paper_level, ink_level = rng.uniform(170, 245), rng.uniform(10, 80)
    grey = (paper_level * (1 - sheet) + ink_level * sheet) * lighting(sheet.shape, rng)
    grey += rng.normal(0, 3, size=(3000, 4000)).astype(np.float32)
    img = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")
    return encode(img, "JPEG", quality=90)


FAMILIES: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "raw": raw,
    "paper": paper,
    "canvas": canvas,
    "thick": thick,
    "thin": thin,
    "stretched": stretched,
    "chalk": chalk,
    "tight": tight,
    "cutoff": cutoff,
    "lowres": lowres,
    "sklearn": other_writers,
    "phone": phone,
}
