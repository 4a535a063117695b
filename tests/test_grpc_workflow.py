"""gRPC ``voxgate.v1.VoiceWorkflow`` against a live voxgate on loopback, with the generated stub.

A real conversation turn: a question spoken by a Festival voice (not the agent's Piper voice)
is streamed in real time; real Whisper hears it, the offline Qwen answers, Piper speaks; the
agent audio that comes back is transcribed by Whisper and must say the agent's text. Then the
door's contract: interrupt control (history cut to what was played, no audio after it), auth,
audio before config, bad config fields naming the field, bad audio, the session limit, a mute
client, health.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import jiwer
import numpy as np
import pytest
from conftest import normalise, require_pack, wer
from live_server import API_KEY, call_with_a_mute_client, live_settings, start_agent_server
from media import festival_speech

from voxgate.audio import SAMPLE_RATE, float32_to_pcm16, pcm16_to_float32, resample
from voxgate.config import AgentSettings
from voxgate.engines.base import AsrOptions
from voxgate.proto import voice_workflow_pb2 as pb
from voxgate.proto import voice_workflow_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"
SHORT_PROMPT = "You are a voice assistant. Answer in one short sentence of plain text."
KEY = (("x-api-key", API_KEY),)
LLM = "qwen2.5-coder-1.5b-instruct-q4km"
AGENT_MODELS = ("whisper-base", "whisper-tiny.en", LLM, "en_US-joe-medium")


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    """A live server that allows one agent session at a time."""
    for model_id in AGENT_MODELS:
        require_pack(model_id, manager.settings.cache_dir)
    settings = live_settings(tmp_path_factory.mktemp("workflow"),
                             agent=AgentSettings(max_sessions=1))
    yield from start_agent_server(settings, manager)


@pytest.fixture(scope="module")
def whisper(manager):
    return manager.get("asr", "whisper-base")


def _free(server) -> None:
    from voxgate.server.agent_doors import agent_service

    assert server.wait_for(lambda: agent_service(server.state).active == 0, 30)


class Conversation:
    """A Converse call driven from the test: ``send`` messages, read ``responses``."""

    def __init__(self, server, metadata=KEY) -> None:
        self.channel = grpc.insecure_channel(server.grpc_uri)
        self._outbox: queue.Queue[Any] = queue.Queue()
        self.responses = pb_grpc.VoiceWorkflowStub(self.channel).Converse(
            self._requests(), metadata=metadata, timeout=180)

    def _requests(self) -> Iterator[pb.ClientMessage]:
        while (message := self._outbox.get()) is not None:
            yield message

    def send(self, **fields: Any) -> None:
        self._outbox.put(pb.ClientMessage(**fields))

    def close_requests(self) -> None:
        self._outbox.put(None)

    def stream_audio(self, audio: np.ndarray, chunk_s: float = 0.1, realtime: bool = True
                     ) -> threading.Thread:
        """Send 16 kHz audio in chunks, paced in real time, from a thread."""
        def run() -> None:
            step = int(chunk_s * SAMPLE_RATE)
            stop = threading.Event()
            for offset in range(0, audio.size, step):
                self.send(audio=pb.UserAudio(data=float32_to_pcm16(audio[offset:offset + step])))
                if realtime:
                    stop.wait(chunk_s)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def __enter__(self) -> Conversation:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_requests()
        self.responses.cancel()
        self.channel.close()


def _kind(message: pb.ServerMessage) -> str:
    return message.WhichOneof("message")


def _config(**fields: Any) -> pb.SessionConfig:
    base: dict[str, Any] = {"system_prompt": SHORT_PROMPT, "max_reply_tokens": 40}
    base.update(fields)
    return pb.SessionConfig(**base)


def spoken_turn(server, question: np.ndarray) -> list[pb.ServerMessage]:
    """One spoken exchange over VoiceWorkflow: the question streamed in real time (with
    silence around it), every server message until the agent's turn ends, then END."""
    user = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), question,
                           np.zeros(2 * SAMPLE_RATE, np.float32)])
    messages: list[pb.ServerMessage] = []
    with Conversation(server) as talk:
        talk.send(config=_config(sample_rate_hz=SAMPLE_RATE, encoding=pb.PCM16))
        sender = None
        for message in talk.responses:
            messages.append(message)
            if _kind(message) == "ready":
                sender = talk.stream_audio(user)
            if _kind(message) == "turn" and message.turn.speaker == pb.Turn.AGENT \
                    and message.turn.kind == pb.Turn.END:
                talk.send(control=pb.Control(action=pb.Control.END))
        assert sender is not None
        sender.join()
    return messages


