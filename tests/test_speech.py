"""speech.py: validation, sentence splitting, streaming, incremental text, cancellation, ``say``.

Real voices (Piper joe, Festival, espeak-ng) for the real path; a counting fake engine only
for the orchestration checks (stop between sentences, silent engine), in addition.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from voxgate.audio import decode_audio, pcm16_to_float32
from voxgate.config import Settings
from voxgate.engines.base import VoiceInfo
from voxgate.engines.manager import ModelManager
from voxgate.errors import AudioError, ConfigError, TextError
from voxgate.speech import (
    SentenceSplitter,
    SpeechService,
    aencode,
    clean_text,
    encode_chunks,
    split_sentences,
)
from voxgate.types import TtsChunk

PARAGRAPH = ("The weather today is calm and clear. We will meet at the station at nine. "
             "Please bring the tickets and a warm coat.")


@pytest.fixture(scope="module")
def service(settings, manager) -> SpeechService:
    return SpeechService(settings, manager)


class CountingTts:
    """A fake engine: a 0.1 s tone per sentence (or silence), counting its calls."""

    name = "fake"
    sample_rate = 8000
    languages = ("en",)

    def __init__(self, silent: bool = False) -> None:
        self.calls: list[str] = []
        self.silent = silent
        self.lock = threading.Lock()

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo("fake", "en", self.sample_rate, self.name, model="fake")]

    def synthesize(self, text, voice=None, speed=1.0):
        with self.lock:
            self.calls.append(text)
        level = 0.0 if self.silent else 0.5
        yield TtsChunk(np.full(800, level, np.float32), self.sample_rate, text)


def _fake_service(engine: CountingTts) -> SpeechService:
    settings = Settings(_env_file=None, offline=True)
    manager = ModelManager(settings, loader=lambda kind, model_id: (engine, None))
    service = SpeechService(settings, manager)
    service._voices = engine.voices()  # the fake voice is the only one
    return service


def _words(sentences: list[str]) -> list[str]:
    return " ".join(sentences).split()


# -- text ----------------------------------------------------------------------------------

def test_sentences_abbreviations_numbers_and_paragraphs():
    text = ("Hello, Dr. Smith. How are you? I paid $3.50 for e.g. this. Fine!\n\n"
            "A new paragraph without a stop")
    assert split_sentences(text) == [
        "Hello, Dr. Smith.", "How are you?", "I paid $3.50 for e.g. this.", "Fine!",
        "A new paragraph without a stop"]
    assert split_sentences("Привет. Как дела? Хорошо!") == ["Привет.", "Как дела?", "Хорошо!"]


def test_long_sentence_is_cut_at_clause_boundaries():
    sentence = ", ".join(f"clause number {i} goes on for a while" for i in range(40)) + "."
    pieces = split_sentences(sentence, max_chars=120)
    assert all(len(p) <= 120 for p in pieces) and len(pieces) > 5
    assert all(p.endswith((",", ".")) for p in pieces)
    assert _words(pieces) == sentence.split()


def test_a_megabyte_word_is_cut_into_bounded_pieces():
    word = "a" * 1_000_000
    pieces = split_sentences(word, max_chars=300)
    assert len(pieces) == -(-len(word) // 300) and max(map(len, pieces)) == 300
    assert "".join(pieces) == word


def test_incremental_tokens_give_the_same_sentences_as_whole_text():
    text = PARAGRAPH + " Dr. Who said e.g. 3.5 is fine, really; and then? Done"
    splitter = SentenceSplitter(60)
    got: list[str] = []
    for i in range(0, len(text), 3):  # LLM-sized pieces cutting words and numbers anywhere
        got.extend(splitter.push(text[i:i + 3]))
    got.extend(splitter.flush())
    assert got == split_sentences(text, 60)
    assert got[0] == "The weather today is calm and clear."
    # a stop is a sentence end once whitespace follows it (3.5 stays whole)
    splitter = SentenceSplitter()
    assert splitter.push("It costs 3.") == []
    assert splitter.push("5 euros.") == []
    assert splitter.push(" Next") == ["It costs 3.5 euros."]
    assert splitter.flush() == ["Next"]


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"), ("   \n\t ", "empty"), ("😀🎉👍", "emoji"), ("?!... ---", "no letters"),
    ("\x00\x07\x1b", "nothing to say"), (None, "must be a string"), ("x" * 4097, "limit is 4096"),
])
def test_bad_text_is_a_clear_error(text, message):
    with pytest.raises(TextError, match=message):
        clean_text(text, 4096)


def test_control_characters_and_emoji_are_dropped():
    assert clean_text("Hello\x00 there\x1b[31m 😀 friend\u200b!\tOK") == "Hello there[31m  friend!"\
        " OK"


def test_ssml_is_read_as_plain_text():
    ssml = ('<speak>Hello <break time="1s"/> world &amp; <emphasis>friends</emphasis>.'
            '<prosody rate="slow">Slowly.</prosody></speak>')
    assert clean_text(ssml) == "Hello, world & friends. Slowly."
    # a break between sentences with no space around it: words stay apart, no stray ".,"
    assert clean_text("<speak>A well.<break time='500ms'/>It is deep.</speak>") == \
        "A well. It is deep."
    assert clean_text("a < b and c > d") == "a < b and c > d"  # not SSML: kept as written
    with pytest.raises(TextError, match="no letters or digits"):
        clean_text("<speak><break time='2s'/></speak>")


# -- requests ------------------------------------------------------------------------------

def test_prepare_validates_before_any_synthesis(service):
    with pytest.raises(ConfigError, match=r"unknown voice 'nobody'; voices: en_US-joe-medium"):
        service.prepare("Hello.", voice="nobody")
    with pytest.raises(ConfigError) as info:
        service.prepare("Hello.", voice="nobody")
    assert "espeak:hi" in str(info.value) and "festival:msu_ru_nsh_clunits" in str(info.value)
    for speed in (0.1, 4.01, float("nan"), "quick"):
        with pytest.raises(ConfigError, match="speed"):
            service.prepare("Hello.", speed=speed)
    with pytest.raises(TextError, match="1000000 characters long; the limit is 4096"):
        service.prepare("a" * 1_000_000)
    request = service.prepare("a" * 1_000_000, max_chars=None)  # library use: bounded pieces
    assert max(map(len, request.sentences)) <= service.settings.tts.max_sentence_chars


def test_voices_default_first_and_every_engine_listed(service):
    voices = service.voices()
    assert voices[0].id == "en_US-joe-medium" and voices[0].sample_rate == 22050
    engines = {v.engine for v in voices}
    assert engines == {"piper", "festival", "espeak"}
    assert service.resolve_voice("joe").model == "en_US-joe-medium"
    assert service.resolve_voice("espeak:hi").model == "espeak"
    hub = service.resolve_voice("de_DE-thorsten-medium")  # listed online only, resolvable
    assert (hub.model, hub.voice) == ("de_DE-thorsten-medium", None)


def test_whole_request_is_one_chunk_per_sentence(service):
    request = service.prepare(PARAGRAPH)
    chunks = list(service.iter_chunks(request))
    assert [c.text for c in chunks] == list(request.sentences) == split_sentences(PARAGRAPH)
    audio, rate = service.synthesize(PARAGRAPH)
    assert rate == 22050 and 5 < audio.size / rate < 12


def test_voice_that_says_nothing_is_an_error_not_a_silent_file():
    service = _fake_service(CountingTts(silent=True))
    with pytest.raises(TextError, match="produced no audio"):
        service.synthesize("Words the engine cannot say.", "fake")

    async def consume():
        return [c async for c in service.astream(service.prepare("Still nothing.", "fake"))]

    with pytest.raises(TextError, match="produced no audio"):
        asyncio.run(consume())


async def test_astream_real_voice_streams_sentence_by_sentence(service):
    request = service.prepare(PARAGRAPH, speed=1.5)
    texts = [chunk.text async for chunk in service.astream(request)]
    assert texts == list(request.sentences)


async def test_consumer_going_away_stops_between_sentences():
    engine = CountingTts()
    service = _fake_service(engine)
    request = service.prepare(" ".join(f"Sentence number {i}." for i in range(20)), "fake")
    stream = service.astream(request)
    first = await anext(stream)
    await stream.aclose()
    assert first.text == "Sentence number 0."
    assert len(engine.calls) <= 2  # the one consumed and at most the one synthesized ahead
    assert all(entry["refs"] == 0 for entry in service.manager.loaded())


async def test_cancelled_task_releases_the_model():
    engine = CountingTts()
    service = _fake_service(engine)
    request = service.prepare(" ".join(f"Part {i} here." for i in range(50)), "fake")
    got_one = asyncio.Event()

    async def consume():  # a door's pattern: aclosing() releases the model at cancellation
        async with contextlib.aclosing(service.astream(request)) as chunks:
            async for _ in chunks:
                got_one.set()
                await asyncio.sleep(3600)  # a slow client

    task = asyncio.create_task(consume())
    await got_one.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(engine.calls) <= 2
    assert all(entry["refs"] == 0 for entry in service.manager.loaded())


class SlowTts(CountingTts):
    """Each sentence takes ``seconds`` in its thread, like a real voice on a busy machine."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def synthesize(self, text, voice=None, speed=1.0):
        time.sleep(self.seconds)
        yield from super().synthesize(text, voice, speed)


