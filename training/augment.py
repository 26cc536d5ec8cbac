"""Batched augmentation that runs on the training device.

Digits: small rotations, scalings, shears and shifts of the whole batch in one `affine_grid` +
`grid_sample` call: handwriting varies this way, and the service's preprocessing (crop, scale
to 20 px, centre by mass) leaves residual variation of about this size. Never flips: a
mirrored 2 is not a 2.

Clothing (Fashion-MNIST): a left shoe mirrored is a right shoe, so horizontal flips are
label-preserving there, and random erasing (a blanked rectangle) fights the net's reliance on
one local cue (a collar, a sleeve) between the look-alike classes shirt / T-shirt / pullover /
coat. Which recipe uses what is in recipes.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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


@dataclass(frozen=True)
class RandomHFlip:
    """Mirror each image left-right with probability p (clothing only; never digits)."""

    p: float = 0.5

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.p
        return torch.where(flip, x.flip(-1), x)


@dataclass(frozen=True)
class RandomErasing:
    """With probability p, set one random rectangle of each image to 0 (background).

    Its area is `area` of the image, aspect ratio between 1/3 and 3 (as in Zhong et al.'s
    Random Erasing); built from a coordinate mask, so a whole batch is a few element-wise ops.
    """

    p: float = 0.5
    area: tuple[float, float] = (0.02, 0.25)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        device = x.device
        area = torch.empty(n, device=device).uniform_(*self.area) * (h * w)
        log_ratio = torch.empty(n, device=device).uniform_(-math.log(3), math.log(3))
        eh = (area * log_ratio.exp()).sqrt().clamp(1, h)
        ew = (area / log_ratio.exp()).sqrt().clamp(1, w)
        top = torch.rand(n, device=device) * (h - eh)
        left = torch.rand(n, device=device) * (w - ew)
        rows = torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        inside = (
            (rows >= top.view(n, 1, 1))
            & (rows < (top + eh).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1))
            & (cols < (left + ew).view(n, 1, 1))
        )
        erase = (torch.rand(n, device=device) < self.p).view(n, 1, 1) & inside
        return x.masked_fill(erase.unsqueeze(1), 0.0)


Augment = Callable[[torch.Tensor], torch.Tensor]


def compose(*steps: Augment) -> Augment | None:
    """The steps applied in order, or None when there are none."""
    if not steps:
        return None

    def apply(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return apply
