"""What every speech-out door shares: one SpeechService, one concurrency bound, voice policy.

The OpenAI ``/v1/audio/speech``, Riva ``RivaSpeechSynthesis`` and Wyoming ``synthesize`` doors
speak through the app's one :class:`~voxgate.speech.SpeechService` (so a voice model is loaded
once), count their work against one server-wide bound (``VOXGATE_TTS__MAX_CONCURRENT``) and
resolve a client's voice name under one policy: a network client names a voice the server
lists, a catalogue TTS model the model policy offers, or one of OpenAI's voice names (mapped by
``VOXGATE_TTS__OPENAI_VOICES``); never a path or a hub voice that would start a download.
"""

from __future__ import annotations

from ..engines.base import VoiceInfo
from ..errors import ConfigError, ModelError
from ..speech import SpeechService
from .limits import TranscriptionSlots, shared_slots
from .model_cards import client_model_id
from .state import AppState

__all__ = ["OPENAI_VOICES", "OPENAI_TTS_MODELS", "client_voice", "language_tag", "speech_service",
           "speech_slots", "voice_for_language"]

_SERVICE_KEY = "speech-service"
_SLOTS_KEY = "speech-slots"
# OpenAI's TTS model names: all stand for the server's default voice model
OPENAI_TTS_MODELS = frozenset({"tts-1", "tts-1-hd", "gpt-4o-mini-tts"})
# OpenAI's voice names (2025): each maps to an installed voice (VOXGATE_TTS__OPENAI_VOICES)
OPENAI_VOICES = ("alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova",
                 "onyx", "sage", "shimmer", "verse")
_SHOWN_VOICES = 12  # an "unknown voice" message names this many, then points at the listing


def speech_service(state: AppState) -> SpeechService:
    """The app's one SpeechService (sharing the app's ModelManager), created on first use."""
    service = state.components.get(_SERVICE_KEY)
    if service is None:
        service = state.components[_SERVICE_KEY] = SpeechService(state.settings, state.manager)
    return service


def speech_slots(state: AppState) -> TranscriptionSlots:
    """Server-wide bound on syntheses running at once, shared by every speech-out door."""
    return shared_slots(state, _SLOTS_KEY, state.settings.tts.max_concurrent)


def client_voice(state: AppState, voice: str | None, model: str | None = None) -> str:
    """The voice id a network client's ``voice`` (and OpenAI ``model``) stands for.

    ``voice`` may be a listed voice id (``GET /v1/audio/voices``), an OpenAI voice name, or a
    catalogue TTS model id/alias the model policy offers (its default voice). ``model`` may be
    an OpenAI TTS model name (the default voice model) or a catalogue TTS id: with an OpenAI
    voice name it selects that model's default voice. Raises ConfigError (unknown voice, with
    the voices) or ModelError (model not offered). Blocking on first use (lists voices).
    """
    service = speech_service(state)
    listed = service.voices()
    ids = {v.id for v in listed}
    model_id = None
    if model and model not in OPENAI_TTS_MODELS:
        model_id = client_model_id(state.settings, model, "tts")
    name = (voice or "").strip()
    if not name or name.lower() in OPENAI_VOICES:
        if model_id is not None:
            return model_id
        mapped = state.settings.tts.openai_voices.get(name.lower(), "")
        return mapped if mapped in ids else state.settings.tts.voice
    if name in ids:
        return name
    try:
        return client_model_id(state.settings, name, "tts")
    except (ModelError, ConfigError):
        raise ConfigError(_unknown_voice(name, listed)) from None


def _unknown_voice(name: str, listed: list[VoiceInfo]) -> str:
    shown = name if len(name) <= 80 else name[:77] + "..."
    names = [v.id for v in listed[:_SHOWN_VOICES]]
    more = len(listed) - len(names)
    tail = f" and {more} more (GET /v1/audio/voices)" if more > 0 else ""
    return f"unknown voice {shown!r}; voices: {', '.join(names)}{tail}"


def language_tag(language: str) -> str:
    """A voice's language as a BCP-47 tag (``en-us`` / ``en_US`` -> ``en-US``, ``hi`` -> ``hi``)."""
    parts = language.strip().replace("_", "-").split("-")
    parts[0] = parts[0].lower()
    if len(parts) > 1 and len(parts[1]) == 2 and parts[1].isalpha():
        parts[1] = parts[1].upper()
    return "-".join(parts)


def voice_for_language(voices: list[VoiceInfo], language: str) -> VoiceInfo | None:
    """The voice to speak ``language`` with (Riva ``language_code``, Wyoming ``voice.language``):
    an exact tag match before a primary-language match (``ru-RU`` -> a ``ru`` voice); within
    each, the listing's order (the default voice first) with espeak-ng, the last resort, last."""
    wanted = language_tag(language)
    primary = wanted.split("-")[0]
    for match in (lambda v: language_tag(v.language) == wanted,
                  lambda v: language_tag(v.language).split("-")[0] == primary):
        found = sorted((v for v in voices if match(v)), key=lambda v: v.engine == "espeak")
        if found:
            return found[0]
    return None
