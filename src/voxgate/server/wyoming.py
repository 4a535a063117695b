"""Wyoming speech-to-text server: Home Assistant's voice pipeline talks to voxgate directly.

``voxgate serve --wyoming tcp://127.0.0.1:10300`` (or ``VOXGATE_WYOMING_URI``) starts it beside
the HTTP server, sharing the loaded models and the server-wide transcription slots.

Protocol (https://github.com/OHF-Voice/wyoming): ``describe`` -> ``info`` listing the installed
ASR models and their languages; ``transcribe`` (optional model ``name`` and ``language``), then
``audio-start`` / ``audio-chunk``... / ``audio-stop`` -> ``transcript``. The audio format travels
with the stream (rate, width, channels from ``audio-start``/``audio-chunk``) and is converted to
16 kHz mono with a stateful resampler, so chunk borders never click.

Text to speech (Home Assistant's Piper slot) shares the connection: ``info`` also lists a tts
program, and ``synthesize`` / ``synthesize-start``... events go to
:class:`~voxgate.server.wyoming_tts.WyomingTtsHandler`.

:class:`WyomingSttHandler` holds one connection's protocol state and never touches a socket
(events in, events out through ``send``); :class:`WyomingServer` is the server component that
owns the listening socket and the connections. Wyoming has no authentication by design: bind it
to loopback or a trusted network.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlparse

import numpy as np

from ..engines.priority import Priority
from ..errors import (
    AudioTooLongError,
    ConfigError,
    EngineError,
    MissingExtraError,
    ModelError,
    ProtocolError,
    VoxgateError,
)
from ..languages import primary_language
from ..models import CATALOGUE, get_spec
from ..stream_config import PcmInput, StreamConfigError
from ..transcriber import FileTranscriber, TranscribeRequest
from ..version import package_version
from .deps import is_loopback_host
from .limits import transcription_slots
from .model_cards import client_model_id, model_cards, model_languages
from .state import AppState
from .wyoming_tts import WyomingTtsHandler

__all__ = ["WyomingAddress", "WyomingServer", "WyomingSttHandler", "parse_wyoming_uri"]

logger = logging.getLogger(__name__)

Send = Callable[[Any], Awaitable[None]]  # takes a wyoming Event

_SLOT_WAIT_S = 60.0  # a voice command waits this long for a free transcription slot
_MAX_HEADER_BYTES = 64 * 1024
_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
_ATTRIBUTION = {  # engine -> (who made the models, where they come from)
    "whisper": ("OpenAI", "https://github.com/openai/whisper"),
    "parakeet": ("NVIDIA", "https://huggingface.co/nvidia"),
}


def _wyoming() -> Any:
    try:
        import wyoming
    except ImportError as exc:
        raise MissingExtraError("the Wyoming server", "wyoming", exc) from exc
    return wyoming


@dataclass(frozen=True, slots=True)
class WyomingAddress:
    scheme: str  # tcp | unix
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        return f"unix://{self.path}" if self.scheme == "unix" else f"tcp://{self.host}:{self.port}"


def parse_wyoming_uri(uri: str) -> WyomingAddress:
    """``tcp://HOST:PORT`` or ``unix:///path/to.sock``; :class:`ConfigError` otherwise."""
    parsed = urlparse(uri)
    if parsed.scheme == "tcp":
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None:
            raise ConfigError(f"Wyoming URI {uri!r}: use tcp://HOST:PORT, "
                              "e.g. tcp://127.0.0.1:10300")
        return WyomingAddress("tcp", parsed.hostname, port)
    if parsed.scheme == "unix" and parsed.path:
        return WyomingAddress("unix", path=parsed.path)
    raise ConfigError(f"Wyoming URI {uri!r}: use tcp://HOST:PORT or unix:///path/to.sock")


