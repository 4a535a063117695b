"""Any NVIDIA Riva TTS server (or another voxgate) as a voxgate voice, over gRPC.

The catalogue entry ``riva-tts`` loads this engine; ``riva-tts`` speaks with the server's
default voice (or ``VOXGATE_RIVA__TTS_VOICE``), ``riva-tts:<Riva voice name>`` with a named one
(``riva-tts:English-US.Female-1``; a voxgate server's names look like ``espeak.hi``). Voices
are listed with ``GetRivaSynthesisConfig`` (as ``talk.py --list-voices`` reads them).

Each sentence is one ``Synthesize`` call asking for raw PCM16 at ``VOXGATE_RIVA__TTS_SAMPLE_RATE``
through :class:`~voxgate.engines.riva_channel.RivaChannel` (URI, TLS, API-key metadata, per-call
timeout, retries with backoff on ``UNAVAILABLE``). Riva has no speed parameter, so ``speed`` is
a pitch-preserving tempo change of the audio (``audio.change_tempo``), as for Festival.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..audio import change_tempo, pcm16_to_float32
from ..errors import ConfigError
from ..types import TtsChunk
from .base import VoiceInfo, check_speed
from .riva_channel import RivaChannel, RivaOptions

__all__ = ["RivaTts"]

logger = logging.getLogger(__name__)

MODEL = "riva-tts"  # the catalogue id
PREFIX = MODEL + ":"


class RivaTts:
    """A Riva TTS server behind voxgate's :class:`~voxgate.engines.base.Tts` protocol."""

    name = "riva"

    def __init__(self, options: RivaOptions, *, voice: str = "", sample_rate: int = 22050,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._channel = RivaChannel(options, "the Riva TTS engine", sleep=sleep)
        import riva.client.proto.riva_tts_pb2 as rtts
        import riva.client.proto.riva_tts_pb2_grpc as rtts_grpc

        self.options = options
        self._rtts = rtts
        self._stub = rtts_grpc.RivaSpeechSynthesisStub(self._channel.auth.channel)
        self.default_voice = voice
        self.sample_rate = sample_rate
        self.languages = (options.language_code,)
        self._voices: list[VoiceInfo] | None = None
        self._lock = threading.Lock()

    @classmethod
    def load(cls, resolved: Any, settings: Any) -> RivaTts:
        return cls(RivaOptions.from_settings(settings), voice=settings.riva.tts_voice,
                   sample_rate=settings.riva.tts_sample_rate)

    @property
    def calls(self) -> int:
        """RPC attempts, retries included (observability and tests)."""
        return self._channel.calls

    def close(self) -> None:
        self._channel.close()

    # ---- Tts protocol --------------------------------------------------------------------
    def voices(self) -> list[VoiceInfo]:
        """The server's voices (asked once), ids ``riva-tts:<voice_name>.<subvoice>``; the
        configured default first."""
        with self._lock:
            if self._voices is None:
                self._voices = self._list_voices()
            return list(self._voices)

    def _list_voices(self) -> list[VoiceInfo]:
        response = self._channel.with_retries("GetRivaSynthesisConfig", lambda: (
            self._stub.GetRivaSynthesisConfig(
                self._rtts.RivaSynthesisConfigRequest(), metadata=self._channel.metadata,
                timeout=self.options.timeout_s)))
        found: dict[str, VoiceInfo] = {}
        for config in response.model_config:
            params = config.parameters
            voice_name = params.get("voice_name", "") or config.model_name
            language = params.get("language_code", "") or self.options.language_code
            rate = int(params["sample_rate"]) if params.get("sample_rate", "").isdigit() \
                else self.sample_rate
            subvoices = [s.split(":")[0] for s in params.get("subvoices", "").split(",")
                         if s.split(":")[0]]
            for name in ([f"{voice_name}.{s}" for s in subvoices] or [voice_name]):
                found.setdefault(name, VoiceInfo(PREFIX + name, language, rate, self.name,
                                                 model=MODEL, name=name,
                                                 gender=params.get("gender", "")))
        voices = list(found.values())
        voices.sort(key=lambda v: v.name != self.default_voice)
        return voices

    def _voice(self, voice: str | None) -> tuple[str, str]:
        """(Riva voice name, language_code) of a voice id; empty name: the server's default."""
        name = voice.removeprefix(PREFIX) if voice and voice != MODEL else self.default_voice
        if name and not name.strip():
            raise ConfigError("empty Riva voice name")
        language = self.options.language_code
        if name and self._voices is not None:
            for info in self._voices:
                if info.name == name:
                    language = info.language
        return name, language

    def synthesize(self, text: str, voice: str | None = None,
                   speed: float = 1.0) -> Iterator[TtsChunk]:
        """One ``Synthesize`` call for ``text`` -> one chunk at the requested rate."""
        speed = check_speed(speed)
        name, language = self._voice(voice)
        request = self._rtts.SynthesizeSpeechRequest(
            text=text, language_code=language, encoding=1,  # LINEAR_PCM
            sample_rate_hz=self.sample_rate, voice_name=name)
        response = self._channel.with_retries("Synthesize", lambda: self._stub.Synthesize(
            request, metadata=self._channel.metadata, timeout=self.options.timeout_s))
        audio = pcm16_to_float32(response.audio[: len(response.audio) // 2 * 2])
        if not audio.size:
            logger.debug("Riva returned no audio for %r", text[:80])
            return
        if abs(speed - 1.0) > 0.01:
            audio = change_tempo(audio, self.sample_rate, speed)
        yield TtsChunk(audio, self.sample_rate, text)
