"""Prompt prefill: the LLM reads the conversation while the user is still speaking.

With llama.cpp's prompt cache (``cache_prompt``) a request re-reads only the tokens after the
prefix its slot already holds. Reading a prompt is the LLM's first-token time: ~13 ms a token
for the 1.5B model on 2 cores, ~0.3 s for a turn's template and question. Each partial
transcript of the user's turn therefore sends the conversation with the words so far as a
one-token request whose answer is thrown away: by the time the final transcript starts the
reply, the history and most of the question are in the cache, and only the words the partial
had not heard yet (and the reply header) are left to read.

One request at a time per session, never while the session's own reply runs (a prefill queued
behind a reply in the session's slot would only delay it), and only for an engine with a prompt
cache (others would pay a whole request for nothing).

The session's first request reads its system prompt (and any history) when the session opens
(:meth:`Prefill.open`), off the live path: the first turn then finds it cached too. An engine
that keeps each conversation in a slot of its own (llama.cpp, ``cache_key``) gets the session
id as the key, so two sessions never evict each other's prefix; :meth:`Prefill.close` gives the
slot back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from ..engines.base import ChatMessage, Llm
from ..engines.priority import live_llm_kwargs, stream_parameters
from ..errors import EngineError

__all__ = ["Prefill", "session_llm_kwargs"]

logger = logging.getLogger(__name__)


def session_llm_kwargs(llm: Llm, *, cache_prompt: bool, session_id: str) -> dict[str, Any]:
    """What every LLM request of one session carries, as far as ``llm.stream`` takes it:
    ``cache_prompt``, ``cache_key`` (the session id, when the prompt cache is on) and the live
    priority (a reply is live work, not a job's)."""
    parameters = stream_parameters(llm)
    kwargs: dict[str, Any] = {}
    if "cache_prompt" in parameters:
        kwargs["cache_prompt"] = cache_prompt
        if cache_prompt and "cache_key" in parameters:
            kwargs["cache_key"] = session_id
    kwargs.update(live_llm_kwargs(llm))
    return kwargs


class Prefill:
    """Warms one session's LLM prompt cache; see the module docstring."""

    def __init__(self, llm: Llm, llm_kwargs: dict[str, Any], *, enabled: bool,
                 timeout_s: float, log_id: str = "") -> None:
        self.llm = llm
        self.kwargs = llm_kwargs
        self.enabled = enabled and bool(llm_kwargs.get("cache_prompt"))
        self.timeout_s = timeout_s
        self.log_id = log_id
        self.requests = 0
        self._task: asyncio.Task[None] | None = None
        self._last: str | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def open(self, messages: Sequence[ChatMessage]) -> bool:
        """The session opened: read its prompt so far (system prompt, history) into the cache
        now, before the user's first words; True when a request started."""
        return self.warm(messages)

    def warm(self, messages: Sequence[ChatMessage]) -> bool:
        """Start reading ``messages`` into the cache unless a prefill is still running or the
        prompt is the one read last; True when a request started."""
        if not self.enabled or self.running:
            return False
        key = "\x00".join(f"{m.role}\x01{m.content}" for m in messages)
        if key == self._last:
            return False
        self._last = key
        self.requests += 1
        self._task = asyncio.create_task(self._read(list(messages)),
                                         name=f"agent-prefill-{self.log_id}")
        return True

    async def wait(self) -> None:
        """Until the running prefill (if any) has ended."""
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def close(self) -> asyncio.Task[None] | None:
        """Stop the prefill and give the session's cache slot back to the engine once its
        request has ended. Returns that request's task when it is still running: llama.cpp
        sees a stop only between generated tokens, not while it reads a prompt (seconds under
        load), and the session must not hold its server slot that long, so the caller does
        not wait here; it keeps the task to wait for before the engine goes away."""
        self.enabled = False
        task, self._task = self._task, None
        if task is None or task.done():
            self._release_cache()
            return None
        task.cancel()
        task.add_done_callback(lambda _: self._release_cache())
        return task

    def _release_cache(self) -> None:
        release = getattr(self.llm, "release_cache", None)
        key = self.kwargs.get("cache_key")
        if release is not None and key is not None:
            release(key)

    async def _read(self, messages: list[ChatMessage]) -> None:
        stream = self.llm.stream(messages, max_tokens=1, temperature=0.0, **self.kwargs)
        try:
            async with asyncio.timeout(self.timeout_s):
                async for _ in stream:
                    break  # the prompt is read: the token itself is not wanted
        except (EngineError, OSError, RuntimeError, ValueError, TimeoutError) as exc:
            # only a cache warm-up failed; the reply's own request reports a real failure
            logger.debug("agent session %s: prefill failed: %s", self.log_id, exc)
        finally:
            with contextlib.suppress(EngineError, OSError, RuntimeError, StopAsyncIteration):
                await stream.aclose()  # type: ignore[attr-defined]
