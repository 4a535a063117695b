"""``voxgate talk``: a client of the server's voice agent over gRPC ``voxgate.v1.VoiceWorkflow``.

The client is deliberately thin, as any user's client would be: it streams the user's audio
(a microphone through the optional ``sounddevice`` package, or a file fed in real time, or
faster), shows what the server says (user transcripts, the agent's text as it is generated, a
latency line per agent turn) and keeps the agent's audio (written to a file, or played on the
speakers). All conversation logic (turns, barge-in, history) lives on the server.

gRPC rather than the WebSocket ``/v1/agent`` because the stream's messages are typed by the
.proto contract (``proto/voxgate/v1/voice_workflow.proto``); both doors carry the same events.

A file conversation ends by itself: after the last chunk the client sends ``tail_silence_s`` of
silence (so the last user turn ends as it would in a real conversation), then ``Control.END``;
the server answers the turn in progress and closes the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .audio import (
    AUDIO_FORMATS,
    SAMPLE_RATE,
    decode_audio,
    encode_audio,
    float32_to_pcm16,
    pcm16_to_float32,
)
from .errors import AudioError, ConfigError, EngineError

__all__ = [
    "AgentTurn",
    "TalkOptions",
    "TalkPrinter",
    "TalkResult",
    "file_audio",
    "microphone_audio",
    "read_input",
    "run_talk",
    "session_config",
    "talk",
]

logger = logging.getLogger(__name__)
_MAX_FILE_S = 3600.0  # a scripted conversation longer than an hour is a mistake, not a test


@dataclass(frozen=True, slots=True)
class TalkOptions:
    """Where the server is and how the conversation is configured (empty: server defaults)."""

    target: str = "127.0.0.1:50051"
    api_key: str | None = None
    tls: bool = False
    voice: str = ""
    language: str = ""
    system_prompt: str = ""
    asr_model: str = ""
    llm_model: str = ""
    interim_results: bool = True
    # turn taking (None: the server's; the server checks the range and refuses a bad value)
    complete_wait_ms: int | None = None  # silence that ends a turn ending in a question
    pause_onset_ms: int | None = None  # speech over the agent this long pauses it
    tail_silence_s: float = 1.5  # after a file: lets its last user turn end naturally
    end_timeout_s: float = 120.0  # after END: the most the agent's last turn may take


@dataclass(slots=True)
class AgentTurn:
    """One agent turn as the client saw it."""

    turn_id: int
    user_text: str = ""
    text: str = ""  # the agent's text (what the server kept: truncated when interrupted)
    interrupted: bool = False
    latency: dict[str, float] = field(default_factory=dict)
    audio_s: float = 0.0


@dataclass(slots=True)
class TalkResult:
    """Everything the conversation produced, for scripts and tests."""

    session_id: str = ""
    user_finals: list[str] = field(default_factory=list)
    turns: list[AgentTurn] = field(default_factory=list)
    audio: list[np.ndarray] = field(default_factory=list)  # agent audio, float32, as received
    sample_rate: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (code, message), non-fatal

    @property
    def agent_audio(self) -> np.ndarray:
        """All agent audio received, in order."""
        if not self.audio:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self.audio)

    def turn(self, turn_id: int) -> AgentTurn:
        for turn in self.turns:
            if turn.turn_id == turn_id:
                return turn
        turn = AgentTurn(turn_id)
        self.turns.append(turn)
        return turn


def read_input(path: Path) -> np.ndarray:
    """The user's side of a scripted conversation: any audio file -> float32 16 kHz mono.
    Decoded before connecting, so a bad file is one clear error and no session is opened."""
    return decode_audio(path, SAMPLE_RATE, _MAX_FILE_S)


async def file_audio(audio: np.ndarray, *, realtime: bool = True, chunk_ms: int = 100,
                     tail_silence_s: float = 1.5) -> AsyncIterator[bytes]:
    """PCM16 16 kHz chunks of ``audio``, paced at the speed of speech when ``realtime``.

    Pacing follows a monotonic schedule (chunk ``i`` leaves at ``i * chunk_ms``), so a slow
    consumer never makes the stream drift behind real time. ``tail_silence_s`` of silence
    follows the audio, as the pause after a spoken question would.
    """
    if tail_silence_s > 0:
        audio = np.concatenate([audio, np.zeros(int(tail_silence_s * SAMPLE_RATE), np.float32)])
    step = max(1, SAMPLE_RATE * chunk_ms // 1000)
    start = time.monotonic()
    for i, offset in enumerate(range(0, audio.size, step)):
        if realtime:
            delay = start + i * chunk_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        yield float32_to_pcm16(audio[offset:offset + step])


def _sounddevice() -> Any:
    try:
        import sounddevice  # optional: needs PortAudio
    except (ImportError, OSError) as exc:
        raise ConfigError(f"no microphone support ({exc}); pip install 'voxgate[mic]' "
                          "(sounddevice), or give "
                          "--input FILE") from None
    return sounddevice


async def microphone_audio(chunk_ms: int = 100) -> AsyncIterator[bytes]:
    """PCM16 16 kHz chunks from the default microphone until cancelled (Ctrl+C)."""
    sd = _sounddevice()
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=100)

    def captured(data: Any, frames: int, when: Any, status: Any) -> None:
        loop.call_soon_threadsafe(_offer, queue, bytes(data))

    try:
        stream = sd.RawInputStream(samplerate=SAMPLE_RATE, channels=1, dtype="int16",
                                   blocksize=SAMPLE_RATE * chunk_ms // 1000, callback=captured)
    except (sd.PortAudioError, ValueError) as exc:  # no device, or it cannot record 16 kHz
        raise ConfigError(f"cannot open the microphone: {exc}") from None
    with stream:
        while True:
            yield await queue.get()


def _offer(queue: asyncio.Queue[bytes], data: bytes) -> None:
    """Queue captured audio; if the sender is far behind, the oldest chunk goes (bounded)."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(data)


