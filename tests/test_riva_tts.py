"""Riva-compatible TTS against a live voxgate on loopback, with the official nvidia-riva-client.

``riva.client.SpeechSynthesisService.synthesize`` / ``synthesize_online`` exactly as NVIDIA's
``talk.py`` calls them, the old single-request ``SynthesizeOnline`` wire form, and
``GetRivaSynthesisConfig`` parsed the way ``talk.py --list-voices`` parses it. Intelligibility
is checked by round trip: the audio voxgate sends, transcribed by offline Whisper base, gives
the text back. Bad input -> INVALID_ARGUMENT, auth -> UNAUTHENTICATED, the concurrency bound ->
RESOURCE_EXHAUSTED, and a cancelled stream stops synthesis and frees its slot.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from conftest import wer
from live_server import API_KEY, call_with_a_mute_client, live_settings, start_live_server
from speech_support import counting_sentences

from voxgate.audio import SAMPLE_RATE, decode_audio, pcm16_to_float32, resample
from voxgate.config import TtsSettings
from voxgate.engines.base import AsrOptions

riva_client = pytest.importorskip("riva.client", reason="extra 'grpc' (nvidia-riva-client) "
                                                        "is not installed")
rtts = pytest.importorskip("riva.client.proto.riva_tts_pb2")
RIVA_TTS_SERVICE = "nvidia.riva.tts.RivaSpeechSynthesis"

pytestmark = pytest.mark.slow

PARAGRAPH = ("The weather is lovely today. We should take a walk in the park after lunch. "
             "Please bring a warm coat and some water.")
LINEAR_PCM = riva_client.AudioEncoding.LINEAR_PCM
OGGOPUS = riva_client.AudioEncoding.OGGOPUS


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    """A live server whose speech-out bound is one synthesis at a time."""
    settings = live_settings(tmp_path_factory.mktemp("riva-tts"),
                             tts=TtsSettings(max_concurrent=1))
    yield from start_live_server(settings, manager)


@pytest.fixture(scope="module")
def whisper(manager):
    return manager.get("asr", "whisper-base")


def _tts(server, metadata=(("x-api-key", API_KEY),)):
    auth = riva_client.Auth(uri=server.grpc_uri, metadata_args=[list(m) for m in metadata])
    return riva_client.SpeechSynthesisService(auth)


def _heard(whisper, audio: np.ndarray, rate: int) -> str:
    audio16 = resample(audio, rate, SAMPLE_RATE)
    return whisper.transcribe(audio16, AsrOptions(language="en", beam_size=1)).text


def _pcm_seconds(data: bytes, rate: int) -> float:
    return len(data) / 2 / rate


def _idle(server) -> bool:
    from voxgate.server.speech_doors import speech_slots

    return server.wait_for(lambda: speech_slots(server.state).active == 0)


def test_synthesize_linear_pcm_round_trip_at_requested_rates(server, whisper):
    durations = {}
    for rate in (22050, 16000, 44100):
        response = _tts(server).synthesize(PARAGRAPH, language_code="en-US",
                                           encoding=LINEAR_PCM, sample_rate_hz=rate)
        audio = response.audio
        assert audio[:4] != b"RIFF" and len(audio) % 2 == 0  # raw PCM16, no header
        durations[rate] = _pcm_seconds(audio, rate)
        assert wer(PARAGRAPH, _heard(whisper, pcm16_to_float32(audio), rate)) <= 0.1
        assert response.meta.processed_text == PARAGRAPH
    # the same speech at every rate (Piper's durations vary a few % from run to run): the
    # samples are at sample_rate_hz, else 16 vs 44.1 kHz would differ 2.75x in duration
    assert max(durations.values()) / min(durations.values()) < 1.15
    assert 4.0 < durations[22050] < 15.0


def test_ssml_is_read_as_its_plain_text(server, whisper):
    """Riva clients often send <speak> markup: the words are spoken, the tags are not."""
    plain = ("The weather was fine, and the family walked slowly along the river. They came to "
             "the old church in the village before noon.")
    ssml = ("<speak>The weather was fine, and the family walked slowly along the river."
            "<break time='500ms'/>They came to the old church in the village before noon."
            "</speak>")
    response = _tts(server).synthesize(ssml, language_code="en-US", encoding=LINEAR_PCM,
                                       sample_rate_hz=22050)
    heard = _heard(whisper, pcm16_to_float32(response.audio), 22050)
    assert wer(plain, heard) <= 0.15, heard
    assert "speak" not in heard.lower()


@pytest.mark.parametrize("rate,expected", [(48000, 48000), (16000, 16000), (44100, 48000)])
def test_synthesize_oggopus(server, whisper, rate, expected):
    response = _tts(server).synthesize(PARAGRAPH, encoding=OGGOPUS, sample_rate_hz=rate)
    assert response.audio[:4] == b"OggS"
    audio = decode_audio(response.audio)  # 16 kHz mono
    assert wer(PARAGRAPH, _heard(whisper, audio, SAMPLE_RATE)) <= 0.1
    import av

    with av.open(__import__("io").BytesIO(response.audio)) as container:
        assert container.streams.audio[0].codec_context.name == "opus"
        # Ogg Opus keeps the encoder's input rate in its header
        assert container.streams.audio[0].sample_rate in (expected, 48000)


def test_synthesize_online_oggopus_is_one_ogg_stream(server, whisper):
    responses = list(_tts(server).synthesize_online(PARAGRAPH, encoding=OGGOPUS,
                                                    sample_rate_hz=48000))
    assert len(responses) >= 2 and all(r.audio for r in responses)
    assert responses[0].audio[:4] == b"OggS"
    audio = decode_audio(b"".join(r.audio for r in responses))
    assert wer(PARAGRAPH, _heard(whisper, audio, SAMPLE_RATE)) <= 0.1


def test_synthesize_online_streams_sentence_by_sentence(server, whisper):
    sentences = PARAGRAPH.count(".")
    responses = list(_tts(server).synthesize_online(PARAGRAPH, sample_rate_hz=22050))
    assert len(responses) >= sentences
    assert all(r.audio for r in responses)  # never an empty-audio response
    audio = pcm16_to_float32(b"".join(r.audio for r in responses))
    assert wer(PARAGRAPH, _heard(whisper, audio, 22050)) <= 0.1
    assert _idle(server)


@pytest.mark.parametrize("pieces", [
    ["The weather is lovely today.", "We should take a walk in the park after lunch.",
     "Please bring a warm coat and some water."],  # whole sentences, one per request
    ["The wea", "ther is love", "ly today. We should", " take a walk in the park after",
     " lunch. Please bring a warm", " coat and some water."],  # LLM tokens
], ids=["sentences", "tokens"])
def test_synthesize_online_streamed_text_requests(server, whisper, pieces):
    responses = list(_tts(server).synthesize_online(pieces, sample_rate_hz=16000))
    assert len(responses) >= 3 and all(r.audio for r in responses)
    audio = pcm16_to_float32(b"".join(r.audio for r in responses))
    assert wer(PARAGRAPH, _heard(whisper, audio, 16000)) <= 0.1


def test_old_single_request_synthesize_online(server, whisper):
    """Clients built on the old proto call SynthesizeOnline unary-request, stream-response."""
    with grpc.insecure_channel(server.grpc_uri) as channel:
        call = channel.unary_stream(
            f"/{RIVA_TTS_SERVICE}/SynthesizeOnline",
            request_serializer=rtts.SynthesizeSpeechRequest.SerializeToString,
            response_deserializer=rtts.SynthesizeSpeechResponse.FromString)
        request = rtts.SynthesizeSpeechRequest(text=PARAGRAPH, language_code="en-US",
                                               encoding=LINEAR_PCM, sample_rate_hz=24000)
        request.id.value = "req-7"
        responses = list(call(request, metadata=[("authorization", f"Bearer {API_KEY}")]))
    assert len(responses) >= 3 and all(r.audio and r.id.value == "req-7" for r in responses)
    audio = pcm16_to_float32(b"".join(r.audio for r in responses))
    assert wer(PARAGRAPH, _heard(whisper, audio, 24000)) <= 0.1


def _talk_py_voices(response) -> dict[str, list[str]]:
    """What NVIDIA's talk.py --list-voices prints, computed as it computes it."""
    models: dict[str, list[str]] = {}
    for config in response.model_config:
        language = config.parameters["language_code"]
        voice_name = config.parameters["voice_name"]
        subvoices = [v.split(":")[0] for v in config.parameters["subvoices"].split(",")]
        models.setdefault(language, []).extend(f"{voice_name}.{s}" for s in subvoices)
    return models


