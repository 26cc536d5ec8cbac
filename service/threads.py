"""How many CPU threads each worker process gives torch (and OpenCV), whatever launched it.

Every worker process has its own thread pools. Left at their defaults, each one sizes them to
the whole machine, so N workers run N x cores threads on the cores: on 2 cores,
`uvicorn service.app:app --workers 2` answered a single request 3-4x slower than with one
thread per worker. So the app chooses, in its lifespan:

    threads = max(1, CPUs this process may use // worker processes)

- CPUs it may use: the smaller of its CPU affinity (`taskset`, `docker --cpuset-cpus`) and the
  cgroup CPU quota (`docker --cpus`, a Kubernetes CPU limit), v2 `cpu.max` or v1
  `cpu.cfs_quota_us / cpu.cfs_period_us`, rounded down (at least 1).
- Worker processes: the `--workers N` / `-w N` of the uvicorn, gunicorn or granian process
  that started this one (read from its command line), else GUNICORN_CMD_ARGS, else
  WEB_CONCURRENCY (which uvicorn and gunicorn also read as their default worker count, and
  which `python -m service --workers N` sets for its workers), else 1.
- MNIST_TORCH_THREADS, when set (> 0), wins over all of it.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

CGROUP_ROOT = Path("/sys/fs/cgroup")
LAUNCHERS = ("uvicorn", "gunicorn", "granian")
T = TypeVar("T")


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    why: str  # for the start-up log line


def affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _quota(path: Path) -> float | None:
    """CPUs allowed by one cgroup directory's quota, None when it sets none."""
    try:
        if (path / "cpu.max").is_file():  # v2: "max 100000" or "150000 100000"
            quota, _, period = (path / "cpu.max").read_text().partition(" ")
            if quota.strip() == "max":
                return None
            return int(quota) / int(period)
        if (path / "cpu.cfs_quota_us").is_file():  # v1: -1 means no limit
            quota_us = int((path / "cpu.cfs_quota_us").read_text())
            if quota_us <= 0:
                return None
            return quota_us / int((path / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: str | None = None) -> float | None:
    """The tightest CPU quota over this process's cgroup and its ancestors, in CPUs."""
    if self_cgroup is None:
        try:
            self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    limits = []
    for line in self_cgroup.splitlines():
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2 (the unified hierarchy)
            mounts = [root]
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            mounts = [root / "cpu,cpuacct", root / "cpu"]
        else:
            continue
        for mount in mounts:
            # In a container the cgroup path may be the host's while the mount already is the
            # container's own cgroup: look at the full path, each ancestor, and the mount.
            path = mount / rel.lstrip("/")
            while True:
                if (quota := _quota(path)) is not None:
                    limits.append(quota)
                if path == mount or mount not in path.parents:
                    break
                path = path.parent
    return min(limits) if limits else None


def _workers_flag(args: Sequence[str]) -> int | None:
    """N from `--workers N`, `--workers=N`, `-w N` or `-wN` in a command line."""
    for i, arg in enumerate(args):
        value = None
        if arg in ("--workers", "-w") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--workers="):
            value = arg.partition("=")[2]
        elif arg.startswith("-w") and not arg.startswith("--") and len(arg) > 2:
            value = arg[2:]
        if value is not None and value.isdigit() and int(value) >= 1:
            return int(value)
    return None


def _launcher(args: Sequence[str]) -> str | None:
    """ "uvicorn" or "gunicorn" for their command lines (`uvicorn ...`, `python -m gunicorn`)."""
    for i, arg in enumerate(args[:3]):
        if Path(arg).name in LAUNCHERS:
            return Path(arg).name
        if arg == "-m" and i + 1 < len(args) and args[i + 1] in LAUNCHERS:
            return args[i + 1]
    return None


def worker_count(parent_args: Sequence[str], env: Mapping[str, str]) -> tuple[int, str]:
    """Worker processes sharing the CPUs, and where that number came from."""
    launcher = _launcher(parent_args)
    if launcher and (n := _workers_flag(parent_args)) is not None:
        return n, f"{launcher} --workers"
    try:
        gunicorn_args = shlex.split(env.get("GUNICORN_CMD_ARGS", ""))
    except ValueError:  # unbalanced quotes: gunicorn itself would refuse it
        gunicorn_args = []
    if launcher == "gunicorn" and (n := _workers_flag(gunicorn_args)) is not None:
        return n, "GUNICORN_CMD_ARGS"
    concurrency = env.get("WEB_CONCURRENCY", "").strip()
    if concurrency.isdigit() and int(concurrency) >= 1:
        return int(concurrency), "WEB_CONCURRENCY"
    return 1, "one process"


def choose(explicit: int, cpus: float, workers: int) -> int:
    """Threads per worker: the explicit setting, else the usable CPUs shared by the workers."""
    if explicit > 0:
        return explicit
    return max(1, math.floor(cpus) // max(1, workers))


def parent_args() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def decide(explicit: int) -> ThreadChoice:
    """The thread count for this worker process, with a one-line reason."""
    if explicit > 0:
        return ThreadChoice(explicit, "MNIST_TORCH_THREADS")
    affinity, quota = affinity_cpus(), cgroup_cpu_limit()
    cpus = max(1.0, min(affinity, quota if quota is not None else math.inf))
    workers, source = worker_count(parent_args(), os.environ)
    quota_text = "no cgroup quota" if quota is None else f"cgroup quota {quota:g}"
    return ThreadChoice(
        choose(0, cpus, workers),
        f"{cpus:g} usable CPUs (affinity {affinity}, {quota_text}) / {workers} worker(s) "
        f"({source})",
    )


def apply(choice: ThreadChoice) -> int:
    """Size torch's and OpenCV's pools; returns what torch reports afterwards."""
    import torch

    torch.set_num_threads(choice.threads)
    try:
        import cv2  # the upload pipeline's resizes and filters have their own pool
    except ImportError:
        pass
    else:
        cv2.setNumThreads(choice.threads)
    return torch.get_num_threads()


class PreparePool:
    """The worker's threads for preparing uploads (decode and pipeline), first come first served.

    Starlette's default pool has 40 threads: with 30 canvas uploads in flight, 30 threads take
    turns at the GIL in 5 ms slices and each upload finishes late, some very late. As many
    threads as the worker's share of the CPUs run the same work in arrival order, so an
    upload's wait is the queue ahead of it, not a lottery.
    """

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="prepare")

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        context = contextvars.copy_context()  # as run_in_threadpool: the caller's contextvars
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, partial(context.run, fn, *args))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
