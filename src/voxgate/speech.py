"""Speech out, independent of any transport.

Front doors (``voxgate say``, OpenAI ``/v1/audio/speech``, Riva TTS, Wyoming TTS) and sessions
(translation, the agent) all speak through :class:`SpeechService`:

1. :meth:`SpeechService.prepare` validates a request before any work, so a door can answer
   400/INVALID_ARGUMENT before it starts a response: text cleaned (control characters and
   symbols such as emoji dropped), empty / over-long / unspeakable text rejected with
   :class:`~voxgate.errors.TextError`, unknown voice (the message lists the voices) and speed
   outside 0.25-4 with :class:`~voxgate.errors.ConfigError`.
2. The text is cut into sentences (:func:`split_sentences`; a sentence longer than
   ``max_sentence_chars`` is cut at clause boundaries, a huge "word" at fixed width).
3. Each sentence is synthesized as soon as it is complete, in a worker thread:
   :meth:`SpeechService.astream` (async, one sentence of look-ahead, stops between sentences
   when the consumer goes away), :meth:`SpeechService.iter_chunks` (blocking) and
   :meth:`SpeechService.astream_text` for text arriving in pieces (LLM tokens).
4. :func:`aencode` / :func:`encode_chunks` turn chunks into a wire format via ``voxgate.audio``.

A request that produced no audible audio at all raises :class:`TextError` (never a silent file).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
import unicodedata
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .audio import AudioEncoder, encode_audio, resample
from .config import Settings
from .engines.base import Tts, VoiceInfo, check_speed
from .engines.manager import ModelManager
from .errors import ConfigError, ModelError, TextError
from .models import CATALOGUE, installed_packs, list_specs, register_piper_voice
from .types import TtsChunk

__all__ = [
    "SentenceSplitter",
    "SpeechRequest",
    "SpeechService",
    "VoiceRef",
    "aencode",
    "clean_text",
    "encode_chunks",
    "is_speakable",
    "split_sentences",
    "strip_ssml",
]

logger = logging.getLogger(__name__)

_SILENT_PEAK = 1e-3  # a chunk quieter than this everywhere says nothing
# sentence ends: . ! ? … and CJK/Devanagari stops, when whitespace (or the end) follows
_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f\u0964]+[\"'\u201d\u2019)\]]*(?=\s)")
_CLAUSE = re.compile(r"[,;:\u2014\u2013\uff0c\u3001](?=\s)|\s[-\u2013\u2014]\s")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "eg",
                            "ie", "no", "fig", "approx", "dept", "est", "inc", "ltd", "co", "cf"})
_PARAGRAPH = re.compile(r"\n\s*\n")
_SSML_TAG = re.compile(r"<[^<>]*>")
_SSML_BREAK = re.compile(r"<break\b[^<>]*>")
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "So"})


def _clean_chars(text: str) -> str:
    """NFC; tabs/newlines kept as whitespace; other control, format and private characters and
    symbols such as emoji dropped."""
    out = []
    for ch in unicodedata.normalize("NFC", text):
        if ch in "\n\t\r":
            out.append("\n" if ch == "\n" else " ")
        elif unicodedata.category(ch) not in _DROP_CATEGORIES:
            out.append(ch)
    return "".join(out)


def strip_ssml(text: str) -> str:
    """SSML (``<speak>...</speak>``) -> its plain text: no voxgate engine reads SSML, so tags
    are dropped (``<break>`` becomes a comma pause) and entities unescaped; other text as is."""
    if not text.lstrip().startswith("<speak"):
        return text
    text = html.unescape(_SSML_TAG.sub(" ", _SSML_BREAK.sub(", ", text)))
    text = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(text.split()))
    # a break right after a sentence end adds nothing ("well.<break/>It" -> "well. It", not
    # "well.,It", which voices read as "dot")
    return re.sub(r"([.;:!?]),", r"\1", text)


def is_speakable(text: str) -> bool:
    """True when ``text`` has a letter or digit (any script)."""
    return any(ch.isalnum() for ch in text)


def clean_text(text: object, max_chars: int | None = 4096) -> str:
    """Validated, cleaned text to speak, or :class:`TextError` saying what is wrong.

    Over ``max_chars`` (counted before cleaning, as a client counts) is an error, never a
    silent cut; so are empty text, whitespace only, and text with no letter or digit left
    (emoji only, punctuation only). SSML is read as its plain text (:func:`strip_ssml`).
    """
    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    if max_chars is not None and len(text) > max_chars:
        raise TextError(f"text is {len(text)} characters long; the limit is {max_chars}")
    cleaned = _clean_chars(strip_ssml(text)).strip()
    if not cleaned:
        raise TextError("text is empty" if not text.strip() else
                        "text has nothing to say: emoji, symbols and control characters are not "
                        "spoken")
    if not is_speakable(cleaned):
        raise TextError("text has no letters or digits to say (emoji, symbols and punctuation "
                        "alone are not spoken)")
    return cleaned


class SentenceSplitter:
    """Cut text that arrives in pieces into sentences, as soon as each is complete.

    ``push`` returns the sentences finished so far; ``flush`` (end of text) the rest. A
    sentence end is ``.``/``!``/``?``/``…`` followed by whitespace, not after a known
    abbreviation or a single letter (``Dr.``, ``U.S.``) nor before a lower-case word when that
    word is already there (``see fig. below``), or a blank line. A sentence longer
    than ``max_chars`` is cut at its last clause boundary (``,`` ``;`` ``:`` dash) before the
    limit, else at the last space, else (one huge word) at the limit itself.
    """

    def __init__(self, max_chars: int = 300) -> None:
        if max_chars < 20:
            raise ConfigError(f"max_chars must be at least 20, got {max_chars}")
        self.max_chars = max_chars
        self._buffer = ""

    def push(self, text: str) -> list[str]:
        self._buffer += text
        out: list[str] = []
        while True:
            cut = self._sentence_end()
            if cut is None:
                break
            out.extend(self._bounded(self._buffer[:cut]))
            self._buffer = self._buffer[cut:]
        while len(self._buffer) > self.max_chars:  # no end in sight: emit the head
            cut = self._long_cut(self._buffer)
            out.extend(self._bounded(self._buffer[:cut]))
            self._buffer = self._buffer[cut:]
        return [s for s in out if s]

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer, ""
        return [s for s in self._bounded(rest) if s]

    def _sentence_end(self) -> int | None:
        """Index just past the first complete sentence in the buffer (None: not yet known)."""
        buffer = self._buffer
        paragraph = _PARAGRAPH.search(buffer)
        limit = paragraph.start() if paragraph else len(buffer)
        for match in _END.finditer(buffer, 0, limit + 1):
            after = buffer[match.end():].lstrip()
            if match.group() == "." and (after[:1].islower() or self._abbreviation(match.start())):
                continue
            return match.end()  # whitespace already follows: don't wait for the next word
        return paragraph.end() if paragraph else None

    def _abbreviation(self, dot: int) -> bool:
        word = re.search(r"(\w+)$", self._buffer[:dot])
        if word is None:
            return False
        token = word.group(1)
        return token.lower() in _ABBREVIATIONS or (len(token) == 1 and token.isalpha())

    def _long_cut(self, text: str) -> int:
        head = text[: self.max_chars]
        clauses = [m.end() for m in _CLAUSE.finditer(head)]
        if clauses and clauses[-1] > self.max_chars // 3:
            return clauses[-1]
        space = head.rfind(" ")
        return space + 1 if space > self.max_chars // 3 else self.max_chars

    def _bounded(self, sentence: str) -> list[str]:
        pieces: list[str] = []
        sentence = " ".join(sentence.split())
        while len(sentence) > self.max_chars:
            cut = self._long_cut(sentence)
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        pieces.append(sentence)
        return pieces


def split_sentences(text: str, max_chars: int = 300) -> list[str]:
    """Sentences of a whole text (see :class:`SentenceSplitter`), each at most ``max_chars``."""
    splitter = SentenceSplitter(max_chars)
    return splitter.push(text) + splitter.flush()


@dataclass(frozen=True, slots=True)
class VoiceRef:
    """A resolved voice: ``model`` is the catalogue id loaded through the ModelManager,
    ``voice`` the engine's voice id (None: the model's default voice)."""

    id: str
    model: str
    voice: str | None = None


@dataclass(frozen=True, slots=True)
class SpeechRequest:
    """A validated request: cleaned text cut into sentences, a resolved voice, a speed."""

    text: str
    sentences: tuple[str, ...]
    voice: VoiceRef
    speed: float = 1.0


class SpeechService:
    """Speech synthesis for every door: voices, validation, sentence streaming.

    One per process (it shares the process's :class:`ModelManager`, so each voice model is
    loaded once); thread-safe.
    """

    def __init__(self, settings: Settings, manager: ModelManager | None = None) -> None:
        self.settings = settings
        self.manager = manager or ModelManager(settings)
        self._voices: list[VoiceInfo] | None = None

    # -- voices ---------------------------------------------------------------------------

    def voices(self) -> list[VoiceInfo]:
        """Every voice available offline now (default voice first), across all TTS engines.

        Piper voices are listed from the catalogue without loading them; engines with many
        voices (espeak-ng, Festival) are asked. Hub voices not yet downloaded are not listed
        but can still be requested by id (see :meth:`resolve_voice`).
        """
        if self._voices is None:
            found: list[VoiceInfo] = []
            specs = list_specs("tts")
            for spec in (s for s in specs if installed_packs([s])[s.id]):
                rate = spec.options.get("sample_rate")
                if spec.engine == "piper" and isinstance(rate, int):
                    found.append(VoiceInfo(spec.id, spec.languages[0] if spec.languages else "",
                                           rate, spec.engine, model=spec.id))
                    continue
                try:
                    found.extend(self.manager.get("tts", spec.id).voices())
                except ModelError as exc:
                    logger.warning("TTS model %s unavailable: %s", spec.id, exc)
            default = self.settings.tts.voice
            found.sort(key=lambda v: v.id != default and v.model != default)
            self._voices = found
        return list(self._voices)

    def resolve_voice(self, voice: str | None = None) -> VoiceRef:
        """A voice id -> the model that speaks it; ConfigError listing the voices if unknown.

        Accepted: an id from :meth:`voices`, a catalogue TTS id or alias (``joe``), any Piper
        voice id of the rhasspy/piper-voices hub (``en_US-lessac-medium``, downloaded on first
        use when online), ``<model>:<voice>`` (``espeak:hi``). None: ``VOXGATE_TTS__VOICE``.
        """
        name = (voice or self.settings.tts.voice).strip()
        for info in self.voices():
            if name == info.id:
                return VoiceRef(info.id, info.model or info.id,
                                None if info.id == info.model else info.id)
        spec = CATALOGUE.get(name)
        if spec is not None and spec.kind == "tts":
            return VoiceRef(spec.id, spec.id)
        model, _, _ = name.partition(":")
        spec = CATALOGUE.get(model)
        if spec is not None and spec.kind == "tts" and model != name:
            return VoiceRef(name, spec.id, name)
        with contextlib.suppress(ModelError):
            return VoiceRef(name, register_piper_voice(name).id)
        raise ConfigError(f"unknown voice {name!r}; voices: "
                          f"{', '.join(v.id for v in self.voices())}")

    def engine(self, ref: VoiceRef) -> Tts:
        """The loaded engine for a voice (loads on first use; ModelError when unavailable)."""
        return self.manager.get("tts", ref.model)

    # -- requests -------------------------------------------------------------------------

    def prepare(self, text: object, voice: str | None = None, speed: float = 1.0, *,
                max_chars: int | None = -1) -> SpeechRequest:
        """Validate everything before any synthesis (see the module doc for the errors).

        ``max_chars``: -1 uses ``VOXGATE_TTS__MAX_INPUT_CHARS``; None: no limit (library use;
        huge input is still split into bounded pieces).
        """
        speed = check_speed(speed)
        limit = self.settings.tts.max_input_chars if max_chars == -1 else max_chars
        cleaned = clean_text(text, limit)
        ref = self.resolve_voice(voice)
        sentences = tuple(s for s in split_sentences(cleaned, self.settings.tts.max_sentence_chars)
                          if is_speakable(s))
        return SpeechRequest(cleaned, sentences, ref, speed)

    def _say(self, engine: Tts, ref: VoiceRef, sentence: str, speed: float) -> list[TtsChunk]:
        return [c for c in engine.synthesize(sentence, ref.voice, speed)
                if c.audio.size and float(np.max(np.abs(c.audio))) >= _SILENT_PEAK]

    def iter_chunks(self, request: SpeechRequest) -> Iterator[TtsChunk]:
        """Blocking: chunks sentence by sentence; stops when the caller stops iterating."""
        with self.manager.use("tts", request.voice.model) as engine:
            produced = False
            for sentence in request.sentences:
                for chunk in self._say(engine, request.voice, sentence, request.speed):
                    produced = True
                    yield chunk
            if not produced:
                raise self._nothing_said(request.voice)

    def synthesize(self, text: str, voice: str | None = None,
                   speed: float = 1.0) -> tuple[np.ndarray, int]:
        """Whole text -> (float32 mono audio, sample rate). Blocking."""
        return join_chunks(self.iter_chunks(self.prepare(text, voice, speed)))

    def astream(self, request: SpeechRequest) -> AsyncIterator[TtsChunk]:
        """Chunks as each sentence is ready; synthesis runs in worker threads, one sentence
        ahead of the consumer. Closing the iterator stops synthesis after the sentence in
        progress and releases the model: iterate inside ``contextlib.aclosing(...)`` so that
        a cancelled consumer (a client gone away) closes it at once, not at garbage collection.
        """
        return self._astream_sentences(_aiter_list(request.sentences), request.voice,
                                       request.speed)

    def astream_text(self, pieces: AsyncIterable[str], voice: str | None = None,
                           speed: float = 1.0) -> AsyncIterator[TtsChunk]:
        """Incremental input: text arriving in pieces (e.g. LLM tokens) -> audio per finished
        sentence; the end of ``pieces`` flushes the last one. Voice and speed are validated
        before the first piece is read. Empty or unspeakable pieces are skipped, but a stream
        that said nothing at all ends with TextError."""
        speed = check_speed(speed)
        ref = self.resolve_voice(voice)
        return self._astream_sentences(
            _sentences_of(pieces, self.settings.tts.max_sentence_chars), ref, speed)

    def astream_units(self, units: AsyncIterable[str], voice: str | None = None,
                      speed: float = 1.0) -> AsyncIterator[TtsChunk]:
        """Incremental input in speakable units (a streamed translation's sentences and
        clauses): each unit is spoken as soon as it arrives, never held back waiting for a
        sentence end in the next one (a long unit is still cut into sentences). Same rules as
        :meth:`astream_text` otherwise."""
        speed = check_speed(speed)
        ref = self.resolve_voice(voice)
        return self._astream_sentences(_units_of(units, self.settings.tts.max_sentence_chars),
                                       ref, speed)

    async def _astream_sentences(self, sentences: AsyncIterator[str], ref: VoiceRef,
                                 speed: float) -> AsyncIterator[TtsChunk]:
        """A producer task synthesizes (in threads) at most one sentence ahead of the
        consumer; each sentence's chunks are yielded as soon as they exist."""
        holder = self.manager.use("tts", ref.model)
        engine = await asyncio.to_thread(holder.__enter__)
        results: asyncio.Queue[list[TtsChunk] | Exception | None] = asyncio.Queue()
        room = asyncio.Semaphore(1)  # synthesized but not yet taken: at most one sentence

        async def produce() -> None:
            try:
                async for sentence in sentences:
                    await room.acquire()
                    work = asyncio.ensure_future(asyncio.to_thread(
                        self._say, engine, ref, sentence, speed))
                    try:
                        results.put_nowait(await asyncio.shield(work))
                    except asyncio.CancelledError:
                        # the thread cannot be stopped: wait for it, so the model (and the
                        # door's slot) are released only once synthesis has really stopped
                        await asyncio.wait([work])
                        raise
                results.put_nowait(None)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
                results.put_nowait(exc)

        producer = asyncio.create_task(produce())
        try:
            produced = False
            while (item := await results.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                room.release()
                for chunk in item:
                    produced = True
                    yield chunk
            if not produced:
                raise self._nothing_said(ref)
        finally:
            producer.cancel()  # a sentence in a thread finishes first; its audio is dropped
            cancelled = await _wait_keeping_cancel(producer)
            await _aclose(sentences)
            holder.__exit__(None, None, None)
            if cancelled:  # our caller was cancelled while we waited: it must still see it
                raise asyncio.CancelledError

    @staticmethod
    def _nothing_said(ref: VoiceRef) -> TextError:
        return TextError(f"voice {ref.id} produced no audio for this text (nothing in it that "
                         "this voice can say; try a voice of the text's language)")


async def _wait_keeping_cancel(task: asyncio.Task[None]) -> bool:
    """Wait until ``task`` has ended (its thread's sentence included), even if the waiting task
    is cancelled meanwhile; returns whether it was, so the caller re-raises after cleaning up
    (suppressing CancelledError around ``await task`` would swallow the caller's own cancel)."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


async def _aiter_list(items: Iterable[str]) -> AsyncIterator[str]:
    for item in items:
        yield item


async def _aclose(iterator: AsyncIterator[str]) -> None:
    closer = getattr(iterator, "aclose", None)
    if closer is not None:
        await closer()


async def _sentences_of(pieces: AsyncIterable[str], max_chars: int) -> AsyncIterator[str]:
    splitter = SentenceSplitter(max_chars)
    async for piece in pieces:
        if not isinstance(piece, str):
            raise TextError(f"text pieces must be strings, got {type(piece).__name__}")
        for sentence in splitter.push(_clean_chars(piece)):
            if is_speakable(sentence):
                yield sentence
    for sentence in splitter.flush():
        if is_speakable(sentence):
            yield sentence


async def _units_of(units: AsyncIterable[str], max_chars: int) -> AsyncIterator[str]:
    async for unit in units:
        if not isinstance(unit, str):
            raise TextError(f"text pieces must be strings, got {type(unit).__name__}")
        for sentence in split_sentences(_clean_chars(unit), max_chars):
            if is_speakable(sentence):
                yield sentence


def join_chunks(chunks: Iterable[TtsChunk]) -> tuple[np.ndarray, int]:
    """Concatenate chunks into one array at the first chunk's rate (others resampled)."""
    parts: list[np.ndarray] = []
    rate = 0
    for chunk in chunks:
        rate = rate or chunk.sample_rate
        parts.append(resample(chunk.audio, chunk.sample_rate, rate))
    if not parts:
        raise TextError("no audio was produced")
    return np.concatenate(parts).astype(np.float32, copy=False), rate


def encode_chunks(chunks: Iterable[TtsChunk], fmt: str = "wav",
                  out_rate: int | None = None) -> bytes:
    """Whole-file encoding of chunks (WAV with exact sizes) via ``audio.encode_audio``."""
    audio, rate = join_chunks(chunks)
    return encode_audio(audio, rate, fmt, out_rate)


async def aencode(chunks: AsyncIterable[TtsChunk], fmt: str = "wav",
                  out_rate: int | None = None) -> AsyncIterator[bytes]:
    """Stream-encode chunks for a chunked body / gRPC / socket: yields non-empty byte pieces.

    The encoder opens on the first chunk (its rate is the input rate); ``out_rate`` resamples.
    The format is checked before anything is read (AudioError for an unknown one).
    """
    from .audio import check_format

    fmt = check_format(fmt)
    encoder: AudioEncoder | None = None
    async for chunk in chunks:
        if encoder is None:
            encoder = AudioEncoder(fmt, chunk.sample_rate, out_rate)
        audio = resample(chunk.audio, chunk.sample_rate, encoder.in_rate)
        if data := encoder.encode(audio):
            yield data
    if encoder is not None and (data := encoder.finish()):
        yield data
