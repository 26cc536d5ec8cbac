"""Batched random affine augmentation that runs on the training device.

Small rotations, scalings, shears and shifts of the whole batch in one `affine_grid` +
`grid_sample` call: handwriting varies this way, and the service's preprocessing (crop, scale
to 20 px, centre by mass) leaves residual variation of about this size. Never flips: a
mirrored 2 is not a 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RandomAffine:
    degrees: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shear_degrees: float = 5.0
    translate_px: float = 2.0
    size: int = 28

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 1, H, W) float in [0, 1] with 0 = background (so zero padding is background)."""
        n, device = x.shape[0], x.device

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.empty(n, device=device).uniform_(lo, hi)

        angle = uniform(-self.degrees, self.degrees) * (math.pi / 180)
        shear = uniform(-self.shear_degrees, self.shear_degrees) * (math.pi / 180)
        scale = uniform(*self.scale)
        # affine_grid maps output to input coordinates in [-1, 1]: 1 px = 2 / size.
        shift = self.translate_px * 2 / self.size
        tx, ty = uniform(-shift, shift), uniform(-shift, shift)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([cos / scale, (-sin + torch.tan(shear) * cos) / scale, tx], dim=1),
                torch.stack([sin / scale, cos / scale, ty], dim=1),
            ],
            dim=1,
        )  # (N, 2, 3)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
