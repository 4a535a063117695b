"""Cross-session decoding for live streams: finals batched, partials dropped first under load.

Every live session shares one :class:`DecodeScheduler` (the sherpa-onnx server pattern): one
decode lane runs model calls off the event loop; finals from many sessions wait in a FIFO and
are decoded together (up to ``max_batch`` per call, waiting at most ``max_wait_s`` for company
when other streams are active), so N streams cost less than N separate decodes.

Finals always go before partials. Each session holds at most one *queued* partial: a newer
request replaces the older one (the older is counted as dropped), so when compute falls behind
partials thin out while finals keep their place and lag never accumulates.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engines.base import Asr, AsrOptions, AsrResult
from .errors import EngineError

__all__ = ["DecodeScheduler", "SchedulerStats"]

logger = logging.getLogger(__name__)

PartialCallback = Callable[[AsrResult | None, BaseException | None], None]


@dataclass(slots=True)
class _Job:
    asr: Asr
    audio: np.ndarray
    options: AsrOptions
    future: asyncio.Future[AsrResult] | None = None  # finals
    on_done: PartialCallback | None = None  # partials

    @property
    def group(self) -> tuple[int, tuple[Any, ...]]:
        """Jobs decodable in one call: same engine, same options."""
        return id(self.asr), tuple(self.options.as_versions().values())


@dataclass(slots=True)
class SchedulerStats:
    finals: int = 0
    final_batches: int = 0
    partials: int = 0
    partial_batches: int = 0
    dropped_partials: int = 0
    largest_batch: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # last 1000 final batch sizes

    def record_final_batch(self, size: int) -> None:
        self.finals += size
        self.final_batches += 1
        self.largest_batch = max(self.largest_batch, size)
        self.batch_sizes.append(size)
        del self.batch_sizes[:-1000]


class DecodeScheduler:
    """One decode lane shared by all sessions. Start it inside the running event loop."""

    def __init__(self, *, max_batch: int = 8, max_wait_s: float = 0.015) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.partial_batch = max(1, min(2, max_batch))
        self.max_wait_s = max_wait_s
        self.stats = SchedulerStats()
        self.active_streams = 0  # sessions report themselves; batching waits only with company
        self._finals: deque[_Job] = deque()
        self._partials: OrderedDict[Hashable, _Job] = OrderedDict()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.busy = False
        self.failure: EngineError | None = None  # set when the scheduler task died
        self.on_failure: list[Callable[[EngineError], None]] = []  # told when it dies

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queued_finals(self) -> int:
        return len(self._finals)

    async def start(self) -> None:
        if self.running:
            return
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="voxgate-decode")
        self._task = asyncio.create_task(self._run(), name="voxgate-decode-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for job in self._finals:
            if job.future is not None and not job.future.done():
                job.future.cancel()
        self._finals.clear()
        self._partials.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def submit_final(self, asr: Asr, audio: np.ndarray, options: AsrOptions
                     ) -> asyncio.Future[AsrResult]:
        """Queue a final decode; the future resolves with its result (cancel it to withdraw)."""
        if self.failure is not None:
            raise self.failure
        if not self.running or self._wake is None:
            raise RuntimeError("DecodeScheduler.start() was not called")
        future: asyncio.Future[AsrResult] = asyncio.get_running_loop().create_future()
        self._finals.append(_Job(asr, audio, options, future=future))
        self._wake.set()
        return future

    def submit_partial(self, key: Hashable, asr: Asr, audio: np.ndarray, options: AsrOptions,
                       on_done: PartialCallback) -> bool:
        """Queue a partial for session ``key``; True when it replaced (dropped) a queued one."""
        if self.failure is not None:
            raise self.failure
        if not self.running or self._wake is None:
            raise RuntimeError("DecodeScheduler.start() was not called")
        dropped = self._partials.pop(key, None) is not None
        if dropped:
            self.stats.dropped_partials += 1
        self._partials[key] = _Job(asr, audio, options, on_done=on_done)
        self._wake.set()
        return dropped

    def cancel_partial(self, key: Hashable) -> None:
        """Withdraw the session's queued partial (utterance closed, session gone)."""
        self._partials.pop(key, None)

    async def _run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug or a dead executor: nobody may wait forever
            logger.exception("live decode scheduler stopped")
            self.failure = EngineError(f"live decoding stopped ({type(exc).__name__}: {exc}); "
                                       "reconnect later", retryable=True)
            for job in self._finals:
                if job.future is not None and not job.future.done():
                    job.future.set_exception(self.failure)
            self._finals.clear()
            self._partials.clear()
            for callback in list(self.on_failure):
                callback(self.failure)  # logged above and recorded: the task ends here

    async def _loop(self) -> None:
        wake = self._wake
        if wake is None:
            raise RuntimeError("DecodeScheduler.start() was not called")
        while True:
            await wake.wait()
            wake.clear()
            while True:
                self._finals = deque(j for j in self._finals if not j.future or not j.future.done())
                if self._finals:
                    await self._gather_company()
                    await self._decode_finals(self._take_finals())
                elif self._partials:
                    await self._decode_partials(self._take_partials())
                else:
                    break

    async def _gather_company(self) -> None:
        """Wait up to ``max_wait_s`` for other streams' finals when a batch could still grow."""
        if self.max_wait_s <= 0 or self._wake is None:
            return
        if len(self._finals) >= min(self.max_batch, max(self.active_streams, 1)):
            return
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), self.max_wait_s)
        except TimeoutError:
            pass
        self._wake.set()  # re-check everything on the next turn

    def _take_finals(self) -> list[_Job]:
        group = self._finals[0].group
        batch: list[_Job] = []
        rest: deque[_Job] = deque()
        for job in self._finals:
            if len(batch) < self.max_batch and job.group == group:
                batch.append(job)
            else:
                rest.append(job)
        self._finals = rest
        return batch

    def _take_partials(self) -> list[_Job]:
        """Oldest request first; small batches, so a final never waits long behind partials."""
        first_key = next(iter(self._partials))
        group = self._partials[first_key].group
        keys = [k for k, j in self._partials.items() if j.group == group][: self.partial_batch]
        return [self._partials.pop(k) for k in keys]

    async def _call(self, jobs: Sequence[_Job]) -> list[AsrResult]:
        loop = asyncio.get_running_loop()
        asr, options = jobs[0].asr, jobs[0].options
        audio = [j.audio for j in jobs]
        self.busy = True
        try:
            return await loop.run_in_executor(self._executor, asr.transcribe_batch, audio, options)
        finally:
            self.busy = False

    async def _decode_finals(self, jobs: list[_Job]) -> None:
        self.stats.record_final_batch(len(jobs))
        try:
            results = await self._call(jobs)
        except Exception as exc:  # an engine failure belongs to the streams that asked
            logger.warning("final decode of %d utterance(s) failed: %s", len(jobs), exc)
            for job in jobs:
                if job.future is not None and not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, result in zip(jobs, results):
            if job.future is not None and not job.future.done():
                job.future.set_result(result)

    async def _decode_partials(self, jobs: list[_Job]) -> None:
        self.stats.partials += len(jobs)
        self.stats.partial_batches += 1
        try:
            results: list[AsrResult | None] = list(await self._call(jobs))
            error: BaseException | None = None
        except Exception as exc:  # partials are best effort: report, keep serving finals
            logger.warning("partial decode failed: %s", exc)
            results, error = [None] * len(jobs), exc
        for job, result in zip(jobs, results):
            if job.on_done is not None:
                job.on_done(result, error)
