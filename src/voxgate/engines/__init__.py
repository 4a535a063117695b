"""Engine registry: kind -> engine name -> ``"module:Class"``, imported lazily.

A backend's heavy dependencies are imported only when that backend is used; a missing optional
dependency raises :class:`~voxgate.errors.MissingExtraError` naming the ``pip install`` that fixes it.
Every engine class offers ``load(resolved: ResolvedModel, settings: Settings)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import MissingExtraError, ModelError

__all__ = ["EngineEntry", "REGISTRY", "load_engine_class", "engine_names"]


@dataclass(frozen=True, slots=True)
class EngineEntry:
    target: str  # "module:Class"
    extra: str  # voxgate extra that provides its dependencies


REGISTRY: dict[str, dict[str, EngineEntry]] = {
    "asr": {
        "whisper": EngineEntry("voxgate.engines.asr_whisper:WhisperAsr", "models-en"),
        "parakeet": EngineEntry("voxgate.engines.asr_parakeet:ParakeetAsr", "parakeet"),
        "riva": EngineEntry("voxgate.engines.asr_riva:RivaAsr", "grpc"),
    },
    "vad": {
        "silero": EngineEntry("voxgate.engines.vad_silero:SileroVad", "models-en"),
    },
    "tts": {
        "piper": EngineEntry("voxgate.engines.tts_piper:PiperTts", "tts"),
        "festival": EngineEntry("voxgate.engines.tts_festival:FestivalTts", "tts"),
        "espeak": EngineEntry("voxgate.engines.tts_espeak:EspeakTts", "tts"),
        "riva": EngineEntry("voxgate.engines.tts_riva:RivaTts", "grpc"),
    },
    "llm": {
        "llamacpp": EngineEntry("voxgate.engines.llm_llamacpp:LlamaCppLlm", "llm"),
        "openai": EngineEntry("voxgate.engines.llm_openai:OpenAiLlm", "llm"),
    },
    "mt": {
        "llm": EngineEntry("voxgate.engines.mt_llm:LlmMt", "llm"),
        "riva": EngineEntry("voxgate.engines.mt_riva:RivaMt", "grpc"),
    },
}


def engine_names(kind: str) -> list[str]:
    return sorted(REGISTRY.get(kind, {}))


def load_engine_class(kind: str, name: str) -> type:
    """Import and return the engine class registered as ``kind``/``name``."""
    entry = REGISTRY.get(kind, {}).get(name)
    if entry is None:
        raise ModelError(f"unknown {kind} engine {name!r}; known: {', '.join(engine_names(kind))}")
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (exc.name == module_name or module_name.startswith(exc.name + ".")):
            raise ModelError(f"{kind} engine {name!r} is not part of this voxgate build") from exc
        raise MissingExtraError(f"the {kind} engine {name!r}", entry.extra, exc) from exc
    return getattr(module, class_name)
