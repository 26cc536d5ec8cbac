"""Dynamic (micro-)batching: concurrent requests joined into one forward pass.

Why: a forward pass has a fixed cost (kernel launches on a GPU, per-layer dispatch on a CPU)
that one image per pass pays every time: on one CPU core the cnn takes 1.2 ms for 1 image and
0.5 ms per image in a pass of 32 (bench/infer_cpu.py). Here each model has one batcher per
worker process. Requests put their (already preprocessed) images in a queue; one collector task
takes everything waiting, up to `max_batch` images, and runs the forward pass on one dedicated
thread (so the event loop never blocks and passes of the same model never compete for the
cores). Each caller gets its own rows back.

- The collector waits for more only while other requests of the model are on their way (their
  bodies being read or prepared, see `arriving`), and at most `max_delay`: a lone request on an
  idle server is run at once, and under load the requests that arrive during a pass make up
  the next one.
- When `queue_limit` images are already waiting, `submit` raises `QueueFull` (answered 503 with
  Retry-After) instead of queueing without bound.
- If a joined pass fails, each request is retried alone, so one bad item never fails the others.
- On an idle server (nothing pending, nothing arriving) a pass of one or two images runs on the
  event loop itself instead of the thread: it has nothing else to do meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("service")


# On an idle server a pass of up to this many images runs on the event loop itself: two thread
# hops cost ~0.5 ms of wake-ups, more than the pass (cnn int8 ~1 ms for one image on a core).
INLINE_MAX_IMAGES = 2


class QueueFull(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"server busy: {limit} images already waiting; retry shortly")


class Arrival:
    """A request of this batcher's model on its way; see `MicroBatcher.arriving`. A context
    manager of its own: contextlib's generator-based one cost several times as much per
    request."""

    __slots__ = ("batcher", "counted")

    def __init__(self, batcher: MicroBatcher) -> None:
        self.batcher, self.counted = batcher, True

    def __enter__(self) -> Arrival:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.batcher.arrived(self)

    def leave(self) -> None:
        """Stop counting as arriving before submitting: for a request whose images take longer
        to prepare than a pass may wait (an upload queued for the prepare threads)."""
        self.batcher.arrived(self)


@dataclass
class _Item:
    images: np.ndarray
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        name: str,
        max_batch: int,
        max_delay_s: float,
        queue_limit: int,
    ) -> None:
        self.predict, self.name = predict, name
        self.max_batch, self.max_delay_s, self.queue_limit = max_batch, max_delay_s, queue_limit
        self._pending: deque[_Item] = deque()
        self._waiting = 0  # images in _pending
        self._arriving = 0  # requests inside `arriving()` that have not submitted yet
        self._has_items = asyncio.Event()
        self._wake = asyncio.Event()  # a pass filled up, or nothing more is on its way
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task: asyncio.Task | None = None
        self.on_batch: Callable[[int], None] | None = None  # e.g. a metrics hook

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(QueueFull(self.queue_limit))
        self._executor.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        return self._waiting

    def arriving(self) -> Arrival:
        """Held (`with`) by a request from the moment its model is known until it submits (or
        fails): while any request is arriving, the collector may wait for it, never longer
        than max_delay."""
        self._arriving += 1
        return Arrival(self)

    def arrived(self, arrival: Arrival | None) -> None:
        """The request has its images (or gave up): stop waiting for it."""
        if arrival is not None and arrival.counted:
            arrival.counted = False
            self._arriving -= 1
            if self._arriving == 0:
                self._wake.set()

    async def submit(self, images: np.ndarray, arrival: Arrival | None = None) -> np.ndarray:
        """Probabilities (len(images), 10) for these images, computed together with others."""
        self.arrived(arrival)
        if self._waiting + len(images) > self.queue_limit and self._waiting:
            raise QueueFull(self.queue_limit)
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(images, future))
        self._waiting += len(images)
        self._has_items.set()
        if self._waiting >= self.max_batch:
            self._wake.set()
        return await future

    def _take(self) -> list[_Item]:
        """Whole requests from the front, up to max_batch images (a larger one goes alone)."""
        taken, count = [], 0
        while self._pending and (
            not taken or count + len(self._pending[0].images) <= self.max_batch
        ):
            item = self._pending.popleft()
            taken.append(item)
            count += len(item.images)
        self._waiting -= count
        if not self._pending:
            self._has_items.clear()
        return taken

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait, at most max_delay, while the pass is not full and more requests are coming."""
        deadline = loop.time() + self.max_delay_s
        while self._waiting < self.max_batch and self._arriving > 0:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_items.wait()
            if self.max_delay_s > 0:
                await self._gather(loop)
            items = [i for i in self._take() if not i.future.done()]  # skip gone clients
            if not items:
                continue
            images = np.concatenate([i.images for i in items])
            try:
                if len(images) <= INLINE_MAX_IMAGES and not self._arriving and not self._pending:
                    # An idle server: nothing else to serve meanwhile, so skip the thread hops
                    # and run the small pass right here (p50 at 1 connection 2.5 -> 2.0 ms).
                    probs = self.predict(images)
                else:
                    probs = await loop.run_in_executor(self._executor, self.predict, images)
            except Exception:
                log.exception(
                    "batched forward pass of %d images failed; retrying alone", len(images)
                )
                await self._one_by_one(items)
                continue
            if self.on_batch is not None:
                self.on_batch(len(images))
            start = 0
            for item in items:
                rows = probs[start : start + len(item.images)]
                start += len(item.images)
                if not item.future.done():
                    item.future.set_result(rows)

    async def _one_by_one(self, items: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        for item in items:
            try:
                rows = await loop.run_in_executor(self._executor, self.predict, item.images)
            except Exception as exc:
                if not item.future.done():
                    item.future.set_exception(exc)
            else:
                if not item.future.done():
                    item.future.set_result(rows)
