"""The agent's LLM prompt cache: the session's prompt read when it opens, a llama.cpp slot per
session (``cache_key``), and the slot given back at close.

Ordering with a deterministic fake engine; slot assignment on the engine's own bookkeeping (no
model); and once on the real llama.cpp server: after another conversation used the server, a
session's request still finds its own system prompt in its slot (llama.cpp's own count of the
prompt tokens it read, logged per request)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator

import pytest
from test_agent import FakeAsr, FakeVoice, _agent_end, _say, _silence

from voxgate.agent import AgentConfig, AgentSession
from voxgate.agent.prefill import session_llm_kwargs
from voxgate.config import Settings
from voxgate.engines.base import ChatMessage

SYSTEM = "Be brief."


class SlotLlm:
    """A fake with llama.cpp's knobs: records each request's kwargs and the slots given back."""

    name = "slot-llm"

    def __init__(self, reply: str = "Paris is the capital of France.", hang_first: bool = False,
                 stop_lag_s: float = 0.0) -> None:
        self.reply, self.hang_first = reply, hang_first
        self.stop_lag_s = stop_lag_s  # a cancelled request runs on this long (llama.cpp
        # reading a prompt checks for a stop only between generated tokens)
        self.requests: list[tuple[list[ChatMessage], dict]] = []
        self.released: list[str] = []
        self.running = 0

    async def stream(self, messages, *, max_tokens: int = 512, temperature: float = 0.0,
                     json_schema=None, cache_prompt: bool = False, priority: int = 2,
                     cache_key: str | None = None) -> AsyncIterator[str]:
        self.requests.append((list(messages), {"cache_prompt": cache_prompt, "cache_key": cache_key,
                                               "max_tokens": max_tokens, "priority": priority}))
        self.running += 1
        try:
            if self.hang_first and len(self.requests) == 1:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    await asyncio.shield(asyncio.sleep(self.stop_lag_s))
                    raise
            for i, word in enumerate(self.reply.split(" ")[:max_tokens]):
                await asyncio.sleep(0.005)
                yield word if i == 0 else " " + word
        finally:
            self.running -= 1

    def release_cache(self, cache_key: str) -> None:
        assert self.running == 0, "a slot given back while its request still runs"
        self.released.append(cache_key)


def _open(llm, **config) -> tuple[AgentSession, FakeAsr]:
    asr = FakeAsr()
    cfg = AgentConfig(system_prompt=SYSTEM, end_of_turn_ms=300, asr_endpointing_ms=100,
                      complete_wait_ms=300, playout_lead_ms=1000, **config)
    return AgentSession(cfg, asr, llm, FakeVoice()), asr


async def test_a_session_reads_its_system_prompt_when_it_opens_in_its_own_slot():
    llm = SlotLlm()
    first, asr = _open(llm)
    second, _ = _open(llm)
    try:
        await asyncio.sleep(0.1)
        opened = [(m, k) for m, k in llm.requests if k["max_tokens"] == 1]
        # the open-time read: the system prompt alone, before any user word, one per session
        assert [[(x.role, x.content) for x in m] for m, _ in opened] == [[("system", SYSTEM)]] * 2
        assert [k["cache_key"] for _, k in opened] == [first.id, second.id]
        assert all(k["cache_prompt"] and k["priority"] < 2 for _, k in opened)
        events: list = []

        async def collect() -> None:
            async for event in first.events():
                events.append(event)

        reader = asyncio.create_task(collect())
        await _say(first, asr, "What is the capital of France?")
        await _silence(first, 0.6)
        for _ in range(200):
            if any(_agent_end(e) for e in events):
                break
            await asyncio.sleep(0.01)
        assert any(_agent_end(e) for e in events)
        reply = [(m, k) for m, k in llm.requests if k["max_tokens"] > 1]
        assert len(reply) == 1 and reply[0][1]["cache_key"] == first.id  # the same slot
        assert reply[0][0][0] == ChatMessage("system", SYSTEM)  # ...whose prefix was read
        await first.close()
        reader.cancel()
        assert llm.released == [first.id]
    finally:
        await first.close()
        await second.close()
    assert sorted(llm.released) == sorted([first.id, second.id])  # each slot given back once


async def test_close_does_not_wait_for_the_open_read_but_gives_the_slot_back_after_it():
    """A session closed while its open-time read still runs frees its server slot at once (a
    client reconnecting is not refused for seconds); llama.cpp's cache slot is given back only
    when the request has really stopped, and the session says which request that is."""
    llm = SlotLlm(hang_first=True, stop_lag_s=0.5)  # the read never answers, stops slowly
    session, _ = _open(llm)
    await asyncio.sleep(0.05)
    assert llm.running == 1
    await asyncio.wait_for(session.close(), 0.4)  # not the 0.5 s the request takes to stop
    assert session.lingering is not None and llm.running == 1 and llm.released == []
    await asyncio.wait_for(asyncio.wait({session.lingering}), 5)
    await asyncio.sleep(0)  # the done callback
    assert llm.running == 0 and llm.released == [session.id]


async def test_no_open_read_and_no_slot_without_the_prompt_cache():
    llm = SlotLlm()
    session, _ = _open(llm, cache_prompt=False)
    await asyncio.sleep(0.05)
    await session.close()
    assert llm.requests == [] and llm.released == []
    assert "cache_key" not in session_llm_kwargs(llm, cache_prompt=False, session_id="s")
    assert session_llm_kwargs(llm, cache_prompt=True, session_id="s")["cache_key"] == "s"


def test_llamacpp_slots_one_per_conversation_least_recently_used_gives_way(tmp_path):
    """The engine's slot bookkeeping (no model loaded): a conversation keeps its slot, others
    share slot 0, a third conversation on two slots takes the least recently used one's, and
    a released slot is the next one taken."""
    pytest.importorskip("xllamacpp", reason="the llm extra (xllamacpp) is not installed")
    from voxgate.engines.llm_llamacpp import LlamaCppLlm, session_slots

    settings = Settings(_env_file=None, llm={"session_slots": 2})
    assert session_slots(settings) == 2
    assert session_slots(Settings(_env_file=None, agent={"max_sessions": 40})) == 16
    assert session_slots(Settings(_env_file=None, llm={"session_slots": 0})) == 0
    server = object()
    llm = LlamaCppLlm(server, tmp_path / "m.gguf", settings)
    slot = llm._slot_for
    assert slot(server, None) == {"id_slot": 0}
    assert slot(server, "a") == {"id_slot": 1} and slot(server, "b") == {"id_slot": 2}
    assert slot(server, "a") == {"id_slot": 1}  # a is now the most recently used
    assert slot(server, "c") == {"id_slot": 2}  # b gave way
    assert slot(server, "b") == {"id_slot": 1}  # ...and then a did
    llm.release_cache("c")
    assert slot(server, "d") == {"id_slot": 2}
    assert slot(object(), "a") == {}  # the file lane has one slot: no id_slot
    one = LlamaCppLlm(server, tmp_path / "m.gguf", Settings(_env_file=None,
                                                            llm={"session_slots": 0}))
    assert one._slot_for(server, "a") == {} and one._slot_for(server, None) == {}


_READ = re.compile(r"slot (\d+): prompt (\d+) tokens read, (\d+) from the cache")


async def test_real_llamacpp_keeps_a_sessions_prompt_while_another_session_runs(manager, caplog):
    """Session A's system prompt is read when it opens; session B (another system prompt)
    and a request without a conversation run next; A's first turn then reads only its
    question: its prefix is still in its own slot."""
    pytest.importorskip("xllamacpp", reason="the llm extra (xllamacpp) is not installed")
    from conftest import require_pack

    from voxgate.engines.priority import Priority

    model = "qwen2.5-coder-1.5b-instruct-q4km"
    require_pack(model, manager.settings.cache_dir)
    llm = manager.get("llm", model)
    if not llm.session_slots:
        pytest.skip("this configuration keeps no llama.cpp slots for sessions")
    caplog.set_level(logging.DEBUG, logger="voxgate.engines.llm_llamacpp.timings")
    system_a = ("You are a helpful voice assistant for a train station. Answer in one short "
                "spoken sentence of plain text.")
    system_b = "You are a terse assistant that answers with a single word in French."
    live = {"cache_prompt": True, "priority": Priority.LIVE_FINAL}

    async def ask(messages: list[ChatMessage], key: str | None, max_tokens: int = 1) -> str:
        out = []
        async for delta in llm.stream(messages, max_tokens=max_tokens, cache_key=key, **live):
            out.append(delta)
        return "".join(out)

    a, b = "test-prefill-a", "test-prefill-b"
    try:
        await ask([ChatMessage("system", system_a)], a)  # A opens
        await ask([ChatMessage("system", system_b), ChatMessage("user", "Name a colour.")], b, 4)
        await ask([ChatMessage("user", "Say yes.")], None, 2)
        question = "When does the next train to the airport leave?"
        await ask([ChatMessage("system", system_a), ChatMessage("user", question)], a, 2)
    finally:
        llm.release_cache(a)
        llm.release_cache(b)
    reads = [tuple(map(int, m.groups())) for r in caplog.records
             if (m := _READ.search(r.getMessage()))]
    assert len(reads) == 4, caplog.text
    (slot_a, opened, _), (slot_b, _, _), (shared, _, _), (slot_a2, read, cached) = reads
    assert slot_a == slot_a2 != slot_b and shared == 0 and 0 not in (slot_a, slot_b)
    assert cached >= opened - 6  # the system prompt block (all but the reply header) was kept
    assert read < 20  # only the question and the reply header were read (~15 tokens)
