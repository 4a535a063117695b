"""Files in, transcripts out: decode once, then the batch path with shared engines.

The CLI, the jobs worker and the OpenAI-compatible API all go through here, so a file is
transcribed the same way whichever door it came in by.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE, AudioSource, decode_audio
from .batch import BatchOptions, BatchUpdate, collect_transcript, iter_transcribe
from .config import Settings
from .engines.base import AsrOptions, VadOptions
from .engines.manager import ModelManager
from .engines.priority import Priority
from .types import Transcript

__all__ = ["TranscribeRequest", "FileTranscriber"]

ProgressCallback = Callable[[float, float], None]  # (seconds done, seconds total)


@dataclass(slots=True)
class TranscribeRequest:
    """What the caller asked for; unset values come from Settings."""

    model: str
    language: str | None = None
    task: str = "transcribe"
    word_timestamps: bool = False
    beam_size: int = 5
    batch_size: int = 8
    use_vad: bool = True
    initial_prompt: str | None = None
    hotwords: str | None = None
    temperature: float = 0.0
    # Whisper: re-decode a chunk that loops or is unsure at rising temperatures (OpenAI's
    # temperature=0); see AsrOptions.temperature_fallback
    temperature_fallback: bool = False
    # who goes first on a shared model (engines.priority.Priority); file work by default, a
    # spoken command someone is waiting for (Wyoming) as a live final
    priority: int = Priority.FILE

    def asr_options(self) -> AsrOptions:
        return AsrOptions(language=self.language, task=self.task,  # type: ignore[arg-type]
                          beam_size=self.beam_size, word_timestamps=self.word_timestamps,
                          initial_prompt=self.initial_prompt, hotwords=self.hotwords,
                          temperature=self.temperature,
                          temperature_fallback=self.temperature_fallback,
                          priority=self.priority)


class FileTranscriber:
    """Transcribes files with one model (loaded once, shared through the ModelManager)."""

    def __init__(self, settings: Settings, request: TranscribeRequest,
                 manager: ModelManager | None = None) -> None:
        self.settings = settings
        self.request = request
        self.manager = manager or ModelManager(settings)
        self._model = request.model or settings.asr.model
        self.asr = self.manager.asr(self._model)
        self.vad = self.manager.vad() if request.use_vad else None

    def batch_options(self) -> BatchOptions:
        asr = self.settings.asr
        return BatchOptions(
            asr=self.request.asr_options(),
            vad=VadOptions(threshold=asr.vad_threshold, min_silence_ms=asr.min_silence_ms,
                           speech_pad_ms=asr.speech_pad_ms),
            use_vad=self.request.use_vad,
            batch_size=self.request.batch_size,
            max_chunk_s=asr.max_chunk_s,
            max_utterance_s=self.asr.capabilities.max_utterance_s,
        )

    def iter_audio(self, audio: np.ndarray) -> Iterator[BatchUpdate]:
        """Updates for already-decoded audio, as batches finish.

        The engines are held (``ModelManager.use``) while this runs, so an idle sweep never
        unloads them mid-file; a model swept since ``__init__`` is loaded again here.
        """
        with ExitStack() as stack:
            self.asr = stack.enter_context(self.manager.use("asr", self._model))
            if self.request.use_vad:
                self.vad = stack.enter_context(self.manager.use("vad", "silero-vad"))
            yield from iter_transcribe(audio, self.asr, self.vad, self.batch_options())

    def model_id(self) -> str:
        """The catalogue id (or local path) of the ASR model, for results and versions."""
        resolved = self.manager.resolved("asr", self._model)
        return resolved.spec.id if resolved else self._model

    def run_audio(self, audio: np.ndarray, progress: ProgressCallback | None = None) -> Transcript:
        """Transcribe already-decoded float32 16 kHz mono audio into one Transcript."""
        return collect_transcript(self.iter_audio(audio), audio.size / SAMPLE_RATE,
                                  self.model_id(), self.request.task, progress)

    def run(self, source: AudioSource, progress: ProgressCallback | None = None) -> Transcript:
        """Decode ``source`` (path, bytes or stream) and transcribe it."""
        return self.run_audio(decode_audio(source), progress)
