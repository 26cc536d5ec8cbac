"""Train an MNIST or Fashion-MNIST model; write weights/<name>.pt with weights/<name>.json.

python -m training.run                       # the default CNN on the best device
python -m training.run --model mlp --epochs 5
python -m training.run --dataset fashion-mnist --model cnn --name fashion
torchrun --nproc_per_node=2 -m training.run  # DistributedDataParallel, one process per GPU
"""

# ruff: noqa: E402 (the clock starts before the imports, which take a while)

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # before the heavy imports, which the timing table shows

import argparse
import json
import os
import sys
from dataclasses import fields, replace
from pathlib import Path

# torch.optim imports torch._dynamo on an optimizer's first use (its methods are wrapped in
# torch._disable_dynamo): 3.9 s on the H200 host. Imported here, the table shows it as the
# import it is; on a worker thread beside the data loading it only moved into that phase (the
# import holds the GIL), with no gain in the run's wall time (bench/RESULTS.md).
import torch._dynamo  # noqa: F401

from training.data import DATASETS, DatasetNotFound, IDXError
from training.device import DEVICE_CHOICES, DeviceError
from training.recipes import RECIPES, Recipe, recipe_for
from training.timing import STARTUP, Timings
from training.train import REPO_ROOT, RunConfig, RunResult, train

_IMPORTED = time.perf_counter()


def recipe_defaults(key: str) -> str:
    """One recipe field for each digit recipe, for the help text: "cnn 50, mlp 30, ..."."""
    return ", ".join(f"{name} {getattr(recipe, key)}" for name, recipe in RECIPES.items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.run",
        description="Train an MNIST digit or Fashion-MNIST clothing classifier and save its "
        "state_dict and metadata.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="mnist",
        help="mnist (handwritten digits) or fashion-mnist (10 kinds of clothing); each has its "
        "own recipes (training/recipes.py)",
    )
    p.add_argument(
        "--model",
        choices=sorted(RECIPES),
        default="cnn",
        help="recipe to train: cnn, mlp, rnn, fast (the speed recipe, a lean CNN), or m5 (a "
        "stack of 5x5 convolutions, a candidate for the cnn)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"epochs (default: the digit recipe's: {recipe_defaults('epochs')})",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch size, split across DDP ranks (default: the digit recipe's: "
        f"{recipe_defaults('batch_size')})",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help=f"peak one-cycle learning rate (default: the digit recipe's: {recipe_defaults('lr')})",
    )
    p.add_argument("--no-augment", action="store_true", help="turn off all augmentation")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe field, VALUE in JSON (e.g. --set erase=0.25 "
        "--set label_smoothing=0.1); repeatable",
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="channels of the first conv stage of cnn/fast (default: 32)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="auto picks cuda, then mps, then cpu",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder with the dataset's four IDX files (default: $MNIST_DATA_DIR or data/mnist "
        "in the repo; for fashion-mnist $FASHION_MNIST_DATA_DIR, else "
        "/usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist), else "
        "data/fashion-mnist; downloaded there if missing)",
    )
    p.add_argument(
        "--no-download",
        action="store_true",
        help="never try the public mirrors when files are missing",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "weights",
        help="folder for <name>.pt and <name>.json",
    )
    p.add_argument(
        "--name",
        default=None,
        help="file stem of the weights (default: --model; fashion-<model> for fashion-mnist)",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="folder for plots and the resume checkpoint (default: runs/<name>-<timestamp>)",
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="continue from a full checkpoint (a run folder's last.ckpt)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=0,
        help="stop after this many epochs without a better validation accuracy (0: never)",
    )
    p.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="train on the first N training images only (quick checks)",
    )
    p.add_argument(
        "--extra-train",
        type=Path,
        default=None,
        help="a .npz of MNIST-form images and labels appended to the training split, e.g. "
        "training digits as the upload pipeline makes them (python -m training.upload_views)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--no-cuda-graph",
        action="store_true",
        help="train eagerly on CUDA instead of replaying a captured CUDA graph",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=300.0,
        help="seconds a DDP rank waits for the others before the run fails",
    )
    return p.parse_args(argv)


def parse_overrides(pairs: list[str]) -> dict:
    """`key=value` strings (value in JSON) checked against the Recipe's fields."""
    known = {f.name for f in fields(Recipe)} - {"model"}
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--set {pair!r}: expected KEY=VALUE, KEY one of {sorted(known)}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--set {pair!r}: VALUE is not JSON ({exc})") from exc
    return out


def resolve_recipe(args: argparse.Namespace) -> Recipe:
    recipe = replace(recipe_for(args.dataset, args.model), **parse_overrides(args.overrides))
    overrides = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "augment": False if args.no_augment else None,
        "model_kwargs": {**recipe.model_kwargs, "width": args.width} if args.width else None,
    }
    return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


def run_config(args: argparse.Namespace) -> RunConfig:
    default_name = args.model if args.dataset == "mnist" else f"fashion-{args.model}"
    return RunConfig(
        recipe=resolve_recipe(args),
        name=args.name or default_name,
        dataset=args.dataset,
        seed=args.seed,
        device=args.device,
        data_dir=args.data_dir,
        download=not args.no_download,
        out=args.out,
        run_dir=args.run_dir,
        resume=args.resume,
        patience=args.patience,
        train_subset=args.train_subset,
        extra_train=args.extra_train,
        compile=args.compile,
        cuda_graph=not args.no_cuda_graph,
        plots=not args.no_plots,
        progress=not args.no_progress,
        dist_timeout=args.dist_timeout,
    )


def main(argv: list[str] | None = None) -> int:
    timings = Timings()
    timings.add(STARTUP, _IMPORTED - _STARTED)  # ~0 when main() is called from a test
    args = parse_args(argv)
    try:
        cfg = run_config(args)
    except ValueError as exc:  # a bad --set
        return fail(exc)
    try:
        result = train(cfg, timings)
    except (DeviceError, DatasetNotFound, IDXError) as exc:
        return fail(exc)
    if result is not None:  # rank 0
        print_summary(result, timings)
    return 0


def fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


def print_summary(result: RunResult, timings: Timings) -> None:
    meta = result.metadata
    arch = meta["architecture"]["name"]
    rows = [
        ("model", f"{meta['name']} ({arch}, {meta['parameters']:,} params)"),
        ("dataset", meta["dataset"]["title"]),
        ("device", f"{meta['device']} x{meta['world_size']}"),
        ("best epoch", f"{meta['best_epoch']} of {meta['epochs_run']}"),
        ("val accuracy", f"{meta['val']['accuracy'] * 100:.2f}%  (loss {meta['val']['loss']:.4f})"),
        (
            "test accuracy",
            f"{meta['test']['accuracy'] * 100:.2f}%  (loss {meta['test']['loss']:.4f})",
        ),
        ("training loop", f"{meta['train_loop_seconds']:.2f} s"),
        ("weights", str(result.weights_path)),
        ("run folder", str(result.run_dir)),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print("\nwhere the time went (wall clock, from the first line of training/run.py):")
    print(timings.table())


if __name__ == "__main__":
    code = main()
    # Leave without the interpreter's teardown of torch's modules and the CUDA context, about
    # 1 s on the H200 host (bench/RESULTS.md): every file the run writes is closed by now, its
    # worker thread joined, and the driver releases the GPU when the process ends.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