class Speaker:
    """Plays agent audio on the default output device (optional ``sounddevice``)."""

    def __init__(self) -> None:
        self._sd = _sounddevice()
        self._stream: Any = None
        self._rate = 0

    def play(self, pcm: bytes, rate: int) -> None:
        if self._stream is None or rate != self._rate:
            self.close()
            self._stream = self._sd.RawOutputStream(samplerate=rate, channels=1, dtype="int16")
            self._stream.start()
            self._rate = rate
        self._stream.write(pcm)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None


Printer = Callable[[str, Any], None]


def session_config(options: TalkOptions) -> Any:
    """The call's first message: ``options`` as a ``SessionConfig``; an optional field is set
    only when given, so the server's default applies otherwise (and the server checks it)."""
    from .proto import voice_workflow_pb2 as pb

    optional = {name: value for name in ("complete_wait_ms", "pause_onset_ms")
                if (value := getattr(options, name)) is not None}
    return pb.SessionConfig(
        asr_model=options.asr_model, llm_model=options.llm_model, voice=options.voice,
        language=options.language, system_prompt=options.system_prompt,
        sample_rate_hz=SAMPLE_RATE, encoding=pb.PCM16, interim_results=options.interim_results,
        **optional)


async def talk(options: TalkOptions, audio: AsyncIterator[bytes],
               on_event: Printer | None = None,
               on_audio: Callable[[bytes, int], None] | None = None,
               result: TalkResult | None = None) -> TalkResult:
    """Hold one conversation: stream ``audio`` (PCM16 16 kHz), collect what the server says.

    ``on_event(kind, message)`` sees every server message as it arrives (kind is the oneof
    field name); ``on_audio(pcm16, rate)`` each agent audio chunk. Raises
    :class:`~voxgate.errors.EngineError` with the gRPC status when the server ends the call
    with an error (UNAUTHENTICATED, RESOURCE_EXHAUSTED, INVALID_ARGUMENT...), or when the
    server has not ended the conversation ``end_timeout_s`` after the client's END. ``result``
    (optional) is filled as messages arrive, so a conversation stopped with Ctrl+C keeps what
    it got.
    """
    import grpc

    from .proto import voice_workflow_pb2 as pb
    from .proto import voice_workflow_pb2_grpc as pb_grpc

    config = session_config(options)
    metadata = (("x-api-key", options.api_key),) if options.api_key else ()
    result = TalkResult() if result is None else result
    ended = asyncio.Event()

    failed: list[BaseException] = []  # the audio source's error (gRPC would only say CANCELLED)

    opened = asyncio.Event()  # audio waits for Ready: a refused call loses nothing, says why

    async def requests() -> AsyncIterator[Any]:
        yield pb.ClientMessage(config=config)
        await opened.wait()
        try:
            async for chunk in audio:
                yield pb.ClientMessage(audio=pb.UserAudio(data=chunk))
        except Exception as exc:
            failed.append(exc)
            raise
        yield pb.ClientMessage(control=pb.Control(action=pb.Control.END))
        ended.set()

    async def watchdog(call: Any) -> None:
        await ended.wait()
        await asyncio.sleep(options.end_timeout_s)
        call.cancel()

    channel = (grpc.aio.secure_channel(options.target, grpc.ssl_channel_credentials())
               if options.tls else grpc.aio.insecure_channel(options.target))
    async with channel:
        call = pb_grpc.VoiceWorkflowStub(channel).Converse(requests(), metadata=metadata)
        guard = asyncio.create_task(watchdog(call))
        try:
            async for message in call:
                kind = message.WhichOneof("message")
                if kind == "ready":
                    opened.set()
                _collect(result, kind, getattr(message, kind))
                if kind == "audio" and on_audio is not None:
                    on_audio(message.audio.data, message.audio.sample_rate_hz)
                if on_event is not None:
                    on_event(kind, getattr(message, kind))
        except asyncio.CancelledError:
            if failed:  # grpc cancels the call when the request iterator fails
                raise failed[0] from None
            if not guard.done():
                raise
            raise EngineError(f"{options.target}: the conversation did not end within "
                              f"{options.end_timeout_s:g} s of the client's END") from None
        except grpc.aio.AioRpcError as exc:
            if failed:
                raise failed[0] from None
            raise EngineError(f"{options.target}: {exc.code().name}: {exc.details()}",
                              retryable=exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                                       grpc.StatusCode.RESOURCE_EXHAUSTED)
                              ) from None
        finally:
            guard.cancel()
            with contextlib.suppress(Exception):
                call.cancel()
    return result


