"""Where the service's latency tail comes from: client (wrk) vs server (/metrics) vs kernel.

    python bench/gpu_tail.py --device cuda --out gpu-out            # on the GPU machine
    python bench/gpu_tail.py --device cpu --plan smoke --duration 1 --out /tmp/tail  # test

For every step it reads the kernel's TCP counters (/proc/net/snmp, /proc/net/netstat,
/proc/net/softnet_stat), the CPU time (/proc/stat) and the service's /metrics, drives one wrk
load, then reads them all again. Per step it reports, side by side:

- client side: wrk's latency percentiles on a fine grid (a Lua `done()` prints them). These
  are coordinated-omission corrected by wrk itself (see raw_latencies), so plans "confirm" and
  "smoke" also time every request in Lua, with one connection per wrk thread;
- server side: the deltas of the request-duration histogram of the endpoint (from the ASGI
  call to the response's end, summed over workers) and of the forward-pass histogram, as
  p50/p90/p99 (interpolated inside Prometheus buckets) and the share above 100 and 250 ms;
- the TCP counters that moved (retransmits, RTO timeouts, delayed ACKs, listen overflows...).

If the server says its requests took < 50 ms while wrk sees 200 or 400 ms, the time is spent
outside the app: in the network stack, the kernel, or before uvicorn hands the request over.

The servers (plan "full"): the serve_bench set-up (`python -m service`, 4 workers, batching
on, cnn and mlp), the same with the warm-up run again on the batcher's inference thread, with
cudnn.benchmark off, and with CUDA's blocking synchronisation instead of spinning (each set in
every worker by a generated sitecustomize; service/ is not edited), 1 worker, the CPU instead
of CUDA, and uvicorn started directly with a larger listen backlog. First, without HTTP: the
cnn's first pass per batch size on a fresh thread after the service's warm-up (cuDNN's cache).
One step under load is "probed": `ss -ti` of the server's connections (when ss is installed)
and py-spy dumps and a short raw profile of the workers.
Plan "confirm": baseline vs the two fixes found (warm-up on the inference thread; the cuDNN v7
API), with per-request client timing. Results and conclusions: bench/results/gpu-2026-12-02/.
Every step is appended to tail.jsonl as it ends; the table is written at the end (tail.md).

Measured at commit 5b16e99, when the service still turned cuDNN's autotuner on; it now turns it
off (service/predictor.py), so today's "baseline" server is already the fixed one and the
"cudnn.benchmark off" variant no longer differs from it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from serve_bench import LUA, free_port, scenarios  # noqa: E402

from training.data import load_split  # noqa: E402

PERCENTILES = [10, 25, *[50 + 0.5 * i for i in range(100)], 99.9, 99.99]

LUA_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("TAIL summary %d %d %d %d %d %d %d\\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("TAIL stats %d %d %.1f %.1f\\n", latency.min, latency.max,
    latency.mean, latency.stdev))
  for _, p in ipairs({PCTS}) do
    io.write(string.format("TAIL pct %s %d\\n", p, latency:percentile(p)))
  end
  for _, t in ipairs(threads) do
    local l = t:get("lat")
    if l then
      for i = 1, #l do io.write("TAIL r ", l[i], "\\n") end
    end
  end
end
"""
# With one connection per wrk thread (-t = -c): each request's own latency, measured here from
# request() (called just before wrk writes it) to response(), on the monotonic clock. wrk's own
# statistics cannot give this: see raw_latencies.
LUA_RAW = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } tail_timespec;
int clock_gettime(int clk_id, tail_timespec *tp);
]]
local ts = ffi.new("tail_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end
local t0 = nil
lat = {}
request = function()
  t0 = now_us()
  return wrk.format()
end
response = function(status, headers, body)
  if t0 then lat[#lat + 1] = now_us() - t0; t0 = nil end
end
"""
LUA_THREADS = """
threads = {}
setup = function(thread) table.insert(threads, thread) end
"""

# sitecustomize for the variant servers, put on their PYTHONPATH (the service is not edited):
# - TAIL_CUDA_SCHED=blocking: before torch makes its CUDA context, ask the driver for blocking
#   synchronisation (CU_CTX_SCHED_BLOCKING_SYNC = 4) instead of the default (one context on 16
#   cores: spin-wait), then log the flags the context really got;
# - TAIL_PATCH=warm_infer_thread: when MicroBatcher.start runs, run warm_every_size once more
#   ON THE BATCHER'S INFERENCE THREAD (PyTorch's cuDNN v8 benchmark cache is thread_local, so
#   the service's own warm-up, on the event loop's thread, does not reach that thread);
# - TAIL_PATCH=cudnn_benchmark_off: torch.backends.cudnn.benchmark = False after load_all.
SITECUSTOMIZE = r"""
import ctypes, os, sys, threading, time


def _log(text):
    with open(os.environ.get("TAIL_LOG", "/dev/null"), "a") as log:
        log.write(f"pid {os.getpid()} {text}\n")


_sched = os.environ.get("TAIL_CUDA_SCHED")
if _sched:
    try:
        _cu = ctypes.CDLL("libcuda.so.1")
        _dev = ctypes.c_int()
        _rc0 = _cu.cuInit(0)
        _cu.cuDeviceGet(ctypes.byref(_dev), 0)
        _flags = {"spin": 1, "yield": 2, "blocking": 4}[_sched]
        _set = getattr(_cu, "cuDevicePrimaryCtxSetFlags_v2", None) or _cu.cuDevicePrimaryCtxSetFlags
        _rc = _set(_dev, _flags)

        def _report():
            for _ in range(90):
                f, a = ctypes.c_uint(), ctypes.c_int()
                _cu.cuDevicePrimaryCtxGetState(_dev, ctypes.byref(f), ctypes.byref(a))
                if a.value:
                    _log(f"cuInit {_rc0} setflags {_rc} ctx flags {f.value} active {a.value}")
                    return
                time.sleep(2)

        threading.Thread(target=_report, daemon=True).start()
    except Exception as exc:  # the server must start regardless; the log says it failed
        _log(f"cuda sched failed: {exc!r}")

_patch = os.environ.get("TAIL_PATCH")


def warm_every_size(predictor, max_batch: int) -> None:
    # One pass at every batch size up to max_batch on this thread: the start-up warm-up the
    # service had (Predictor.warm_up) when this was measured, at commit 5b16e99.
    import numpy as np
    import torch

    from service.pixels import to_model_input

    with torch.inference_mode():
        for size in range(1, max_batch + 1):
            zeros = to_model_input(np.zeros((size, 28, 28), np.uint8))
            predictor.model(predictor._model_input(zeros))
    if predictor.device.type == "cuda":
        torch.cuda.synchronize(predictor.device)


def _after(module):
    if _patch == "warm_infer_thread" and module.__name__ == "service.batcher":
        original = module.MicroBatcher.start

        def start(self):
            original(self)

            def warm():
                registry = sys.modules["service.app"].app.state.registry
                for p in registry.all():
                    if p.key == self.name:
                        t = time.perf_counter()
                        warm_every_size(p, self.max_batch)
                        _log(f"warmed {p.key} on {p.device} in thread "
                             f"{threading.current_thread().name}: {time.perf_counter() - t:.2f} s")

            self._executor.submit(warm).result()

        module.MicroBatcher.start = start
        _log("patched MicroBatcher.start")
    if _patch == "cudnn_benchmark_off" and module.__name__ == "service.predictor":
        original_load_all = module.load_all

        def load_all(*args, **kwargs):
            import torch
            loaded = original_load_all(*args, **kwargs)
            torch.backends.cudnn.benchmark = False
            _log("cudnn.benchmark = False")
            return loaded

        module.load_all = load_all


if _patch:
    import importlib.abc

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in ("service.batcher", "service.predictor"):
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
            else:
                return None
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                _after(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Finder())
"""


@dataclass
class Server:
    label: str
    workers: int = 4
    device: str = "cuda"
    env: dict[str, str] = field(default_factory=dict)
    backlog: int | None = None  # set: run `python -m uvicorn` directly with --backlog
    steps: list[tuple] = field(default_factory=list)  # (model, scenario, conns, tag, probe)


def plans(device: str, plan: str) -> list[Server]:
    png, js = "PNG /predict", "JSON /predict"
    if plan == "smoke":
        return [
            Server(
                "w2",
                2,
                device,
                steps=[
                    ("cnn", png, 8, "run1", False),
                    ("cnn", js, 8, "run1", True),
                    ("mlp", js, 8, "run1", False),
                ],
            ),
            Server(
                "w2-warm-infer-thread",
                2,
                device,
                env={"TAIL_PATCH": "warm_infer_thread"},
                steps=[("cnn", js, 8, "run1-cold", False)],
            ),
            Server(
                "w2-backlog4096", 2, device, backlog=4096, steps=[("cnn", js, 8, "run1", False)]
            ),
        ]
    cold = ("cnn", png, 64, "run1-cold", False)  # the first load on a fresh server: no warm-up
    if plan == "confirm":
        # Second call: the same loads with wrk's measured latencies recovered, baseline vs the
        # two fixes (warm-up on the inference thread; the cuDNN v7 API, whose cache is global).
        return [
            Server(
                "w4",
                4,
                device,
                steps=[
                    cold,
                    ("cnn", png, 64, "run2", False),
                    ("cnn", js, 64, "run1", False),
                    ("mlp", js, 64, "run1", False),
                ],
            ),
            Server(
                "w4-warm-infer-thread",
                4,
                device,
                env={"TAIL_PATCH": "warm_infer_thread"},
                steps=[cold, ("cnn", js, 64, "run1", False)],
            ),
            Server(
                "w4-cudnn-v8-api-disabled",
                4,
                device,
                env={"TORCH_CUDNN_V8_API_DISABLED": "1"},
                steps=[cold, ("cnn", js, 64, "run1", False)],
            ),
        ]
    servers = [
        Server(
            "w4",
            4,
            device,
            steps=[
                cold,
                ("cnn", png, 64, "run2", False),
                ("cnn", js, 64, "run1", False),
                ("cnn", js, 64, "run2", False),
                ("mlp", png, 64, "run1", False),
                ("mlp", js, 64, "run1", False),
                ("cnn", png, 16, "run1", False),
                ("cnn", js, 16, "run1", False),
                ("cnn", js, 64, "probed", True),
            ],
        ),
        Server(
            "w4-warm-infer-thread",
            4,
            device,
            env={"TAIL_PATCH": "warm_infer_thread"},
            steps=[cold, ("cnn", png, 64, "run2", False), ("cnn", js, 64, "run1", False)],
        ),
        Server(
            "w4-cudnn-benchmark-off",
            4,
            device,
            env={"TAIL_PATCH": "cudnn_benchmark_off"},
            steps=[cold, ("cnn", js, 64, "run1", False)],
        ),
        Server("w1", 1, device, steps=[cold, ("cnn", js, 64, "run1", False)]),
    ]
    if device == "cuda":
        servers += [
            Server("w4-cpu-int8", 4, "cpu", steps=[cold, ("cnn", js, 64, "run1", False)]),
            Server(
                "w4-cuda-blocking-sync",
                4,
                device,
                env={"TAIL_CUDA_SCHED": "blocking"},
                steps=[cold, ("cnn", js, 64, "run1", False)],
            ),
        ]
    servers.append(
        Server("w4-backlog4096", 4, device, backlog=4096, steps=[("cnn", js, 64, "run1", False)])
    )
    return servers


# --- the cuDNN autotuner's cache and threads, without HTTP --------------------------------


def cudnn_test(device: str, max_batch: int) -> dict:
    """The service's cnn Predictor: warmed on this thread (as the service's lifespan did),
    then one pass at every batch size on this thread, on a fresh thread (like the batcher's
    inference thread) twice, and on another fresh thread with cudnn.benchmark off."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    from service.pixels import to_model_input
    from service.predictor import Predictor

    torch.backends.cudnn.benchmark = True  # what load_all sets on CUDA
    predictor = Predictor.load(REPO / "weights" / "cnn.pt", torch.device(device))
    sizes = range(1, max_batch + 1)

    def timed() -> list[float]:
        out = []
        for n in sizes:
            start = time.perf_counter()
            predictor.predict(np.zeros((n, 28, 28), np.uint8))
            out.append(round(1000 * (time.perf_counter() - start), 3))
        return out

    start = time.perf_counter()
    with torch.inference_mode():  # the service's start-up warm-up at commit 5b16e99
        for n in sizes:
            zeros = to_model_input(np.zeros((n, 28, 28), np.uint8))
            predictor.model(predictor._model_input(zeros))
    if predictor.device.type == "cuda":
        torch.cuda.synchronize(predictor.device)
    result: dict = {"warm_up_s": round(time.perf_counter() - start, 3)}
    result["main_thread_after_warm_up"] = timed()
    with ThreadPoolExecutor(1, thread_name_prefix="fresh") as pool:
        result["fresh_thread_1st"] = pool.submit(timed).result()
        result["fresh_thread_2nd"] = pool.submit(timed).result()
    torch.backends.cudnn.benchmark = False
    with ThreadPoolExecutor(1, thread_name_prefix="fresh-nobench") as pool:
        result["fresh_thread_benchmark_off_1st"] = pool.submit(timed).result()
    result["torch"] = torch.__version__
    result["cudnn"] = torch.backends.cudnn.version()
    return result


def run_cudnn_test(device: str, max_batch: int, env: dict[str, str], label: str) -> dict | None:
    cmd = [sys.executable, __file__, "--cudnn-test", str(max_batch), "--device", device]
    r = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **env}, cwd=REPO, timeout=240
    )
    line = next((x for x in r.stdout.splitlines() if x.startswith("CUDNN ")), None)
    if line is None:
        print(f"cudnn test {label} failed (rc {r.returncode}):\n{r.stderr[-3000:]}", flush=True)
        return None
    result = {"kind": "cudnn_test", "label": label, "env": env, **json.loads(line[6:])}
    print(f"cudnn test {label}: warm_up on the main thread {result['warm_up_s']} s", flush=True)
    for key, times in result.items():
        if isinstance(times, list):
            print(
                f"  {key:32s} sum {sum(times):8.1f} ms  max {max(times):7.1f} ms  "
                f"median {sorted(times)[len(times) // 2]:6.2f} ms  "
                f"passes > 10 ms: {sum(t > 10 for t in times)}",
                flush=True,
            )
    return result


