"""The loaded models: verified, on the best device, warmed up, and run under inference_mode."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from service.cuda_graphs import CudaGraphs
from service.pixels import to_model_input
from service.telemetry import observe_inference
from training.checkpoint import WeightsError, load_weights
from training.device import device_name, select_device
from training.quantize import Int8UnavailableError, StaleInt8Error, int8_path, load_int8

log = logging.getLogger("service")
DIGITS = tuple(str(d) for d in range(10))
# What each dataset's models take, as /model and the v2 metadata describe it.
PIXELS = {
    "mnist": "grey levels 0-255, 0 = background, 255 = ink (MNIST polarity)",
    "fashion-mnist": "grey levels 0-255, 0 = background, 255 = the brightest part of the object "
    "(Fashion-MNIST form: the object light on dark, scaled to fit 28x28 and centred)",
}
UPLOADS = {
    "mnist": "digit pipeline: ink found and cropped, strokes evened, scaled into a 20 px box, "
    "centred by mass (422 when no digit is found)",
    "fashion-mnist": "Fashion-MNIST pipeline: trimmed to the object, background to 0 (light "
    "backgrounds negated), longest edge scaled to 28, sharpened, centred; 28x28 images are "
    "taken as they are (422 when the image is one flat colour)",
}


def inference_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The eval-mode model prepared for serving on `device` (measured: bench/infer_cpu.py).

    - Each BatchNorm is folded into the convolution before it: in eval mode it is a fixed
      affine map, so one pass over the activations fewer per layer, same outputs to rounding.
    - On the CPU, conv models run channels-last, the layout oneDNN's kernels want: with the
      folding, 1.4-1.7x the images/s of the plain model on one core. On CUDA, small batches
      are launch-bound and plain NCHW fp32 was fastest (bench/infer_gpu.py).
    Not kept: torch.compile (no gain over this, and a long warm-up). int8 is a separate artifact
    (training/quantize.py), calibrated on training images, that `Predictor.load` serves instead.
    """
    model.eval()
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        from torch.fx.experimental.optimization import fuse

        model = fuse(model)
    if device.type == "cpu" and _has_conv(model):
        model = model.to(memory_format=torch.channels_last)
    return model


