"""This service against tuned TorchServe 0.12 on the same machine, the same PNG, the same wrk load.

    pip install -e .[bench]            # torchserve, torch-model-archiver (Java 17 on PATH)
    python bench/torchserve_bench.py                       # 3 rounds, 10 s per step
    python bench/torchserve_bench.py --rounds 5 --servers torchserve,uvicorn,python-m,granian

TorchServe serves the small CNN of its MNIST example (bench/torchserve/mnist_model.py, two
conv and two linear layers; weights trained here on the CPU in a few seconds, then cached) with
the handler in bench/torchserve/mnist_handler.py, tuned: 2 workers, batching (16 images, 2 ms),
one torch thread per worker (OMP_NUM_THREADS=1), token auth off, async logging, no system
metrics. The service runs its defaults (int8 cnn, dynamic batching, threads chosen by the app)
under each launcher asked for, with MNIST_LOG_LEVEL=warning (TorchServe's access log is async).

Every server is started once and left idle while another is measured. Each round drives each
server in turn (order reversed every other round) with wrk -t1: the 28x28 PNG of the first
MNIST test digit, raw to TorchServe's /predictions/mnist (its usual client form), as a multipart
upload to the service's /predict (its API), at 64 connections and at 1. The table gives the
median over rounds and the ratio to TorchServe; the per-round rows and the load average of the
machine (shared with other work) go to the results file as well. Produces: bench/RESULTS.md,
"Against tuned TorchServe 0.12" (README: the TorchServe row). Results: bench/results/serving/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import describe_cpu, isa_cap  # noqa: E402
from bench.torchserve.mnist_model import MnistNet  # noqa: E402
from tests.servers import free_port  # noqa: E402
from training.data import load_split  # noqa: E402

TS_DIR = REPO / "bench" / "torchserve"
BOUNDARY = "benchboundary7f3a"
LUA = """local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{ctype}"
"""


@dataclass
class Server:
    name: str
    command: list[str]
    url: str  # the prediction endpoint
    ready: str  # a GET that answers 200 once the model is loaded
    body: Path
    ctype: str
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None


def tool(name: str) -> str:
    """A console script of this Python's environment (the venv need not be activated)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else (shutil.which(name) or name)


def train_weights(data_dir: Path, out: Path, images: int, seed: int = 0) -> str:
    """A few seconds of CPU training of the TorchServe example's CNN; returns its accuracy."""
    torch.manual_seed(seed)
    x, y = load_split(data_dir, "train")
    tx, ty = load_split(data_dir, "test")

    def norm(a: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(a).float() / 255 - 0.1307) / 0.3081).unsqueeze(1)

    model = MnistNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    xs, ys = norm(x[:images]), torch.from_numpy(y[:images]).long()
    model.train()
    for start in range(0, images, 64):
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(model(xs[start : start + 64]), ys[start : start + 64])
        loss.backward()
        opt.step()
    model.eval()
    with torch.inference_mode():
        pred = model(norm(tx[:2000])).argmax(1).numpy()
    torch.save(model.state_dict(), out)
    return f"{(pred == ty[:2000]).mean():.2%} on 2,000 test images after {images:,} training images"


def archive(work: Path, data_dir: Path, train_images: int) -> tuple[Path, str]:
    """mnist.mar in work/store (built once; delete work/ to rebuild)."""
    store = work / "store"
    mar = store / "mnist.mar"
    note = work / "accuracy.txt"
    if mar.is_file() and note.is_file():
        return store, note.read_text()
    store.mkdir(parents=True, exist_ok=True)
    weights = work / "mnist_cnn.pt"
    started = time.perf_counter()
    accuracy = train_weights(data_dir, weights, train_images)
    accuracy += f" ({time.perf_counter() - started:.0f} s of CPU training)"
    subprocess.run(
        [
            tool("torch-model-archiver"),
            "--model-name", "mnist",
            "--version", "1.0",
            "--model-file", str(TS_DIR / "mnist_model.py"),
            "--serialized-file", str(weights),
            "--handler", str(TS_DIR / "mnist_handler.py"),
            "--export-path", str(store),
            "--force",
        ],
        check=True,
    )  # fmt: skip
    note.write_text(accuracy)
    return store, accuracy


