"""LLM engines on the real offline model: in-process llama.cpp, and the OpenAI-compatible engine
against a real OpenAI-compatible server (llama.cpp's own HTTP server inside xllamacpp)."""

from __future__ import annotations

import asyncio
import json

import pytest

from voxgate.config import Settings
from voxgate.engines.base import ChatMessage
from voxgate.errors import ConfigError, EngineError

pytest.importorskip("xllamacpp", reason="the llm extra (xllamacpp) is not installed")
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def llm(manager):
    from voxgate.models import resolve

    try:
        resolve("qwen2.5-coder-1.5b-instruct-q4km", manager.settings.cache_dir, offline=True)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"offline LLM pack not installed (pip install 'voxgate[models-llm]'): {exc}")
    return manager.get("llm", "qwen2.5-coder-1.5b-instruct-q4km")


ASK = [ChatMessage("user", "Reply with the single word: yes")]


def test_llamacpp_and_openai_engine_agree_on_a_real_server(llm) -> None:
    from voxgate.engines.llm_openai import OpenAiLlm

    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    local = asyncio.run(llm.complete(ASK, max_tokens=12, json_schema=schema))
    assert json.loads(local) in ({"ok": True}, {"ok": False})  # grammar-constrained JSON
    base_url, key = llm.http_endpoint
    remote = OpenAiLlm(base_url, "qwen", key, timeout_s=120, max_retries=1, seed=llm.seed,
                       context_tokens=4096)
    assert asyncio.run(remote.complete(ASK, max_tokens=12, json_schema=schema)) == local

    async def streamed() -> str:
        return "".join([d async for d in remote.stream(ASK, max_tokens=3)])

    text = asyncio.run(streamed())
    assert text.strip() and text == asyncio.run(llm.complete(ASK, max_tokens=3))
    assert remote.version_info()["base_url"].startswith("http://127.0.0.1:")

    wrong = OpenAiLlm(base_url, "qwen", "not-the-key", timeout_s=30, max_retries=2,
                      seed=1, context_tokens=4096)
    with pytest.raises(EngineError, match="401") as info:
        asyncio.run(wrong.complete(ASK, max_tokens=2))
    assert not info.value.retryable


def test_openai_engine_unreachable_and_bad_url() -> None:
    from jobs_support import free_port
    from voxgate.engines.llm_openai import OpenAiLlm

    down = OpenAiLlm(f"http://127.0.0.1:{free_port()}/v1", "m", "", timeout_s=2, max_retries=1,
                     seed=1, context_tokens=1024)
    with pytest.raises(EngineError, match="unreachable") as info:
        asyncio.run(down.complete(ASK))
    assert info.value.retryable
    with pytest.raises(ConfigError):
        OpenAiLlm("ftp://x", "m", "", timeout_s=1, max_retries=0, seed=1, context_tokens=1)
    with pytest.raises(ConfigError, match="BASE_URL"):
        OpenAiLlm.load(None, Settings(_env_file=None))
