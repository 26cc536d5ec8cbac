"""A real `python -m service` process on 127.0.0.1, called over HTTP."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import WEIGHTS_DIR
from tests.servers import running_service, start, stop, wait_ready
from tests.uploads import encode, paper

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    proc, base = start()
    try:
        wait_ready(proc, base)
        yield base
    finally:
        out = stop(proc)
        # Graceful: uvicorn finishes, then re-raises SIGTERM so the exit status reports it.
        assert proc.returncode in (0, -signal.SIGTERM)
        assert "Finished server process" in out


def test_predicts_an_uploaded_photo_over_http(server: str, mnist_test) -> None:
    images, labels = mnist_test
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=server) as client:
        for i in range(5):
            data = encode(paper(images[i], rng), "JPEG")
            r = client.post("/predict", files={"file": ("photo.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            assert r.json()["digit"] == labels[i]
        r = client.post("/predict", files={"file": ("x.png", b"garbage")})
        assert r.status_code == 422 and "error" in r.json()
        assert client.get("/model").json()["device"] == "cpu"


def test_two_workers_serve(mnist_test) -> None:
    images, labels = mnist_test
    with (
        running_service(None, "--workers", "2", timeout=90) as (base, _),
        httpx.Client(base_url=base) as client,
    ):
        for i in range(6):
            r = client.post("/predict", json={"pixels": images[i].tolist()})
            assert r.json()["digit"] == labels[i]


@pytest.mark.parametrize(
    ("damage", "fragment"),
    [
        ("delete-pt", "cnn.pt: weights file not found"),
        ("tamper-pt", "does not match the metadata"),
        ("delete-json", "cnn.json: metadata file missing"),
        ("bad-json", "cnn.json: unreadable metadata"),
    ],
)
def test_bad_weights_fail_start_with_one_clear_line(
    tmp_path: Path, damage: str, fragment: str
) -> None:
    weights = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, weights)
    pt, meta = weights / "cnn.pt", weights / "cnn.json"
    if damage == "delete-pt":
        pt.unlink()
    elif damage == "tamper-pt":
        pt.write_bytes(pt.read_bytes()[:-10] + b"0123456789")
    elif damage == "delete-json":
        meta.unlink()
    else:
        meta.write_text("{not json")
    proc, _ = start({"MNIST_WEIGHTS_DIR": str(weights), "MNIST_MODELS": "cnn"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith("error: ") and fragment in lines[0]


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MNIST_RATE_LIMIT": "lots"}, "MNIST_RATE_LIMIT: couldn't parse rate limit string 'lots'"),
        ({"MNIST_API_KEYS_FILE": "/nonexistent/keys"}, "MNIST_API_KEYS_FILE: cannot read"),
        ({"MNIST_TRUSTED_PROXIES": "10.0.0.1/8"}, "MNIST_TRUSTED_PROXIES: '10.0.0.1/8'"),
    ],
    ids=["rate-limit", "keys-file", "proxies"],
)
def test_bad_settings_fail_start_saying_which(env: dict[str, str], fragment: str) -> None:
    # Before, these were read when the security middleware was built: on the first request.
    proc, _ = start(env)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0] == "error: invalid setting" and fragment in lines[1], out


def test_log_level_flag_sets_the_apps_own_level_too(mnist_test) -> None:
    # --log-level used to reach uvicorn only: the app's info lines still came at info.
    with running_service(
        {"MNIST_MODELS": "mlp", "MNIST_MODEL": "mlp"}, "--log-level", "warning"
    ) as (
        base,
        proc,
    ):
        r = httpx.post(f"{base}/predict", json={"pixels": mnist_test[0][0].tolist()})
        assert r.status_code == 200
        out = stop(proc)
    assert "Finished server process" not in out  # uvicorn's own info line
    assert "torch threads" not in out and "/predict" not in out, out  # the app's, access line too
    with running_service({"MNIST_MODELS": "mlp", "MNIST_MODEL": "mlp"}, "--log-level", "info") as (
        base,
        proc,
    ):
        out = stop(proc)
    assert "torch threads" in out and "Finished server process" in out, out


def test_metadata_sha_matches_shipped_files() -> None:
    from training.checkpoint import sha256_file

    for meta_path in WEIGHTS_DIR.glob("*.json"):
        meta = json.loads(meta_path.read_text())
        assert sha256_file(meta_path.with_suffix(".pt")) == meta["sha256"], meta_path.name


def test_a_client_that_hangs_up_mid_upload_is_not_a_server_error(server: str, mnist_test):
    host, port = server.removeprefix("http://").split(":")
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n\r\n'
    for _ in range(3):
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 100000\r\n\r\n" + head
            )
        time.sleep(0.2)
    metrics = httpx.get(f"{server}/metrics").text
    assert 'kind="internal"' not in metrics and 'status="500"' not in metrics
    assert 'kind="client_disconnected"' in metrics
    images, labels = mnist_test
    r = httpx.post(f"{server}/predict", json={"pixels": images[0].tolist()})
    assert r.json()["digit"] == labels[0]