def torchserve(work: Path, store: Path, body: Path, batch: int, delay_ms: int) -> Server:
    port, mgmt, metrics = free_port(), free_port(), free_port()
    models = {
        "mnist": {
            "1.0": {
                "defaultVersion": True,
                "marName": "mnist.mar",
                "minWorkers": 2,
                "maxWorkers": 2,
                "batchSize": batch,
                "maxBatchDelay": delay_ms,
                "responseTimeout": 120,
            }
        }
    }
    config = work / "config.properties"
    config.write_text(
        "\n".join(
            [
                f"inference_address=http://127.0.0.1:{port}",
                f"management_address=http://127.0.0.1:{mgmt}",
                f"metrics_address=http://127.0.0.1:{metrics}",
                f"model_store={store}",
                "load_models=mnist.mar",
                f"models={json.dumps(models)}",
                "disable_token_authorization=true",
                "disable_system_metrics=true",
                "async_logging=true",
                "default_workers_per_model=2",
                "install_py_dep_per_model=false",
            ]
        )
        + "\n"
    )
    return Server(
        f"TorchServe 0.12 (2 workers, batch {batch}, {delay_ms} ms, 1 thread/worker)",
        [
            tool("torchserve"),
            "--start", "--foreground", "--ncs", "--disable-token-auth",
            "--ts-config", str(config), "--model-store", str(store),
        ],
        f"http://127.0.0.1:{port}/predictions/mnist",
        f"http://127.0.0.1:{mgmt}/models/mnist",
        body,
        "application/octet-stream",
        {"OMP_NUM_THREADS": "1", "LOG_LOCATION": str(work / "logs"),
         "METRICS_LOCATION": str(work / "logs")},
    )  # fmt: skip


def service(kind: str, body: Path) -> Server:
    port = free_port()
    bind = ["--host", "127.0.0.1", "--port", str(port)]
    commands = {
        "uvicorn": ("uvicorn service.app:app --workers 2",
                    [sys.executable, "-m", "uvicorn", "service.app:app", "--workers", "2", *bind]),
        "python-m": ("python -m service --workers 2",
                     [sys.executable, "-m", "service", "--workers", "2", *bind]),
        "granian": ("granian --interface asgi --workers 2 service.app:app",
                    [sys.executable, "-m", "granian", "--interface", "asgi", "--workers", "2",
                     "--host", "127.0.0.1", "--port", str(port), "service.app:app"]),
    }  # fmt: skip
    name, command = commands[kind]
    base = f"http://127.0.0.1:{port}"
    return Server(
        name,
        command,
        f"{base}/predict",
        f"{base}/health/ready",
        body,
        f"multipart/form-data; boundary={BOUNDARY}",
        {"MNIST_DEVICE": "cpu", "MNIST_MODELS": "cnn", "MNIST_LOG_LEVEL": "warning"},
    )