# --- counters ---------------------------------------------------------------------------


def proc_pairs(path: str) -> dict[str, int]:
    """/proc/net/snmp and /proc/net/netstat: header line, value line, per protocol."""
    out: dict[str, int] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        proto, *names = head.split()
        _, *values = vals.split()
        for name, value in zip(names, values, strict=False):
            if value.lstrip("-").isdigit():
                out[f"{proto.rstrip(':')}.{name}"] = int(value)
    return out


def counters() -> dict[str, int]:
    out = {**proc_pairs("/proc/net/snmp"), **proc_pairs("/proc/net/netstat")}
    try:
        rows = [line.split() for line in Path("/proc/net/softnet_stat").read_text().splitlines()]
        out["softnet.dropped"] = sum(int(r[1], 16) for r in rows)
        out["softnet.time_squeeze"] = sum(int(r[2], 16) for r in rows)
    except (OSError, IndexError, ValueError):
        pass
    try:
        cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        ticks = [int(x) for x in cpu]
        out["cpu.total"] = sum(ticks[:8])
        out["cpu.idle"] = ticks[3] + ticks[4]
        out["cpu.steal"] = ticks[7] if len(ticks) > 7 else 0
    except (OSError, IndexError, ValueError):
        pass
    return out


def counter_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


# --- /metrics -----------------------------------------------------------------------------


