"""Wyoming speech-to-text, driven by the ``wyoming`` package's own client classes.

A live voxgate server (uvicorn + the Wyoming component on a free loopback port) transcribes real
LibriVox speech sent the way Home Assistant and satellites send it: ``transcribe``,
``audio-start`` in the microphone's own format (not 16 kHz, stereo), ``audio-chunk``s whose
byte counts split frames, ``audio-stop``. Bad input gets an ``error`` event and the connection
stays usable.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from conftest import wer
from live_server import serve_app

from voxgate.audio import SAMPLE_RATE, decode_audio, float32_to_pcm16
from voxgate.errors import ConfigError
from voxgate.server.app import create_app
from voxgate.server.wyoming import WyomingServer, _AudioIn, parse_wyoming_uri

wyoming = pytest.importorskip("wyoming", reason="the 'wyoming' extra is not installed")
with warnings.catch_warnings():  # wyoming.audio imports the stdlib audioop (deprecated)
    warnings.simplefilter("ignore", DeprecationWarning)
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.asr import Transcribe, Transcript
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import async_read_event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wyoming_server(settings, manager):
    component = WyomingServer("tcp://127.0.0.1:0")
    with serve_app(create_app(settings, manager=manager, components=[component])):
        yield component.bound


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def _pcm(audio16k: np.ndarray, rate: int, channels: int) -> bytes:
    """Real speech as a microphone at ``rate`` with ``channels`` would send it (PCM16)."""
    from voxgate.audio import resample

    audio = resample(audio16k, SAMPLE_RATE, rate)
    frames = np.stack([audio * (0.9 - 0.3 * c) for c in range(channels)], axis=1)
    return float32_to_pcm16(frames.reshape(-1))


async def _transcribe(address, pcm: bytes, rate: int, channels: int,
                      **transcribe: object) -> list:
    """Send one utterance; return every event the server answered with, up to transcript/error."""
    async with AsyncTcpClient(address.host, address.port) as client:
        await client.write_event(Transcribe(**transcribe).event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
        step = rate * 2 * channels // 10 + 1  # ~100 ms, odd: frames straddle chunk borders
        for i in range(0, len(pcm), step):
            await client.write_event(AudioChunk(rate=rate, width=2, channels=channels,
                                                audio=pcm[i:i + step]).event())
        await client.write_event(AudioStop().event())
        events = []
        while True:
            event = await client.read_event()
            assert event is not None, "server closed the connection"
            events.append(event)
            if Transcript.is_type(event.type) or Error.is_type(event.type):
                return events


def test_describe_lists_installed_asr_models(wyoming_server):
    async def go():
        async with AsyncTcpClient(wyoming_server.host, wyoming_server.port) as client:
            await client.write_event(Describe().event())
            return Info.from_event(await client.read_event())

    info = _run(go())
    (program,) = info.asr
    assert program.name == "voxgate" and program.installed
    models = {m.name: m for m in program.models}
    assert {"whisper-base", "whisper-tiny.en"} <= set(models)
    assert "en" in models["whisper-base"].languages and "ru" in models["whisper-base"].languages
    assert models["whisper-tiny.en"].languages == ["en"]
    assert models["whisper-base"].attribution.name == "OpenAI"
    assert all(m.installed for m in program.models)
    assert program.supports_transcript_streaming is False  # no live-transcription service


@pytest.mark.parametrize(("rate", "channels"), [(44_100, 2), (22_050, 1)])
def test_transcribe_real_speech_in_the_microphones_format(wyoming_server, librivox, rate,
                                                          channels):
    clip = librivox[0]
    events = _run(_transcribe(wyoming_server, _pcm(clip.audio, rate, channels), rate, channels,
                              language="en"))
    transcript = Transcript.from_event(events[-1])
    assert wer(clip.text, transcript.text) <= 0.1, transcript.text
    assert transcript.language == "en"


def test_model_choice_and_language_detection(wyoming_server, librivox):
    clip = librivox[3]
    events = _run(_transcribe(wyoming_server, _pcm(clip.audio, 16_000, 1), 16_000, 1,
                              name="whisper-tiny.en"))
    assert wer(clip.text, Transcript.from_event(events[-1]).text) <= 0.15
    events = _run(_transcribe(wyoming_server, _pcm(clip.audio, 48_000, 1), 48_000, 1))
    transcript = Transcript.from_event(events[-1])  # no language given: detected
    assert transcript.language == "en" and wer(clip.text, transcript.text) <= 0.15


def test_errors_are_events_and_the_connection_survives(wyoming_server, librivox):
    clip = librivox[1]

    async def go():
        async with AsyncTcpClient(wyoming_server.host, wyoming_server.port) as client:
            answers = []
            for event in (Transcribe(name="no-such-model").event(),
                          Transcribe(name="silero-vad").event(),
                          AudioStart(rate=16_000, width=3, channels=1).event(),
                          AudioStart(rate=4000, width=2, channels=1).event(),
                          Transcribe(language="12-34").event()):
                await client.write_event(event)
                answers.append(Error.from_event(await client.read_event()))
            await client.write_event(AudioStop().event())  # ends the failed stream quietly
            await client.write_event(AudioStop().event())  # a stop with no stream at all
            answers.append(Error.from_event(await client.read_event()))
            await client.write_event(Ping(text="still there?").event())
            pong = Pong.from_event(await client.read_event())
            # ... and a good utterance on the same connection still works.
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(rate=16_000, width=2, channels=1).event())
            await client.write_event(AudioChunk(rate=16_000, width=2, channels=1,
                                                audio=_pcm(clip.audio, 16_000, 1)).event())
            await client.write_event(AudioStop().event())
            return answers, pong, Transcript.from_event(await client.read_event())

    answers, pong, transcript = _run(go())
    assert [a.code for a in answers] == ["model-error"] + ["bad-request"] * 5
    assert "no-such-model" in answers[0].text and "width" in answers[2].text
    assert "rate=4000" in answers[3].text and "'12-34'" in answers[4].text
    assert pong.text == "still there?"
    assert wer(clip.text, transcript.text) <= 0.15


def test_malformed_event_gets_an_error_then_hang_up(wyoming_server):
    async def go():
        reader, writer = await asyncio.open_connection(wyoming_server.host, wyoming_server.port)
        writer.write(b'{"type": "audio-chunk", "payload_length": "lots"}\n')
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data

    data = _run(go())
    assert b'"type": "error"' in data and b"malformed" in data


@pytest.fixture(scope="module")
def streaming_wyoming(settings, manager):
    """Wyoming beside the live-transcription service: the streaming variant is on."""
    from voxgate.server.live_streams import StreamingComponent

    component = WyomingServer("tcp://127.0.0.1:0")
    parts = [StreamingComponent(settings), component]
    with serve_app(create_app(settings, manager=manager, components=parts)):
        yield component.bound


def test_streaming_variant_sends_chunks_before_audio_stop(streaming_wyoming, librivox):
    """transcript-start, a transcript-chunk per utterance as soon as it is decoded (before the
    client stops sending), then transcript (backwards compatible) and transcript-stop."""
    from wyoming.asr import TranscriptChunk, TranscriptStart, TranscriptStop

    rate, channels = 48_000, 2
    gap = np.zeros(int(0.8 * SAMPLE_RATE), np.float32)
    first, rest = librivox[:2], librivox[2:]
    pcm_first = _pcm(np.concatenate([x for c in first for x in (c.audio, gap)]), rate, channels)
    pcm_rest = _pcm(np.concatenate([x for c in rest for x in (c.audio, gap)]), rate, channels)
    step = rate * 2 * channels // 10 + 1

    async def go():
        async with AsyncTcpClient(streaming_wyoming.host, streaming_wyoming.port) as client:
            await client.write_event(Describe().event())
            info = Info.from_event(await client.read_event())
            await client.write_event(Transcribe(language="en").event())
            await client.write_event(AudioStart(rate=rate, width=2, channels=channels).event())
            events = [await client.read_event()]  # transcript-start
            for pcm in (pcm_first, pcm_rest):
                for i in range(0, len(pcm), step):
                    await client.write_event(AudioChunk(rate=rate, width=2, channels=channels,
                                                        audio=pcm[i:i + step]).event())
                if pcm is pcm_first:  # the first utterance's text comes while we still talk
                    events.append(await client.read_event())
            await client.write_event(AudioStop().event())
            while not TranscriptStop.is_type(events[-1].type):
                events.append(await client.read_event())
            return info, events

    info, events = _run(go())
    assert info.asr[0].supports_transcript_streaming is True
    kinds = [e.type for e in events]
    assert TranscriptStart.is_type(kinds[0]) and TranscriptChunk.is_type(kinds[1])
    assert kinds[-2:] == ["transcript", "transcript-stop"]
    chunks = [TranscriptChunk.from_event(e).text for e in events if e.type == "transcript-chunk"]
    assert len(chunks) >= 3  # one per utterance (5 clips, pauses between them)
    transcript = Transcript.from_event(events[-2])
    assert "".join(chunks) == transcript.text and transcript.language == "en"
    assert wer(" ".join(c.text for c in librivox), transcript.text) <= 0.15, transcript.text


def test_streaming_variant_with_an_english_only_model(streaming_wyoming, librivox):
    """The English-only tiny model through the streaming variant, on all five clips (~40 s,
    ~70 words, pauses between them): one misheard word of the tiny model cannot decide it."""
    gap = np.zeros(int(0.8 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([x for clip in librivox for x in (clip.audio, gap)])
    events = _run(_transcribe(streaming_wyoming, _pcm(audio, 16_000, 1), 16_000, 1,
                              name="whisper-tiny.en"))  # English-only: language implied
    assert events[0].type == "transcript-start"
    text = Transcript.from_event(events[-1]).text
    assert wer(" ".join(c.text for c in librivox), text) <= 0.15, text


def test_utterance_past_the_duration_limit_is_an_error_event(settings, manager, librivox):
    """VOXGATE_MAX_AUDIO_S bounds one utterance: 7.1 s of speech against a 5 s limit."""
    clip = max(librivox, key=lambda c: c.path.stat().st_size)
    component = WyomingServer("tcp://127.0.0.1:0")
    app = create_app(settings.model_copy(update={"max_audio_s": 5.0}), manager=manager,
                     components=[component])
    with serve_app(app):
        events = _run(_transcribe(component.bound, _pcm(clip.audio, 48_000, 2), 48_000, 2,
                                  language="en"))
    error = Error.from_event(events[-1])
    assert error.code == "bad-request"
    assert "5 s" in error.text and "VOXGATE_MAX_AUDIO_S" in error.text


def test_idle_connections_close_and_wyoming_has_its_own_cap(settings, manager):
    """Silent sockets are closed after the idle timeout; Wyoming's own connection cap (not the
    live-stream slots WebSocket and gRPC clients use) refuses the extra one."""
    component = WyomingServer("tcp://127.0.0.1:0")
    app = create_app(settings.model_copy(update={"wyoming_max_connections": 2,
                                                 "wyoming_idle_timeout_s": 2.0}),
                     manager=manager, components=[component])

    async def go(address):
        held = [await asyncio.open_connection(address.host, address.port) for _ in range(2)]
        await asyncio.sleep(0.2)  # both accepted before the third arrives
        async with AsyncTcpClient(address.host, address.port) as extra:
            refused = Error.from_event(await extra.read_event())
        # the silent ones are told why, then closed (bounded by the test's own timeout)
        idle = []
        for reader, writer in held:
            idle.append(Error.from_event(await async_read_event(reader)))
            assert await async_read_event(reader) is None  # closed
            writer.close()
        return refused, idle

    with serve_app(app):
        refused, idle = _run(go(component.bound))
    assert refused.code == "busy" and "VOXGATE_WYOMING_MAX_CONNECTIONS" in refused.text
    assert [e.code for e in idle] == ["timeout", "timeout"]
    assert "VOXGATE_WYOMING_IDLE_TIMEOUT_S" in idle[0].text


async def test_listening_beyond_loopback_needs_the_setting(settings, manager):
    from voxgate.server.state import AppState

    state = AppState(settings=settings, manager=manager)
    with pytest.raises(ConfigError, match="VOXGATE_WYOMING_ALLOW_REMOTE"):
        await WyomingServer("tcp://0.0.0.0:0").start(state)
    allowed = AppState(settings=settings.model_copy(update={"wyoming_allow_remote": True}),
                       manager=manager)
    server = WyomingServer("tcp://0.0.0.0:0")
    await server.start(allowed)
    try:
        assert server.bound.port > 0
    finally:
        await server.stop(allowed)
    for local in ("tcp://127.0.0.1:0", "tcp://localhost:0", "tcp://[::1]:0"):
        server = WyomingServer(local)
        try:
            await server.start(state)
        except OSError:  # no IPv6 loopback on this machine
            continue
        await server.stop(state)


def test_silence_gives_an_empty_transcript(wyoming_server):
    silence = float32_to_pcm16(np.zeros(SAMPLE_RATE, np.float32))
    events = _run(_transcribe(wyoming_server, silence, 16_000, 1, language="en"))
    assert Transcript.from_event(events[-1]).text == ""


def test_stateful_resampling_matches_a_one_shot_decode(librivox):
    """Chunked 44.1 kHz stereo -> 16 kHz mono equals decoding the file at 16 kHz."""
    clip = librivox[2]
    reference = decode_audio(clip.path)
    pcm = _pcm(reference, 44_100, 2)
    stream = _AudioIn(44_100, 2, 2, max_bytes=len(pcm))
    # odd sizes: samples and frames split between chunks
    blocks = [stream.convert(pcm[i:i + 4411]) for i in range(0, len(pcm), 4411)]
    out = np.concatenate([*blocks, stream.flush()])
    assert abs(out.size - reference.size) <= 2
    n = min(out.size, reference.size)
    # Channels were 0.9x and 0.6x: the downmix is 0.75x the signal, no clicks at borders.
    assert np.corrcoef(out[:n], reference[:n])[0, 1] > 0.995
    assert np.std(out[:n]) == pytest.approx(0.75 * np.std(reference[:n]), rel=0.02)


def test_audio_limit():
    from voxgate.errors import ProtocolError

    stream = _AudioIn(16_000, 2, 1, max_bytes=1000)
    stream.convert(b"\0" * 1000)
    with pytest.raises(ProtocolError, match="limit"):
        stream.convert(b"\0" * 2)


def test_uri_parsing():
    assert str(parse_wyoming_uri("tcp://127.0.0.1:10300")) == "tcp://127.0.0.1:10300"
    assert parse_wyoming_uri("unix:///tmp/w.sock").path == "/tmp/w.sock"
    for bad in ("tcp://127.0.0.1", "http://x:1", "10300", "tcp://:10300"):
        with pytest.raises(ConfigError):
            parse_wyoming_uri(bad)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_voxgate_serve_with_wyoming_flag(tmp_path):
    """``voxgate serve --wyoming tcp://...`` starts the Wyoming server beside HTTP."""
    http_port, wy_port = _free_port(), _free_port()
    env = {**os.environ, "VOXGATE_DATA_DIR": str(tmp_path), "VOXGATE_OFFLINE": "true",
           "VOXGATE_API_KEYS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxgate.cli", "serve", "--port", str(http_port),
         "--grpc-port", "0", "--wyoming", f"tcp://127.0.0.1:{wy_port}"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    async def describe():
        deadline = time.monotonic() + 60
        while True:
            try:
                async with AsyncTcpClient("127.0.0.1", wy_port) as client:
                    await client.write_event(Describe().event())
                    return Info.from_event(await client.read_event())
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                await asyncio.sleep(0.2)  # the server process is still starting

    try:
        info = _run(describe())
        assert any(m.name == "whisper-base" for m in info.asr[0].models)
    finally:
        proc.terminate()
        try:
            output = proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:  # shutdown of another component hangs: not ours
            proc.kill()
            output = proc.communicate(timeout=10)[0]
    text = output.decode(errors="replace")
    assert f"Wyoming speech-to-text listening on tcp://127.0.0.1:{wy_port}" in text, text
