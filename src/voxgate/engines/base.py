"""Engine protocols: what every ASR / VAD / TTS / LLM / MT backend offers.

Sessions (batch, streaming, jobs, agent) only talk to these protocols, so adding a backend never
touches a front door. Audio in is always float32 mono 16 kHz (see ``voxgate.audio``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError
from ..types import Segment, SpeechSpan, TtsChunk

__all__ = [
    "AsrCapabilities",
    "AsrOptions",
    "AsrResult",
    "Asr",
    "VadOptions",
    "Vad",
    "VadStream",
    "Tts",
    "VoiceInfo",
    "check_speed",
    "SPEED_MIN",
    "SPEED_MAX",
    "ChatMessage",
    "LlmCapabilities",
    "Llm",
    "Mt",
    "MtOptions",
]

Task = Literal["transcribe", "translate"]


@dataclass(frozen=True, slots=True)
class AsrCapabilities:
    """What an ASR engine can do; front doors use this to reject unsupported requests early."""

    batch: bool = True
    streaming: bool = False
    word_timestamps: bool = False
    translate: bool = False
    language_detection: bool = False
    languages: tuple[str, ...] = ()  # empty: any language the model knows
    # longest continuous speech a file transcription hands over as one input (Parakeet: its
    # whole-input limit, minutes); None: the chunk limit (Whisper's 30 s window) splits it
    max_utterance_s: float | None = None


@dataclass(slots=True)
class AsrOptions:
    """Decoding options for one request. ``language=None`` means auto-detect."""

    language: str | None = None
    task: Task = "transcribe"
    beam_size: int = 5
    word_timestamps: bool = False
    initial_prompt: str | None = None
    hotwords: str | None = None
    temperature: float = 0.0
    # Whisper only: a chunk decoded at temperature 0 whose text loops (gzip compression ratio
    # > 2.4) or is unsure (mean log-prob < -1, unless silent) is decoded again at 0.2, 0.4 ...
    # 1.0 as Whisper does (OpenAI's temperature=0); sampling is seeded, so output repeats
    temperature_fallback: bool = False
    # Whisper only, opt-in (live streams): encode a window of the longest chunk plus this
    # margin, rounded up to whole seconds, instead of Whisper's fixed 30 s. None: 30 s.
    window_margin_s: float | None = None
    # Who goes first on a shared model (engines.priority.Priority: 0 live final, 1 live
    # partial, 2 file work). Scheduling only: never changes the output, so not in as_versions.
    priority: int = 2

    def as_versions(self) -> dict[str, Any]:
        """Parameters that change the output, for reproducibility records."""
        return {
            "language": self.language,
            "task": self.task,
            "beam_size": self.beam_size,
            "word_timestamps": self.word_timestamps,
            "initial_prompt": self.initial_prompt,
            "hotwords": self.hotwords,
            "temperature": self.temperature,
            **({"temperature_fallback": True} if self.temperature_fallback else {}),
            **({"window_margin_s": self.window_margin_s}
               if self.window_margin_s is not None else {}),
        }


@dataclass(slots=True)
class AsrResult:
    """Recognition of one audio chunk. Segment/word times are relative to the chunk start."""

    segments: list[Segment]
    language: str
    language_probability: float = 1.0
    duration: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


@runtime_checkable
class Asr(Protocol):
    """Speech recognition engine. One instance is shared by every session using the model."""

    name: str
    capabilities: AsrCapabilities

    def transcribe(self, audio: np.ndarray, options: AsrOptions) -> AsrResult:
        """Recognise one chunk (at most ~30 s for Whisper-style models)."""
        ...

    def transcribe_batch(self, chunks: Sequence[np.ndarray], options: AsrOptions) -> list[AsrResult]:
        """Recognise several chunks in as few model calls as possible, results in input order."""
        ...

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """Most likely language code and its probability (engines without detection: fixed)."""
        ...


@dataclass(frozen=True, slots=True)
class VadOptions:
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 500
    speech_pad_ms: int = 200
    max_speech_s: float = float("inf")


class VadStream(Protocol):
    """Per-stream VAD state: feed any chunk size, get per-frame speech probabilities."""

    frame_samples: int

    def accept(self, audio: np.ndarray) -> np.ndarray:
        """Probabilities (0..1) for each complete frame now available, in order."""
        ...

    def reset(self) -> None:
        ...


@runtime_checkable
class Vad(Protocol):
    name: str

    def speech_spans(self, audio: np.ndarray, options: VadOptions) -> list[SpeechSpan]:
        """Speech regions of a whole signal, in samples."""
        ...

    def stream(self) -> VadStream:
        """A new independent streaming state sharing this model."""
        ...


SPEED_MIN = 0.25
SPEED_MAX = 4.0


def check_speed(speed: float) -> float:
    """``speed`` as a float when within 0.25-4 (1.0 = the voice's own pace), else ConfigError."""
    try:
        value = float(speed)
    except (TypeError, ValueError):
        raise ConfigError(f"speed must be a number between {SPEED_MIN} and {SPEED_MAX}, "
                          f"got {speed!r}") from None
    if not SPEED_MIN <= value <= SPEED_MAX:  # also rejects NaN
        raise ConfigError(f"speed {speed} out of range {SPEED_MIN}-{SPEED_MAX}")
    return value


@dataclass(frozen=True, slots=True)
class VoiceInfo:
    """One voice an engine can speak with.

    ``id`` is what a request names (``voice=``); ``language`` a BCP-47-ish code (``en-US``,
    ``ru``, ``hi``); ``sample_rate`` the rate of the audio it produces; ``engine`` the registry
    name (``piper``, ``festival``, ``espeak``...); ``model`` the catalogue id that loads it.
    """

    id: str
    language: str
    sample_rate: int
    engine: str
    model: str = ""
    name: str = ""
    gender: str = ""


@runtime_checkable
class Tts(Protocol):
    """Text-to-speech engine. One instance (one catalogue model) may offer several voices.

    ``synthesize`` is blocking and CPU-bound: callers run it in a worker thread (see
    ``voxgate.speech``, which also splits text into sentences, validates it and streams).
    Engines get text that is already cleaned (no control characters, not empty) and short
    (a sentence or a clause); they still reject a bad ``voice`` / ``speed`` with ConfigError.
    """

    name: str
    sample_rate: int  # rate of the default voice's audio (each TtsChunk carries its own)
    languages: tuple[str, ...]

    def voices(self) -> list[VoiceInfo]:
        """Every voice this engine instance can speak with (the default voice first)."""
        ...

    def synthesize(self, text: str, voice: str | None = None,
                   speed: float = 1.0) -> Iterator[TtsChunk]:
        """Audio for ``text`` in chunks, one per sentence where the engine splits.

        ``voice``: an id from :meth:`voices` (None: the default voice); ``speed`` 0.25-4,
        pitch preserved. Chunks are float32 mono at the voice's rate (``TtsChunk.sample_rate``).
        """
        ...


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class LlmCapabilities:
    """What an LLM engine offers; ``json_schema``: output constrained to a schema (grammar)."""

    json_schema: bool = False
    streaming: bool = True
    context_tokens: int = 4096


@runtime_checkable
class Llm(Protocol):
    """Chat LLM. ``version_info()`` adds engine facts (endpoint, remote model) to job versions."""

    name: str
    capabilities: LlmCapabilities

    def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int = 512,
               temperature: float = 0.0, json_schema: dict[str, Any] | None = None,
               priority: int = 2) -> AsyncIterator[str]:
        """Text deltas; ``json_schema`` asks for schema-constrained output where supported.

        ``priority`` (``engines.priority.Priority``): below 2 is live work (an agent's reply, a
        live translation) that an in-process engine serves before file work (jobs).
        """
        ...

    async def complete(self, messages: Sequence[ChatMessage], *, max_tokens: int = 512,
                       temperature: float = 0.0, json_schema: dict[str, Any] | None = None,
                       priority: int = 2) -> str:
        ...

    def version_info(self) -> dict[str, Any]:
        """Facts that change the output beyond the model file (endpoint, served model, seed)."""
        ...


@dataclass(frozen=True, slots=True)
class MtOptions:
    """Per-request translation options; every field is optional and engines that cannot
    honour one (a remote NMT without context) ignore it rather than fail.

    ``context``: the previous utterance's source text (helps pronouns, terms; never
    translated itself). ``glossary``: (source term, required target term) pairs.
    ``dnt``: phrases that must appear unchanged in the output (names, product words).
    """

    context: str = ""
    glossary: tuple[tuple[str, str], ...] = ()
    dnt: tuple[str, ...] = ()


@runtime_checkable
class Mt(Protocol):
    """Text translation. ``source``/``target`` are ISO-639-1 codes (``en``, ``ru``).

    ``options`` is keyword-only and optional, so a three-argument engine call works on every
    engine. Engines may also offer ``translate_batch(texts, source, target, options=None)
    -> list[str]`` (one output per input, in order); callers use it when present.
    """

    name: str

    async def translate(self, text: str, source: str, target: str, *,
                        options: MtOptions | None = None) -> str:
        ...