class _AudioIn:
    """One audio stream's converter: raw PCM in its own format -> float32 mono 16 kHz.

    The conversion is the one every live door uses (:class:`~voxgate.streaming.PcmInput`);
    what Wyoming adds is that a sample frame may straddle two chunks, and the stream limits.
    """

    def __init__(self, rate: int, width: int, channels: int, max_bytes: int,
                 received: int = 0, max_seconds: float | None = None,
                 seconds: float = 0.0) -> None:
        if width != 2:
            raise ProtocolError(f"sample width {width} bytes is not supported; send 16-bit PCM "
                                "(width 2)")
        try:
            self.pcm = PcmInput("pcm16", rate, channels)
        except StreamConfigError as exc:
            raise ProtocolError(f"invalid audio format: rate={rate} channels={channels} "
                                f"({exc})") from None
        self.format = (rate, width, channels)
        self.frame_bytes = width * channels
        self.pending = b""  # a partial frame waiting for the rest of its bytes
        self.received = received
        self.max_bytes = max_bytes
        self.seconds = seconds  # audio received so far in this stream, over every format
        self.max_seconds = max_seconds

    def convert(self, data: bytes) -> np.ndarray:
        """The new 16 kHz samples for ``data`` (frames may straddle chunk borders)."""
        self.received += len(data)
        if self.received > self.max_bytes:
            raise ProtocolError(f"audio stream is longer than the {self.max_bytes // 2**20} MB "
                                "limit (VOXGATE_MAX_UPLOAD_MB)")
        self.seconds += len(data) / (self.frame_bytes * self.format[0])
        if self.max_seconds is not None and self.seconds > self.max_seconds:
            raise AudioTooLongError(f"audio stream is longer than the {self.max_seconds:g} s "
                                    "limit (VOXGATE_MAX_AUDIO_S)", self.max_seconds)
        data = self.pending + data
        usable = len(data) - len(data) % self.frame_bytes
        self.pending = data[usable:]
        if not usable:
            return np.zeros(0, np.float32)
        return self.pcm.convert(data[:usable])

    def flush(self) -> np.ndarray:
        """End of the stream (or of this format): the samples still in the resampler."""
        if self.pending:
            logger.warning("dropping %d bytes of a partial audio frame", len(self.pending))
            self.pending = b""
        return self.pcm.flush()


class _WholeUtterance:
    """Collect the utterance, transcribe it at audio-stop with the batch path (VAD + Whisper)."""

    live = False

    def __init__(self, state: AppState, model: str, language: str | None) -> None:
        self.state, self.model, self.language = state, model, language
        self.blocks: list[np.ndarray] = []

    async def add(self, samples: np.ndarray) -> None:
        if samples.size:
            self.blocks.append(samples)

    async def finish(self) -> tuple[str, str | None]:
        """Transcribe on a worker thread once a server-wide slot is free."""
        blocks, self.blocks = self.blocks, []
        if not any(block.size for block in blocks):
            return "", self.language
        slots = transcription_slots(self.state)
        if not await slots.acquire(_SLOT_WAIT_S):
            raise EngineError(f"server busy: no transcription slot within {_SLOT_WAIT_S:.0f} s",
                              retryable=True)
        settings = self.state.settings
        # someone is waiting for a spoken command: live priority, not a file's
        request = TranscribeRequest(model=self.model, language=self.language,
                                    beam_size=settings.asr.beam_size,
                                    batch_size=settings.asr.batch_size,
                                    priority=Priority.LIVE_FINAL)

        def work() -> tuple[str, str]:
            audio = np.concatenate(blocks)  # joined off the event loop
            transcript = FileTranscriber(settings, request, self.state.manager).run_audio(audio)
            return transcript.text, transcript.language

        text, language = await slots.run_held(work)
        return text, language or self.language

    async def close(self) -> None:
        self.blocks = []