def check_spoken_answer(messages: list[pb.ServerMessage], whisper: Any) -> pb.Ready:
    """The question was heard, answered with Paris, and the agent audio says the agent text;
    one completed agent turn with its latency breakdown; no error."""
    kinds = [_kind(m) for m in messages]
    assert kinds[0] == "ready"
    ready = messages[0].ready
    assert ready.session_id and ready.input_sample_rate_hz == SAMPLE_RATE
    assert ready.output_sample_rate_hz > 0
    finals = [m.transcript.text for m in messages
              if _kind(m) == "transcript" and m.transcript.is_final]
    assert wer(QUESTION, " ".join(finals)) <= 0.2, finals
    assert any(_kind(m) == "speech" and m.speech.started for m in messages)
    reply = "".join(m.agent_text.delta for m in messages if _kind(m) == "agent_text")
    assert "paris" in reply.lower(), reply
    chunks = [m.audio for m in messages if _kind(m) == "audio"]
    assert chunks and all(c.sample_rate_hz == ready.output_sample_rate_hz for c in chunks)
    positions = [c.playout_s for c in chunks]
    assert positions[0] == 0.0 and positions == sorted(positions)
    audio = pcm16_to_float32(b"".join(c.data for c in chunks))
    heard = whisper.transcribe(resample(audio, ready.output_sample_rate_hz, SAMPLE_RATE),
                               AsrOptions(language="en", beam_size=5)).text
    # characters, not words: a one-sentence reply has too few words for a stable WER
    # ("France is" heard as "Francis" is one third of "The capital of France is Paris")
    assert jiwer.cer(normalise(reply), normalise(heard)) <= 0.15, (reply, heard)
    ends = [m.turn for m in messages if _kind(m) == "turn" and m.turn.kind == pb.Turn.END
            and m.turn.speaker == pb.Turn.AGENT]
    assert len(ends) == 1 and ends[0].reason == "completed" and not ends[0].interrupted
    assert ends[0].audio_s == pytest.approx(audio.size / ready.output_sample_rate_hz, abs=0.3)
    latency = [m.latency for m in messages if _kind(m) == "latency"]
    assert len(latency) == 1 and latency[0].turn_id == ends[0].turn_id
    assert latency[0].HasField("voice_to_voice_s") and latency[0].voice_to_voice_s > 0
    assert latency[0].HasField("llm_first_token_s")
    assert not [m for m in messages if _kind(m) == "error"]
    return ready


def test_a_spoken_question_is_answered_in_speech(server, whisper, tmp_path):
    _free(server)
    messages = spoken_turn(server, festival_speech(QUESTION, tmp_path / "question.wav"))
    ready = check_spoken_answer(messages, whisper)
    assert ready.asr_model == "whisper-base" and ready.voice == "en_US-joe-medium"
    assert ready.llm_model == "qwen2.5-coder-1.5b-instruct-q4km"


@pytest.fixture(scope="module")
def riva_gateway(server, manager, tmp_path_factory):
    """Seed 004's deployment: a gateway whose ASR and TTS are Riva servers and whose LLM is an
    OpenAI-compatible server. Here the Riva server is the module's voxgate (it speaks Riva's
    ASR and TTS protocols) and the LLM server is llama.cpp's own OpenAI-compatible listener on
    loopback; the gateway has its own settings and model manager, as a separate host would."""
    from voxgate.config import LlmSettings, RivaSettings
    from voxgate.engines.manager import ModelManager

    base_url, key = manager.get("llm", LLM).http_endpoint
    settings = live_settings(
        tmp_path_factory.mktemp("gateway"),
        riva=RivaSettings(uri=server.grpc_uri, api_key=API_KEY),
        llm=LlmSettings(base_url=base_url, api_key=key),
        agent=AgentSettings(asr_model="riva", partial_model="riva", voice="riva-tts"))
    gateway_manager = ModelManager(settings)
    try:
        yield from start_agent_server(settings, gateway_manager)
    finally:
        gateway_manager.close()


def test_seed_004_deployment_riva_asr_riva_tts_openai_llm(riva_gateway, server, whisper,
                                                          tmp_path):
    _free(riva_gateway)
    messages = spoken_turn(riva_gateway, festival_speech(QUESTION, tmp_path / "question.wav"))
    ready = check_spoken_answer(messages, whisper)
    assert ready.asr_model == "riva" and ready.voice.startswith("riva-tts")
    assert ready.llm_model == "openai-compatible"


