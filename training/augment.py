"""Batched augmentation that runs on the training device.

Digits: small rotations, scalings, shears and shifts of the whole batch in one `affine_grid` +
`grid_sample` call: handwriting varies this way, and the service's preprocessing (crop, scale
to 20 px, centre by mass) leaves residual variation of about this size. Never flips: a
mirrored 2 is not a 2.

Clothing (Fashion-MNIST): a left shoe mirrored is a right shoe, so horizontal flips are
label-preserving there, and random erasing (a blanked rectangle) fights the net's reliance on
one local cue (a collar, a sleeve) between the look-alike classes shirt / T-shirt / pullover /
coat. Which recipe uses what is in recipes.py.

Two more for digits, both aimed at what real uploads do that MNIST does not: `RandomStroke`
(pens and brushes thicker or thinner than MNIST's) and the elastic part of `RandomAffine`
(smooth local warps of the strokes, as in Simard et al. 2003).
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
    # Elastic warp: a random displacement field smoothed by a Gaussian of elastic_sigma px,
    # scaled to a standard deviation of elastic_px px per pixel (0 = off).
    elastic_px: float = 0.0
    elastic_sigma: float = 4.0

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
        if self.elastic_px:
            grid = grid + self._displacement(x).permute(0, 2, 3, 1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _displacement(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W) smooth random offsets in affine_grid units (1 px = 2 / size)."""
        n, _, h, w = x.shape
        radius = math.ceil(2 * self.elastic_sigma)
        taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (taps / self.elastic_sigma) ** 2)
        kernel = kernel / kernel.sum()
        noise = torch.randn(n * 2, 1, h, w, device=x.device, dtype=x.dtype)
        noise = F.conv2d(noise, kernel.view(1, 1, 1, -1), padding=(0, radius))
        noise = F.conv2d(noise, kernel.view(1, 1, -1, 1), padding=(radius, 0))
        # White noise through a normalised 2-D Gaussian has std 1 / (2 sqrt(pi) sigma).
        gain = self.elastic_px * 2 * math.sqrt(math.pi) * self.elastic_sigma * 2 / self.size
        return (noise * gain).view(n, 2, h, w)


@dataclass(frozen=True)
class RandomStroke:
    """With probability p, thicken or thin each image's strokes by a random amount.

    Thickening blends towards a 3x3 max filter (grey dilation), thinning towards a 3x3 min
    filter (erosion), by a uniform amount up to `strength` (1 = the whole filter: about one
    pixel more or less on each side of the stroke).
    """

    p: float = 0.5
    strength: float = 1.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        amount = torch.empty(n, 1, 1, 1, device=x.device).uniform_(-self.strength, self.strength)
        amount = amount * (torch.rand(n, 1, 1, 1, device=x.device) < self.p)
        dilated = F.max_pool2d(x, 3, stride=1, padding=1)
        eroded = -F.max_pool2d(-x, 3, stride=1, padding=1)
        target = torch.where(amount > 0, dilated, eroded)
        return x + amount.abs().to(x.dtype) * (target - x)


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