def test_list_voices_as_talk_py_and_listed_names_speak(server, whisper):
    stub = _tts(server).stub
    response = stub.GetRivaSynthesisConfig(rtts.RivaSynthesisConfigRequest(),
                                           metadata=[("x-api-key", API_KEY)])
    voices = _talk_py_voices(response)
    assert voices["en-US"][0] == "en_US-joe-medium.default"  # the default voice first
    assert "espeak.en-us" in voices["en-US"] and "espeak.hi" in voices["hi"]
    listed = {config.model_name for config in response.model_config}
    from voxgate.server.speech_doors import speech_service

    assert {v.id for v in speech_service(server.state).voices()} == listed
    one = stub.GetRivaSynthesisConfig(rtts.RivaSynthesisConfigRequest(model_name="espeak:hi"),
                                      metadata=[("x-api-key", API_KEY)])
    assert [c.model_name for c in one.model_config] == ["espeak:hi"]
    text = "Good morning, this is a test of another voice."
    heard = {}
    # espeak-ng's formant voice is the last resort: understandable, not pretty
    for name, limit in (("espeak.en-us", 0.5), ("en_US-joe-medium.default", 0.15),
                        ("en_US-joe-medium", 0.15)):
        audio = _tts(server).synthesize(text, voice_name=name, sample_rate_hz=16000).audio
        heard[name] = audio
        assert wer(text, _heard(whisper, pcm16_to_float32(audio), 16000)) <= limit, name
    assert len(heard["espeak.en-us"]) != len(heard["en_US-joe-medium"])  # another voice


