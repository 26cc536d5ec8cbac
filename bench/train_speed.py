"""Training-speed benchmark: the fast recipe against plainer variants, side by side, in one run.

    python bench/train_speed.py --data-dir data/mnist --seeds 5

Each variant is trained from scratch once per seed on data already on the device. The timed
region is the training loop only (all epochs), bracketed by CUDA synchronisation, after one
untimed warm-up run of the same variant (kernel loading, cuDNN autotuning, torch.compile).
Test accuracy is measured after the loop, outside the timing, without test-time augmentation.
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
from training.device import device_name, select_device
from training.engine import evaluate, train_one_epoch
from training.models import build_model
from training.recipes import RECIPES, Recipe
from training.run import build_optimizer


@dataclass(frozen=True)
class Variant:
    name: str
    recipe: Recipe
    channels_last: bool
    compile: bool = False


def variants() -> list[Variant]:
    fast = RECIPES["fast"]
    return [
        # The plain recipe: small batches, fp32, NCHW, one epoch.
        Variant(
            "plain: batch 128, fp32, 1 epoch",
            replace(fast, batch_size=128, amp=False, epochs=1, lr=3e-3),
            channels_last=False,
        ),
        Variant("fast: batch 512, bf16, NHWC, 2 ep", fast, channels_last=True),
        Variant("fast + torch.compile", fast, channels_last=True, compile=True),
        Variant("fast, fp32 NCHW (no bf16/NHWC)", replace(fast, amp=False), channels_last=False),
        Variant("fast, 3 epochs", replace(fast, epochs=3), channels_last=True),
    ]


def train_once(variant: Variant, mnist, device: torch.device, seed: int) -> tuple[float, float]:
    recipe = variant.recipe
    torch.manual_seed(seed)
    model = build_model(recipe.model, **recipe.model_kwargs).to(device)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batches = TensorLoader(
        *mnist.train,
        recipe.batch_size,
        device,
        shuffle=True,
        seed=seed,
        drop_last=True,
        channels_last=variant.channels_last,
    )
    test = TensorLoader(
        *mnist.test, 2000, device, shuffle=False, channels_last=variant.channels_last
    )
    optimizer, scheduler = build_optimizer(model, recipe, len(batches), device)
    loss_fn = nn.CrossEntropyLoss()
    train_model = torch.compile(model) if variant.compile else model
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        batches.set_epoch(epoch)
        train_one_epoch(train_model, batches, optimizer, loss_fn, scheduler, amp=recipe.amp)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, test, loss_fn, amp=recipe.amp).accuracy
    return seconds, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST IDX folder")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per variant")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--only", default=None, help="run only variants whose name has this")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()

    device = select_device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    mnist = load_mnist(args.data_dir, allow_download=False)
    print(f"device: {device_name(device)}, torch {torch.__version__}")

    rows = []
    for variant in variants():
        if args.only and args.only not in variant.name:
            continue
        train_once(variant, mnist, device, seed=1000)  # warm-up, untimed
        runs = [train_once(variant, mnist, device, seed) for seed in range(args.seeds)]
        times, accs = [r[0] for r in runs], [r[1] for r in runs]
        rows.append(
            {
                "variant": variant.name,
                "seconds_mean": statistics.mean(times),
                "seconds_min": min(times),
                "accuracy_mean": statistics.mean(accs),
                "accuracy_min": min(accs),
                "seeds": args.seeds,
                "runs": runs,
            }
        )
        print(
            f"  {variant.name}: {statistics.mean(times):.3f} s, {statistics.mean(accs) * 100:.2f}%",
            flush=True,
        )

    base = rows[0]["seconds_mean"]
    print(f"\n| variant | train loop s (mean of {args.seeds}) | vs plain | test acc mean | min |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['seconds_mean']:.3f} | {base / r['seconds_mean']:.2f}x | "
            f"{r['accuracy_mean'] * 100:.2f}% | {r['accuracy_min'] * 100:.2f}% |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": device_name(device), "torch": torch.__version__, "rows": rows}, indent=2
            )
        )


if __name__ == "__main__":
    main()
