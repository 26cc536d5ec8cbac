"""Soak test: the real service under mixed traffic and abuse for a bounded time.

    python bench/soak.py                                  # 60 s, 32 clients, 2 workers, CPU
    python bench/soak.py --seconds 300 --clients 64 --out bench/results/soak/soak.md

Starts `python -m service --workers 2` (MNIST_DEVICE=cpu, every shipped model, lower body limits
so that oversized bodies are cheap to send), then runs these phases and checks each:

1. load: `--clients` concurrent asyncio/httpx clients send, for `--seconds` after a warm-up,
   a mix of single PNG/JPEG uploads of real MNIST test digits rendered as dark-on-light photos,
   JSON pixels, multipart and JSON batches, /v2 inference (JSON and binary tensors) and bad
   inputs (garbage bytes, truncated PNGs, wrong content types, oversized bodies and files).
   Every request must be answered, with the status its kind expects (200, 413, 415, 422) and
   never a 5xx; the server's RSS (summed over its processes) must not grow by more than
   `--rss-tolerance` between the end of the warm-up and the end of the load.
2. disconnects: raw sockets send half a multipart (or JSON) body, or only the headers, and
   close; the server must stay healthy and answer normally afterwards.
3. slow clients: raw sockets trickle requests byte by byte while normal traffic goes on; the
   normal traffic must keep being answered (and the trickled requests too, once complete).
4. graceful shutdown: SIGTERM while long requests are in flight: those complete with 200,
   connections tried afterwards fail cleanly (refused or closed, never a 5xx), and the
   process exits within uvicorn's graceful timeout.

The server's own access log is read too: a 5xx it logged for a client that had gone (nobody
saw the answer) still counts as a failure. Prints a report (markdown with --out); exit 1 if a
check failed. Produces: docs/security.md (the soak run). Results: bench/results/soak/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import io
import json
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.uploads import encode, paper  # noqa: E402
from training.data import load_split  # noqa: E402

MNIST_DIR = Path(os.environ.get("MNIST_DATA_DIR", REPO.parent / "shared" / "datasets" / "mnist"))
MAX_REQUEST_BYTES = 4_000_000
MAX_UPLOAD_BYTES = 1_000_000
BOUNDARY = "soakboundary7e3f"


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    proc: subprocess.Popen
    base: str
    port: int
    log_path: Path

    def rss(self) -> int:
        """Resident memory of the server and every process under it (the uvicorn workers)."""
        try:
            main = psutil.Process(self.proc.pid)
            procs = [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += p.memory_info().rss
        return total

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workers: int, log_dir: Path) -> Server:
    port = free_port()
    log_path = log_dir / "server.log"
    env = {
        **os.environ,
        "MNIST_DEVICE": "cpu",
        "MNIST_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "MNIST_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    }
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", port, log_path)
    deadline = time.monotonic() + 120
    ready = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early:\n{server.log()}")
        try:
            ok = httpx.get(f"{server.base}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            ok = False
        ready = ready + 1 if ok else 0
        if ready >= 2 * workers:  # several in a row, so that every worker has started
            return server
        time.sleep(0.25)
    proc.kill()
    raise SystemExit(f"server not ready in time:\n{server.log()}")


def access_statuses(log: str) -> Counter:
    """Statuses in the server's access log (one JSON line per request, from every worker)."""
    found: Counter = Counter()
    for line in log.splitlines():
        if "service.access" in line and "{" in line:
            with contextlib.suppress(ValueError, KeyError):
                found[json.loads(line[line.index("{") :])["status"]] += 1
    return found


# --------------------------------------------------------------------------- the payloads


@dataclass
class Kind:
    name: str
    weight: int
    expect: int  # the status this kind must get
    requests: list[dict]  # httpx.request keyword arguments, one picked at random per send
    labels: list[int | None] = field(default_factory=list)  # the digit, where one is known


