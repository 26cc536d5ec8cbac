"""Training-speed benchmark: the fast recipe against plainer variants, side by side, in one run.

    python bench/train_speed.py --data-dir data/mnist --seeds 5

Each variant is trained from scratch once per seed on data already on the device. The timed
region is the training loop only (all epochs), bracketed by CUDA synchronisation, after one
untimed warm-up run of the same variant (kernel loading, cuDNN autotuning). CUDA graph capture
is per-run setup, timed and shown apart. Measured earlier and dropped: torch.compile of the
model (0.98 s against 0.87 s eager for the 2-epoch recipe: the optimizer and the launches
around the model stay eager, so it does not pay here).
Test accuracy is measured after the loop, outside the timing, without test-time augmentation.

Produces: bench/RESULTS.md, "The fast recipe" (README, docs/training.md: 99.24% in 0.29 s);
on the GPU machine `bash bench/gpu.sh train-speed`. Results: bench/results/training/.
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
from training.engine import evaluate
from training.models import build_model
from training.recipes import RECIPES, Recipe
from training.run import build_trainer


@dataclass(frozen=True)
class Variant:
    name: str
    recipe: Recipe
    channels_last: bool
    graphed: bool


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
        Variant("fast, eager, fp32 NCHW", replace(fast, amp=False), False, False),
        Variant("fast: CUDA graph, bf16 NHWC", fast, True, True),
        Variant("fast, CUDA graph, fp32 NCHW", replace(fast, amp=False), False, True),
        Variant("fast, CUDA graph, 2 epochs", replace(fast, epochs=2), True, True),
        Variant(
            "fast, CUDA graph, batch 1024", replace(fast, batch_size=1024, lr=2e-2), True, True
        ),
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_once(variant: Variant, mnist, device: torch.device, seed: int) -> dict:
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
    loss_fn = nn.CrossEntropyLoss()
    graphed = variant.graphed and device.type == "cuda"
    trainer = build_trainer(model, recipe, len(batches), device, loss_fn, graphed)
    sync(device)
    start = time.perf_counter()
    trainer.prepare(batches)  # CUDA graph capture: per-run setup, reported apart from the loop
    sync(device)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        batches.set_epoch(epoch)
        trainer.run_epoch(batches)
    sync(device)
    seconds = time.perf_counter() - start
    accuracy = evaluate(model, test, loss_fn, amp=recipe.amp).accuracy
    return {"seed": seed, "seconds": seconds, "setup_seconds": setup, "accuracy": accuracy}


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
        times, accs = [r["seconds"] for r in runs], [r["accuracy"] for r in runs]
        rows.append(
            {
                "variant": variant.name,
                "seconds_mean": statistics.mean(times),
                "seconds_min": min(times),
                "accuracy_mean": statistics.mean(accs),
                "accuracy_min": min(accs),
                "setup_seconds_mean": statistics.mean(r["setup_seconds"] for r in runs),
                "seeds": args.seeds,
                "runs": runs,
            }
        )
        print(
            f"  {variant.name}: {statistics.mean(times):.3f} s, {statistics.mean(accs) * 100:.2f}%",
            flush=True,
        )

    base = rows[0]["seconds_mean"]
    print(
        f"\n| variant | train loop s (mean of {args.seeds}) | vs plain | test acc mean | min "
        "| capture s |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['seconds_mean']:.3f} | {base / r['seconds_mean']:.2f}x | "
            f"{r['accuracy_mean'] * 100:.2f}% | {r['accuracy_min'] * 100:.2f}% | "
            f"{r['setup_seconds_mean']:.2f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": device_name(device), "torch": torch.__version__, "rows": rows}, indent=2
            )
        )


if __name__ == "__main__":
    main()
