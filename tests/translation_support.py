"""Speech for the translation tests: Russian read by Festival's msu_ru_nsh_clunits voice (the
offline Russian voice Whisper understands best: espeak-ng's Russian is barely intelligible to
it), English from the LibriVox clips, helpers to feed a session like a client, and the real
services a session runs on."""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voxgate.audio import SAMPLE_RATE, decode_audio, float32_to_pcm16, resample

RU_VOICE = "festival:msu_ru_nsh_clunits"
RU_TEXT = "Сегодня хорошая погода, и я хочу пойти гулять в парк."
EN_CLIP = Path("/usr/share/pocketsphinx/test/data/librivox/"
               "sense_and_sensibility_01_austen_64kb-0880.wav")  # "he was not an ill disposed young man"
ES_TEXT = "Buenos días. Hoy hace muy buen tiempo y vamos a caminar por el parque con mis amigos."


@lru_cache(maxsize=8)
def _russian(text: str) -> np.ndarray:
    from voxgate.config import Settings
    from voxgate.speech import SpeechService

    service = SpeechService(Settings(offline=True, _env_file=None))
    audio, rate = service.synthesize(text, RU_VOICE)
    return resample(audio, rate, SAMPLE_RATE)


def russian_speech(text: str = RU_TEXT) -> np.ndarray:
    """``text`` read by Festival's Russian voice, float32 16 kHz; skips without that voice."""
    if shutil.which("text2wave") is None or not Path(
            "/usr/share/festival/voices/russian/msu_ru_nsh_clunits").exists():
        pytest.skip("Festival's Russian voice is not installed (apt-get install festvox-ru)")
    return _russian(text)


def english_speech() -> np.ndarray:
    """A short LibriVox clip (public domain), float32 16 kHz; skips without the Debian package."""
    if not EN_CLIP.is_file():
        pytest.skip("Debian package pocketsphinx-testdata is not installed")
    return decode_audio(EN_CLIP)


def spanish_speech_16k(tmp_path: Path) -> np.ndarray:
    """One Spanish sentence read by espeak-ng (a language the translator must refuse)."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    path = tmp_path / "es.wav"
    subprocess.run(["espeak-ng", "-v", "es", "-w", str(path), ES_TEXT], check=True)
    return decode_audio(path)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def trim_silence(audio: np.ndarray, threshold: float = 0.01) -> np.ndarray:
    """``audio`` without the quiet tail (so only the no-audio rule can end the utterance)."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    return audio[: loud[-1] + 1] if loud.size else audio


def browser_frames(audio: np.ndarray, rate: int = 48_000, frame_ms: int = 20) -> list[bytes]:
    """``audio`` (16 kHz) as a browser's AudioWorklet sends it: Int16 PCM at 48 kHz in 20 ms
    frames."""
    pcm = float32_to_pcm16(resample(audio, SAMPLE_RATE, rate))
    step = rate * frame_ms // 1000 * 2
    return [pcm[i:i + step] for i in range(0, len(pcm), step)]


async def start_services(settings: Any, manager: Any, mt: Any = None, speech: Any = None
                         ) -> tuple[Any, Any]:
    """The process's streaming and translation services, started on the real models (``mt``:
    a test engine instead of the configured one; ``speech``: a SpeechService of the test's).
    The caller stops the streaming service."""
    from voxgate.speech import SpeechService
    from voxgate.streaming import StreamingService
    from voxgate.translation import TranslationService

    streaming = StreamingService(settings, manager)
    await streaming.start()
    service = TranslationService(settings, manager, streaming,
                                 speech or SpeechService(settings, manager), mt=mt)
    await service.start()
    return streaming, service
