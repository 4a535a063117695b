"""Piper voices (VITS, ONNX) run with ONNX Runtime, without the GPL ``piper-tts`` runtime.

A Piper voice is ``<id>.onnx`` plus ``<id>.onnx.json``. Text becomes IPA phonemes with the
``espeak-ng`` program (GPL, so it runs as a separate process, never linked), phonemes become ids
through the voice's ``phoneme_id_map`` the way Piper trains them (``^`` BOS, ``$`` EOS, ``_`` pad
after every id), and the model turns ids into 16-bit-ready float audio at the voice's rate.

Phonemes keep clause punctuation (``,`` ``;`` ``:`` followed by a space, ``.`` ``!`` ``?`` at
sentence ends) because Piper voices learned pauses and intonation from it. Each sentence is one
model call and one :class:`~voxgate.types.TtsChunk`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import select
import shutil
import subprocess
import threading
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import change_tempo
from ..errors import ConfigError, EngineError, ModelError
from ..types import TtsChunk
from .base import VoiceInfo, check_speed
from .tts_espeak import run_program

__all__ = ["EspeakPhonemizer", "PiperConfig", "PiperTts", "phonemes_to_ids"]

logger = logging.getLogger(__name__)

BOS, EOS, PAD = "^", "$", "_"
_SENTENCE_END = ".!?"
_CLAUSE_END = ",;:"
# a run of punctuation ending a clause: only where whitespace or the end follows, so 3.5,
# 1,000 and e.g. stay inside their clause
_CLAUSE = re.compile(r"(.*?)([.!?;:,\u2026]+)(?=\s|$)|(.+?)$", re.DOTALL)
_LANG_FLAG = re.compile(r"\([^)]*\)")  # espeak's (en)/(fr) language-switch markers
_MODEL_SPEED = (0.5, 2.0)  # speed range done by length_scale; beyond it, a tempo change
_PEAK = 0.95  # per-sentence peak after normalisation (Piper uses 1.0; headroom for lossy codecs)


def _espeak_program() -> str:
    program = shutil.which("espeak-ng")
    if program is None:
        raise ModelError("the espeak-ng program is not installed (Piper voices need it for "
                         "phonemes): apt-get install espeak-ng")
    return program


@dataclass(slots=True)
class _Clause:
    text: str
    terminator: str  # "" or one of .!?,;:


def split_clauses(text: str) -> list[_Clause]:
    """Clauses of ``text`` with the punctuation that ends each (normalised to one character).

    A single ``.`` followed by a lower-case word does not end anything (``e.g. the``,
    ``U.S. army``), as in espeak-ng; what espeak-ng reads as a word keeps its dots.
    """
    clauses: list[_Clause] = []
    carry = ""
    for match in _CLAUSE.finditer(text):
        body = (match.group(1) if match.group(2) else match.group(3) or "").strip()
        marks = match.group(2) or ""
        rest = text[match.end():].lstrip()
        if marks == "." and rest[:1].islower():
            carry = f"{carry} {body}{marks}".strip()
            continue
        body = f"{carry} {body}".strip()
        carry = ""
        terminator = next((c for c in marks if c in _SENTENCE_END + _CLAUSE_END), "")
        if not terminator and "\u2026" in marks:
            terminator = "."
        if not any(ch.isalnum() for ch in body):
            if clauses and terminator and not clauses[-1].terminator:
                clauses[-1].terminator = terminator
            continue
        clauses.append(_Clause(body, terminator))
    if carry:
        clauses.append(_Clause(carry, ""))
    return clauses


class _LineServer:
    """A long-lived ``espeak-ng`` answering one line per input line (saves its ~20 ms start-up
    per sentence). Each exchange ends with a sentinel line whose answer is known; anything
    unexpected (a count mismatch, a timeout, the process gone) kills it, and the caller falls
    back to one process per call."""

    _SENTINEL = "qzxqv"
    _MAX_PAYLOAD = 16_384  # keep well under the pipe buffer: no write/read deadlock

    def __init__(self, argv: list[str], timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self._pending = b""
        self._sentinel_out = ""
        [self._sentinel_out] = self.exchange([], expect_sentinel=False)

    def _read_line(self, deadline: float) -> str:
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0.0))
            if not ready:
                raise TimeoutError("espeak-ng did not answer")
            block = os.read(self.proc.stdout.fileno(), 65536)
            if not block:
                raise EOFError("espeak-ng exited")
            self._pending += block
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("utf-8", "replace")

    def exchange(self, lines: list[str], expect_sentinel: bool = True) -> list[str]:
        payload = "".join(f"{line}\n" for line in [*lines, self._SENTINEL]).encode("utf-8")
        if len(payload) > self._MAX_PAYLOAD:
            raise ValueError("too long for the line server")
        self.proc.stdin.write(payload)
        self.proc.stdin.flush()
        deadline = time.monotonic() + self.timeout_s
        if not expect_sentinel:
            return [self._read_line(deadline)]
        out: list[str] = []
        while (line := self._read_line(deadline)) != self._sentinel_out:
            out.append(line)
            if len(out) > len(lines):
                break
        if len(out) != len(lines):
            raise ValueError("espeak-ng answered a different number of lines")
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
            self.proc.wait(timeout=5)


class EspeakPhonemizer:
    """Text -> IPA phonemes grouped by sentence, from the ``espeak-ng`` program.

    All clauses of a call go in at once, one per line (espeak-ng answers one line per input
    line), to a long-lived espeak-ng process; should anything not line up, that call uses a
    fresh process per call instead, and a clause espeak-ng splits further is asked alone.
    """

    def __init__(self, voice: str, program: str | None = None, timeout_s: float = 60.0) -> None:
        self.voice = voice
        self.program = program or _espeak_program()
        self.timeout_s = timeout_s
        self._argv = [self.program, "-q", "--ipa", "-b", "1", "-v", self.voice]
        self._server: _LineServer | None = None
        self._lock = threading.Lock()

    def _run(self, text: str) -> list[str]:
        out = run_program(self._argv, text.encode("utf-8"), self.timeout_s,
                          f"espeak-ng ({self.voice})")
        return out.decode("utf-8", "replace").splitlines()

    def _served(self, lines: list[str]) -> list[str] | None:
        with self._lock:
            try:
                if self._server is None:
                    self._server = _LineServer(self._argv, min(self.timeout_s, 10.0))
                return self._server.exchange(lines)
            except (OSError, ValueError, EOFError, TimeoutError) as exc:
                logger.debug("espeak-ng line server: %s; one process per call instead", exc)
                if self._server is not None:
                    self._server.close()
                    self._server = None
                return None

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.close()
                self._server = None

    def clause_phonemes(self, clauses: Sequence[_Clause]) -> list[str]:
        """IPA string of each clause (language-switch markers removed)."""
        if not clauses:
            return []
        texts = [" ".join(c.text.split()) for c in clauses]
        lines = self._served(texts)
        if lines is None:
            lines = self._run("\n".join(texts) + "\n")
        if len(lines) != len(clauses):
            lines = [" ".join(x.strip() for x in self._run(text + "\n") if x.strip())
                     for text in texts]
        return [_LANG_FLAG.sub("", line).strip() for line in lines]

    def phonemize(self, text: str) -> list[list[str]]:
        """Phonemes (single code points after NFD, as Piper voices expect) per sentence."""
        return [phonemes for _, phonemes in self.sentences(text)]

    def sentences(self, text: str) -> list[tuple[str, list[str]]]:
        """(sentence text, its phonemes) for each sentence with something to say."""
        clauses = split_clauses(text)
        out: list[tuple[str, list[str]]] = []
        words: list[str] = []
        current: list[str] = []
        for clause, ipa in zip(clauses, self.clause_phonemes(clauses), strict=True):
            words.append(clause.text + clause.terminator)
            if ipa:
                piece = ipa + clause.terminator
                if clause.terminator in _CLAUSE_END or not clause.terminator:
                    piece += " "
                current.extend(unicodedata.normalize("NFD", piece))
            if clause.terminator and clause.terminator in _SENTENCE_END:
                out.append((" ".join(words), current))
                words, current = [], []
        if words:
            while current and current[-1] == " ":
                current.pop()
            out.append((" ".join(words), current))
        return [(sentence, phonemes) for sentence, phonemes in out if phonemes]


def phonemes_to_ids(phonemes: Sequence[str], id_map: dict[str, list[int]]) -> list[int]:
    """Piper's id layout: BOS, pad, then each phoneme's ids followed by pad, then EOS.

    Phonemes the voice does not know are left out (logged at debug level).
    """
    pad = id_map[PAD]
    ids = [*id_map[BOS], *pad]
    for phoneme in phonemes:
        known = id_map.get(phoneme)
        if known is None:
            logger.debug("phoneme %r not in the voice's map; skipped", phoneme)
            continue
        ids.extend(known)
        ids.extend(pad)
    ids.extend(id_map[EOS])
    return ids


@dataclass(slots=True)
class PiperConfig:
    """What voxgate reads from a voice's ``.onnx.json``."""

    sample_rate: int
    espeak_voice: str
    phoneme_id_map: dict[str, list[int]]
    length_scale: float = 1.0
    noise_scale: float = 0.667
    noise_w: float = 0.8
    language: str = ""
    name: str = ""
    num_speakers: int = 1
    speaker_id_map: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path) -> PiperConfig:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            inference = data.get("inference", {})
            if data.get("phoneme_type", "espeak") != "espeak":
                raise ModelError(f"{path}: phoneme_type {data['phoneme_type']!r} is not "
                                 "supported (espeak voices only)")
            language = data.get("language", {}).get("code", "") or data["espeak"]["voice"]
            return cls(
                sample_rate=int(data["audio"]["sample_rate"]),
                espeak_voice=str(data["espeak"]["voice"]),
                phoneme_id_map={k: [int(i) for i in v] for k, v in data["phoneme_id_map"].items()},
                length_scale=float(inference.get("length_scale", 1.0)),
                noise_scale=float(inference.get("noise_scale", 0.667)),
                noise_w=float(inference.get("noise_w", 0.8)),
                language=language.replace("_", "-"),
                name=str(data.get("dataset", "")),
                num_speakers=int(data.get("num_speakers", 1)),
                speaker_id_map={k: int(v) for k, v in data.get("speaker_id_map", {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{path}: not a usable Piper voice config ({exc})") from exc


def _find_voice_files(path: Path) -> tuple[Path, Path]:
    """The ``.onnx`` and its ``.onnx.json`` in a directory (searched recursively) or by file."""
    if path.is_file():
        model = path
    else:
        found = sorted(path.rglob("*.onnx"))
        if len(found) != 1:
            raise ModelError(f"{path}: expected one Piper voice (*.onnx), found {len(found)}")
        model = found[0]
    config = model.with_name(model.name + ".json")
    if not config.is_file():
        raise ModelError(f"{model}: its config {config.name} is missing")
    return model, config


class PiperTts:
    """One Piper voice (multi-speaker voices: each speaker is a voice ``<id>:<speaker>``)."""

    name = "piper"

    def __init__(self, model_path: str | Path, config_path: str | Path | None = None, *,
                 voice_id: str = "", providers: Sequence[str] = ("CPUExecutionProvider",),
                 intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
        import onnxruntime as ort

        model_path = Path(model_path)
        self.model_path = model_path
        self.config = PiperConfig.from_file(Path(config_path) if config_path
                                            else model_path.with_name(model_path.name + ".json"))
        self.voice_id = voice_id or model_path.name.removesuffix(".onnx")
        self.sample_rate = self.config.sample_rate
        self.languages = (self.config.language,)
        self.phonemizer = EspeakPhonemizer(self.config.espeak_voice)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=options,
                                                providers=chosen)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"cannot load Piper voice {model_path}: {exc}") from exc
        self._inputs = {i.name for i in self.session.get_inputs()}

    @classmethod
    def load(cls, resolved: Any, settings: Any) -> PiperTts:
        """Engine for a catalogue voice; checks the pinned sha256 of the voice's config too."""
        model, config = _find_voice_files(Path(resolved.path))
        pinned = resolved.spec.options.get("files_sha256", {}).get(config.name)
        if pinned and hashlib.sha256(config.read_bytes()).hexdigest() != pinned:
            raise ModelError(f"{config}: sha256 differs from the catalogue's; reinstall the voice")
        onnx = settings.onnx
        return cls(model, config, voice_id=resolved.spec.id, providers=onnx.providers,
                   intra_op_threads=onnx.intra_op_threads, inter_op_threads=onnx.inter_op_threads)

    def voices(self) -> list[VoiceInfo]:
        info = VoiceInfo(self.voice_id, self.config.language, self.sample_rate, self.name,
                         model=self.voice_id, name=self.config.name)
        speakers = [VoiceInfo(f"{self.voice_id}:{speaker}", info.language, self.sample_rate,
                              self.name, model=self.voice_id, name=speaker)
                    for speaker in self.config.speaker_id_map]
        return [info, *speakers]

    def _speaker_id(self, voice: str | None) -> int | None:
        if self.config.num_speakers <= 1:
            if voice not in (None, "", self.voice_id):
                raise ConfigError(f"unknown voice {voice!r} for Piper voice {self.voice_id}")
            return None
        if voice in (None, "", self.voice_id):
            return 0
        speaker = voice.removeprefix(f"{self.voice_id}:")
        if speaker not in self.config.speaker_id_map:
            raise ConfigError(f"unknown speaker {speaker!r} of {self.voice_id}; known: "
                              f"{', '.join(self.config.speaker_id_map)}")
        return self.config.speaker_id_map[speaker]

    def close(self) -> None:
        """Stop the espeak-ng helper process (the ModelManager calls this on unload)."""
        self.phonemizer.close()

    def phonemize(self, text: str) -> list[list[str]]:
        """IPA phonemes per sentence, as this voice was trained on."""
        return self.phonemizer.phonemize(text)

    def phoneme_ids(self, phonemes: Sequence[str]) -> list[int]:
        return phonemes_to_ids(phonemes, self.config.phoneme_id_map)

    def synthesize_ids(self, ids: Sequence[int], *, speed: float = 1.0,
                       speaker_id: int | None = None, noise_scale: float | None = None,
                       noise_w: float | None = None) -> np.ndarray:
        """Raw model output (float32, not normalised) for one id sequence."""
        scales = np.array([self.config.noise_scale if noise_scale is None else noise_scale,
                           self.config.length_scale / speed,
                           self.config.noise_w if noise_w is None else noise_w], np.float32)
        feed: dict[str, np.ndarray] = {
            "input": np.asarray([ids], dtype=np.int64),
            "input_lengths": np.asarray([len(ids)], dtype=np.int64),
            "scales": scales,
        }
        if "sid" in self._inputs and speaker_id is not None:
            feed["sid"] = np.asarray([speaker_id], dtype=np.int64)
        try:
            out = self.session.run(None, feed)[0]
        except Exception as exc:  # onnxruntime's runtime errors
            raise EngineError(f"Piper voice {self.voice_id} failed: {exc}") from exc
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def synthesize(self, text: str, voice: str | None = None,
                   speed: float = 1.0) -> Iterator[TtsChunk]:
        """One chunk per sentence of ``text``; each peak-normalised to 0.95.

        ``speed`` within 0.5-2 is the voice's ``length_scale`` (as piper-tts does it: the
        model's phoneme durations scale, pauses less, so 2 gives ~0.63x the duration); beyond
        that range the rest is a pitch-preserving tempo change of the audio.
        """
        speed = check_speed(speed)
        model_speed = min(max(speed, _MODEL_SPEED[0]), _MODEL_SPEED[1])
        speaker_id = self._speaker_id(voice)
        for sentence, phonemes in self.phonemizer.sentences(text):
            audio = self.synthesize_ids(self.phoneme_ids(phonemes), speed=model_speed,
                                        speaker_id=speaker_id)
            if model_speed != speed:
                audio = change_tempo(audio, self.sample_rate, speed / model_speed)
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            if peak < 1e-6:
                continue
            yield TtsChunk(audio * (_PEAK / peak), self.sample_rate, sentence)
