"""int8 weights for serving on the CPU: `python -m training.quantize --model cnn`.

Post-training static quantisation in FX graph mode for the x86 backend (fbgemm and oneDNN
kernels, which use the VNNI int8 instructions): weights int8 per output channel, activations
uint8 per tensor, BatchNorm folded and ReLU fused into the convolutions. The activation ranges
are calibrated on the first 2,048 training images, never on the validation or test split.

Writes `weights/int8/<name>.pt` (the quantised state_dict) and `<name>.json` beside it: the
SHA-256 of both the int8 file and the float weights it was made from, the calibration, and the
test accuracy of both. The service serves it in place of the float model on the CPU (setting
MNIST_INT8, on by default) only if that base SHA-256 matches the float weights it loaded: after
retraining, it serves float32 (with a warning) until this script is run again.

Why: one CPU core runs the cnn at ~2,000 images/s in float32 and 5,700-8,400 in int8 (passes of
32 and more, bench/infer_cpu.py), for 0.01 points of test accuracy. Single images gain little.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.fx import GraphModule

from training.checkpoint import WeightsError, load_weights, sha256_file
from training.data import default_data_dir, load_split
from training.models import IMAGE_SIZE, normalize

# Post-training static quantisation needs a graph FX can trace: the LSTM of the rnn is not one.
QUANTIZABLE = ("cnn", "mlp", "fastcnn")
ENGINE = "x86"
CALIBRATION_IMAGES = 2048
# The most test accuracy int8 may lose against float32 before the script refuses to write it.
MAX_ACCURACY_DROP = 0.001


class Int8UnavailableError(WeightsError):
    """This torch no longer ships the FX quantisation path."""


def _fx() -> tuple:
    # torch.ao.quantization is deprecated in favour of torchao (not part of torch); the FX path
    # still ships in torch 2.14 and is what reaches its x86 int8 kernels. Should a later torch
    # drop it, the service serves float32 (Int8UnavailableError) instead of failing to start.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            from torch.ao.quantization import get_default_qconfig_mapping
            from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as exc:
        raise Int8UnavailableError(f"int8 needs torch.ao.quantization ({exc})") from exc
    return get_default_qconfig_mapping, prepare_fx, convert_fx


def _prepared(model: nn.Module) -> GraphModule:
    """The float model with observers in place (BatchNorm folded, ReLU fused)."""
    torch.backends.quantized.engine = ENGINE
    qconfig_mapping, prepare_fx, _ = _fx()
    example = (torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        return prepare_fx(model.cpu().eval(), qconfig_mapping(ENGINE), example_inputs=example)


def _converted(prepared: GraphModule) -> GraphModule:
    _, _, convert_fx = _fx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        return convert_fx(prepared)


def quantize(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> GraphModule:
    """int8 version of a float model, activations calibrated on `images` ((N, 28, 28) uint8)."""
    prepared = _prepared(model)
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(images[start : start + batch_size])
            prepared(normalize(batch).unsqueeze(1))
    return _converted(prepared)


class StaleInt8Error(WeightsError):
    """int8 weights made from other float weights (the model was retrained since)."""


def int8_path(weights_path: Path) -> Path:
    """Where the int8 weights made from `weights/<name>.pt` live: `weights/int8/<name>.pt`."""
    return weights_path.parent / "int8" / weights_path.name


def load_int8(weights_path: Path, float_model: nn.Module, float_meta: dict) -> GraphModule:
    """The int8 model for the float weights at `weights_path` (already loaded and verified).

    Rebuilds the quantised graph from the float architecture, then loads the saved int8 state
    strictly: scales, zero points and int8 weights all come from the file.
    """
    path = int8_path(weights_path)
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{meta_path}: unreadable int8 metadata ({exc})") from exc
    if meta.get("base_sha256") != float_meta["sha256"]:
        raise StaleInt8Error(
            f"{path}: made from other float weights than {weights_path.name} "
            "(re-run python -m training.quantize)"
        )
    if sha256_file(path) != meta.get("sha256"):
        raise WeightsError(f"{path}: SHA-256 does not match its metadata")
    model = _converted(_prepared(float_model))
    try:
        with warnings.catch_warnings():
            # torch.load of quantised tensors goes through the deprecated TypedStorage.
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise WeightsError(f"{path}: cannot load the int8 state_dict ({exc})") from exc
    return model.eval()


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), 1000):
            batch = normalize(torch.from_numpy(images[start : start + 1000])).unsqueeze(1)
            predicted = model(batch).argmax(1).numpy()
            correct += int((predicted == labels[start : start + 1000]).sum())
    return correct / len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.quantize",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="cnn", choices=QUANTIZABLE, help="which weights")
    parser.add_argument("--weights-dir", type=Path, default=Path("weights"), help="float weights")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="MNIST folder (default: $MNIST_DATA_DIR)"
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=CALIBRATION_IMAGES,
        help="first N training images used to calibrate the activation ranges",
    )
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    weights_path = args.weights_dir / f"{args.model}.pt"
    float_model, float_meta = load_weights(weights_path)
    train_images, _ = load_split(data_dir, "train")
    test_images, test_labels = load_split(data_dir, "test")
    int8_model = quantize(float_model, train_images[: args.calibration_images])
    float_acc = accuracy(float_model, test_images, test_labels)
    int8_acc = accuracy(int8_model, test_images, test_labels)
    print(f"{args.model}: test accuracy float32 {float_acc:.4f}, int8 {int8_acc:.4f}")
    if float_acc - int8_acc > MAX_ACCURACY_DROP:
        print(f"error: int8 loses more than {MAX_ACCURACY_DROP:.1%}; not written", file=sys.stderr)
        return 1
    path = int8_path(weights_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(int8_model.state_dict(), path)
    meta = {
        "name": args.model,
        "base_weights": weights_path.name,
        "base_sha256": float_meta["sha256"],
        "engine": ENGINE,
        "scheme": "post-training static, FX graph mode; weights int8 per channel, "
        "activations uint8 per tensor",
        "calibration": {"split": "train", "images": args.calibration_images, "first": True},
        "test": {"float32_accuracy": float_acc, "int8_accuracy": int8_acc},
        "torch_version": torch.__version__,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "weights_file": path.name,
        "sha256": sha256_file(path),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {path} and {path.with_suffix('.json').name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