async def test_a_cancel_while_the_stream_closes_is_not_swallowed():
    """Closing a stream waits for the sentence still in its thread; a cancel of the closing
    task during that wait must still reach it (a swallowed cancel left a translation session's
    close hanging), and the model is released after the thread has finished."""
    engine = SlowTts(0.6)
    service = _fake_service(engine)
    stream = service.astream(service.prepare("One here. Two here. Three here.", "fake"))
    await anext(stream)  # the second sentence is now being synthesized ahead
    closing = asyncio.create_task(stream.aclose())
    await asyncio.sleep(0.1)  # aclose is waiting for that sentence's thread
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert all(entry["refs"] == 0 for entry in service.manager.loaded())


async def test_incremental_text_gives_audio_before_the_text_ends(service):
    """LLM tokens in: the first sentence is spoken while the token stream is still open."""
    first_audio = asyncio.Event()
    tokens = ["The ", "quick ", "brown ", "fox ", "jumps. ", "It ", "lands ", "softly"]

    async def llm():
        for i, token in enumerate(tokens):
            if i == 5:
                await first_audio.wait()  # the rest arrives only after the first audio
            yield token

    chunks = []
    async for chunk in service.astream_text(llm(), voice="en_US-joe-medium"):
        chunks.append(chunk)
        first_audio.set()
    assert [c.text for c in chunks] == ["The quick brown fox jumps.", "It lands softly"]
    assert all(c.sample_rate == 22050 and c.audio.size > 0 for c in chunks)


