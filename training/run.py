"""Train an MNIST or Fashion-MNIST model; write weights/<name>.pt with weights/<name>.json.

python -m training.run                       # the default CNN on the best device
python -m training.run --model mlp --epochs 5
python -m training.run --dataset fashion-mnist --model cnn --name fashion
torchrun --nproc_per_node=2 -m training.run  # DistributedDataParallel, one process per GPU
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from training import checkpoint, plots
from training.augment import Augment, RandomAffine, RandomErasing, RandomHFlip, compose
from training.data import DATASETS, DatasetNotFound, IDXError, TensorLoader, load_dataset
from training.device import DEVICE_CHOICES, device_name, select_device
from training.engine import EpochMetrics, EvalResult, evaluate, train_one_epoch
from training.graphed import GraphedTrainStep, capturable_adamw, one_cycle_schedule
from training.models import MNIST_MEAN, MNIST_STD, build_model, count_parameters
from training.recipes import RECIPES, Recipe, recipe_for

REPO_ROOT = Path(__file__).resolve().parent.parent


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
        help="recipe to train: cnn, mlp, rnn, or fast (the speed recipe, a lean CNN)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs (default: the recipe's: cnn 50, mlp 30, rnn 20, fast 2)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="global batch size, split across DDP ranks (default: the recipe's: 128; fast 512)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak one-cycle learning rate (default: the recipe's: cnn 3e-3, mlp 1e-3, "
        "rnn 3e-3, fast 1e-2)",
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


def build_augment(recipe: Recipe) -> Augment | None:
    """The recipe's augmentation steps, applied to each training batch on the device."""
    if not recipe.augment:
        return None
    steps: list[Augment] = []
    if recipe.hflip:
        steps.append(RandomHFlip())
    if recipe.affine is not None:
        affine = dict(recipe.affine)
        if "scale" in affine:
            affine["scale"] = tuple(affine["scale"])
        steps.append(RandomAffine(**affine))
    if recipe.erase:
        steps.append(RandomErasing(p=recipe.erase))
    return compose(*steps)


class Distributed:
    """torchrun's environment, or a single process when there is none."""

    def __init__(self, device_arg: str, timeout_s: float) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = select_device(device_arg)
        if device.type == "cuda" and self.world_size > 1:
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        if self.world_size > 1:
            # NCCL between GPUs, gloo between CPU processes. The timeout makes a rank that died
            # or hung fail the others instead of leaving them waiting forever.
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on biases and norm parameters: decaying them only hurts.
    return [
        {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]


class EagerTrainer:
    """The plain loop of engine.train_one_epoch with AdamW and a one-cycle schedule."""

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        steps_per_epoch: int,
        device: torch.device,
        loss_fn: nn.Module,
    ) -> None:
        self.model, self.loss_fn, self.amp = model, loss_fn, recipe.amp
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, recipe.weight_decay),
            lr=recipe.lr,
            # One fused kernel for the whole update on CUDA instead of several per parameter.
            fused=device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=recipe.lr,
            total_steps=recipe.epochs * steps_per_epoch,
            pct_start=recipe.warmup_fraction,
            cycle_momentum=False,
        )

    def prepare(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        pass  # nothing to capture

    def run_epoch(self, batches, progress=None) -> EpochMetrics:
        return train_one_epoch(
            self.model,
            batches,
            self.optimizer,
            self.loss_fn,
            self.scheduler,
            amp=self.amp,
            progress=progress,
        )

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)

    @property
    def last_lr(self) -> float:
        return self.scheduler.get_last_lr()[0]


