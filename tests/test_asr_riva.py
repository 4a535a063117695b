"""The Riva ASR engine against voxgate's own Riva-compatible gRPC server (a real server).

Covers API-key metadata, retries with exponential backoff on UNAVAILABLE (including a server
that comes up during the retries), no retry on other errors, timeouts, TLS with a self-signed
certificate, native streaming, and use through the ModelManager inside a live session.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

pytest.importorskip("riva.client", reason="extra 'grpc' (nvidia-riva-client) is not installed")

from conftest import wer
from live_server import API_KEY, tls_grpc_server

from voxgate.engines.asr_riva import RivaAsr, RivaOptions
from voxgate.engines.base import AsrOptions
from voxgate.errors import EngineError

EN = AsrOptions(language="en", word_timestamps=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_transcribe_with_api_key_and_word_times(live, librivox):
    clip = librivox[0]
    engine = RivaAsr(RivaOptions(uri=live.grpc_uri, api_key=API_KEY))
    try:
        result = engine.transcribe(clip.audio, EN)
        batch = engine.transcribe_batch([librivox[1].audio, librivox[4].audio], EN)
    finally:
        engine.close()
    assert wer(clip.text, result.text) < 0.15
    words = [w for s in result.segments for w in s.words]
    assert words and 0 <= words[0].start < words[-1].end <= 7.2
    assert wer(librivox[4].text, batch[1].text) < 0.15 and batch[0].text


def test_wrong_key_fails_at_once_without_retries(live, librivox):
    sleeps: list[float] = []
    engine = RivaAsr(RivaOptions(uri=live.grpc_uri, api_key="wrong", max_retries=3),
                     sleep=sleeps.append)
    with pytest.raises(EngineError, match="UNAUTHENTICATED") as err:
        engine.transcribe(librivox[1].audio, EN)
    assert not err.value.retryable and engine.calls == 1 and sleeps == []


def test_unavailable_is_retried_with_exponential_backoff():
    sleeps: list[float] = []
    engine = RivaAsr(RivaOptions(uri=f"127.0.0.1:{_free_port()}", max_retries=3, backoff_s=0.05,
                                 timeout_s=5), sleep=sleeps.append)
    with pytest.raises(EngineError, match="UNAVAILABLE") as err:
        engine.transcribe(np.zeros(16_000, np.float32), EN)
    assert err.value.retryable
    assert engine.calls == 4 and sleeps == pytest.approx([0.05, 0.1, 0.2])


def test_server_coming_up_during_retries_is_reached(live, librivox):
    from voxgate.server.grpc_riva import RivaGrpcServer

    port = _free_port()
    late = RivaGrpcServer(live.settings, port=port)

    def start_server_then_wait(delay: float) -> None:  # the "sleep" between attempts
        if late.bound_port == 0:
            live.call(late.start(live.state))
        time.sleep(delay)

    engine = RivaAsr(RivaOptions(uri=f"127.0.0.1:{port}", api_key=API_KEY, max_retries=5,
                                 backoff_s=0.05), sleep=start_server_then_wait)
    try:
        result = engine.transcribe(librivox[4].audio, EN)
    finally:
        engine.close()
        live.call(late.stop(live.state))
    assert engine.calls >= 2
    assert wer(librivox[4].text, result.text) < 0.15


def test_deadline_is_not_retried(live, librivox):
    sleeps: list[float] = []
    engine = RivaAsr(RivaOptions(uri=live.grpc_uri, api_key=API_KEY, timeout_s=0.001,
                                 max_retries=3), sleep=sleeps.append)
    with pytest.raises(EngineError, match="DEADLINE_EXCEEDED") as err:
        engine.transcribe(librivox[0].audio, EN)
    assert err.value.retryable and engine.calls == 1 and sleeps == []


def test_tls(live, librivox, tmp_path):
    with tls_grpc_server(live, tmp_path) as (port, cert):
        secure = RivaAsr(RivaOptions(uri=f"localhost:{port}", use_ssl=True,
                                     ssl_root_cert=str(cert), api_key=API_KEY))
        result = secure.transcribe(librivox[4].audio, EN)
        secure.close()
        plain = RivaAsr(RivaOptions(uri=f"localhost:{port}", api_key=API_KEY,
                                    max_retries=0, timeout_s=5))
        with pytest.raises(EngineError):  # plaintext against a TLS port
            plain.transcribe(librivox[4].audio, EN)
        plain.close()
    assert wer(librivox[4].text, result.text) < 0.15


def test_native_streaming(live, librivox):
    audio = np.concatenate([librivox[1].audio, np.zeros(16_000, np.float32),
                            librivox[4].audio, np.zeros(8_000, np.float32)])
    engine = RivaAsr(RivaOptions(uri=live.grpc_uri, api_key=API_KEY))
    chunks = (audio[i:i + 3200] for i in range(0, audio.size, 3200))
    events = list(engine.stream(chunks, EN, interim_results=True))
    engine.close()
    finals = [e for e in events if e.kind == "final"]
    assert [f.utterance_id for f in finals] == [0, 1]
    assert wer(librivox[4].text, finals[1].text) < 0.15
    assert finals[1].words and finals[1].start > 3.0  # times in the stream's time base


async def test_riva_as_the_final_model_of_a_voxgate_session(live, librivox, manager):
    """voxgate -> Riva: the catalogue id ``riva`` loads this engine from Settings.riva."""
    from voxgate.engines.manager import ModelManager
    from voxgate.streaming import StreamingService, stream_events

    settings = live.settings.model_copy(update={"riva": live.settings.riva.model_copy(
        update={"uri": live.grpc_uri, "api_key": API_KEY})})
    own = ModelManager(settings)
    local = {"whisper-tiny.en": manager.get("asr", "whisper-tiny.en"),
             "silero-vad": manager.get("vad", "silero-vad")}
    own._loader = lambda kind, model_id: ((local[model_id], None) if model_id in local
                                          else ModelManager._load_from_catalogue(own, kind,
                                                                                model_id))
    service = StreamingService(settings, own)
    await service.start()
    try:
        session = await service.open(service.config(final_model="riva", interim_results=False))

        async def chunks():
            clip = np.concatenate([librivox[4].audio, np.zeros(16_000, np.float32)])
            for i in range(0, clip.size, 4800):
                yield clip[i:i + 4800]

        finals = [e async for e in stream_events(session, chunks()) if e.kind == "final"]
        await session.close()
        assert isinstance(own.get("asr", "riva"), RivaAsr)
    finally:
        await service.stop()
        own.close()
    assert len(finals) == 1 and wer(librivox[4].text, finals[0].text) < 0.15
