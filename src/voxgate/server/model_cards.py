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
from ..engines import load_engine_class
from ..engines.manager import ModelManager
from ..errors import ConfigError, ModelError, VoxgateError
from ..languages import WHISPER_LANGUAGES
from ..models import CATALOGUE, HubSource, ModelSpec, get_spec, installed_packs, list_specs

__all__ = ["OPENAI_ALIASES", "canonical_model_id", "client_model_id", "model_card", "model_cards",
           "model_languages"]

# OpenAI's model names that map to the server's default model of that kind.
OPENAI_ALIASES: dict[str, str] = {"whisper-1": "asr"}

# What a kind of model offers when its engine declares nothing more specific.
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


def _configured(settings: Settings) -> set[str]:
    """Models the operator chose in settings (ids, aliases or local directories), the voice
    agent's own choices included (VOXGATE_AGENT__ASR_MODEL etc.: an agent session's stream
    goes through the same client policy)."""
    agent = settings.agent
    chosen = {settings.asr.model, settings.asr.partial_model, settings.llm.model,
              agent.asr_model, agent.partial_model, agent.llm_model}
    return {name for name in chosen if name}


def _installed(spec: ModelSpec, settings: Settings) -> bool:
    hub = [s for s in spec.sources if isinstance(s, HubSource)]
    return installed_packs([spec])[spec.id] or any(_hub_cached(s, settings.cache_dir)
                                                   for s in hub)


def _client_may_use(spec: ModelSpec, settings: Settings) -> bool:
    allowed = settings.allowed_models
    if "*" in allowed:
        return True
    configured = _configured(settings)
    if any(name in configured for name in (spec.id, *spec.aliases)):
        return True
    if allowed:
        return any(name in allowed for name in (spec.id, *spec.aliases))
    return _installed(spec, settings)


def client_model_id(settings: Settings, name: str, kind: str = "asr") -> str:
    """The model a network client's ``name`` stands for, under the operator's policy.

    Clients name catalogue ids and aliases (``whisper-1``: the default ASR model), never a path
    or a hub repo: a name that is not one is refused with one message, the same whether or not
    a directory of that name exists. Without ``VOXGATE_ALLOWED_MODELS`` a client may pick the
    configured models and installed ones (nothing is downloaded for a client); with it, the
    configured models and those listed (``*``: every catalogue model, downloads included).
    A configured local directory is used when the client names it or its OpenAI alias.
    Raises :class:`ModelError` (not offered) or :class:`ConfigError` (another kind of model).
    """
    alias_kind = OPENAI_ALIASES.get(name)
    if alias_kind is not None:
        name = _default_model(settings, alias_kind) or name
    spec = None
    if name in CATALOGUE:
        spec = CATALOGUE[name]
    elif name in _configured(settings):  # the operator's own local directory
        return name
    if spec is None or not _client_may_use(spec, settings):
        offered = sorted(s.id for s in list_specs(kind) if _client_may_use(s, settings))
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise ModelError(f"model {shown!r} is not offered by this server; choose one of: "
                         f"{', '.join(offered) or '(none)'}")
    if spec.kind != kind:
        raise ConfigError(f"model {spec.id!r} is a {spec.kind} model, not {_KIND_NAMES[kind]}")
    return spec.id


_KIND_NAMES = {"asr": "speech recognition", "vad": "voice activity detection",
               "tts": "speech synthesis", "llm": "a language model", "mt": "translation"}


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
    try:  # ask the engine (imports its module, loads nothing)
        of = getattr(load_engine_class(spec.kind, spec.engine), "capabilities_of", None)
    except VoxgateError:  # the engine's extra is not installed here
        of = None
    if of is not None:
        caps = of(spec)
        return {f.name: getattr(caps, f.name) for f in fields(caps) if f.name != "languages"}
    return dict(_KIND_CAPABILITIES.get(spec.kind, {}))


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

