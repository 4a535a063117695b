"""Barge-in on the speech onset: the agent's audio pauses on the first VAD frames of user speech
(``pause_onset_ms``), before ``min_speech_ms`` confirms it; a blip the VAD drops resumes it at
once; confirmation and the rest of barge-in stay as they were.

The endpointer's onset rule is tested on hand-built probabilities, the order of the agent's
events with the deterministic fakes of ``test_agent`` (the test drives the ASR events), and the
live stream's ``speech_onset`` with the real Silero VAD on real speech.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_agent import Events, FakeLlm, _agent_end, _running, _say, _silence

from voxgate.agent import (
    AgentAudio,
    AgentConfig,
    AudioPaused,
    AudioResumed,
    Interruption,
    TurnEnded,
    UserSpeechStarted,
)
from voxgate.endpointing import Endpointer
from voxgate.stream_config import StreamConfigError
from voxgate.streaming import StreamingService
from voxgate.types import AsrEvent

FRAME = 512
REPLY = "One sentence here. Another sentence there. And a last one that is long enough."


# ------------------------------------------------------------------------------ endpointer
def _run(ep: Endpointer, probs: list[float]) -> list[tuple[str, int]]:
    return [(b.kind, b.sample) for p in probs for b in ep.push(p)]


def _endpointer(onset: int | None) -> Endpointer:
    return Endpointer(threshold=0.5, min_silence_samples=4 * FRAME,
                      min_speech_samples=5 * FRAME, frame_samples=FRAME, onset_samples=onset)


def test_the_onset_is_announced_on_the_first_frame_long_before_the_start():
    events = _run(_endpointer(FRAME), [0.1, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9] + [0.0] * 4)
    assert events == [("onset", FRAME), ("start", FRAME), ("end", 7 * FRAME)]
    ep = _endpointer(FRAME)
    assert _run(ep, [0.1, 0.9]) == [("onset", FRAME)]  # one frame of speech: already announced
    assert _run(ep, [0.9] * 3) == []
    assert _run(ep, [0.9]) == [("start", FRAME)]  # min_speech (5 frames) confirms it later


def test_a_longer_onset_waits_for_that_much_speech_and_never_follows_its_start():
    assert _run(_endpointer(2 * FRAME), [0.9, 0.9]) == [("onset", 0)]
    assert _run(_endpointer(2 * FRAME), [0.9, 0.3]) == []  # 0.3: hysteresis, no silence yet
    same = _endpointer(5 * FRAME)  # as long as min_speech: both on the same frame, onset first
    assert _run(same, [0.9] * 5) == [("onset", 0), ("start", 0)]


def test_a_blip_is_announced_then_cancelled_and_without_onsets_nothing_is_announced():
    assert _run(_endpointer(FRAME), [0.9, 0.9] + [0.0] * 4) == [("onset", 0), ("cancel", 0)]
    assert _run(_endpointer(None), [0.9, 0.9] + [0.0] * 4) == [("cancel", 0)]
    assert _run(_endpointer(None), [0.9] * 6) == [("start", 0)]


def test_force_end_announces_the_onset_of_an_unconfirmed_burst_once():
    ep = _endpointer(3 * FRAME)
    _run(ep, [0.9])
    assert [(b.kind, b.sample) for b in ep.force_end(900)] == [
        ("onset", 0), ("start", 0), ("end", 900)]
    ep = _endpointer(FRAME)
    _run(ep, [0.9])
    assert [b.kind for b in ep.force_end(900)] == ["start", "end"]


# -------------------------------------------------------------------- agent, fake engines
def _onset(asr, *, cancelled: bool = False) -> None:
    """The ASR's onset (or its cancel) of the burst that would become the next utterance."""
    kind = "speech_cancelled" if cancelled else "speech_onset"
    asr.queue.put_nowait(AsrEvent(kind, asr.utt + 1, asr.position, asr.position))


def _over_agent(events: Events) -> list[UserSpeechStarted]:
    """User speech announced after the first turn (i.e. over the agent's reply)."""
    return [e for e in events.of(UserSpeechStarted) if e.turn_id > 1]


async def _playing(session, asr, events) -> None:
    await _say(session, asr, "Go on.")
    await _silence(session, 0.7)
    await events.wait(lambda e: isinstance(e, AgentAudio) and e.offset_s >= 0.3)


