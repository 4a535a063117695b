"""AgentSession: turn-taking, speculative replies, barge-in, cancellation and failures.

Orchestration is tested with deterministic fake ASR / LLM / TTS (the ASR is driven by the test,
the input clock advances with the silence the test feeds); the real path (Whisper + Qwen +
Piper on real speech) is tested end to end at the bottom.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from voxgate.agent import (
    AgentAudio,
    AgentConfig,
    AgentError,
    AgentSession,
    AgentText,
    AudioPaused,
    AudioResumed,
    Interruption,
    TurnEnded,
    TurnLatency,
)
from voxgate.agent.history import Conversation, cut_words
from voxgate.agent.playout import Playout
from voxgate.agent.reply import first_chunk
from voxgate.agent.turns import looks_complete, looks_unfinished
from voxgate.errors import EngineError
from voxgate.types import AsrEvent, TtsChunk

RATE = 16_000


# ------------------------------------------------------------------------------ fakes
class FakeAsr:
    """An AsrSession stand-in driven by the test: speech events on the input clock."""

    id = "fake-asr"

    def __init__(self) -> None:
        self.received = 0
        self.queue: asyncio.Queue[AsrEvent | None] = asyncio.Queue()
        self.utt = -1
        self.open = False
        self.flushes = 0
        self.closed = False
        self.flush_text = "cut here"

    @property
    def position(self) -> float:
        return self.received / RATE

    async def accept(self, samples: np.ndarray) -> None:
        self.received += np.asarray(samples).size

    async def flush(self) -> None:
        self.flushes += 1
        if self.open:
            self.end()
            self.final(self.flush_text)

    async def finish(self) -> None:
        await self.flush()

    async def close(self) -> None:
        self.closed = True
        self.queue.put_nowait(None)

    async def events(self) -> AsyncIterator[AsrEvent]:
        while (event := await self.queue.get()) is not None:
            yield event

    # test controls
    def start(self) -> None:
        self.utt += 1
        self.open = True
        self.queue.put_nowait(AsrEvent("start_of_speech", self.utt, self.position, self.position))

    def partial(self, text: str) -> None:
        self.queue.put_nowait(AsrEvent("partial", self.utt, 0.0, self.position, text=text))

    def end(self) -> None:
        self.open = False
        self.queue.put_nowait(AsrEvent("end_of_speech", self.utt, 0.0, self.position))

    def final(self, text: str) -> None:
        self.queue.put_nowait(AsrEvent("final", self.utt, 0.0, self.position, text=text))


class FakeLlm:
    """Streams a scripted reply word by word; records requests and cancellations."""

    name = "fake-llm"

    def __init__(self, reply: str = "Paris is the capital of France.", delay: float = 0.005,
                 fail: bool = False, hang: bool = False) -> None:
        self.reply, self.delay, self.fail, self.hang = reply, delay, fail, hang
        self.requests: list[list] = []
        self.cancelled = 0
        self.finished = 0
        self.kwargs: list[dict] = []
        self.opened: list[list] = []  # the session's prompt read when it opened (no turn yet)

    async def stream(self, messages, *, max_tokens: int = 512, temperature: float = 0.0,
                     json_schema=None, cache_prompt: bool = False) -> AsyncIterator[str]:
        if max_tokens == 1 and all(m.role == "system" for m in messages):
            self.opened.append(list(messages))  # tested in test_agent_prefill.py
            yield "Ok"
            return
        self.requests.append(list(messages))
        self.kwargs.append({"cache_prompt": cache_prompt, "max_tokens": max_tokens})
        if self.fail:
            raise EngineError("LLM server http://127.0.0.1:9 unreachable: ConnectError")
        try:
            if self.hang:
                await asyncio.Event().wait()
            words = self.reply.split(" ")
            for i, word in enumerate(words):
                await asyncio.sleep(self.delay)
                yield word if i == 0 else " " + word
            self.finished += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise


class FakeVoice:
    """10 ms of audio per character, at 16 kHz; can be made to fail."""

    sample_rate = RATE

    def __init__(self, fail: bool = False, delay: float = 0.0) -> None:
        self.fail, self.delay = fail, delay
        self.sentences: list[str] = []

    async def speak(self, sentence: str) -> AsyncIterator[TtsChunk]:
        self.sentences.append(sentence)
        if self.fail:
            raise EngineError("TTS server unavailable")
        await asyncio.sleep(self.delay)
        yield TtsChunk(np.full(len(sentence) * RATE // 100, 0.1, np.float32), RATE, sentence)


def _session(llm: FakeLlm | None = None, voice: FakeVoice | None = None, **options
             ) -> tuple[AgentSession, FakeAsr, FakeLlm, FakeVoice]:
    asr, llm, voice = FakeAsr(), llm or FakeLlm(), voice or FakeVoice()
    defaults = dict(system_prompt="Be brief.", end_of_turn_ms=600, unfinished_wait_ms=1500,
                    playout_lead_ms=100, idle_timeout_s=30.0)
    config = AgentConfig(**{**defaults, **options})
    config.validate()
    return AgentSession(config, asr, llm, voice), asr, llm, voice


async def _silence(session: AgentSession, seconds: float, step: float = 0.1) -> None:
    for _ in range(round(seconds / step)):
        await session.accept(np.zeros(int(step * RATE), np.float32))
        await asyncio.sleep(0)


async def _say(session: AgentSession, asr: FakeAsr, text: str, seconds: float = 0.5) -> None:
    asr.start()
    await _silence(session, seconds)
    asr.end()
    asr.final(text)
    await asyncio.sleep(0.01)


class Events:
    """Reads a session's events in the background; tests wait for the ones they need."""

    def __init__(self, session: AgentSession) -> None:
        self.items: list = []
        self._new = asyncio.Event()
        self.task = asyncio.create_task(self._read(session))

    async def _read(self, session: AgentSession) -> None:
        async for event in session.events():
            self.items.append(event)
            self._new.set()
        self._new.set()

    async def wait(self, predicate, timeout: float = 10.0):
        async def find():
            while True:
                for event in self.items:
                    if predicate(event):
                        return event
                self._new.clear()
                if self.task.done():
                    raise AssertionError(f"events ended without it: {self.types()}")
                await self._new.wait()

        return await asyncio.wait_for(find(), timeout)

    def of(self, kind) -> list:
        return [e for e in self.items if isinstance(e, kind)]

    def types(self) -> list[str]:
        return [e.type for e in self.items]