def test_language_code_picks_a_voice_of_that_language(server):
    voices = _talk_py_voices(_tts(server).stub.GetRivaSynthesisConfig(
        rtts.RivaSynthesisConfigRequest(), metadata=[("x-api-key", API_KEY)]))
    if "festival.msu_ru_nsh_clunits" not in voices.get("ru", []):
        pytest.skip("Debian festvox-ru is not installed (scripts/setup.sh installs it)")
    text = "Добрый день."
    by_language = _tts(server).synthesize(text, language_code="ru-RU", sample_rate_hz=16000)
    by_name = _tts(server).synthesize(text, voice_name="festival.msu_ru_nsh_clunits",
                                      sample_rate_hz=16000)
    assert by_language.audio and by_language.audio == by_name.audio


def test_speed_from_custom_configuration(server):
    text = "One two three four five six seven eight nine ten."
    normal = _tts(server).synthesize(text, sample_rate_hz=16000).audio
    fast = _tts(server).synthesize(text, sample_rate_hz=16000,
                                   custom_configuration={"speed": "2.0"}).audio
    # speed 2 halves the duration; VITS samples its durations (noise_w), so each rendition
    # varies by ~10-15%: the band is wide enough for that and still far from 1.0
    assert 0.3 < len(fast) / len(normal) < 0.75


