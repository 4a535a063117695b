"""Wyoming text-to-speech (Home Assistant's Piper slot), driven by the ``wyoming`` package's client.

A live voxgate (uvicorn + the Wyoming component on a free loopback port) answers ``describe``
with a tts program, ``synthesize`` with ``audio-start``/``audio-chunk``.../``audio-stop``, and
the streaming events the way Home Assistant sends them (``synthesize-start``, text chunks, the
compatibility ``synthesize``, ``synthesize-stop``) with audio per sentence, then
``synthesize-stopped``. Intelligibility by round trip through offline Whisper base. Bad input is
an ``error`` event on a connection that stays usable; the concurrency bound answers ``busy``; a
client that hangs up stops synthesis.
"""

from __future__ import annotations

import asyncio
import warnings

import numpy as np
import pytest
from conftest import wer
from live_server import serve_app
from speech_support import counting_sentences

from voxgate.audio import SAMPLE_RATE, pcm16_to_float32, resample
from voxgate.config import Settings, StreamingSettings, TtsSettings
from voxgate.engines.base import AsrOptions
from voxgate.server.app import create_app
from voxgate.server.speech_doors import speech_service, speech_slots
from voxgate.server.wyoming import WyomingServer

wyoming = pytest.importorskip("wyoming", reason="the 'wyoming' extra is not installed")
with warnings.catch_warnings():  # wyoming.audio imports the stdlib audioop (deprecated)
    warnings.simplefilter("ignore", DeprecationWarning)
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

pytestmark = pytest.mark.slow

PARAGRAPH = ("The weather is lovely today. We should take a walk in the park after lunch. "
             "Please bring a warm coat and some water.")


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    """Wyoming on loopback with one speech slot (the busy test needs a small bound)."""
    settings = Settings(_env_file=None, data_dir=tmp_path_factory.mktemp("wyoming-tts"),
                        offline=True, tts=TtsSettings(max_concurrent=1),
                        streaming=StreamingSettings(idle_timeout_s=5.0))
    component = WyomingServer("tcp://127.0.0.1:0")
    with serve_app(create_app(settings, manager=manager, components=[component])) as live:
        live.address = component.bound
        yield live


@pytest.fixture(scope="module")
def whisper(manager):
    return manager.get("asr", "whisper-base")


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


def _client(server) -> AsyncTcpClient:
    return AsyncTcpClient(server.address.host, server.address.port)


async def _read(client):
    event = await asyncio.wait_for(client.read_event(), 120)
    assert event is not None, "server closed the connection"
    return event


async def _until(client, *types) -> list:
    """Every event up to and including the first of ``types`` (or an error)."""
    events = []
    while True:
        event = await _read(client)
        events.append(event)
        if event.type in types or Error.is_type(event.type):
            return events


def _groups(events) -> list[tuple[int, bytes]]:
    """(rate, PCM) of each audio-start ... audio-stop group, checking their framing."""
    groups: list[tuple[int, bytes]] = []
    current: list[bytes] | None = None
    rate = 0
    for event in events:
        if AudioStart.is_type(event.type):
            assert current is None, "audio-start inside a group"
            start = AudioStart.from_event(event)
            assert (start.width, start.channels) == (2, 1)
            rate, current = start.rate, []
        elif AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            assert current is not None and chunk.rate == rate and chunk.audio
            current.append(chunk.audio)
        elif AudioStop.is_type(event.type):
            assert current is not None, "audio-stop without audio-start"
            groups.append((rate, b"".join(current)))
            current = None
    assert current is None, "unterminated audio group"
    return groups


def _heard(whisper, groups) -> str:
    audio = np.concatenate([resample(pcm16_to_float32(pcm), rate, SAMPLE_RATE)
                            for rate, pcm in groups])
    return whisper.transcribe(audio, AsrOptions(language="en", beam_size=1)).text


def _idle(server) -> bool:
    return server.wait_for(lambda: speech_slots(server.state).active == 0)


