"""Real (short) training runs on the real MNIST files, on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training import run
from training.checkpoint import WeightsError, load_weights, sha256_file

pytestmark = pytest.mark.slow

QUICK = [
    "--device",
    "cpu",
    "--no-progress",
    "--no-download",
    "--train-subset",
    "3000",
    "--batch-size",
    "100",
]


def train(tmp_path: Path, mnist_dir: Path, *extra: str) -> dict:
    code = run.main(
        [
            *QUICK,
            "--data-dir",
            str(mnist_dir),
            "--out",
            str(tmp_path / "weights"),
            "--run-dir",
            str(tmp_path / "run"),
            *extra,
        ]
    )
    assert code == 0
    name = extra[extra.index("--model") + 1] if "--model" in extra else "cnn"
    return json.loads((tmp_path / "weights" / f"{name}.json").read_text())


def test_short_run_beats_chance_and_writes_verified_weights(tmp_path: Path, mnist_dir: Path):
    meta = train(tmp_path, mnist_dir, "--model", "mlp", "--epochs", "2")
    assert meta["test"]["accuracy"] > 0.85  # chance is 0.10
    assert meta["test"]["samples"] == 10000 and meta["val"]["samples"] == 5000
    assert len(meta["test"]["confusion_matrix"]) == 10
    assert sum(map(sum, meta["test"]["confusion_matrix"])) == 10000
    weights = tmp_path / "weights" / "mlp.pt"
    assert meta["sha256"] == sha256_file(weights)
    for plot in ("curves.png", "confusion.png", "samples.png", "worst.png"):
        assert (tmp_path / "run" / plot).stat().st_size > 1000

    # Round trip: plain state_dict, loadable with weights_only and strict keys.
    state = torch.load(weights, weights_only=True)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state)
    model, loaded_meta = load_weights(weights)
    assert loaded_meta["test"]["accuracy"] == meta["test"]["accuracy"]
    assert not model.training


def test_tampered_weights_are_refused(tmp_path: Path, mnist_dir: Path):
    train(tmp_path, mnist_dir, "--model", "mlp", "--epochs", "1", "--no-plots")
    weights = tmp_path / "weights" / "mlp.pt"
    state = torch.load(weights, weights_only=True)
    state["net.1.weight"] += 0.01
    torch.save(state, weights)
    with pytest.raises(WeightsError, match="does not match the metadata"):
        load_weights(weights)


def test_resume_mid_run_matches_an_uninterrupted_run(tmp_path: Path, mnist_dir: Path):
    full = train(tmp_path / "full", mnist_dir, "--model", "mlp", "--epochs", "3", "--no-plots")
    # The same run, killed right after its epoch-1 checkpoint is written, then resumed.
    part = tmp_path / "part"
    env = dict(os.environ, PYTHONPATH=str(Path(run.__file__).resolve().parent.parent))
    script = (
        "import sys\n"
        "from training import run, checkpoint\n"
        "orig = checkpoint.save_checkpoint\n"
        "def save_then_die(path, **state):\n"
        "    orig(path, **state)\n"
        "    if state['epoch'] == 1: sys.exit(17)\n"
        "checkpoint.save_checkpoint = save_then_die\n"
        "sys.exit(run.main(sys.argv[1:]))\n"
    )
    args = [
        *QUICK,
        "--data-dir",
        str(mnist_dir),
        "--out",
        str(part / "weights"),
        "--run-dir",
        str(part / "run"),
        "--model",
        "mlp",
        "--epochs",
        "3",
        "--no-plots",
    ]
    killed = subprocess.run([sys.executable, "-c", script, *args], env=env)
    assert killed.returncode == 17
    assert not (part / "weights" / "mlp.json").exists()
    code = run.main([*args, "--resume", str(part / "run" / "last.ckpt")])
    assert code == 0
    resumed = json.loads((part / "weights" / "mlp.json").read_text())
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    # Same seeds, same data order, same augmentation: the same numbers as the full run.
    for a, b in zip(resumed["history"], full["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert resumed["test"]["accuracy"] == pytest.approx(full["test"]["accuracy"], abs=2e-4)


def test_two_process_ddp_over_gloo(tmp_path: Path, mnist_dir: Path):
    out = tmp_path / "weights"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29517",
        "-m",
        "training.run",
        *QUICK,
        "--data-dir",
        str(mnist_dir),
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--no-plots",
        "--out",
        str(out),
        "--run-dir",
        str(tmp_path / "run"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=Path(run.__file__).resolve().parent.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "mlp.json").read_text())
    assert meta["world_size"] == 2
    assert meta["test"]["accuracy"] > 0.8
    assert sorted(p.name for p in out.iterdir()) == ["mlp.json", "mlp.pt"]  # rank 0 only
    assert proc.stdout.count("test accuracy") == 1


def test_a_failing_rank_stops_the_whole_run(tmp_path: Path, mnist_dir: Path):
    """Rank 1 dies in its first epoch: torchrun must end every rank with an error, not hang."""
    wrapper = tmp_path / "failing_rank.py"
    wrapper.write_text(
        "import os, sys\n"
        "from training import engine, run\n"
        "if os.environ['RANK'] == '1':\n"
        "    def broken(*args, **kwargs):\n"
        "        raise RuntimeError('rank 1 lost its data')\n"
        "    engine.EagerTrainer.run_epoch = broken\n"
        "sys.exit(run.main(sys.argv[1:]))\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_port=29518",
        str(wrapper),
        *QUICK,
        "--data-dir",
        str(mnist_dir),
        "--model",
        "mlp",
        "--epochs",
        "2",
        "--no-plots",
        "--dist-timeout",
        "30",
        "--out",
        str(tmp_path / "weights"),
        "--run-dir",
        str(tmp_path / "run"),
    ]
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(run.__file__).resolve().parent.parent)
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=200, env=env)
    assert proc.returncode != 0
    assert "rank 1 lost its data" in proc.stderr + proc.stdout
    assert not (tmp_path / "weights" / "mlp.pt").exists()


def test_upload_views_are_built_through_the_pipeline_and_train(tmp_path: Path, mnist_dir: Path):
    from training import upload_views

    views = tmp_path / "views.npz"
    args = ["--out", str(views), "--per-family", "40", "--data-dir", str(mnist_dir)]
    assert upload_views.main([*args, "--families", "thick", "tight"]) == 0
    with np.load(views) as built:
        assert built["images"].shape == (80, 28, 28) and built["images"].dtype == np.uint8
        assert list(built["families"]) == ["thick", "tight"]
        # MNIST form: light ink on a black field, the digit's box 20 px on its longer side.
        assert (built["images"][:, 0, :] == 0).all() and built["images"].max() == 255
    meta = train(
        tmp_path,
        mnist_dir,
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--no-plots",
        "--extra-train",
        str(views),
    )
    assert meta["train_samples"] == 3000 + 80
    assert meta["extra_train"]["samples"] == 80
    assert meta["extra_train"]["families"] == ["thick", "tight"]
    assert meta["extra_train"]["sha256"] == sha256_file(views)