def test_interrupt_control_cuts_the_reply_to_what_was_played(server):
    _free(server)
    messages: list[pb.ServerMessage] = []
    with Conversation(server) as talk:
        talk.send(config=_config(max_reply_tokens=60, system_prompt="Follow the instructions."))
        # short sentences: the first audio comes after a few tokens, the reply goes on long
        talk.send(text=pb.UserText(text="Count from one to twenty in words, one number per "
                                        "sentence, like this: One. Two. Three."))
        interrupted = False
        for message in talk.responses:
            messages.append(message)
            if _kind(message) == "audio" and not interrupted \
                    and message.audio.playout_s >= 1.2:
                talk.send(control=pb.Control(action=pb.Control.INTERRUPT))
                interrupted = True
            if _kind(message) == "turn" and message.turn.speaker == pb.Turn.AGENT \
                    and message.turn.kind == pb.Turn.END:
                talk.send(control=pb.Control(action=pb.Control.END))
    kinds = [_kind(m) for m in messages]
    cut = kinds.index("interruption")
    confirmed = messages[cut].interruption
    assert confirmed.state == pb.Interruption.CONFIRMED and confirmed.reason == "cancelled"
    sent = [m.audio for m in messages[:cut] if _kind(m) == "audio"]
    sent_s = sent[-1].playout_s + len(sent[-1].data) / 2 / sent[-1].sample_rate_hz
    # the server's model of the client's player: what was sent, less the lead it runs ahead
    assert 0.2 <= confirmed.playout_s <= sent_s
    assert "audio" not in kinds[cut:], "agent audio after the interruption"
    end = next(m.turn for m in messages[cut:] if _kind(m) == "turn"
               and m.turn.speaker == pb.Turn.AGENT and m.turn.kind == pb.Turn.END)
    assert end.interrupted and end.reason == "cancelled"
    assert end.text == confirmed.played_text and end.text
    generated = "".join(m.agent_text.delta for m in messages if _kind(m) == "agent_text")
    assert generated.startswith(end.text.rstrip(".,;:!? ")[:20])
    assert len(end.text) < len(generated)


def test_push_to_talk_flush_at_48_khz(server, tmp_path):
    """turn_detection off: only FLUSH ends the user's turn (push-to-talk release). The audio is
    48 kHz F32, sent faster than real time; the turn is heard and answered."""
    _free(server)
    question = festival_speech(QUESTION, tmp_path / "question.wav")
    audio48 = resample(np.concatenate([question, np.zeros(SAMPLE_RATE, np.float32)]),
                       SAMPLE_RATE, 48_000)
    messages: list[pb.ServerMessage] = []
    with Conversation(server) as talk:
        talk.send(config=_config(sample_rate_hz=48_000, encoding=pb.F32, turn_detection=False))
        step = 4800  # 100 ms
        for offset in range(0, audio48.size, step):
            talk.send(audio=pb.UserAudio(data=audio48[offset:offset + step].tobytes()))
        talk.send(control=pb.Control(action=pb.Control.FLUSH))
        for message in talk.responses:
            messages.append(message)
            if _kind(message) == "turn" and message.turn.speaker == pb.Turn.AGENT \
                    and message.turn.kind == pb.Turn.END:
                talk.send(control=pb.Control(action=pb.Control.END))
    assert messages[0].ready.input_sample_rate_hz == 48_000
    user_end = next(m.turn for m in messages if _kind(m) == "turn"
                    and m.turn.speaker == pb.Turn.USER and m.turn.kind == pb.Turn.END)
    assert wer(QUESTION, user_end.text) <= 0.2, user_end.text
    reply = "".join(m.agent_text.delta for m in messages if _kind(m) == "agent_text")
    assert "paris" in reply.lower(), reply
    assert any(_kind(m) == "audio" for m in messages)


def _status(server, messages: list[pb.ClientMessage], metadata=KEY) -> grpc.RpcError:
    with grpc.insecure_channel(server.grpc_uri) as channel:
        stub = pb_grpc.VoiceWorkflowStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Converse(iter(messages), metadata=metadata, timeout=60))
    return info.value


@pytest.mark.parametrize("metadata", [(), (("x-api-key", "wrong"),),
                                      (("authorization", "Bearer wrong"),)])
