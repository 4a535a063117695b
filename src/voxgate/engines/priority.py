"""Who runs next on a shared model: live finals, then live partials, then file work.

One process serves live streams and file transcriptions from the same loaded model. A model
runs one call at a time (CTranslate2 with one worker queues calls first come, first served), so
without a gate a live final waits behind whatever file batch came first: seconds, or tens of
seconds for a long job. :class:`PriorityGate` hands the model to the most urgent waiting call
instead, and remembers when live work last asked, so file work can cut itself into smaller
units while live streams are active (a live final then waits for at most one small unit).
"""

from __future__ import annotations

import heapq
import inspect
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Any, TypeVar

__all__ = ["Priority", "PriorityGate", "live_llm_kwargs", "run_at_nice", "stream_parameters"]

T = TypeVar("T")


class Priority(IntEnum):
    """Lower runs first."""

    LIVE_FINAL = 0
    LIVE_PARTIAL = 1
    FILE = 2


class PriorityGate:
    """A lock whose waiters are served by priority, then in arrival order. Thread-safe."""

    def __init__(self, live_window_s: float = 10.0) -> None:
        self.live_window_s = live_window_s
        self._cond = threading.Condition()
        self._busy = False
        self._waiting: list[tuple[int, int]] = []  # heap of (priority, arrival number)
        self._arrivals = itertools.count()
        self._last_live = float("-inf")
        self.waits = {p: 0 for p in Priority}  # calls that had to wait, per priority

    @contextmanager
    def hold(self, priority: int = Priority.FILE) -> Iterator[None]:
        """Run the block with the model to itself, after every more urgent waiter."""
        ticket = (int(priority), next(self._arrivals))
        with self._cond:
            if priority < Priority.FILE:
                self._last_live = time.monotonic()
            heapq.heappush(self._waiting, ticket)
            if self._busy or self._waiting[0] != ticket:
                self.waits[Priority(min(int(priority), Priority.FILE))] += 1
            while self._busy or self._waiting[0] != ticket:
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    @property
    def served_live(self) -> bool:
        """Live work has asked for the model at least once (this engine serves live streams)."""
        return self._last_live != float("-inf")

    def live_active(self) -> bool:
        """Live work asked for the model within the last ``live_window_s`` seconds."""
        return time.monotonic() - self._last_live < self.live_window_s

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._waiting)


def run_at_nice(build: Callable[[], T], nice: int) -> T:
    """``build()`` on a new thread running at OS priority ``nice`` (Linux: per thread).

    Threads inherit their creator's nice value, so the worker threads an engine starts while it
    loads (CTranslate2's compute threads, llama.cpp's server and compute threads) keep running
    at that priority for every call made later, whoever makes it: that is how file work gets
    its own low-priority copy of a model. Exceptions from ``build`` reach the caller.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
            box["value"] = build()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"load-at-nice-{nice}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def stream_parameters(llm: Any) -> frozenset[str]:
    """The keyword names ``llm.stream`` takes beyond the ``Llm`` protocol's (``priority``,
    ``cache_prompt``, ``cache_key``, ``grammar``... on the built-in engines): callers pass an
    optional knob only where it is understood, so a user's own engine or a test double need
    not know them; empty when the signature cannot be read."""
    try:
        return frozenset(inspect.signature(llm.stream).parameters)
    except (TypeError, ValueError, AttributeError):
        return frozenset()


def live_llm_kwargs(llm: Any) -> dict[str, Any]:
    """``{"priority": Priority.LIVE_FINAL}`` for an Llm whose ``stream`` takes a priority (the
    built-in engines), nothing for one that does not (a user's own engine, a test double), so
    live sessions mark their requests without requiring every Llm to know about priorities."""
    return {"priority": Priority.LIVE_FINAL} if "priority" in stream_parameters(llm) else {}
