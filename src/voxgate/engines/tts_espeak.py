"""eSpeak NG voices: every language the ``espeak-ng`` program has (Hindi included).

Formant synthesis: robotic but small, fast and everywhere, so it is the last-resort fallback
for languages no neural voice covers. espeak-ng is GPL-3.0: voxgate only runs the program as a
separate process (Debian package ``espeak-ng``) and reads the WAV it writes.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

from ..audio import change_tempo, decode_audio
from ..errors import AudioError, ConfigError, EngineError, ModelError
from ..types import TtsChunk
from .base import VoiceInfo, check_speed

__all__ = ["EspeakTts", "run_program"]

logger = logging.getLogger(__name__)

_RATE = 22_050  # espeak-ng's output rate
_WPM = 175  # espeak-ng's default speaking rate (words per minute) = speed 1.0
_WPM_MIN, _WPM_MAX = 80, 450  # what espeak-ng accepts; beyond: a tempo change on the audio
PREFIX = "espeak:"


def run_program(argv: list[str], data: bytes, timeout_s: float, what: str) -> bytes:
    """Run a speech program with ``data`` on stdin; its stdout, or EngineError naming ``what``
    with the program's last stderr line."""
    try:
        done = subprocess.run(argv, input=data, capture_output=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"{what} took longer than {timeout_s:g} s") from exc
    except OSError as exc:
        raise EngineError(f"{what} could not start: {exc}") from exc
    if done.returncode != 0:
        reason = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise EngineError(f"{what} failed: {reason[-1] if reason else done.returncode}")
    return done.stdout


class EspeakTts:
    """The espeak-ng program; voices are its languages, ids ``espeak:<code>`` (e.g. ``espeak:hi``)."""

    name = "espeak"
    sample_rate = _RATE

    def __init__(self, program: str | None = None, default_voice: str = "en-us",
                 timeout_s: float = 120.0) -> None:
        found = program or shutil.which("espeak-ng")
        if not found or not shutil.which(found):
            raise ModelError("the espeak-ng program is not installed: apt-get install espeak-ng")
        self.program = found
        self.timeout_s = timeout_s
        self._voices = self._list_voices()
        self.languages = tuple(v.language for v in self._voices)
        self.default_voice = self._voice_code(default_voice)
        self._voices.sort(key=lambda v: v.language != self.default_voice)

    @classmethod
    def load(cls, resolved: Any, settings: Any) -> EspeakTts:
        return cls(str(resolved.path), default_voice=settings.tts.espeak_voice)

    def _list_voices(self) -> list[VoiceInfo]:
        done = self._run(["--voices"], b"")
        voices: dict[str, VoiceInfo] = {}
        for line in done.decode("utf-8", "replace").splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4:
                continue
            code, gender, name = fields[1], fields[2].rpartition("/")[2], fields[3]
            voices.setdefault(code, VoiceInfo(
                PREFIX + code, code, _RATE, self.name, model="espeak",
                name=name.replace("_", " "), gender={"M": "male", "F": "female"}.get(gender, "")))
        if not voices:
            raise ModelError("espeak-ng lists no voices: reinstall espeak-ng-data")
        return list(voices.values())

    def voices(self) -> list[VoiceInfo]:
        return list(self._voices)

    def _voice_code(self, voice: str | None) -> str:
        if not voice:
            return getattr(self, "default_voice", "en-us")
        code = voice.removeprefix(PREFIX)
        for info in self._voices:
            if info.language.lower() == code.lower():
                return info.language
        raise ConfigError(f"unknown espeak-ng voice {voice!r}; known: "
                          f"{', '.join(v.id for v in self._voices)}")

    def _run(self, args: list[str], text: bytes) -> bytes:
        return run_program([self.program, *args], text, self.timeout_s, "espeak-ng")

    def synthesize(self, text: str, voice: str | None = None,
                   speed: float = 1.0) -> Iterator[TtsChunk]:
        """One chunk for ``text``; speed through espeak-ng's rate, a tempo change past it."""
        speed = check_speed(speed)
        code = self._voice_code(voice)
        wpm = min(max(round(_WPM * speed), _WPM_MIN), _WPM_MAX)
        wav = self._run(["-v", code, "-s", str(wpm), "-b", "1", "--stdout"],
                        text.encode("utf-8"))
        try:
            audio = decode_audio(wav, sample_rate=_RATE)
        except AudioError:  # no samples: nothing in the text espeak-ng could say
            logger.debug("espeak-ng produced no audio for %r", text[:80])
            return
        residual = speed * _WPM / wpm
        if abs(residual - 1.0) > 0.01:
            audio = change_tempo(audio, _RATE, residual)
        yield TtsChunk(audio, _RATE, text)