def scrape(base: str) -> dict:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    samples: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def hist_delta(before: dict, after: dict, name: str, **match: str) -> tuple[list, float, float]:
    """Cumulative (le, count) deltas of one histogram's series matching `match`, summed."""
    buckets: dict[float, float] = {}
    count = total = 0.0
    for (sname, labels), value in after.items():
        lab = dict(labels)
        if any(lab.get(k) != v for k, v in match.items()):
            continue
        delta = value - before.get((sname, labels), 0.0)
        if sname == f"{name}_bucket":
            le = float(lab["le"])
            buckets[le] = buckets.get(le, 0.0) + delta
        elif sname == f"{name}_count":
            count += delta
        elif sname == f"{name}_sum":
            total += delta
    return sorted(buckets.items()), count, total


def hist_quantile(buckets: list, q: float) -> float | None:
    """Prometheus' histogram_quantile: linear inside the bucket that holds rank q."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if le == float("inf"):
                return lower
            inside = cum - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, cum
    return lower


def share_above(buckets: list, seconds: float) -> float | None:
    if not buckets or buckets[-1][1] <= 0:
        return None
    cum = dict(buckets).get(seconds)
    return None if cum is None else 1.0 - cum / buckets[-1][1]


def metric_delta(before: dict, after: dict, name: str) -> dict[str, float]:
    out = {}
    for (sname, labels), value in after.items():
        if sname == name:
            d = value - before.get((sname, labels), 0.0)
            if d:
                out[",".join(f"{k}={v}" for k, v in labels)] = d
    return out


# --- processes ----------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"resource_tracker" not in cmd:
            kids.append(int(entry.name))
    return sorted(kids)


def start(server: Server, models: list[str], tmp: Path, log) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "MNIST_BATCHING": "true",
        "MNIST_DEVICE": server.device,
        "MNIST_LOG_LEVEL": "warning",
        "MNIST_MAX_BATCH_SIZE": "256",
        "MNIST_MODELS": ",".join(models),
        "MNIST_MODEL": models[0],
        **server.env,
    }
    if any(k.startswith("TAIL_") for k in server.env):
        site = tmp / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
        env["TAIL_LOG"] = str(tmp / f"variant-{server.label}.log")
    common = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(server.workers)]
    if server.backlog:
        # What `python -m service` does before uvicorn.run, by hand.
        if server.workers > 1:
            env["MNIST_TORCH_THREADS"] = str(max(1, (os.cpu_count() or 1) // server.workers))
            env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mnist-metrics-")
        cmd = [sys.executable, "-m", "uvicorn", "service.app:app", *common]
        cmd += ["--backlog", str(server.backlog), "--log-level", "warning", "--no-access-log"]
    else:
        cmd = [sys.executable, "-m", "service", *common, "--log-level", "warning"]
    log.write(f"\n=== server {server.label}: {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {server.label} exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health/ready", timeout=1).status_code == 200:
                # Every worker must be up, not only the one that answered.
                for _ in range(60):
                    if server.workers == 1 or len(children(proc.pid)) >= server.workers:
                        break
                    time.sleep(0.5)
                for _ in range(4 * server.workers):
                    httpx.get(f"{base}/health/ready", timeout=10)
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"server {server.label} did not become ready")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# --- wrk ----------------------------------------------------------------------------------


def wrk(
    base: str,
    scenario,
    model: str,
    conns: int,
    seconds: int,
    threads: int,
    tmp: Path,
    raw: bool = False,
):
    body = tmp / f"{abs(hash(scenario.name))}.body"
    body.write_bytes(scenario.body)
    script = tmp / f"{abs(hash(scenario.name))}.tail.lua"
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in scenario.headers.items())
    lua = LUA.format(body=body, ctype=scenario.ctype, extra=headers)
    if raw:
        threads = conns  # one connection per thread: request() and response() alternate
        lua += LUA_RAW
    lua += LUA_THREADS + LUA_DONE.replace("PCTS", ", ".join(f"{p:g}" for p in PERCENTILES))
    script.write_text(lua)
    url = base + scenario.path.format(model=model)
    if "{model}" not in scenario.path:
        url += f"?model={model}"
    cmd = ["wrk", f"-t{min(threads, conns)}", f"-c{conns}", f"-d{seconds}s", "--latency"]
    cmd += ["--timeout", "10s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    pct = {float(p): int(us) / 1000 for p, us in re.findall(r"^TAIL pct (\S+) (\d+)", out, re.M)}
    summary = [int(x) for x in re.search(r"^TAIL summary (.*)$", out, re.M).group(1).split()]
    stats = re.search(r"^TAIL stats (.*)$", out, re.M).group(1).split()
    values = [int(us) for us in re.findall(r"^TAIL r (\d+)", out, re.M)]
    raw = raw_latencies(values, summary[1], summary[0], conns) if values else {}
    return {
        "requests": summary[0],
        "seconds": summary[1] / 1e6,
        "rps": summary[0] / (summary[1] / 1e6),
        "errors": dict(
            zip(["connect", "read", "write", "status", "timeout"], summary[2:], strict=True)
        ),
        "min_ms": int(stats[0]) / 1000,
        "max_ms": int(stats[1]) / 1000,
        "mean_ms": float(stats[2]) / 1000,
        "pct_ms": pct,
        "wrk_text": out[: out.find("TAIL ")] if "TAIL " in out else out,
        "raw": raw,
    }


def raw_latencies(values: list[int], runtime_us: int, complete: int, conns: int) -> dict:
    """The measured per-request latencies (us), and what wrk makes of them.

    Before it prints anything (and before the Lua `done()`), wrk 4 corrects its histogram
    for coordinated omission (`stats_correct`): with interval e = runtime / (requests /
    connections), every measured latency n >= 2e adds synthetic samples at n - e, n - 2e, ...
    while > e. So wrk's percentiles are those of an imagined open-loop client, and one 400 ms
    stall becomes ~400/e samples between e and 400 ms. `wrk_model` applies the same correction
    to the measured values: it must reproduce wrk's printed percentiles.
    """
    values = sorted(values)
    total = len(values)
    interval = runtime_us // (complete // conns) if complete // conns else 0

    def pct(sorted_values: list[int], p: float) -> float:
        return sorted_values[min(len(sorted_values) - 1, int(p / 100 * len(sorted_values)))] / 1000

    corrected = list(values)
    if interval:
        for n in values:
            if n >= 2 * interval:
                m = n - interval
                while m > interval:
                    corrected.append(m)
                    m -= interval
    corrected.sort()
    bins: dict[int, int] = {}
    for v in values:
        bins[v // 10000 * 10] = bins.get(v // 10000 * 10, 0) + 1
    return {
        "total": total,
        "interval_ms": interval / 1000,
        "mean_ms": sum(values) / total / 1000,
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "p999": pct(values, 99.9),
        "max": values[-1] / 1000,
        "above_100ms": sum(v > 100_000 for v in values) / total,
        "above_250ms": sum(v > 250_000 for v in values) / total,
        "wrk_model": {
            "samples": len(corrected),
            "mean_ms": sum(corrected) / len(corrected) / 1000,
            "p50": pct(corrected, 50),
            "p90": pct(corrected, 90),
            "p99": pct(corrected, 99),
        },
        "hist_10ms": dict(sorted(bins.items())),
    }


def client_share_above(pct: dict[float, float], ms: float) -> float:
    """Share of requests slower than `ms`, to the grid's 0.5 points: 1 - the largest p
    whose percentile is <= ms."""
    below = [p for p, v in pct.items() if v <= ms]
    return 1.0 - (max(below) / 100 if below else 0.0)


# --- the probe: ss and py-spy while the load runs -----------------------------------------


def probe(port: int, pids: list[int], pyspy: str | None, out: Path, delay: float) -> None:
    time.sleep(delay)
    parts = []
    if shutil.which("ss"):
        r = subprocess.run(
            ["ss", "-tinm", "state", "established", f"( sport = :{port} or dport = :{port} )"],
            capture_output=True,
            text=True,
        )
        text = r.stdout + r.stderr
        rtos = re.findall(r"\brto:(\d+)", text)
        retrans = re.findall(r"\bretrans:\d+/(\d+)", text)
        parts.append(
            f"### ss -tinm (server side, port {port}): {len(rtos)} connections, rto values "
            f"{sorted(set(rtos))}, connections with retransmits {len(retrans)} "
            f"(total {sum(int(x) for x in retrans)})\n{text[:200000]}"
        )
    else:
        parts.append("### ss: not installed")
    if pyspy:
        for pid in pids:
            r = subprocess.run(
                [pyspy, "dump", "--pid", str(pid), "--nonblocking"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            parts.append(f"### py-spy dump --pid {pid} (rc {r.returncode})\n{r.stdout}{r.stderr}")
        if pids:
            raw = out.with_name("pyspy_record.txt")
            r = subprocess.run(
                [
                    *(pyspy, "record", "--pid", str(pids[0]), "--duration", "2", "--rate", "250"),
                    *("--idle", "--threads", "--nonblocking", "--format", "raw", "-o", str(raw)),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            parts.append(f"### py-spy record --pid {pids[0]} -> {raw.name} (rc {r.returncode})")
            parts.append(r.stdout[-3000:] + r.stderr[-3000:])
    else:
        parts.append("### py-spy: not found")
    with out.open("a") as f:
        f.write("\n\n".join(parts) + "\n")


# --- main ---------------------------------------------------------------------------------


def machine() -> str:
    def sh(cmd: str) -> str:
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
        return (r.stdout + r.stderr).strip()

    sysctls = [
        "net/core/somaxconn",
        "net/ipv4/tcp_max_syn_backlog",
        "net/core/netdev_max_backlog",
        "net/ipv4/tcp_rmem",
        "net/ipv4/tcp_wmem",
        "net/ipv4/tcp_autocorking",
        "net/ipv4/tcp_low_latency",
        "net/ipv4/tcp_sack",
        "net/ipv4/tcp_timestamps",
        "net/ipv4/tcp_congestion_control",
    ]
    lines = [
        f"date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"uname: {' '.join(platform.uname())}",
        f"/proc/version: {sh('cat /proc/version')}",
        f"dmesg head: {sh('dmesg 2>&1 | head -3')}",
        f"nproc: {os.cpu_count()}",
        f"nvidia-smi: {sh('nvidia-smi --query-gpu=name,driver_version --format=csv,noheader')}",
        f"python: {sys.version.split()[0]}",
        f"wrk: {sh('wrk -v 2>&1 | head -1')}",
        f"packages: {sh(sys.executable + PACKAGES)}",
        f"commit: {sh('git rev-parse --short HEAD 2>&1')}",
        "/proc/net files: " + " ".join(sorted(os.listdir("/proc/net"))),
    ]
    for s in sysctls:
        try:
            lines.append(f"{s.replace('/', '.')}: {Path('/proc/sys', s).read_text().strip()}")
        except OSError as exc:
            lines.append(f"{s.replace('/', '.')}: unreadable ({exc.strerror})")
    return "\n".join(lines) + "\n"


PACKAGES = (
    ' -c "import torch, fastapi, uvicorn, uvloop, httptools; print(torch.__version__,'
    ' fastapi.__version__, uvicorn.__version__, uvloop.__version__, httptools.__version__)"'
)


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict]) -> str:
    out = [
        "| server | model | endpoint | conns | run | req/s "
        "| client measured p50 / p90 / p99 / max ms | measured >100 / >250 ms "
        "| wrk reported p50 / p90 / p99 ms | wrk >100 ms "
        "| server p50 / p90 / p99 ms | server >100 / >250 ms "
        "| passes, mean batch, pass p99 ms, passes >25 / >100 ms | RetransSegs | TCPTimeouts "
        "| other TCP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pc(x: float | None) -> float | None:
        return None if x is None else 100 * x

    for r in rows:
        c, s = r["client"], r["server"]
        p, raw = c["pct_ms"], c.get("raw") or {}
        net = r["net"]
        other = {
            k: v
            for k, v in net.items()
            if k
            in {
                "TcpExt.ListenOverflows",
                "TcpExt.ListenDrops",
                "TcpExt.TCPLossProbes",
                "TcpExt.TCPSynRetrans",
                "TcpExt.TCPBacklogDrop",
                "TcpExt.DelayedACKs",
                "TcpExt.TCPRcvQDrop",
                "softnet.dropped",
            }
        }
        out.append(
            f"| {r['server_label']} | {r['model']} | {r['scenario']} | {r['conns']} | {r['tag']} "
            f"| {c['rps']:,.0f} "
            f"| {fmt(raw.get('p50'))} / {fmt(raw.get('p90'))} / {fmt(raw.get('p99'))} "
            f"/ {fmt(raw.get('max'), 0)} "
            f"| {fmt(pc(raw.get('above_100ms')))}% / {fmt(pc(raw.get('above_250ms')))}% "
            f"| {p[50.0]:.1f} / {p[90.0]:.1f} / {p[99.0]:.1f} "
            f"| {100 * c['above_100ms']:.1f}% "
            f"| {fmt(s['p50_ms'])} / {fmt(s['p90_ms'])} / {fmt(s['p99_ms'])} "
            f"| {fmt(s['above_100ms_pct'])}% / {fmt(s['above_250ms_pct'])}% "
            f"| {s['passes']:,.0f}, {fmt(s['mean_batch'])}, {fmt(s['pass_p99_ms'], 2)}, "
            f"{s['passes_over_25ms']:.0f} / {s['passes_over_100ms']:.0f} "
            f"| {net.get('Tcp.RetransSegs', 0)} | {net.get('TcpExt.TCPTimeouts', 0)} "
            f"| {', '.join(f'{k.split(chr(46))[-1]} {v}' for k, v in other.items()) or '-'} |"
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--plan", default="full", choices=["full", "confirm", "smoke"])
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk step")
    parser.add_argument("--wrk-threads", type=int, default=4)
    parser.add_argument("--budget", type=float, default=480, help="seconds; later servers skip")
    parser.add_argument("--pyspy", default=shutil.which("py-spy") or "/tmp/site/bin/py-spy")
    parser.add_argument(
        "--data-dir", default=os.environ.get("MNIST_DATA_DIR", "../shared/datasets/mnist")
    )
    parser.add_argument("--out", type=Path, default=Path("gpu-out"))
    parser.add_argument("--cudnn-test", type=int, metavar="MAX_BATCH", help=argparse.SUPPRESS)
    parser.add_argument(
        "--cudnn-batch", type=int, default=32, help="batch sizes 1..N in the cuDNN thread test"
    )
    args = parser.parse_args()
    if args.cudnn_test:
        print("CUDNN " + json.dumps(cudnn_test(args.device, args.cudnn_test)), flush=True)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    pyspy = args.pyspy if Path(args.pyspy).is_file() else None
    (args.out / "machine.txt").write_text(machine())
    digits, _ = load_split(Path(args.data_dir), "test")
    by_name = {s.name: s for s in scenarios(digits)}
    rows: list[dict] = []
    t0 = time.monotonic()
    jsonl = (args.out / "tail.jsonl").open("a")
    log = (args.out / "servers.log").open("a")
    for label, env in (
        ("default", {}),
        ("cudnn-v8-api-disabled", {"TORCH_CUDNN_V8_API_DISABLED": "1"}),
    ):
        if (label != "default" and args.plan == "smoke") or args.plan == "confirm":
            continue
        result = run_cudnn_test(args.device, args.cudnn_batch, env, label)
        if result:
            jsonl.write(json.dumps(result) + "\n")
            jsonl.flush()
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        for server in plans(args.device, args.plan):
            if time.monotonic() - t0 > args.budget:
                print(f"budget spent: skipping server {server.label}", flush=True)
                continue
            started = time.monotonic()
            try:
                proc, base = start(server, ["cnn", "mlp"], tmp, log)
            except RuntimeError as exc:
                print(exc, flush=True)
                continue
            pids = children(proc.pid) if server.workers > 1 else [proc.pid]
            print(
                f"server {server.label} ready in {time.monotonic() - started:.0f} s, pids {pids}",
                flush=True,
            )
            warmed: set = set()
            try:
                for model, name, conns, tag, probed in server.steps:
                    scenario = by_name[name]
                    if (model, name) not in warmed and tag != "run1-cold":
                        wrk(base, scenario, model, 8, 1, args.wrk_threads, tmp)
                    warmed.add((model, name))
                    before_m, before_n = scrape(base), counters()
                    prober = None
                    if probed:
                        port = int(base.rsplit(":", 1)[1])
                        prober = threading.Thread(
                            target=probe,
                            args=(port, pids, pyspy, args.out / "probe.txt", args.duration / 3),
                        )
                        prober.start()
                    c = wrk(
                        base,
                        scenario,
                        model,
                        conns,
                        args.duration,
                        args.wrk_threads,
                        tmp,
                        raw=args.plan in ("confirm", "smoke"),
                    )
                    after_n, after_m = counters(), scrape(base)
                    if prober:
                        prober.join()
                    req, n, total = hist_delta(
                        before_m, after_m, "mnist_request_duration_seconds", endpoint="/predict"
                    )
                    inf, passes, inf_sum = hist_delta(
                        before_m, after_m, "mnist_inference_duration_seconds", model=model
                    )
                    _, _, images = hist_delta(before_m, after_m, "mnist_batch_size", model=model)
                    net = counter_delta(before_n, after_n)
                    busy = None
                    if net.get("cpu.total"):
                        busy = 1 - net.get("cpu.idle", 0) / net["cpu.total"]
                    c["above_100ms"] = client_share_above(c["pct_ms"], 100)
                    c["above_250ms"] = client_share_above(c["pct_ms"], 250)

                    def ms(x):
                        return None if x is None else 1000 * x

                    def pc(x):
                        return None if x is None else 100 * x

                    row = {
                        "server_label": server.label,
                        "workers": server.workers,
                        "device": server.device,
                        "model": model,
                        "scenario": name,
                        "conns": conns,
                        "tag": tag,
                        "client": c,
                        "server": {
                            "requests": n,
                            "mean_ms": 1000 * total / n if n else None,
                            "p50_ms": ms(hist_quantile(req, 0.5)),
                            "p90_ms": ms(hist_quantile(req, 0.9)),
                            "p99_ms": ms(hist_quantile(req, 0.99)),
                            "above_100ms_pct": pc(share_above(req, 0.1)),
                            "above_250ms_pct": pc(share_above(req, 0.25)),
                            "buckets": req,
                            "passes": passes,
                            "mean_batch": images / passes if passes else None,
                            "pass_mean_ms": 1000 * inf_sum / passes if passes else None,
                            "pass_p99_ms": ms(hist_quantile(inf, 0.99)),
                            "passes_over_25ms": passes - dict(inf).get(0.025, passes),
                            "passes_over_100ms": passes - dict(inf).get(0.1, passes),
                            "pass_max_bucket_ms": ms(
                                max((le for le, _ in inf if le != float("inf")), default=None)
                            ),
                            "pass_buckets": inf,
                            "statuses": metric_delta(before_m, after_m, "mnist_requests_total"),
                        },
                        "net": {k: v for k, v in net.items() if not k.startswith("cpu.")},
                        "cpu_busy": busy,
                        "cpu_steal_ticks": net.get("cpu.steal", 0),
                    }
                    rows.append(row)
                    jsonl.write(json.dumps(row) + "\n")
                    jsonl.flush()
                    p, raw = c["pct_ms"], c.get("raw") or {}
                    s = row["server"]
                    print(
                        f"{server.label:22s} {model} {name:14s} c={conns:<3d} {tag:9s} "
                        f"{c['rps']:7,.0f} req/s | client measured p50 {fmt(raw.get('p50'))} "
                        f"p90 {fmt(raw.get('p90'))} p99 {fmt(raw.get('p99'))} max "
                        f"{fmt(raw.get('max'), 0)} >100ms {fmt(pc(raw.get('above_100ms')))}% "
                        f"(sum {raw.get('total')} of {c['requests']}) | wrk p50 {p[50.0]:6.1f} "
                        f"p90 {p[90.0]:6.1f} p99 {p[99.0]:6.1f} >100ms "
                        f"{100 * c['above_100ms']:4.1f}% (model of wrk: p90 "
                        f"{fmt((raw.get('wrk_model') or {}).get('p90'))} p99 "
                        f"{fmt((raw.get('wrk_model') or {}).get('p99'))}) | server p50 "
                        f"{fmt(s['p50_ms'])} "
                        f"p90 {fmt(s['p90_ms'])} p99 {fmt(s['p99_ms'])} >100ms "
                        f"{fmt(s['above_100ms_pct'])}% n={n:.0f} | passes {passes:.0f} batch "
                        f"{fmt(s['mean_batch'])} >25ms {s['passes_over_25ms']:.0f} "
                        f">100ms {s['passes_over_100ms']:.0f} | "
                        f"retrans {net.get('Tcp.RetransSegs', 0)} "
                        f"timeouts {net.get('TcpExt.TCPTimeouts', 0)} cpu "
                        f"{fmt(None if busy is None else 100 * busy, 0)}%",
                        flush=True,
                    )
            finally:
                stop(proc)
                variant_log = tmp / f"variant-{server.label}.log"
                if variant_log.is_file():
                    text = variant_log.read_text()
                    print(f"variant log {server.label}:\n{text}", flush=True)
                    log.write(f"variant log {server.label}:\n{text}")
    header = (
        f"# Latency tail: client (wrk) vs server (/metrics) vs TCP counters\n\n"
        f"`python bench/gpu_tail.py --device {args.device} --plan {args.plan} "
        f"--duration {args.duration} --wrk-threads {args.wrk_threads}`, "
        f"{time.monotonic() - t0:.0f} s\n\n"
    )
    (args.out / "tail.md").write_text(header + table(rows))
    print("\n" + table(rows))


if __name__ == "__main__":
    main()
