"""OpenAI-compatible speech out, driven by the official ``openai`` package against a live server.

Real voices (the offline Piper pack), real formats decoded back with PyAV, and a round trip:
what the server says is transcribed by offline Whisper base and compared with the input text.
Every refusal answers in OpenAI's error shape before any audio is sent.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import numpy as np
import openai
import pytest
from conftest import wer
from live_server import serve_app

from voxgate.audio import SAMPLE_RATE, decode_audio, pcm16_to_float32, resample
from voxgate.engines.base import AsrOptions
from voxgate.server.app import create_app

pytestmark = pytest.mark.slow

KEY = "test-key-speech"
TEXT = ("The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
        "It is easy to tell the depth of a well. These days a chicken leg is a rare dish.")
# Plain prose (~55 words) for round trips: the Harvard sentences above are built to be hard to
# hear, so a single Whisper base slip on them ("birch canoe slid") decides a short text's WER.
PROSE = ("The old gentleman had leisure to consider how much there might be prudently in his "
         "power to do for them. Had he married a more amiable woman, he might have been made "
         "still more respectable than he was. The weather was fine, and the family walked "
         "slowly along the river to the old church in the village.")
LONG_TEXT = " ".join([TEXT, "Rice is often served in round bowls. The juice of lemons makes "
                      "fine punch. The box was thrown beside the parked truck."])


@pytest.fixture(scope="module")
def server(settings, manager):
    pytest.importorskip("onnxruntime", reason="the 'tts' extra is not installed")
    tts = settings.tts.model_copy(update={"max_concurrent": 1, "max_input_chars": 600})
    cfg = settings.model_copy(update={"api_keys": [KEY], "tts": tts})
    with serve_app(create_app(cfg, manager=manager, components=[])) as live:
        yield live


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=f"{server.url}/v1", max_retries=0, timeout=120)


def _heard(manager, audio16k: np.ndarray) -> str:
    asr = manager.asr("whisper-base")
    return asr.transcribe(audio16k, AsrOptions(language="en", beam_size=5)).text


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_round_trip_through_the_official_client(client, manager) -> None:
    """tts-1 / alloy -> WAV -> Whisper base gives the text back (plain prose, ~55 words)."""
    audio = client.audio.speech.create(model="tts-1", voice="alloy", input=PROSE,
                                       response_format="wav")
    decoded = decode_audio(audio.content)
    assert decoded.size > 5 * SAMPLE_RATE
    assert wer(PROSE, _heard(manager, decoded)) <= 0.15


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav"])
def test_every_container_format_decodes(client, fmt) -> None:
    audio = client.audio.speech.create(model="gpt-4o-mini-tts", voice="en_US-joe-medium",
                                       input="Glue the sheet to the dark blue background.",
                                       response_format=fmt)
    decoded = decode_audio(audio.content)
    assert 1.0 < decoded.size / SAMPLE_RATE < 8.0
    assert float(np.max(np.abs(decoded))) > 0.05


def test_pcm_is_raw_24khz_mono_and_matches_wav(client) -> None:
    text = "It is easy to tell the depth of a well."
    pcm = client.audio.speech.create(model="tts-1", voice="alloy", input=text,
                                     response_format="pcm").content
    wav = decode_audio(client.audio.speech.create(model="tts-1", voice="alloy", input=text,
                                                  response_format="wav").content)
    assert len(pcm) % 2 == 0 and not pcm.startswith(b"RIFF")
    audio = resample(pcm16_to_float32(pcm), 24_000, SAMPLE_RATE)
    # the same sentence read as 24 kHz raw lasts as long as the WAV (VITS noise makes the
    # two renditions differ sample by sample, so durations are compared, not waveforms)
    assert abs(audio.size - wav.size) < 0.25 * wav.size


def test_streamed_body_starts_after_the_first_sentence(client, manager) -> None:
    """``iter_bytes`` of a six-sentence text: the first bytes arrive while later sentences are
    still being synthesized, and the whole stream is the whole text."""
    started = time.perf_counter()
    first_at, parts = None, []
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input=LONG_TEXT, response_format="pcm") as response:
        assert response.headers["content-type"].startswith("audio/pcm")
        for part in response.iter_bytes():
            if first_at is None and part:
                first_at = time.perf_counter() - started
            parts.append(part)
    total = time.perf_counter() - started
    assert first_at is not None and first_at < 0.6 * total, (first_at, total)
    audio = resample(pcm16_to_float32(b"".join(parts)), 24_000, SAMPLE_RATE)
    assert wer(LONG_TEXT, _heard_long(manager, audio)) <= 0.15


def _heard_long(manager, audio: np.ndarray) -> str:
    from voxgate.batch import BatchOptions, transcribe_audio

    options = BatchOptions(asr=AsrOptions(language="en"))
    return transcribe_audio(audio, manager.asr("whisper-base"), manager.vad(), options,
                            "whisper-base").text


def test_sse_stream_of_base64_deltas(server) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "mp3",
            "stream_format": "sse"}
    events = []
    with httpx.stream("POST", f"{server.url}/v1/audio/speech", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done" and set(kinds[:-1]) == {"speech.audio.delta"}
    assert len(kinds) >= 3  # several deltas, not one blob
    assert events[-1]["usage"]["input_tokens"] > 0
    mp3 = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert decode_audio(mp3).size > 5 * SAMPLE_RATE


def test_voices_listing(server) -> None:
    listing = httpx.get(f"{server.url}/v1/audio/voices",
                        headers={"X-API-Key": KEY}, timeout=60).json()
    joe = next(v for v in listing["data"] if v["id"] == "en_US-joe-medium")
    assert joe["language"] == "en-US" and joe["sample_rate"] == 22050 and joe["engine"] == "piper"
    assert listing["default"] == "en_US-joe-medium"
    assert listing["openai_voices"]["alloy"] == "en_US-joe-medium"
    assert "tts-1" in listing["models"]
    assert httpx.get(f"{server.url}/v1/audio/voices", timeout=60).status_code == 401


def _refused(client, status: int, **overrides) -> dict:
    fields = {"model": "tts-1", "voice": "alloy", "input": "Hello there.",
              "response_format": "wav", **overrides}
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.speech.create(**fields)
    assert caught.value.status_code == status, caught.value.response.text
    return _error(caught.value)


def test_every_bad_request_is_refused_before_audio(client, server) -> None:
    assert "empty" in _refused(client, 400, input="   \n\t ")["message"]
    assert "600" in _refused(client, 400, input="word " * 200)["message"]  # over the limit
    assert "voices:" in _refused(client, 400, voice="darth-vader")["message"]
    # a path or a hub voice is refused like any unknown name: nothing is read or downloaded
    for name in ("/etc/passwd", "../../models/x", "en_GB-alan-low"):
        message = _refused(client, 400, voice=name)["message"]
        assert message.startswith("unknown voice") and "voices:" in message
    assert _refused(client, 400, response_format="ogg")["param"] == "response_format"
    assert _refused(client, 400, speed=5.0)["param"] == "speed"
    assert _refused(client, 400, speed=0.1)["param"] == "speed"
    assert _refused(client, 404, model="/tmp/voices")["code"] == "model_not_found"
    assert "speech synthesis" in _refused(client, 400, model="whisper-1")["message"]
    emoji = _refused(client, 400, input="\U0001F600\U0001F680\U0001F44D")["message"]
    assert "say" in emoji or "speak" in emoji
    bad_key = openai.OpenAI(api_key="wrong", base_url=f"{server.url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.audio.speech.create(model="tts-1", voice="alloy", input="Hi.")
    # a 1 MB "word" in a chunked body: refused while it streams in, not parsed
    chunks = (b'{"model":"tts-1","voice":"alloy","input":"' if i == 0 else b"a" * 65536
              for i in range(17))
    big = httpx.post(f"{server.url}/v1/audio/speech", content=chunks, timeout=60,
                     headers={"Authorization": f"Bearer {KEY}",
                              "Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["error"]["param"] == "input"
    not_json = httpx.post(f"{server.url}/v1/audio/speech", content=b"model=tts-1", timeout=60,
                          headers={"Authorization": f"Bearer {KEY}"})
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]["message"]


def test_control_characters_are_dropped_not_spoken(client, manager) -> None:
    text = PROSE.replace(" the ", " the\x00 ").replace(".", ".\x07\x1b", 2) + "\x7f\u200b"
    audio = decode_audio(client.audio.speech.create(model="tts-1", voice="alloy", input=text,
                                                    response_format="wav").content)
    assert wer(PROSE, _heard(manager, audio)) <= 0.15


@pytest.fixture(scope="module")
def roomy_server(settings, manager):
    """One speech slot and room for a long text (minutes of audio: more than socket buffers)."""
    tts = settings.tts.model_copy(update={"max_concurrent": 1, "max_input_chars": 20_000})
    cfg = settings.model_copy(update={"api_keys": [KEY], "tts": tts})
    with serve_app(create_app(cfg, manager=manager, components=[])) as live:
        yield live


def test_busy_server_answers_429_and_a_vanished_client_frees_its_slot(roomy_server) -> None:
    """One slot: a stream held open makes the next request 429; closing it mid-stream frees
    the slot (synthesis stops), so a later request is served."""
    server = roomy_server
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tts-1", "voice": "alloy", "input": " ".join([LONG_TEXT] * 40),
            "response_format": "pcm"}
    with httpx.Client(timeout=120) as holder:
        with holder.stream("POST", f"{server.url}/v1/audio/speech", json=body,
                           headers=headers) as held:
            assert held.status_code == 200
            pieces = held.iter_bytes()  # kept referenced: a dropped iterator closes the stream
            assert next(pieces)  # the first sentence arrived; the rest is pending
            busy = httpx.post(f"{server.url}/v1/audio/speech", json=body, headers=headers,
                              timeout=60)
            assert busy.status_code == 429 and int(busy.headers["Retry-After"]) >= 1
    short = {**body, "input": "Hello there."}
    deadline = time.monotonic() + 60
    while True:  # the server notices the disconnect at its next write
        again = httpx.post(f"{server.url}/v1/audio/speech", json=short, headers=headers,
                           timeout=60)
        if again.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.status_code == 200 and len(again.content) > 0