def _collect(result: TalkResult, kind: str, message: Any) -> None:
    if kind == "ready":
        result.session_id = message.session_id
        result.sample_rate = message.output_sample_rate_hz
    elif kind == "transcript" and message.is_final and message.text:
        result.user_finals.append(message.text)
    elif kind == "agent_text":
        result.turn(message.turn_id).text += message.delta
    elif kind == "audio":
        if message.sample_rate_hz != result.sample_rate and result.audio:
            raise AudioError(f"the server changed the agent's audio rate from "
                             f"{result.sample_rate} to {message.sample_rate_hz} Hz mid-stream")
        result.sample_rate = message.sample_rate_hz
        samples = pcm16_to_float32(message.data)
        result.audio.append(samples)
        result.turn(message.turn_id).audio_s += samples.size / message.sample_rate_hz
    elif kind == "turn" and message.speaker == message.AGENT and message.kind == message.END:
        turn = result.turn(message.turn_id)
        turn.interrupted = message.interrupted
        turn.text = message.text or turn.text
        turn.user_text = result.user_finals[-1] if result.user_finals else ""
    elif kind == "latency":
        result.turn(message.turn_id).latency = {
            "end_of_turn_s": message.end_of_turn_s, "asr_final_s": message.asr_final_s,
            "llm_first_token_s": message.llm_first_token_s,
            "tts_first_audio_s": message.tts_first_audio_s,
            "voice_to_voice_s": message.voice_to_voice_s}
    elif kind == "error":
        result.errors.append((message.code, message.message))


