"""Riva-compatible translation against a live voxgate on loopback, with the official client.

``riva.client.NeuralMachineTranslationClient`` exactly as NVIDIA's ``nmt.py`` calls it:
``translate`` on the real offline LLM translator (RU->EN, EN->RU in Cyrillic, do-not-translate
phrases kept), ``get_config`` (ListSupportedLanguagePairs). A deterministic fake translator
(in addition to the real one) checks the orchestration: order, empty texts, the one-string
``dnt_phrases`` parsed into do-not-translate and glossary entries, the bounds and the errors.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import threading

import grpc
import pytest
from conftest import require_pack
from live_server import API_KEY, live_settings, start_live_server

from voxgate.config import TranslationSettings
from voxgate.engines.base import MtOptions
from voxgate.errors import EngineError

riva_client = pytest.importorskip("riva.client", reason="extra 'grpc' (nvidia-riva-client) "
                                                        "is not installed")

from voxgate.server.riva_nmt import (  # needs the grpc extra
    RIVA_NMT_SERVICE,
    parse_dnt_phrases,
)

pytestmark = pytest.mark.slow
LLM = "qwen2.5-coder-1.5b-instruct-q4km"
CYRILLIC = re.compile(r"[\u0400-\u04ff]")


class FakeMt:
    """Deterministic translator: ``[target] text``; records what it was asked; can be held."""

    name = "fake"
    languages = ("en", "ru", "de")

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str, str, MtOptions | None]] = []
        self.down = False  # True: every translation fails as an engine that is down
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    async def translate(self, text: str, source: str, target: str, *,
                        options: MtOptions | None = None) -> str:
        return (await self.translate_batch([text], source, target, options=options))[0]

    async def translate_batch(self, texts, source, target, *, options=None) -> list[str]:
        self.calls.append((list(texts), source, target, options))
        self.entered.set()
        if self.down:
            raise EngineError("fake translator is down")
        await asyncio.to_thread(self.gate.wait, 20)
        return [f"[{target}] {t}" for t in texts]


def _nmt(server, metadata=(("x-api-key", API_KEY),)):
    auth = riva_client.Auth(uri=server.grpc_uri, metadata_args=[list(m) for m in metadata])
    return riva_client.NeuralMachineTranslationClient(auth)


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    """A live server translating with the real offline LLM (a generous MT timeout: the LLM
    shares 2 cores with whatever else runs)."""
    require_pack(LLM, manager.settings.cache_dir)
    settings = live_settings(tmp_path_factory.mktemp("riva-nmt"),
                             translation=TranslationSettings(mt_timeout_s=600))
    yield from start_live_server(settings, manager)


def manager_with_mt(manager, name: str, engine):
    """A ModelManager whose mt model ``name`` is ``engine``; every other model is the session
    manager's (loaded once, never closed by this one)."""
    from voxgate.engines.manager import ModelManager

    def load(kind: str, model_id: str):
        if (kind, model_id) == ("mt", name):
            return engine, None
        return manager.get(kind, model_id), manager.resolved(kind, model_id)

    return ModelManager(manager.settings, loader=load)


@pytest.fixture(scope="module")
def fake_server(manager, tmp_path_factory):
    """A live server translating with FakeMt, small bounds, one translation at a time."""
    fake = FakeMt()
    settings = live_settings(tmp_path_factory.mktemp("riva-nmt-fake"), riva_nmt_max_texts=4,
                             riva_nmt_max_chars=200, riva_nmt_max_concurrent=1,
                             translation=TranslationSettings(mt="fake-mt", max_sessions=1))
    for live in start_live_server(settings, manager_with_mt(manager, "fake-mt", fake)):
        live.fake = fake
        yield live


