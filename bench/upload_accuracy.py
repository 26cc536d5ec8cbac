"""Accuracy on realistic uploads: the service's preprocessing against a naive resize.

    python bench/upload_accuracy.py --weights weights/cnn.pt --limit 1000

Builds a deterministic synthetic "real-world upload" set from the MNIST test split (all 10k
images per family unless --limit), in families that mimic what users send:

    raw       the 28x28 MNIST image itself, as PNG (the pipeline must not hurt it)
    paper     dark ink on paper, photographed: tinted paper, gradient lighting, noise, slight
              rotation, random size and position, JPEG (colour or grey)
    canvas    a drawing-app export: RGBA, transparent background, ink of a random colour
    thick     marker strokes far thicker than MNIST's, dark on light
    thin      fine-pen strokes far thinner than MNIST's, dark on light
    stretched binarised (1-bit) and stretched in x or y, as from a thresholding scanner
    chalk     light ink on a dark noisy board (inverse polarity), JPEG
    tight     cropped to the ink's own box (0-2 px margin), both polarities, 32-128 px, some blurred
    cutoff    like tight, with 1-3 px of the digit cut off at one edge
    lowres    10-16 px scans scaled up with nearest-neighbour or bilinear resizing
    sklearn   scikit-learn's 1,797 8x8 digits (other writers, 16 grey levels) scaled up
    phone     a 12-megapixel phone JPEG of a digit on paper (20 images: the decode dominates)

Every image goes through `service.upload.preprocess_upload` (bytes in, 28x28 out) and
through a naive baseline (convert to L, resize to 28x28, no inversion); both feed the same
model. Prints a markdown table (accuracy per family, preprocessing time per image) and
writes it to bench/results/uploads/upload_accuracy.md with the command, date and machine.
Produces: bench/RESULTS.md, "Uploads" (README: 98.0% of realistic uploads; docs/uploads.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service import upload  # noqa: E402
from service.errors import InputError  # noqa: E402
from service.pixels import to_model_input  # noqa: E402
from service.upload import preprocess_upload  # noqa: E402
from training.checkpoint import load_weights  # noqa: E402
from training.data import load_split  # noqa: E402
from training.quantize import load_int8  # noqa: E402

MAX_PIXELS = 20_000_000
SEED = 20240607


# --------------------------------------------------------------------------- rendering


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
# Families with their own images (not MNIST's) or a smaller default count (costly to make).
SKLEARN = "sklearn"
FEW = {"phone": 20}


# --------------------------------------------------------------------------- measuring


def naive(data: bytes) -> np.ndarray:
    """The baseline: what a service without preprocessing would feed the model."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L").resize((28, 28)))