def frozen_int8(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    """The int8 graph traced and frozen by TorchScript, or `model` itself if that fails.

    The int8 model is an FX graph of quantised modules, each called from Python with its
    scales and packed weights looked up per call. Frozen, the same kernels run from one C++
    graph with the weights as constants: on one core of the 2-core machine a pass of 1 image
    takes 0.16 ms instead of 0.41, of 16 images 1.0 ms instead of 1.4, with the same outputs
    bit for bit (checked here on every load; bench/RESULTS.md, "Serving"). TorchScript is
    deprecated in favour of torch.compile/torch.export, which do not take these quantised ops;
    should a later torch refuse, the graph is served as before.
    """
    example = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 3 - 0.5
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
            frozen = torch.jit.freeze(torch.jit.trace(model, example))
            same = torch.equal(frozen(example), model(example))
    except Exception as exc:  # TorchScript gone or unable to trace: serve the graph
        log.warning("int8 model not frozen (%s): serving the FX graph", exc)
        return model
    if not same:
        log.warning("frozen int8 model disagrees with the FX graph: serving the graph")
        return model
    return frozen


def _has_conv(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


@dataclass
class Predictor:
    """One model on one device. `predict` takes (N, 28, 28) grey levels, MNIST polarity."""

    name: str
    model: torch.nn.Module
    metadata: dict
    device: torch.device
    weights_path: Path
    version: str = "1"
    quantized: bool = False  # int8 weights from weights/int8/ (CPU only)
    channels_last: bool = False  # conv models on the CPU take NHWC input (float and int8)
    graphs: CudaGraphs | None = None  # on CUDA: passes of up to `graphs.sizes` images replayed
    loaded_at: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def dataset(self) -> str:
        """`mnist` or `fashion-mnist`: what the model was trained on (weights' metadata)."""
        return self.metadata.get("dataset", {}).get("name", "mnist")

    @property
    def class_names(self) -> list[str]:
        """Class names, index = class; digit models made before names were recorded: 0-9."""
        return list(self.metadata.get("class_names") or DIGITS)

    @classmethod
    def load(
        cls,
        weights_path: Path,
        device: torch.device,
        int8: bool = False,
        graph_max_images: int = 0,
        warm_max_images: int = 1,
    ) -> Predictor:
        """Load, verify and warm up; with `int8` on the CPU, serve weights/int8/<name>.pt in
        place of the float model when it exists (made from these very weights). On CUDA, with
        `graph_max_images` > 0, capture one CUDA graph per batch size up to that many images.
        The int8 model is warmed up at every pass size up to `warm_max_images`."""
        model, metadata = load_weights(weights_path, device)
        name, version = parse_stem(weights_path.stem)
        channels_last = device.type == "cpu" and _has_conv(model)
        quantized = int8 and device.type == "cpu" and int8_path(weights_path).is_file()
        if quantized:
            try:
                model = frozen_int8(load_int8(weights_path, model, metadata), channels_last)
            except (StaleInt8Error, Int8UnavailableError) as exc:
                log.warning("%s; serving float32", exc)
                quantized = False
        if not quantized:
            model = inference_model(model, device)
        predictor = cls(
            name, model, metadata, device, weights_path, version, quantized, channels_last
        )
        if graph_max_images and device.type == "cuda":
            try:
                predictor.graphs = CudaGraphs(model, device, graph_max_images, channels_last)
            except RuntimeError as exc:  # an op that cannot be captured: stay eager
                log.warning("%s: no CUDA graphs (%s); running eagerly", name, exc)
        predictor.predict(np.zeros((1, 28, 28), dtype=np.float32))  # warm-up: first call is slow
        if quantized:
            predictor.warm_up(warm_max_images)
        return predictor

    def warm_up(self, max_images: int) -> None:
        """One pass at each size from 2 to `max_images` (not counted in the metrics).

        The int8 kernels set themselves up for each new input shape on first use: ~6 ms once
        per batch size, which would otherwise land on the first requests of each pass size.
        """
        with torch.inference_mode():
            for size in range(2, max_images + 1):
                self.model(self._model_input(to_model_input(np.zeros((size, 28, 28), np.uint8))))

    def _model_input(self, batch: torch.Tensor) -> torch.Tensor:
        """The host tensor of `to_model_input` on the model's device, in its layout."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (N, 10), float64 rows summing to 1."""
        start = time.perf_counter()
        with torch.inference_mode():
            batch = to_model_input(images)  # on the host
            logits = self.graphs.run(batch) if self.graphs else None
            if logits is None:  # no graphs, or a size beyond them
                logits = self.model(self._model_input(batch)).double().cpu()
        # float64 softmax on the CPU: the ten numbers returned sum to 1 to the last digit.
        probs = torch.softmax(logits, dim=1).numpy()
        observe_inference(
            self.name, len(images), time.perf_counter() - start, probs.argmax(axis=1).tolist()
        )
        return probs

    def info(self) -> dict:
        meta = self.metadata
        return {
            "name": self.name,
            "version": self.version,
            "architecture": meta["architecture"]["name"],
            "parameters": meta.get("parameters"),
            "input": {
                "shape": [1, 28, 28],
                "pixels": PIXELS.get(self.dataset, PIXELS["mnist"]),
                "normalization": meta.get("input", {}).get("normalization"),
                "uploads": UPLOADS.get(self.dataset, UPLOADS["mnist"]),
            },
            "dataset": self.dataset,
            "classes": meta.get("classes", list(range(10))),
            "class_names": self.class_names,
            "weights_file": self.weights_path.name,
            "sha256": meta["sha256"],
            "test_accuracy": meta.get("test", {}).get("accuracy"),
            "val_accuracy": meta.get("val", {}).get("accuracy"),
            "trained_at": meta.get("date"),
            "trained_on": meta.get("device"),
            "device": self.device.type,
            "device_name": device_name(self.device),
            "dtype": "int8"
            if self.quantized
            else str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "torch_version": torch.__version__,
        }


def parse_stem(stem: str) -> tuple[str, str]:
    """`cnn` -> ("cnn", "1"); `cnn.v2` -> ("cnn", "2"): numbered versions of one model."""
    name, sep, version = stem.rpartition(".v")
    if sep and name and version.isdigit() and int(version) > 0:
        return name, str(int(version))
    return stem, "1"


def discover(weights_dir: Path, names: list[str]) -> list[Path]:
    """The .pt files to load: every `<name>[.v<N>].pt` with its .json, or those of `names`."""
    if not weights_dir.is_dir():
        raise WeightsError(f"{weights_dir}: weights folder not found")
    found = sorted(p for p in weights_dir.glob("*.pt") if p.with_suffix(".json").is_file())
    if names:
        # A named model without its files still fails start-up, naming the file it lacks.
        chosen = [p for p in found if parse_stem(p.stem)[0] in names]
        have = {parse_stem(p.stem)[0] for p in chosen}
        return chosen + [weights_dir / f"{name}.pt" for name in names if name not in have]
    if not found:
        raise WeightsError(f"{weights_dir}: no weights found (<name>.pt with <name>.json)")
    return found


def load_all(
    weights_dir: Path,
    names: list[str],
    default: str,
    device_arg: str,
    int8: bool = False,
    graph_max_images: int = 0,
    warm_max_images: int = 1,
) -> list[Predictor]:
    """Every model version to serve, loaded, verified and warmed up."""
    device = select_device(device_arg)
    if device.type == "cuda":
        # No cuDNN autotuning: its results are cached per thread, and the passes run on the
        # batcher's thread and the threadpool's, so every new (thread, batch size) pair timed
        # all the algorithms again: 200+ ms stalls, the cnn's p99 of 400 ms on an H200. The
        # heuristic choice serves as fast (bench/results/serving/gpu-tail-2026-12-02/README.md).
        torch.backends.cudnn.benchmark = False
    loaded = []
    for path in discover(weights_dir, names):
        predictor = Predictor.load(path, device, int8, graph_max_images, warm_max_images)
        loaded.append(predictor)
        log.info(
            "loaded %s (%s) on %s%s%s",
            path.name,
            predictor.metadata["sha256"][:12],
            device_name(device),
            ", int8" if predictor.quantized else "",
            f", CUDA graphs for 1-{predictor.graphs.sizes} images" if predictor.graphs else "",
        )
    if default not in {p.name for p in loaded}:
        raise WeightsError(
            f"default model {default!r} is not among the loaded ones: "
            f"{', '.join(sorted({p.name for p in loaded}))}"
        )
    return loaded