# ---- the real LLM translator ----------------------------------------------------------------
def test_translate_ru_to_en_with_the_real_llm(server):
    texts = ["Сегодня очень хорошая погода.", "Я люблю читать книги вечером."]
    response = _nmt(server).translate(texts, "", "ru-RU", "en-US")
    out = [t.text for t in response.translations]
    assert len(out) == 2 and all(t.language == "en-US" for t in response.translations)
    assert not any(CYRILLIC.search(t) for t in out)
    assert "weather" in out[0].lower()
    assert "book" in out[1].lower() and "read" in out[1].lower()


def test_translate_en_to_ru_in_cyrillic_keeping_dnt_phrases(server):
    texts = ["Please install voxgate on the new server tomorrow."]
    response = _nmt(server).translate(texts, "", "en", "ru", dnt_phrases_dict={"voxgate": ""})
    (out,) = [t.text for t in response.translations]
    assert "voxgate" in out  # kept verbatim
    letters = re.sub(r"voxgate", "", out)
    assert len(CYRILLIC.findall(letters)) > 0.8 * sum(c.isalpha() for c in letters)


def test_list_supported_language_pairs(server):
    response = _nmt(server).get_config("")
    assert list(response.languages) == [LLM]
    pair = response.languages[LLM]
    assert sorted(pair.src_lang) == sorted(pair.tgt_lang) == ["en", "ru"]
    assert not _nmt(server).get_config("no-such-model").languages


def test_health_reports_the_translation_service(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc_uri) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=RIVA_NMT_SERVICE))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


# ---- orchestration with a deterministic translator ------------------------------------------
def test_batch_order_empty_texts_and_dnt_string(fake_server):
    fake = fake_server.fake
    fake.calls.clear()
    texts = ["first one", "", "  third   one "]
    dnt = {"voxgate": "", "Riva": "Riva", "cloud": "облако"}
    response = _nmt(fake_server).translate(texts, "fake-mt", "en-US", "ru-RU",
                                           dnt_phrases_dict=dnt, max_len_variation="20")
    assert [t.text for t in response.translations] == ["[ru] first one", "", "[ru] third one"]
    assert [t.language for t in response.translations] == ["ru-RU"] * 3
    ((sent, source, target, options),) = fake.calls  # the empty text cost nothing
    assert (sent, source, target) == (["first one", "third one"], "en", "ru")
    assert options == MtOptions(dnt=("voxgate", "Riva"), glossary=(("cloud", "облако"),))


def test_parse_dnt_phrases_forms():
    assert parse_dnt_phrases(["a##,b##b , c ## d", "e"]) == MtOptions(
        dnt=("a", "b", "e"), glossary=(("c", "d"),))
    assert parse_dnt_phrases([]) == MtOptions()
    assert parse_dnt_phrases([",,"]) == MtOptions()
    with pytest.raises(ValueError, match="dnt_phrases.*no source phrase"):
        parse_dnt_phrases(["##x"])


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("texts, source, target, field", [
    ([], "en", "ru", "texts: empty"),
    (["a", "b", "c", "d", "e"], "en", "ru", "texts: 5 texts exceed the limit of 4"),
    (["x" * 150, "y" * 60], "en", "ru", "texts: 210 characters exceed the limit of 200"),
    (["hello"], "en", "fr", "target_language: 'fr' is not supported; language pairs: en->ru"),
    (["hello"], "ja-JP", "en", "source_language: 'ja' is not supported"),
    (["hello"], "en-US", "en-GB", "target_language: same as source_language"),
    (["hello"], "", "en", "source_language: required"),
    (["hello"], "en", "r1", "target_language: not a language code"),
])
def test_bad_requests_are_invalid_argument(fake_server, texts, source, target, field):
    fake_server.fake.calls.clear()
    code, details = _code(lambda: _nmt(fake_server).translate(texts, "", source, target))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details
    assert fake_server.fake.calls == []


