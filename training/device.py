"""Pick the compute device once: cuda, then mps, then cpu (or the one asked for)."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


class DeviceError(ValueError):
    """A device that was asked for but is not there (or does not exist)."""


def select_device(name: str = "auto") -> torch.device:
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise DeviceError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError("device cuda was asked for, but no CUDA GPU is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("device mps was asked for, but MPS is not available")
    return torch.device(name)


def configure(device: torch.device, cudnn_benchmark: bool = True) -> None:
    """Fast defaults for fixed-shape training, and the CUDA context created now (it takes a
    moment, which the run's timing shows as device set-up rather than data loading)."""
    if device.type != "cuda":
        return
    # TF32 matmuls: free speed for fp32 work. The cuDNN autotuner: see Recipe.cudnn_benchmark.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.empty(0, device=device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    import platform

    return platform.processor() or platform.machine() or "cpu"
