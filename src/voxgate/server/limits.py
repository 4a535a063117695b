"""Server-wide bound on concurrent file transcriptions (OpenAI API and Wyoming share it).

HTTP callers are answered at once (``try_acquire`` fails -> 429 with a Retry-After estimate);
Wyoming callers, which have no retry convention, wait their turn (``acquire`` with a timeout).
Slots are handed over first-come first-served. Every method runs on the event loop thread.
The work itself runs on ``executor``, a thread pool with exactly one thread per slot, so an
admitted transcription never waits behind other uses of the loop's default pool.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..log_setup import in_context
from .state import AppState

__all__ = ["TranscriptionSlots", "shared_slots", "transcription_slots"]

T = TypeVar("T")
_KEY = "transcription-slots"
_DEFAULT_RETRY_S = 5
_MAX_RETRY_S = 120


class TranscriptionSlots:
    """At most ``limit`` transcriptions at once; remembers how long one takes (for Retry-After)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.active = 0
        self.executor = ThreadPoolExecutor(max_workers=limit, thread_name_prefix="transcribe")
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._started: deque[float] = deque()
        self._mean_s: float | None = None  # exponential moving average of one job's wall time

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued for it."""
        if self.active >= self.limit or self._waiters:
            return False
        self.active += 1
        self._started.append(time.monotonic())
        return True

    async def acquire(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a slot; False when none came."""
        if self.try_acquire():
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:  # wait_for cancelled the future, so release() skips it
            self._discard(future)
            return False
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # the slot arrived as we were cancelled
                self.release()
            else:
                self._discard(future)
            raise
        return True

    def release(self) -> None:
        """Give a slot back (to the longest waiter, if any)."""
        if self._started:
            took = time.monotonic() - self._started.popleft()
            self._mean_s = took if self._mean_s is None else 0.7 * self._mean_s + 0.3 * took
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._started.append(time.monotonic())
                waiter.set_result(None)
                return
        self.active = max(self.active - 1, 0)

    async def run_held(self, work: Callable[[], T]) -> T:
        """Run ``work`` on a slot thread; the caller has taken the slot, this gives it back.

        The slot is released when the thread finishes, not when the caller stops waiting: a
        client that cancels (or a deadline that expires) cannot free a slot whose decoding is
        still using the CPU, so the limit always counts the work that really runs.
        """
        try:
            # the thread logs with the request's context (request id, door), as to_thread would
            future = asyncio.get_running_loop().run_in_executor(self.executor, in_context(work))
        except BaseException:
            self.release()
            raise
        future.add_done_callback(lambda _: self.release())
        return await asyncio.shield(future)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: a typical job's time spread over the slots."""
        if self._mean_s is None:
            return _DEFAULT_RETRY_S
        return max(1, min(_MAX_RETRY_S, math.ceil(self._mean_s / self.limit)))

    def _discard(self, future: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(future)
        except ValueError:
            pass


def shared_slots(state: AppState, key: str, limit: int) -> TranscriptionSlots:
    """The app's one :class:`TranscriptionSlots` named ``key`` (created on first use with
    ``limit``): every door that spends the same kind of work counts it on the same slots."""
    slots = state.components.get(key)
    if slots is None:
        slots = state.components[key] = TranscriptionSlots(limit)
    return slots


def transcription_slots(state: AppState) -> TranscriptionSlots:
    """The app's one bound on file transcriptions, shared by every door that transcribes."""
    return shared_slots(state, _KEY, state.settings.max_concurrent_transcriptions)
