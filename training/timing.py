"""Where a training command's wall time goes: named phases, printed as a table at the end.

The phases are timed on the host; on CUDA each phase ends with a synchronisation, so GPU work
queued in one phase is not billed to the next.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch

STARTUP = "start-up and imports"
DEVICE = "device set-up (CUDA context, process group)"
DATA = "data loading and checks"
SETUP = "model set-up and graph capture"
LOOP = "training loop (train + validation)"
EVALUATION = "evaluation (best checkpoint: val, test)"
WRITING = "writing weights, checkpoints and plots"
PHASES = (STARTUP, DEVICE, DATA, SETUP, LOOP, EVALUATION, WRITING)


class Timings:
    """Seconds per phase, in the order of PHASES (a run's checkpoints are written between its
    epochs, its weights after the evaluation: both count as writing)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.device: torch.device | None = None  # synchronised at the end of each phase

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.add(name, time.perf_counter() - start)

    def total(self) -> float:
        return sum(self.seconds.values())

    def as_dict(self) -> dict[str, float]:
        return {name: round(s, 3) for name, s in self.seconds.items()}

    def table(self) -> str:
        total = self.total()
        width = max(len(name) for name in [*self.seconds, "total"])
        lines = [
            f"{name:<{width}}  {s:7.2f} s  {100 * s / total:5.1f}%"
            for name, s in self.seconds.items()
        ]
        lines.append(f"{'total':<{width}}  {total:7.2f} s")
        return "\n".join(lines)