class _LiveUtterance:
    """The streaming variant: audio goes to a live :class:`~voxgate.streaming.AsrSession` as it
    arrives; each final is sent at once as ``transcript-chunk``, so by audio-stop most of the
    work is done. ``transcript-start`` opens the stream; the handler sends ``transcript`` and
    ``transcript-stop`` at the end."""

    live = True

    def __init__(self, session: Any, send: Send, language: str | None) -> None:
        self.session, self.send, self.language = session, send, language
        self.texts: list[str] = []
        self.forwarder = asyncio.create_task(self._forward(), name=f"wyoming-{session.id}")

    @classmethod
    async def open(cls, service: Any, send: Send, model: str,
                   language: str | None) -> _LiveUtterance:
        from wyoming.asr import TranscriptStart

        config = service.config(final_model=model, language=language, interim_results=False,
                                word_timestamps=False)
        session = await service.open(config)
        try:  # the client may be gone already: its stream slot must not stay taken
            await send(TranscriptStart(language=language).event())
        except BaseException:
            await session.close()
            raise
        return cls(session, send, language)

    async def _forward(self) -> None:
        from wyoming.asr import TranscriptChunk

        async for event in self.session.events():
            text = event.text.strip()
            if event.kind == "final" and text:
                await self.send(TranscriptChunk(text=text if not self.texts else " " + text)
                                .event())
                self.texts.append(text)

    async def add(self, samples: np.ndarray) -> None:
        if samples.size:
            await self.session.accept(samples)

    async def finish(self) -> tuple[str, str | None]:
        await self.session.finish()
        try:
            await self.forwarder  # every final is sent once this returns
        finally:
            await self.session.close()
        return " ".join(self.texts), self.language

    async def close(self) -> None:
        self.forwarder.cancel()
        await self.session.close()


class WyomingSttHandler:
    """Protocol state of one Wyoming connection (events in, events out through ``send``)."""

    def __init__(self, state: AppState, send: Send) -> None:
        self.state = state
        self.send = send
        self.model = state.settings.asr.model
        self.language: str | None = None
        self.audio: _AudioIn | None = None
        self.utterance: _WholeUtterance | _LiveUtterance | None = None
        self.failed = False  # the current stream already got an error; ignore it to its stop
        self.tts = WyomingTtsHandler(state, send)  # speech out: synthesize events

    @property
    def streaming(self) -> Any:
        """The server's live-transcription service, when it runs (the streaming variant)."""
        return self.state.components.get("streaming")

    async def handle(self, event: Any) -> None:
        """Act on one event from the client; unknown event types are ignored (Wyoming rule)."""
        from wyoming.asr import Transcribe
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.info import Describe
        from wyoming.ping import Ping, Pong

        try:
            if self.tts.handles(event.type):
                await self.tts.handle(event)
            elif Describe.is_type(event.type):
                await self.tts.warm()
                info = await asyncio.to_thread(self.info)  # scans the model cache
                await self.send(info.event())
            elif Transcribe.is_type(event.type):
                await self._reset()
                self._transcribe(Transcribe.from_event(event))
            elif AudioStart.is_type(event.type):
                start = AudioStart.from_event(event)
                await self._start_audio(start.rate, start.width, start.channels)
            elif AudioChunk.is_type(event.type):
                await self._chunk(AudioChunk.from_event(event))
            elif AudioStop.is_type(event.type):
                await self._stop_audio()
            elif Ping.is_type(event.type):
                await self.send(Pong(text=Ping.from_event(event).text).event())
            else:
                logger.debug("ignoring Wyoming event %r", event.type)
        except (VoxgateError, KeyError, TypeError, ValueError) as exc:
            await self._error(exc)

    async def close(self) -> None:
        """The connection ended: drop any utterance in progress (and its live session)."""
        await self.tts.close()
        await self._reset()

    async def _reset(self) -> None:
        utterance, self.utterance, self.audio = self.utterance, None, None
        if utterance is not None:
            await utterance.close()

    async def _error(self, exc: BaseException) -> None:
        from wyoming.error import Error

        if isinstance(exc, ModelError):
            code = "model-error"
        elif isinstance(exc, EngineError) and exc.retryable:
            code = "busy"
        elif isinstance(exc, (KeyError, TypeError)):
            code, exc = "bad-event", ProtocolError(f"malformed event: missing or bad field {exc}")
        else:
            code = "bad-request" if isinstance(exc, (ProtocolError, ValueError)) else "error"
        await self._reset()
        self.failed = True
        logger.info("Wyoming request failed (%s): %s", code, exc)
        await self.send(Error(text=str(exc), code=code).event())

    def info(self) -> Any:
        """``info``: one ASR program whose models are the installed ASR models."""
        from wyoming.info import AsrModel, AsrProgram, Attribution, Info


        settings = self.state.settings
        cards = [c for c in model_cards(settings, self.state.manager)
                 if c["kind"] == "asr" and c["installed"] and "alias_of" not in c]
        models = []
        for card in cards:
            who, url = _ATTRIBUTION.get(card["engine"], ("voxgate", ""))
            models.append(AsrModel(
                name=card["id"], description=card["description"],
                attribution=Attribution(name=who, url=url), installed=True,
                version=None, languages=model_languages(get_spec(card["id"])),
            ))
        program = AsrProgram(
            name="voxgate", description="voxgate speech recognition",
            attribution=Attribution(name="voxgate", url=f"http://{settings.host}:{settings.port}/"),
            installed=True, version=package_version(), models=models,
            supports_transcript_streaming=self.streaming is not None,
        )
        return Info(asr=[program], tts=self.tts.programs(package_version()))

    def _transcribe(self, request: Any) -> None:
        self.failed = False
        self.model = self.state.settings.asr.model
        if request.name:
            self.model = client_model_id(self.state.settings, request.name, "asr")
        self.language = primary_language(request.language)  # ValueError: bad-request

    async def _start_audio(self, rate: int, width: int, channels: int) -> None:
        await self._reset()
        self.failed = False
        settings = self.state.settings
        self.audio = _AudioIn(rate, width, channels, settings.max_upload_mb * 2**20,
                              max_seconds=settings.max_audio_s)
        if self.streaming is not None:
            # an English-only model needs no guess (a configured local directory: no catalogue)
            languages = get_spec(self.model).languages if self.model in CATALOGUE else ()
            language = self.language or (languages[0] if len(languages) == 1 and
                                         languages[0] != "multilingual" else None)
            self.utterance = await _LiveUtterance.open(self.streaming, self.send, self.model,
                                                       language)
        else:
            self.utterance = _WholeUtterance(self.state, self.model, self.language)

    async def _chunk(self, chunk: Any) -> None:
        if self.failed:
            return
        if self.audio is None:  # no audio-start: the chunk's own format starts the stream
            await self._start_audio(chunk.rate, chunk.width, chunk.channels)
        audio = self.audio
        if audio is None or self.utterance is None:
            return
        if audio.format != (chunk.rate, chunk.width, chunk.channels):
            # The format changed mid-stream: it travels with the chunks, so follow it.
            await self.utterance.add(audio.flush())
            audio = self.audio = _AudioIn(chunk.rate, chunk.width, chunk.channels,
                                          audio.max_bytes, audio.received, audio.max_seconds,
                                          audio.seconds)
        await self.utterance.add(audio.convert(chunk.audio))

    async def _stop_audio(self) -> None:
        from wyoming.asr import Transcript, TranscriptStop

        if self.failed:  # the error was already reported; the next stream starts clean
            self.failed = False
            return
        audio, utterance = self.audio, self.utterance
        if audio is None or utterance is None:
            raise ProtocolError("audio-stop without audio-start or any audio-chunk")
        await utterance.add(audio.flush())
        self.audio = self.utterance = None
        try:
            text, language = await utterance.finish()
        finally:
            await utterance.close()
        await self.send(Transcript(text=text, language=language).event())
        if utterance.live:
            await self.send(TranscriptStop().event())


