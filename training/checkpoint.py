"""Shipped weights (state_dict + JSON metadata) and resumable training checkpoints.

`weights/<name>.pt` holds only the model's state_dict, saved from the unwrapped, uncompiled
module so its keys carry no `module.` or `_orig_mod.` prefixes. `weights/<name>.json` beside it
records how it was made, how well it does, and the SHA-256 of the .pt, which every loader checks
before `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.models import build_model


class WeightsError(RuntimeError):
    """Weights that are missing, tampered with, or do not fit their architecture."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "_orig_mod", model)  # torch.compile


def save_weights(model: nn.Module, out_dir: Path, name: str, metadata: dict[str, Any]) -> Path:
    """Write <out_dir>/<name>.pt (state_dict on the CPU) and <name>.json; returns the .pt path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = out_dir / f"{name}.pt"
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    torch.save(state, weights_path)
    meta = dict(metadata, weights_file=weights_path.name, sha256=sha256_file(weights_path))
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return weights_path


def read_metadata(weights_path: Path) -> dict[str, Any]:
    meta_path = weights_path.with_suffix(".json")
    if not meta_path.is_file():
        raise WeightsError(
            f"{meta_path}: metadata file missing (it must sit beside {weights_path.name})"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{meta_path}: unreadable metadata ({exc})") from exc
    for key in ("architecture", "sha256"):
        if key not in meta:
            raise WeightsError(f"{meta_path}: metadata lacks {key!r}")
    return meta


def load_weights(weights_path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Verify the SHA-256, load the state_dict safely and strictly; returns (model, metadata).

    The model is on `device` in eval mode.
    """
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise WeightsError(f"{weights_path}: weights file not found")
    meta = read_metadata(weights_path)
    actual = sha256_file(weights_path)
    if actual != meta["sha256"]:
        raise WeightsError(
            f"{weights_path}: SHA-256 {actual} does not match the metadata's {meta['sha256']} "
            "(file replaced or corrupted)"
        )
    arch = meta["architecture"]
    try:
        model = build_model(arch["name"], **arch.get("kwargs", {}))
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{weights_path}: bad architecture in metadata ({exc})") from exc
    try:
        # weights_only=True: unpickling arbitrary objects from a file can run code.
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise WeightsError(f"{weights_path}: cannot load state_dict ({exc})") from exc
    return model.to(device).eval(), meta


def save_checkpoint(path: Path, **state: Any) -> None:
    """A full training checkpoint (model, optimizer, scheduler, epoch, history) for --resume."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a crash mid-write never leaves a half checkpoint


def load_checkpoint(path: Path) -> dict[str, Any]:
    # Our own checkpoints hold only tensors, numbers, strings and dicts, so weights_only works.
    return torch.load(path, map_location="cpu", weights_only=True)