def start(server: Server, logs: Path) -> None:
    """Start it in its own process group, its output in logs/."""
    env = {k: v for k, v in os.environ.items() if k not in ("WEB_CONCURRENCY",)}
    env.pop("MNIST_TORCH_THREADS", None)  # the app chooses, as for any user
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    log = (logs / f"{re.sub(r'[^a-z0-9]+', '-', server.name.lower())[:40]}.log").open("w")
    server.proc = subprocess.Popen(
        server.command,
        cwd=REPO,
        env={**env, **server.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: stopped with all its workers
    )


def wait_ready(server: Server, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited early ({server.proc.returncode})")
        try:
            if httpx.get(server.ready, timeout=2).status_code == 200:
                # Ready is not enough for TorchServe: its workers start after the model.
                answer = httpx.post(
                    server.url,
                    content=server.body.read_bytes(),
                    headers={"Content-Type": server.ctype},
                    timeout=10,
                )
                if answer.status_code == 200:
                    return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{server.name} not ready in {timeout} s")


def stop(server: Server) -> None:
    if server.proc is None or server.proc.poll() is not None:
        return
    os.killpg(server.proc.pid, signal.SIGTERM)
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait()


def cpu_seconds(server: Server) -> float:
    """User + system CPU time of the server's whole process tree so far."""
    if server.proc is None:
        return 0.0
    total = 0.0
    try:
        root = psutil.Process(server.proc.pid)
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def parse_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wrk(server: Server, connections: int, seconds: int, work: Path, threads: int = 1) -> dict:
    script = work / f"{abs(hash(server.name))}.lua"
    script.write_text(LUA.format(body=server.body, ctype=server.ctype))
    cpu_before = cpu_seconds(server)
    out = subprocess.run(
        ["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s",
         "--latency", "--timeout", "10s", "-s", str(script), server.url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {
        # CPU of the server per answered request: what it would need of dedicated cores.
        "cpu_ms": (cpu_seconds(server) - cpu_before) * 1e3 / max(1, requests),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": parse_ms(latency["50"]),
        "p99": parse_ms(latency["99"]),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk step")
    parser.add_argument(
        "--servers",
        default="torchserve,uvicorn,python-m",
        help="comma-separated: torchserve, uvicorn, python-m, granian",
    )
    parser.add_argument("--ts-batch", type=int, default=16, help="TorchServe batchSize")
    parser.add_argument("--ts-delay-ms", type=int, default=2, help="TorchServe maxBatchDelay")
    parser.add_argument("--train-images", type=int, default=6_000)
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "mnist-torchserve-bench"
    )
    parser.add_argument(
        "--data-dir", default=os.environ.get("MNIST_DATA_DIR", "../shared/datasets/mnist")
    )
    parser.add_argument("--out", type=Path, default=None, help="results markdown file")
    args = parser.parse_args()
    for tool in ("wrk", "java"):
        if shutil.which(tool) is None:
            sys.exit(f"error: {tool} not found on PATH")

    work = args.work
    (work / "logs").mkdir(parents=True, exist_ok=True)
    digits, _ = load_split(Path(args.data_dir), "test")
    png = io.BytesIO()
    Image.fromarray(digits[0]).save(png, "PNG")
    raw = work / "digit.png"
    raw.write_bytes(png.getvalue())
    multipart = work / "digit.multipart"
    multipart.write_bytes(
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png.getvalue()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    kinds = args.servers.split(",")
    accuracy = "n/a"
    servers = []
    for kind in kinds:
        if kind == "torchserve":
            store, accuracy = archive(work, Path(args.data_dir), args.train_images)
            servers.append(torchserve(work, store, raw, args.ts_batch, args.ts_delay_ms))
        else:
            servers.append(service(kind, multipart))

    samples: dict[tuple[str, int], list[dict]] = {}
    rounds_log: list[str] = []
    try:
        for server in servers:  # one at a time: start-up is CPU-heavy
            start(server, work / "logs")
            wait_ready(server)
            print(f"ready: {server.name}", flush=True)
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else servers[::-1]
            for server in order:
                load = os.getloadavg()[0]
                wrk(server, 8, 2, work)  # warm-up
                for c in (64, 1):
                    res = wrk(server, c, args.duration, work)
                    samples.setdefault((server.name, c), []).append(res)
                    line = (
                        f"| {r + 1} | {server.name} | {c} | {res['rps']:,.0f} | "
                        f"{res['p50']:.2f} | {res['p99']:.2f} | {res['cpu_ms']:.2f} | "
                        f"{res['errors']} | {load:.1f} |"
                    )
                    rounds_log.append(line)
                    print(line, flush=True)
    finally:
        for server in servers:
            stop(server)

    base = servers[0].name if kinds[0] == "torchserve" else None
    med = {
        key: {
            m: statistics.median(s[m] for s in vals)
            for m in ("rps", "p50", "p99", "errors", "cpu_ms")
        }
        for key, vals in samples.items()
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    capped = [
        f"{v}={os.environ[v]}"
        for v in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
        if v in os.environ
    ]
    command = " ".join([*capped, "python bench/torchserve_bench.py", *sys.argv[1:]])
    lines = [
        "# This service vs tuned TorchServe 0.12, same machine, same PNG, same wrk load",
        "",
        f"`{command.strip()}`",
        "",
        f"- machine: {platform.node()}, {describe_cpu()}",
        *(
            [f"- {cap}, for every server of this run (the environment of the command)"]
            if (cap := isa_cap())
            else []
        ),
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; commit {commit}"
        f"{' (with uncommitted changes)' if dirty else ''}",
        f"- wrk -t1 (on the same cores), {args.duration} s per step, {args.rounds} alternating "
        "rounds; median over rounds. Load average (1 min) of the shared machine before each "
        "step is in the per-round table.",
        f"- TorchServe model: its MNIST example's CNN, trained here: {accuracy}; raw PNG body. "
        "Service: its int8 cnn, multipart upload.",
        "- server CPU ms/request: user + system CPU time of the server's process tree during "
        "the step over the requests answered, a figure that other load on the machine "
        "disturbs far less than req/s (which is what each server gets of the shared cores).",
        "",
        "| server | req/s at 64 conns | vs TorchServe | p50 ms at 64 | p99 ms at 64 "
        "| p50 ms at 1 conn | req/s at 1 | server CPU ms/request at 64 | vs TorchServe "
        "| errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for server in servers:
        hi, lo = med[(server.name, 64)], med[(server.name, 1)]
        ratio = f"{hi['rps'] / med[(base, 64)]['rps']:.2f}x" if base else "n/a"
        # TorchServe's CPU per request over this one's: > 1 means this one needs less.
        cpu_ratio = f"{med[(base, 64)]['cpu_ms'] / hi['cpu_ms']:.2f}x" if base else "n/a"
        lines.append(
            f"| {server.name} | {hi['rps']:,.0f} | {ratio} | {hi['p50']:.2f} | "
            f"{hi['p99']:.2f} | {lo['p50']:.2f} | {lo['rps']:,.0f} | {hi['cpu_ms']:.2f} | "
            f"{cpu_ratio} | {int(hi['errors'] + lo['errors'])} |"
        )
    lines += [
        "",
        "Per round:",
        "",
        "| round | server | conns | req/s | p50 ms | p99 ms | server CPU ms/request | errors "
        "| load avg |",
        "|---|---|---|---|---|---|---|---|---|",
        *rounds_log,
    ]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    out = args.out or REPO / "bench" / "results" / "serving" / f"torchserve-{dt.date.today()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
