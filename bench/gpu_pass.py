"""One forward pass as the service's batcher pays for it on CUDA: uint8 images in, probabilities
out, wall time and the calling thread's CPU time, for the device-side tricks side by side.

    python bench/gpu_pass.py --data-dir data/mnist --models cnn mlp      # on the GPU machine
    python bench/gpu_pass.py --device cpu --batches 1,8 --iters 5        # smoke test

The API on a GPU host is bound by its CPU side (bench/RESULTS.md), so the figure that matters
is the CPU time a pass costs the worker, not only its latency. Variants:

- service: `Predictor.predict` as the service runs it (float32, a pageable host tensor copied
  with non_blocking=True, channels-last for the cnn);
- pinned: the input staged in a page-locked buffer before the copy;
- bf16 autocast;
- CUDA graph: one graph captured per batch size (static input and output on the device), so a
  pass is one copy in, one replay and one copy out instead of a launch per layer;
- CUDA graph + pinned;
- service, CUDA graphs: `Predictor.predict` with the service's own graphs
  (`service/cuda_graphs.py`, captured for 1-64 images as with the default
  MNIST_BATCH_MAX_SIZE; larger passes run eagerly).

Each variant is checked on the whole MNIST test set first (accuracy must hold), then timed:
`iters` passes per batch size after a warm-up, median of 5 repeats, wall (perf_counter) and
CPU (thread_time: a thread spinning in a CUDA sync counts, as it does in the service).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe_cpu
from service.pixels import to_model_input
from service.predictor import Predictor
from training.data import load_split

Pass = Callable[[np.ndarray], np.ndarray]
ACCURACY_BATCH = 64  # the test set goes through in passes of this size


def _probs(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double().cpu(), dim=1).numpy()  # as Predictor.predict


def variants(
    predictor: Predictor, max_batch: int, graphed_service: Predictor | None
) -> dict[str, Pass]:
    model, device, nhwc = predictor.model, predictor.device, predictor.channels_last
    cuda = device.type == "cuda"
    pinned = torch.empty((max_batch, 1, 28, 28), pin_memory=cuda)

    def to_device(images: np.ndarray, staged: bool) -> torch.Tensor:
        batch = to_model_input(images)
        if staged:
            batch = pinned[: len(images)].copy_(batch)
        batch = batch.to(device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last) if nhwc else batch

    def eager(staged: bool, bf16: bool = False) -> Pass:
        def run(images: np.ndarray) -> np.ndarray:
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, bf16):
                return _probs(model(to_device(images, staged)))

        return run

    out = {
        "service": predictor.predict,
        "pinned": eager(staged=True),
        "bf16 autocast": eager(staged=False, bf16=True),
    }
    if cuda:
        out["CUDA graph"] = graphed(model, to_device, staged=False)
        out["CUDA graph + pinned"] = graphed(model, to_device, staged=True)
    if graphed_service is not None:
        out["service, CUDA graphs"] = graphed_service.predict
    return out


def graphed(model: torch.nn.Module, to_device: Callable, staged: bool) -> Pass:
    """One CUDA graph per batch size, captured on first use."""
    graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def run(images: np.ndarray) -> np.ndarray:
        n = len(images)
        with torch.inference_mode():
            if n not in graphs:
                static_in = to_device(images, staged).clone()
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):  # warm-up off the capture, as PyTorch advises
                    for _ in range(3):
                        model(static_in)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    static_out = model(static_in)
                graphs[n] = (graph, static_in, static_out)
            graph, static_in, static_out = graphs[n]
            static_in.copy_(to_device(images, staged))
            graph.replay()
            return _probs(static_out)

    return run


def accuracy(fn: Pass, images: np.ndarray, labels: np.ndarray, batch: int) -> float:
    hits = 0
    for i in range(0, len(images) - batch + 1, batch):  # full batches: one graph size
        hits += int((fn(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
    return hits / (len(images) // batch * batch)


def timed(fn: Pass, images: np.ndarray, iters: int) -> tuple[float, float]:
    """Median over 5 repeats of (wall ms, CPU ms) per pass."""
    for _ in range(3):
        fn(images)
    walls, cpus = [], []
    for _ in range(5):
        wall, cpu = time.perf_counter(), time.thread_time()
        for _ in range(iters):
            fn(images)
        walls.append((time.perf_counter() - wall) / iters * 1e3)
        cpus.append((time.thread_time() - cpu) / iters * 1e3)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", default="../shared/datasets/mnist", help="MNIST folder")
    parser.add_argument("--models", nargs="+", default=["cnn", "mlp"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", default="1,8,32,64,256", help="batch sizes")
    parser.add_argument("--iters", type=int, default=50, help="passes per timed repeat")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    images, labels = load_split(Path(args.data_dir), "test")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else describe_cpu()
    print(f"# Per-pass cost on {name}, torch {torch.__version__}\n")
    print("wall ms / CPU ms of the calling thread per pass (median of 5 x iters passes)\n")
    header = " | ".join(f"batch {b}" for b in batches)
    print(f"| model | variant | test acc | {header} |")
    print("|---|---|---|" + "---|" * len(batches))
    for stem in args.models:
        weights = Path("weights") / f"{stem}.pt"
        predictor = Predictor.load(weights, device)
        service_graphs = (
            Predictor.load(weights, device, cuda_graphs=64) if device.type == "cuda" else None
        )
        for variant, fn in variants(
            predictor, max(*batches, ACCURACY_BATCH), service_graphs
        ).items():
            acc = accuracy(fn, images, labels, ACCURACY_BATCH)
            cells = []
            for batch in batches:
                wall, cpu = timed(fn, images[:batch], args.iters)
                cells.append(f"{wall:.3f} / {cpu:.3f}")
            print(f"| {stem} | {variant} | {acc * 100:.2f}% | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