def test_unknown_model_is_invalid_argument(fake_server):
    code, details = _code(lambda: _nmt(fake_server).translate(["hi"], "gpt-9", "en", "ru"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "model: 'gpt-9' is not offered" in details and "fake-mt" in details


def test_api_key_is_required(fake_server):
    for metadata in ((), (("x-api-key", "wrong"),)):
        client = _nmt(fake_server, metadata)
        code, _ = _code(lambda c=client: c.translate(["hi"], "", "en", "ru"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = _code(lambda c=client: c.get_config(""))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    bearer = _nmt(fake_server, (("authorization", f"Bearer {API_KEY}"),))
    assert bearer.translate(["hi"], "", "en", "de").translations[0].text == "[de] hi"


def test_busy_server_answers_resource_exhausted(fake_server):
    fake = fake_server.fake
    fake.gate.clear()
    fake.entered.clear()
    first = _nmt(fake_server).translate(["slow"], "", "en", "ru", future=True)
    try:
        assert fake.entered.wait(10)
        code, details = _code(lambda: _nmt(fake_server).translate(["hi"], "", "en", "ru"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "VOXGATE_RIVA_NMT_MAX_CONCURRENT" in details
    finally:
        fake.gate.set()
    assert first.result(timeout=20).translations[0].text == "[ru] slow"


# ---- streaming speech translation ------------------------------------------------------------
RU_TEXT = "Доброе утро. Сегодня очень хорошая погода."
EN_CLIP = "sense_and_sensibility_01_austen_64kb-0880"  # "he was not an ill disposed young man"


@pytest.fixture(scope="module")
def russian_wav(tmp_path_factory):
    """:data:`RU_TEXT` spoken by Festival's msu_ru_nsh_clunits (16 kHz mono WAV)."""
    import shutil
    import subprocess

    if shutil.which("text2wave") is None:
        pytest.skip("Festival (text2wave) is not installed (scripts/setup.sh installs it)")
    directory = tmp_path_factory.mktemp("ru-speech")
    (directory / "ru.txt").write_text(RU_TEXT + "\n", encoding="utf-8")
    path = directory / "ru.wav"
    done = subprocess.run(["text2wave", "-eval", "(voice_msu_ru_nsh_clunits)",
                           str(directory / "ru.txt"), "-o", str(path)], check=False,
                          capture_output=True)
    if done.returncode or not path.is_file():
        pytest.skip(f"Festival voice msu_ru_nsh_clunits is not installed (festvox-ru): "
                    f"{done.stderr.decode()[-200:]}")
    return path


@pytest.fixture(scope="module")
def english_wav(librivox):
    return next(c.path for c in librivox if c.path.stem == EN_CLIP)


def _file_chunks(path, frames: int = 1600, empty_first: bool = True):
    """The WAV file's bytes as NVIDIA's sample scripts stream them (RIFF header included),
    after an empty chunk."""
    return ([b""] if empty_first else []) + list(riva_client.AudioChunkFileIterator(str(path),
                                                                                   frames))


def _s2t_config(source: str, target: str, interim: bool = False, **recognition):
    rasr = riva_client.proto.riva_asr_pb2
    rnmt = riva_client.proto.riva_nmt_pb2
    asr = rasr.StreamingRecognitionConfig(
        config=rasr.RecognitionConfig(language_code=source, max_alternatives=1,
                                      enable_automatic_punctuation=True, **recognition),
        interim_results=interim)
    return rnmt.StreamingTranslateSpeechToTextConfig(
        asr_config=asr, translation_config=rnmt.TranslationConfig(
            source_language_code=source, target_language_code=target))


def _s2s_config(source: str, target: str, rate: int = 16000, **tts):
    rnmt = riva_client.proto.riva_nmt_pb2
    s2t = _s2t_config(source, target)
    return rnmt.StreamingTranslateSpeechToSpeechConfig(
        asr_config=s2t.asr_config, translation_config=s2t.translation_config,
        tts_config=rnmt.SynthesizeSpeechConfig(**{
            "encoding": riva_client.AudioEncoding.LINEAR_PCM, "sample_rate_hz": rate,
            "language_code": target, **tts}))


def _finals(responses) -> list[tuple[str, list[str]]]:
    return [(r.alternatives[0].transcript, list(r.alternatives[0].language_code))
            for response in responses for r in response.results if r.is_final]


def _heard(manager, pcm: bytes, rate: int, language: str) -> str:
    from voxgate.audio import pcm16_to_float32, resample
    from voxgate.engines.base import AsrOptions

    audio = resample(pcm16_to_float32(pcm), rate, 16000)
    whisper = manager.get("asr", "whisper-base")
    return whisper.transcribe(audio, AsrOptions(language=language, beam_size=1)).text


def test_s2t_english_wav_with_header_and_empty_first_chunk_to_russian(server, english_wav):
    responses = list(_nmt(server).streaming_s2t_response_generator(
        _file_chunks(english_wav), _s2t_config("en-US", "ru-RU")))
    finals = _finals(responses)
    assert finals, responses
    text = " ".join(t for t, _ in finals)
    assert all(lang == ["ru"] for _, lang in finals)
    assert len(CYRILLIC.findall(text)) > 0.8 * sum(c.isalpha() for c in text), text
    assert "молод" in text.lower(), text  # "young (man)"


def test_s2t_russian_raw_pcm_to_english_with_partials(server, russian_wav):
    import wave

    with wave.open(str(russian_wav)) as wav:
        rate, pcm = wav.getframerate(), wav.readframes(wav.getnframes())
    chunks = [pcm[i:i + 3201] for i in range(0, len(pcm), 3201)]  # odd: split samples too
    responses = list(_nmt(server).streaming_s2t_response_generator(
        chunks, _s2t_config("ru-RU", "en-US", interim=True, sample_rate_hertz=rate,
                            encoding=riva_client.AudioEncoding.LINEAR_PCM)))
    finals = _finals(responses)
    text = " ".join(t for t, _ in finals).lower()
    assert finals and all(lang == ["en"] for _, lang in finals)
    assert not CYRILLIC.search(text)
    assert "morning" in text and "weather" in text, text
    partials = [r for response in responses for r in response.results if not r.is_final]
    assert all(CYRILLIC.search(p.alternatives[0].transcript) for p in partials)


def test_s2s_russian_wav_to_english_speech(server, manager, russian_wav):
    responses = list(_nmt(server).streaming_s2s_response_generator(
        _file_chunks(russian_wav), _s2s_config("ru-RU", "en-US", rate=16000)))
    assert responses and all(r.speech.audio for r in responses)  # never an empty chunk
    pcm = b"".join(r.speech.audio for r in responses)
    assert len(pcm) % 2 == 0 and pcm[:4] != b"RIFF"
    assert any(r.speech.meta.text for r in responses)
    heard = _heard(manager, pcm, 16000, "en").lower()
    assert "morning" in heard and "weather" in heard, heard


def test_s2t_keeps_the_transcript_when_mt_is_down(fake_server, english_wav):
    fake_server.fake.down = True
    try:
        responses = list(_nmt(fake_server).streaming_s2t_response_generator(
            _file_chunks(english_wav), _s2t_config("en-US", "ru-RU")))
    finally:
        fake_server.fake.down = False
    finals = _finals(responses)
    assert finals and all(lang == ["en"] for _, lang in finals)  # untranslated, marked so
    assert "young man" in " ".join(t for t, _ in finals).lower()


def _raw_stream(server, method: str, requests, metadata=(("x-api-key", API_KEY),)):
    rnmt_grpc = riva_client.proto.riva_nmt_pb2_grpc
    with grpc.insecure_channel(server.grpc_uri) as channel:
        stub = rnmt_grpc.RivaTranslationStub(channel)
        return list(getattr(stub, method)(iter(requests), metadata=metadata, timeout=30))


def _s2t_requests(config, *audio):
    rnmt = riva_client.proto.riva_nmt_pb2
    return [rnmt.StreamingTranslateSpeechToTextRequest(config=config)] + [
        rnmt.StreamingTranslateSpeechToTextRequest(audio_content=a) for a in audio]


def _s2s_requests(config, *audio):
    rnmt = riva_client.proto.riva_nmt_pb2
    return [rnmt.StreamingTranslateSpeechToSpeechRequest(config=config)] + [
        rnmt.StreamingTranslateSpeechToSpeechRequest(audio_content=a) for a in audio]


def _wav_bytes(rate=16000, channels=1, tag=1, bits=16, data=b"\0\0" * 1600, extra=b""):
    import struct

    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


_BAD_STREAMS = [
    ("StreamingTranslateSpeechToText",
     lambda: [riva_client.proto.riva_nmt_pb2.StreamingTranslateSpeechToTextRequest(
         audio_content=b"\0\0")], "config: the first request must carry config"),
    ("StreamingTranslateSpeechToText", lambda: _s2t_requests(_s2t_config("de-DE", "en-US")),
     "translation_config.source_language_code: must be auto, en or ru"),
    ("StreamingTranslateSpeechToText", lambda: _s2t_requests(_s2t_config("en", "en")),
     "translation_config.target_language_code: source and target are both 'en'"),
    ("StreamingTranslateSpeechToText", lambda: _s2t_requests(_s2t_config(
        "en", "ru", encoding=riva_client.AudioEncoding.OGGOPUS)),
     "asr_config.config.encoding: OGGOPUS is not supported"),
    ("StreamingTranslateSpeechToSpeech", lambda: _s2s_requests(_s2s_config(
        "en", "ru", encoding=riva_client.AudioEncoding.OGGOPUS)),
     "tts_config.encoding: OGGOPUS is not supported"),
    ("StreamingTranslateSpeechToText", lambda: _s2t_requests(
        _s2t_config("en", "ru"), b"", _wav_bytes(bits=8, data=b"\x80" * 800)),
     "audio_content: WAV format 1 with 8-bit samples is not supported"),
    ("StreamingTranslateSpeechToText", lambda: _s2t_requests(
        _s2t_config("en", "ru"), b"\0" * (64 * 1024 + 2)),
     "audio_content: 65538 bytes exceeds the 65536-byte limit"),
    ("StreamingTranslateSpeechToSpeech", lambda: _s2s_requests(_s2s_config("en", "ru"))
     + _s2s_requests(_s2s_config("en", "ru")), "config: sent twice"),
]


@pytest.mark.parametrize("method, requests, message", _BAD_STREAMS)
def test_bad_streams_are_invalid_argument(fake_server, method, requests, message):
    with pytest.raises(grpc.RpcError) as err:
        _raw_stream(fake_server, method, requests())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert err.value.details().startswith(message), err.value.details()


def test_streams_need_the_api_key(fake_server):
    for method, requests in (("StreamingTranslateSpeechToText",
                              _s2t_requests(_s2t_config("en", "ru"))),
                             ("StreamingTranslateSpeechToSpeech",
                              _s2s_requests(_s2s_config("en", "ru")))):
        with pytest.raises(grpc.RpcError) as err:
            _raw_stream(fake_server, method, requests, metadata=())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_mute_client_is_closed_and_a_full_server_says_so(fake_server):
    from live_server import call_with_a_mute_client

    client = _nmt(fake_server)
    error = call_with_a_mute_client(lambda requests: client.stub.StreamingTranslateSpeechToText(
        requests, metadata=client.auth.get_auth_metadata()))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "no config" in error.details()

    release = threading.Event()
    rnmt = riva_client.proto.riva_nmt_pb2

    def holding():
        yield rnmt.StreamingTranslateSpeechToTextRequest(config=_s2t_config("en", "ru"))
        release.wait(20)

    first = client.stub.StreamingTranslateSpeechToText(holding(),
                                                       metadata=client.auth.get_auth_metadata())
    try:
        service = fake_server.state.components
        assert fake_server.wait_for(lambda: service.get("translation") is not None
                                    and service["translation"].active == 1)
        with pytest.raises(grpc.RpcError) as err:
            _raw_stream(fake_server, "StreamingTranslateSpeechToSpeech",
                        _s2s_requests(_s2s_config("en", "ru")))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        release.set()
    assert list(first) == []  # no audio: nothing to translate, a clean end
    assert fake_server.wait_for(lambda: service["translation"].active == 0)


# ---- wire audio ------------------------------------------------------------------------------
def test_wire_audio_wav_header_split_anywhere_matches_the_whole_file():
    import numpy as np

    from voxgate.server.riva_nmt_stream import WireAudio

    rng = np.random.default_rng(7)
    stereo = (rng.standard_normal(44100 * 2) * 3000).astype("<i2").tobytes()  # 1 s, 2 ch
    wav = _wav_bytes(rate=44100, channels=2, data=stereo, extra=b"LIST\x03\0\0\0abc\0")
    whole = WireAudio(16000, 1)
    expected = np.concatenate([whole.convert(wav), whole.flush()])
    assert whole.wav and abs(expected.size - 16000) < 50
    for size in (1, 3, 37, 1001):  # the header (and the first samples) cut every `size` bytes
        edges = [*range(0, 120, size), *range(120, len(wav), 4099), len(wav)]
        parts = WireAudio(16000, 1)
        got = [parts.convert(wav[a:b]) for a, b in itertools.pairwise(edges)]
        got = np.concatenate([*got, parts.flush()])
        np.testing.assert_allclose(got, expected, atol=1e-6)

    floats = (rng.standard_normal(8000) * 0.1).astype("<f4")
    wire = WireAudio(16000, 1)
    out = np.concatenate([wire.convert(_wav_bytes(rate=16000, tag=3, bits=32,
                                                  data=floats.tobytes())), wire.flush()])
    np.testing.assert_allclose(out, floats, atol=1e-3)

    raw = WireAudio(8000, 1)  # no header: PCM16 at the configured rate, odd chunk edges
    pcm = (rng.standard_normal(8000) * 3000).astype("<i2").tobytes()
    out = np.concatenate([raw.convert(pcm[i:i + 333]) for i in range(0, len(pcm), 333)]
                         + [raw.flush()])
    assert not raw.wav and abs(out.size - 16000) < 50


def test_wire_audio_refuses_what_it_cannot_read():
    from voxgate.errors import AudioError
    from voxgate.server.riva_nmt_stream import WireAudio

    with pytest.raises(AudioError, match="not a WAVE file"):
        WireAudio(16000, 1).convert(b"RIFF\0\0\0\0AVI LIST")
    truncated = WireAudio(16000, 1)
    truncated.convert(_wav_bytes()[:30])
    with pytest.raises(AudioError, match="ended inside a WAV header"):
        truncated.flush()
    with pytest.raises(AudioError, match="longer than 65536 bytes"):
        WireAudio(16000, 1).convert(b"RIFF\0\0\0\0WAVE" + b"JUNK" + b"\xff\xff\x00\x00"
                                    + b"\0" * 70000)


def test_a_client_gone_mid_translation_frees_its_slots(fake_server, english_wav):
    from voxgate.server.riva_nmt import nmt_slots

    fake = fake_server.fake
    components = fake_server.state.components
    client = _nmt(fake_server)
    for start in (
            lambda: client.translate(["slow"], "", "en", "ru", future=True),
            lambda: client.stub.StreamingTranslateSpeechToText(
                iter(_s2t_requests(_s2t_config("en", "ru"), *_file_chunks(english_wav))),
                metadata=client.auth.get_auth_metadata())):
        fake.gate.clear()
        fake.entered.clear()
        call = start()
        try:  # the translator is held at work: only the cancellation can free the slots
            assert fake.entered.wait(30)
            call.cancel()
            assert fake_server.wait_for(lambda: nmt_slots(fake_server.state).active == 0)
            assert fake_server.wait_for(lambda: components.get("translation") is None
                                        or components["translation"].active == 0)
        finally:
            fake.gate.set()
    assert client.translate(["next"], "", "en", "ru").translations[0].text == "[ru] next"
