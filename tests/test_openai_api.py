"""OpenAI-compatible audio API, driven by the official ``openai`` package against a live server.

Real Whisper (offline pack) on real LibriVox speech; every error case answers in OpenAI's error
shape with the right status. The server runs with small limits (1 MB uploads, one transcription
at a time, 10 s chunks decoded one per batch) so the limits and the streaming are exercised on
short real recordings.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from itertools import pairwise
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import srt
import webvtt
from conftest import wer
from live_server import post_endless_chunked_upload, serve_app
from media import check_english_translation_of_spanish, encode, silence_flac, spanish_speech

from voxgate.audio import SAMPLE_RATE, encode_wav
from voxgate.server.app import create_app

pytestmark = [
    pytest.mark.slow,
    # openai>=2 marks audio.translations deprecated; the endpoint is still what users call.
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
]

KEY = "test-key-openai"


@pytest.fixture(scope="module")
def server(settings, manager):
    """A live voxgate server with auth on and small limits."""
    asr = settings.asr.model_copy(update={"max_chunk_s": 10.0, "batch_size": 1})
    cfg = settings.model_copy(update={"api_keys": [KEY], "max_upload_mb": 1, "max_audio_s": 120,
                                      "max_concurrent_transcriptions": 1, "asr": asr})
    with serve_app(create_app(cfg, manager=manager, components=[])) as live:
        yield live


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(api_key=KEY, base_url=f"{server.url}/v1", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def clip(librivox):
    """The longest single clip (7.1 s): 'and mister john dashwood had then leisure ...'."""
    return max(librivox, key=lambda c: c.path.stat().st_size)


@pytest.fixture(scope="module")
def long_speech(librivox, tmp_path_factory) -> tuple[Path, str, float]:
    """All five clips with 0.7 s pauses (~28 s) as MP3: several 10 s chunks on this server."""
    gap = np.zeros(int(0.7 * SAMPLE_RATE), np.float32)
    audio = np.concatenate([part for c in librivox for part in (c.audio, gap)])
    path = tmp_path_factory.mktemp("openai") / "long.mp3"
    encode(audio, SAMPLE_RATE, path, "mp3", "libmp3lame", "fltp", out_rate=44_100)
    return path, " ".join(c.text for c in librivox), audio.size / SAMPLE_RATE


def _error(exc: openai.APIStatusError) -> dict:
    """The body of an OpenAI error: exactly message/type/param/code."""
    body = exc.response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


# ------------------------------------------------------------------------- transcriptions


def test_json_transcription_of_real_speech(client, clip):
    with clip.path.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert wer(clip.text, result.text) <= 0.1, result.text
    assert result.usage.type == "duration" and result.usage.seconds == 8  # 7.1 s rounded up


def test_text_srt_and_vtt(client, clip):
    text = client.audio.transcriptions.create(model="whisper-base", file=clip.path,
                                              response_format="text", language="en-US")
    assert wer(clip.text, text) <= 0.1 and text.endswith("\n")

    subtitles = list(srt.parse(client.audio.transcriptions.create(
        model="whisper-base", file=clip.path, response_format="srt")))
    assert subtitles and wer(clip.text, " ".join(s.content for s in subtitles)) <= 0.1
    assert all(0 <= s.start.total_seconds() < s.end.total_seconds() <= 7.1 for s in subtitles)

    vtt = client.audio.transcriptions.create(model="whisper-base", file=clip.path,
                                             response_format="vtt")
    captions = webvtt.from_string(vtt).captions
    assert vtt.startswith("WEBVTT") and captions
    assert wer(clip.text, " ".join(c.text for c in captions)) <= 0.1


def test_verbose_json_with_word_and_segment_timestamps(client, clip):
    result = client.audio.transcriptions.create(
        model="whisper-1", file=clip.path, response_format="verbose_json",
        timestamp_granularities=["word", "segment"], prompt="Mr. John Dashwood")
    assert result.language == "english" and result.duration == pytest.approx(7.1, abs=0.05)
    assert wer(clip.text, result.text) <= 0.1
    words = result.words
    assert len(words) >= 20, words
    assert wer(clip.text, " ".join(w.word for w in words)) <= 0.1
    assert all(0 <= w.start <= w.end <= 7.1 for w in words)
    assert all(a.start <= b.start for a, b in pairwise(words))
    assert result.segments and result.segments[0].start <= words[0].start + 0.01
    assert all(s.end <= 7.1 and s.avg_logprob < 0 <= s.no_speech_prob for s in result.segments)

    only_words = client.audio.transcriptions.create(
        model="whisper-1", file=clip.path, response_format="verbose_json",
        timestamp_granularities=["word"])
    assert only_words.words and only_words.segments is None


def test_verbose_json_segments_carry_their_token_ids(client, clip, manager):
    result = client.audio.transcriptions.create(model="whisper-base", file=clip.path,
                                                response_format="verbose_json")
    tokenizer = manager.asr("whisper-base").model.hf_tokenizer
    assert result.segments
    for segment in result.segments:
        assert segment.tokens and all(t < 50257 for t in segment.tokens)  # text, no timestamps
        assert tokenizer.decode(segment.tokens).strip() == segment.text
        assert segment.temperature == 0.0


@pytest.fixture
def looping_first_batch(monkeypatch):
    """The first batched Whisper decode after this comes back looping, as Whisper sometimes
    does on real audio: its chunk's text becomes one phrase repeated (the real decode of the
    other chunks, and every sequential decode, are untouched). Returns a list that records
    the loops it made."""
    from dataclasses import replace

    from voxgate.engines import asr_whisper

    real = asr_whisper._DetectingPipeline.transcribe
    made: list[str] = []

    def transcribe(self, *args, **kwargs):
        segments, info = real(self, *args, **kwargs)
        segments = list(segments)
        if not made and segments:
            loop = " and Mr. John Dashwood had" * 12
            segments = [replace(segments[0], text=loop, end=segments[-1].end)]
            made.append(loop)
        return iter(segments), info

    monkeypatch.setattr(asr_whisper._DetectingPipeline, "transcribe", transcribe)
    return made


def test_a_looping_chunk_is_decoded_again_with_temperature_fallback(
        client, long_speech, looping_first_batch, caplog):
    """temperature=0 (OpenAI's default): a chunk whose decode fails Whisper's compression
    ratio check is decoded again by Whisper's fallback, and the loop never reaches the client.
    Without the fallback the response holds the repeated phrase."""
    path, reference, _ = long_speech
    with caplog.at_level("INFO", logger="voxgate.engines.asr_whisper"):
        result = client.audio.transcriptions.create(
            model="whisper-base", file=path, response_format="verbose_json", language="en")
    assert looping_first_batch, "the looping decode was not injected"
    assert "looped or were unsure at temperature 0" in caplog.text
    assert "dashwood had and mr" not in result.text.lower()
    assert wer(reference, result.text) <= 0.15, result.text
    assert all(s.compression_ratio <= 2.4 for s in result.segments)


def test_fallback_on_a_real_whisper_loop(manager, clip):
    """A real loop: Whisper tiny.en on a recording slowed to half speed (14 s) repeats one
    phrase at temperature 0 ('let me cook my dish, let me cook my dish, ...'). With fallback
    (what temperature=0 asks for) the chunk is decoded again at rising temperatures until the
    text passes Whisper's checks; the segments say which temperature that was."""
    from faster_whisper.transcribe import get_compression_ratio as _compression_ratio

    from voxgate.engines.base import AsrOptions

    asr = manager.asr("whisper-tiny.en")
    slowed = np.ascontiguousarray(np.repeat(clip.audio, 2), np.float32)
    (looped,) = asr.transcribe_batch([slowed], AsrOptions(language="en"))
    if _compression_ratio(looped.text) <= 2.4:  # seen once in full-suite order (ratio 2.0)
        pytest.skip(f"the greedy decode of the slowed clip did not loop in this run "
                    f"({looped.text[:60]!r}...): nothing for the fallback to fix")
    (fixed,) = asr.transcribe_batch([slowed], AsrOptions(language="en",
                                                         temperature_fallback=True))
    assert fixed.segments and all(s.temperature > 0 for s in fixed.segments), fixed.segments
    # what the sampled re-decode says is not reproducible across test orders (each compute
    # thread's generator is seeded once per process): run alone it passes Whisper's 2.4 check,
    # in full-suite order it once kept a phrase three times. What holds is that it was redone.
    assert fixed.text != looped.text
    assert all(s.tokens for s in fixed.segments)


_SAMPLE_ONCE = """
import sys
from voxgate.audio import decode_audio
from voxgate.engines.asr_whisper import WhisperAsr
from voxgate.engines.base import AsrOptions

asr = WhisperAsr(sys.argv[1], device="cpu")
print(asr.transcribe_batch([decode_audio(sys.argv[2])], AsrOptions(language="en",
                                                                  temperature=1.0))[0].text)
"""


def test_sampling_repeats_in_a_fresh_process(manager, librivox):
    """CTranslate2 seeds each compute thread's generator once, from a process-wide seed that is
    random unless set (a later set_random_seed does not reseed it), so voxgate sets it before
    loading a model: two fresh servers give the same sampled text for the same request."""
    import subprocess
    import sys

    clip = min(librivox, key=lambda c: c.path.stat().st_size)  # the shortest, ~3 s
    path = str(manager.resolved("asr", "whisper-tiny.en").path)
    texts = [subprocess.run([sys.executable, "-c", _SAMPLE_ONCE, path, str(clip.path)],
                            check=True, capture_output=True, text=True, timeout=300).stdout
             for _ in range(2)]
    assert texts[0] == texts[1] and wer(clip.text, texts[0]) <= 0.5, texts


def test_temperature_above_zero_samples_at_that_temperature(client, clip, looping_first_batch):
    """temperature=0.4: every chunk sampled at 0.4 (best of 5, Whisper's sequential decoder:
    the batched pipeline cannot sample), no fallback; the text is still the speech."""
    result = client.audio.transcriptions.create(
        model="whisper-base", file=clip.path, response_format="verbose_json", temperature=0.4)
    assert not looping_first_batch  # the batched pipeline was never used
    assert result.segments and {s.temperature for s in result.segments} == {0.4}
    assert wer(clip.text, result.text) <= 0.25, result.text


def test_stream_sends_deltas_as_batches_finish(client, long_speech):
    path, reference, _ = long_speech
    events, arrivals = [], []
    started = time.monotonic()
    with path.open("rb") as f:
        for event in client.audio.transcriptions.create(model="whisper-1", file=f, stream=True):
            events.append(event)
            arrivals.append(time.monotonic() - started)
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert events[-1].type == "transcript.text.done" and len(deltas) >= 2
    assert "".join(d.delta for d in deltas) == events[-1].text
    assert wer(reference, events[-1].text) <= 0.15, events[-1].text
    # The first words left the server while later chunks were still being decoded.
    assert arrivals[0] < arrivals[-1] - 0.3, arrivals


def test_busy_server_answers_429_and_keeps_serving(client, server, long_speech, clip):
    """One slot: while a long stream decodes, another transcription gets 429 + Retry-After,
    and the event loop still answers other requests at once."""
    from voxgate.server.limits import transcription_slots

    path, _, _ = long_speech
    slots = transcription_slots(server.app.state.voxgate)
    # an earlier test's transcription may still be finishing on a busy machine
    assert server.wait_for(lambda: slots.active == 0, timeout=120), "a slot stayed held"
    stream = client.audio.transcriptions.create(model="whisper-1", file=path.read_bytes(),
                                                stream=True)
    events = iter(stream)
    first = next(events)  # the slot is held until the last chunk is decoded
    assert first.type == "transcript.text.delta"
    with pytest.raises(openai.RateLimitError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=clip.path)
    assert caught.value.status_code == 429
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert _error(caught.value)["code"] == "rate_limit_exceeded"
    began = time.monotonic()
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    assert [m.id for m in client.models.list()]  # /v1/models needs no slot
    assert time.monotonic() - began < 2.0
    rest = list(events)
    assert rest[-1].type == "transcript.text.done"


def test_client_retries_after_429_then_succeeds(server, clip):
    """The SDK's own retry honours Retry-After: a second client simply gets its answer."""
    patient = openai.OpenAI(api_key=KEY, base_url=f"{server.url}/v1", max_retries=6, timeout=120)
    first = threading.Thread(target=lambda: patient.audio.transcriptions.create(
        model="whisper-1", file=clip.path.read_bytes()))
    first.start()
    time.sleep(0.5)  # let the first request take the only slot
    result = patient.audio.transcriptions.create(model="whisper-1", file=clip.path)
    first.join(120)
    assert wer(clip.text, result.text) <= 0.1


def test_client_leaving_a_stream_stops_its_transcription(client, server, long_speech, caplog):
    """Hanging up mid-stream stops the decoding at the next batch and frees the slot."""
    from voxgate.server.limits import transcription_slots

    slots = transcription_slots(server.app.state.voxgate)
    path, _, _ = long_speech
    caplog.set_level("INFO", logger="voxgate.server.openai_api")
    stream = client.audio.transcriptions.create(model="whisper-1", file=path.read_bytes(),
                                                stream=True)
    assert next(iter(stream)).type == "transcript.text.delta"
    stream.close()  # the client goes away with most of the file still to decode
    deadline = time.monotonic() + 30
    while slots.active and time.monotonic() < deadline:
        time.sleep(0.05)  # bounded wait for the server thread to notice
    assert slots.active == 0
    assert "stream cancelled by the client" in caplog.text


# --------------------------------------------------------------------------- translations


def test_translation_of_english_speech_is_english(client, clip):
    result = client.audio.translations.create(model="whisper-1", file=clip.path)
    assert wer(clip.text, result.text) <= 0.15
    verbose = client.audio.translations.create(model="whisper-1", file=clip.path,
                                               response_format="verbose_json")
    assert verbose.language == "english" and verbose.segments
    assert verbose.model_extra["task"] == "translate"


def test_translation_of_spanish_speech(client, tmp_path):
    """Synthetic Spanish speech (espeak-ng, six sentences) -> English text."""
    wav = spanish_speech(tmp_path / "es.wav")
    result = client.audio.translations.create(model="whisper-1", file=wav,
                                              response_format="verbose_json")
    assert result.language == "spanish"
    check_english_translation_of_spanish(result.text)


# -------------------------------------------------------------------------------- models


def test_models_list_openai_shape_with_voxgate_fields(client, server):
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert {"whisper-base", "whisper-tiny.en", "silero-vad", "whisper-1"} <= set(ids)
    raw = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert raw["object"] == "list"
    cards = {c["id"]: c for c in raw["data"]}
    for card in cards.values():
        assert card["object"] == "model" and isinstance(card["created"], int)
        assert card["owned_by"] and card["kind"] in ("asr", "vad", "tts", "llm", "mt")
        assert {"engine", "languages", "license", "installed", "resolvable",
                "capabilities"} <= set(card)
    base = cards["whisper-base"]
    assert base["kind"] == "asr" and base["engine"] == "whisper" and base["installed"]
    assert base["resolvable"] and base["default"] and base["license"] == "MIT"
    assert base["capabilities"]["translate"] and base["capabilities"]["word_timestamps"]
    assert cards["whisper-tiny.en"]["capabilities"]["translate"] is False
    assert cards["whisper-1"]["alias_of"] == "whisper-base"
    assert cards["silero-vad"]["kind"] == "vad"
    hub_only = cards["whisper-large-v3"]
    assert not hub_only["installed"] and not hub_only["resolvable"]  # offline settings


def test_retrieve_model(client):
    assert client.models.retrieve("whisper-1").alias_of == "whisper-base"
    assert client.models.retrieve("base").id == "whisper-base"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert _error(caught.value)["code"] == "model_not_found"


# -------------------------------------------------------------------------------- errors


def _expect(status: int, call) -> dict:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert caught.value.status_code == status, caught.value.response.text
    return _error(caught.value)


def test_unknown_and_wrong_kind_models(client, clip):
    err = _expect(404, lambda: client.audio.transcriptions.create(model="gpt-9", file=clip.path))
    assert err["param"] == "model" and err["code"] == "model_not_found"
    err = _expect(400, lambda: client.audio.transcriptions.create(model="silero-vad",
                                                                   file=clip.path))
    assert err["param"] == "model"
    # a path that exists, one that does not, a hub repo: one answer that tells nothing of disks
    answers = set()
    for name in ("/tmp", "/nonexistent", "Systran/faster-whisper-large-v3"):
        err = _expect(404, lambda: client.audio.transcriptions.create(model=name, file=clip.path))
        assert err["code"] == "model_not_found" and "whisper-base" in err["message"]
        answers.add(err["message"].replace(repr(name), "<name>"))
    assert len(answers) == 1, answers
    err = _expect(400, lambda: client.audio.translations.create(model="whisper-tiny.en",
                                                                 file=clip.path))
    assert err["param"] == "model" and "translate" in err["message"]


def test_bad_files(client):
    err = _expect(400, lambda: client.audio.transcriptions.create(
        model="whisper-1", file=("empty.wav", b"")))
    assert err["param"] == "file" and "empty" in err["message"]
    err = _expect(415, lambda: client.audio.transcriptions.create(
        model="whisper-1", file=("notes.txt", b"these are not the bytes of a sound file\n" * 20)))
    assert err["param"] == "file" and err["code"] == "invalid_file_format"
    assert "notes.txt" in err["message"]
    err = _expect(400, lambda: client.audio.transcriptions.create(
        model="whisper-1", file=("silent.wav", encode_wav(np.zeros(0, np.float32)))))
    assert "no audio samples" in err["message"]


def test_too_large_upload(client, clip):
    # Real speech padded past the server's 1 MB limit.
    audio = np.concatenate([clip.audio] * 5)  # 35 s of 16-bit 16 kHz = 1.1 MB
    err = _expect(413, lambda: client.audio.transcriptions.create(
        model="whisper-1", file=("long.wav", encode_wav(audio))))
    assert err["code"] == "file_too_large" and "1 MB" in err["message"]


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "undeclared"])
def test_hours_of_compressed_silence_are_refused_at_the_duration_limit(client, declared):
    # 6 h of silence in ~55 kB of FLAC (well under the 1 MB upload limit): decoded whole that
    # is 1.4 GB of samples (twice over when blocks were collected, then joined). The server
    # stops decoding at VOXGATE_MAX_AUDIO_S (120 s here) and answers 413.
    bomb = silence_flac(6 * 3600, declare_duration=declared)
    tracemalloc.start()  # the server runs in this process: its decoding is traced too
    try:
        err = _expect(413, lambda: client.audio.transcriptions.create(
            model="whisper-1", file=("silence.flac", bomb)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err["param"] == "file" and err["code"] == "file_too_large"
    assert "120 s" in err["message"] and "VOXGATE_MAX_AUDIO_S" in err["message"]
    assert peak < 64 * 2**20, peak  # about the limit's 7.7 MB of samples, not gigabytes


def test_chunked_upload_past_the_limit_is_cut_off_with_413(server):
    """No Content-Length: the limit holds on the bytes as they stream (1 MB here), the server
    answers 413 and stops reading; nothing is left in the data directory."""
    response, sent = post_endless_chunked_upload(
        server.port, "/v1/audio/transcriptions", {"Authorization": f"Bearer {KEY}"},
        {"model": "whisper-1"})
    assert response.startswith(b"HTTP/1.1 413"), response[:300]
    assert b'"code":"file_too_large"' in response and b"VOXGATE_MAX_UPLOAD_MB" in response
    assert sent < 8 * 2**20  # cut off near the limit, not read to the end (24 MB)
    uploads = server.settings.data_dir / "uploads"
    assert uploads.is_dir() and not any(uploads.iterdir())  # written there, and gone


def test_bad_options(client, clip):
    def create(**kw):
        return lambda: client.audio.transcriptions.create(model="whisper-1", file=clip.path, **kw)

    assert _expect(400, create(response_format="mp3"))["param"] == "response_format"
    assert _expect(400, create(temperature=1.5))["param"] == "temperature"
    assert _expect(400, create(language="xx"))["param"] == "language"
    assert _expect(400, create(language="12-34"))["param"] == "language"  # not a code at all
    assert _expect(400, create(timestamp_granularities=["char"]))["param"] == \
        "timestamp_granularities"
    assert _expect(400, create(stream=True, response_format="srt"))["param"] == "stream"


def test_auth(server, clip):
    wrong = openai.OpenAI(api_key="wrong", base_url=f"{server.url}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.audio.transcriptions.create(model="whisper-1", file=clip.path)
    assert _error(caught.value)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    # X-API-Key works as everywhere else on the server.
    ok = httpx.get(f"{server.url}/v1/models", headers={"X-API-Key": KEY})
    assert ok.status_code == 200


def test_missing_fields_and_other_routers_keep_their_shape(server):
    headers = {"Authorization": f"Bearer {KEY}"}
    missing = httpx.post(f"{server.url}/v1/audio/transcriptions", headers=headers,
                         data={"model": "whisper-1"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    not_multipart = httpx.post(f"{server.url}/v1/audio/transcriptions", headers=headers,
                               json={"model": "whisper-1"})
    assert not_multipart.status_code == 400 and "error" in not_multipart.json()
    # Outside this router errors keep the server's {"detail"} shape.
    assert "detail" in httpx.get(f"{server.url}/v1/no-such-route").json()
