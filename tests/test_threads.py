"""The per-worker thread count (service/threads.py): the rules as a table, then real launchers."""

from __future__ import annotations

import asyncio
import contextvars
import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from service import threads
from tests.conftest import REPO_ROOT
from tests.servers import free_port, stop, wait_ready

UVICORN = [sys.executable, "-m", "uvicorn"]


@pytest.mark.parametrize(
    ("parent", "env", "expected"),
    [
        (["/venv/bin/uvicorn", "service.app:app", "--workers", "2"], {}, 2),
        (["/usr/bin/python3", "-m", "uvicorn", "service.app:app", "--workers=3"], {}, 3),
        (["gunicorn", "-w", "4", "-k", "uvicorn.workers.UvicornWorker", "x:app"], {}, 4),
        (["gunicorn", "-w5", "x:app"], {}, 5),
        (["/venv/bin/granian", "--interface", "asgi", "--workers", "2", "x:app"], {}, 2),
        # The launcher's own flag wins over the environment, as it does for the launcher.
        (["uvicorn", "x:app", "--workers", "2"], {"WEB_CONCURRENCY": "8"}, 2),
        (["gunicorn", "x:app"], {"GUNICORN_CMD_ARGS": "--bind :80 --workers 6"}, 6),
        (["gunicorn", "x:app"], {"WEB_CONCURRENCY": "3"}, 3),
        # `python -m service --workers 2` passes the count on in WEB_CONCURRENCY.
        (["python", "-m", "service", "--workers", "2"], {"WEB_CONCURRENCY": "2"}, 2),
        # Not a launcher: its -w / --workers mean something else.
        (["python", "-m", "myscript", "--workers", "4"], {}, 1),
        (["bash"], {"GUNICORN_CMD_ARGS": "-w 4"}, 1),
        (["uvicorn", "x:app"], {}, 1),
        (["uvicorn", "x:app", "--workers", "zero"], {"WEB_CONCURRENCY": "junk"}, 1),
        ([], {"WEB_CONCURRENCY": "0"}, 1),
    ],
)
def test_worker_count(parent: list[str], env: dict[str, str], expected: int) -> None:
    assert threads.worker_count(parent, env)[0] == expected


@pytest.mark.parametrize(
    ("explicit", "cpus", "workers", "expected"),
    [
        (0, 2, 1, 2),
        (0, 2, 2, 1),
        (0, 16, 4, 4),
        (0, 16, 12, 1),
        (0, 2, 4, 1),  # more workers than CPUs: still one thread each
        (0, 1.5, 1, 1),  # a fractional quota rounds down
        (0, 3.9, 2, 1),
        (3, 2, 2, 3),  # MNIST_TORCH_THREADS wins
    ],
)
def test_choose(explicit: int, cpus: float, workers: int, expected: int) -> None:
    assert threads.choose(explicit, cpus, workers) == expected


