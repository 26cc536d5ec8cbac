"""Serving benchmark: the real service under wrk, dynamic batching off and on, side by side.

    python bench/serve_bench.py                      # 2 workers, 5 s per step, CPU
    python bench/serve_bench.py --duration 10 --out bench/results/serving/serve-cpu.md

For each mode (batching off, then on) it starts `python -m service` on 127.0.0.1, warms it up,
and drives it with wrk (one wrk thread, so the load generator takes little of the cores it
measures) for a bounded time per step: PNG upload to /predict, JSON pixels to /predict, a
256-image /predict/batch as JSON and as a .npy body, and 256 uint8 images through
/v2/models/<name>/infer with the binary tensor extension, at 1, 8 and 64 connections. It prints
one table with requests/s, images/s, p50/p90/p99 latency and errors, and the on/off ratio, and
writes it with the machine (CPU and its int8-relevant extensions), date and commit to a
markdown file. Produces: bench/RESULTS.md, "Serving" (README: the 2-core and GPU-host figures);
on the GPU machine `bash bench/gpu.sh serve` (and `graphs`). Results: bench/results/serving/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import describe_cpu  # noqa: E402
from training.data import load_split  # noqa: E402

LUA = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{ctype}"
{extra}"""


@dataclass
class Scenario:
    name: str
    path: str
    body: bytes
    ctype: str
    images: int  # images per request
    headers: dict[str, str] = field(default_factory=dict)