def test_describe_lists_a_tts_program_with_voices(server):
    async def go():
        async with _client(server) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await _read(client))

    info = _run(go())
    (program,) = info.tts
    assert program.name == "voxgate" and program.installed
    assert program.supports_synthesize_streaming is True
    voices = {v.name: v for v in program.voices}
    assert program.voices[0].name == "en_US-joe-medium"  # the default voice first
    assert voices["en_US-joe-medium"].languages == ["en-US"]
    assert voices["espeak:hi"].languages == ["hi"]
    assert all(v.installed and v.description for v in program.voices)
    assert set(voices) == {v.id for v in speech_service(server.state).voices()}
    assert info.asr  # speech-to-text is still offered beside it


def test_synthesize_round_trip(server, whisper):
    async def go():
        async with _client(server) as client:
            await client.write_event(Synthesize(text=PARAGRAPH).event())
            return await _until(client, "audio-stop")

    events = _run(go())
    groups = _groups(events)
    assert len(groups) == 1 and groups[0][0] == 22050  # one utterance, the voice's rate
    assert sum(AudioChunk.is_type(e.type) for e in events) > 3
    assert wer(PARAGRAPH, _heard(whisper, groups)) <= 0.1
    assert _idle(server)


def test_ssml_is_read_as_its_plain_text(server, whisper):
    async def go():
        async with _client(server) as client:
            await client.write_event(Synthesize(text=f"<speak>{PARAGRAPH}</speak>",
                                                text_format="ssml").event())
            return await _until(client, "audio-stop")

    heard = _heard(whisper, _groups(_run(go())))
    assert wer(PARAGRAPH, heard) <= 0.1 and "speak" not in heard.lower()


def test_voice_by_name_speaker_and_language(server, whisper):
    text = "Good morning, this is a test of another voice."

    async def say(voice):
        async with _client(server) as client:
            await client.write_event(Synthesize(text=text, voice=voice).event())
            return _groups(await _until(client, "audio-stop"))

    espeak = _run(say(SynthesizeVoice(name="espeak:en-us")))
    assert espeak[0][0] == 22050 and wer(text, _heard(whisper, espeak)) <= 0.5
    if "festival:cmu_us_slt_arctic_hts" in {v.id for v in speech_service(server.state).voices()}:
        slt = _run(say(SynthesizeVoice(name="festival:cmu_us_slt_arctic_hts")))
        assert slt[0][0] == 32000 and wer(text, _heard(whisper, slt)) <= 0.25
        russian = _run(say(SynthesizeVoice(language="ru_RU")))  # Festival's Russian voice
        assert russian[0][0] == 16000
    english = _run(say(SynthesizeVoice(language="en")))  # the default voice speaks English
    assert english[0][0] == 22050 and wer(text, _heard(whisper, english)) <= 0.15


def test_streaming_sends_audio_per_sentence_as_sentences_complete(server, whisper):
    async def go():
        async with _client(server) as client:
            await client.write_event(SynthesizeStart().event())
            for piece in ("The wea", "ther is love", "ly today. We should"):
                await client.write_event(SynthesizeChunk(text=piece).event())
            # the first sentence is complete: its audio comes before any more text is sent
            first = await _until(client, "audio-stop")
            for piece in (" take a walk in the park after", " lunch. Please bring a warm",
                          " coat and some water."):
                await client.write_event(SynthesizeChunk(text=piece).event())
            await client.write_event(Synthesize(text=PARAGRAPH).event())  # HA's compat copy
            await client.write_event(SynthesizeStop().event())
            rest = await _until(client, "synthesize-stopped")
            await client.write_event(Ping(text="after").event())
            return first, rest, await _read(client)

    first, rest, pong = _run(go())
    assert len(_groups(first)) == 1
    assert SynthesizeStopped.is_type(rest[-1].type)
    groups = _groups(first + rest)
    assert len(groups) == 3  # one audio-start/stop group per sentence, compat copy ignored
    assert wer(PARAGRAPH, _heard(whisper, groups)) <= 0.1
    assert Pong.is_type(pong.type)
    assert _idle(server)