class CUDAGraphTrainer:
    """The same step, captured as a CUDA graph (see graphed.py); CUDA and one process only."""

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        steps_per_epoch: int,
        device: torch.device,
        loss_fn: nn.Module,
    ) -> None:
        self.model, self.loss_fn, self.amp = model, loss_fn, recipe.amp
        self.optimizer = capturable_adamw(parameter_groups(model, recipe.weight_decay), device)
        self.rates = one_cycle_schedule(
            recipe.lr, recipe.epochs * steps_per_epoch, recipe.warmup_fraction
        )
        self.step: GraphedTrainStep | None = None
        self._pending: dict | None = None

    def prepare(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Capture after any resumed optimizer state is loaded, so the graph uses its tensors."""
        example = next(iter(batches))  # fixes the shapes of the graph's input tensors
        self.step = GraphedTrainStep(
            self.model, self.optimizer, self.loss_fn, self.rates, example, self.amp
        )
        if self._pending:
            self.step.load_state_dict(self._pending)

    def run_epoch(self, batches, progress=None) -> EpochMetrics:
        return self.step.run_epoch(batches, progress)

    def state_dict(self) -> dict:
        return self.step.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    @property
    def last_lr(self) -> float:
        return self.step.last_lr


def build_trainer(
    train_model: nn.Module,
    recipe: Recipe,
    steps_per_epoch: int,
    device: torch.device,
    loss_fn: nn.Module,
    graphed: bool,
):
    cls = CUDAGraphTrainer if graphed else EagerTrainer
    return cls(train_model, recipe, steps_per_epoch, device, loss_fn)


def per_class(result: EvalResult, labels: np.ndarray) -> tuple[list[float], list[list[int]]]:
    targets = torch.from_numpy(labels.astype(np.int64))
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((targets, result.predictions), torch.ones_like(targets), accumulate=True)
    accuracy = (confusion.diag().double() / confusion.sum(dim=1).clamp(min=1)).tolist()
    return [round(a, 6) for a in accuracy], confusion.tolist()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        recipe = resolve_recipe(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    default_name = args.model if args.dataset == "mnist" else f"fashion-{args.model}"
    name = args.name or default_name
    try:
        ddp = Distributed(args.device, args.dist_timeout)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = ddp.device
    log = print if ddp.is_main else (lambda *a, **k: None)

    try:
        mnist = load_dataset(args.dataset, args.data_dir, allow_download=not args.no_download)
    except (DatasetNotFound, IDXError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if device.type == "cuda":
        # TF32 matmuls and the cuDNN autotuner: free speed for fixed-shape fp32 work.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)

    model = build_model(recipe.model, **recipe.model_kwargs).to(device)
    conv = recipe.model in ("cnn", "fastcnn")
    channels_last = device.type == "cuda" and conv
    if channels_last:
        # NHWC is the layout cuDNN's tensor-core convolutions want; avoids transposes.
        model = model.to(memory_format=torch.channels_last)

    train_x, train_y = mnist.train
    if args.train_subset:
        train_x, train_y = train_x[: args.train_subset], train_y[: args.train_subset]
    per_rank_batch = max(1, recipe.batch_size // ddp.world_size)
    train_batches = TensorLoader(
        train_x,
        train_y,
        per_rank_batch,
        device,
        shuffle=True,
        augment=build_augment(recipe),
        seed=args.seed,
        rank=ddp.rank,
        world_size=ddp.world_size,
        drop_last=True,
        channels_last=channels_last,
    )
    val_batches = TensorLoader(*mnist.val, 1000, device, shuffle=False, channels_last=channels_last)
    test_batches = TensorLoader(
        *mnist.test, 1000, device, shuffle=False, channels_last=channels_last
    )

    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    train_model: nn.Module = model
    if ddp.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if args.compile:
        train_model = torch.compile(train_model)
    graphed = (
        recipe.cuda_graph
        and device.type == "cuda"
        and ddp.world_size == 1
        and not args.compile
        and not args.no_cuda_graph
    )
    trainer = build_trainer(train_model, recipe, len(train_batches), device, loss_fn, graphed)

    start_epoch, history = 1, []
    best = {"val_accuracy": -1.0, "val_loss": float("inf"), "epoch": 0, "state": None}
    train_seconds = 0.0
    if args.resume:
        ckpt = checkpoint.load_checkpoint(args.resume)
        model.load_state_dict(ckpt["model"])
        trainer.optimizer.load_state_dict(ckpt["optimizer"])
        trainer.load_state_dict(ckpt["scheduler"])
        start_epoch, history, best = ckpt["epoch"] + 1, ckpt["history"], ckpt["best"]
        train_seconds = ckpt["train_seconds"]
        run_dir = args.resume.parent
        log(f"resumed from {args.resume} at epoch {start_epoch}")
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = args.run_dir or REPO_ROOT / "runs" / f"{name}-{stamp}"

    trainer.prepare(train_batches)  # captures the CUDA graph, if any
    log(
        f"training {name} ({recipe.model}, {count_parameters(model):,} parameters) on "
        f"{device_name(device)} x{ddp.world_size}: {recipe.epochs} epochs, batch "
        f"{recipe.batch_size}, lr {recipe.lr}, augment {recipe.augment}, amp {recipe.amp}, "
        f"CUDA graph {graphed}, dataset {mnist.spec.title}"
    )
    stale = 0
    for epoch in range(start_epoch, recipe.epochs + 1):
        torch.manual_seed(args.seed * 1000 + epoch)  # reproducible augmentation after resume
        train_batches.set_epoch(epoch)
        bar = None
        if ddp.is_main and not args.no_progress:
            bar = tqdm(
                total=len(train_batches),
                desc=f"epoch {epoch}/{recipe.epochs}",
                leave=False,
                dynamic_ncols=True,
            )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        train_metrics = trainer.run_epoch(train_batches, progress=bar)
        last = epoch == recipe.epochs
        validate = last or (recipe.eval_every and epoch % recipe.eval_every == 0)
        val = evaluate(model, val_batches, loss_fn, amp=recipe.amp) if validate else None
        train_seconds += time.perf_counter() - t0  # evaluate() synchronised via .item()
        if bar is not None:
            bar.close()
        row = {
            "epoch": epoch,
            "train_loss": train_metrics.loss,
            "train_accuracy": train_metrics.accuracy,
            "lr": trainer.last_lr,
            "seconds": round(train_seconds, 3),
        }
        if val is not None:
            row.update(val_loss=val.loss, val_accuracy=val.accuracy)
            better = (val.accuracy, -val.loss) > (best["val_accuracy"], -best["val_loss"])
            if better:
                state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best = {
                    "val_accuracy": val.accuracy,
                    "val_loss": val.loss,
                    "epoch": epoch,
                    "state": state,
                }
                stale = 0
            else:
                stale += 1
        history.append(row)
        log(
            f"epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
            + (f"  val loss {val.loss:.4f} acc {val.accuracy:.4f}" if val else "")
            + f"  [{train_seconds:.1f}s]"
        )
        if ddp.is_main:
            checkpoint.save_checkpoint(
                run_dir / "last.ckpt",
                model=model.state_dict(),
                optimizer=trainer.optimizer.state_dict(),
                scheduler=trainer.state_dict(),
                epoch=epoch,
                history=history,
                best=best,
                train_seconds=train_seconds,
                recipe=recipe.as_dict(),
            )
        if args.patience and stale >= args.patience:
            log(f"early stop: no better validation accuracy for {args.patience} epochs")
            break

    # The checkpoint is chosen on validation; the test set is touched once, for the report.
    model.load_state_dict(best["state"])
    val = evaluate(model, val_batches, loss_fn, amp=recipe.amp)
    test = evaluate(model, test_batches, loss_fn, amp=recipe.amp)
    class_accuracy, confusion = per_class(test, mnist.test[1])

    if ddp.is_main:
        foreground = "ink" if mnist.spec.name == "mnist" else "the object (light on dark)"
        metadata = {
            "name": name,
            "architecture": {"name": recipe.model, "kwargs": recipe.model_kwargs},
            "parameters": count_parameters(model),
            "recipe": recipe.as_dict(),
            "seed": args.seed,
            "input": {
                "shape": [1, 28, 28],
                "dtype": "float32",
                "normalization": {"mean": MNIST_MEAN, "std": MNIST_STD},
                # Both datasets use MNIST's mean and std: one fixed input transform for every
                # model the service serves (BatchNorm and the first layer absorb the offset).
                "pixels": f"grey levels 0-255, 0 = background, 255 = {foreground}; x/255 then "
                "(x - mean) / std",
            },
            "classes": list(range(10)),
            "class_names": list(mnist.classes),
            "best_epoch": best["epoch"],
            "epochs_run": len(history),
            "val": {"accuracy": val.accuracy, "loss": val.loss, "samples": val.samples},
            "test": {
                "accuracy": test.accuracy,
                "loss": test.loss,
                "samples": test.samples,
                "per_class_accuracy": class_accuracy,
                "confusion_matrix": confusion,
            },
            "train_samples": len(train_y),
            "dataset": {
                "name": mnist.spec.name,
                "title": mnist.spec.title,
                "checksums_md5": mnist.checksums,
                "validation": "last 5000 of train",
            },
            "torch_version": torch.__version__,
            "device": device_name(device),
            "world_size": ddp.world_size,
            "train_loop_seconds": round(train_seconds, 3),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "history": history,
        }
        weights_path = checkpoint.save_weights(model, args.out, name, metadata)
        if not args.no_plots:
            plots.write_all(run_dir, history, confusion, mnist, test)
        print_summary(name, metadata, weights_path, run_dir)
    ddp.close()
    return 0


def print_summary(name: str, meta: dict, weights_path: Path, run_dir: Path) -> None:
    rows = [
        ("model", f"{name} ({meta['architecture']['name']}, {meta['parameters']:,} params)"),
        ("dataset", meta["dataset"]["title"]),
        ("device", f"{meta['device']} x{meta['world_size']}"),
        ("best epoch", f"{meta['best_epoch']} of {meta['epochs_run']}"),
        ("val accuracy", f"{meta['val']['accuracy'] * 100:.2f}%  (loss {meta['val']['loss']:.4f})"),
        (
            "test accuracy",
            f"{meta['test']['accuracy'] * 100:.2f}%  (loss {meta['test']['loss']:.4f})",
        ),
        ("training loop", f"{meta['train_loop_seconds']:.1f} s"),
        ("weights", str(weights_path)),
        ("run folder", str(run_dir)),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


if __name__ == "__main__":
    sys.exit(main())
