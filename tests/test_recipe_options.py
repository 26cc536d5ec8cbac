"""The recipe options that are off by default (stroke width, elastic warps, a moving average of
the weights) and the run's timing table, on real MNIST digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.augment import RandomAffine, RandomStroke
from training.ema import EMA
from training.graphed import one_cycle_schedule
from training.models import build_model
from training.timing import LOOP, PHASES, STARTUP, Timings


@pytest.fixture(scope="module")
def digits(mnist_test: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    images = torch.from_numpy(mnist_test[0][:64].copy()).float().div(255.0)
    return images.unsqueeze(1)  # (64, 1, 28, 28) in [0, 1], 0 = background


def test_stroke_width_stays_between_erosion_and_dilation(digits: torch.Tensor) -> None:
    torch.manual_seed(0)
    out = RandomStroke(p=1.0)(digits)
    dilated = F.max_pool2d(digits, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-digits, 3, stride=1, padding=1)
    assert torch.all(out <= dilated + 1e-6) and torch.all(out >= eroded - 1e-6)
    ink = out.sum(dim=(1, 2, 3)) - digits.sum(dim=(1, 2, 3))
    assert (ink > 0).any() and (ink < 0).any()  # some thicker, some thinner
    assert torch.equal(RandomStroke(p=0.0)(digits), digits)


def test_elastic_warp_moves_pixels_by_about_the_asked_amount(digits: torch.Tensor) -> None:
    plain = RandomAffine(degrees=0, scale=(1, 1), shear_degrees=0, translate_px=0)
    assert torch.allclose(plain(digits), digits, atol=1e-5)  # the identity without the warp
    warp = RandomAffine(degrees=0, scale=(1, 1), shear_degrees=0, translate_px=0, elastic_px=1.5)
    torch.manual_seed(0)
    field = warp._displacement(torch.zeros(256, 1, 28, 28)) * (28 / 2)  # in pixels
    assert field.std().item() == pytest.approx(1.5, rel=0.35)
    torch.manual_seed(0)
    out = warp(digits)
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    assert (out - digits).abs().mean() > 0.01


def test_moving_average_follows_the_weights() -> None:
    torch.manual_seed(0)
    model = build_model("fastcnn", width=8)
    ema = EMA(model, decay=0.75)
    before = [p.detach().clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.features[0][1].running_mean.fill_(3.0)
    ema.update()
    for old, new, avg in zip(before, model.parameters(), ema.model.parameters(), strict=True):
        assert torch.allclose(avg, 0.75 * old + 0.25 * new.detach())
    assert torch.all(ema.model.features[0][1].running_mean == 3.0)  # buffers copied as they are
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_timing_table_lists_every_phase_in_order() -> None:
    timings = Timings()
    timings.add(STARTUP, 1.5)
    with timings.phase(LOOP):
        pass
    lines = timings.table().splitlines()
    assert [line.split("  ")[0].strip() for line in lines[:-1]] == list(PHASES)
    assert lines[-1].startswith("total") and math.isclose(timings.total(), 1.5, abs_tol=0.05)


@pytest.mark.parametrize(
    ("peak", "steps", "warmup"), [(2e-2, 171, 0.2), (3e-3, 2145, 0.25), (1e-2, 7, 0.3)]
)
def test_one_cycle_schedule_is_torchs_one_cycle(peak: float, steps: int, warmup: float) -> None:
    """The closed form the CUDA-graph step reads its learning rates from, against torch's own
    OneCycleLR stepped on a throwaway optimizer."""
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        dummy, max_lr=peak, total_steps=steps, pct_start=warmup, cycle_momentum=False
    )
    expected = []
    for _ in range(steps):
        expected.append(dummy.param_groups[0]["lr"])
        dummy.step()
        scheduler.step()
    assert one_cycle_schedule(peak, steps, warmup) == pytest.approx(expected, rel=1e-12, abs=0)