_BAD = [
    (Synthesize(text=""), "empty"),
    (Synthesize(text="  \n\t "), "empty"),
    (Synthesize(text="\U0001f600\U0001f389"), "not spoken"),
    (Synthesize(text="?!... --"), "letters or digits"),
    (Synthesize(text="x" * 5000), "limit"),
    (Synthesize(text="Hello.", voice=SynthesizeVoice(name="no-such-voice")), "en_US-joe-medium"),
    (Synthesize(text="Hello.", voice=SynthesizeVoice(name="/etc/passwd")), "unknown voice"),
    # a hub voice that is not installed: refused, never downloaded for a client
    (Synthesize(text="Hello.", voice=SynthesizeVoice(name="en_US-lessac-medium")),
     "unknown voice"),
    (Synthesize(text="Hello.", voice=SynthesizeVoice(name="en_US-joe-medium", speaker="bob")),
     "speaker"),
    (Synthesize(text="Hello.", voice=SynthesizeVoice(language="xx")), "no voice speaks"),
    (Synthesize(text="Hello.", text_format="markdown"), "markdown"),
    (SynthesizeChunk(text="stray"), "without synthesize-start"),
    (SynthesizeStop(), "without synthesize-start"),
]


@pytest.mark.parametrize("request_,needle", _BAD, ids=[n for _, n in _BAD])
def test_bad_input_is_an_error_event_and_the_connection_survives(server, request_, needle):
    async def go():
        async with _client(server) as client:
            await client.write_event(request_.event())
            error = await _read(client)
            await client.write_event(Synthesize(text="Still here.").event())
            after = await _until(client, "audio-stop")
            return error, after

    error, after = _run(go())
    assert Error.is_type(error.type), error
    assert needle in Error.from_event(error).text
    assert len(_groups(after)) == 1
    assert _idle(server)


def test_stream_over_the_limit_fails_once_then_the_next_stream_works(server):
    async def go():
        async with _client(server) as client:
            await client.write_event(SynthesizeStart().event())
            for _ in range(6):
                await client.write_event(SynthesizeChunk(text="word " * 200).event())
            error = await _read(client)
            await client.write_event(SynthesizeStop().event())  # ends the failed stream quietly
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text="A short one.").event())
            await client.write_event(SynthesizeStop().event())
            return error, await _until(client, "synthesize-stopped")

    error, events = _run(go())
    assert "limit" in Error.from_event(error).text
    assert SynthesizeStopped.is_type(events[-1].type) and len(_groups(events)) == 1


def test_an_idle_stream_is_closed_and_frees_its_slot(server):
    async def go():
        async with _client(server) as client:
            await client.write_event(SynthesizeStart().event())
            await client.write_event(SynthesizeChunk(text="Hello there").event())
            return await _read(client)  # nothing more is sent: idle timeout (5 s here)

    error = _run(go())
    assert Error.is_type(error.type) and "stream closed" in Error.from_event(error).text
    assert _idle(server)


def test_busy_when_slots_are_taken_and_a_vanished_client_stops_synthesis(server):
    story = " ".join(f"This is sentence number {n} of a long story." for n in range(1, 41))

    async def go():
        holder = _client(server)
        await holder.connect()
        await holder.write_event(Synthesize(text=story).event())
        assert AudioStart.is_type((await _read(holder)).type)  # it holds the only slot now
        async with _client(server) as other:
            await other.write_event(Synthesize(text="Another request.").event())
            busy = Error.from_event(await _read(other))
            await holder.disconnect()  # hang up mid-story
            assert await asyncio.to_thread(_idle, server)
            stopped_at = len(log.said)
            assert log.running == 0  # the slot was freed once synthesis had really stopped
            await other.write_event(Synthesize(text="Another request.").event())
            again = await _until(other, "audio-stop")
        return busy, stopped_at, again

    with counting_sentences(speech_service(server.state)) as log:
        busy, stopped_at, again = _run(go())
    assert busy.code == "busy" and "VOXGATE_TTS__MAX_CONCURRENT" in busy.text
    assert stopped_at < 10  # one sentence of look-ahead, not the whole story
    assert len(_groups(again)) == 1 and len(log.said) == stopped_at + 1
