"""Uploads per second against the number of workers, GPU on: how throughput grows with cores.

    python bench/gpu_scale.py --device cuda                     # 1,2,4,8,12 workers
    python bench/gpu_scale.py --device cpu --workers 1,2 --duration 2 --connections 16  # smoke

For each worker count it starts `python -m service --workers N` (threads per worker chosen by
the app, service/threads.py), waits until ready, and drives it with wrk: the 28x28 PNG of the
first MNIST test digit, and a 448x448 RGBA canvas export of the same digit (thick coloured
strokes on a transparent background, as the web page's canvas sends it), each as a multipart
upload to /predict, at each connection count. One table: req/s, p50, p99, errors, and the
speed-up over one worker. Bounded by --budget seconds: worker counts that no longer fit are
left out and said so. On the GPU machine: `bash bench/gpu.sh scale` (results under
$OUT/scale/, to file in bench/results/serving/).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import describe_cpu  # noqa: E402
from bench.torchserve_bench import BOUNDARY, service, start, stop, wait_ready, wrk  # noqa: E402
from training.data import load_split  # noqa: E402


def multipart(png: bytes) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + png + f"\r\n--{BOUNDARY}--\r\n".encode()


def bodies(digit: np.ndarray) -> dict[str, bytes]:
    small = io.BytesIO()
    Image.fromarray(digit).save(small, "PNG")
    # The web page's canvas: 448x448, ink ~300 px tall, thick strokes, transparent elsewhere.
    alpha = Image.fromarray(digit).resize((320, 320), Image.Resampling.BICUBIC)
    alpha = alpha.filter(ImageFilter.MaxFilter(5))
    ink = Image.new("RGBA", (320, 320), (20, 20, 90, 255))
    ink.putalpha(alpha)
    canvas = Image.new("RGBA", (448, 448), (255, 255, 255, 0))
    canvas.paste(ink, (64, 64), ink)
    big = io.BytesIO()
    canvas.save(big, "PNG")
    return {"28x28 PNG": multipart(small.getvalue()), "448x448 canvas": multipart(big.getvalue())}


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--workers", default="1,2,4,8,12")
    parser.add_argument("--connections", default="64,256", help="comma-separated")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk step")
    parser.add_argument("--wrk-threads", type=int, default=4)
    parser.add_argument("--budget", type=float, default=500, help="seconds for the whole run")
    parser.add_argument(
        "--data-dir", default=os.environ.get("MNIST_DATA_DIR", "../shared/datasets/mnist")
    )
    parser.add_argument("--out", type=Path, default=Path("gpu-out"))
    args = parser.parse_args()
    began = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "logs").mkdir(exist_ok=True)
    digits, _ = load_split(Path(args.data_dir), "test")
    files = {}
    for name, body in bodies(digits[0]).items():
        files[name] = args.out / f"{name.split()[0]}.body"
        files[name].write_bytes(body)
    connections = [int(c) for c in args.connections.split(",")]
    counts = [int(w) for w in args.workers.split(",")]
    results: dict[tuple[int, str, int], dict] = {}
    skipped = []
    step = len(files) * len(connections) * (args.duration + 2)
    for n in counts:
        if time.monotonic() - began + step + 60 > args.budget:
            skipped.append(n)
            continue
        server = service("python-m", files["28x28 PNG"])
        server.command[server.command.index("--workers") + 1] = str(n)
        server.name = f"python -m service --workers {n}"
        server.env["MNIST_DEVICE"] = args.device
        start(server, args.out / "logs")
        try:
            wait_ready(server, timeout=240)
            for body_name, path in files.items():
                server.body = path
                wrk(server, 16, 2, args.out, args.wrk_threads)  # warm-up
                for c in connections:
                    r = wrk(server, c, args.duration, args.out, args.wrk_threads)
                    results[(n, body_name, c)] = r
                    print(
                        f"workers {n:2d} {body_name:15s} c={c:<4d} {r['rps']:9,.0f} req/s "
                        f"p50 {r['p50']:7.2f} ms p99 {r['p99']:7.2f} ms errors {r['errors']}",
                        flush=True,
                    )
        finally:
            stop(server)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    gpu = subprocess.run(
        ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
        capture_output=True,
        text=True,
    ).stdout.strip() if args.device == "cuda" else "none"  # fmt: skip
    lines = [
        f"# Uploads/s against workers ({args.device})",
        "",
        f"`python bench/gpu_scale.py {' '.join(sys.argv[1:])}`",
        "",
        f"- machine: {platform.node()}, {describe_cpu()}; GPU: {gpu}",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; commit {commit}",
        f"- wrk -t{args.wrk_threads} on the same host, {args.duration} s per step; multipart "
        "uploads to /predict; latency as wrk reports it (coordinated-omission corrected)",
        "",
        "| workers | upload | conns | req/s | vs 1 worker | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in counts:
        for body_name in files:
            for c in connections:
                if (n, body_name, c) not in results:
                    continue
                r = results[(n, body_name, c)]
                one = results.get((counts[0], body_name, c))
                ratio = f"{r['rps'] / one['rps']:.2f}x" if one and one["rps"] else "n/a"
                lines.append(
                    f"| {n} | {body_name} | {c} | {r['rps']:,.0f} | {ratio} | {r['p50']:.2f} | "
                    f"{r['p99']:.2f} | {r['errors']} |"
                )
    if skipped:
        lines += ["", f"Not run (over the {args.budget:.0f} s budget): workers {skipped}"]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    (args.out / "gpu-scale.md").write_text(table)


if __name__ == "__main__":
    main()
