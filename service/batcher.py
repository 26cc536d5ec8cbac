"""Dynamic (micro-)batching: concurrent requests joined into one forward pass.

Why: a forward pass of 1 image and of 64 images cost nearly the same on a CPU core or a GPU;
per-request servers pay the fixed cost every time. Here each model has one batcher per worker
process. Requests put their (already preprocessed) images in a queue; one collector task takes
everything waiting, up to `max_batch` images, waiting at most `max_delay` for more to arrive,
and runs the forward pass on one dedicated thread (so the event loop never blocks and passes of
the same model never compete for the cores). Each caller gets its own rows back.

- An idle queue costs a request at most `max_delay` of waiting.
- When `queue_limit` images are already waiting, `submit` raises `QueueFull` (answered 503 with
  Retry-After) instead of queueing without bound.
- If a joined pass fails, each request is retried alone, so one bad item never fails the others.
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


class QueueFull(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"server busy: {limit} images already waiting; retry shortly")


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
        self._has_items = asyncio.Event()
        self._full = asyncio.Event()
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

    async def submit(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (len(images), 10) for these images, computed together with others."""
        if self._waiting + len(images) > self.queue_limit and self._waiting:
            raise QueueFull(self.queue_limit)
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Item(images, future))
        self._waiting += len(images)
        self._has_items.set()
        if self._waiting >= self.max_batch:
            self._full.set()
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
        if self._waiting < self.max_batch:
            self._full.clear()
        return taken

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_items.wait()
            if self._waiting < self.max_batch and self.max_delay_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_delay_s)
            items = [i for i in self._take() if not i.future.done()]  # skip gone clients
            if not items:
                continue
            images = np.concatenate([i.images for i in items])
            try:
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