def predict(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    preds = []
    with torch.inference_mode():
        for start in range(0, len(images), 1000):
            batch = to_model_input(images[start : start + 1000])
            preds.append(model(batch).argmax(1).numpy())
    return np.concatenate(preds)


def decode_only(data: bytes) -> None:
    """The cheaper of the two plain decoders on the whole file: the yardstick for the pipeline."""
    Image.open(io.BytesIO(data)).load()


def cv2_decode(data: bytes) -> None:
    cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def cpu_time(call: Callable[[], object], repeats: int = 1) -> float:
    """Best of `repeats` CPU times of one call, in seconds (per image, one thread)."""
    best = float("inf")
    for _ in range(repeats):
        c0 = time.process_time()
        call()
        best = min(best, time.process_time() - c0)
    return best


def family_images(
    name: str, images: np.ndarray, labels: np.ndarray, limit: int | None
) -> tuple[np.ndarray, np.ndarray]:
    if name == SKLEARN:
        from sklearn.datasets import load_digits  # ships its data: no download

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        labels = digits.target
    count = min(limit or len(images), FEW.get(name, len(images)), len(images))
    return images[:count], labels[:count]


def run_family(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    model: torch.nn.Module,
    others: dict[str, torch.nn.Module] | None = None,
) -> dict[str, float]:
    make = FAMILIES[name]
    ours = np.zeros((len(images), 28, 28), dtype=np.uint8)
    base = np.zeros_like(ours)
    rejected = np.zeros(len(images), dtype=bool)
    cpu, pil, ocv, sides = [], [], [], []
    family_seed = list(FAMILIES).index(name)
    for i, digit in enumerate(images):
        data = make(digit, np.random.default_rng([SEED, family_seed, i]))
        c0 = time.process_time()
        try:
            ours[i] = preprocess_upload(data, MAX_PIXELS)
        except InputError:
            rejected[i] = True  # counts as wrong: every image holds a digit
        cpu.append(time.process_time() - c0)
        pil.append(cpu_time(partial(decode_only, data)))
        ocv.append(cpu_time(partial(cv2_decode, data)))
        base[i] = naive(data)
        sides.append(max(Image.open(io.BytesIO(data)).size))
    ok = (predict(model, ours) == labels) & ~rejected
    decode = min(np.median(pil), np.median(ocv))
    return {
        "n": len(images),
        "side": float(np.median(sides)),
        "ours": float(ok.mean()),
        "naive": float((predict(model, base) == labels).mean()),
        "rejected": int(rejected.sum()),
        "cpu_ms": 1000 * float(np.median(cpu)),
        "cpu_p95": 1000 * float(np.percentile(cpu, 95)),
        "pil_ms": 1000 * float(np.median(pil)),
        "cv2_ms": 1000 * float(np.median(ocv)),
        "ratio": float(np.median(cpu) / decode),
        # the same preprocessed images through the --compare weights
        "others": {
            label: float(((predict(other, ours) == labels) & ~rejected).mean())
            for label, other in (others or {}).items()
        },
    }


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [
        "| family | images | median side px | pipeline acc | naive acc | refused "
        "| pipeline CPU ms median | p95 | p95/median | decode ms Pillow | decode ms OpenCV "
        "| pipeline / faster decode |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['n']} | {r['side']:.0f} | {r['ours']:.4f} | {r['naive']:.4f} "
            f"| {r['rejected']} | {r['cpu_ms']:.2f} | {r['cpu_p95']:.2f} "
            f"| {r['cpu_p95'] / r['cpu_ms']:.2f} | {r['pil_ms']:.2f} | {r['cv2_ms']:.2f} "
            f"| {r['ratio']:.2f}x |"
        )
    mnist = {k: r for k, r in results.items() if k != SKLEARN}
    n = sum(r["n"] for r in mnist.values())
    ours = sum(r["ours"] * r["n"] for r in mnist.values()) / n
    base = sum(r["naive"] * r["n"] for r in mnist.values()) / n
    lines.append(f"| **all MNIST families** | {n} | | **{ours:.4f}** | {base:.4f} | | | | | | | |")
    return "\n".join(lines)


def comparison(results: dict[str, dict], main_label: str) -> str:
    """Pipeline accuracy per family for the --weights and each --compare weights."""
    labels = list(next(iter(results.values()))["others"])
    lines = [
        f"| family | {main_label} | " + " | ".join(labels) + " |",
        "|---|" + "---:|" * (1 + len(labels)),
    ]
    mnist = {k: r for k, r in results.items() if k != SKLEARN}
    n = sum(r["n"] for r in mnist.values())
    for name, r in results.items():
        accs = [r["ours"], *r["others"].values()]
        lines.append(f"| {name} | " + " | ".join(f"{a:.4f}" for a in accs) + " |")
    totals = [sum(r["ours"] * r["n"] for r in mnist.values()) / n]
    totals += [sum(r["others"][x] * r["n"] for r in mnist.values()) / n for x in labels]
    lines.append("| **all MNIST families** | " + " | ".join(f"{t:.4f}" for t in totals) + " |")
    return "\n".join(lines)


def ablation(
    images: np.ndarray,
    labels: np.ndarray,
    model: torch.nn.Module,
    results: dict[str, dict[str, float]],
) -> str:
    """Does stroke-width normalisation help? The stroke families with it switched off."""
    lines = [
        "Stroke-width normalisation (thin strokes thickened, thick ones eroded, at 4x the "
        "output resolution) on and off:",
        "",
        "| family | with normalisation | without |",
        "|---|---:|---:|",
    ]
    saved = upload.STROKE_MIN, upload.STROKE_MAX
    upload.STROKE_MIN, upload.STROKE_MAX = 0.0, float("inf")
    try:
        for name in ("thick", "thin", "raw"):
            off = run_family(name, images, labels, model)["ours"]
            on = results[name]["ours"] if name in results else float("nan")
            print(f"{name} without stroke normalisation: {off:.4f}", file=sys.stderr)
            lines.append(f"| {name} | {on:.4f} | {off:.4f} |")
    finally:
        upload.STROKE_MIN, upload.STROKE_MAX = saved
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, default=REPO / "weights" / "cnn.pt")
    p.add_argument("--data-dir", type=Path, default=None, help="MNIST folder")
    p.add_argument("--limit", type=int, default=None, help="images per family (default all)")
    p.add_argument(
        "--ablate-strokes",
        action="store_true",
        help="also run the thick and thin families with stroke-width normalisation off",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="use the int8 weights the service runs on the CPU (weights/int8/, same stem)",
    )
    p.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        default=[],
        help="other weights to score on the same preprocessed images (a table per family)",
    )
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "uploads" / "upload_accuracy.md"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # time the preprocessing as one server worker would see it
    data_dir = args.data_dir or Path(
        os.environ.get("MNIST_DATA_DIR", REPO.parent / "shared" / "datasets" / "mnist")
    )
    images, labels = load_split(data_dir, "test")
    model, meta = load_weights(args.weights)
    if args.int8:  # what the service runs on the CPU
        model = load_int8(args.weights, model, meta)
    others = {str(path): load_weights(path)[0] for path in args.compare}
    results = {}
    for name in args.families:
        fam_images, fam_labels = family_images(name, images, labels, args.limit)
        results[name] = run_family(name, fam_images, fam_labels, model, others)
        print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
    text = table(results)
    if others:
        text += "\n\n" + comparison(results, str(args.weights))
    if args.ablate_strokes:
        limit = args.limit or len(images)
        text += "\n\n" + ablation(images[:limit], labels[:limit], model, results)
    print(text)
    command = "python bench/upload_accuracy.py " + " ".join(sys.argv[1:])
    header = (
        "# Upload accuracy: preprocess_upload vs a naive resize\n\n"
        f"- command: `{command.strip()}`\n"
        f"- date: {dt.datetime.now().isoformat(timespec='seconds')}\n"
        f"- machine: {machine()}; preprocessing timed on 1 thread\n"
        f"- weights: `{args.weights}` ({meta.get('architecture', {}).get('name', '?')}"
        f"{'; the int8 weights from weights/int8/' if args.int8 else ''})\n"
        f"- images: the first {args.limit or len(images)} MNIST test images per family "
        f"({', '.join(f'{k} {v}' for k, v in FEW.items())}; sklearn: its own 1,797 digits), "
        f"deterministic (seed {SEED})\n\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
