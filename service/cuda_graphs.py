"""Forward passes replayed from CUDA graphs: one graph per batch size the batcher can form.

On a GPU host the API is bound by its CPU side, and an eager pass of the cnn costs the worker
0.40-0.75 ms of CPU at 1-64 images, mostly launching kernels one layer at a time. A captured
graph replays the whole forward pass in one call: 0.14-0.45 ms (bench/RESULTS.md,
bench/results/inference/gpu-pass-2026-12-02/gpu-pass.md). Same kernels, same outputs.

Each size has its own static input and output on the device; all sizes share one memory pool,
which is safe because replays are serialised by a lock and each output is copied to the host
before the next replay can overwrite the scratch memory they share.
"""

from __future__ import annotations

import threading

import torch

from training.models import IMAGE_SIZE


class CudaGraphs:
    """`run(batch)` replays the graph of `len(batch)` images, or returns None for sizes that
    were not captured (the caller then runs the model eagerly)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, max_batch: int, nhwc: bool):
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device)
        with torch.inference_mode():
            for size in range(1, max_batch + 1):
                static_in = torch.zeros((size, 1, IMAGE_SIZE, IMAGE_SIZE), device=device)
                if nhwc:
                    static_in = static_in.contiguous(memory_format=torch.channels_last)
                # Warm-up on a side stream before capture, as PyTorch's CUDA graph notes ask.
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(2):
                        model(static_in)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    static_out = model(static_in)
                self._graphs[size] = (graph, static_in, static_out)
        torch.cuda.synchronize(device)

    @property
    def sizes(self) -> int:
        return len(self._graphs)

    def run(self, batch: torch.Tensor) -> torch.Tensor | None:
        """(N, 1, 28, 28) float on the host -> (N, 10) float64 logits on the host."""
        entry = self._graphs.get(len(batch))
        if entry is None:
            return None
        graph, static_in, static_out = entry
        with self._lock:
            static_in.copy_(batch, non_blocking=True)
            graph.replay()
            return static_out.double().cpu()