def _agent_end(event) -> bool:
    return isinstance(event, TurnEnded) and event.role == "agent"


@contextlib.asynccontextmanager
async def _running(**kwargs):
    session, asr, llm, voice = _session(**kwargs)
    events = Events(session)
    try:
        yield session, asr, llm, voice, events
    finally:
        await session.close()
        await asyncio.wait_for(events.task, 5)


# ------------------------------------------------------------------------- unit parts
def test_unfinished_sentences_wait():
    for text in ("I'd like to book a table for", "and then,", "my name is, um", "So the"):
        assert looks_unfinished(text), text
    for text in ("What time is it?", "Book a table for two.", "Thanks", ""):
        assert not looks_unfinished(text), text
    assert not looks_unfinished("Я хочу и", "ru")  # the word list is English only


def test_questions_are_complete_turns():
    for text in ("What time is it?", "Is it raining today ?", "Он придёт?", "你好吗？"):
        assert looks_complete(text), text
    for text in ("Book a table for two.", "I wonder if?..", "and then", ""):
        assert not looks_complete(text), text


def test_the_first_chunk_ends_at_a_clause_or_before_a_phrase_opener():
    assert first_chunk("The sky is blue on a clear") == "The sky is blue"
    assert first_chunk("Well, as far as I know, Paris is") == "Well, as far as I know,"
    assert first_chunk("Rome was founded in 753 BC and became") == "Rome was founded in 753 BC"
    assert first_chunk("The sky is blue in") is None  # "in" may be "into": not yet known
    assert first_chunk("Sky is in the") is None  # fewer than 4 words before the opener
    assert first_chunk("The capital of France is Paris.") is None  # a sentence: the splitter's


def test_cut_words_keeps_whole_words():
    assert cut_words("Paris is the capital of France.", 0.5) == "Paris is the"
    assert cut_words("Paris is the capital.", 0.0) == ""
    assert cut_words("Paris is the capital.", 1.0) == "Paris is the capital."


