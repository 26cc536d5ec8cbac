"""PNG plots of a training run: curves, confusion matrix, sample images, worst mistakes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
import torch

from training.data import MNIST
from training.engine import EvalResult


def curves(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], label="train")
    val = [h for h in history if "val_loss" in h]
    if val:
        ax_loss.plot([h["epoch"] for h in val], [h["val_loss"] for h in val], label="validation")
        ax_acc.plot([h["epoch"] for h in val], [h["val_accuracy"] for h in val], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def confusion(matrix: list[list[int]], path: Path, labels: list[str] | None = None) -> None:
    labels = labels or [str(i) for i in range(10)]
    m = np.array(matrix)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    off_diagonal = m.copy()
    np.fill_diagonal(off_diagonal, 0)
    ax.imshow(off_diagonal, cmap="Reds")
    ax.tick_params(axis="x", labelrotation=90 if max(map(len, labels)) > 2 else 0)
    for i in range(10):
        for j in range(10):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7)
    ax.set(
        xticks=range(10),
        yticks=range(10),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted",
        ylabel="true",
        title="test confusion matrix (colour: errors)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def image_grid(images: np.ndarray, titles: list[str], path: Path, title: str) -> None:
    """Images in rows of 8, each with its caption above: one mosaic in one axes, which draws
    several times faster than one axes per image."""
    cols, pad, cell = 8, 4, 28
    rows = max(1, -(-len(images) // cols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    top = 9 * lines  # caption space in mosaic pixels
    step_y, step_x = cell + pad + top, cell + pad
    mosaic = np.full((rows * step_y, cols * step_x), 255, dtype=np.uint8)
    fig, ax = plt.subplots(figsize=(cols * 1.2, rows * (1.2 + 0.2 * lines) + 0.4))
    for k, (image, label) in enumerate(zip(images, titles, strict=False)):
        y, x = (k // cols) * step_y + top, (k % cols) * step_x
        mosaic[y : y + cell, x : x + cell] = image
        ax.text(x + cell / 2, y - 1, label, ha="center", va="bottom", fontsize=8)
    ax.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_samples(run_dir: Path, mnist: MNIST) -> None:
    """The plot that needs only the data: drawn while the model is set up (train.py)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    names = list(mnist.classes)
    train_x, train_y = mnist.train
    image_grid(
        train_x[:32],
        [names[int(y)] for y in train_y[:32]],
        run_dir / "samples.png",
        "training samples",
    )


def write_results(
    run_dir: Path, history: list[dict], matrix: list[list[int]], mnist: MNIST, test: EvalResult
) -> None:
    """The plots of what the run did: curves, confusion matrix, worst test mistakes."""
    run_dir.mkdir(parents=True, exist_ok=True)
    curves(history, run_dir / "curves.png")
    names = list(mnist.classes)
    confusion(matrix, run_dir / "confusion.png", names)
    test_x, test_y = mnist.test
    targets = torch.from_numpy(test_y.astype(np.int64))
    true_prob = test.probabilities.gather(1, targets[:, None]).squeeze(1)
    wrong = (test.predictions != targets).nonzero().squeeze(1)
    worst = wrong[true_prob[wrong].argsort()][:32].numpy()
    sep = "\n" if max(map(len, names)) > 2 else " "  # class names need two lines
    titles = [
        f"{names[int(test_y[i])]}->{names[int(test.predictions[i])]}{sep}"
        f"{float(test.probabilities[i].max()):.2f}"
        for i in worst
    ]
    image_grid(
        test_x[worst],
        titles,
        run_dir / "worst.png",
        "worst test mistakes (true->predicted, confidence)",
    )


def write_all(
    run_dir: Path, history: list[dict], matrix: list[list[int]], mnist: MNIST, test: EvalResult
) -> None:
    write_samples(run_dir, mnist)
    write_results(run_dir, history, matrix, mnist, test)
