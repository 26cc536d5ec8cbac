"""A speed trick for CUDA: the whole training step captured once as a CUDA graph and replayed.

Why: these models are small, so an eager step on a GPU is bound by the CPU launching ~150 tiny
kernels (batch gather, augmentation, forward, backward, optimizer, metrics), not by the GPU
doing the work (measured eager against graphed: bench/RESULTS.md). A replayed graph launches
them all at once, and the host only calls replay() once per step.

The step is the one in `engine.train_one_epoch`, plus the batch itself, with the differences
that graphs require:
- the epoch's shuffled order is copied into a fixed device tensor, and the graph picks its
  batch with a step counter that lives on the device (`TensorLoader.batch` does the gather,
  the augmentation and the normalisation inside the graph);
- the learning rate is a device tensor read from the precomputed one-cycle schedule;
- the running loss and accuracy are kept inside the graph;
- random numbers (augmentation, dropout) come from the graph-safe CUDA generator: seeding it
  at the start of an epoch makes the replays reproducible, so a resumed run repeats them.

Used only on CUDA and on one process; everywhere else engine.EagerTrainer runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from training.data import TensorLoader
from training.ema import EMA
from training.engine import EpochMetrics, autocast, parameter_groups
from training.recipes import Recipe

if TYPE_CHECKING:  # annotations only: tqdm is imported where bars are shown
    from tqdm import tqdm


def one_cycle_schedule(peak: float, total_steps: int, warmup_fraction: float) -> list[float]:
    """The learning rates torch's OneCycleLR (cosine, cycle_momentum=False, its default
    div_factor 25 and final_div_factor 1e4) sets at each step, in closed form.

    Stepping a throwaway optimizer and scheduler gave the same numbers but took 1.2 s of
    set-up for the cnn's 21,450 steps; tests/test_recipe_options.py checks they still agree.
    """
    start = peak / 25.0
    end = start / 1e4
    warmup_end = float(warmup_fraction * total_steps) - 1  # OneCycleLR's first phase end

    def cos(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)

    last = total_steps - 1
    return [
        cos(start, peak, step / warmup_end)
        if step <= warmup_end
        else cos(peak, end, (step - warmup_end) / (last - warmup_end))
        for step in range(total_steps)
    ]


def capturable_adamw(param_groups: list[dict], device: torch.device) -> torch.optim.AdamW:
    """AdamW whose step can be captured: its state and learning rate live on the device.

    fused: one multi-tensor kernel per parameter group for the whole update, where foreach
    takes a dozen (the eager step's profile: bench/RESULTS.md).
    """
    return torch.optim.AdamW(
        param_groups, lr=torch.tensor(0.0, device=device), capturable=True, fused=True
    )


class CUDAGraphTrainer:
    """Capture once in `prepare`, then `run_epoch` replays the graph once per batch."""

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        steps_per_epoch: int,
        device: torch.device,
        loss_fn: nn.Module,
        ema: EMA | None = None,
    ) -> None:
        self.model, self.loss_fn, self.amp, self.ema = model, loss_fn, recipe.amp, ema
        self.optimizer = capturable_adamw(parameter_groups(model, recipe.weight_decay), device)
        total = recipe.epochs * steps_per_epoch
        self.rates = torch.tensor(
            one_cycle_schedule(recipe.lr, total, recipe.warmup_fraction), device=device
        )
        self.step = torch.zeros(1, dtype=torch.long, device=device)  # steps taken in the run
        self.batch_index = torch.zeros(1, dtype=torch.long, device=device)  # ... in the epoch
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.order: torch.Tensor | None = None  # (steps, batch) sample indices of the epoch
        self.loader: TensorLoader | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self._pending: dict | None = None

    def _step(self) -> None:
        x, y = self.loader.batch(self.order.index_select(0, self.batch_index).squeeze(0))
        lr = self.rates.index_select(0, self.step).squeeze(0)
        for group in self.optimizer.param_groups:
            group["lr"].copy_(lr)
        with autocast(x.device, self.amp):
            logits = self.model(x)
            loss = self.loss_fn(logits, y)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        self.batch_index += 1
        self.loss_sum += loss.detach() * len(y)
        self.correct += (logits.argmax(dim=1) == y).sum()

    def _load_order(self, loader: TensorLoader) -> None:
        steps, size = len(loader), loader.batch_size
        self.order.copy_(loader.epoch_order()[: steps * size].view(steps, size))
        self.batch_index.zero_()

    def load_optimizer(self, state: dict) -> None:
        """A resumed optimizer state. torch keeps a param group's values as they were saved,
        and a checkpoint is loaded onto the CPU, so each group's learning rate would come
        back as a CPU tensor, which the graph cannot write: capture failed after every
        resume, and the run went on eagerly at a sixth of the speed (bench/RESULTS.md)."""
        self.optimizer.load_state_dict(state)
        device = self.rates.device
        for group in self.optimizer.param_groups:
            group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32).to(device)

    def prepare(self, loader: TensorLoader) -> None:
        """Capture after any resumed optimizer state is loaded, so the graph uses its tensors."""
        if not loader.drop_last:
            raise ValueError("a captured step needs batches of one size: drop_last=True")
        self.loader = loader
        self.order = torch.zeros(
            len(loader), loader.batch_size, dtype=torch.long, device=self.rates.device
        )
        self._load_order(loader)
        try:
            self._capture()
        except RuntimeError as exc:  # an op that cannot be captured: run the same step eagerly
            print(f"warning: CUDA graph capture failed, training eagerly ({exc})")
            self.graph = None
        if self._pending:
            self.step.fill_(self._pending["step"])

    def _capture(self) -> None:
        self.model.train()
        model_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        optim_state = {
            id(t): t.clone()
            for state in self.optimizer.state.values()
            for t in state.values()
            if torch.is_tensor(t)
        }
        if self.ema is not None:
            model_state.update({f"ema.{k}": v.clone() for k, v in self.ema.state_dict().items()})
        # Warm up on a side stream before capture, as CUDA graphs require (this also lets
        # cuDNN pick its algorithms and the optimizer create its state).
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.optimizer.zero_grad(set_to_none=True)
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        # Grads set to None now are allocated from the graph's pool inside the capture, so each
        # replay writes them afresh: no zero_grad needed in the graph.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step()
            self.graph = graph
        finally:
            self._restore(model_state, optim_state)

    def _restore(self, model_state: dict, optim_state: dict) -> None:
        # The warm-up trained on a few batches: undo it in place, so the tensors the graph
        # reads and writes stay where they are.
        with torch.no_grad():
            for key, value in self.model.state_dict().items():
                value.copy_(model_state[key])
            if self.ema is not None:
                for key, value in self.ema.state_dict().items():
                    value.copy_(model_state[f"ema.{key}"])
            for state in self.optimizer.state.values():
                for t in state.values():
                    if not torch.is_tensor(t):
                        continue
                    if id(t) in optim_state:
                        t.copy_(optim_state[id(t)])
                    else:
                        t.zero_()
        self.step.zero_()
        self.batch_index.zero_()

    def run_epoch(self, loader: TensorLoader, progress: tqdm | None = None) -> EpochMetrics:
        self.model.train()
        self._load_order(loader)
        self.loss_sum.zero_()
        self.correct.zero_()
        for _ in range(len(loader)):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.optimizer.zero_grad(set_to_none=True)
                self._step()
            if progress is not None:
                progress.update(1)
        seen = len(loader) * loader.batch_size
        return EpochMetrics(self.loss_sum.item() / seen, self.correct.item() / seen, seen)

    def state_dict(self) -> dict:
        return {"step": int(self.step.item())}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    @property
    def last_lr(self) -> float:
        return float(self.rates[min(int(self.step.item()), len(self.rates)) - 1])
