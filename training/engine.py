"""The standard train and test loops, kept plain so a learner can read them top to bottom, and
the eager trainer that drives them (AdamW with a one-cycle schedule). On one CUDA GPU the same
step runs captured as a graph instead: graphed.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn

from training.ema import EMA
from training.recipes import Recipe

if TYPE_CHECKING:  # annotations only: tqdm is imported where bars are shown
    from tqdm import tqdm


@dataclass
class EpochMetrics:
    loss: float
    accuracy: float
    samples: int


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA: the matrix units run bf16 at several times the fp32 rate, and bf16
    keeps fp32's exponent range, so no loss scaling is needed."""
    if enabled and device.type == "cuda":
        # cache_enabled=False: autocast's weight-cast cache is unsafe inside CUDA graph capture.
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def _reduce(*values: torch.Tensor) -> list[float]:
    """Sum running totals across DDP ranks (no-op on one process); one host sync at the end."""
    stacked = torch.stack([v.double() for v in values])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(stacked)
    return stacked.tolist()


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    amp: bool = False,
    progress: tqdm | None = None,
    ema: EMA | None = None,
) -> EpochMetrics:
    model.train()
    device = next(model.parameters()).device
    # Running totals stay on the device: a .item() per step would stall the GPU every step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen = 0
    for step, (images, labels) in enumerate(batches):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            logits = model(images)
            loss = loss_fn(logits, labels)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update()

        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
        if progress is not None:
            progress.update(1)
            if step % 50 == 0:  # syncs with the device, so only now and then
                progress.set_postfix(
                    loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.4f}"
                )
    loss_total, correct_total, seen_total = _reduce(
        loss_sum, correct, torch.tensor(float(seen), device=device)
    )
    return EpochMetrics(loss_total / seen_total, correct_total / seen_total, int(seen_total))


@dataclass
class EvalResult(EpochMetrics):
    predictions: torch.Tensor  # (N,) predicted class, on the CPU
    probabilities: torch.Tensor  # (N, 10) softmax, on the CPU


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
    amp: bool = False,
) -> EvalResult:
    """Average loss and accuracy; predictions kept for the confusion matrix and plots.

    Evaluation runs on every rank over the whole split (it is small), so there is no reduction.
    """
    model.eval()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    probs = []
    labels_all = []
    for images, labels in batches:
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
        probs.append(logits.softmax(dim=1))
        labels_all.append(labels)
    probabilities = torch.cat(probs).cpu()
    targets = torch.cat(labels_all).cpu()
    predictions = probabilities.argmax(dim=1)
    n = len(targets)
    return EvalResult(
        loss=loss_sum.item() / n,
        accuracy=(predictions == targets).float().mean().item(),
        samples=n,
        predictions=predictions,
        probabilities=probabilities,
    )


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on biases and norm parameters: decaying them only hurts.
    return [
        {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]


class EagerTrainer:
    """train_one_epoch with AdamW and torch's OneCycleLR: every device, DDP, torch.compile."""

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
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, recipe.weight_decay),
            lr=recipe.lr,
            # One fused kernel for the whole update on CUDA instead of several per parameter.
            fused=device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=recipe.lr,
            total_steps=recipe.epochs * steps_per_epoch,
            pct_start=recipe.warmup_fraction,
            cycle_momentum=False,
        )

    def load_optimizer(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)

    def prepare(self, batches) -> None:
        pass  # nothing to capture

    def run_epoch(self, batches, progress: tqdm | None = None) -> EpochMetrics:
        return train_one_epoch(
            self.model,
            batches,
            self.optimizer,
            self.loss_fn,
            self.scheduler,
            amp=self.amp,
            progress=progress,
            ema=self.ema,
        )

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)

    @property
    def last_lr(self) -> float:
        return self.scheduler.get_last_lr()[0]
