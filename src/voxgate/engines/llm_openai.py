"""Any OpenAI-compatible chat server (vLLM, NIM, Ollama, llama.cpp server) over HTTP.

Timeouts and retries live here: connection errors, 429 and 5xx are retried with exponential
backoff (``settings.llm.max_retries``); other 4xx are the caller's fault and fail at once.
JSON-schema output is requested with ``response_format`` (vLLM, llama.cpp and recent Ollama honour
it); the caller still validates, because some servers ignore it. A GBNF grammar (llama.cpp's own
``grammar`` field, e.g. the Cyrillic translation answer of ``engines/mt_grammar.py``) is sent only
when the server is declared to take one (``VOXGATE_LLM__GRAMMAR``, ``accepts_grammar``): OpenAI
itself answers an unknown field with HTTP 400, other servers may ignore it silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from ..config import Settings
from ..errors import ConfigError, EngineError
from ..models import ResolvedModel
from .base import ChatMessage, LlmCapabilities

__all__ = ["OpenAiLlm", "chat_body", "content_of"]

logger = logging.getLogger(__name__)
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


def _redacted(url: str) -> str:
    """The URL without credentials, fit for logs and version records."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def chat_body(messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float,
              seed: int, json_schema: dict[str, Any] | None, stream: bool = False,
              model: str | None = None, grammar: str | None = None) -> dict[str, Any]:
    """An OpenAI chat-completions request body (shared with the OpenAI-compatible engine).
    ``grammar`` (llama.cpp's GBNF field) replaces ``json_schema``: llama.cpp refuses both."""
    body: dict[str, Any] = {"messages": _messages(messages), "max_tokens": max_tokens,
                            "temperature": temperature, "seed": seed, "stream": stream}
    if model:
        body["model"] = model
    if grammar:
        body["grammar"] = grammar
    elif json_schema is not None:
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "output", "schema": json_schema,
                                                   "strict": True}}
    return body


def content_of(response: dict[str, Any]) -> str:
    """The assistant text of a chat completion, or ``EngineError`` for an error payload."""
    if "error" in response or ("code" in response and "choices" not in response):
        error = response.get("error", response)
        message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
        raise EngineError(f"LLM error: {message}")
    try:
        return response["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError) as exc:
        raise EngineError(f"LLM returned an unexpected response: {str(response)[:200]}") from exc


class OpenAiLlm:
    name = "openai"

    def __init__(self, base_url: str, model: str, api_key: str, *, timeout_s: float,
                 max_retries: int, seed: int, context_tokens: int,
                 transport: httpx.AsyncBaseTransport | None = None,
                 accepts_grammar: bool = False) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise ConfigError(f"LLM base URL must be http(s)://..., got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.seed = seed
        self.max_retries = max_retries
        self.timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._transport = transport
        self.accepts_grammar = accepts_grammar  # the server takes llama.cpp's ``grammar`` field
        self.capabilities = LlmCapabilities(json_schema=True, streaming=True,
                                            context_tokens=context_tokens)

    @classmethod
    def load(cls, resolved: ResolvedModel | None, settings: Settings) -> OpenAiLlm:
        llm = settings.llm
        if not llm.base_url:
            raise ConfigError("VOXGATE_LLM__BASE_URL is empty: no OpenAI-compatible server set")
        return cls(llm.base_url, llm.model, llm.api_key, timeout_s=llm.timeout_s,
                   max_retries=llm.max_retries, seed=llm.seed, context_tokens=llm.context_tokens,
                   accepts_grammar=llm.grammar)

    def version_info(self) -> dict[str, Any]:
        return {"engine": self.name, "base_url": _redacted(self.base_url),
                "served_model": self.model, "seed": self.seed}

    def _client(self) -> httpx.AsyncClient:
        # A client per call: the worker runs each call in its own event loop.
        return httpx.AsyncClient(base_url=self.base_url, headers=self._headers,
                                 timeout=self.timeout, transport=self._transport)

    async def _backoff(self, attempt: int, reason: str) -> None:
        delay = min(0.5 * 2 ** attempt, 8.0)
        logger.warning("LLM request failed (%s); retry %d/%d in %.1fs", reason, attempt + 1,
                       self.max_retries, delay)
        await asyncio.sleep(delay)

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int = 512,
                       temperature: float = 0.0, json_schema: dict[str, Any] | None = None,
                       priority: int = 2) -> str:
        # ``priority`` (engines.priority.Priority) is the remote server's business: accepted so
        # that callers treat every Llm alike, not sent
        body = chat_body(messages, max_tokens=max_tokens, temperature=temperature,
                         seed=self.seed, json_schema=json_schema, model=self.model)
        async with self._client() as client:
            for attempt in range(self.max_retries + 1):
                try:
                    response = await client.post("/chat/completions", json=body)
                except httpx.TransportError as exc:  # connect / read timeouts, refused
                    if attempt >= self.max_retries:
                        raise EngineError(f"LLM server {_redacted(self.base_url)} unreachable: "
                                          f"{type(exc).__name__}", retryable=True) from exc
                    await self._backoff(attempt, type(exc).__name__)
                    continue
                if response.status_code in _RETRY_STATUS and attempt < self.max_retries:
                    await self._backoff(attempt, f"HTTP {response.status_code}")
                    continue
                if response.status_code >= 400:
                    raise EngineError(
                        f"LLM server answered HTTP {response.status_code}: {response.text[:200]}",
                        retryable=response.status_code in _RETRY_STATUS)
                return content_of(response.json())
        raise EngineError("LLM request failed after retries", retryable=True)  # pragma: no cover

    async def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int = 512,
                     temperature: float = 0.0, json_schema: dict[str, Any] | None = None,
                     priority: int = 2, grammar: str | None = None) -> AsyncIterator[str]:
        """Server-sent deltas; connection failures before the first byte are retried.
        ``grammar`` (GBNF) replaces ``json_schema`` when the server ``accepts_grammar``; a
        server that does not is never sent one (callers check ``accepts_grammar``)."""
        if grammar and not self.accepts_grammar:
            raise ConfigError("this OpenAI-compatible server is not declared to take a grammar "
                              "(VOXGATE_LLM__GRAMMAR)")
        body = chat_body(messages, max_tokens=max_tokens, temperature=temperature,
                         seed=self.seed, json_schema=json_schema, stream=True, model=self.model,
                         grammar=grammar)
        async with self._client() as client:
            for attempt in range(self.max_retries + 1):
                try:
                    async with client.stream("POST", "/chat/completions", json=body) as response:
                        if response.status_code >= 400:
                            text = (await response.aread()).decode(errors="replace")
                            if response.status_code in _RETRY_STATUS and attempt < self.max_retries:
                                await self._backoff(attempt, f"HTTP {response.status_code}")
                                continue
                            raise EngineError(f"LLM server answered HTTP "
                                              f"{response.status_code}: {text[:200]}")
                        async for line in response.aiter_lines():
                            if not line.startswith("data:"):
                                continue
                            data = line[5:].strip()
                            if data == "[DONE]":
                                return
                            chunk = json.loads(data)
                            for choice in chunk.get("choices", []):
                                delta = (choice.get("delta") or {}).get("content")
                                if delta:
                                    yield delta
                        return
                except httpx.TransportError as exc:
                    if attempt >= self.max_retries:
                        raise EngineError(f"LLM server {_redacted(self.base_url)} unreachable: "
                                          f"{type(exc).__name__}", retryable=True) from exc
                    await self._backoff(attempt, type(exc).__name__)