async def _read_event(reader: asyncio.StreamReader) -> Any:
    """One Wyoming event (JSON header line, optional extra data, optional payload), or None at EOF.

    Like ``wyoming.event.async_read_event`` but bounded, and malformed input is a
    :class:`ProtocolError` the client is told about instead of a silent disconnect.
    """
    from wyoming.event import Event

    try:
        line = await reader.readline()
    except ValueError as exc:  # the header line is longer than the reader's limit
        raise ProtocolError(f"event header longer than {_MAX_HEADER_BYTES} bytes") from exc
    if not line:
        return None
    try:
        header = json.loads(line)
        kind = header["type"]
        data = header.get("data") or {}
        data_length = int(header.get("data_length") or 0)
        payload_length = int(header.get("payload_length") or 0)
        if not isinstance(kind, str) or not isinstance(data, dict):
            raise TypeError("type must be a string and data an object")
    except (ValueError, KeyError, TypeError, OverflowError) as exc:  # Overflow: Infinity
        raise ProtocolError(f"malformed Wyoming event header: {exc}") from None
    if not 0 <= data_length <= _MAX_HEADER_BYTES or not 0 <= payload_length <= _MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"event too large (data {data_length} B, payload {payload_length} B; "
                            f"limit {_MAX_PAYLOAD_BYTES} B)")
    if data_length:
        try:
            extra = json.loads(await reader.readexactly(data_length))
        except ValueError as exc:
            raise ProtocolError(f"malformed Wyoming event data: {exc}") from None
        if isinstance(extra, dict):
            data.update(extra)
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=kind, data=data, payload=payload)