async def test_incremental_text_validates_voice_and_says_something():
    async def empty():
        for token in ("  ", "😀", "\x00"):
            yield token

    service = _fake_service(CountingTts())
    with pytest.raises(ConfigError, match="unknown voice"):
        service.astream_text(empty(), voice="nobody")
    with pytest.raises(TextError, match="produced no audio"):
        [c async for c in service.astream_text(empty(), voice="fake")]


# -- encoding ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "aac", "pcm"])
async def test_streamed_encoding_of_real_speech_decodes_back(service, fmt):
    request = service.prepare(PARAGRAPH)
    pieces = [piece async for piece in aencode(service.astream(request), fmt, out_rate=24000)]
    data = b"".join(pieces)
    audio = pcm16_to_float32(data) if fmt == "pcm" else decode_audio(data, sample_rate=24000)
    whole = encode_chunks(service.iter_chunks(request), "wav")
    reference = decode_audio(whole, sample_rate=24000)
    assert len(pieces) >= 3 or fmt in ("opus",)  # one piece per sentence at least (opus: pages)
    assert audio.size == pytest.approx(reference.size, rel=0.1)  # VITS noise varies durations


async def test_unknown_format_is_rejected_before_synthesis(service):
    with pytest.raises(AudioError, match="unknown audio format 'ogg'"):
        await anext(aencode(service.astream(service.prepare("Hello.")), "ogg"))


# -- CLI -----------------------------------------------------------------------------------

def _say(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "voxgate.cli", "say", *args], input=stdin,
                          capture_output=True, timeout=300, check=False)


@pytest.mark.slow
def test_cli_say_file_stdin_stdout_and_errors(tmp_path, asr_whisper):
    from conftest import wer

    out = tmp_path / "out.mp3"
    done = _say("-", "-o", str(out), stdin=PARAGRAPH.encode())
    assert done.returncode == 0, done.stderr.decode()
    audio = decode_audio(out)  # 16 kHz for Whisper
    from voxgate.engines.base import AsrOptions

    assert wer(PARAGRAPH, asr_whisper.transcribe(audio, AsrOptions(language="en")).text) <= 0.1

    raw = _say("Raw audio goes to stdout.", "-o", "-", "--format", "pcm", "--rate", "16000",
               "--speed", "1.2")
    assert raw.returncode == 0 and raw.stderr == b""
    assert 0.8 < pcm16_to_float32(raw.stdout).size / 16000 < 3

    russian = tmp_path / "ru.wav"
    done = _say("Привет, как дела?", "-o", str(russian), "--voice", "festival:msu_ru_nsh_clunits")
    assert done.returncode == 0 and russian.read_bytes()[:4] == b"RIFF"

    for args, message in (
        (("Hi.", "-o", str(tmp_path / "x.wav"), "--voice", "nobody"), "unknown voice 'nobody'"),
        (("😀", "-o", str(tmp_path / "x.wav")), "emoji"),
        (("Hi.", "-o", str(tmp_path / "x.wav"), "--speed", "9"), "speed 9.0 out of range"),
        (("Hi.", "-o", str(tmp_path / "x.mp3"), "--rate", "12345"), "mp3 cannot be encoded"),
        (("Hi.", "-o", str(tmp_path / "no" / "dir.wav")), "No such file"),
    ):
        done = _say(*args)
        err = done.stderr.decode()
        assert done.returncode == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.wav").exists()


def test_models_list_shows_tts_voices():
    done = subprocess.run([sys.executable, "-m", "voxgate.cli", "models", "list"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("en_US-joe-medium") and " tts " in line for line in lines)
    assert any(line.startswith("espeak:hi ") and "22050 Hz" in line for line in lines)
    assert any(line.startswith("festival:msu_ru_nsh_clunits") for line in lines)


@pytest.fixture(scope="module")
def asr_whisper(manager):
    return manager.asr("whisper-base")
