"""Model-only CPU inference: the candidate speed-ups for the service, side by side in one run.

    python bench/infer_cpu.py --threads 1 --models cnn mlp rnn

Variants: eager (baseline), BatchNorm folded into the convolutions, channels_last, both (what
the service ran on the CPU before int8: `service.predictor.inference_model`), int8 dynamic
quantisation of the Linear/LSTM layers, int8 static quantisation calibrated on training images
(what the service runs on the CPU: weights/int8, made by `python -m training.quantize`), and
torch.compile. Each is checked for accuracy on the whole MNIST
test set first, and timed as the median of interleaved repeats (so background load hits every
variant alike), in images/s.

Produces: bench/RESULTS.md, "Model-only inference on the CPU" (docs/performance.md: int8).
Results: bench/results/inference/.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.predictor import inference_model
from training.checkpoint import load_weights
from training.data import load_split
from training.models import normalize
from training.quantize import int8_path, load_int8


def variants(model: torch.nn.Module, arch: str, weights: Path, meta: dict) -> dict[str, Callable]:
    out: dict[str, Callable] = {"eager": model}
    fused = inference_model(copy.deepcopy(model), torch.device("cuda"))  # folding only
    out["BN folded"] = fused
    if arch in ("cnn", "fastcnn"):
        plain_nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
        out["channels_last"] = lambda x: plain_nhwc(x.contiguous(memory_format=torch.channels_last))
        nhwc = copy.deepcopy(fused).to(memory_format=torch.channels_last)
        out["BN folded + channels_last (service)"] = lambda x: nhwc(
            x.contiguous(memory_format=torch.channels_last)
        )
    layers = {torch.nn.Linear, torch.nn.LSTM}
    out["int8 dynamic (Linear/LSTM)"] = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(fused), layers, dtype=torch.qint8
    )
    if int8_path(weights).is_file():
        static = load_int8(weights, copy.deepcopy(model), meta)
        out["int8 static, calibrated (service: weights/int8)"] = static
        if arch in ("cnn", "fastcnn"):
            out["int8 static + channels_last input"] = lambda x: static(
                x.contiguous(memory_format=torch.channels_last)
            )
    try:
        compiled = torch.compile(copy.deepcopy(fused))
        compiled(torch.zeros(2, 1, 28, 28))
        out["BN folded + torch.compile"] = compiled
    except Exception as exc:  # no C compiler, unsupported op...
        print(f"  torch.compile unavailable: {type(exc).__name__}: {exc}"[:200])
    return out


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/datasets/mnist", help="MNIST folder")
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp", "rnn"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batches", default="1,8,64,256", help="batch sizes")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images, labels = load_split(Path(args.data_dir), "test")
    x_all = normalize(torch.from_numpy(images).unsqueeze(1))
    y_all = torch.from_numpy(labels).long()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    rows = []
    for stem in args.models:
        weights = Path("weights") / f"{stem}.pt"
        model, meta = load_weights(weights)
        for name, fn in variants(model, meta["architecture"]["name"], weights, meta).items():
            preds = torch.cat([fn(x_all[i : i + 1000]).argmax(1) for i in range(0, 10000, 1000)])
            acc = (preds == y_all).float().mean().item()
            rows.append({"model": stem, "variant": name, "acc": acc, "fn": fn, "times": {}})
        for batch in batches:
            x = x_all[:batch]
            for r in rows:
                if r["model"] == stem:
                    r["fn"](x)  # warm-up
            samples: dict[str, list[float]] = {}
            iters = max(3, 512 // batch)
            for _ in range(args.repeats):  # interleaved: load drifts hit every variant alike
                for r in rows:
                    if r["model"] != stem:
                        continue
                    start = time.perf_counter()
                    for _ in range(iters):
                        r["fn"](x)
                    samples.setdefault(r["variant"], []).append(
                        (time.perf_counter() - start) / iters
                    )
            for r in rows:
                if r["model"] == stem:
                    r["times"][batch] = batch / statistics.median(samples[r["variant"]])
    header = " | ".join(f"batch {b}" for b in batches)
    print(f"\n| model | variant | test acc | {header} | vs eager at {batches[-1]} |")
    print("|---|---|---|" + "---|" * (len(batches) + 1))
    for r in rows:
        base = next(b for b in rows if b["model"] == r["model"] and b["variant"] == "eager")
        cells = " | ".join(f"{r['times'][b]:,.0f}" for b in batches)
        ratio = r["times"][batches[-1]] / base["times"][batches[-1]]
        print(f"| {r['model']} | {r['variant']} | {r['acc'] * 100:.2f}% | {cells} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
