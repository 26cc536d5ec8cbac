"""int8 weights for the CPU: made from real training images, checked against the float model,
served only when they belong to the float weights beside them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.pixels import to_model_input
from service.predictor import Predictor
from tests.conftest import WEIGHTS_DIR
from training.checkpoint import WeightsError, load_weights, save_weights
from training.models import normalize
from training.quantize import int8_path, load_int8, main, quantize

CPU = torch.device("cpu")


def agreement(a: Predictor, b: Predictor, images: np.ndarray) -> float:
    return float((a.predict(images).argmax(1) == b.predict(images).argmax(1)).mean())


@pytest.fixture
def weights_copy(tmp_path: Path) -> Path:
    """The shipped cnn (float and int8) in a folder of its own."""
    (tmp_path / "int8").mkdir()
    for suffix in (".pt", ".json"):
        shutil.copy(WEIGHTS_DIR / f"cnn{suffix}", tmp_path / f"cnn{suffix}")
        shutil.copy(WEIGHTS_DIR / "int8" / f"cnn{suffix}", tmp_path / "int8" / f"cnn{suffix}")
    return tmp_path


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_shipped_int8_weights_load_and_agree_with_float(name: str, mnist_test) -> None:
    images = mnist_test[0][:2000]
    int8 = Predictor.load(WEIGHTS_DIR / f"{name}.pt", CPU, int8=True)
    float32 = Predictor.load(WEIGHTS_DIR / f"{name}.pt", CPU, int8=False)
    assert int8.quantized and not float32.quantized
    assert int8.info()["dtype"] == "int8" and float32.info()["dtype"] == "float32"
    assert agreement(int8, float32, images) >= 0.995
    meta = json.loads(int8_path(WEIGHTS_DIR / f"{name}.pt").with_suffix(".json").read_text())
    assert meta["test"]["float32_accuracy"] - meta["test"]["int8_accuracy"] <= 0.001


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_served_int8_model_is_frozen_and_gives_the_graphs_outputs(name: str, mnist_test) -> None:
    # The service runs the int8 graph traced and frozen (less Python per pass); the answers
    # must be the FX graph's, bit for bit, at every pass size the batcher forms and beyond.
    weights = WEIGHTS_DIR / f"{name}.pt"
    served = Predictor.load(weights, CPU, int8=True, warm_max_images=4)
    assert isinstance(served.model, torch.jit.ScriptModule)
    float_model, meta = load_weights(weights)
    graph = load_int8(weights, float_model, meta)
    images = mnist_test[0][:300]
    with torch.inference_mode():
        for start, size in ((0, 1), (1, 3), (4, 16), (20, 64), (84, 200)):
            x = served._model_input(to_model_input(images[start : start + size]))
            assert torch.equal(served.model(x), graph(x)), (start, size)


def test_quantize_calibrates_on_real_images(mnist_dir: Path, mnist_test) -> None:
    from training.data import load_split

    train_images, _ = load_split(mnist_dir, "train")
    model, _ = load_weights(WEIGHTS_DIR / "cnn.pt")
    int8 = quantize(model, train_images[:256])
    images, labels = mnist_test[0][:1000], mnist_test[1][:1000]
    with torch.inference_mode():
        x = normalize(torch.from_numpy(images)).unsqueeze(1)
        accuracy = (int8(x).argmax(1).numpy() == labels).mean()
    assert accuracy >= 0.99


@pytest.mark.slow  # 24 s: a real calibration run of the CLI
def test_cli_writes_int8_weights_the_service_loads(weights_copy: Path, mnist_dir: Path) -> None:
    shutil.rmtree(weights_copy / "int8")
    args = ["--model", "cnn", "--weights-dir", str(weights_copy), "--data-dir", str(mnist_dir)]
    assert main([*args, "--calibration-images", "256"]) == 0
    meta = json.loads((weights_copy / "int8" / "cnn.json").read_text())
    assert meta["base_sha256"] == json.loads((weights_copy / "cnn.json").read_text())["sha256"]
    assert meta["calibration"] == {"split": "train", "images": 256, "first": True}
    assert Predictor.load(weights_copy / "cnn.pt", CPU, int8=True).quantized


def test_stale_int8_weights_fall_back_to_float(weights_copy: Path, caplog) -> None:
    model, meta = load_weights(weights_copy / "cnn.pt")
    with torch.no_grad():
        model.classifier[-1].bias.add_(0.01)  # "retrained": other float weights, same name
    save_weights(model, weights_copy, "cnn", {k: v for k, v in meta.items() if k != "sha256"})
    with caplog.at_level(logging.WARNING, logger="service"):
        predictor = Predictor.load(weights_copy / "cnn.pt", CPU, int8=True)
    assert not predictor.quantized
    assert "re-run python -m training.quantize" in caplog.text


def test_tampered_int8_weights_are_refused(weights_copy: Path) -> None:
    path = weights_copy / "int8" / "cnn.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256"):
        Predictor.load(weights_copy / "cnn.pt", CPU, int8=True)