_BAD = [
    (dict(text=""), "text"),
    (dict(text="   \n "), "text"),
    (dict(text="\U0001f600\U0001f389"), "text"),  # emoji only: nothing to say
    (dict(text="x" * 5000), "text"),
    (dict(voice_name="no-such-voice"), "en_US-joe-medium"),  # the message lists voices
    (dict(voice_name="/etc/passwd"), "voice"),
    (dict(voice_name="en_US-lessac-medium"), "voice"),  # a hub voice: never downloaded
    (dict(language_code="xx-XX"), "language_code"),
    (dict(sample_rate_hz=-1), "sample_rate_hz"),
    (dict(sample_rate_hz=1000), "sample_rate_hz"),
    (dict(sample_rate_hz=400000), "sample_rate_hz"),
    (dict(encoding=riva_client.AudioEncoding.MULAW), "encoding"),
    (dict(encoding=riva_client.AudioEncoding.FLAC), "encoding"),
    (dict(custom_configuration={"speed": "9"}), "speed"),
]


@pytest.mark.parametrize("kw,needle", _BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(_BAD)])
@pytest.mark.parametrize("online", [False, True], ids=["synthesize", "online"])
def test_bad_input_is_invalid_argument(server, kw, needle, online):
    args = dict(text="Hello there.", sample_rate_hz=22050)
    args.update(kw)
    tts = _tts(server)
    with pytest.raises(grpc.RpcError) as err:
        if online:
            list(tts.synthesize_online(args.pop("text"), **args))
        else:
            tts.synthesize(args.pop("text"), **args)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert needle in err.value.details()
    assert _idle(server)


def test_streamed_requests_cannot_change_the_voice(server):
    with grpc.insecure_channel(server.grpc_uri) as channel:
        stub = riva_client.proto.riva_tts_pb2_grpc.RivaSpeechSynthesisStub(channel)
        requests = [rtts.SynthesizeSpeechRequest(text="Hello there. ", sample_rate_hz=16000),
                    rtts.SynthesizeSpeechRequest(text="And more.", sample_rate_hz=22050)]
        with pytest.raises(grpc.RpcError) as err:
            list(stub.SynthesizeOnline(iter(requests), metadata=[("x-api-key", API_KEY)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sample_rate_hz" in err.value.details()


@pytest.mark.parametrize("metadata", [(), (("x-api-key", "wrong"),),
                                      (("authorization", "Bearer wrong"),)])
def test_missing_or_bad_key_is_unauthenticated(server, metadata):
    tts = _tts(server, metadata)
    calls = [lambda: tts.synthesize("Hello."), lambda: list(tts.synthesize_online("Hello.")),
             lambda: tts.stub.GetRivaSynthesisConfig(rtts.RivaSynthesisConfigRequest(),
                                                     metadata=list(metadata))]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_lists_the_tts_service(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc_uri) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status = stub.Check(health_pb2.HealthCheckRequest(service=RIVA_TTS_SERVICE)).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_busy_then_cancel_stops_synthesis_and_frees_the_slot(server):
    from voxgate.server.speech_doors import speech_service

    sentences = [f"This is sentence number {n} of a long story." for n in range(1, 41)]
    with counting_sentences(speech_service(server.state)) as log:
        stream = _tts(server).synthesize_online(" ".join(sentences), sample_rate_hz=16000)
        first = next(stream)  # the stream holds the server's only speech slot now
        assert first.audio
        with pytest.raises(grpc.RpcError) as err:
            _tts(server).synthesize("Another request.")
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "VOXGATE_TTS__MAX_CONCURRENT" in err.value.details()
        stream.cancel()
        assert _idle(server)
        stopped_at = len(log.said)
        assert log.running == 0  # the slot was freed once synthesis had really stopped
        assert stopped_at < 10  # one sentence of look-ahead, not the whole story
        assert _tts(server).synthesize("Another request.").audio  # the slot is free again
        assert len(log.said) == stopped_at + 1  # nothing of the cancelled stream ran on


def test_synthesize_online_without_a_first_request_is_closed(server):
    """A client that opens SynthesizeOnline and never sends a request is ended after the idle
    timeout (3 s here), as StreamingRecognize is."""
    error = call_with_a_mute_client(lambda requests: _tts(server).stub.SynthesizeOnline(
        requests, timeout=60, metadata=[("x-api-key", API_KEY)]))
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "no request within 3 s" in error.details()
    assert _idle(server)
