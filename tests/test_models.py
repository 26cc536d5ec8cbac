from __future__ import annotations

import pytest
import torch

from training.augment import RandomAffine
from training.models import ARCHITECTURES, MNIST_MEAN, MNIST_STD, build_model, normalize


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("batch", [1, 5])
def test_models_map_images_to_ten_logits(name: str, batch: int) -> None:
    model = build_model(name).eval()
    with torch.inference_mode():
        out = model(torch.randn(batch, 1, 28, 28))
    assert out.shape == (batch, 10)
    assert torch.isfinite(out).all()


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(ValueError, match="choose one of: cnn, fastcnn, m5, mlp, rnn"):
        build_model("resnet")


def test_normalize_uint8_and_float_agree() -> None:
    pixels = torch.tensor([[0, 255]], dtype=torch.uint8)
    expected = torch.tensor([[-MNIST_MEAN / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD]])
    torch.testing.assert_close(normalize(pixels), expected)
    torch.testing.assert_close(normalize(pixels.float() / 255), expected)


def test_augmentation_keeps_shape_range_and_most_ink() -> None:
    torch.manual_seed(0)
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0
    y = RandomAffine()(x)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1
    assert (y.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))).min() > 0.7
    assert not torch.equal(y[0], y[1])  # each image gets its own transform
