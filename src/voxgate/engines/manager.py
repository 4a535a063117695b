"""ModelManager: one loaded engine per (kind, model id), shared by every session.

Loading is guarded by a per-key lock so concurrent first requests load a model once. Users hold
a reference while they work (``use``); engines idle for longer than the TTL are unloaded by
``sweep`` (the server runs it periodically), never while referenced.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Settings
from ..models import CATALOGUE, ResolvedModel, resolve
from . import load_engine_class

__all__ = ["ModelManager", "LoadedEngine", "EngineLoader"]

logger = logging.getLogger(__name__)

EngineLoader = Callable[[str, str], tuple[Any, ResolvedModel | None]]


@dataclass(slots=True)
class LoadedEngine:
    kind: str
    model_id: str
    engine: Any
    resolved: ResolvedModel | None
    load_seconds: float
    refs: int = 0
    last_used: float = field(default_factory=time.monotonic)


class ModelManager:
    """Loads engines on first use and shares them. Thread-safe."""

    def __init__(self, settings: Settings, loader: EngineLoader | None = None) -> None:
        self.settings = settings
        self._loader = loader or self._load_from_catalogue
        self._entries: dict[tuple[str, str], LoadedEngine] = {}
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()
        # (event, kind, model id) -> count; event: load, load_failed, unload_idle, unload_close
        self._events: Counter[tuple[str, str, str]] = Counter()

    def _load_from_catalogue(self, kind: str, model_id: str) -> tuple[Any, ResolvedModel]:
        resolved = resolve(model_id, self.settings.cache_dir, offline=self.settings.offline)
        spec = resolved.spec
        if spec.kind != kind:
            from ..errors import ModelError

            raise ModelError(f"model {model_id!r} is a {spec.kind} model, not {kind}")
        cls = load_engine_class(kind, spec.engine)
        return cls.load(resolved, self.settings), resolved

    def get(self, kind: str, model_id: str) -> Any:
        """The shared engine for ``model_id``, loading it on first use."""
        return self._entry(kind, model_id).engine

    def _entry(self, kind: str, model_id: str, hold: bool = False) -> LoadedEngine:
        """The entry for a key, loading it once; ``hold`` takes a reference atomically, so a
        concurrent ``sweep`` can never unload it between lookup and use."""
        key = (kind, self._canonical(model_id))
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                return self._touch(entry, hold)
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    return self._touch(entry, hold)
            started = time.perf_counter()
            try:
                engine, resolved = self._loader(kind, key[1])
            except Exception:
                self._count("load_failed", kind, key[1])
                raise
            entry = LoadedEngine(kind, key[1], engine, resolved, time.perf_counter() - started)
            logger.info("loaded %s model %s in %.2fs", kind, key[1], entry.load_seconds)
            with self._lock:
                self._entries[key] = entry
                self._events["load", kind, key[1]] += 1
                return self._touch(entry, hold)

    @staticmethod
    def _touch(entry: LoadedEngine, hold: bool) -> LoadedEngine:
        entry.last_used = time.monotonic()
        if hold:
            entry.refs += 1
        return entry

    @staticmethod
    def _canonical(model_id: str) -> str:
        """One key per model: an alias -> its catalogue id, a local directory -> its resolved
        path (``./m``, ``m/`` and ``/abs/m`` share one loaded copy); else as given."""
        spec = CATALOGUE.get(model_id)
        if spec is not None:
            return spec.id
        local = Path(model_id).expanduser()
        if os.sep in model_id or model_id.startswith((".", "~")) or local.is_dir():
            return str(local.resolve())
        return model_id  # an unknown id: the loader reports it

    @contextmanager
    def use(self, kind: str, model_id: str) -> Iterator[Any]:
        """Hold a reference while working so ``sweep`` never unloads the engine under you."""
        entry = self._entry(kind, model_id, hold=True)
        try:
            yield entry.engine
        finally:
            with self._lock:
                entry.refs -= 1
                entry.last_used = time.monotonic()

    def resolved(self, kind: str, model_id: str) -> ResolvedModel | None:
        """Where the loaded model came from (id, source, sha256) for version records."""
        return self._entry(kind, model_id).resolved

    def asr(self, model_id: str | None = None) -> Any:
        return self.get("asr", model_id or self.settings.asr.model)

    def vad(self, model_id: str = "silero-vad") -> Any:
        return self.get("vad", model_id)

    def loaded(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"kind": e.kind, "model": e.model_id, "refs": e.refs,
                 "idle_s": round(time.monotonic() - e.last_used, 1),
                 "load_s": round(e.load_seconds, 3)}
                for e in self._entries.values()
            ]

    def sweep(self, ttl_s: float | None = None) -> list[str]:
        """Unload engines unused for ``ttl_s`` (default: settings) and not referenced."""
        ttl = self.settings.model_idle_ttl_s if ttl_s is None else ttl_s
        if ttl <= 0 and ttl_s is None:
            return []
        now = time.monotonic()
        dropped: list[LoadedEngine] = []
        with self._lock:
            for key, entry in list(self._entries.items()):
                if entry.refs == 0 and now - entry.last_used >= ttl:
                    dropped.append(self._entries.pop(key))
        for entry in dropped:
            self._close(entry)
            self._count("unload_idle", entry.kind, entry.model_id)
            logger.info("unloaded idle %s model %s", entry.kind, entry.model_id)
        return [e.model_id for e in dropped]

    def close(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            self._close(entry)
            self._count("unload_close", entry.kind, entry.model_id)

    def _count(self, event: str, kind: str, model_id: str) -> None:
        with self._lock:
            self._events[event, kind, model_id] += 1

    def events(self) -> dict[tuple[str, str, str], int]:
        """How often each (event, kind, model id) happened since start: ``load``,
        ``load_failed``, ``unload_idle`` (the TTL sweep), ``unload_close`` (shutdown). Read by
        ``/metrics``; engines stay free of any metrics library."""
        with self._lock:
            return dict(self._events)

    @staticmethod
    def _close(entry: LoadedEngine) -> None:
        closer = getattr(entry.engine, "close", None)
        if callable(closer):
            closer()