async def test_the_onset_pauses_at_once_and_confirmed_speech_cuts_as_before():
    async with _running(llm=FakeLlm(REPLY)) as (session, asr, llm, voice, events):
        await _playing(session, asr, events)
        _onset(asr)
        paused = await events.wait(lambda e: isinstance(e, AudioPaused), timeout=1)
        assert _over_agent(events) == []  # paused before the speech is even confirmed
        sent = sum(a.audio.size for a in events.of(AgentAudio))
        await _silence(session, 0.1)  # min_speech later: the ASR confirms the speech
        asr.start()
        await events.wait(lambda e: isinstance(e, UserSpeechStarted) and e.turn_id == 2)
        asr.partial("wait a second")
        cut = await events.wait(lambda e: isinstance(e, Interruption))
        assert cut.reason == "barge_in" and cut.played_s == pytest.approx(paused.played_s, abs=1e-3)
        assert REPLY.startswith(cut.played_text) and len(cut.played_text) < len(REPLY)
        assert len(events.of(AudioPaused)) == 1 and not events.of(AudioResumed)
        assert sum(a.audio.size for a in events.of(AgentAudio)) == sent  # nothing after pause
        order = [events.items.index(e) for e in (paused, *_over_agent(events), cut)]
        assert order == sorted(order) and len(order) == 3
        assert session.interruptions == 1 and session.false_interruptions == 0
        asr.end()  # the speech that paused the reply is the user's next turn
        asr.final("Wait a second, please.")
        await _silence(session, 0.8)
        turn = await events.wait(lambda e: isinstance(e, TurnEnded) and e.role == "user"
                                 and e.turn_id == 2)
        assert turn.text == "Wait a second, please." and turn.reason == "completed"


async def test_a_blip_resumes_at_once_where_it_paused_and_the_reply_plays_whole():
    async with _running(llm=FakeLlm(REPLY), resume_after_ms=5000) as (session, asr, llm, voice,
                                                                        events):
        await _playing(session, asr, events)
        _onset(asr)
        paused = await events.wait(lambda e: isinstance(e, AudioPaused), timeout=1)
        await _silence(session, 0.3)  # the VAD's silence after the blip
        _onset(asr, cancelled=True)
        resumed = await events.wait(lambda e: isinstance(e, AudioResumed), timeout=1)  # not 5 s
        assert resumed.offset_s == pytest.approx(paused.played_s, abs=1e-3)
        end = await events.wait(_agent_end)
        assert end.reason == "completed" and end.text == REPLY
        assert session.history[-1].text == REPLY and session.false_interruptions == 1
        assert _over_agent(events) == [] and session.interruptions == 0
        assert [i.role for i in session.history] == ["user", "assistant"]  # no turn of a blip


async def test_a_cancel_of_another_burst_does_not_resume_confirmed_speech():
    async with _running(llm=FakeLlm(REPLY), resume_after_ms=5000) as (session, asr, llm, voice,
                                                                        events):
        await _playing(session, asr, events)
        _onset(asr)
        await events.wait(lambda e: isinstance(e, AudioPaused), timeout=1)
        asr.start()  # confirmed speech: from now on the barge-in rules decide
        await _silence(session, 0.1)
        asr.queue.put_nowait(AsrEvent("speech_cancelled", asr.utt, 0.0, asr.position))
        await _silence(session, 0.3)
        assert not events.of(AudioResumed) and not events.of(Interruption)
        asr.partial("hold on there")
        cut = await events.wait(lambda e: isinstance(e, Interruption))
        assert cut.reason == "barge_in"


async def test_onsets_without_a_reply_playing_or_with_barge_in_off_change_nothing():
    async with _running() as (session, asr, llm, voice, events):
        _onset(asr)  # the user starts a turn: no reply to pause
        await _say(session, asr, "What is the capital of France?")
        await _silence(session, 0.7)
        end = await events.wait(_agent_end)
        assert end.reason == "completed" and not events.of(AudioPaused)
    async with _running(llm=FakeLlm(REPLY), barge_in=False) as (session, asr, llm, voice,
                                                                  events):
        await _playing(session, asr, events)
        _onset(asr)
        await _silence(session, 0.2)
        assert not events.of(AudioPaused)
        end = await events.wait(_agent_end)
        assert end.reason == "completed" and end.text == REPLY


async def test_a_paused_reply_of_a_closed_session_stops_cleanly():
    async with _running(llm=FakeLlm(REPLY)) as (session, asr, llm, voice, events):
        await _playing(session, asr, events)
        _onset(asr)
        await events.wait(lambda e: isinstance(e, AudioPaused), timeout=1)
    assert session.closed and not [e for e in events.items if isinstance(e, TurnEnded)
                                   and e.role == "agent"]


