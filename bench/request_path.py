"""The service's own cost per request, without an HTTP server: the app driven in-process.

    python bench/request_path.py                  # cnn: float32/int8 x batching off/on
    python bench/request_path.py --model mlp --requests 3000

Each variant builds the real app (lifespan included: weights verified, warmed up) and sends the
same real requests straight into its ASGI interface, one at a time (concurrency 1: latency) and
from 32 concurrent callers (throughput, CPU time per request). No sockets, no load generator on
the same cores: what remains is FastAPI, multipart/JSON parsing, preprocessing, the batcher and
the model. Variants are interleaved over several rounds, and the table shows medians and the
ratio to the first variant (the per-request baseline: float32, batching off).

Produces: bench/RESULTS.md, "In-process, per request". Results:
bench/results/serving/request-path.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from asgi_lifespan import LifespanManager  # noqa: E402

from service.app import create_app  # noqa: E402
from service.config import Settings  # noqa: E402
from training.data import load_split  # noqa: E402

BOUNDARY = "requestpathboundary"


def bodies(digits: np.ndarray) -> dict[str, tuple[str, bytes, bytes]]:
    png = io.BytesIO()
    Image.fromarray(digits[0]).save(png, "PNG")
    multipart = (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png.getvalue()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return {
        "PNG /predict": (
            "/predict",
            f"multipart/form-data; boundary={BOUNDARY}".encode(),
            multipart,
        ),
        "JSON /predict": (
            "/predict",
            b"application/json",
            json.dumps({"pixels": digits[0].tolist()}).encode(),
        ),
    }


async def call(app, path: str, ctype: bytes, body: bytes) -> int:
    """One request through the ASGI interface, as a server would make it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        # As an HTTP server passes them on: with the body's length (small multipart bodies are
        # split by service/formparts.py only when it is declared).
        "headers": [
            (b"host", b"bench"),
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent = False
    status = 0

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        return {}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def measure(app, request: tuple[str, bytes, bytes], count: int, concurrency: int) -> dict:
    latencies: list[float] = []

    async def caller(n: int) -> None:
        for _ in range(n):
            start = time.perf_counter()
            status = await call(app, *request)
            latencies.append(time.perf_counter() - start)
            assert status == 200, status

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(count // concurrency) for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "rps": len(latencies) / wall,
        "cpu_us": cpu / len(latencies) * 1e6,
        "p50_ms": statistics.median(latencies) * 1e3,
    }


async def run_variant(settings: Settings, requests: dict, count: int) -> dict:
    app = create_app(settings)
    out = {}
    async with LifespanManager(app) as manager:
        for name, request in requests.items():
            await measure(manager.app, request, 200, 8)  # warm-up
            out[(name, 1)] = await measure(manager.app, request, max(100, count // 10), 1)
            out[(name, 32)] = await measure(manager.app, request, count, 32)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="cnn", help="model to drive")
    parser.add_argument("--requests", type=int, default=2000, help="requests per step at c=32")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one worker)")
    parser.add_argument(
        "--data-dir", default=os.environ.get("MNIST_DATA_DIR", "../shared/datasets/mnist")
    )
    args = parser.parse_args()
    digits, _ = load_split(Path(args.data_dir), "test")
    requests = bodies(digits)
    variants = {
        "float32, batching off": {"int8": False, "batching": False},
        "float32, batching on": {"int8": False, "batching": True},
        "int8, batching off": {"int8": True, "batching": False},
        "int8, batching on (default)": {"int8": True, "batching": True},
    }
    samples: dict[tuple[str, str, int], list[dict]] = {}
    for _ in range(args.rounds):
        for label, options in variants.items():
            settings = Settings(
                models=[args.model],
                model=args.model,
                device="cpu",
                torch_threads=args.threads,
                log_level="warning",
                **options,
            )
            result = asyncio.run(run_variant(settings, requests, args.requests))
            for (name, conc), r in result.items():
                samples.setdefault((label, name, conc), []).append(r)
    print(f"\n{args.model}, {args.threads} torch thread(s), in-process, median of {args.rounds}")
    print("\n| endpoint | conc | variant | requests/s | CPU µs/request | p50 ms | vs first |")
    print("|---|---|---|---|---|---|---|")
    for name in requests:
        for conc in (1, 32):
            base = None
            for label in variants:
                rows = samples[(label, name, conc)]
                rps = statistics.median(r["rps"] for r in rows)
                cpu = statistics.median(r["cpu_us"] for r in rows)
                p50 = statistics.median(r["p50_ms"] for r in rows)
                base = base or rps
                print(
                    f"| {name} | {conc} | {label} | {rps:,.0f} | {cpu:,.0f} | {p50:.2f} | "
                    f"{rps / base:.2f}x |"
                )


if __name__ == "__main__":
    main()
