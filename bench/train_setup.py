"""Where a training command's start-up goes, finely: one fresh process per configuration.

    python bench/train_setup.py --runs "fast" "fast --set cudnn_benchmark=true" "cnn --epochs 2"

Each configuration runs `python -m training.run ARGS` in a child process with timers around the
pieces `training.run`'s own table lumps together: importing torch and the package, the CUDA
context, the first cuBLAS call (a bf16 linear) and the first cuDNN call (a small bf16
convolution, autotuner off: the library's loading and handle), the data, the model and trainer
(with the learning-rate schedule apart), each warm-up step of the CUDA-graph capture (the first
one pays the cuDNN autotuner, when on, and the first use of every kernel), the capture itself,
the validation batch, the loop, the evaluation, the weights and checkpoint, the matplotlib
import and each plot, and the process's exit (the child's wall seen from the parent, less what
the child timed and less a bare interpreter's start). The probes move the first cuBLAS and
cuDNN costs out of the first warm-up step, where the plain command pays them.

Produces: bench/RESULTS.md, "Training on the H200" (`bash bench/gpu.sh train-setup`).
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MARK = "SETUP_TIMES "


def child(argv: list[str]) -> int:
    """Run training.run in this process with the pieces timed; print them as one JSON line."""
    times: dict[str, float] = {}
    t = time.perf_counter()
    import torch

    times["import torch"] = time.perf_counter() - t
    t = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    from training import checkpoint, graphed, run, train

    times["import training (less torch)"] = time.perf_counter() - t

    def sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                times[name] = times.get(name, 0.0) + time.perf_counter() - start

        return wrapper

    configure = train.configure

    def configure_and_probe(device: torch.device, benchmark: bool = True) -> None:
        start = time.perf_counter()
        configure(device, benchmark)
        sync()
        times["CUDA context"] = time.perf_counter() - start
        if device.type != "cuda":
            return
        start = time.perf_counter()
        x = torch.randn(64, 128, device=device, dtype=torch.bfloat16)
        w = torch.randn(10, 128, device=device, dtype=torch.bfloat16)
        torch.nn.functional.linear(x, w, torch.zeros(10, device=device, dtype=torch.bfloat16))
        sync()
        times["first cuBLAS call (bf16 linear)"] = time.perf_counter() - start
        start = time.perf_counter()
        torch.backends.cudnn.benchmark = False
        img = torch.randn(2, 1, 28, 28, device=device, dtype=torch.bfloat16)
        ker = torch.randn(8, 1, 3, 3, device=device, dtype=torch.bfloat16)
        torch.nn.functional.conv2d(
            img.contiguous(memory_format=torch.channels_last),
            ker.contiguous(memory_format=torch.channels_last),
            padding=1,
        )
        torch.backends.cudnn.benchmark = benchmark
        sync()
        times["first cuDNN call (small conv, no autotune)"] = time.perf_counter() - start

    train.configure = configure_and_probe
    train.load_data = timed("data: read, check, to device", train.load_data)
    graphed.one_cycle_schedule = timed("lr schedule", graphed.one_cycle_schedule)
    train.build_parts = timed("model, optimizer, schedule", train.build_parts)

    step = graphed.CUDAGraphTrainer._step
    count = {"n": 0}

    def timed_step(self) -> None:
        if torch.cuda.is_current_stream_capturing() or count["n"] >= 3:
            return step(self)
        count["n"] += 1
        start = time.perf_counter()
        step(self)
        sync()
        times[f"warm-up step {count['n']}"] = time.perf_counter() - start

    graphed.CUDAGraphTrainer._step = timed_step
    graphed.CUDAGraphTrainer._capture = timed(
        "capture incl. warm-up steps", graphed.CUDAGraphTrainer._capture
    )
    graphed.CUDAGraphTrainer.prepare = timed("trainer.prepare", graphed.CUDAGraphTrainer.prepare)
    train.prepare = timed("prepare incl. validation batch", train.prepare)
    checkpoint.save_weights = timed("save weights + JSON", checkpoint.save_weights)
    checkpoint.save_checkpoint = timed("save checkpoints", checkpoint.save_checkpoint)
    start = time.perf_counter()
    code = run.main(argv)
    times["run.main"] = time.perf_counter() - start
    times["child total"] = time.perf_counter() - _T0
    print(MARK + json.dumps({k: round(v, 4) for k, v in times.items()}), flush=True)
    return code


def interpreter_start() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - start


def parent(runs: list[str], out: Path | None) -> None:
    bare = min(interpreter_start() for _ in range(3))
    rows = []
    for spec in runs:
        args = shlex.split(spec)
        model = args[0]
        argv = ["--model", *args, "--no-progress", "--no-download", "--out", f"/tmp/setup_{model}"]
        argv += ["--run-dir", f"/tmp/setup_{model}_run"]
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--child", *argv],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        wall = time.perf_counter() - start
        print(f"== {spec}: exit {proc.returncode}, wall {wall:.2f} s")
        print(proc.stdout[-3000:], proc.stderr[-2000:], sep="\n")
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)), None)
        if line is None:
            continue
        times = json.loads(line[len(MARK) :])
        times["interpreter start (bare python)"] = bare
        times["exit (wall - child total - bare start)"] = wall - times["child total"] - bare
        times["command wall"] = wall
        rows.append((spec, times))
    names = list(dict.fromkeys(k for _, t in rows for k in t))
    print("\n| piece (s) | " + " | ".join(spec for spec, _ in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for name in names:
        cells = [f"{t[name]:.3f}" if name in t else "" for _, t in rows]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if out is not None:
        out.write_text(json.dumps(dict(rows), indent=1) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", default=["fast"], help="training.run args after --model")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    parent(args.runs, args.json)


if __name__ == "__main__":
    main()