def test_missing_or_bad_key_is_unauthenticated(server, metadata):
    error = _status(server, [pb.ClientMessage(config=_config())], metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_bad_key_reaches_an_asyncio_client_that_writes_late(server):
    """grpcio's asyncio client reports INTERNAL ('Internal error from Core') instead of the
    server's status when its write fails because the call already ended (grpc/grpc#36066):
    the server refuses a streaming call only once the first message arrived, so a client
    whose config write comes after the refusal was decided (a busy machine) still learns
    UNAUTHENTICATED."""
    import asyncio

    async def converse() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(server.grpc_uri) as channel:
            call = pb_grpc.VoiceWorkflowStub(channel).Converse(
                metadata=(("x-api-key", "wrong"),), timeout=30)
            await asyncio.sleep(0.5)  # the server has long seen the bad key
            try:
                await call.write(pb.ClientMessage(config=_config()))
            except grpc.aio.AioRpcError:
                pass  # the status below is what the client reports either way
            return await call.code()

    assert asyncio.run(converse()) == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("first", [
    pb.ClientMessage(audio=pb.UserAudio(data=b"\x00\x00" * 1600)),
    pb.ClientMessage(text=pb.UserText(text="hello")),
    pb.ClientMessage(control=pb.Control(action=pb.Control.END)),
    pb.ClientMessage(),
])
def test_anything_before_config_is_invalid_argument(server, first):
    _free(server)
    error = _status(server, [first, pb.ClientMessage(config=_config())])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message must be config" in error.details()


@pytest.mark.parametrize("config, field", [
    (pb.SessionConfig(voice="no-such-voice"), "voice"),
    (pb.SessionConfig(llm_model="/etc/passwd"), "llm_model"),
    (pb.SessionConfig(asr_model="en_US-joe-medium"), "asr_model"),
    (pb.SessionConfig(sample_rate_hz=1000), "sample_rate_hz"),
    (pb.SessionConfig(end_of_turn_ms=50), "end_of_turn_ms"),
    (pb.SessionConfig(speed=9.0), "speed"),
    (pb.SessionConfig(max_reply_tokens=100_000), "max_reply_tokens"),
])
def test_bad_config_is_invalid_argument_naming_the_field(server, config, field):
    _free(server)
    error = _status(server, [pb.ClientMessage(config=config)])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(field), error.details()


@pytest.mark.parametrize("message, words", [
    (pb.ClientMessage(audio=pb.UserAudio(data=b"\x00\x00\x00")), "audio: pcm16"),
    (pb.ClientMessage(audio=pb.UserAudio(data=b"\x00" * (64 * 1024 + 2))), "limit"),
    (pb.ClientMessage(config=pb.SessionConfig()), "sent twice"),
    (pb.ClientMessage(text=pb.UserText(text="   ")), "empty"),
])
def test_bad_messages_after_config_are_invalid_argument(server, message, words):
    _free(server)
    error = _status(server, [pb.ClientMessage(config=_config()), message])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in error.details(), error.details()


def test_sessions_beyond_the_limit_are_refused_and_freed_on_end(server):
    _free(server)
    with Conversation(server) as first:
        first.send(config=_config())
        assert _kind(next(first.responses)) == "ready"
        error = _status(server, [pb.ClientMessage(config=_config())])
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "VOXGATE_AGENT__MAX_SESSIONS" in error.details()
        first.send(control=pb.Control(action=pb.Control.END))
        assert [_kind(m) for m in first.responses] == []  # ended OK, nothing more to say
    _free(server)
    with Conversation(server) as again:
        again.send(config=_config())
        assert _kind(next(again.responses)) == "ready"


def test_a_mute_client_is_closed_after_the_idle_timeout(server):
    _free(server)
    with grpc.insecure_channel(server.grpc_uri) as channel:
        stub = pb_grpc.VoiceWorkflowStub(channel)
        error = call_with_a_mute_client(lambda it: stub.Converse(it, metadata=KEY, timeout=60))
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no config" in error.details()
    _free(server)


def test_health_reports_the_service(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc_uri) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="voxgate.v1.VoiceWorkflow")).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_an_idle_session_gets_a_fatal_error_then_deadline_exceeded(manager, tmp_path):
    """After the config, idleness is the session's rule (VOXGATE_AGENT__IDLE_TIMEOUT_S): the
    call gets the agent's fatal error as a message, then ends with DEADLINE_EXCEEDED."""
    for model_id in AGENT_MODELS:
        require_pack(model_id, manager.settings.cache_dir)
    settings = live_settings(tmp_path, agent=AgentSettings(idle_timeout_s=1.0))
    for idle in start_agent_server(settings, manager):
        received: list[pb.ServerMessage] = []
        with Conversation(idle) as talk:
            talk.send(config=_config())
            with pytest.raises(grpc.RpcError) as info:
                received.extend(talk.responses)  # keeps what came before the status
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert [_kind(m) for m in received] == ["ready", "error"]
        assert received[1].error.fatal and received[1].error.code == "idle_timeout"
        _free(idle)
