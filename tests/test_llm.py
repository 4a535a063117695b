"""LLM engines on the real offline model: in-process llama.cpp, and the OpenAI-compatible engine
against a real OpenAI-compatible server (llama.cpp's own HTTP server inside xllamacpp)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time

import pytest
from conftest import require_pack

from voxgate.config import Settings
from voxgate.engines.base import ChatMessage
from voxgate.errors import ConfigError, EngineError

pytest.importorskip("xllamacpp", reason="the llm extra (xllamacpp) is not installed")
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def llm(manager):
    require_pack("qwen2.5-coder-1.5b-instruct-q4km", manager.settings.cache_dir)
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


def test_transcribe_summary_cli_is_clean_and_schema_valid(llm, librivox, tmp_path) -> None:
    """The README demo's second command on the same joined LibriVox recording: the transcript,
    then a summary valid against the template; llama.cpp's own log stays off stderr."""
    import os
    import subprocess
    import sys

    import jsonschema
    from conftest import wer
    from jobs_support import wav_of

    from voxgate.postprocess import load_template

    recording = wav_of(librivox, tmp_path / "sense_and_sensibility.wav")
    env = {**os.environ, "VOXGATE_OFFLINE": "true"}
    done = subprocess.run([sys.executable, "-m", "voxgate.cli", "transcribe", str(recording),
                           "--format", "text", "--summary", "meeting_notes_v1"],
                          capture_output=True, timeout=400, env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stderr.decode().strip() == ""  # no llama.cpp model dump / timings
    transcript, _, block = done.stdout.decode().partition("\n\nSummary:\n")
    assert wer(" ".join(c.text for c in librivox), transcript) < 0.15
    summary = json.loads(block)
    jsonschema.validate(summary, load_template(Settings(_env_file=None), "meeting_notes_v1").schema)
    assert "dashwood" in json.dumps(summary).lower()  # about this recording, not invented


def test_native_log_follows_the_debug_level() -> None:
    import logging

    from voxgate.engines.llm_llamacpp import logger, native_log_verbosity

    previous = logger.level
    try:
        logger.setLevel(logging.DEBUG)
        assert native_log_verbosity() == 3
        logger.setLevel(logging.WARNING)
        assert native_log_verbosity() == -1
    finally:
        logger.setLevel(previous)


def test_same_request_gives_the_same_answer_whatever_came_before(llm, librivox) -> None:
    """Reproducible output: a prompt that llama.cpp could serve from its cache is evaluated
    whole again (a cached prompt's last-token logits differ and change greedy decoding)."""
    text = " ".join(c.text for c in librivox)
    ask = [ChatMessage("system", "You turn speech transcripts into notes."), ChatMessage(
        "user", f"Write meeting notes as JSON with title, summary, key_points for:\n{text}")]
    answers = [llm.complete_sync(ask, max_tokens=60) for _ in range(3)]
    assert answers[0] and answers.count(answers[0]) == 3, answers


def _nice_19_threads() -> int:
    count = 0
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/stat") as stat:
            count += int(stat.read().rsplit(")", 1)[1].split()[16]) == 19
    return count


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux-only")
def test_file_work_moves_to_a_low_priority_server_once_live_work_was_served(manager) -> None:
    """Jobs use the one llama.cpp server until a live request (agent, translation) comes; then
    a second server whose threads run at nice 19 takes file work, gives the same output, and a
    live request no longer queues behind a long file generation."""
    from voxgate.engines.llm_llamacpp import LlamaCppLlm
    from voxgate.engines.priority import Priority
    from voxgate.models import resolve

    model = "qwen2.5-coder-1.5b-instruct-q4km"
    require_pack(model, manager.settings.cache_dir)
    resolved = resolve(model, manager.settings.cache_dir, offline=True)
    llm = LlamaCppLlm.load(resolved, manager.settings)
    try:
        ask = [ChatMessage("user", "Name three colours, comma-separated.")]
        before = llm.complete_sync(ask, max_tokens=16)
        assert not llm.file_lane_loaded
        niced = _nice_19_threads()
        live = asyncio.run(llm.complete(ASK, max_tokens=4, priority=Priority.LIVE_FINAL))
        assert live.strip()
        assert llm.complete_sync(ask, max_tokens=16) == before  # identical on the file lane
        assert llm.file_lane_loaded and _nice_19_threads() > niced

        order: list[str] = []
        started = threading.Event()

        def long_file_generation() -> None:
            started.set()
            llm.complete_sync([ChatMessage("user", "Count from one to two hundred in words.")],
                              max_tokens=300)
            order.append("file")

        worker = threading.Thread(target=long_file_generation)
        worker.start()
        started.wait(10)
        time.sleep(0.5)  # the file generation is under way
        asyncio.run(llm.complete(ASK, max_tokens=4, priority=Priority.LIVE_FINAL))
        order.append("live")
        worker.join(300)
        assert order == ["live", "file"]
    finally:
        llm.close()
