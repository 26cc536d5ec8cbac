"""Accuracy on realistic uploads: the service's preprocessing against a naive resize.

    python bench/upload_accuracy.py --weights weights/cnn.pt --limit 1000

Builds a deterministic synthetic "real-world upload" set from the MNIST test split (all 10k
images per family unless --limit), in families that mimic what users send (the renderers are
in training/synthetic_uploads.py):

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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service import upload  # noqa: E402
from service.errors import InputError  # noqa: E402
from service.pixels import to_model_input  # noqa: E402
from service.upload import preprocess_upload  # noqa: E402
from training.checkpoint import load_weights  # noqa: E402
from training.data import load_split  # noqa: E402
from training.quantize import load_int8  # noqa: E402
from training.synthetic_uploads import FAMILIES  # noqa: E402

MAX_PIXELS = 20_000_000
SEED = 20240607

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
