"""WebSocket /v1/realtime with the official `openai` client's realtime connection.

Every server event is validated against the `openai` package's own types (`RealtimeServerEvent`),
so a field the GA API defines but the door gets wrong fails here. Real engines (Whisper, Qwen
GGUF, Piper) answer a spoken turn with server VAD and a manual turn cancelled mid-answer; a
server whose agent runs deterministic fake engines tests the ordering of cancel, truncate and
delete and the error answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import numpy as np
import pytest
import websockets
from conftest import require_pack, wer
from live_server import API_KEY, live_settings, serve_app
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter
from test_agent import FakeAsr, FakeLlm, FakeVoice

from voxgate.agent import AgentSession
from voxgate.audio import float32_to_pcm16, pcm16_to_float32, resample

ADAPTER = TypeAdapter(RealtimeServerEvent)
RATE = 24_000
SENTENCES = ("The first sentence is here.", "Then a second one follows it.",
             "A third sentence comes after that.", "And the fourth one ends the reply.")


@pytest.fixture(autouse=True)
def _slot_given_back(request):
    """Each server has one agent session slot: a test ends once its session has closed."""
    yield
    for name in ("fake_server", "real_server"):
        if name in request.fixturenames:
            live = request.getfixturevalue(name)
            agent = live.state.components["agent"]
            assert live.wait_for(lambda a=agent: not a.sessions), "a session was left open"


def _client(live, api_key: str = API_KEY) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=api_key, base_url=f"{live.url}/v1", max_retries=0)


async def _next(conn, timeout: float = 60.0) -> dict:
    """The next server event as a dict, after checking it against the openai types."""
    raw = await asyncio.wait_for(conn.recv_bytes(), timeout)
    data = json.loads(raw)
    ADAPTER.validate_python(data)  # every field as the openai package defines it
    return data


async def _until(conn, kind: str, seen: list[dict] | None = None, timeout: float = 120.0
                 ) -> dict:
    while True:
        event = await _next(conn, timeout)
        if seen is not None:
            seen.append(event)
        assert event["type"] != "error" or kind == "error", event
        if event["type"] == kind:
            return event


def _b64(pcm: bytes) -> str:
    return base64.b64encode(pcm).decode()


async def _append_chunks(conn, pcm: bytes, *, pace: float = 0.0) -> None:
    step = RATE // 10 * 2  # 100 ms of PCM16
    for i in range(0, len(pcm), step):
        await conn.input_audio_buffer.append(audio=_b64(pcm[i:i + step]))
        if pace:
            await asyncio.sleep(pace)


def _deltas_audio(events: list[dict]) -> bytes:
    return b"".join(base64.b64decode(e["delta"]) for e in events
                    if e["type"] == "response.output_audio.delta")


# ========================================================================= real engines
@pytest.fixture(scope="module")
def real_server(manager, tmp_path_factory):
    for model_id in ("whisper-base", "whisper-tiny.en", "qwen2.5-coder-1.5b-instruct-q4km",
                     "en_US-joe-medium"):
        require_pack(model_id, manager.settings.cache_dir)
    from voxgate.config import AgentSettings
    from voxgate.server.agent_doors import AgentComponent
    from voxgate.server.app import create_app, uvicorn_options
    from voxgate.server.live_streams import StreamingComponent

    settings = live_settings(tmp_path_factory.mktemp("realtime"), max_streams=2,
                             agent=AgentSettings(max_sessions=1, max_reply_tokens=40))
    app = create_app(settings, manager, components=[StreamingComponent(settings),
                                                    AgentComponent(settings)])
    with serve_app(app, ws_max_size=uvicorn_options(settings)["ws_max_size"]) as live:
        yield live


@pytest.mark.slow
async def test_spoken_turn_with_server_vad(real_server, manager):
    from voxgate.engines.base import AsrOptions
    from voxgate.speech import SpeechService

    question, rate = SpeechService(manager.settings, manager).synthesize(
        "What is the capital city of France?")
    pcm = float32_to_pcm16(np.concatenate([resample(question, rate, RATE),
                                           np.zeros(RATE * 2, np.float32)]))
    async with _client(real_server).realtime.connect(model="voxgate-agent") as conn:
        created = await _next(conn)
        assert created["type"] == "session.created"
        vad = created["session"]["audio"]["input"]["turn_detection"]
        assert vad["type"] == "server_vad" and vad["threshold"] == \
            real_server.settings.streaming.vad_threshold
        await conn.session.update(session={
            "type": "realtime", "instructions": "Answer in one short sentence.",
            "max_output_tokens": 30,
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": RATE},
                                "turn_detection": {"type": "server_vad",
                                                   "silence_duration_ms": 500}},
                      "output": {"format": {"type": "audio/pcm", "rate": RATE},
                                 "voice": "alloy"}}})
        updated = await _until(conn, "session.updated")
        assert updated["session"]["instructions"] == "Answer in one short sentence."
        assert updated["session"]["max_output_tokens"] == 30
        assert updated["session"]["audio"]["output"]["voice"] == "en_US-joe-medium"
        assert updated["session"]["audio"]["input"]["turn_detection"][
            "silence_duration_ms"] == 500
        await _append_chunks(conn, pcm, pace=0.03)
        events: list[dict] = []
        done = await _until(conn, "response.done", events)
    kinds = [e["type"] for e in events]
    started = events[kinds.index("input_audio_buffer.speech_started")]
    stopped = events[kinds.index("input_audio_buffer.speech_stopped")]
    committed = events[kinds.index("input_audio_buffer.committed")]
    heard = events[kinds.index("conversation.item.input_audio_transcription.completed")]
    assert started["item_id"] == stopped["item_id"] == committed["item_id"] == heard["item_id"]
    assert 0 <= started["audio_start_ms"] < stopped["audio_end_ms"] <= len(pcm) // 48
    # the question is synthetic speech: Whisper base sometimes hears "France" as "friends"
    assert wer("What is the capital city of France?", heard["transcript"]) <= 0.25, heard
    asked_about_france = "france" in heard["transcript"].lower()
    assert kinds.index("response.created") < kinds.index("response.output_audio.delta") \
        < kinds.index("response.output_audio.done") < kinds.index("response.done")
    assert done["response"]["status"] == "completed"
    transcript = events[kinds.index("response.output_audio_transcript.done")]["transcript"]
    deltas = "".join(e["delta"] for e in events
                     if e["type"] == "response.output_audio_transcript.delta")
    assert deltas.strip() == transcript.strip()
    assert "paris" in transcript.lower() or not asked_about_france, transcript
    assert done["response"]["output"][0]["content"][0]["transcript"] == transcript
    audio = pcm16_to_float32(_deltas_audio(events))
    said = manager.asr("whisper-base").transcribe(resample(audio, RATE, 16_000),
                                                  AsrOptions(language="en")).text
    assert wer(transcript, said) <= 0.25, (transcript, said)


@pytest.mark.slow
async def test_manual_turn_cancelled_mid_answer(real_server, librivox):
    clip = next(c for c in librivox if c.path.stem.endswith("0930"))  # "he might even have been ..."
    pcm = float32_to_pcm16(resample(clip.audio, 16_000, RATE))
    async with _client(real_server).realtime.connect(model="voxgate-agent") as conn:
        await _next(conn)
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": None}}})
        updated = await _until(conn, "session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await _append_chunks(conn, pcm)
        await conn.input_audio_buffer.commit(event_id="commit-1")
        events: list[dict] = []
        heard = await _until(conn, "conversation.item.input_audio_transcription.completed",
                             events)
        assert not any(e["type"].startswith("input_audio_buffer.speech") for e in events)
        assert wer(clip.text, heard["transcript"]) <= 0.25, heard["transcript"]
        await conn.response.create(response={"instructions": "Retell it in three sentences."})
        created = await _until(conn, "response.created")
        await _until(conn, "response.output_audio.delta")
        await conn.response.cancel()
        after: list[dict] = []
        done = await _until(conn, "response.done", after)
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        # nothing more of that response comes: the generation and the TTS have stopped
        with pytest.raises(TimeoutError):
            await _next(conn, timeout=1.5)


# ============================================================== deterministic fake engines
class _FakeAgent:
    """Builds the AgentComponent whose sessions run fake ASR / LLM / TTS (orchestration)."""

    def __init__(self) -> None:
        self.asrs: list[FakeAsr] = []
        self.llms: list[FakeLlm] = []
        self.voices: list[FakeVoice] = []
        self.reply = " ".join(SENTENCES)

    def component(self, settings):
        from voxgate.server.agent_doors import AgentComponent

        fake = self

        class FakeAgentComponent(AgentComponent):
            async def open(self, config):
                self.check_capacity()
                config.validate()
                sid = uuid.uuid4().hex[:12]
                asr, llm, voice = FakeAsr(), FakeLlm(fake.reply, delay=0.01), FakeVoice()
                fake.asrs.append(asr)
                fake.llms.append(llm)
                fake.voices.append(voice)
                session = AgentSession(config, asr, llm, voice, session_id=sid,
                                       on_close=lambda: self.sessions.pop(sid, None))
                self.sessions[sid] = session
                return session

        return FakeAgentComponent(settings)


@pytest.fixture(scope="module")
def fake_server(manager, tmp_path_factory):
    from voxgate.config import AgentSettings
    from voxgate.server.app import create_app
    from voxgate.server.live_streams import StreamingComponent

    settings = live_settings(tmp_path_factory.mktemp("realtime-fake"), max_streams=4,
                             agent=AgentSettings(max_sessions=1))
    fake = _FakeAgent()
    app = create_app(settings, manager, components=[StreamingComponent(settings),
                                                    fake.component(settings)])
    with serve_app(app, ws_max_size=settings.streaming.max_frame_bytes) as live:
        live.fake = fake
        yield live


async def _text_turn(conn, text: str, item_id: str | None = None) -> dict:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    if item_id:
        item["id"] = item_id
    await conn.conversation.item.create(item=item)
    return await _until(conn, "conversation.item.done")


async def test_cancel_stops_generation_and_speech(fake_server):
    fake = fake_server.fake
    async with _client(fake_server).realtime.connect(model="any") as conn:
        await _next(conn)
        await _text_turn(conn, "Tell me four things.")
        await conn.response.create(response={"metadata": {"topic": "four"}})
        created = await _until(conn, "response.created")
        assert created["response"]["metadata"] == {"topic": "four"}
        await _until(conn, "response.output_audio.delta")
        await conn.response.create(event_id="twice")  # one response at a time
        error = await _until(conn, "error")
        assert error["error"]["code"] == "conversation_already_has_active_response"
        await conn.response.cancel()
        events: list[dict] = []
        done = await _until(conn, "response.done", events)
        assert done["response"]["status"] == "cancelled"
        with pytest.raises(TimeoutError):
            await _next(conn, timeout=1.0)
        kinds = [e["type"] for e in events]
        assert kinds[-6:] == ["response.output_audio.done",
                              "response.output_audio_transcript.done",
                              "response.content_part.done", "response.output_item.done",
                              "conversation.item.done", "response.done"]
        llm, voice = fake.llms[-1], fake.voices[-1]
        assert llm.finished == 0 and llm.cancelled == 1  # the generation was stopped
        assert len(voice.sentences) < len(SENTENCES)  # and so was the speech
        # the history keeps what was heard only: the cancelled item's transcript is short
        item_id = done["response"]["output"][0]["id"]
        await conn.conversation.item.retrieve(item_id=item_id)
        kept = (await _until(conn, "conversation.item.retrieved"))["item"]
        assert kept["status"] == "incomplete"
        assert len(kept["content"][0]["transcript"]) < len(fake.reply)
        # a second cancel has nothing to cancel
        await conn.response.cancel(event_id="cancel-2")
        error = await _until(conn, "error")
        assert error["error"]["code"] == "response_cancel_not_active"
        assert error["error"]["event_id"] == "cancel-2"


async def test_truncate_keeps_only_the_heard_part(fake_server):
    fake = fake_server.fake
    async with _client(fake_server).realtime.connect(model="any") as conn:
        await _next(conn)
        await _text_turn(conn, "Say four sentences.", item_id="my-question")
        await conn.response.create()
        events: list[dict] = []
        done = await _until(conn, "response.done", events)
        assert done["response"]["status"] == "completed"
        answer = done["response"]["output"][0]["id"]
        first = SENTENCES[0]
        await conn.conversation.item.truncate(item_id=answer, content_index=0,
                                              audio_end_ms=60_000)  # longer than the answer
        assert (await _until(conn, "error"))["error"]["param"] == "audio_end_ms"
        # the client played the first sentence and a bit: FakeVoice speaks 10 ms a character
        await conn.conversation.item.truncate(item_id=answer, content_index=0,
                                              audio_end_ms=len(first) * 10 + 5)
        truncated = await _until(conn, "conversation.item.truncated")
        assert truncated["item_id"] == answer
        await conn.conversation.item.retrieve(item_id=answer)
        kept = (await _until(conn, "conversation.item.retrieved"))["item"]
        assert kept["content"][0]["transcript"] == first
        # the next response's context holds only the heard part of the answer
        await _text_turn(conn, "And then?")
        await conn.response.create()
        await _until(conn, "response.done")
        messages = fake.llms[-1].requests[-1]
        assert [(m.role, m.content) for m in messages if m.role != "system"] == [
            ("user", "Say four sentences."), ("assistant", first), ("user", "And then?")]
        # truncating a response still playing cuts it there
        await conn.response.create()
        created = await _until(conn, "response.created")
        item = created["response"]["id"]
        added = await _until(conn, "response.output_item.added")
        await _until(conn, "response.output_audio.delta")
        await conn.conversation.item.truncate(item_id=added["item"]["id"], content_index=0,
                                              audio_end_ms=0)
        done = await _until(conn, "response.done")
        assert done["response"]["id"] == item and done["response"]["status"] == "cancelled"
        assert done["response"]["output"][0]["content"][0]["transcript"] == ""
        # a user item has no audio to truncate; an unknown item is named in the error
        await conn.conversation.item.truncate(item_id="my-question", content_index=0,
                                              audio_end_ms=10, event_id="t-user")
        error = await _until(conn, "error")
        assert error["error"]["event_id"] == "t-user" and error["error"]["param"] == "item_id"
        await conn.conversation.item.truncate(item_id="nope", content_index=0, audio_end_ms=10)
        assert (await _until(conn, "error"))["error"]["code"] == "item_not_found"


async def test_item_create_and_delete(fake_server):
    fake = fake_server.fake
    async with _client(fake_server).realtime.connect(model="any") as conn:
        await _next(conn)
        first = await _text_turn(conn, "Remember the word apple.", item_id="keep-me")
        assert first["item"]["id"] == "keep-me" and first["previous_item_id"] is None
        second = await _text_turn(conn, "Forget this one.")
        assert second["previous_item_id"] == "keep-me"
        await conn.conversation.item.delete(item_id=second["item"]["id"])
        deleted = await _until(conn, "conversation.item.deleted")
        assert deleted["item_id"] == second["item"]["id"]
        await conn.conversation.item.create(previous_item_id="keep-me", item={
            "type": "message", "role": "system",
            "content": [{"type": "input_text", "text": "Be brief."}]})
        inserted = await _until(conn, "conversation.item.done")
        assert inserted["previous_item_id"] == "keep-me"
        await conn.response.create()
        await _until(conn, "response.done")
        messages = fake.llms[-1].requests[-1]
        assert [(m.role, m.content) for m in messages[1:]] == [
            ("user", "Remember the word apple."), ("system", "Be brief.")]
        await conn.conversation.item.delete(item_id=second["item"]["id"], event_id="again")
        error = await _until(conn, "error")
        assert error["error"]["code"] == "item_not_found"
        assert error["error"]["event_id"] == "again"
        await conn.conversation.item.create(item={"type": "message", "role": "user", "id":
                                                  "keep-me", "content": [
                                                      {"type": "input_text", "text": "x"}]})
        assert (await _until(conn, "error"))["error"]["param"] == "item.id"


async def test_bad_events_are_answered_and_the_session_goes_on(fake_server):
    async with _client(fake_server).realtime.connect(model="any") as conn:
        await _next(conn)
        await conn.send({"type": "no.such.event", "event_id": "e1"})  # type: ignore[typeddict-item]
        error = await _until(conn, "error")
        assert error["error"]["event_id"] == "e1" and error["error"]["param"] == "type"
        await conn.input_audio_buffer.append(audio="not base64!!", event_id="e2")
        error = await _until(conn, "error")
        assert error["error"]["param"] == "audio" and error["error"]["event_id"] == "e2"
        await conn.input_audio_buffer.append(audio=_b64(b"\x00\x01\x02"), event_id="e3")
        error = await _until(conn, "error")
        assert error["error"]["code"] == "invalid_audio" and error["error"]["event_id"] == "e3"
        for bad, param in (
                ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}},
                 "session.audio.input.format"),
                ({"audio": {"input": {"turn_detection": {"type": "semantic_vad",
                                                         "silence_duration_ms": 500}}}},
                 "session.audio.input.turn_detection.silence_duration_ms"),
                ({"audio": {"input": {"turn_detection": {"type": "semantic_vad",
                                                         "eagerness": "fast"}}}},
                 "session.audio.input.turn_detection.eagerness"),
                ({"audio": {"input": {"turn_detection": {"type": "server_vad",
                                                         "eagerness": "low"}}}},
                 "session.audio.input.turn_detection.eagerness"),
                ({"audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}},
                 "session.audio.input.turn_detection.type"),
                ({"output_modalities": ["text"]}, "session.output_modalities"),
                ({"input_audio_format": "pcm16"}, "session.input_audio_format"),
                ({"audio": {"output": {"voice": "no-such-voice"}}},
                 "session.audio.output.voice"),
                ({"audio": {"input": {"turn_detection": {"type": "server_vad",
                                                         "threshold": 2.0}}}},
                 "session.audio.input.turn_detection.threshold")):
            await conn.send({"type": "session.update", "session": {"type": "realtime", **bad},
                             "event_id": "u"})
            error = await _until(conn, "error")
            assert error["error"]["param"] == param, (bad, error)
        await conn.response.cancel(event_id="c")
        assert (await _until(conn, "error"))["error"]["code"] == "response_cancel_not_active"
        await conn.input_audio_buffer.commit()
        assert (await _until(conn, "error"))["error"]["code"] == \
            "input_audio_buffer_commit_empty"
        # the commit opened the session's ASR stream: its language is fixed now
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "transcription": {"model": "whisper-1", "language": "de"}}}})
        error = await _until(conn, "error")
        assert error["error"]["param"] == "session.audio.input.transcription.language"
        # semantic_vad: the agent's text-aware end of turn, its waits set by the eagerness
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "semantic_vad", "eagerness": "low"}}}})
        vad = (await _until(conn, "session.updated"))["session"]["audio"]["input"][
            "turn_detection"]
        assert vad == {"type": "semantic_vad", "create_response": True,
                       "interrupt_response": True, "eagerness": "low"}
        session = next(iter(fake_server.state.components["agent"].sessions.values()))
        assert (session.config.end_of_turn_ms, session.config.unfinished_wait_ms) == (1000, 3000)
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad"}}}})
        await _until(conn, "session.updated")
        # after all that the session still works, with its options unchanged
        await conn.input_audio_buffer.clear()
        await _until(conn, "input_audio_buffer.cleared")
        await conn.session.update(session={"type": "realtime", "instructions": "Hi."})
        updated = await _until(conn, "session.updated")
        vad = updated["session"]["audio"]["input"]["turn_detection"]
        assert vad["type"] == "server_vad" and vad["prefix_padding_ms"] == \
            fake_server.settings.streaming.speech_pad_ms


async def test_auth_limits_and_raw_frames(fake_server):
    from websockets.exceptions import ConnectionClosed

    url = f"ws://127.0.0.1:{fake_server.port}/v1/realtime?model=x"
    async with _client(fake_server, api_key="wrong-key").realtime.connect(model="x") as conn:
        error = await _next(conn)
        assert error["type"] == "error" and error["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(conn.recv_bytes(), 10)
        assert closed.value.rcvd.code == 1008
    for extra in ({"additional_headers": {"X-API-Key": API_KEY}}, {"query": API_KEY}):
        target = url + (f"&api_key={extra.pop('query')}" if "query" in extra else "")
        async with websockets.connect(target, **extra) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            await ws.send(b"\x00\x00" * 100)  # raw audio instead of an append event
            error = json.loads(await ws.recv())
            assert error["type"] == "error" and "base64" in error["error"]["message"]
            await ws.send("{not json")
            assert json.loads(await ws.recv())["error"]["code"] == "invalid_json"
            # audio before any session.update is fine (the defaults apply, as with OpenAI):
            # the next answer is the one to the retrieve, not an error about the append
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": _b64(b"\x00\x00" * 2400)}))
            await ws.send(json.dumps({"type": "conversation.item.retrieve", "item_id": "x"}))
            assert json.loads(await ws.recv())["error"]["code"] == "item_not_found"
        agent = fake_server.state.components["agent"]
        assert fake_server.wait_for(lambda a=agent: not a.sessions)  # the slot is given back
    # an event over the frame limit closes with 1009; a client that sends nothing, with 1008
    async with websockets.connect(url, additional_headers={"X-API-Key": API_KEY}) as ws:
        await ws.recv()
        limit = fake_server.settings.streaming.max_frame_bytes
        await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                  "audio": _b64(b"\x00" * limit)}))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 1009
    async with websockets.connect(url, additional_headers={"X-API-Key": API_KEY}) as ws:
        await ws.recv()
        error = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert error["error"]["code"] == "idle_timeout"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 1008
    # the one agent session slot: a second client is told to come back later (1013)
    async with _client(fake_server).realtime.connect(model="x") as conn:
        await _next(conn)
        await _text_turn(conn, "Hold the slot.")  # the session opens with its first item
        async with _client(fake_server).realtime.connect(model="x") as second:
            error = await _next(second)
            assert error["type"] == "error" and error["error"]["code"] == "session_limit"
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(second.recv_bytes(), 10)
            assert closed.value.rcvd.code == 1013


class _Events:
    """Server events in order, with a backlog: waiting for the server to have taken the audio
    (:meth:`silence`) must not lose the events that came meanwhile."""

    def __init__(self, conn) -> None:
        self.conn, self.backlog = conn, []

    async def until(self, kind: str) -> dict:
        while True:
            event = self.backlog.pop(0) if self.backlog else await _next(self.conn, 30)
            assert event["type"] != "error", event
            if event["type"] == kind:
                return event

    async def silence(self, seconds: float) -> None:
        """Append silence (the fake ASR's input clock), then wait until the server has taken
        it: the reader handles events in order, and answers a bad retrieve at once."""
        await _append_chunks(self.conn, b"\x00\x00" * int(RATE * seconds))
        await self.conn.conversation.item.retrieve(item_id="sync")
        while (event := await _next(self.conn, 30))["type"] != "error":
            self.backlog.append(event)
        assert event["error"]["code"] == "item_not_found"


async def test_server_vad_turn_and_barge_in(fake_server):
    """Speech events come from the (test-driven) ASR; the door turns them into VAD events,
    commits the turn, answers it, and a confirmed barge-in cancels the answer (turn_detected)
    with the history cut to what was played."""
    fake = fake_server.fake
    async with _client(fake_server).realtime.connect(model="any") as conn:
        events = _Events(conn)
        await events.until("session.created")
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 300}}}})
        await events.until("session.updated")
        await events.silence(0.2)
        asr = fake.asrs[-1]

        def on_server(action, *args) -> None:
            fake_server.loop.call_soon_threadsafe(action, *args)

        on_server(asr.start)
        started = await events.until("input_audio_buffer.speech_started")
        assert 160 <= started["audio_start_ms"] <= 200  # the resampler holds back a little
        await events.silence(1.0)
        on_server(asr.end)
        on_server(asr.final, "What is the capital of France?")
        stopped = await events.until("input_audio_buffer.speech_stopped")
        assert stopped["item_id"] == started["item_id"]
        assert abs(stopped["audio_end_ms"] - started["audio_start_ms"] - 1000) <= 30
        await events.silence(0.4)  # more than silence_duration_ms: the turn ends
        committed = await events.until("input_audio_buffer.committed")
        assert committed["item_id"] == started["item_id"]
        heard = await events.until("conversation.item.input_audio_transcription.completed")
        assert heard["transcript"] == "What is the capital of France?"
        assert heard["usage"] == {"type": "duration", "seconds": pytest.approx(1.0, abs=0.03)}
        await events.until("response.created")
        for _ in range(6):  # about 0.4 s of the answer has played
            await events.until("response.output_audio.delta")
        on_server(asr.start)  # the user talks over the answer
        barge = await events.until("input_audio_buffer.speech_started")
        assert barge["item_id"] != started["item_id"]
        await _append_chunks(conn, b"\x00\x00" * int(RATE * 0.8))  # confirms the barge-in
        done = await events.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "turn_detected"
        played = done["response"]["output"][0]["content"][0]["transcript"]
        assert played and fake.reply.startswith(played) and len(played) < len(fake.reply)
        on_server(asr.end)
        on_server(asr.final, "No, stop.")
        await events.silence(0.4)
        committed = await events.until("input_audio_buffer.committed")
        assert committed["item_id"] == barge["item_id"]
        await events.until("response.done")
        messages = fake.llms[-1].requests[-1]
        assert [(m.role, m.content) for m in messages[1:]] == [
            ("user", "What is the capital of France?"), ("assistant", played),
            ("user", "No, stop.")]


async def test_voice_changes_between_responses(fake_server, manager):
    """A running session takes a new voice (a real Piper voice here) between responses, never
    during one; the next response speaks with it."""
    require_pack("en_US-joe-medium", manager.settings.cache_dir)
    fake = fake_server.fake
    async with _client(fake_server).realtime.connect(model="any") as conn:
        await _next(conn)
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 200,
                               "threshold": 0.6}}}})
        await _until(conn, "session.updated")
        await _text_turn(conn, "Hello.")  # opens the session with the fake voice
        await conn.response.create()
        await _until(conn, "response.output_audio.delta")
        await conn.session.update(session={"type": "realtime", "audio": {"output": {
            "voice": "en_US-joe-medium", "speed": 1.2}}}, event_id="mid")
        error = await _until(conn, "error")
        assert error["error"]["param"] == "session.audio.output.voice"
        await _until(conn, "response.done")
        await conn.session.update(session={"type": "realtime", "audio": {"output": {
            "voice": "en_US-joe-medium", "speed": 1.2}}})
        updated = await _until(conn, "session.updated")
        assert updated["session"]["audio"]["output"] == {
            "format": {"type": "audio/pcm", "rate": RATE}, "voice": "en_US-joe-medium",
            "speed": 1.2}
        spoken = len(fake.voices[-1].sentences)
        fake.llms[-1].reply = "Hi."
        await conn.response.create()
        events: list[dict] = []
        await _until(conn, "response.done", events)
        audio = pcm16_to_float32(_deltas_audio(events))
        assert audio.size > RATE // 10 and np.abs(audio).max() > 0.05  # Piper said "Hi."
        assert len(fake.voices[-1].sentences) == spoken  # the fake voice was not used
        # switching to manual turns keeps what the open stream was set up with
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": None}}})
        updated = await _until(conn, "session.updated")
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
