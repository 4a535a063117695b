"""Wyoming text-to-speech: voxgate in Home Assistant's Piper slot.

The Wyoming server (``server/wyoming.py``) hands every TTS event of a connection to one
:class:`WyomingTtsHandler`; its ``info`` lists a ``tts`` program whose voices are the voices the
server lists (``GET /v1/audio/voices``), each with its language, all installed.

* ``synthesize`` (text, optional ``voice`` ``name`` [+ ``speaker``] or ``language``) ->
  ``audio-start``, ``audio-chunk``... (PCM16 mono at the voice's rate, 1024 samples each),
  ``audio-stop``. Synthesis runs sentence by sentence, so the first chunk leaves after the
  first sentence.
* Streaming (``supports_synthesize_streaming``): ``synthesize-start`` (voice), then
  ``synthesize-chunk``s of text (LLM tokens) -> for every sentence as soon as it is complete an
  ``audio-start``/``audio-chunk``.../``audio-stop`` group (as wyoming-piper sends them), and after
  ``synthesize-stop`` the rest, then ``synthesize-stopped``. The ``synthesize`` copy of the text
  that Home Assistant sends inside a stream (for servers without streaming) is ignored.

A connection runs one synthesis at a time, in a task of its own: while a stream is open the
connection keeps reading text; a ``synthesize`` (or a stream after its ``synthesize-stop``) is
waited for before the next event is read, so the connection's idle timeout never cuts audio
that is being sent. A client that hangs up stops synthesis after the sentence in progress. Bad input
(empty or unspeakable text, text over ``VOXGATE_TTS__MAX_INPUT_CHARS``, unknown voice/speaker/
language, text format) gets an ``error`` event and the connection stays usable; past
``VOXGATE_TTS__MAX_CONCURRENT`` syntheses the error's code is ``busy``. Clients only name voices
the server lists or TTS models its policy offers: nothing is downloaded for a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np

from ..audio import float32_to_pcm16
from ..engines.base import VoiceInfo
from ..errors import ConfigError, EngineError, ModelError, ProtocolError, TextError, VoxgateError
from ..speech import clean_text
from ..types import TtsChunk
from .speech_doors import (
    client_voice,
    language_tag,
    speech_service,
    speech_slots,
    voice_for_language,
)
from .state import AppState

__all__ = ["WyomingTtsHandler"]

logger = logging.getLogger(__name__)

Send = Callable[[Any], Awaitable[None]]  # takes a wyoming Event

_SAMPLES_PER_CHUNK = 1024
_TTS_EVENTS = frozenset({"synthesize", "synthesize-start", "synthesize-chunk", "synthesize-stop"})
_ATTRIBUTION = {  # engine -> (who made the voices, where they come from)
    "piper": ("Piper voices (rhasspy/OHF-Voice)", "https://github.com/rhasspy/piper"),
    "festival": ("Festival (CSTR, Edinburgh)", "https://www.cstr.ed.ac.uk/projects/festival/"),
    "espeak": ("eSpeak NG", "https://github.com/espeak-ng/espeak-ng"),
}


class _Busy(EngineError):
    """Every speech slot is taken (Wyoming error code ``busy``)."""


class WyomingTtsHandler:
    """TTS protocol state of one Wyoming connection (events in, events out through ``send``)."""

    def __init__(self, state: AppState, send: Send) -> None:
        self.state = state
        self.send = send
        self.task: asyncio.Task[None] | None = None  # the synthesis running now
        self.queue: asyncio.Queue[str | None] | None = None  # an open stream's text
        self.streaming = False  # between synthesize-start and synthesize-stop
        self.failed = False  # the open stream already got an error: ignore it to its stop
        self.chars = 0

    @staticmethod
    def handles(event_type: str) -> bool:
        return event_type in _TTS_EVENTS

    # ---- info ----------------------------------------------------------------------------
    async def warm(self) -> None:
        """List the voices off the event loop (the first listing asks the engines)."""
        await asyncio.to_thread(speech_service(self.state).voices)

    def programs(self, version: str) -> list[Any]:
        """``info.tts``: one program whose voices are the server's voices."""
        from wyoming.info import Attribution, TtsProgram, TtsVoice

        voices = []
        for voice in speech_service(self.state).voices():
            who, url = _ATTRIBUTION.get(voice.engine, ("voxgate", ""))
            voices.append(TtsVoice(
                name=voice.id, description=_describe(voice),
                attribution=Attribution(name=who, url=url), installed=True, version=None,
                languages=[language_tag(voice.language)]))
        settings = self.state.settings
        return [TtsProgram(
            name="voxgate", description="voxgate speech synthesis",
            attribution=Attribution(name="voxgate",
                                    url=f"http://{settings.host}:{settings.port}/"),
            installed=True, version=version, voices=voices, supports_synthesize_streaming=True)]

    # ---- events --------------------------------------------------------------------------
    async def handle(self, event: Any) -> None:
        """Act on one TTS event; errors go back as an ``error`` event."""
        from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop

        try:
            if SynthesizeStart.is_type(event.type):
                await self._start(SynthesizeStart.from_event(event))
            elif SynthesizeChunk.is_type(event.type):
                self._chunk(SynthesizeChunk.from_event(event).text)
            elif SynthesizeStop.is_type(event.type):
                await self._stop()
            elif Synthesize.is_type(event.type) and not self.streaming:
                await self._synthesize(Synthesize.from_event(event))
        except (VoxgateError, KeyError, TypeError, ValueError) as exc:
            await self._error(exc)

    async def close(self) -> None:
        """The connection ended: stop the synthesis in progress (its slot is freed)."""
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _idle(self) -> None:
        """Let the previous synthesis of this connection finish (one at a time)."""
        task = self.task
        if task is not None:
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise  # this handler is being cancelled, not the synthesis
            except Exception:  # noqa: BLE001 - _run reports its own errors
                logger.debug("Wyoming synthesis task failed", exc_info=True)
            if self.task is task:
                self.task = None

    async def _synthesize(self, request: Any) -> None:
        await self._idle()
        _check_format(request.text_format, request.text)
        service = speech_service(self.state)
        voice = await asyncio.to_thread(self._voice, request.voice)
        prepared = await asyncio.to_thread(service.prepare, request.text, voice)
        slots = self._acquire()
        self.task = asyncio.create_task(self._run(service.astream(prepared), slots, False),
                                        name="wyoming-synthesize")
        await self._idle()  # the connection's idle timer waits while audio is sent

    async def _start(self, start: Any) -> None:
        await self._idle()
        self.streaming, self.failed, self.chars = True, False, 0
        _check_format(start.text_format, "")
        service = speech_service(self.state)
        voice = await asyncio.to_thread(self._voice, start.voice)
        slots = self._acquire()
        self.queue = asyncio.Queue()
        chunks = service.astream_text(self._pieces(self.queue), voice)
        self.task = asyncio.create_task(self._run(chunks, slots, True),
                                        name="wyoming-synthesize-stream")

    def _chunk(self, text: str) -> None:
        if not self.streaming:
            raise ProtocolError("synthesize-chunk without synthesize-start")
        if self.failed or self.queue is None:
            return
        if not isinstance(text, str):
            raise TypeError("text")
        self.chars += len(text)
        limit = self.state.settings.tts.max_input_chars
        if self.chars > limit:
            raise TextError(f"the stream's text is over the {limit}-character limit "
                            "(VOXGATE_TTS__MAX_INPUT_CHARS)")
        self.queue.put_nowait(text)

    async def _stop(self) -> None:
        if not self.streaming:
            raise ProtocolError("synthesize-stop without synthesize-start")
        self.streaming = False
        if self.failed:  # the error was already reported; the next stream starts clean
            self.failed = False
            return
        if self.queue is not None:
            self.queue.put_nowait(None)  # the task flushes, then sends synthesize-stopped
            self.queue = None
        await self._idle()

    async def _pieces(self, queue: asyncio.Queue[str | None]) -> AsyncIterator[str]:
        idle_s = self.state.settings.streaming.idle_timeout_s
        received: list[str] = []
        while True:
            try:
                piece = await asyncio.wait_for(queue.get(), idle_s)
            except TimeoutError:
                raise ProtocolError(f"no synthesize-chunk or synthesize-stop for {idle_s:g} s: "
                                    "stream closed") from None
            if piece is None:
                break
            received.append(piece)
            yield piece
        clean_text("".join(received), None)  # nothing speakable at all: says why

    # ---- synthesis -----------------------------------------------------------------------
    def _acquire(self) -> Any:
        slots = speech_slots(self.state)
        if not slots.try_acquire():
            raise _Busy(f"server busy: {slots.limit} syntheses running "
                        f"(VOXGATE_TTS__MAX_CONCURRENT); retry in {slots.retry_after()} s",
                        retryable=True)
        return slots

    async def _run(self, chunks: AsyncIterator[TtsChunk], slots: Any, stream: bool) -> None:
        """Send the audio: one audio-start/stop group per chunk when streaming, else one."""
        from wyoming.audio import AudioStart, AudioStop
        from wyoming.tts import SynthesizeStopped

        rate = 0
        try:
            async for chunk in chunks:
                if not rate or stream:
                    rate = chunk.sample_rate
                    await self.send(AudioStart(rate=rate, width=2, channels=1).event())
                await self._audio(chunk, rate)
                if stream:
                    await self.send(AudioStop().event())
            if not stream:
                await self.send(AudioStop().event())
            else:
                await self.send(SynthesizeStopped().event())
        except (VoxgateError, ValueError) as exc:
            if stream and self.streaming:
                self.failed = True
                self.queue = None
            await self._error(exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            logger.debug("Wyoming TTS client went away")
        finally:
            with contextlib.suppress(Exception):
                await chunks.aclose()  # type: ignore[attr-defined]
            slots.release()

    async def _audio(self, chunk: TtsChunk, rate: int) -> None:
        from wyoming.audio import AudioChunk

        from ..audio import resample

        audio = chunk.audio if chunk.sample_rate == rate else resample(
            chunk.audio, chunk.sample_rate, rate)
        for start in range(0, audio.size, _SAMPLES_PER_CHUNK):
            pcm = float32_to_pcm16(np.asarray(audio[start:start + _SAMPLES_PER_CHUNK]))
            await self.send(AudioChunk(audio=pcm, rate=rate, width=2, channels=1).event())

    def _voice(self, voice: Any) -> str:
        """A Wyoming ``voice`` (name [+ speaker] or language) -> a voice id (blocking)."""
        if voice is None or not (voice.name or voice.language):
            return client_voice(self.state, None)
        voices = speech_service(self.state).voices()
        if voice.name:
            if voice.speaker:
                wanted = f"{voice.name}:{voice.speaker}"
                if any(v.id == wanted for v in voices):
                    return wanted
                raise ConfigError(f"voice {voice.name!r} has no speaker {voice.speaker!r}")
            return client_voice(self.state, voice.name)
        found = voice_for_language(voices, str(voice.language))
        if found is None:
            languages = sorted({language_tag(v.language) for v in voices})
            raise ConfigError(f"no voice speaks {str(voice.language)[:40]!r}; languages: "
                              f"{', '.join(languages)}")
        return found.id

    async def _error(self, exc: BaseException) -> None:
        from wyoming.error import Error

        if isinstance(exc, _Busy) or (isinstance(exc, EngineError) and exc.retryable):
            code = "busy"
        elif isinstance(exc, ModelError):
            code = "model-error"
        elif isinstance(exc, (KeyError, TypeError)):
            code, exc = "bad-event", ProtocolError(f"malformed event: missing or bad field {exc}")
        else:
            code = "bad-request" if isinstance(exc, (VoxgateError, ValueError)) else "error"
        if self.streaming:
            self.failed = True
            self.queue = None
            task = self.task
            if task is not None and task is not asyncio.current_task() and not task.done():
                task.cancel()  # the stream's synthesis stops; its slot is freed
        logger.info("Wyoming TTS request failed (%s): %s", code, exc)
        with contextlib.suppress(ConnectionError):
            await self.send(Error(text=str(exc), code=code).event())


def _check_format(text_format: Any, text: str) -> None:
    """Plain text and SSML (read as its plain text by ``voxgate.speech``) are accepted."""
    fmt = getattr(text_format, "value", text_format)
    if fmt not in (None, "text", "ssml"):
        raise ConfigError(f"text_format {fmt!r} is not supported; use text or ssml")


def _describe(voice: VoiceInfo) -> str:
    who = voice.name or voice.id
    extra = ", ".join(p for p in (voice.gender, f"{voice.sample_rate} Hz") if p)
    return f"{who} ({voice.engine}, {extra})"
