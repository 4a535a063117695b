"""What ``GET /v1/models`` says about each catalogue model.

Each card is OpenAI's model object (``id``, ``object``, ``created``, ``owned_by``) plus what
voxgate's own clients need to pick an engine: kind, engine, languages, licence, whether the
files are installed here or resolvable at all, whether it is loaded, and its capabilities.
Listing never loads or joins a model: it only looks at what is on disk.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from ..config import Settings
from ..engines.manager import ModelManager
from ..errors import ModelError
from ..languages import WHISPER_LANGUAGES
from ..models import HubSource, ModelSpec, get_spec, installed_packs, list_specs

__all__ = ["OPENAI_ALIASES", "canonical_model_id", "model_card", "model_cards", "model_languages"]

# OpenAI's model names that map to the server's default model of that kind.
OPENAI_ALIASES: dict[str, str] = {"whisper-1": "asr"}

# What an engine can do when it is not loaded yet (a loaded engine reports its own).
_ENGINE_CAPABILITIES: dict[tuple[str, str], dict[str, Any]] = {
    ("asr", "whisper"): {"batch": True, "streaming": False, "word_timestamps": True,
                         "translate": True, "language_detection": True},
    ("asr", "parakeet"): {"batch": True, "streaming": False, "word_timestamps": True,
                          "translate": False, "language_detection": False},
    ("asr", "riva"): {"batch": True, "streaming": True, "word_timestamps": True,
                      "translate": False, "language_detection": False},
    ("vad", "silero"): {"speech_spans": True, "stream": True},
}
_KIND_CAPABILITIES: dict[str, dict[str, Any]] = {
    "tts": {"synthesize": True, "streaming": True},
    "llm": {"chat": True, "streaming": True, "json_schema": True},
    "mt": {"translate_text": True},
}


def _default_model(settings: Settings, kind: str) -> str | None:
    if kind == "asr":
        return settings.asr.model
    if kind == "llm":
        return settings.llm.model
    return None


def canonical_model_id(settings: Settings, model_id: str) -> str:
    """``whisper-1`` -> the default ASR model id; catalogue aliases -> their ids.

    Raises :class:`ModelError` for an unknown id (local paths are not accepted over the network).
    """
    kind = OPENAI_ALIASES.get(model_id)
    if kind is not None:
        model_id = _default_model(settings, kind) or model_id
    return get_spec(model_id).id


def _multilingual(spec: ModelSpec) -> bool:
    return "multilingual" in spec.languages


def model_languages(spec: ModelSpec) -> list[str]:
    """Language codes a model accepts (a multilingual Whisper: every Whisper language)."""
    if spec.engine == "whisper" and _multilingual(spec):
        return list(WHISPER_LANGUAGES)
    return list(spec.languages)


def _hub_cached(source: HubSource, cache_dir: Path) -> bool:
    """A hub snapshot already downloaded into our cache (huggingface_hub's layout)."""
    folder = cache_dir / "hub" / f"models--{source.repo.replace('/', '--')}" / "snapshots"
    return folder.is_dir() and any(folder.iterdir())


def _capabilities(spec: ModelSpec, manager: ModelManager) -> dict[str, Any]:
    loaded = _loaded_engine(spec, manager)
    caps = getattr(loaded, "capabilities", None)
    if is_dataclass(caps):
        return {f.name: getattr(caps, f.name) for f in fields(caps) if f.name != "languages"}
    declared = spec.options.get("capabilities")
    if isinstance(declared, dict):
        return dict(declared)
    result = dict(_ENGINE_CAPABILITIES.get((spec.kind, spec.engine),
                                           _KIND_CAPABILITIES.get(spec.kind, {})))
    if spec.kind == "asr" and spec.engine == "whisper" and not _multilingual(spec):
        result.update(translate=False, language_detection=False)
    return result


def _loaded_engine(spec: ModelSpec, manager: ModelManager) -> Any:
    for entry in manager.loaded():
        if entry["kind"] == spec.kind and entry["model"] == spec.id:
            try:
                return manager.get(spec.kind, spec.id)
            except ModelError:
                return None
    return None


def _card(spec: ModelSpec, settings: Settings, manager: ModelManager,
          packs: dict[str, bool], loaded: set[tuple[str, str]]) -> dict[str, Any]:
    hub = [s for s in spec.sources if isinstance(s, HubSource)]
    installed = packs.get(spec.id, False) or any(_hub_cached(s, settings.cache_dir) for s in hub)
    return {
        "id": spec.id,
        "object": "model",
        "created": 0,
        "owned_by": "voxgate",
        "kind": spec.kind,
        "engine": spec.engine,
        "description": spec.description,
        "license": spec.license,
        "languages": list(spec.languages),
        "aliases": list(spec.aliases),
        "installed": installed,
        "resolvable": installed or (bool(hub) and not settings.offline),
        "loaded": (spec.kind, spec.id) in loaded,
        "default": _default_model(settings, spec.kind) == spec.id,
        "capabilities": _capabilities(spec, manager),
    }


def model_cards(settings: Settings, manager: ModelManager) -> list[dict[str, Any]]:
    """Every catalogue model, then OpenAI's aliases (``whisper-1``) pointing at the defaults."""
    specs = list_specs()
    packs = installed_packs(specs)
    loaded = {(e["kind"], e["model"]) for e in manager.loaded()}
    cards = [_card(s, settings, manager, packs, loaded) for s in specs]
    by_id = {c["id"]: c for c in cards}
    for alias, kind in OPENAI_ALIASES.items():
        target = by_id.get(_default_model(settings, kind) or "")
        if target is not None:
            cards.append({**target, "id": alias, "alias_of": target["id"], "default": False})
    return cards


def model_card(settings: Settings, manager: ModelManager, model_id: str) -> dict[str, Any]:
    """One card by id, alias or OpenAI name; :class:`ModelError` when unknown."""
    spec = get_spec(canonical_model_id(settings, model_id))
    packs = installed_packs([spec])
    loaded = {(e["kind"], e["model"]) for e in manager.loaded()}
    card = _card(spec, settings, manager, packs, loaded)
    if model_id in OPENAI_ALIASES:
        card.update(id=model_id, alias_of=spec.id, default=False)
    return card