def multipart(fields: list[tuple[str, str, bytes, str]]) -> bytes:
    out = io.BytesIO()
    for name, filename, data, ctype in fields:
        out.write(f"--{BOUNDARY}\r\n".encode())
        out.write(
            f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            f"Content-Type: {ctype}\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def post(url: str, **kwargs: object) -> dict:
    return {"method": "POST", "url": url, **kwargs}


def upload(data: bytes, filename: str = "x.png", ctype: str = "image/png") -> dict:
    return post("/predict", content=multipart([("file", filename, data, ctype)]), headers=MULTIPART)


def build_kinds(n_images: int, seed: int) -> list[Kind]:
    images, labels = load_split(MNIST_DIR, "test")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), n_images, replace=False)
    digits, digit_labels = images[pick], [int(x) for x in labels[pick]]
    # Real test digits as phone-photo-like uploads: dark ink on noisy light paper, PNG or JPEG.
    photos = [encode(paper(d, rng), "PNG" if i % 2 == 0 else "JPEG") for i, d in enumerate(digits)]

    def batch_files(i: int) -> dict:
        parts = [("files", f"{j}.img", photos[(i + j) % n_images], "image/png") for j in range(8)]
        return post("/predict/batch", content=multipart(parts), headers=MULTIPART)

    def batch_json(i: int) -> dict:
        arrays = [digits[(i + j) % n_images].tolist() for j in range(16)]
        return post("/predict/batch", json={"images": arrays})

    def v2(i: int, binary: bool) -> dict:
        batch = digits[[(i + j) % n_images for j in range(4)]].reshape(4, 784)
        tensor: dict = {"name": "images", "datatype": "UINT8", "shape": [4, 784]}
        url = "/v2/models/cnn/infer"
        if not binary:
            tensor["data"] = batch.ravel().tolist()
            return post(url, json={"inputs": [tensor]})
        tensor["parameters"] = {"binary_data_size": batch.nbytes}
        header = json.dumps({"inputs": [tensor]}).encode()
        headers = {
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        }
        return post(url, content=header + batch.tobytes(), headers=headers)

    garbage = [rng.bytes(int(rng.integers(1, 5000))) for _ in range(8)]
    truncated = [data[: len(data) // 2] for data in photos[:16:2]]  # PNGs cut in half
    return [
        Kind("png/jpeg upload", 30, 200, [upload(p) for p in photos], digit_labels),
        Kind(
            "json pixels",
            20,
            200,
            [post("/predict", json={"pixels": d.tolist()}) for d in digits],
            digit_labels,
        ),
        Kind("batch multipart (8)", 8, 200, [batch_files(i) for i in range(0, n_images, 8)]),
        Kind("batch json (16)", 8, 200, [batch_json(i) for i in range(0, n_images, 16)]),
        Kind("v2 json (4)", 8, 200, [v2(i, False) for i in range(0, n_images, 4)]),
        Kind("v2 binary (4)", 8, 200, [v2(i, True) for i in range(0, n_images, 4)]),
        Kind("garbage bytes", 4, 422, [upload(g) for g in garbage]),
        Kind("truncated png", 4, 422, [upload(t) for t in truncated]),
        Kind(
            "wrong content type",
            3,
            415,
            [
                post("/predict", content=photos[0], headers={"content-type": "image/png"}),
                post("/predict", content=b"pixels", headers={"content-type": "text/plain"}),
            ],
        ),
        # One file over the per-file limit; a whole body over the request limit.
        Kind("oversized file", 2, 413, [upload(bytes(MAX_UPLOAD_BYTES + 1000))]),
        Kind(
            "oversized body",
            1,
            413,
            [post("/predict/batch", content=bytes(MAX_REQUEST_BYTES + 1000), headers=MULTIPART)],
        ),
    ]


# --------------------------------------------------------------------------- the load


@dataclass
class Stats:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # exception type -> count (unanswered)
    unexpected: Counter = field(default_factory=Counter)  # (kind, status) -> count
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    correct: Counter = field(default_factory=Counter)
    labelled: Counter = field(default_factory=Counter)

    def all_latencies(self) -> np.ndarray:
        return np.concatenate([np.asarray(v) for v in self.latencies.values()] or [np.zeros(0)])


async def one_request(
    client: httpx.AsyncClient, kind: Kind, rng: random.Random, stats: Stats
) -> None:
    i = rng.randrange(len(kind.requests))
    stats.sent += 1
    t0 = time.perf_counter()
    try:
        response = await client.request(**kind.requests[i])
    except httpx.HTTPError as exc:
        stats.errors[f"{kind.name}: {type(exc).__name__}"] += 1
        return
    stats.latencies[kind.name].append(time.perf_counter() - t0)
    stats.statuses[response.status_code] += 1
    if response.status_code != kind.expect:
        stats.unexpected[(kind.name, response.status_code)] += 1
    elif kind.labels and response.status_code == 200:
        stats.labelled[kind.name] += 1
        stats.correct[kind.name] += int(response.json()["digit"] == kind.labels[i])


async def load(base: str, kinds: list[Kind], clients: int, seconds: float, seed: int) -> Stats:
    stats = Stats()
    weights = [k.weight for k in kinds]
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(60.0)

    async def client_loop(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            await one_request(client, kind, rng, stats)

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        await asyncio.gather(*(client_loop(n) for n in range(clients)))
    return stats


# --------------------------------------------------------------------------- abuse phases


async def raw_exchange(port: int, chunks: list[bytes], delay: float, read: bool) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if delay:
                await asyncio.sleep(delay)
        if read:
            return await asyncio.wait_for(reader.read(65536), 60)
        return b""
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def request_bytes(path: str, body: bytes, ctype: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def disconnects(server: Server, kinds: list[Kind], repeat: int) -> dict:
    """Clients that go away mid-upload; then the server must still answer normally."""
    by = {k.name: k for k in kinds}
    photo = request_bytes(
        "/predict", by["png/jpeg upload"].requests[0]["content"], MULTIPART["content-type"]
    )
    pixels = request_bytes(
        "/predict", json.dumps(by["json pixels"].requests[0]["json"]).encode(), "application/json"
    )
    tensors = request_bytes("/v2/models/cnn/infer", by["v2 binary (4)"].requests[0]["content"], "")
    head = photo.index(b"\r\n\r\n") + 4  # where the body starts
    cases = {
        "half a multipart body": photo[: (head + len(photo)) // 2],
        "half a JSON body": pixels[: (head + len(pixels)) // 2],
        "half a v2 body": tensors[: len(tensors) // 2],
        "headers, no body": photo[:head],
        "half the headers": photo[: head // 2],
    }
    before = access_statuses(server.log())
    for _ in range(repeat):
        await asyncio.gather(
            *(raw_exchange(server.port, [raw], 0, False) for raw in cases.values())
        )
    await asyncio.sleep(1.0)
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as client:
        health = (await client.get("/health/ready")).status_code
        follow = [
            (await client.request(**by[name].requests[0])).status_code
            for name in ("png/jpeg upload", "json pixels", "v2 json (4)")
            for _ in range(3)
        ]
    logged = access_statuses(server.log()) - before
    return {
        "sent": repeat * len(cases),
        "cases": list(cases),
        "health": health,
        "follow_up": Counter(follow),
        "server_logged": dict(logged),
        "ok": health == 200 and set(follow) == {200} and not any(s >= 500 for s in logged),
    }


async def slow_clients(
    server: Server, kinds: list[Kind], n_slow: int, seconds: float, clients: int, seed: int
) -> dict:
    """Raw sockets trickling requests byte by byte while normal clients keep sending."""
    pixels = next(k for k in kinds if k.name == "json pixels").requests[0]["json"]
    small = request_bytes("/predict", json.dumps(pixels).encode(), "application/json")
    get = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    # A GET trickled over the whole phase; a POST whose headers trickle, then the body at once.
    per_byte = seconds / len(get)

    async def trickle_get() -> bytes:
        return await raw_exchange(server.port, [bytes([b]) for b in get], per_byte, True)

    async def trickle_post() -> bytes:
        head_end = small.index(b"\r\n\r\n") + 4
        chunks = [bytes([b]) for b in small[:head_end]] + [small[head_end:]]
        return await raw_exchange(server.port, chunks, seconds / head_end, True)

    slow = [trickle_get() if i % 2 == 0 else trickle_post() for i in range(n_slow)]
    normal = [k for k in kinds if k.expect == 200]
    t0 = time.monotonic()
    results = await asyncio.gather(
        load(server.base, normal, clients, seconds, seed), *slow, return_exceptions=True
    )
    stats, answers = results[0], results[1:]
    slow_status = Counter(
        (a.split(b"\r\n", 1)[0].decode(errors="replace") if isinstance(a, bytes) and a else repr(a))
        for a in answers
    )
    if isinstance(stats, BaseException):
        raise stats
    lat = stats.all_latencies()
    return {
        "slow_clients": n_slow,
        "seconds": round(time.monotonic() - t0, 1),
        "slow_answers": dict(slow_status),
        "normal_sent": stats.sent,
        "normal_statuses": dict(stats.statuses),
        "normal_errors": dict(stats.errors),
        "normal_p50_ms": round(float(np.percentile(lat, 50)) * 1000, 1) if lat.size else None,
        "normal_p99_ms": round(float(np.percentile(lat, 99)) * 1000, 1) if lat.size else None,
        "ok": stats.sent > 0
        and set(stats.statuses) == {200}
        and not stats.errors
        and all(k.startswith("HTTP/1.1 200") for k in slow_status),
    }


async def graceful_shutdown(server: Server, kinds: list[Kind], in_flight: int) -> dict:
    """SIGTERM while long requests run: they finish with 200, later connections fail cleanly."""
    # 256 images through the upload pipeline each (normalize): long enough to be in flight.
    arrays = [
        r["json"]["pixels"] for r in next(k for k in kinds if k.name == "json pixels").requests
    ]
    body = {"images": (arrays * 4)[:256], "normalize": True}
    done_at: list[float] = []
    probes: list[tuple[float, str, float]] = []  # (start after signal, outcome, seconds waited)

    async def long_request(client: httpx.AsyncClient) -> str:
        try:
            r = await client.post("/predict/batch", json=body)
            return f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            return type(exc).__name__
        finally:
            done_at.append(time.monotonic())

    async def probe(t_signal: float) -> None:
        # A new connection after the signal: refused, closed, or answered; never a 5xx.
        t0 = time.monotonic()
        try:
            async with httpx.AsyncClient(base_url=server.base, timeout=90) as fresh:
                outcome = f"HTTP {(await fresh.get('/health/live')).status_code}"
        except httpx.ConnectError:
            outcome = "refused"
        except httpx.TimeoutException as exc:
            outcome = f"timeout ({type(exc).__name__})"
        except httpx.HTTPError as exc:
            outcome = f"closed ({type(exc).__name__})"
        probes.append((t0 - t_signal, outcome, time.monotonic() - t0))

    limits = httpx.Limits(max_connections=in_flight)
    async with httpx.AsyncClient(base_url=server.base, timeout=120, limits=limits) as client:
        tasks = [asyncio.create_task(long_request(client)) for _ in range(in_flight)]
        await asyncio.sleep(0.5)
        running = sum(not t.done() for t in tasks)
        t_signal = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        probe_tasks = []
        while server.proc.poll() is None and time.monotonic() - t_signal < 60:
            probe_tasks.append(asyncio.create_task(probe(t_signal)))
            await asyncio.sleep(0.25)
        exited = server.proc.poll()
        t_exit = time.monotonic() - t_signal
        answers = Counter(await asyncio.gather(*tasks))
        # Connections still waiting once the server has gone would be left hanging.
        _, hanging = await asyncio.wait(probe_tasks, timeout=10) if probe_tasks else (set(), set())
        for task in hanging:
            task.cancel()
    if exited is None:
        server.proc.kill()
        server.proc.wait()
    outcomes = Counter(outcome for _, outcome, _ in probes)
    held = [(start, waited) for start, outcome, waited in probes if outcome != "refused"]
    long_held = [(round(a, 1), round(w, 1)) for a, w in held if w > 1.0]
    return {
        "in_flight": in_flight,
        "still_running_at_signal": running,
        "in_flight_answers": dict(answers),
        "last_in_flight_done_after_signal_s": round(max(done_at) - t_signal, 1),
        "exit_code": exited if exited is not None else "did not exit in 60 s (killed)",
        "exit_after_signal_s": round(t_exit, 1),
        "finished_log": "Finished server process" in server.log(),
        "new_connections_after_signal": dict(outcomes),
        "left_hanging_after_exit": len(hanging),
        "held_over_1s (start after signal s, waited s)": long_held[:10],
        "ok": answers == Counter({"HTTP 200": in_flight})
        and exited in (0, -signal.SIGTERM)
        and not any(o.startswith("HTTP 5") for o in outcomes)
        and not hanging,
        "prompt": not long_held,
    }


async def sampled(work: Awaitable[Stats], server: Server, samples: list) -> Stats:
    """Run `work`, noting the server's RSS every 10 s (a trend, not just two points)."""
    t0 = time.monotonic()

    async def sample() -> None:
        while True:
            samples.append((time.monotonic() - t0, server.rss()))
            await asyncio.sleep(10)

    sampler = asyncio.create_task(sample())
    try:
        return await work
    finally:
        sampler.cancel()
        samples.append((time.monotonic() - t0, server.rss()))


# --------------------------------------------------------------------------- report


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="mixed load after the warm-up")
    parser.add_argument("--warmup", type=float, default=15, help="seconds of load before RSS base")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rss-tolerance", type=float, default=0.20)
    parser.add_argument("--slow-clients", type=int, default=8)
    parser.add_argument("--slow-seconds", type=float, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the report as markdown here too")
    args = parser.parse_args(argv)

    kinds = build_kinds(128, args.seed)
    log_dir = Path(tempfile.mkdtemp(prefix="mnist-soak-"))
    server = start_server(args.workers, log_dir)
    checks: dict[str, bool] = {}
    lines: list[str] = []
    try:
        rss_start = server.rss()
        print(
            f"server ready on {server.base}, RSS {mib(rss_start)}; warm-up {args.warmup:.0f} s",
            flush=True,
        )
        warm = asyncio.run(load(server.base, kinds, args.clients, args.warmup, args.seed + 1))
        rss_warm = server.rss()
        print(
            f"warm-up: {warm.sent} requests, RSS {mib(rss_warm)}; load {args.seconds:.0f} s",
            flush=True,
        )
        before = access_statuses(server.log())
        t0 = time.monotonic()
        samples: list[tuple[float, int]] = []
        stats = asyncio.run(
            sampled(
                load(server.base, kinds, args.clients, args.seconds, args.seed + 2),
                server,
                samples,
            )
        )
        elapsed = time.monotonic() - t0
        rss_end = server.rss()
        logged = access_statuses(server.log()) - before
        growth = (rss_end - rss_warm) / rss_warm
        answered = sum(stats.statuses.values())
        fivexx = sum(n for s, n in stats.statuses.items() if s >= 500) + sum(
            n for s, n in logged.items() if s >= 500
        )
        checks["load: every request answered"] = not stats.errors and answered == stats.sent
        checks["load: no 5xx (client or server log)"] = fivexx == 0
        checks["load: every status as expected"] = not stats.unexpected
        checks[f"load: RSS growth after warm-up < {args.rss_tolerance:.0%}"] = (
            growth < args.rss_tolerance
        )
        lat = stats.all_latencies()
        lines += [
            "## Load",
            "",
            f"- {args.clients} clients, {elapsed:.1f} s after a {args.warmup:.0f} s warm-up "
            f"({warm.sent} requests)",
            f"- requests sent: {stats.sent}, answered: {answered} ({answered / elapsed:.1f}/s), "
            f"unanswered (exceptions): {sum(stats.errors.values())} {dict(stats.errors) or ''}",
            f"- by status: {dict(sorted(stats.statuses.items()))}; server access log: "
            f"{dict(sorted(logged.items()))}",
            f"- unexpected statuses: {dict(stats.unexpected) or 'none'}",
            f"- latency p50 {np.percentile(lat, 50) * 1000:.0f} ms, p99 "
            f"{np.percentile(lat, 99) * 1000:.0f} ms, max {lat.max() * 1000:.0f} ms",
            f"- server RSS (all processes): start {mib(rss_start)}, after warm-up "
            f"{mib(rss_warm)}, end {mib(rss_end)} ({growth:+.1%} after warm-up)",
            "- RSS during the load (s: MiB): "
            + ", ".join(f"{t:.0f}: {rss / 2**20:.0f}" for t, rss in samples),
            "",
            "| kind | expected | sent | p50 ms | p99 ms | digit correct |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for kind in kinds:
            kl = np.asarray(stats.latencies.get(kind.name, [0.0]))
            acc = (
                f"{stats.correct[kind.name]}/{stats.labelled[kind.name]}"
                if stats.labelled[kind.name]
                else ""
            )
            lines.append(
                f"| {kind.name} | {kind.expect} | {len(stats.latencies.get(kind.name, []))} | "
                f"{np.percentile(kl, 50) * 1000:.0f} | {np.percentile(kl, 99) * 1000:.0f} | {acc} |"
            )
        print("\n".join(lines), flush=True)

        print("disconnects mid-upload...", flush=True)
        disc = asyncio.run(disconnects(server, kinds, repeat=10))
        checks["disconnects: server healthy, no 5xx logged"] = disc.pop("ok")
        lines += ["", "## Disconnects mid-upload", "", *(f"- {k}: {v}" for k, v in disc.items())]

        print("slow clients...", flush=True)
        slow = asyncio.run(
            slow_clients(server, kinds, args.slow_clients, args.slow_seconds, 8, args.seed + 3)
        )
        checks["slow clients: normal traffic answered, trickled requests too"] = slow.pop("ok")
        lines += ["", "## Slow clients", "", *(f"- {k}: {v}" for k, v in slow.items())]

        rss_final = server.rss()
        lines += ["", f"Server RSS before shutdown: {mib(rss_final)}"]
        print("graceful shutdown...", flush=True)
        shut = asyncio.run(graceful_shutdown(server, kinds, in_flight=8))
        checks["shutdown: in-flight 200, no 5xx, nothing left hanging, exit"] = shut.pop("ok")
        checks["shutdown: new connections refused or closed within 1 s"] = shut.pop("prompt")
        lines += [
            "",
            "## Graceful shutdown (SIGTERM under load)",
            "",
            *(f"- {k}: {v}" for k, v in shut.items()),
        ]
        errors_logged = len(re.findall(r"Traceback|unhandled error", server.log()))
        lines += ["", f"Tracebacks / 'unhandled error' lines in the server log: {errors_logged}"]
        checks["server log: no tracebacks"] = errors_logged == 0
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()

    header = [
        "# Soak test",
        "",
        f"- command: `python bench/soak.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, commit {commit()}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}; server: `python -m service --workers "
        f"{args.workers}`, MNIST_DEVICE=cpu, every shipped model, "
        f"MNIST_MAX_REQUEST_BYTES={MAX_REQUEST_BYTES}, MNIST_MAX_UPLOAD_BYTES={MAX_UPLOAD_BYTES}",
        f"- server log: {server.log_path}",
        "",
        "## Checks",
        "",
        *(f"- [{'x' if ok else ' '}] {name}" for name, ok in checks.items()),
        "",
    ]
    report = "\n".join(header + lines) + "\n"
    print()
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0 if all(checks.values()) else 1


def commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
