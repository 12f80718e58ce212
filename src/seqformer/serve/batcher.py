"""Dynamic batching: concurrent requests share one model call on a worker thread.

The first request to arrive waits up to ``window_s`` for company (or until
``max_batch`` units are queued); then every queued request with the same
decoding options, in arrival order and up to ``max_batch`` units, runs as one
batch in the worker thread while the event loop keeps accepting requests. A
unit is one model input: a request says what its texts cost (the service counts
the sentences a text is split into), one per text by default. The queue is
bounded: past ``max_queue`` waiting units, :class:`Overloaded` is raised at once
instead of letting latency grow without limit (a request larger than that still
runs when nothing else waits). A request whose client
hangs up leaves the queue at once and is never computed. At shutdown the batcher
is closed (new requests get 503) and drained: the queue and the running batches
finish, up to a time limit, after which what is still queued gets 503.

With ``streams`` > 1, up to that many batches are computed at once, each on its own worker
thread (``thread_init`` runs first on each, e.g. to give it its share of the CPU threads):
while every stream is busy, the next batch keeps filling in the queue; once a stream is free
it is gathered as above (the window again, unless a full batch is already waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("seqformer.serve")

RunBatch = Callable[[list[str], Any], list]  # (texts, options) -> one result per text


class Overloaded(Exception):
    """The queue is full: the caller should answer 503 and the client retry later."""


@dataclass(eq=False)  # jobs are compared by identity (removing one from the queue)
class _Job:
    texts: list[str]
    options: Hashable  # jobs batch together only when their options are equal
    future: asyncio.Future = field(repr=False)
    cost: int = 1  # model inputs (units) the texts make


@dataclass
class BatchStats:
    batches: int = 0
    requests: int = 0
    texts: int = 0
    largest_batch: int = 0  # most requests ever served by one model call


class Batcher:
    """Queue requests from the event loop; run them in batches on ``streams`` model threads."""

    def __init__(self, run: RunBatch, max_batch: int = 32, window_s: float = 0.005, max_queue: int = 256,
                 streams: int = 1, thread_init: Callable[[], None] | None = None) -> None:
        if streams < 1:
            raise ValueError(f"streams must be >= 1, found {streams}")
        self.run = run
        self.max_batch = max_batch
        self.window_s = window_s
        self.max_queue = max_queue
        self.streams = streams
        self.thread_init = thread_init
        self.stats = BatchStats()
        self._jobs: deque[_Job] = deque()
        self._queued = 0  # units in self._jobs
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._free: asyncio.Semaphore | None = None  # streams not computing a batch
        self._batches: dict[asyncio.Task, list[_Job]] = {}  # the batches being computed: their jobs
        self._closed = False

    @property
    def queued(self) -> int:
        """Texts waiting for the model (the batches being computed are not counted)."""
        return self._queued

    def start(self) -> None:
        """Start the batching loop; call from the running event loop."""
        self._wake = asyncio.Event()
        self._free = asyncio.Semaphore(self.streams)
        self._executor = ThreadPoolExecutor(max_workers=self.streams, thread_name_prefix="seqformer-model",
                                            initializer=self.thread_init)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (the server is shutting down)."""
        return self._closed

    def close(self) -> None:
        """Refuse new requests from now on (:class:`Overloaded`); the queued and running ones still run."""
        self._closed = True

    async def drain(self, timeout_s: float, give_up: Callable[[], bool] = lambda: False) -> None:
        """After :meth:`close`: wait up to ``timeout_s`` (or until ``give_up()``) for the queue and the running
        batches to finish, then answer what is still queued with :class:`Overloaded` (running batches go on)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._jobs or self._batches) and loop.time() < deadline and not give_up():
            await asyncio.sleep(0.02)
        self._refuse_queued()

    def _refuse_queued(self, also: Iterable[_Job] = ()) -> None:
        """Answer ``also`` and every queued request with :class:`Overloaded` (shutdown), and empty the queue."""
        for job in [*also, *self._jobs]:
            if not job.future.done():
                job.future.set_exception(Overloaded("the server is shutting down"))
        self._jobs, self._queued = deque(), 0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in self._batches:  # their results would come too late: the requests are answered below
            task.cancel()
        # The batches being computed when the loop was cancelled, then everything still queued: each request
        # is answered, none left waiting on a future nobody will set.
        self._refuse_queued(also=[job for batch in self._batches.values() for job in batch])
        self._batches = {}
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, texts: list[str], options: Hashable, cost: int | None = None) -> list:
        """Translate ``texts`` with ``options``; one result per text, in order. ``cost``: the model
        inputs they make (default: one per text)."""
        if self._task is None or self._wake is None:
            raise RuntimeError("Batcher.start() was not called")
        if self._closed:
            raise Overloaded("the server is shutting down")
        cost = max(len(texts) if cost is None else cost, 1)
        if self._queued and self._queued + cost > self.max_queue:
            raise Overloaded(f"{self._queued} units already queued, this request adds {cost} "
                             f"(max_queue {self.max_queue}); retry later")
        future = asyncio.get_running_loop().create_future()
        job = _Job(list(texts), options, future, cost)
        self._jobs.append(job)
        self._queued += cost
        self._wake.set()
        try:
            return await future
        except asyncio.CancelledError:  # the caller gave up (its client hung up): free its place now
            self._drop(job)
            raise

    def _drop(self, job: _Job) -> None:
        """Take a still-queued job out of the queue (a job in the running batch is past recall)."""
        if any(j is job for j in self._jobs):
            self._jobs = deque(j for j in self._jobs if j is not job)
            self._queued -= job.cost

    async def _loop(self) -> None:
        assert self._wake is not None and self._free is not None
        while True:
            await self._wake.wait()
            await self._free.acquire()  # a stream to compute on: until then the queue keeps filling
            await self._gather()
            batch = self._take()
            if self._jobs:
                self._wake.set()
            else:
                self._wake.clear()
            if not batch:
                self._free.release()
                continue
            # counted as running from now, not from the task's first step: a stop() in between answers them
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._batches[task] = batch
            task.add_done_callback(functools.partial(self._finished, self._free))

    def _finished(self, free: asyncio.Semaphore, task: asyncio.Task) -> None:
        self._batches.pop(task, None)
        free.release()  # the semaphore the batch took, even if a restart made a new one since

    async def _gather(self) -> None:
        """Wait up to the window for more requests, unless a full batch is already queued."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.window_s
        while self._queued < self.max_batch:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    def _take(self) -> list[_Job]:
        """Remove and return the next batch: the oldest live job plus compatible ones behind it."""
        batch: list[_Job] = []
        rest: deque[_Job] = deque()
        units = 0
        while self._jobs:
            job = self._jobs.popleft()
            if job.future.done():  # the client went away
                self._queued -= job.cost
                continue
            fits = not batch or (job.options == batch[0].options and units + job.cost <= self.max_batch)
            if fits:
                batch.append(job)
                units += job.cost
                self._queued -= job.cost
            else:
                rest.append(job)
        self._jobs = rest
        return batch

    async def _execute(self, batch: list[_Job]) -> None:
        texts = [t for job in batch for t in job.texts]
        loop = asyncio.get_running_loop()
        try:  # until this task ends, the batch is in self._batches: stop() answers its jobs itself
            results = await loop.run_in_executor(self._executor, self.run, texts, batch[0].options)
            if len(results) != len(texts):  # or requests would be answered with others' results, or never
                raise RuntimeError(f"the model returned {len(results)} results for {len(texts)} texts")
        except Exception as err:  # the model failed: every request of the batch gets the error
            log.exception("batch of %d texts failed", len(texts))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        start = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.texts)])
            start += len(job.texts)
        s = self.stats
        s.batches, s.requests, s.texts = s.batches + 1, s.requests + len(batch), s.texts + len(texts)
        s.largest_batch = max(s.largest_batch, len(batch))
