"""One training run from start to finish: `train()` reads as the sequence of its steps.

Set up the device, load the data, build the model and its trainer (eager, or the CUDA-graph
step), resume if asked, run the epochs, take the checkpoint that did best on validation, test it
once, and write the weights, their metadata and the plots. Each step is timed (timing.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training import checkpoint
from training.augment import (
    Augment,
    RandomAffine,
    RandomErasing,
    RandomHFlip,
    RandomStroke,
    compose,
)
from training.data import MNIST, TensorLoader, load_dataset
from training.device import configure, device_name
from training.distributed import Distributed
from training.ema import EMA
from training.engine import EagerTrainer, EvalResult, evaluate
from training.graphed import CUDAGraphTrainer
from training.models import MNIST_MEAN, MNIST_STD, build_model, count_parameters
from training.recipes import Recipe
from training.timing import DATA, DEVICE, EVALUATION, LOOP, SETUP, WRITING, Timings

REPO_ROOT = Path(__file__).resolve().parent.parent
Log = Callable[..., None]  # print on rank 0, a no-op on the others


@dataclass(frozen=True)
class RunConfig:
    """What one run needs besides the recipe (the command line's other options)."""

    recipe: Recipe
    name: str
    dataset: str = "mnist"
    seed: int = 0
    device: str = "auto"
    data_dir: Path | None = None
    download: bool = True
    out: Path = REPO_ROOT / "weights"
    run_dir: Path | None = None
    resume: Path | None = None
    patience: int = 0  # stop after this many epochs without a better validation accuracy
    train_subset: int | None = None
    extra_train: Path | None = None  # .npz of MNIST-form images and labels (training.upload_views)
    compile: bool = False
    cuda_graph: bool = True
    plots: bool = True
    progress: bool = True
    dist_timeout: float = 300.0


@dataclass
class Data:
    dataset: MNIST
    train: TensorLoader
    val: TensorLoader
    test: TensorLoader


@dataclass
class Parts:
    """The model as trained, the model that is validated and shipped, and what trains it."""

    model: nn.Module
    shipped: nn.Module  # `model`, or its moving average when the recipe has one
    trainer: EagerTrainer | CUDAGraphTrainer
    ema: EMA | None
    loss_fn: nn.Module
    graphed: bool


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint and restored by --resume."""

    epoch: int = 0  # the last finished epoch
    history: list[dict] = field(default_factory=list)
    best: dict = field(
        default_factory=lambda: {
            "val_accuracy": -1.0,
            "val_loss": float("inf"),
            "epoch": 0,
            "state": None,
        }
    )
    train_seconds: float = 0.0
    stale: int = 0  # validated epochs since the last better one


@dataclass
class RunResult:
    metadata: dict
    weights_path: Path
    run_dir: Path


def train(cfg: RunConfig, timings: Timings) -> RunResult | None:
    """The whole run; returns what rank 0 wrote (None on the other ranks)."""
    start = time.perf_counter()
    with Distributed(cfg.device, cfg.dist_timeout) as ddp:
        device = ddp.device
        configure(device, cfg.recipe.cudnn_benchmark)
        timings.device = device
        timings.add(DEVICE, time.perf_counter() - start)
        log: Log = print if ddp.is_main else (lambda *a, **k: None)
        run_dir = cfg.resume.parent if cfg.resume else cfg.run_dir or default_run_dir(cfg.name)

        with timings.phase(DATA):
            data = load_data(cfg, ddp)
        with ThreadPoolExecutor(max_workers=1) as pool:
            sample_plot = start_sample_plot(pool, cfg, ddp, run_dir, data)
            with timings.phase(SETUP):
                parts = build_parts(cfg, ddp, data)
                progress = resume(cfg, parts, log) if cfg.resume else Progress()
                prepare(parts, data)
                if sample_plot is not None:
                    sample_plot.result()  # what set-up did not hide is billed here
        log(describe(cfg, parts, data, ddp))
        fit(cfg, parts, data, progress, run_dir, ddp.is_main, timings, log)
        with timings.phase(EVALUATION):
            parts.shipped.load_state_dict(progress.best["state"])
            val = evaluate(parts.shipped, data.val, parts.loss_fn, amp=cfg.recipe.amp)
            test = evaluate(parts.shipped, data.test, parts.loss_fn, amp=cfg.recipe.amp)
        if not ddp.is_main:
            return None
        with timings.phase(WRITING):
            meta = metadata(cfg, parts, data, progress, val, test, ddp)
            weights_path = checkpoint.save_weights(parts.shipped, cfg.out, cfg.name, meta)
            if cfg.plots:
                from training import plots  # imported (and timed) by start_sample_plot

                plots.write_results(
                    run_dir, progress.history, meta["test"]["confusion_matrix"], data.dataset, test
                )
        return RunResult(meta, weights_path, run_dir)


def start_sample_plot(
    pool: ThreadPoolExecutor, cfg: RunConfig, ddp: Distributed, run_dir: Path, data: Data
) -> Future | None:
    """Import matplotlib and draw the training samples on a worker thread, while the main
    thread sets up the model: set-up waits mostly in CUDA and cuDNN calls, which release the
    GIL, so about a second of plotting leaves the end of the run (bench/RESULTS.md). The
    set-up phase waits for it before the loop starts, so the loop is never shared with it."""
    if not (cfg.plots and ddp.is_main):
        return None

    def draw() -> None:
        from training import plots  # matplotlib: imported only when plots are drawn

        plots.write_samples(run_dir, data.dataset)

    return pool.submit(draw)


def default_run_dir(name: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return REPO_ROOT / "runs" / f"{name}-{stamp}"


def build_augment(recipe: Recipe) -> Augment | None:
    """The recipe's augmentation steps, applied to each training batch on the device."""
    if not recipe.augment:
        return None
    steps: list[Augment] = []
    if recipe.hflip:
        steps.append(RandomHFlip())
    if recipe.stroke:
        steps.append(RandomStroke(p=recipe.stroke))
    if recipe.affine is not None:
        affine = dict(recipe.affine)
        if "scale" in affine:
            affine["scale"] = tuple(affine["scale"])
        steps.append(RandomAffine(**affine))
    if recipe.erase:
        steps.append(RandomErasing(p=recipe.erase))
    return compose(*steps)


def uses_channels_last(recipe: Recipe, device: torch.device) -> bool:
    # NHWC is the layout cuDNN's tensor-core convolutions want; avoids transposes.
    return device.type == "cuda" and recipe.model in ("cnn", "fastcnn", "m5")


def load_data(cfg: RunConfig, ddp: Distributed) -> Data:
    """Read and verify the IDX files; put the three splits on the device as tensors."""
    dataset = load_dataset(cfg.dataset, cfg.data_dir, allow_download=cfg.download)
    device, recipe = ddp.device, cfg.recipe
    channels_last = uses_channels_last(recipe, device)
    train_x, train_y = dataset.train
    if cfg.train_subset:
        train_x, train_y = train_x[: cfg.train_subset], train_y[: cfg.train_subset]
    if cfg.extra_train:
        extra_x, extra_y = load_extra_train(cfg.extra_train)
        train_x, train_y = np.concatenate([train_x, extra_x]), np.concatenate([train_y, extra_y])
    train_batches = TensorLoader(
        train_x,
        train_y,
        max(1, recipe.batch_size // ddp.world_size),
        device,
        shuffle=True,
        augment=build_augment(recipe),
        seed=cfg.seed,
        rank=ddp.rank,
        world_size=ddp.world_size,
        drop_last=True,
        channels_last=channels_last,
    )

    def in_order(split: tuple[np.ndarray, np.ndarray]) -> TensorLoader:
        return TensorLoader(*split, 1000, device, shuffle=False, channels_last=channels_last)

    return Data(dataset, train_batches, in_order(dataset.val), in_order(dataset.test))


def load_extra_train(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Extra training images (N, 28, 28) uint8 and labels, e.g. `training.upload_views`'s."""
    with np.load(path) as extra:
        images, labels = extra["images"], extra["labels"]
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise ValueError(f"{path}: expected uint8 images (N, 28, 28) with N labels")
    return images, labels.astype(np.uint8)


def build_parts(cfg: RunConfig, ddp: Distributed, data: Data) -> Parts:
    """The model (seeded), its moving average, the loss, and the trainer that fits them."""
    recipe, device = cfg.recipe, ddp.device
    torch.manual_seed(cfg.seed)
    model = build_model(recipe.model, **recipe.model_kwargs).to(device)
    if uses_channels_last(recipe, device):
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, recipe.ema) if recipe.ema else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    train_model: nn.Module = model
    if ddp.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        train_model = torch.compile(train_model)
    graphed = (
        recipe.cuda_graph
        and cfg.cuda_graph
        and device.type == "cuda"
        and ddp.world_size == 1
        and not cfg.compile
    )
    trainer_class = CUDAGraphTrainer if graphed else EagerTrainer
    trainer = trainer_class(train_model, recipe, len(data.train), device, loss_fn, ema)
    shipped = ema.model if ema else model
    return Parts(model, shipped, trainer, ema, loss_fn, graphed)


def resume(cfg: RunConfig, parts: Parts, log: Log) -> Progress:
    """Model, optimizer, schedule, moving average and progress from a run's last.ckpt."""
    ckpt = checkpoint.load_checkpoint(cfg.resume)
    parts.model.load_state_dict(ckpt["model"])
    parts.trainer.load_optimizer(ckpt["optimizer"])
    parts.trainer.load_state_dict(ckpt["scheduler"])
    if parts.ema is not None:
        parts.ema.load_state_dict(ckpt["ema"])
    log(f"resumed from {cfg.resume} at epoch {ckpt['epoch'] + 1}")
    return Progress(
        epoch=ckpt["epoch"],
        history=ckpt["history"],
        best=ckpt["best"],
        train_seconds=ckpt["train_seconds"],
        stale=ckpt.get("stale", 0),
    )


def prepare(parts: Parts, data: Data) -> None:
    """Capture the CUDA graph (after any resumed state is loaded, so it uses those tensors);
    on CUDA, also run one validation batch so cuDNN picks its inference algorithms now
    rather than inside the timed loop."""
    parts.trainer.prepare(data.train)
    # A step that could not be captured runs eagerly: say so in the run's description.
    parts.graphed = parts.graphed and parts.trainer.graph is not None
    if parts.graphed:
        evaluate(parts.shipped, [next(iter(data.val))], parts.loss_fn, amp=parts.trainer.amp)


def describe(cfg: RunConfig, parts: Parts, data: Data, ddp: Distributed) -> str:
    r = cfg.recipe
    return (
        f"training {cfg.name} ({r.model}, {count_parameters(parts.model):,} parameters) on "
        f"{device_name(ddp.device)} x{ddp.world_size}: {r.epochs} epochs, batch "
        f"{r.batch_size}, lr {r.lr}, augment {r.augment}, amp {r.amp}, ema {r.ema}, "
        f"CUDA graph {parts.graphed}, dataset {data.dataset.spec.title}"
    )


def fit(
    cfg: RunConfig,
    parts: Parts,
    data: Data,
    progress: Progress,
    run_dir: Path,
    is_main: bool,
    timings: Timings,
    log: Log,
) -> None:
    """The epochs: train, validate when the recipe says so, keep the best, checkpoint."""
    recipe = cfg.recipe
    for epoch in range(progress.epoch + 1, recipe.epochs + 1):
        with timings.phase(LOOP):
            row = run_epoch(cfg, parts, data, progress, epoch, is_main)
        log(
            f"epoch {epoch:3d}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
            + (
                f"  val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}"
                if "val_loss" in row
                else ""
            )
            + f"  [{progress.train_seconds:.1f}s]"
        )
        if is_main:
            with timings.phase(WRITING):
                save_checkpoint(run_dir, parts, progress, recipe)
        if cfg.patience and progress.stale >= cfg.patience:
            log(f"early stop: no better validation accuracy for {cfg.patience} epochs")
            break


def run_epoch(
    cfg: RunConfig, parts: Parts, data: Data, progress: Progress, epoch: int, is_main: bool
) -> dict:
    """One epoch of training (and validation), recorded in `progress`; returns its row."""
    recipe = cfg.recipe
    torch.manual_seed(cfg.seed * 1000 + epoch)  # reproducible augmentation after resume
    data.train.set_epoch(epoch)
    bar = None
    if is_main and cfg.progress:
        from tqdm import tqdm  # only when bars are shown

        bar = tqdm(
            total=len(data.train),
            desc=f"epoch {epoch}/{recipe.epochs}",
            leave=False,
            dynamic_ncols=True,
        )
    device = data.train.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    metrics = parts.trainer.run_epoch(data.train, progress=bar)
    last = epoch == recipe.epochs
    validate = last or (recipe.eval_every and epoch % recipe.eval_every == 0)
    val = evaluate(parts.shipped, data.val, parts.loss_fn, amp=recipe.amp) if validate else None
    progress.train_seconds += time.perf_counter() - t0  # evaluate() synchronised via .item()
    if bar is not None:
        bar.close()
    row = {
        "epoch": epoch,
        "train_loss": metrics.loss,
        "train_accuracy": metrics.accuracy,
        "lr": parts.trainer.last_lr,
        "seconds": round(progress.train_seconds, 3),
    }
    if val is not None:
        row.update(val_loss=val.loss, val_accuracy=val.accuracy)
        best = progress.best
        if (val.accuracy, -val.loss) > (best["val_accuracy"], -best["val_loss"]):
            state = {k: v.detach().clone() for k, v in parts.shipped.state_dict().items()}
            progress.best = {
                "val_accuracy": val.accuracy,
                "val_loss": val.loss,
                "epoch": epoch,
                "state": state,
            }
            progress.stale = 0
        else:
            progress.stale += 1
    progress.history.append(row)
    progress.epoch = epoch
    return row


def save_checkpoint(run_dir: Path, parts: Parts, progress: Progress, recipe: Recipe) -> None:
    extra = {"ema": parts.ema.state_dict()} if parts.ema is not None else {}
    checkpoint.save_checkpoint(
        run_dir / "last.ckpt",
        model=parts.model.state_dict(),
        optimizer=parts.trainer.optimizer.state_dict(),
        scheduler=parts.trainer.state_dict(),
        epoch=progress.epoch,
        history=progress.history,
        best=progress.best,
        train_seconds=progress.train_seconds,
        stale=progress.stale,
        recipe=recipe.as_dict(),
        **extra,
    )


def extra_train_record(path: Path | None) -> dict | None:
    """What metadata says of --extra-train: the file, its SHA-256 and its families."""
    if path is None:
        return None
    with np.load(path) as extra:
        families = [str(name) for name in extra["families"]] if "families" in extra else []
        samples = len(extra["labels"])
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"file": Path(path).name, "sha256": digest, "samples": samples, "families": families}


def per_class(result: EvalResult, labels: np.ndarray) -> tuple[list[float], list[list[int]]]:
    targets = torch.from_numpy(labels.astype(np.int64))
    confusion = torch.zeros(10, 10, dtype=torch.int64)
    confusion.index_put_((targets, result.predictions), torch.ones_like(targets), accumulate=True)
    accuracy = (confusion.diag().double() / confusion.sum(dim=1).clamp(min=1)).tolist()
    return [round(a, 6) for a in accuracy], confusion.tolist()


def metadata(
    cfg: RunConfig,
    parts: Parts,
    data: Data,
    progress: Progress,
    val: EvalResult,
    test: EvalResult,
    ddp: Distributed,
) -> dict:
    """What weights/<name>.json records (checkpoint.save_weights adds the file and SHA-256)."""
    dataset = data.dataset
    class_accuracy, confusion = per_class(test, dataset.test[1])
    foreground = "ink" if dataset.spec.name == "mnist" else "the object (light on dark)"
    return {
        "name": cfg.name,
        "architecture": {"name": cfg.recipe.model, "kwargs": cfg.recipe.model_kwargs},
        "parameters": count_parameters(parts.shipped),
        "recipe": cfg.recipe.as_dict(),
        "seed": cfg.seed,
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
        "class_names": list(dataset.classes),
        "best_epoch": progress.best["epoch"],
        "epochs_run": len(progress.history),
        "val": {"accuracy": val.accuracy, "loss": val.loss, "samples": val.samples},
        "test": {
            "accuracy": test.accuracy,
            "loss": test.loss,
            "samples": test.samples,
            "per_class_accuracy": class_accuracy,
            "confusion_matrix": confusion,
        },
        "train_samples": len(data.train.labels),
        "extra_train": extra_train_record(cfg.extra_train),
        "dataset": {
            "name": dataset.spec.name,
            "title": dataset.spec.title,
            "checksums_md5": dataset.checksums,
            "validation": "last 5000 of train",
        },
        "torch_version": torch.__version__,
        "device": device_name(ddp.device),
        "world_size": ddp.world_size,
        "train_loop_seconds": round(progress.train_seconds, 3),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "history": progress.history,
    }