def _write(path: Path, text: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for line in text.split(";"):
        name, _, value = line.partition("=")
        (path / name).write_text(value + "\n")


@pytest.mark.parametrize(
    ("files", "self_cgroup", "expected"),
    [
        ({"": "cpu.max=max 100000"}, "0::/\n", None),  # v2, no limit
        ({"": "cpu.max=150000 100000"}, "0::/\n", 1.5),  # v2, docker --cpus 1.5
        # v2, a limit on an ancestor of the process's cgroup, and a looser one below it
        (
            {"kube": "cpu.max=200000 100000", "kube/pod": "cpu.max=400000 100000"},
            "0::/kube/pod\n",
            2.0,
        ),
        # v1 (cgroupfs as Docker mounts it), the cpu controller beside others
        (
            {"cpu,cpuacct": "cpu.cfs_quota_us=300000;cpu.cfs_period_us=100000"},
            "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n",
            3.0,
        ),
        ({"cpu": "cpu.cfs_quota_us=-1;cpu.cfs_period_us=100000"}, "1:cpu:/\n", None),
        # v1 with the host's path in /proc/self/cgroup and the quota on the container's mount
        ({"cpu": "cpu.cfs_quota_us=50000;cpu.cfs_period_us=100000"}, "1:cpu:/docker/x\n", 0.5),
        ({}, "0::/\n", None),  # no cgroup files at all
    ],
)
def test_cgroup_cpu_limit(
    tmp_path: Path, files: dict[str, str], self_cgroup: str, expected: float | None
) -> None:
    for rel, text in files.items():
        _write(tmp_path / rel, text)
    assert threads.cgroup_cpu_limit(tmp_path, self_cgroup) == expected


def test_explicit_setting_wins() -> None:
    choice = threads.decide(5)
    assert choice.threads == 5 and "MNIST_TORCH_THREADS" in choice.why


def _torch_threads(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    match = re.search(r"^mnist_torch_threads(?:\{[^}]*\})? ([\d.]+)$", text, re.M)
    assert match, text[:500]
    return float(match.group(1))


def _expected(workers: int) -> int:
    cpus = min(threads.affinity_cpus(), threads.cgroup_cpu_limit() or float("inf"))
    return max(1, int(cpus) // workers)


LAUNCHERS = {
    "uvicorn --workers 2": [*UVICORN, "service.app:app", "--workers", "2"],
    "gunicorn -w 2, uvicorn workers": [
        sys.executable,
        "-m",
        "gunicorn",
        "service.app:app",
        "-w",
        "2",
        "-k",
        "uvicorn.workers.UvicornWorker",
    ],
    "python -m service --workers 2": [sys.executable, "-m", "service", "--workers", "2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_two_workers_share_the_cpus(launcher: str) -> None:
    """A real launcher on loopback with the thread count unset: each of its two workers sizes
    its torch pool to half the usable CPUs and says so (metric and start-up log line)."""
    port = free_port()
    bind = (
        ["--bind", f"127.0.0.1:{port}"]
        if "gunicorn" in launcher
        else ["--host", "127.0.0.1", "--port", str(port)]
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("WEB_CONCURRENCY", "MNIST_TORCH_THREADS")
    }
    proc = subprocess.Popen(
        [*LAUNCHERS[launcher], *bind],
        cwd=REPO_ROOT,
        env={**env, "MNIST_DEVICE": "cpu", "MNIST_MODELS": "cnn", "MNIST_LOG_LEVEL": "info"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, base, timeout=120)
        # Fresh connections land on either worker: all of them must report the same count.
        assert {_torch_threads(base) for _ in range(6)} == {_expected(2)}
    finally:
        out = stop(proc)
    lines = [line for line in out.splitlines() if "torch threads:" in line]
    assert len(lines) == 2, out[-3000:]
    assert all(f"torch threads: {_expected(2)} (" in line for line in lines), lines
    assert all("/ 2 worker(s)" in line for line in lines), lines
    # One access line per request, the service's own JSON one: none of uvicorn's plain ones.
    assert '"GET /metrics HTTP/1.1" 200' not in out, out[-2000:]
    assert '"path":"/metrics"' in out, out[-2000:]


@pytest.mark.anyio
async def test_prepare_pool_keeps_arrival_order_and_the_callers_context() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    request_id.set("r-1")
    pool = threads.PreparePool(1)
    seen: list[tuple[int, str, str]] = []

    def prepare(i: int) -> int:
        seen.append((i, request_id.get(), threading.current_thread().name))
        return i * i

    try:
        assert await asyncio.gather(*(pool.run(prepare, i) for i in range(6))) == [
            i * i for i in range(6)
        ]
    finally:
        pool.shutdown()
    assert [i for i, _, _ in seen] == list(range(6))  # one thread: first come, first served
    assert {rid for _, rid, _ in seen} == {"r-1"}
    assert all(name.startswith("prepare") for _, _, name in seen)


@pytest.mark.anyio
async def test_uploads_are_prepared_on_the_workers_prepare_threads() -> None:
    from tests.conftest import app_client

    canvas = Image.new("RGBA", (300, 300), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).line([(150, 40), (150, 260)], fill=(0, 0, 0, 255), width=24)
    body = io.BytesIO()
    canvas.save(body, "PNG")
    async with app_client(torch_threads=1) as client:
        before = {t.name for t in threading.enumerate()}
        answer = await client.post("/predict", files={"file": ("one.png", body.getvalue())})
        assert answer.status_code == 200 and answer.json()["digit"] == 1
        names = {t.name for t in threading.enumerate()} - before
    assert any(name.startswith("prepare") for name in names)
