"""Dynamic batching with a real model: joined passes, own answers, isolation, back-pressure."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import MicroBatcher, QueueFull
from service.predictor import Predictor
from tests.conftest import WEIGHTS_DIR

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    import torch

    return Predictor.load(WEIGHTS_DIR / "mlp.pt", torch.device("cpu"))


def started(predict, **kwargs) -> MicroBatcher:
    options = {"max_batch": 16, "max_delay_s": 0.005, "queue_limit": 1000} | kwargs
    batcher = MicroBatcher(predict, "test", **options)
    batcher.sizes = []  # type: ignore[attr-defined]
    batcher.on_batch = batcher.sizes.append  # type: ignore[attr-defined]
    batcher.start()
    return batcher


async def test_concurrent_requests_share_passes_and_get_their_own_rows(predictor, mnist_test):
    images = mnist_test[0][:40].astype(np.float32)
    batcher = started(predictor.predict)
    try:
        rows = await asyncio.gather(*(batcher.submit(images[i : i + 1]) for i in range(40)))
    finally:
        await batcher.stop()
    expected = predictor.predict(images)
    np.testing.assert_allclose(np.concatenate(rows), expected, atol=1e-6)
    assert sum(batcher.sizes) == 40
    assert len(batcher.sizes) < 40 and max(batcher.sizes) <= 16


async def test_a_full_batch_does_not_wait_for_the_delay(predictor, mnist_test):
    images = mnist_test[0][:8].astype(np.float32)
    batcher = started(predictor.predict, max_batch=8, max_delay_s=60)
    try:
        with batcher.arriving():  # another request on its way: the collector would wait 60 s
            rows = await asyncio.wait_for(
                asyncio.gather(*(batcher.submit(images[i : i + 1]) for i in range(8))), timeout=10
            )
    finally:
        await batcher.stop()
    assert len(rows) == 8 and batcher.sizes == [8]


async def test_a_lone_request_on_an_idle_server_does_not_wait(predictor, mnist_test):
    batcher = started(predictor.predict, max_delay_s=60)
    try:
        rows = await asyncio.wait_for(batcher.submit(mnist_test[0][:1]), timeout=10)
    finally:
        await batcher.stop()
    assert rows.shape == (1, 10) and batcher.sizes == [1]


async def test_the_collector_waits_for_a_request_on_its_way(predictor, mnist_test):
    images = mnist_test[0][:2].astype(np.float32)
    batcher = started(predictor.predict, max_delay_s=60)
    try:
        with batcher.arriving() as arrival:
            first = asyncio.create_task(batcher.submit(images[:1]))
            await asyncio.sleep(0.05)  # the collector is holding the first one back
            assert not first.done()
            second = await asyncio.wait_for(batcher.submit(images[1:], arrival), timeout=10)
        rows = np.concatenate([await first, second])
    finally:
        await batcher.stop()
    assert batcher.sizes == [2]
    np.testing.assert_allclose(rows, predictor.predict(images), atol=1e-6)


async def test_waiting_for_arrivals_is_bounded_by_the_delay(predictor, mnist_test):
    batcher = started(predictor.predict, max_delay_s=0.05)
    try:
        with batcher.arriving():  # a request that never comes
            rows = await asyncio.wait_for(batcher.submit(mnist_test[0][:1]), timeout=10)
    finally:
        await batcher.stop()
    assert rows.shape == (1, 10) and batcher.sizes == [1]


async def test_a_request_larger_than_the_batch_runs_alone(predictor, mnist_test):
    images = mnist_test[0][:40].astype(np.float32)
    batcher = started(predictor.predict, max_batch=16)
    try:
        rows = await batcher.submit(images)
    finally:
        await batcher.stop()
    assert rows.shape == (40, 10) and batcher.sizes == [40]


async def test_one_failing_item_does_not_fail_the_others(predictor, mnist_test):
    images = mnist_test[0][:6].astype(np.float32)
    poison = np.full((1, 28, 28), 77, dtype=np.float32)

    def predict(batch: np.ndarray) -> np.ndarray:
        if (batch == 77).all(axis=(1, 2)).any():
            raise ValueError("cannot digest this image")
        return predictor.predict(batch)

    batcher = started(predict, max_delay_s=0.05)
    try:
        results = await asyncio.gather(
            *(batcher.submit(images[i : i + 1]) for i in range(3)),
            batcher.submit(poison),
            *(batcher.submit(images[i : i + 1]) for i in range(3, 6)),
            return_exceptions=True,
        )
    finally:
        await batcher.stop()
    assert isinstance(results[3], ValueError)
    good = np.concatenate([r for i, r in enumerate(results) if i != 3])
    np.testing.assert_allclose(good, predictor.predict(images), atol=1e-6)


async def test_full_queue_refuses_instead_of_growing(predictor):
    batcher = MicroBatcher(predictor.predict, "test", max_batch=4, max_delay_s=0, queue_limit=2)
    # Not started: nothing drains the queue.
    waiting = [
        asyncio.ensure_future(batcher.submit(np.zeros((1, 28, 28), np.float32))) for _ in range(2)
    ]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="busy"):
        await batcher.submit(np.zeros((1, 28, 28), np.float32))
    await batcher.stop()
    for task in waiting:
        with pytest.raises(QueueFull):
            await task


async def test_cancelled_requests_are_skipped(predictor, mnist_test):
    images = mnist_test[0][:3].astype(np.float32)
    batcher = started(predictor.predict, max_delay_s=0.05)
    try:
        gone = asyncio.ensure_future(batcher.submit(images[:1]))
        await asyncio.sleep(0)
        gone.cancel()
        rows = await batcher.submit(images[1:3])
    finally:
        await batcher.stop()
    np.testing.assert_allclose(rows, predictor.predict(images[1:3]), atol=1e-6)
    assert batcher.sizes == [2]


async def test_idle_passes_run_on_the_loop_and_busy_ones_on_the_inference_thread(
    predictor, mnist_test
):
    threads: list[str] = []

    def predict(images: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return predictor.predict(images)

    images = mnist_test[0][:8].astype(np.float32)
    batcher = started(predict)
    try:
        await batcher.submit(images[:1])  # alone on an idle server
        await asyncio.gather(*(batcher.submit(images[i : i + 1]) for i in range(8)))
    finally:
        await batcher.stop()
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("infer-") and batcher.sizes[1] == 8


def test_cuda_graphs_are_asked_for_only_on_cuda(predictor, mnist_test) -> None:
    # What the service asks for by default (MNIST_CUDA_GRAPHS): on the CPU it changes nothing.
    import torch

    graphed = Predictor.load(WEIGHTS_DIR / "mlp.pt", torch.device("cpu"), graph_max_images=16)
    assert graphed.graphs is None
    images = mnist_test[0][:16].astype(np.float32)
    np.testing.assert_array_equal(graphed.predict(images), predictor.predict(images))
