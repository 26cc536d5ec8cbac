"""Beyond one process, for real, on loopback: shared rate limits across uvicorn workers
(a real redis-server), the drain on SIGTERM under load with two workers, and two service
processes behind Debian's nginx with the repository's deploy/nginx.conf.

Tools: `apt-get install redis-server nginx-light` (.ci/run does). A missing one skips these
tests locally and fails them in CI.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.conftest import REPO_ROOT
from tests.servers import free_port, missing_tool, redis_server, start, wait_ready

pytestmark = pytest.mark.slow

PIXELS = json.dumps({"pixels": [0] * 392 + [255] * 392}).encode()  # with ink: a blank one is a 422
NGINX_CONF = REPO_ROOT / "deploy" / "nginx.conf"


@dataclass
class Served:
    base: str
    proc: subprocess.Popen
    lines: list[str]

    def output(self) -> str:
        return "".join(self.lines)


@contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[Served]:
    """`python -m service` with its output read as it comes (a load test logs a line per
    request: a pipe nobody reads would fill up and stall the server)."""
    proc, base = start(env, *args)
    served = Served(base, proc, [])
    reader = threading.Thread(target=lambda: served.lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        try:
            wait_ready(proc, base, timeout=180)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{served.output()}") from None
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=10)


def post_predict(base: str, timeout: float = 30) -> int:
    """One POST /predict on a connection of its own (as a new client would open it)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("POST", "/predict", PIXELS, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def per_worker(multiproc_dir: Path, kind: str, sample: str, **labels: str) -> dict[str, float]:
    """pid -> the sum of a sample over matching labels, from prometheus_client's per-process
    files (`kind`: counter, gauge_max, ...), which say which worker did what."""
    out = {}
    for path in multiproc_dir.glob(f"{kind}_*.db"):
        total = 0.0
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _metric, name, found, _help = json.loads(key)
            if name == sample and labels.items() <= found.items():
                total += value
        out[path.stem.rsplit("_", 1)[1]] = total
    return out


def wait_workers_loaded(multiproc_dir: Path, workers: int, timeout: float = 180) -> None:
    """Until every worker has its models loaded (`/health/ready` is 200 once one has)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loaded = per_worker(multiproc_dir, "gauge_max", "mnist_model_ready")
        if sum(1 for value in loaded.values() if value > 0) >= workers:
            time.sleep(0.5)  # the last step of start-up: the listener and the SIGTERM handler
            return
        time.sleep(0.25)
    raise AssertionError(f"not all {workers} workers loaded within {timeout} s")


def two_worker_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    multiproc = tmp_path / "metrics"
    multiproc.mkdir()
    env = {"MNIST_MODELS": "mlp", "MNIST_MODEL": "mlp", "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    return {**env, **extra}


# ---------------------------------------------------------------------------------------------
# rate limits across workers


def test_two_workers_behind_one_redis_give_a_client_exactly_the_limit(tmp_path: Path) -> None:
    limit = 12
    with redis_server() as uri:
        env = two_worker_env(
            tmp_path, MNIST_RATE_LIMIT=f"{limit}/minute", MNIST_RATE_LIMIT_STORAGE=uri
        )
        multiproc = Path(env["PROMETHEUS_MULTIPROC_DIR"])
        with serving(env, "--workers", "2") as served:
            wait_workers_loaded(multiproc, 2)
            with ThreadPoolExecutor(8) as pool:
                statuses = list(pool.map(lambda _: post_predict(served.base), range(3 * limit)))
    assert Counter(statuses) == {200: limit, 429: 2 * limit}
    # Both workers answered: with a count per process, the client would have had 2x the limit.
    served = per_worker(multiproc, "counter", "mnist_requests_total", endpoint="/predict")
    assert sum(1 for count in served.values() if count > 0) == 2, served


# ---------------------------------------------------------------------------------------------
# the drain


@dataclass
class Load:
    """Clients opening a new connection per request until told to stop."""

    base: str
    results: list[tuple[float, float, str]] = field(default_factory=list)  # start, end, outcome
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self) -> None:
        while not self.stop.is_set():
            start = time.monotonic()
            try:
                outcome = str(post_predict(self.base, timeout=60))
            except OSError as exc:  # reset, refused, timeout
                outcome = type(exc).__name__
            except http.client.HTTPException as exc:  # e.g. closed without an answer
                outcome = type(exc).__name__
            self.results.append((start, time.monotonic(), outcome))


@dataclass
class ReadinessWatch:
    base: str
    flipped_at: float | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set() and self.flipped_at is None:
            try:
                status = httpx.get(f"{self.base}/health/ready", timeout=5).status_code
            except httpx.TransportError:
                status = 0
            if status == 503:
                self.flipped_at = time.monotonic()
            time.sleep(0.05)


@contextmanager
def threads(*targets) -> Iterator[None]:
    started = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in started:
        thread.start()
    try:
        yield
    finally:
        for thread in started:
            thread.join(timeout=90)


def test_sigterm_drains_two_workers_under_load_without_a_reset_or_5xx(tmp_path: Path) -> None:
    drain = 4.0
    env = two_worker_env(tmp_path, MNIST_DRAIN_SECONDS=str(drain))
    with serving(env, "--workers", "2") as served:
        base, proc = served.base, served.proc
        wait_workers_loaded(Path(env["PROMETHEUS_MULTIPROC_DIR"]), 2)
        load, watch = Load(base), ReadinessWatch(base)
        with threads(*[load.client] * 6, watch.run):
            time.sleep(1.0)
            sigterm_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            # A load balancer stops routing soon after readiness fails: well within the drain.
            time.sleep(drain * 0.6)
            load.stop.set()
            watch.stop.set()
        code = proc.wait(timeout=drain + 40)
        time.sleep(0.5)  # the last lines
        output = served.output()
    assert code in (0, -signal.SIGTERM), output
    outcomes = Counter(outcome for _, _, outcome in load.results)
    assert set(outcomes) == {"200"}, f"{outcomes}\n{output}"
    after = [r for r in load.results if r[0] > sigterm_at]
    assert len(after) >= 10, "connections opened after SIGTERM were served"
    assert watch.flipped_at is not None, "readiness never answered 503"
    # uvicorn's supervisor looks at its signals every 0.5 s; the worker flips at once.
    assert watch.flipped_at - sigterm_at < 1.5
    assert output.count("SIGTERM: draining") == 2, output


# ---------------------------------------------------------------------------------------------
# nginx in front of two service processes


def find_nginx() -> str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        missing_tool("nginx", "apt-get install nginx-light")
    return nginx


def loopback_nginx_conf(listen: int, upstreams: list[str]) -> str:
    """deploy/nginx.conf, adapted to loopback: the listen port, and an upstream group of the
    given addresses in place of Docker's DNS name `api` (and its resolver)."""
    text = NGINX_CONF.read_text()
    replacements = {
        "listen 8080;": f"listen 127.0.0.1:{listen};",
        "set $api_upstream http://api:8000;": "set $api_upstream http://mnist_api;",
        "resolver 127.0.0.11 valid=10s ipv6=off;": "upstream mnist_api {\n"
        + "".join(f"        server {address};\n" for address in upstreams)
        + "    }",
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/nginx.conf no longer has {old!r}: adapt this test"
        text = text.replace(old, new)
    return text


@dataclass
class Nginx:
    base: str
    log: Path  # its error log

    def errors(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def running_nginx(conf: str, tmp_path: Path, port: int) -> Iterator[Nginx]:
    nginx = find_nginx()
    (tmp_path / "logs").mkdir(exist_ok=True)
    path = tmp_path / "nginx.conf"
    path.write_text(conf.replace("error_log /dev/stderr", f"error_log {tmp_path / 'error.log'}"))
    proc = subprocess.Popen(
        [
            nginx,
            "-p",
            str(tmp_path),
            "-c",
            str(path),
            "-e",
            str(tmp_path / "error.log"),
            "-g",
            f"daemon off; pid {tmp_path / 'nginx.pid'};",
        ],
        stdout=subprocess.DEVNULL,  # its access log
        stderr=subprocess.STDOUT,
    )
    served = Nginx(f"http://127.0.0.1:{port}", tmp_path / "error.log")
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{served.base}/nginx-health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nginx did not start: {served.errors()}")
            time.sleep(0.1)
        yield served
    finally:
        proc.send_signal(signal.SIGQUIT)  # finish what is in flight, then exit
        proc.wait(timeout=20)


def predict_count(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mnist_requests_total{") and 'endpoint="/predict"' in line
    )


def test_nginx_spreads_over_two_processes_and_survives_one_stopping(tmp_path: Path) -> None:
    env = {"MNIST_MODELS": "mlp", "MNIST_MODEL": "mlp", "MNIST_DRAIN_SECONDS": "1"}
    with serving(env) as one, serving(env) as two:
        first, first_proc, second = one.base, one.proc, two.base
        port = free_port()
        upstreams = [first.removeprefix("http://"), second.removeprefix("http://")]
        with running_nginx(loopback_nginx_conf(port, upstreams), tmp_path, port) as nginx:
            proxy = nginx.base
            statuses = [post_predict(proxy) for _ in range(20)]
            assert set(statuses) == {200}
            spread = [predict_count(first), predict_count(second)]
            assert min(spread) >= 5, f"round-robin expected, got {spread}"

            # One process stops (SIGTERM: drain, then exit) while requests keep coming.
            load = Load(proxy)
            with threads(*[load.client] * 4):
                time.sleep(0.5)
                first_proc.send_signal(signal.SIGTERM)
                first_proc.wait(timeout=40)
                time.sleep(1.0)  # and on, with the first process gone
                load.stop.set()
            outcomes = Counter(outcome for _, _, outcome in load.results)
            assert set(outcomes) == {"200"}, f"{outcomes}\n{nginx.errors()}"
            assert len(load.results) >= 10
            assert set(post_predict(proxy) for _ in range(6)) == {200}
