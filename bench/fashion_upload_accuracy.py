"""Fashion-MNIST uploads: the dataset's own preprocessing against the alternatives.

Real Fashion-MNIST test items are turned into shop photos (dark on a light, slightly noisy
backdrop, enlarged, off-centre; `tests/uploads.product_photo`), encoded as PNG and JPEG, and
sent through three preprocessings into the same shipped model (weights/fashion.pt on the CPU):

- dataset: `service/fashion_upload.py` (what the service does for a Fashion-MNIST model)
- digit:   the digit upload pipeline (what a digit model's uploads get)
- naive:   grey, negated, squashed to 28x28 (no trimming, aspect ratio lost)

The first line is the model on the test arrays themselves, the ceiling.

    python bench/fashion_upload_accuracy.py --limit 1000

Produces: bench/RESULTS.md, "Fashion-MNIST" (its uploads table; docs/fashion-mnist.md).
Results: bench/results/uploads/fashion_upload_accuracy.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import describe_cpu  # noqa: E402
from service.errors import InputError  # noqa: E402
from service.fashion_upload import fashion_upload  # noqa: E402
from service.upload import preprocess_upload  # noqa: E402
from tests.conftest import FASHION_DIR  # noqa: E402
from tests.uploads import encode, product_photo  # noqa: E402
from training.checkpoint import load_weights  # noqa: E402
from training.data import load_split  # noqa: E402
from training.models import normalize  # noqa: E402

MAX_PIXELS = 40_000_000


def naive(data: bytes) -> np.ndarray:
    grey = Image.open(io.BytesIO(data)).convert("L").resize((28, 28), Image.Resampling.BOX)
    return 255.0 - np.asarray(grey, dtype=np.float32)


def correct(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        x = normalize(torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)[:, None])
        return model(x).argmax(1).numpy() == labels


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=1000, help="test items used")
    p.add_argument("--weights", type=Path, default=REPO / "weights" / "fashion.pt")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, meta = load_weights(args.weights)
    images, labels = load_split(FASHION_DIR, "test", dataset="fashion-mnist")
    images, labels = images[: args.limit], labels[: args.limit]
    rng = np.random.default_rng(args.seed)
    uploads = [
        encode(product_photo(item, rng), "JPEG" if i % 2 else "PNG")
        for i, item in enumerate(images)
    ]
    ways: dict[str, Callable[[bytes], np.ndarray]] = {
        "dataset (service/fashion_upload.py)": lambda d: fashion_upload(d, MAX_PIXELS),
        "digit upload pipeline": lambda d: preprocess_upload(d, MAX_PIXELS),
        "naive: negate, squash to 28x28": naive,
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    print(f"command: python bench/fashion_upload_accuracy.py --limit {args.limit}")
    print(f"commit {commit}, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {describe_cpu()}")
    print(f"model: {args.weights.name} ({meta['test']['accuracy']:.2%} on the test set)\n")
    print("| input | items | refused (422) | accuracy |")
    print("|---|---|---|---|")
    ceiling = correct(model, images, labels).mean()
    print(f"| test arrays as they are | {len(labels)} | 0 | {ceiling:.2%} |")
    for name, prepare in ways.items():
        seen, answered = np.zeros((len(uploads), 28, 28), dtype=np.float32), []
        for i, data in enumerate(uploads):
            try:
                seen[i] = prepare(data)
                answered.append(i)
            except InputError:
                pass  # a refused upload counts as wrong: the user gets no answer
        right = correct(model, seen[answered], labels[answered]).sum()
        refused = len(uploads) - len(answered)
        print(f"| photos, {name} | {len(uploads)} | {refused} | {right / len(uploads):.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
