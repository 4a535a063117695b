"""Prompt prefill: the LLM reads the conversation while the user is still speaking.

With llama.cpp's prompt cache (``cache_prompt``) a request re-reads only the tokens after the
prefix its slot already holds. Reading a prompt is the LLM's first-token time: ~13 ms a token
for the 1.5B model on 2 cores, ~0.3 s for a turn's template and question. Each partial
transcript of the user's turn therefore sends the conversation with the words so far as a
one-token request whose answer is thrown away: by the time the final transcript starts the
reply, the history and most of the question are in the cache, and only the words the partial
had not heard yet (and the reply header) are left to read.

One request at a time per session, never while the session's own reply runs (a prefill queued
behind a reply in llama.cpp's single slot would evict that reply from the cache), and only for
an engine with a prompt cache (others would pay a whole request for nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from ..engines.base import ChatMessage, Llm
from ..errors import EngineError

__all__ = ["Prefill"]

logger = logging.getLogger(__name__)


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

    async def close(self) -> None:
        """Stop (llama.cpp at its first token) and wait until the request has ended."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})

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
