"""The model architectures: the one definition that training and the service both import.

Every model takes a float tensor of shape (N, 1, 28, 28) normalised with `normalize()` and
returns 10 logits. Pixels come in MNIST polarity: 0 = background, 255 = ink.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

# Mean and standard deviation of the MNIST training pixels scaled to [0, 1]. Defined here
# only; the data pipeline, the service and the benchmarks import them.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IMAGE_SIZE = 28
NUM_CLASSES = 10


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """Map grey levels to model input: uint8 0-255 or float 0-1 in, normalised float out."""
    if pixels.dtype == torch.uint8:
        pixels = pixels.float().div_(255.0)
    return (pixels - MNIST_MEAN) / MNIST_STD


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    # bias=False: the BatchNorm that follows has its own shift.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class CNN(nn.Module):
    """The default and most accurate model: three conv stages with BatchNorm, two linear layers.

    28x28 -> 14x14 -> 7x7 -> 3x3 feature maps. Parameter count: the weights' metadata.
    """

    def __init__(self, width: int = 32, dropout: float = 0.3) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(1, w),
            _conv_bn(w, w),
            nn.MaxPool2d(2),  # 14x14
            _conv_bn(w, 2 * w),
            _conv_bn(2 * w, 2 * w),
            nn.MaxPool2d(2),  # 7x7
            _conv_bn(2 * w, 4 * w),
            nn.MaxPool2d(2),  # 3x3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * w * 3 * 3, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FastCNN(nn.Module):
    """A lean net for the speed recipe: three conv stages and a linear head.

    Small enough that a whole epoch is a few dozen kernel launches per step on a GPU.
    """

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(1, w),
            nn.MaxPool2d(2),  # 14x14
            _conv_bn(w, 2 * w),
            nn.MaxPool2d(2),  # 7x7
            _conv_bn(2 * w, 4 * w),
            nn.MaxPool2d(2),  # 3x3
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 3 * 3, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv5_bn(c_in: int, c_out: int) -> nn.Sequential:
    # No padding: each 5x5 convolution trims 2 px from every side of the map.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=5, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class M5(nn.Module):
    """A stack of 5x5 convolutions without padding or pooling, after the "M5" model of An et
    al. 2020 (An Ensemble of Simple Convolutional Neural Network Models for MNIST Digit
    Recognition), who report single models of about 99.8%: the maps shrink 28 -> 24 -> 20 ->
    16 -> 12 -> 8 while the channels grow by `width` a layer (32 -> ... -> 160), then one linear
    layer whose ten outputs are batch-normalised, as in the paper.

    About six times the cnn's multiply-adds per image (137 M against 22 M).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        channels = [1] + [width * k for k in range(1, 6)]
        self.features = nn.Sequential(
            *(_conv5_bn(c_in, c_out) for c_in, c_out in itertools.pairwise(channels))
        )
        side = IMAGE_SIZE - 5 * 4  # 8
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels[-1] * side * side, NUM_CLASSES, bias=False),
            nn.BatchNorm1d(NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """784-512-512-10 with ReLU, as in the PyTorch quickstart tutorial."""

    def __init__(self, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(IMAGE_SIZE * IMAGE_SIZE, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RNN(nn.Module):
    """An LSTM that reads the image as a sequence of 28 rows of 28 pixels, top to bottom."""

    def __init__(self, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(IMAGE_SIZE, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(x.shape[0], IMAGE_SIZE, IMAGE_SIZE)  # (N, 28 steps, 28 features)
        out, _ = self.lstm(rows)
        return self.head(out[:, -1])  # the state after the last row


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "cnn": CNN,
    "mlp": MLP,
    "rnn": RNN,
    "fastcnn": FastCNN,
    "m5": M5,
}


def build_model(name: str, **kwargs: int | float) -> nn.Module:
    """Build a model by name; keyword arguments go to its constructor (e.g. width)."""
    try:
        cls = ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown model {name!r}; choose one of: {known}") from None
    return cls(**kwargs)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
