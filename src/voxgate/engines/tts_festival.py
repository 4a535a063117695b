"""Festival voices through its ``text2wave`` program (Debian ``festival``).

Offline voices: ``cmu_us_slt_arctic_hts`` (English, Debian ``festvox-us-slt-hts``) and
``msu_ru_nsh_clunits`` (Russian, ``festvox-ru``; the only offline Russian voice). Each call runs
``text2wave`` once (about 0.4-0.8 s of start-up with the voice load), so speech.py's sentence
splitting keeps chunks short. Speed is a pitch-preserving tempo change of the audio
(``audio.change_tempo``): Festival's ``Duration_Stretch`` has no effect on HTS voices.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audio import change_tempo, decode_audio_native
from ..errors import AudioError, ConfigError, ModelError
from ..types import TtsChunk
from .base import VoiceInfo, check_speed
from .tts_espeak import run_program

__all__ = ["FESTIVAL_VOICES", "FestivalTts"]

logger = logging.getLogger(__name__)

PREFIX = "festival:"
VOICE_ROOT = Path("/usr/share/festival/voices")


@dataclass(frozen=True, slots=True)
class _Voice:
    name: str  # Festival's voice name (its voice_<name> function)
    language: str
    sample_rate: int
    gender: str
    package: str  # Debian package that installs it


FESTIVAL_VOICES = {
    "cmu_us_slt_arctic_hts": _Voice("cmu_us_slt_arctic_hts", "en-US", 32_000, "female",
                                    "festvox-us-slt-hts"),
    "msu_ru_nsh_clunits": _Voice("msu_ru_nsh_clunits", "ru", 16_000, "male", "festvox-ru"),
}


class FestivalTts:
    """Festival voices, ids ``festival:<voice name>``; the default is the first installed one
    in ``FESTIVAL_VOICES`` order unless ``default_voice`` names another."""

    name = "festival"

    def __init__(self, program: str | None = None, default_voice: str = "",
                 voice_root: Path = VOICE_ROOT, timeout_s: float = 120.0) -> None:
        found = program or shutil.which("text2wave")
        if not found or not shutil.which(found):
            raise ModelError("the Festival program text2wave is not installed: "
                             "apt-get install festival festvox-us-slt-hts festvox-ru")
        self.program = found
        self.timeout_s = timeout_s
        self.installed = [v for v in FESTIVAL_VOICES.values()
                          if any(voice_root.glob(f"*/{v.name}"))]
        if not self.installed:
            raise ModelError("no Festival voice is installed: apt-get install "
                             + " ".join(v.package for v in FESTIVAL_VOICES.values()))
        self.default = self._voice(default_voice) if default_voice else self.installed[0]
        self.sample_rate = self.default.sample_rate
        self.languages = tuple(v.language for v in self.installed)

    @classmethod
    def load(cls, resolved: Any, settings: Any) -> FestivalTts:
        return cls(str(resolved.path), default_voice=settings.tts.festival_voice)

    def voices(self) -> list[VoiceInfo]:
        ordered = [self.default, *(v for v in self.installed if v is not self.default)]
        return [VoiceInfo(PREFIX + v.name, v.language, v.sample_rate, self.name,
                          model="festival", name=v.name, gender=v.gender) for v in ordered]

    def _voice(self, voice: str | None) -> _Voice:
        if not voice:
            return self.default
        name = voice.removeprefix(PREFIX)
        known = FESTIVAL_VOICES.get(name)
        if known is None:
            raise ConfigError(f"unknown Festival voice {voice!r}; known: "
                              f"{', '.join(PREFIX + v for v in FESTIVAL_VOICES)}")
        if known not in self.installed:
            raise ModelError(f"Festival voice {name} is not installed: "
                             f"apt-get install {known.package}")
        return known

    def synthesize(self, text: str, voice: str | None = None,
                   speed: float = 1.0) -> Iterator[TtsChunk]:
        """One chunk for ``text`` at the voice's own rate."""
        speed = check_speed(speed)
        chosen = self._voice(voice)
        wav = run_program([self.program, "-eval", f"(voice_{chosen.name})"],
                          text.encode("utf-8"), self.timeout_s, f"Festival ({chosen.name})")
        if not wav:  # it ran and exited 0 (run_program raises otherwise), e.g. for "¹" alone:
            logger.debug("Festival wrote nothing for %r", text[:80])  # nothing it could say;
            return  # the caller skips the sentence (and says so when nothing at all was said)
        try:
            audio, rate = decode_audio_native(wav)
        except AudioError:  # a header without samples: nothing the voice could say
            logger.debug("Festival produced no audio for %r", text[:80])
            return
        if speed != 1.0:
            audio = change_tempo(audio, rate, speed)
        yield TtsChunk(audio, rate, text)
