"""Training digits as the service sees real uploads: rendered, uploaded, preprocessed.

    python -m training.upload_views --out data/upload-views.npz

A model trained on MNIST alone meets, in the service, what the upload pipeline makes of photos,
marker strokes, scanner output and tight crops: digits whose holes a marker closed, squeezed
or cut-off digits, blocky upscales. This renders training digits in the families of
`training.synthetic_uploads`, sends each through the service's own pipeline
(`service.upload.preprocess_upload`, bytes in, 28x28 out) and saves the results with their
labels, for `python -m training.run --extra-train FILE`. Only the training part of MNIST's
training split is used (the validation images stay unseen); the test split is never read.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import numpy as np

from service.errors import InputError
from service.upload import preprocess_upload
from training.data import default_data_dir, load_dataset
from training.synthetic_uploads import FAMILIES

# The families whose pipeline output differs most from MNIST's own digits (bench/RESULTS.md,
# "Uploads": the families below 98.5% with MNIST-only weights).
DEFAULT_FAMILIES = ("thick", "stretched", "cutoff", "lowres", "tight", "paper")
MAX_PIXELS = 20_000_000
# Not the seed of bench/upload_accuracy.py: other random renderings than the measured ones.
SEED = 20261202


def render(job: tuple[str, int, np.ndarray]) -> np.ndarray | None:
    """One training digit rendered in one family and preprocessed; None if refused."""
    family, index, digit = job
    rng = np.random.default_rng([SEED, list(FAMILIES).index(family), index])
    try:
        return preprocess_upload(FAMILIES[family](digit, rng), MAX_PIXELS)
    except InputError:
        return None


def build(
    images: np.ndarray, labels: np.ndarray, families: list[str], per_family: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`per_family` random training digits per family -> (images, labels, family index)."""
    order = np.random.default_rng(seed)
    jobs, meta = [], []
    for f, family in enumerate(families):
        for index in order.choice(len(images), per_family, replace=False):
            jobs.append((family, int(index), images[index]))
            meta.append((int(labels[index]), f))
    with multiprocessing.Pool() as pool:
        views = pool.map(render, jobs, chunksize=64)
    kept = [i for i, view in enumerate(views) if view is not None]
    out = np.stack([views[i] for i in kept]).astype(np.uint8)
    labels_out = np.array([meta[i][0] for i in kept], dtype=np.uint8)
    family_out = np.array([meta[i][1] for i in kept], dtype=np.uint8)
    return out, labels_out, family_out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the .npz to write")
    p.add_argument(
        "--families",
        nargs="+",
        default=list(DEFAULT_FAMILIES),
        choices=[name for name in FAMILIES if name != "phone"],
        help=f"families to render (default: {' '.join(DEFAULT_FAMILIES)})",
    )
    p.add_argument("--per-family", type=int, default=5000, help="digits per family (default: 5000)")
    p.add_argument(
        "--data-dir", type=Path, default=None, help="MNIST IDX folder (default: as training)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="which training digits are drawn (default: 0)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dataset = load_dataset("mnist", args.data_dir or default_data_dir(), allow_download=False)
    images, labels = dataset.train  # the validation images are held out by load_dataset
    t0 = time.perf_counter()
    views, view_labels, family = build(images, labels, args.families, args.per_family, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out, images=views, labels=view_labels, family=family, families=np.array(args.families)
    )
    refused = len(args.families) * args.per_family - len(views)
    print(
        f"{len(views)} views of {len(args.families)} families ({refused} refused) in "
        f"{time.perf_counter() - t0:.1f} s -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