class TalkPrinter:
    """Shows the conversation as it happens: what the user said (finals) and the agent's
    replies on ``out``; partials (on a terminal) and one latency line per agent turn on
    ``err``, so ``out`` stays a clean transcript for scripts."""

    def __init__(self, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                 partials: bool = True) -> None:
        self.out, self.err = out, err
        self.partials = partials and err.isatty()
        self._agent: dict[int, str] = {}

    def __call__(self, kind: str, message: Any) -> None:
        if kind == "transcript":
            if message.is_final and message.text:
                self._line(self.out, f"you: {message.text.strip()}")
            elif self.partials and message.text:
                self.err.write(f"\r\x1b[K... {message.text.strip()}")
                self.err.flush()
        elif kind == "agent_text":
            self._agent[message.turn_id] = self._agent.get(message.turn_id, "") + message.delta
        elif kind == "turn" and message.speaker == message.AGENT and message.kind == message.END:
            text = (message.text or self._agent.pop(message.turn_id, "")).strip()
            mark = f" [{message.reason}]" if message.interrupted else ""
            if text or mark:
                self._line(self.out, f"agent: {text}{mark}")
        elif kind == "latency":
            self._line(self.err, latency_line(message))
        elif kind == "error":
            self._line(self.err, f"server: {message.code}: {message.message}")

    def _line(self, stream: TextIO, text: str) -> None:
        if self.partials:
            self.err.write("\r\x1b[K")
        stream.write(text + "\n")
        stream.flush()


def latency_line(message: Any) -> str:
    """``turn 2: voice-to-voice 0.91 s (end of turn 0.30, ASR final 0.12, ...)``."""
    parts = [(label, getattr(message, name)) for name, label in (
        ("end_of_turn_s", "end of turn"), ("asr_final_s", "ASR final"),
        ("llm_first_token_s", "LLM first token"), ("tts_first_audio_s", "TTS first audio"))
        if message.HasField(name)]
    head = (f"voice-to-voice {message.voice_to_voice_s:.2f} s"
            if message.HasField("voice_to_voice_s") else "no audio")
    detail = ", ".join(f"{label} {value:.2f}" for label, value in parts)
    return f"turn {message.turn_id}: {head}" + (f" ({detail})" if detail else "")


def run_talk(options: TalkOptions, input_path: Path | None, output_path: Path | None, *,
             realtime: bool = True, printer: Printer | None = None) -> TalkResult:
    """The ``voxgate talk`` command: a file (or the microphone) in, the agent's audio to
    ``output_path`` (or the speakers, or nowhere when neither is possible). Ctrl+C in a
    microphone conversation ends it and still writes the output file."""
    fmt = _output_format(output_path) if output_path is not None else "wav"
    speaker: Speaker | None = None
    if input_path is not None:
        source = file_audio(read_input(input_path), realtime=realtime,
                            tail_silence_s=options.tail_silence_s)
    else:
        _sounddevice()  # a clear error before connecting, if there is no microphone support
        source = microphone_audio()
        if output_path is None:
            speaker = Speaker()
    result = TalkResult()
    on_audio = speaker.play if speaker is not None else None
    try:
        asyncio.run(talk(options, source, printer, on_audio, result))
    except KeyboardInterrupt:
        if input_path is not None:
            raise
    finally:
        if speaker is not None:
            speaker.close()
    if output_path is not None:
        audio = result.agent_audio
        rate = result.sample_rate or SAMPLE_RATE
        output_path.write_bytes(encode_audio(audio, rate, fmt))
    return result


def _output_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    fmt = {"ogg": "opus", "m4a": "aac", "raw": "pcm"}.get(suffix, suffix)
    return fmt if fmt in AUDIO_FORMATS else "wav"
