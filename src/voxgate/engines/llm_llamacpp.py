"""In-process GGUF chat LLM on llama.cpp (``xllamacpp``), the offline default.

xllamacpp embeds llama.cpp's own server: requests are OpenAI chat-completion dicts handled in
C++ without the GIL, so a blocking call runs in a worker thread and the event loop stays free.
JSON-schema output is enforced by llama.cpp's grammar sampler (``response_format``), so small
models still return parseable JSON. The embedded HTTP listener is bound to loopback and locked
with a random API key; voxgate itself never goes through it.

llama.cpp writes its own log (model metadata, per-request timings) straight to stderr from C++;
it stays silent unless this module's logger is enabled for DEBUG (``--debug``), so CLI output and
the demo show only voxgate's own messages. Load failures still surface as ``ModelError``.

Speed on the 2-core dev machine, quiet (bench/README.md "Jobs"): ~75 prompt tok/s and ~25
generated tok/s with the defaults below (threads = cores, n_batch 2048 / n_ubatch 512, flash
attention auto); forcing flash attention on, or one generation thread, is slower there.
Requests bypass the prompt cache (see ``_NO_PROMPT_CACHE``) so outputs are reproducible.

Slots: a live conversation (a voice agent session, ``stream(cache_key=...)``) gets a llama.cpp
slot of its own (``VOXGATE_LLM__SESSION_SLOTS``), so its conversation stays in the KV cache
between turns whatever other sessions or translations read meanwhile; everything else shares
slot 0. The slots draw on one KV pool (``kv_unified``) of ``context_tokens`` +
``session_slot_tokens`` per session slot, and idle slots keep their cache
(``cache_idle_slots`` off: llama.cpp would otherwise clear every idle slot of a unified pool
whenever another starts). Measured in bench/README.md "Voice agent: a llama.cpp slot per
session".
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import xllamacpp

from ..config import Settings
from ..errors import EngineError, ModelError
from ..models import ResolvedModel
from .base import ChatMessage, LlmCapabilities
from .llm_openai import chat_body, content_of
from .priority import Priority, run_at_nice

__all__ = ["MAX_AUTO_SESSION_SLOTS", "LlamaCppLlm", "find_gguf", "native_log_verbosity",
           "session_slots"]

logger = logging.getLogger(__name__)
# one line per request with llama.cpp's own count of the prompt tokens it read and took from the
# cache (DEBUG): the way to see whether a conversation found its prefix in its slot
timings_logger = logging.getLogger(f"{__name__}.timings")
MAX_AUTO_SESSION_SLOTS = 16  # session_slots=-1 follows the agent's max_sessions up to this
_QUIET = -1  # llama.cpp's common log prints entries with verbosity <= threshold; -1 mutes all
# A prompt served from the KV cache re-evaluates only its last token, and those logits differ in
# the last bits from a full evaluation: greedy output then depends on the previous request. Every
# request is evaluated whole, so identical input gives identical output (costs a re-read of the
# ~80-token cleanup instructions per chunk and of the prompt on a rare summary retry).
_NO_PROMPT_CACHE = {"cache_prompt": False}


def native_log_verbosity() -> int:
    """llama.cpp's own log threshold: its default (3) when debugging, else muted."""
    return 3 if logger.isEnabledFor(logging.DEBUG) else _QUIET


def session_slots(settings: Settings) -> int:
    """llama.cpp slots kept for live conversations (see the module docstring)."""
    slots = settings.llm.session_slots
    if slots < 0:
        slots = min(settings.agent.max_sessions, MAX_AUTO_SESSION_SLOTS)
    return slots


def find_gguf(path: Path) -> Path:
    """The model file: ``path`` itself, or the single ``*.gguf`` inside a directory."""
    if path.is_file():
        return path
    found = sorted(path.glob("*.gguf")) if path.is_dir() else []
    if not found:
        raise ModelError(f"{path}: no .gguf model file found")
    return found[0]