def test_pause_onset_ms_is_bounded():
    AgentConfig(pause_onset_ms=0).validate()
    for bad in (-1, 5001, "32", True):
        with pytest.raises(StreamConfigError) as err:
            AgentConfig(pause_onset_ms=bad).validate()
        assert err.value.field == "pause_onset_ms"


# ------------------------------------------------------------------- live stream, real VAD
async def test_a_live_stream_announces_the_onset_of_real_speech_before_its_start(
        settings, manager, librivox):
    service = StreamingService(settings, manager)
    await service.start()
    try:
        clip = np.concatenate([np.zeros(8000, np.float32), librivox[4].audio[:32000]])
        seen: dict[int | None, list[AsrEvent]] = {}
        for onset_ms in (32, None):
            session = await service.open(service.config(interim_results=False, min_speech_ms=250,
                                                        onset_ms=onset_ms))
            events: list[AsrEvent] = []

            async def read(session=session, events=events) -> None:
                async for event in session.events():
                    events.append(event)

            reader = asyncio.create_task(read())
            for i in range(0, clip.size, 1600):  # 100 ms chunks, as a client sends them
                await session.accept(clip[i:i + 1600])
            await session.finish()
            await asyncio.wait_for(reader, 60)
            await session.close()
            seen[onset_ms] = events
        kinds = [e.kind for e in seen[32]]
        assert kinds[:2] == ["speech_onset", "start_of_speech"], kinds
        onset, start = seen[32][0], seen[32][1]
        assert onset.utterance_id == start.utterance_id == 0
        assert onset.start == start.start and 0.5 <= onset.start < 1.5  # the clip from 0.5 s
        assert "final" in kinds
        assert not any(e.kind.startswith("speech_") for e in seen[None])
    finally:
        await service.stop()


# ------------------------------------------------------- real engines, spoken barge-in
@pytest.mark.slow
async def test_real_speech_over_the_agent_pauses_it_in_the_chunk_where_it_begins(
        settings, manager, tmp_path):
    """Whisper + Silero + Qwen + Piper: the user's real speech (Festival, not the agent's voice)
    over a reply pauses it once the first 100 ms chunk holding speech is in (the old rule,
    160 ms of speech, needed the second or third), then confirms it and cuts the history."""
    from conftest import require_pack
    from media import festival_speech

    from voxgate.agent import AgentService
    from voxgate.speech import SpeechService

    for model_id in ("whisper-base", "whisper-tiny.en", "qwen2.5-coder-1.5b-instruct-q4km",
                     "en_US-joe-medium"):
        require_pack(model_id, settings.cache_dir)
    words = festival_speech("Wait, stop, tell me something else instead.",
                            tmp_path / "interruption.wav")
    loud = np.flatnonzero(np.abs(words) > 0.02)
    words = words[loud[0]:loud[-1] + 1]
    streaming = StreamingService(settings, manager)
    await streaming.start()
    service = AgentService(settings, manager, streaming, SpeechService(settings, manager))
    session = await service.open(service.config(max_reply_tokens=60, system_prompt=(
        "Answer in three long sentences.")))
    events = Events(session)
    chunk = 1600  # 100 ms, as clients send it
    try:
        await session.send_text("Tell me about the history of Rome.")
        await events.wait(lambda e: isinstance(e, AgentAudio), 120)
        for _ in range(3):  # some silence on the input clock while the reply plays
            await session.accept(np.zeros(chunk, np.float32))
        speech_at = session.position
        paused_at = None
        audio = np.concatenate([words, np.zeros(16_000, np.float32)])
        for i in range(0, audio.size, chunk):
            await session.accept(audio[i:i + chunk])
            await asyncio.sleep(0.05)  # the reader hands the stream's events to the agent
            if paused_at is None and events.of(AudioPaused):
                paused_at = session.position
        assert paused_at is not None, events.types()
        assert paused_at - speech_at <= 0.1 + 1e-6, paused_at - speech_at  # the first chunk
        cut = await events.wait(lambda e: isinstance(e, Interruption), 60)
        assert cut.reason == "barge_in"
        end = await events.wait(_agent_end, 60)
        assert end.reason == "interrupted" and end.text == cut.played_text
        assistant = [i for i in session.history if i.role == "assistant"]
        assert assistant[0].text == cut.played_text and assistant[0].interrupted
    finally:
        await session.close()
        await streaming.stop()
