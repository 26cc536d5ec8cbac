"""Model-only inference throughput at batch sizes 1..8192, with precision variants side by side.

    python bench/infer_gpu.py --data-dir data/mnist --models cnn mlp rnn

Inputs are real MNIST test images already normalised on the device, rotated through several
buffers so the cache does not flatter the numbers. Timing: CUDA events around `iters`
forward passes after a warm-up; the median of 5 such repeats. Accuracy of each variant is
checked on the whole test set, since a faster path is only kept where accuracy holds.

Produces: bench/RESULTS.md, "Model-only inference on the H100" (README: 1.2 M images/s); on
the GPU machine `bash bench/gpu.sh infer`. Results: bench/results/inference/.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.checkpoint import load_weights
from training.data import load_split
from training.device import device_name, select_device
from training.models import normalize

BATCH_SIZES = (1, 8, 64, 512, 4096, 8192)


def variants(model: torch.nn.Module, arch: str):
    """name -> callable(x) for each precision / layout variant of one model."""
    conv = arch in ("cnn", "fastcnn")
    out = {"fp32": lambda x: model(x)}

    def bf16(x):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x)

    out["bf16 autocast"] = bf16
    if conv:
        nhwc_model = copy.deepcopy(model).to(memory_format=torch.channels_last)

        def bf16_nhwc(x):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return nhwc_model(x.contiguous(memory_format=torch.channels_last))

        out["bf16 + channels_last"] = bf16_nhwc
    return out


@torch.inference_mode()
def time_variant(fn, images: torch.Tensor, batch: int, iters: int) -> float:
    buffers = [images[i * batch % len(images) :][:batch] for i in range(4)]
    buffers = [b if len(b) == batch else images[:batch] for b in buffers]
    for b in buffers:  # warm-up (cuDNN autotune for this shape)
        fn(b)
    torch.cuda.synchronize()
    samples = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(iters):
            fn(buffers[i % 4])
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1000 / iters)
    return batch / statistics.median(samples)


@torch.inference_mode()
def accuracy(fn, images: torch.Tensor, labels: torch.Tensor) -> float:
    preds = torch.cat([fn(images[i : i + 2000]).argmax(1) for i in range(0, len(images), 2000)])
    return (preds == labels).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="MNIST IDX folder")
    parser.add_argument("--weights", type=Path, default=Path("weights"), help="weights folder")
    parser.add_argument("--models", nargs="+", default=["cnn"], help="weights stems")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    device = select_device("cuda")
    torch.backends.cudnn.benchmark = True
    x, y = load_split(args.data_dir, "test")
    images = normalize(torch.from_numpy(x).to(device).unsqueeze(1))
    images = torch.cat([images] * 2)  # 20k images: enough distinct inputs for batch 8192
    labels = torch.from_numpy(y).to(device).long()
    print(f"device: {device_name(device)}, torch {torch.__version__}")
    results = []
    for stem in args.models:
        model, meta = load_weights(args.weights / f"{stem}.pt", device)
        arch = meta["architecture"]["name"]
        for name, fn in variants(model, arch).items():
            acc = accuracy(fn, images[:10000], labels)
            row = {"model": stem, "variant": name, "test_accuracy": acc, "images_per_s": {}}
            for batch in BATCH_SIZES:
                iters = max(10, min(200, 200_000 // batch))
                row["images_per_s"][batch] = time_variant(fn, images, batch, iters)
            results.append(row)
            print(
                f"  {stem} {name}: acc {acc * 100:.2f}%  "
                + "  ".join(f"b{b}:{v:,.0f}/s" for b, v in row["images_per_s"].items()),
                flush=True,
            )
    header = " | ".join(f"batch {b}" for b in BATCH_SIZES)
    print(f"\n| model | variant | test acc | {header} |")
    print("|---|---|---|" + "---|" * len(BATCH_SIZES))
    for r in results:
        cells = " | ".join(f"{v:,.0f}" for v in r["images_per_s"].values())
        print(f"| {r['model']} | {r['variant']} | {r['test_accuracy'] * 100:.2f}% | {cells} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"device": device_name(device), "torch": torch.__version__, "results": results},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