class LlamaCppLlm:
    """One loaded GGUF model; requests queue inside llama.cpp per slot (slot 0, or a live
    conversation's own slot: see the module docstring), slots decode in one batch.

    Live and file work: a generation cannot be paused, so a voice agent's or a translation's
    request (``priority`` below ``Priority.FILE``) would wait behind a job's cleanup of a long
    chunk. Once the engine has served live work, file work therefore runs on a second llama.cpp
    server over the same (memory-mapped, so shared) weights whose compute threads were created
    at a low OS priority (``VOXGATE_LLM__FILE_LANE_NICE``), as the Whisper engine does: the
    kernel gives live generation the cores when it wants them, and each lane keeps its own KV
    cache (the agent's conversation prefix is not evicted by a job). Same model, same
    parameters, no prompt cache for file work: the file lane's output is identical.
    """

    name = "llamacpp"

    def __init__(self, server: Any, model_path: Path, settings: Settings,
                 make_server: Callable[[], Any] | None = None) -> None:
        self._server = server
        self.model_path = model_path
        self.seed = settings.llm.seed
        self.capabilities = LlmCapabilities(json_schema=True, streaming=True,
                                            context_tokens=settings.llm.context_tokens)
        self._http_key = ""
        self._make_server = make_server
        self.file_lane_nice = settings.llm.file_lane_nice if sys.platform == "linux" else 0
        self._file_server: Any = None
        self._file_lane_lock = threading.Lock()
        self._served_live = False
        self.session_slots = session_slots(settings)
        self._slot_of: OrderedDict[str, int] = OrderedDict()  # cache key -> slot, LRU first
        self._slots_lock = threading.Lock()

    @classmethod
    def load(cls, resolved: ResolvedModel, settings: Settings) -> LlamaCppLlm:
        path = find_gguf(resolved.path)
        threads = settings.llm.threads or max(os.cpu_count() or 1, 1)
        key = secrets.token_urlsafe(24)
        slots = session_slots(settings)

        def make_params(live: bool) -> Any:
            params = xllamacpp.CommonParams()
            params.model.path = str(path)
            params.n_ctx = settings.llm.context_tokens
            params.n_parallel = 1
            if live and slots:  # the file lane keeps one slot: jobs' output stays bit-exact
                params.n_parallel = 1 + slots
                params.kv_unified = True
                params.cache_idle_slots = False
                params.n_ctx += slots * settings.llm.session_slot_tokens
            params.cpuparams.n_threads = threads
            params.cpuparams_batch.n_threads = threads
            params.warmup = False
            params.verbosity = native_log_verbosity()
            params.api_keys = [key]  # the embedded HTTP listener is loopback-only and locked
            return params

        def make_server(live: bool = False) -> Any:
            try:
                return xllamacpp.Server(make_params(live))
            except Exception as exc:  # llama.cpp reports load failures as generic exceptions
                raise ModelError(f"{resolved.spec.id}: llama.cpp could not load {path}: "
                                 f"{exc}") from exc

        engine = cls(make_server(live=True), path, settings, make_server)
        engine._http_key = key
        logger.info("llama.cpp loaded %s (%d threads, n_ctx=%d, %d session slots)", path.name,
                    threads, settings.llm.context_tokens, slots)
        return engine

    @property
    def http_endpoint(self) -> tuple[str, str]:
        """(base URL, API key) of llama.cpp's own OpenAI-compatible listener on loopback."""
        return f"{self._server.listening_address}/v1", self._http_key

    @property
    def file_lane_loaded(self) -> bool:
        """Whether file work has its own low-priority llama.cpp server now."""
        return self._file_server is not None

    def _server_for(self, priority: int) -> Any:
        """Live work on the live server; file work there too until live work was served,
        then on the low-priority copy (started on first need)."""
        if priority < Priority.FILE:
            self._served_live = True
            return self._server
        if not self._served_live or not self.file_lane_nice or self._make_server is None:
            return self._server
        with self._file_lane_lock:
            if self._file_server is None:
                self._file_server = run_at_nice(self._make_server, self.file_lane_nice)
                logger.info("llama.cpp: file work moved to a second server at nice %d, so live "
                            "requests never wait for it", self.file_lane_nice)
            return self._file_server

    def _slot_for(self, server: Any, cache_key: str | None) -> dict[str, Any]:
        """``id_slot`` of a request: the conversation's own slot on the live server (a new key
        takes a free slot, else the least recently used conversation's), slot 0 for the rest;
        nothing on a one-slot server."""
        if server is not self._server or not self.session_slots:
            return {}
        if cache_key is None:
            return {"id_slot": 0}
        with self._slots_lock:
            slot = self._slot_of.get(cache_key)
            if slot is None:
                taken = set(self._slot_of.values())
                free = [s for s in range(1, self.session_slots + 1) if s not in taken]
                if free:
                    slot = free[0]
                else:  # more conversations than slots: the least recently used one gives way
                    _, slot = self._slot_of.popitem(last=False)
                self._slot_of[cache_key] = slot
            self._slot_of.move_to_end(cache_key)
            return {"id_slot": slot}

    def release_cache(self, cache_key: str) -> None:
        """The conversation ``cache_key`` is over: its slot goes to the next one first (the
        cache it holds, e.g. the shared system prompt, stays until overwritten)."""
        with self._slots_lock:
            self._slot_of.pop(cache_key, None)

    def version_info(self) -> dict[str, Any]:
        return {"engine": self.name, "runtime": f"xllamacpp {xllamacpp.__version__}",
                "file": self.model_path.name, "seed": self.seed}

    def complete_raw(self, messages: Sequence[ChatMessage], *, max_tokens: int = 512,
                     temperature: float = 0.0, json_schema: dict[str, Any] | None = None,
                     priority: int = Priority.FILE) -> dict[str, Any]:
        """The whole chat-completion response, with llama.cpp's ``timings`` (tokens, tok/s)."""
        body = chat_body(messages, max_tokens=max_tokens, temperature=temperature,
                         seed=self.seed, json_schema=json_schema)
        server = self._server_for(priority)
        return server.handle_chat_completions({**body, **_NO_PROMPT_CACHE,
                                               **self._slot_for(server, None)})

    def complete_sync(self, messages: Sequence[ChatMessage], *, max_tokens: int = 512,
                      temperature: float = 0.0, json_schema: dict[str, Any] | None = None,
                      priority: int = Priority.FILE) -> str:
        return content_of(self.complete_raw(messages, max_tokens=max_tokens,
                                            temperature=temperature, json_schema=json_schema,
                                            priority=priority))

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int = 512,
                       temperature: float = 0.0, json_schema: dict[str, Any] | None = None,
                       priority: int = Priority.FILE) -> str:
        return await asyncio.to_thread(self.complete_sync, messages, max_tokens=max_tokens,
                                       temperature=temperature, json_schema=json_schema,
                                       priority=priority)

    async def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int = 512,
                     temperature: float = 0.0, json_schema: dict[str, Any] | None = None,
                     cache_prompt: bool = False, priority: int = Priority.FILE,
                     grammar: str | None = None, cache_key: str | None = None,
                     ) -> AsyncIterator[str]:
        """Deltas as llama.cpp produces them; closing the iterator stops generation.

        ``cache_prompt=True`` (the voice agent) reuses the KV cache of the prompt prefix the
        previous request left in the slot: a conversation re-reads only its new turn, at the
        cost of bit-exact reproducibility (see ``_NO_PROMPT_CACHE``); jobs keep it off.
        ``priority`` below ``Priority.FILE`` marks live work (see the class docstring).
        ``grammar``: a GBNF grammar the output must follow (llama.cpp's ``grammar`` field),
        used instead of ``json_schema`` (llama.cpp refuses both in one request), e.g. the
        Cyrillic-only translation answer of ``engines/mt_grammar.py``.
        ``cache_key`` names a live conversation: its requests share a slot of their own, so
        its prefix stays cached between turns (see the module docstring).
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = False
        body = chat_body(messages, max_tokens=max_tokens, temperature=temperature,
                         seed=self.seed, json_schema=json_schema, stream=True, grammar=grammar)
        body.update({"cache_prompt": True} if cache_prompt else _NO_PROMPT_CACHE)
        server = self._server_for(priority)
        body.update(self._slot_for(server, cache_key))

        def on_chunk(chunk: dict[str, Any]) -> bool:
            timings = chunk.get("timings")
            if timings and timings_logger.isEnabledFor(logging.DEBUG):
                timings_logger.debug("slot %s: prompt %s tokens read, %s from the cache, %.0f ms",
                                     body.get("id_slot", 0), timings.get("prompt_n"),
                                     timings.get("cache_n"), timings.get("prompt_ms") or 0.0)
            loop.call_soon_threadsafe(queue.put_nowait, ("chunk", chunk))
            return stop  # True asks llama.cpp to stop generating

        def run() -> None:
            try:
                server.handle_chat_completions(body, on_chunk)
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))
            except Exception as exc:  # surfaced to the consumer below
                loop.call_soon_threadsafe(queue.put_nowait, ("error", exc))

        worker = loop.run_in_executor(None, run)
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    break
                if kind == "error":
                    raise EngineError(f"LLM stream failed: {item}") from item
                if "error" in item or "code" in item and "choices" not in item:
                    content_of(item)  # raises with the server's message
                for choice in item.get("choices", []):
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        yield delta
        finally:
            stop = True
            await asyncio.shield(worker)

    def close(self) -> None:
        self._server = self._file_server = None
