"""Training-speed benchmark: the fast recipe against variants, side by side, in one run.

    python bench/train_speed.py --data-dir data/mnist --seeds 5
    python bench/train_speed.py --seeds 5 --only - \\
        --try "1 epoch, batch 256" epochs=1 batch_size=256     # any recipe fields, JSON values
    python bench/train_speed.py --profile                       # kernel table of one step

Each variant is trained from scratch once per seed on data already on the device. The timed
region is the training loop only (all epochs), bracketed by CUDA synchronisation, after one
untimed warm-up run of the same variant (kernel loading, cuDNN autotuning). CUDA graph capture
is per-run setup, timed and shown apart. Measured earlier and dropped: torch.compile of the
model (0.98 s against 0.87 s eager for the 2-epoch recipe: the optimizer and the launches
around the model stay eager, so it does not pay here).
Validation and test accuracy are measured after the loop, outside the timing, without
test-time augmentation; choose on validation.

Produces: bench/RESULTS.md, "The fast recipe" (README, docs/training.md); on the GPU machine
`bash bench/gpu.sh train-speed` (the table) and `train-fast` (the variants the recipe was chosen
from). Results: bench/results/training/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.data import TensorLoader, load_mnist
from training.device import configure, device_name, select_device
from training.ema import EMA
from training.engine import EagerTrainer, evaluate
from training.graphed import CUDAGraphTrainer
from training.models import build_model
from training.recipes import RECIPES, Recipe
from training.train import build_augment


@dataclass(frozen=True)
class Variant:
    name: str
    recipe: Recipe
    channels_last: bool = True
    graphed: bool = True


def variants() -> list[Variant]:
    fast = RECIPES["fast"]
    return [
        # The plain recipe: small batches, fp32, NCHW, one epoch, eager.
        Variant(
            "plain: batch 128, fp32, 1 ep, eager",
            replace(fast, batch_size=128, amp=False, epochs=1, lr=3e-3),
            False,
            False,
        ),
        Variant("fast, eager, bf16 NHWC", fast, True, False),
        Variant("fast: CUDA graph, bf16 NHWC", fast),
        Variant("fast, CUDA graph, fp32 NCHW", replace(fast, amp=False), False, True),
    ]


def parse_try(spec: list[str]) -> Variant:
    """`LABEL KEY=VALUE ...`: the fast recipe with these fields replaced (VALUE in JSON)."""
    label, *pairs = spec
    changes = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        changes[key] = json.loads(raw)
    return Variant(label, replace(RECIPES["fast"], **changes))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_once(variant: Variant, mnist, device: torch.device, seed: int) -> dict:
    recipe = variant.recipe
    torch.backends.cudnn.benchmark = recipe.cudnn_benchmark
    torch.manual_seed(seed)
    model = build_model(recipe.model, **recipe.model_kwargs).to(device)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = EMA(model, recipe.ema) if recipe.ema else None
    batches = TensorLoader(
        *mnist.train,
        recipe.batch_size,
        device,
        shuffle=True,
        augment=build_augment(recipe),
        seed=seed,
        drop_last=True,
        channels_last=variant.channels_last,
    )

    def in_order(split) -> TensorLoader:
        nhwc = variant.channels_last
        return TensorLoader(*split, 1000, device, shuffle=False, channels_last=nhwc)

    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    graphed = variant.graphed and device.type == "cuda"
    trainer_class = CUDAGraphTrainer if graphed else EagerTrainer
    trainer = trainer_class(model, recipe, len(batches), device, loss_fn, ema)
    sync(device)
    start = time.perf_counter()
    trainer.prepare(batches)  # CUDA graph capture: per-run setup, reported apart from the loop
    sync(device)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        torch.manual_seed(seed * 1000 + epoch)
        batches.set_epoch(epoch)
        trainer.run_epoch(batches)
    sync(device)
    seconds = time.perf_counter() - start
    shipped = ema.model if ema else model
    val = evaluate(shipped, in_order(mnist.val), loss_fn, amp=recipe.amp).accuracy
    test = evaluate(shipped, in_order(mnist.test), loss_fn, amp=recipe.amp).accuracy
    return {
        "seed": seed,
        "seconds": seconds,
        "setup_seconds": setup,
        "val_accuracy": val,
        "accuracy": test,
    }


def profile_step(recipe: Recipe, mnist, device: torch.device, steps: int = 20) -> str:
    """The GPU kernels of `steps` eager training steps, by total device time."""
    from torch.profiler import ProfilerActivity, profile

    model = build_model(recipe.model, **recipe.model_kwargs).to(device)
    model = model.to(memory_format=torch.channels_last)
    batches = TensorLoader(
        *mnist.train, recipe.batch_size, device, shuffle=True, drop_last=True, channels_last=True
    )
    # Enough scheduled steps for the warm-up epoch and the profiled steps.
    trainer = EagerTrainer(model, recipe, len(batches) + steps, device, nn.CrossEntropyLoss())
    trainer.run_epoch(batches)  # warm-up: autotuning, lazy kernel loading
    sync(device)
    few = [b for _, b in zip(range(steps), batches, strict=False)]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer.run_epoch(few)
        sync(device)
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40)


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST IDX folder")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per variant")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--only", default=None, help="run only built-in variants with this")
    parser.add_argument(
        "--try",
        dest="tries",
        nargs="+",
        action="append",
        default=[],
        metavar="LABEL KEY=VALUE",
        help="also run the fast recipe with these recipe fields changed; repeatable",
    )
    parser.add_argument("--profile", action="store_true", help="print a kernel table first")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()

    device = select_device(args.device)
    configure(device)
    mnist = load_mnist(args.data_dir, allow_download=False)
    print(f"device: {device_name(device)}, torch {torch.__version__}")
    if args.profile:
        print(profile_step(RECIPES["fast"], mnist, device))

    chosen = [v for v in variants() if not args.only or args.only in v.name]
    chosen += [parse_try(spec) for spec in args.tries]
    rows = []
    for variant in chosen:
        train_once(variant, mnist, device, seed=1000)  # warm-up, untimed
        runs = [train_once(variant, mnist, device, seed) for seed in range(args.seeds)]
        times, accs = [r["seconds"] for r in runs], [r["accuracy"] for r in runs]
        vals = [r["val_accuracy"] for r in runs]
        rows.append(
            {
                "variant": variant.name,
                "recipe": variant.recipe.as_dict(),
                "seconds_mean": statistics.mean(times),
                "seconds_min": min(times),
                "val_accuracy_mean": statistics.mean(vals),
                "accuracy_mean": statistics.mean(accs),
                "accuracy_min": min(accs),
                "setup_seconds_mean": statistics.mean(r["setup_seconds"] for r in runs),
                "seeds": args.seeds,
                "runs": runs,
            }
        )
        print(
            f"  {variant.name}: {statistics.mean(times):.3f} s, val "
            f"{statistics.mean(vals) * 100:.2f}%, test {statistics.mean(accs) * 100:.2f}%",
            flush=True,
        )

    base = rows[0]["seconds_mean"]
    print(
        f"\n| variant | train loop s (mean of {args.seeds}) | vs first | val acc mean "
        "| test acc mean | min | capture s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['seconds_mean']:.3f} | {base / r['seconds_mean']:.2f}x | "
            f"{r['val_accuracy_mean'] * 100:.2f}% | {r['accuracy_mean'] * 100:.2f}% | "
            f"{r['accuracy_min'] * 100:.2f}% | {r['setup_seconds_mean']:.2f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": device_name(device), "torch": torch.__version__, "rows": rows}, indent=2
            )
        )


if __name__ == "__main__":
    main()