BOUNDARY = "benchboundary7f3a"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(data: bytes, filename: str, ctype: str) -> bytes:
    """One file in the form field `file`, as a browser sends it."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
        f"\r\nContent-Type: {ctype}\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def canvas_png(digit: np.ndarray, side: int = 448) -> bytes:
    """What a drawing app exports: side x side RGBA, dark strokes on a transparent ground, the
    digit about 300 px tall, off-centre."""
    ink = Image.fromarray(digit).resize((420, 420), Image.Resampling.BICUBIC)
    rgba = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    stroke = Image.new("RGBA", ink.size, (17, 17, 17, 255))
    rgba.paste(stroke, (10, 24), ink)
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    return buf.getvalue()


def paper_jpeg(digit: np.ndarray, side: int = 400) -> bytes:
    """A phone photo of a digit on paper, side x side colour JPEG: uneven light, noise."""
    rng = np.random.default_rng(7)
    cover = np.asarray(Image.fromarray(digit).resize((260, 260), Image.Resampling.BICUBIC))
    sheet = np.zeros((side, side), np.float32)
    sheet[60:320, 90:350] = cover / 255.0
    ys, xs = np.mgrid[0:side, 0:side] / side
    light = 1.0 - 0.25 * xs - 0.15 * ys
    grey = (225 * (1 - sheet) + 40 * sheet) * light + rng.normal(0, 4, sheet.shape)
    rgb = np.clip(np.stack([grey, grey * 0.97, grey * 0.9], axis=-1), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def scenarios(digits: np.ndarray) -> list[Scenario]:
    png = io.BytesIO()
    Image.fromarray(digits[0]).save(png, "PNG")
    upload = multipart(png.getvalue(), "d.png", "image/png")
    canvas = multipart(canvas_png(digits[0]), "drawing.png", "image/png")
    photo = multipart(paper_jpeg(digits[0]), "photo.jpg", "image/jpeg")
    single = json.dumps({"pixels": digits[0].tolist()}).encode()
    batch = json.dumps({"images": [d.tolist() for d in digits[:256]]}).encode()
    npy = io.BytesIO()
    np.save(npy, np.ascontiguousarray(digits[:256], dtype=np.uint8))
    # Open Inference Protocol with the binary tensor extension: 256 uint8 images as raw bytes
    # after a small JSON header, the fast input path for batches (no JSON numbers to parse).
    pixels = np.ascontiguousarray(digits[:256], dtype=np.uint8).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": [256, 28, 28],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": len(pixels)},
                }
            ],
            "outputs": [{"name": "digit", "parameters": {"binary_data": False}}],
        }
    ).encode()
    return [
        Scenario("PNG /predict", "/predict", upload, MULTIPART, 1),
        Scenario("canvas 448px PNG /predict", "/predict", canvas, MULTIPART, 1),
        Scenario("paper 400px JPEG /predict", "/predict", photo, MULTIPART, 1),
        Scenario("JSON /predict", "/predict", single, "application/json", 1),
        Scenario("JSON /predict/batch x256", "/predict/batch", batch, "application/json", 256),
        Scenario(
            "npy /predict/batch x256", "/predict/batch", npy.getvalue(), "application/x-npy", 256
        ),
        Scenario(
            "v2 binary infer x256",
            "/v2/models/{model}/infer",
            header + pixels,
            "application/octet-stream",
            256,
            {"Inference-Header-Content-Length": str(len(header))},
        ),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(
    batching: bool, workers: int, device: str, models: list[str]
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "MNIST_BATCHING": str(batching).lower(),
        "MNIST_DEVICE": device,
        "MNIST_LOG_LEVEL": "warning",
        "MNIST_MAX_REQUEST_IMAGES": "256",
        "MNIST_MODELS": ",".join(models),
        "MNIST_MODEL": models[0],
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("service did not become ready")


def parse_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(
    base: str,
    scenario: Scenario,
    connections: int,
    seconds: int,
    tmp: Path,
    threads: int = 1,
    model: str = "cnn",
) -> dict:
    query = "" if "{model}" in scenario.path else f"?model={model}"
    body = tmp / f"{abs(hash(scenario.name))}.body"
    body.write_bytes(scenario.body)
    script = tmp / f"{abs(hash(scenario.name))}.lua"
    extra = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in scenario.headers.items())
    script.write_text(LUA.format(body=body, ctype=scenario.ctype, extra=extra))
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(threads, connections)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base + scenario.path.format(model=model) + query,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    latency = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), "
        r"timeout (\d+)",
        out,
    )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(x) for x in socket_errors.groups())
    return {
        "rps": rps,
        "images_per_s": rps * scenario.images,
        "p50": parse_ms(latency["50"]),
        "p90": parse_ms(latency["90"]),
        "p99": parse_ms(latency["99"]),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per step")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers")
    parser.add_argument("--device", default="cpu", help="MNIST_DEVICE for the service")
    parser.add_argument("--connections", default="1,8,64", help="comma-separated")
    parser.add_argument("--models", default="cnn", help="comma-separated models to drive")
    parser.add_argument(
        "--only", default="", help="run only the endpoints whose name contains this (e.g. npy)"
    )
    parser.add_argument(
        "--wrk-threads",
        type=int,
        default=1,
        help="wrk threads (1 on a 2-core machine: leave the cores to the server)",
    )
    parser.add_argument(
        "--data-dir", default=os.environ.get("MNIST_DATA_DIR", "../shared/datasets/mnist")
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / "bench" / "results" / "serving" / "serve-cpu.md"
    )
    args = parser.parse_args()
    digits, _ = load_split(Path(args.data_dir), "test")
    chosen = [s for s in scenarios(digits) if args.only.lower() in s.name.lower()]
    connections = [int(c) for c in args.connections.split(",")]
    models = args.models.split(",")
    results: dict[tuple[str, str, int, bool], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for batching in (False, True):
            proc, base = start_service(batching, args.workers, args.device, models)
            try:
                for model in models:
                    for scenario in chosen:
                        m = model
                        run_wrk(base, scenario, 8, 1, Path(tmp), args.wrk_threads, m)  # warm-up
                        for c in connections:
                            r = run_wrk(
                                base, scenario, c, args.duration, Path(tmp), args.wrk_threads, m
                            )
                            results[(model, scenario.name, c, batching)] = r
                            print(
                                f"batching {'on ' if batching else 'off'} {model} "
                                f"{scenario.name:26s} c={c:<3d} {r['rps']:9.0f} req/s  "
                                f"p99 {r['p99']:7.1f} ms  errors {r['errors']}",
                                flush=True,
                            )
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=30)

    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        or "?"
    )
    lines = [
        f"# Serving benchmark ({args.device})",
        "",
        f"`python bench/serve_bench.py --duration {args.duration} --workers {args.workers} "
        f"--device {args.device} --models {args.models} --wrk-threads {args.wrk_threads}"
        f"{f' --only {args.only}' if args.only else ''}`",
        "",
        f"- machine: {platform.node()}, {describe_cpu()}",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- commit: {commit}; {args.workers} uvicorn workers; wrk -t{args.wrk_threads}, "
        f"{args.duration} s per step",
        "- latency: as wrk prints it, corrected for coordinated omission (a stalled request is "
        "counted again at every interval it blocked its connection): above the per-request "
        "figures whenever there are stalls (bench/results/serving/gpu-tail-2026-12-02/README.md)",
        "",
        "| model | endpoint | conns | batching | req/s | images/s | p50 ms | p90 ms | p99 ms "
        "| errors | on/off |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for scenario in chosen:
            for c in connections:
                off = results[(model, scenario.name, c, False)]
                on = results[(model, scenario.name, c, True)]
                for label, r in (("off", off), ("on", on)):
                    ratio = ""
                    if label == "on":
                        ratio = f"{on['rps'] / off['rps']:.2f}x" if off["rps"] else "n/a"
                    lines.append(
                        f"| {model} | {scenario.name} | {c} | {label} | {r['rps']:,.0f} | "
                        f"{r['images_per_s']:,.0f} | {r['p50']:.2f} | {r['p90']:.2f} | "
                        f"{r['p99']:.2f} | {r['errors']} | {ratio} |"
                    )
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)


if __name__ == "__main__":
    main()