def test_history_budget_drops_oldest_at_once_and_keeps_the_prefix():
    conv = Conversation("sys", budget_tokens=200)
    for i in range(20):
        conv.add("user", f"question {i} " + "x" * 60)
        conv.add("assistant", f"answer {i} " + "y" * 60)
    first = conv.messages()
    assert first[0].role == "system" and first[1].role == "user"
    assert sum(len(m.content) // 4 + 4 for m in first) <= 200
    assert "answer 19" in first[-1].content
    conv.add("user", "one more")
    second = conv.messages()
    assert second[1] == first[1]  # the same prefix: the LLM's KV cache still serves it


async def test_playout_is_paced_and_knows_the_played_position():
    playout = Playout(RATE, lead_s=0.1, frame_s=0.05)
    playout.append(np.zeros(RATE // 2, np.float32), RATE, "One two three four five.")
    playout.finish_input()
    sent: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def emit(audio, offset, text):
        sent.append((loop.time() - started, offset))

    await playout.run(emit)
    elapsed = loop.time() - started
    assert 0.45 <= elapsed <= 1.0, elapsed  # real time, not as fast as possible
    assert sent[-1][1] == pytest.approx(0.45)
    assert sent[-1][0] >= 0.3  # the last frame went out ~lead before its time, not at once
    assert playout.played_text() == "One two three four five."


async def test_playout_pause_takes_back_unplayed_audio_and_resumes_there():
    playout = Playout(RATE, lead_s=0.2, frame_s=0.05)
    playout.append(np.zeros(RATE, np.float32), RATE, "alpha beta gamma delta")
    playout.finish_input()
    offsets: list[float] = []

    async def emit(audio, offset, text):
        offsets.append(offset)

    runner = asyncio.create_task(playout.run(emit))
    await asyncio.sleep(0.3)
    paused_at = playout.pause()
    assert 0.2 <= paused_at <= 0.45
    assert playout.released / RATE == pytest.approx(paused_at)
    count = len(offsets)
    await asyncio.sleep(0.2)
    assert len(offsets) == count  # nothing released while paused
    assert playout.resume() == pytest.approx(paused_at)
    await asyncio.wait_for(runner, 3)
    assert any(abs(o - paused_at) < 0.06 for o in offsets[count:count + 1])


# ------------------------------------------------------------------------ turn-taking
async def test_a_turn_is_answered_in_audio_after_the_silence():
    async with _running() as (session, asr, llm, voice, events):
        await _say(session, asr, "What is the capital of France?")
        await _silence(session, 0.3)
        assert not events.of(TurnEnded)  # 0.3 s of silence is not the end of the turn yet
        await _silence(session, 0.4)
        await events.wait(_agent_end)
        user_end = next(e for e in events.of(TurnEnded) if e.role == "user")
        assert user_end.text == "What is the capital of France?"
        assert "".join(e.delta for e in events.of(AgentText)) == llm.reply
        audio = events.of(AgentAudio)
        assert sum(a.audio.size for a in audio) == len(llm.reply) * RATE // 100
        latency = (await events.wait(lambda e: isinstance(e, TurnLatency)))
        assert latency.speculative and latency.voice_to_voice_s is not None
        assert latency.llm_ttft_s is not None and latency.tts_ttfa_s is not None
        assert [(i.role, i.text) for i in session.history] == [
            ("user", "What is the capital of France?"), ("assistant", llm.reply)]
        assert len(llm.requests) == 1 and llm.kwargs[0]["cache_prompt"] is True
        assert llm.requests[0][0].content == "Be brief."


async def test_the_first_clause_is_spoken_before_the_first_sentence_ends():
    reply = "Well, as far as I know, Paris is the capital of France. It is big."
    async with _running(llm=FakeLlm(reply)) as (session, asr, llm, voice, events):
        await session.send_text("Capital of France?")
        end = await events.wait(_agent_end)
        assert voice.sentences == ["Well, as far as I know,", "Paris is the capital of France.",
                                   "It is big."]
        assert end.text == reply and session.history[-1].text == reply


async def test_the_first_words_are_spoken_before_a_phrase_opener_then_whole_sentences():
    reply = "The sky is blue on a clear day because of the air. It is nice in the sun."
    async with _running(llm=FakeLlm(reply)) as (session, asr, llm, voice, events):
        await session.send_text("What color is the sky?")
        end = await events.wait(_agent_end)
        assert voice.sentences == ["The sky is blue", "on a clear day because of the air.",
                                   "It is nice in the sun."]
        assert end.text == reply and session.history[-1].text == reply


async def test_a_question_ends_the_turn_sooner_than_a_statement():
    async with _running() as (session, asr, llm, voice, events):
        await _say(session, asr, "What is the capital of France?")
        await _silence(session, 0.5)  # more than complete_wait_ms (400), less than 600
        await events.wait(lambda e: isinstance(e, TurnEnded) and e.role == "user")
    async with _running() as (session, asr, llm, voice, events):
        await _say(session, asr, "Tell me the capital of France.")
        await _silence(session, 0.5)
        assert not events.of(TurnEnded)  # a statement waits the full end_of_turn_ms
        await _silence(session, 0.2)
        await events.wait(lambda e: isinstance(e, TurnEnded) and e.role == "user")


async def test_partials_prefill_the_llm_prompt_while_the_user_speaks():
    async with _running() as (session, asr, llm, voice, events):
        await _say(session, asr, "Hello there.")
        await _silence(session, 0.7)
        await events.wait(_agent_end)
        asr.start()
        await _silence(session, 0.3)
        asr.partial("What is the")
        await _silence(session, 0.2)
        asr.partial("What is the")  # the same prompt again: not read twice
        asr.partial("What is the capital")
        await asyncio.sleep(0.05)
        asr.end()
        asr.final("What is the capital of France?")
        await _silence(session, 0.5)
        await events.wait(lambda e: _agent_end(e) and e.turn_id == 2)
        warm = [(r, k) for r, k in zip(llm.requests, llm.kwargs) if k["max_tokens"] == 1]
        assert [r[-1].content for r, _ in warm][:1] == ["What is the"]
        assert all(k["cache_prompt"] for _, k in warm) and len(warm) <= 2
        # the conversation read ahead is exactly the prefix of the reply's own prompt
        reply_prompt = llm.requests[-1]
        assert llm.kwargs[-1]["max_tokens"] > 1
        assert warm[0][0][:-1] == reply_prompt[:-1]
        assert reply_prompt[-1].content == "What is the capital of France?"
        assert "".join(e.delta for e in events.of(AgentText) if e.turn_id == 2) == llm.reply


async def test_no_prefill_while_the_agent_speaks_or_when_turned_off():
    llm = FakeLlm("Paris is the capital of France. " * 20, delay=0.01)
    async with _running(llm=llm) as (session, asr, llm, voice, events):
        await session.send_text("Tell me about Paris.")
        await events.wait(lambda e: isinstance(e, AgentAudio))
        asr.start()  # over the agent: a barge-in, whose partials warm nothing
        await _silence(session, 0.2)
        asr.partial("wait")
        await events.wait(lambda e: isinstance(e, AudioPaused))
        await _silence(session, 0.1)
        await asyncio.sleep(0.05)
        assert len(llm.kwargs) == 1 and llm.kwargs[0]["max_tokens"] > 1
    async with _running(prefill=False) as (session, asr, llm, voice, events):
        asr.start()
        await _silence(session, 0.3)
        asr.partial("What is the")
        await _silence(session, 0.1)
        await asyncio.sleep(0.05)
        assert not llm.requests


async def test_closing_the_session_stops_a_prefill_in_flight():
    session, asr, llm, _ = _session(llm=FakeLlm(hang=True))
    asr.start()
    await _silence(session, 0.3)
    asr.partial("What is the")
    await _silence(session, 0.1)
    await asyncio.sleep(0.05)
    assert [k["max_tokens"] for k in llm.kwargs] == [1]
    await asyncio.wait_for(session.close(), 5)
    assert llm.cancelled == 1


async def test_speculative_reply_is_dropped_when_the_user_goes_on():
    async with _running() as (session, asr, llm, voice, events):
        await _say(session, asr, "Hello there.")
        await _silence(session, 0.3)  # the reply has started speculatively ...
        assert len(llm.requests) == 1
        await _say(session, asr, "How are you?")  # ... but the user goes on
        await _silence(session, 0.7)
        await events.wait(_agent_end)
        assert len(llm.requests) == 2
        assert llm.requests[1][-1].content == "Hello there. How are you?"
        assert session.speculative_dropped == 1
        assert not any(e.delta for e in events.of(AgentText) if e.turn_id != 1)
        assert len([e for e in events.of(TurnEnded) if e.role == "agent"]) == 1


async def test_an_unfinished_sentence_waits_longer():
    async with _running() as (session, asr, llm, voice, events):
        await _say(session, asr, "I would like to book a table for")
        await _silence(session, 1.0)
        assert not events.of(TurnEnded) and not llm.requests
        await _silence(session, 0.6)
        await events.wait(_agent_end)
        assert llm.requests[0][-1].content == "I would like to book a table for"


async def test_too_few_words_and_cleared_input_are_not_turns():
    async with _running(min_words=2) as (session, asr, llm, voice, events):
        await _say(session, asr, "Yes.")
        await _silence(session, 0.8)
        dropped = await events.wait(lambda e: isinstance(e, TurnEnded))
        assert dropped.reason == "dropped" and not llm.requests and not session.history
        await _say(session, asr, "Never mind this.")
        session.clear_input()  # (the speculative reply it started is dropped too)
        await _silence(session, 0.8)
        assert not session.history
        await asyncio.sleep(0.05)
        assert llm.finished == 0 and not events.of(AgentText)


async def test_text_input_and_flush_commit_at_once():
    async with _running() as (session, asr, llm, voice, events):
        await session.send_text("Hi")
        await events.wait(_agent_end)
        asr.start()
        await _silence(session, 0.3)
        asr.flush_text = "And you?"
        await session.flush()
        await events.wait(lambda e: _agent_end(e) and e.turn_id == 2)
        assert [i.text for i in session.history if i.role == "user"] == ["Hi", "And you?"]


# --------------------------------------------------------------------------- barge-in
async def test_confirmed_barge_in_cancels_the_reply_and_keeps_only_what_was_played():
    reply = ("The first sentence is here. The second sentence follows it. A third one "
             "comes after. And a fourth closes the answer.")
    async with _running(llm=FakeLlm(reply)) as (session, asr, llm, voice, events):
        await _say(session, asr, "Tell me a story.")
        await _silence(session, 0.7)
        await events.wait(lambda e: isinstance(e, AgentAudio) and e.offset_s >= 0.6)
        turn_id, item_id, heard = session.playback()
        assert turn_id == 1 and item_id and 0.3 <= heard <= 0.8  # lead 0.1 s behind sending
        asr.start()
        paused = await events.wait(lambda e: isinstance(e, AudioPaused), timeout=1)
        assert 0.4 <= paused.played_s <= 1.2
        assert session.playback()[2] == pytest.approx(paused.played_s)  # frozen while paused
        asr.partial("wait a second")
        cut = await events.wait(lambda e: isinstance(e, Interruption))
        assert cut.played_text and reply.startswith(cut.played_text)
        assert len(cut.played_text) < len(reply)
        # 10 ms of audio a character: the text kept matches the audio heard, to a word
        assert abs(len(cut.played_text) - cut.played_s * 100) <= 12
        assistant = [i for i in session.history if i.role == "assistant"]
        assert assistant[0].text == cut.played_text and assistant[0].interrupted
        released = sum(a.audio.size for a in events.of(AgentAudio))
        await asyncio.sleep(0.3)
        assert sum(a.audio.size for a in events.of(AgentAudio)) == released  # audio stopped
        assert not voice.sentences[-1:] or len(voice.sentences) < 4 or llm.cancelled <= 1
        # the interrupting speech is the next user turn
        await _silence(session, 0.2)
        asr.end()
        asr.final("Wait a second, please.")
        await _silence(session, 0.7)
        await events.wait(lambda e: _agent_end(e) and e.turn_id == 2)
        assert [i.text for i in session.history if i.role == "user"][-1] == \
            "Wait a second, please."


async def test_false_interruption_resumes_where_it_stopped():
    reply = "One sentence here. Another sentence there. And a last one."
    async with _running(llm=FakeLlm(reply)) as (session, asr, llm, voice, events):
        await _say(session, asr, "Go on.")
        await _silence(session, 0.7)
        await events.wait(lambda e: isinstance(e, AgentAudio) and e.offset_s >= 0.3)
        asr.start()
        paused = await events.wait(lambda e: isinstance(e, AudioPaused), timeout=1)
        await _silence(session, 0.2)
        asr.end()
        asr.final("Mm-hmm.")  # one word: not a turn
        resumed = await events.wait(lambda e: isinstance(e, AudioResumed))
        assert resumed.offset_s == pytest.approx(paused.played_s, abs=1e-3)
        end = await events.wait(_agent_end)
        assert end.reason == "completed" and end.text == reply
        after = [a for a in events.of(AgentAudio)
                 if events.items.index(a) > events.items.index(resumed)]
        assert after[0].offset_s == pytest.approx(resumed.offset_s, abs=1e-3)
        assert session.history[-1].text == reply and session.false_interruptions == 1
        assert not any(i.text == "Mm-hmm." for i in session.history)


async def test_unconfirmed_speech_resumes_after_the_timeout():
    reply = "One sentence here. Another sentence there. And a last one."
    async with _running(llm=FakeLlm(reply), resume_after_ms=300) as (session, asr, llm, voice,
                                                                        events):
        await _say(session, asr, "Go on.")
        await _silence(session, 0.7)
        await events.wait(lambda e: isinstance(e, AgentAudio))
        asr.start()  # a cough the ASR never finalises
        await events.wait(lambda e: isinstance(e, AudioPaused), timeout=1)
        await events.wait(lambda e: isinstance(e, AudioResumed), timeout=1)
        end = await events.wait(_agent_end)
        assert end.reason == "completed"


async def test_long_speech_over_the_agent_is_confirmed_by_its_duration():
    async with _running(llm=FakeLlm("A long answer. " * 6)) as (session, asr, llm, voice, events):
        await _say(session, asr, "Go on.")
        await _silence(session, 0.7)
        await events.wait(lambda e: isinstance(e, AgentAudio))
        asr.start()
        await _silence(session, 0.7)  # still speaking after barge_in_min_ms, no words yet
        cut = await events.wait(lambda e: isinstance(e, Interruption))
        assert cut.reason == "barge_in"
        await asyncio.sleep(0.05)
        assert llm.finished + llm.cancelled == 1


async def test_interrupt_control_cancels_llm_and_tts():
    llm = FakeLlm("word " * 150, delay=0.02)
    async with _running(llm=llm) as (session, asr, _, voice, events):
        await session.send_text("Talk for a long time.")
        await events.wait(lambda e: isinstance(e, AgentText))
        cut = await session.interrupt()
        assert cut is not None and cut.reason == "cancelled"
        await asyncio.sleep(0.1)
        assert llm.cancelled == 1 and llm.finished == 0
        texts = len(events.of(AgentText))
        await asyncio.sleep(0.2)
        assert len(events.of(AgentText)) == texts  # nothing more is generated
        assert session.history[-1].text == cut.played_text


async def test_tts_stays_only_a_few_seconds_ahead_and_stops_with_the_reply():
    reply = " ".join(f"This is sentence number {i} of a very long answer here." for i in range(30))
    async with _running(llm=FakeLlm(reply, delay=0.001)) as (session, asr, llm, voice, events):
        await session.send_text("Talk.")
        await events.wait(lambda e: isinstance(e, AgentAudio) and e.offset_s >= 0.5)
        assert len(voice.sentences) <= 8  # ~0.55 s a sentence, 3 s ahead: not all 30
        await session.interrupt()
        said = len(voice.sentences)
        await asyncio.sleep(0.3)
        assert len(voice.sentences) == said and llm.finished + llm.cancelled == 1


async def test_interruptions_in_quick_succession():
    reply = "First part of the answer. Second part of the answer. Third part of it."
    async with _running(llm=FakeLlm(reply)) as (session, asr, llm, voice, events):
        await session.send_text("Start.")
        for round_ in range(3):
            await events.wait(lambda e: isinstance(e, AgentAudio) and e.turn_id == round_ + 1)
            asr.start()
            asr.partial("no wait")
            cut = await events.wait(lambda e: isinstance(e, Interruption)
                                    and e.turn_id == round_ + 1)
            assert reply.startswith(cut.played_text)
            await _silence(session, 0.1)
            asr.end()
            asr.final(f"No wait, question {round_}.")
            await _silence(session, 0.7)
        await events.wait(lambda e: _agent_end(e) and e.turn_id == 4)
        roles = [i.role for i in session.history]
        assert roles == ["user", "assistant"] * 4
        assert [i.interrupted for i in session.history if i.role == "assistant"] == \
            [True, True, True, False]
        assert session.interruptions == 3
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("agent-")]
    assert not leftovers, leftovers  # nothing keeps running for a closed session


# ------------------------------------------------------------------- manual control
async def test_manual_turns_commit_create_cancel_truncate_delete():
    async with _running(turn_detection=False) as (session, asr, llm, voice, events):
        await _say(session, asr, "First question.")
        await _silence(session, 1.0)
        assert not llm.requests  # no turn detection: nothing happens on silence
        item = await session.commit_input()
        assert item is not None and item.text == "First question." and not llm.requests
        session.add_item("user", "Answer in French.")
        turn = await session.create_response()
        end = await events.wait(lambda e: _agent_end(e) and e.turn_id == turn)
        assert llm.requests[-1][-1].content == "Answer in French."
        truncated = await session.truncate_item(end.item_id, 0.11)
        assert truncated.text == "Paris is"  # 11 of 31 characters heard
        session.delete_item(item.id)
        assert [i.text for i in session.history] == ["Answer in French.", "Paris is"]
        assert await session.commit_input() is None  # nothing said since


# ------------------------------------------------------------------------- failures
async def test_llm_down_gives_an_apology_and_the_session_survives():
    llm = FakeLlm(fail=True)
    async with _running(llm=llm) as (session, asr, _, voice, events):
        await session.send_text("Hello?")
        error = await events.wait(lambda e: isinstance(e, AgentError))
        assert error.code == "llm_error" and not error.fatal and "unreachable" in error.message
        end = await events.wait(_agent_end)
        assert end.reason == "error" and end.text == session.config.apology
        assert voice.sentences == [session.config.apology]  # spoken too
        llm.fail = False
        await session.send_text("Hello again?")
        end = await events.wait(lambda e: _agent_end(e) and e.turn_id == 2)
        assert end.reason == "completed" and end.text == llm.reply


async def test_a_real_openai_compatible_llm_that_is_down_gives_an_apology():
    import socket

    from voxgate.engines.llm_openai import OpenAiLlm

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    llm = OpenAiLlm(f"http://127.0.0.1:{port}/v1", "any", "", timeout_s=2, max_retries=0,
                    seed=1, context_tokens=4096)
    session, asr, _, voice = _session(llm=llm)
    events = Events(session)
    try:
        await session.send_text("Hello?")
        error = await events.wait(lambda e: isinstance(e, AgentError))
        assert error.code == "llm_error" and "unreachable" in error.message
        end = await events.wait(_agent_end)
        assert end.reason == "error" and voice.sentences == [session.config.apology]
    finally:
        await session.close()


async def test_slow_llm_times_out_into_an_apology():
    async with _running(llm=FakeLlm(hang=True), llm_timeout_s=0.3) as (session, asr, llm, voice,
                                                                       events):
        await session.send_text("Hello?")
        error = await events.wait(lambda e: isinstance(e, AgentError))
        assert "did not answer within 0.3 s" in error.message
        end = await events.wait(_agent_end)
        assert end.text == session.config.apology and llm.cancelled == 1


async def test_tts_down_still_delivers_the_text():
    async with _running(voice=FakeVoice(fail=True)) as (session, asr, llm, voice, events):
        await session.send_text("Hello?")
        error = await events.wait(lambda e: isinstance(e, AgentError))
        assert error.code == "tts_error" and not error.fatal
        end = await events.wait(_agent_end)
        assert end.reason == "completed" and end.text == llm.reply
        assert "".join(e.delta for e in events.of(AgentText)) == llm.reply
        assert not events.of(AgentAudio)


async def test_a_user_who_never_stops_is_cut_at_max_turn():
    async with _running(max_turn_s=1.0) as (session, asr, llm, voice, events):
        asr.start()
        await _silence(session, 1.2)  # speech all along
        assert asr.flushes == 1
        end = await events.wait(lambda e: isinstance(e, TurnEnded) and e.role == "user")
        assert end.reason == "cut" and end.text == "cut here"
        await events.wait(_agent_end)
        # the speech going on after the cut is not heard as a barge-in
        asr.start()
        await _silence(session, 0.8)
        assert not events.of(AudioPaused)


async def test_a_silent_session_is_closed_when_idle():
    async with _running(idle_timeout_s=0.3) as (session, asr, llm, voice, events):
        await _silence(session, 0.2)
        error = await events.wait(lambda e: isinstance(e, AgentError), timeout=2)
        assert error.code == "idle_timeout" and error.fatal


async def test_a_client_that_stops_reading_ends_the_session():
    session, asr, llm, voice = _session(llm=FakeLlm("Word. " * 200), max_out_buffer_s=0.5,
                                        out_stall_timeout_s=0.3, playout_lead_ms=5000)
    try:
        await session.send_text("Talk.")
        await asyncio.sleep(1.5)  # nobody reads events()
        assert session.closed and asr.closed
        events = [e async for e in session.events()]
        audio = sum(e.audio.size for e in events if isinstance(e, AgentAudio))
        assert audio <= 0.5 * RATE + RATE // 10  # bounded by max_out_buffer_s
        assert any(isinstance(e, AgentError) and e.code == "client_not_reading" for e in events)
    finally:
        await session.close()


# ---------------------------------------------------------------- real end to end
@pytest.fixture(scope="module")
def real_parts(settings, manager):
    """Real engines: Whisper (finals base, partials tiny.en) + Silero, Qwen GGUF, Piper joe."""
    from conftest import require_pack

    for model_id in ("whisper-base", "whisper-tiny.en", "qwen2.5-coder-1.5b-instruct-q4km",
                     "en_US-joe-medium"):
        require_pack(model_id, settings.cache_dir)
    from voxgate.speech import SpeechService

    speech = SpeechService(settings, manager)
    question, rate = speech.synthesize("What is the capital city of France?")
    from voxgate.audio import resample

    return speech, resample(question, rate, RATE)


@pytest.mark.slow
async def test_real_voice_turn_is_answered_in_speech_that_says_the_reply(settings, manager,
                                                                          real_parts):
    from conftest import wer

    from voxgate.agent import AgentService
    from voxgate.audio import resample
    from voxgate.engines.base import AsrOptions
    from voxgate.streaming import StreamingService

    speech, question = real_parts
    streaming = StreamingService(settings, manager)
    await streaming.start()
    service = AgentService(settings, manager, streaming, speech)
    session = await service.open(service.config(
        max_reply_tokens=40, system_prompt="Answer in one short sentence."))
    events = Events(session)
    try:
        audio = np.concatenate([np.zeros(RATE // 4, np.float32), question,
                                np.zeros(RATE * 2, np.float32)])
        step = RATE // 10
        for i in range(0, audio.size, step):  # 2x real time: the input clock drives turns
            await session.accept(audio[i:i + step])
            await asyncio.sleep(0.05)
        user = await events.wait(lambda e: isinstance(e, TurnEnded) and e.role == "user", 180)
        assert wer("what is the capital city of france", user.text) <= 0.15, user.text
        end = await events.wait(_agent_end, 180)
        assert end.reason == "completed" and "paris" in end.text.lower(), end.text
        reply_audio = np.concatenate([a.audio for a in events.of(AgentAudio)])
        assert events.of(AgentAudio)[0].sample_rate == session.output_sample_rate
        pause = np.zeros(RATE // 2, np.float32)  # a listener hears it after a moment of silence
        heard = manager.asr("whisper-base").transcribe(
            np.concatenate([pause, resample(reply_audio, session.output_sample_rate, RATE),
                            pause]), AsrOptions(language="en")).text
        # a 7-word reply: one misheard word pair ('Paris is' -> 'terraces', seen once in a
        # fresh-clone run) is 0.29; a reply not spoken or cut off is far above
        assert wer(end.text, heard) <= 0.3, (end.text, heard)
        latency = await events.wait(lambda e: isinstance(e, TurnLatency))
        assert latency.voice_to_voice_s is not None and latency.llm_ttft_s is not None
        assert [i.role for i in session.history] == ["user", "assistant"]
    finally:
        await session.close()
        await streaming.stop()
    assert not service.sessions and not streaming.sessions  # slots and models released


@pytest.mark.slow
async def test_seed_deployment_riva_asr_riva_tts_and_an_openai_compatible_llm(
        live, manager, real_parts, tmp_path):
    """Seed 004's deployment shape (Riva ASR + Riva TTS + an LLM NIM), here against voxgate's own
    Riva-compatible gRPC server and llama.cpp's loopback OpenAI-compatible listener."""
    from conftest import wer
    from live_server import API_KEY

    from voxgate.agent import AgentService
    from voxgate.config import AgentSettings, LlmSettings, RivaSettings, Settings
    from voxgate.engines.manager import ModelManager
    from voxgate.speech import SpeechService
    from voxgate.streaming import StreamingService

    base_url, key = manager.get("llm", "qwen2.5-coder-1.5b-instruct-q4km").http_endpoint
    remote = Settings(
        _env_file=None, offline=True, data_dir=tmp_path,
        riva=RivaSettings(uri=live.grpc_uri, api_key=API_KEY, timeout_s=60),
        llm=LlmSettings(base_url=base_url, api_key=key, model="qwen", max_retries=0),
        asr={"model": "riva", "partial_model": "riva"},
        agent=AgentSettings(voice="riva-tts", max_reply_tokens=40,
                            system_prompt="Answer in one short sentence."))
    remote_manager = ModelManager(remote)
    streaming = StreamingService(remote, remote_manager)
    await streaming.start()
    service = AgentService(remote, remote_manager, streaming, SpeechService(remote, remote_manager))
    session = await service.open(service.config())
    events = Events(session)
    try:
        _, question = real_parts
        audio = np.concatenate([question, np.zeros(RATE * 2, np.float32)])
        for i in range(0, audio.size, RATE // 10):
            await session.accept(audio[i:i + RATE // 10])
            await asyncio.sleep(0.05)
        user = await events.wait(lambda e: isinstance(e, TurnEnded) and e.role == "user", 180)
        assert wer("what is the capital city of france", user.text) <= 0.15, user.text
        end = await events.wait(_agent_end, 180)
        assert end.reason == "completed" and "paris" in end.text.lower(), end.text
        assert events.of(AgentAudio) and not events.of(AgentError)
        assert session.llm.name == "openai" and session.voice.ref.model == "riva-tts"
    finally:
        await session.close()
        await streaming.stop()
        remote_manager.close()


async def test_a_close_cancelled_half_way_still_frees_the_stream_and_the_slot():
    """A door whose own task is cancelled while it closes the session (client gone mid-close)
    must not leave the ASR stream and the session's slot taken forever."""
    asr, llm, voice = FakeAsr(), FakeLlm(hang=True), FakeVoice()
    config = AgentConfig(system_prompt="Be brief.", end_of_turn_ms=600, idle_timeout_s=30.0)
    config.validate()
    freed: list[bool] = []
    session = AgentSession(config, asr, llm, voice, on_close=lambda: freed.append(True))
    events = Events(session)
    await _say(session, asr, "What is the capital of France?")
    await asyncio.sleep(0.7)  # the turn ended; the (hanging) reply is under way
    closing = asyncio.create_task(session.close())
    await asyncio.sleep(0)
    closing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closing
    assert freed == [True] and asr.closed and session.closed
    await session.close()  # a second close is a no-op, not a second release
    assert freed == [True]
    await asyncio.wait_for(events.task, 5)


async def test_wait_closed_lasts_until_a_close_begun_elsewhere_has_released_everything():
    """A server shutting down closes its sessions; one whose door is already closing it (the
    client left) returns from close() at once, so shutdown waits on wait_closed() instead of
    stopping the loop under a half-done close (tasks destroyed pending, slot never freed)."""

    class SlowCloseAsr(FakeAsr):
        async def close(self) -> None:
            await asyncio.sleep(0.3)  # e.g. the stream's last decode finishing
            await super().close()

    asr, llm, voice = SlowCloseAsr(), FakeLlm(), FakeVoice()
    config = AgentConfig(system_prompt="Be brief.", end_of_turn_ms=600, idle_timeout_s=30.0)
    config.validate()
    freed: list[bool] = []
    session = AgentSession(config, asr, llm, voice, on_close=lambda: freed.append(True))
    Events(session)
    door_close = asyncio.create_task(session.close())
    await asyncio.sleep(0.05)
    await session.close()  # the shutdown's close: already under way, returns at once
    assert not asr.closed and not freed
    await asyncio.wait_for(session.wait_closed(), 5)
    assert asr.closed and freed == [True]
    await door_close


@pytest.mark.slow
async def test_a_new_session_waits_while_closed_sessions_llm_requests_pile_up(settings, manager,
                                                                             real_parts):
    """Closing a session does not wait for its LLM request to stop (a prefill reading its
    prompt); so that a client opening and closing sessions in a loop cannot pile such requests
    up without bound, a new session waits (its slot taken) while as many linger as there are
    session slots, and opens once one has ended."""
    from voxgate.agent import AgentService
    from voxgate.streaming import StreamingService

    speech, _ = real_parts
    streaming = StreamingService(settings, manager)
    await streaming.start()
    service = AgentService(settings, manager, streaming, speech)
    config = service.config(system_prompt="Be brief.", prefill=False)
    await (await service.open(config)).close()  # the models are loaded: an open is quick now
    stopping = [asyncio.get_running_loop().create_future() for _ in range(service.max_sessions)]
    lingering = [asyncio.ensure_future(f) for f in stopping]
    service._lingering.update(lingering)  # as close() leaves them
    opening = asyncio.create_task(service.open(config))
    try:
        await asyncio.sleep(3.0)
        assert not opening.done() and service.active == 1  # waiting, its slot taken
        stopping[0].set_result(None)  # one request has stopped
        session = await asyncio.wait_for(opening, 60)
        await session.close()
    finally:
        for future in stopping:
            if not future.done():
                future.set_result(None)
        opening.cancel()
        await streaming.stop()
    assert not service.sessions and not streaming.sessions
