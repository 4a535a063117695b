"""The Riva TTS engine against voxgate's own Riva-compatible TTS server (a real gRPC server).

Voices listed through GetRivaSynthesisConfig, synthesis heard back by offline Whisper base,
speed, API-key metadata (also over TLS, where the client sends it twice), errors that are not
retried, retries with exponential backoff on a port that refuses, and use through the catalogue
(voice ``riva-tts``) by a SpeechService.
"""

from __future__ import annotations

import socket

import pytest
from conftest import wer
from live_server import API_KEY, live_settings, start_live_server, tls_grpc_server

from voxgate.audio import SAMPLE_RATE, resample
from voxgate.engines.base import AsrOptions
from voxgate.errors import EngineError

pytest.importorskip("riva.client", reason="extra 'grpc' (nvidia-riva-client) is not installed")

from voxgate.engines.riva_channel import RivaOptions  # noqa: E402 - needs the grpc extra
from voxgate.engines.tts_riva import RivaTts  # noqa: E402

pytestmark = pytest.mark.slow

TEXT = "The weather is lovely today, so we should take a walk in the park."


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    yield from start_live_server(live_settings(tmp_path_factory.mktemp("tts-riva")), manager)


@pytest.fixture(scope="module")
def whisper(manager):
    return manager.get("asr", "whisper-base")


def _heard(whisper, chunks=None, audio=None, rate=0) -> str:
    if chunks is not None:
        audio, rate = chunks[0].audio, chunks[0].sample_rate
    audio = resample(audio, rate, SAMPLE_RATE)
    return whisper.transcribe(audio, AsrOptions(language="en", beam_size=1)).text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _engine(server, **kw) -> RivaTts:
    return RivaTts(RivaOptions(uri=server.grpc_uri, api_key=API_KEY), **kw)


def test_voices_come_from_the_server(server):
    engine = _engine(server, voice="espeak.de")
    try:
        voices = {v.id: v for v in engine.voices()}
    finally:
        engine.close()
    assert engine.voices()[0].id == "riva-tts:espeak.de"  # the configured default first
    joe = voices["riva-tts:en_US-joe-medium.default"]
    assert (joe.language, joe.sample_rate, joe.engine, joe.model) == (
        "en-US", 22050, "riva", "riva-tts")
    assert voices["riva-tts:espeak.hi"].language == "hi"


@pytest.mark.parametrize("rate", [16000, 22050])
def test_synthesize_round_trip(server, whisper, rate):
    engine = _engine(server, sample_rate=rate)
    try:
        chunks = list(engine.synthesize(TEXT))
    finally:
        engine.close()
    assert len(chunks) == 1 and chunks[0].sample_rate == rate
    assert 2.0 < chunks[0].audio.size / rate < 8.0
    assert wer(TEXT, _heard(whisper, chunks)) <= 0.1


def test_named_voice_and_speed(server, whisper):
    engine = _engine(server, sample_rate=16000)
    try:
        engine.voices()
        normal = list(engine.synthesize(TEXT, "riva-tts:espeak.en-us"))
        fast = list(engine.synthesize(TEXT, "riva-tts:espeak.en-us", speed=2.0))
        joe = list(engine.synthesize(TEXT, "riva-tts:en_US-joe-medium.default"))
    finally:
        engine.close()
    assert wer(TEXT, _heard(whisper, normal)) <= 0.5  # espeak-ng: robotic
    assert 0.4 < fast[0].audio.size / normal[0].audio.size < 0.6
    assert normal[0].audio.size != joe[0].audio.size  # another voice spoke


def test_errors_from_the_server_are_not_retried(server):
    sleeps: list[float] = []
    engine = RivaTts(RivaOptions(uri=server.grpc_uri, api_key=API_KEY, max_retries=3),
                     sleep=sleeps.append)
    with pytest.raises(EngineError, match="INVALID_ARGUMENT.*unknown voice") as err:
        list(engine.synthesize("Hello.", "riva-tts:no-such-voice"))
    assert not err.value.retryable and engine.calls == 1 and sleeps == []
    wrong = RivaTts(RivaOptions(uri=server.grpc_uri, api_key="wrong", max_retries=3),
                    sleep=sleeps.append)
    with pytest.raises(EngineError, match="UNAUTHENTICATED"):
        list(wrong.synthesize("Hello."))
    assert wrong.calls == 1 and sleeps == []
    engine.close()
    wrong.close()


def test_unavailable_is_retried_with_exponential_backoff():
    sleeps: list[float] = []
    engine = RivaTts(RivaOptions(uri=f"127.0.0.1:{_free_port()}", max_retries=3,
                                 backoff_s=0.05, timeout_s=5), sleep=sleeps.append)
    with pytest.raises(EngineError, match="UNAVAILABLE") as err:
        list(engine.synthesize("Hello there."))
    assert err.value.retryable
    assert engine.calls == 4 and sleeps == pytest.approx([0.05, 0.1, 0.2])
    with pytest.raises(EngineError, match="GetRivaSynthesisConfig.*UNAVAILABLE"):
        engine.voices()
    engine.close()


def test_tls_with_the_key_sent_twice(server, whisper, tmp_path):
    with tls_grpc_server(server, tmp_path) as (port, cert):
        engine = RivaTts(RivaOptions(uri=f"localhost:{port}", use_ssl=True,
                                     ssl_root_cert=str(cert), api_key=API_KEY))
        chunks = list(engine.synthesize(TEXT))
        engine.close()
    assert wer(TEXT, _heard(whisper, chunks)) <= 0.1


def test_speech_service_speaks_through_riva_by_catalogue_id(server, whisper, tmp_path):
    from voxgate.config import RivaSettings
    from voxgate.engines.manager import ModelManager
    from voxgate.speech import SpeechService

    settings = live_settings(tmp_path, riva=RivaSettings(
        uri=server.grpc_uri, api_key=API_KEY, tts_voice="en_US-joe-medium.default",
        tts_sample_rate=16000))
    manager = ModelManager(settings)
    try:
        service = SpeechService(settings, manager)
        assert "riva-tts" not in {v.model for v in service.voices()}  # remote: never listed
        audio, rate = service.synthesize(TEXT + " Then we can have tea.", voice="riva-tts")
        assert rate == 16000
        assert wer(TEXT + " Then we can have tea.", _heard(whisper, audio=audio, rate=rate)) <= 0.1
    finally:
        manager.close()