class _Idle(ProtocolError):
    """No event from the client for the idle timeout."""


async def _next_event(reader: asyncio.StreamReader, idle_s: float) -> Any:
    """The next event, None at EOF; :class:`_Idle` when the client is silent for ``idle_s``.
    (Only waits between events: a transcription being computed is not idle time.)"""
    try:
        return await asyncio.wait_for(_read_event(reader), idle_s)
    except TimeoutError:
        raise _Idle(f"no event for {idle_s:g} s: idle connection closed "
                    "(VOXGATE_WYOMING_IDLE_TIMEOUT_S)") from None


class WyomingServer:
    """Server component: listens on the Wyoming URI, one :class:`WyomingSttHandler` per client."""

    name = "wyoming"

    def __init__(self, uri: str) -> None:
        self.address = parse_wyoming_uri(uri)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def bound(self) -> WyomingAddress:
        """The address actually listened on (a ``:0`` port resolved to the real one)."""
        if self._server is not None and self.address.scheme == "tcp" and self._server.sockets:
            host, port = self._server.sockets[0].getsockname()[:2]
            return WyomingAddress("tcp", host, port)
        return self.address

    async def start(self, state: AppState) -> None:
        _wyoming()
        from .observability import observed_wyoming  # log context, duration, span

        serve = observed_wyoming(state, partial(self._serve, state))
        address = self.address
        if address.scheme == "tcp" and not is_loopback_host(address.host) \
                and not state.settings.wyoming_allow_remote:
            raise ConfigError(f"Wyoming has no authentication: refusing to listen on {address} "
                              "(beyond this machine); bind it to 127.0.0.1 or a unix socket, or "
                              "set VOXGATE_WYOMING_ALLOW_REMOTE=true on a trusted network")
        if address.scheme == "tcp":
            self._server = await asyncio.start_server(
                serve, address.host, address.port, limit=_MAX_HEADER_BYTES)
            if not is_loopback_host(address.host):
                logger.warning("Wyoming has no authentication: %s is reachable beyond this "
                               "machine; keep it on a trusted network", address)
        else:
            self._server = await asyncio.start_unix_server(
                serve, address.path, limit=_MAX_HEADER_BYTES)
        state.ready_checks.append(self._ready)
        logger.info("Wyoming speech-to-text listening on %s", self.bound)

    async def stop(self, state: AppState) -> None:
        state.remove_ready_checks(self._ready)
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _ready(self) -> tuple[str, bool, str]:
        serving = self._server is not None and self._server.is_serving()
        return "wyoming", serving, f"listening on {self.bound}" if serving else "not listening"

    async def _serve(self, state: AppState, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        from wyoming.error import Error
        from wyoming.event import async_write_event

        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)

        lock = asyncio.Lock()  # live finals and replies come from different tasks

        async def send(event: Any) -> None:
            async with lock:
                await async_write_event(event, writer)

        settings = state.settings
        try:
            if len(self._connections) > settings.wyoming_max_connections:
                await send(Error(text=f"too many Wyoming connections (at most "
                                      f"{settings.wyoming_max_connections}: "
                                      "VOXGATE_WYOMING_MAX_CONNECTIONS)", code="busy").event())
                return
            handler = WyomingSttHandler(state, send)
            try:
                while (event := await _next_event(reader, settings.wyoming_idle_timeout_s)) \
                        is not None:
                    await handler.handle(event)
            finally:
                await handler.close()
        except _Idle as exc:  # a silent client holds nothing for long
            await send(Error(text=str(exc), code="timeout").event())
        except ProtocolError as exc:  # the stream is out of sync: say why, then hang up
            await send(Error(text=str(exc), code="bad-event").event())
        except (ConnectionError, asyncio.IncompleteReadError):
            logger.debug("Wyoming client went away")
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
