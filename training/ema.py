"""An exponential moving average of the weights, the model that is validated and shipped.

After every optimizer step: ema <- ema + (1 - decay) * (weights - ema), one fused multi-tensor
kernel, so it can sit inside the captured CUDA-graph step. BatchNorm's running statistics are
already averages; they are copied over as they are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._source = model

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list, list]:
        params = [p.detach() for p in self._source.parameters()]
        averages = list(self.model.parameters())
        buffers = list(self._source.buffers())
        copies = list(self.model.buffers())
        return params, averages, buffers, copies

    @torch.no_grad()
    def update(self) -> None:
        params, averages, buffers, copies = self._pairs()
        torch._foreach_lerp_(averages, params, 1.0 - self.decay)
        torch._foreach_copy_(copies, buffers)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
