"""ModelManager: one shared engine per key, thread-safe first use, idle unload; engine registry."""

from __future__ import annotations

import threading
import time

import pytest

from voxgate.engines import REGISTRY, EngineEntry, load_engine_class
from voxgate.engines.manager import ModelManager
from voxgate.errors import MissingExtraError, ModelError


class _Engine:
    def __init__(self, key: str) -> None:
        self.key = key
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _slow_loader(calls: list[str]):
    def load(kind: str, model_id: str):
        calls.append(f"{kind}:{model_id}")
        time.sleep(0.2)  # a slow load widens the race window for concurrent first use
        return _Engine(model_id), None
    return load


def test_one_instance_per_key_under_concurrent_first_use(settings) -> None:
    calls: list[str] = []
    manager = ModelManager(settings, loader=_slow_loader(calls))
    barrier = threading.Barrier(8)
    got: list[object] = []

    def use(model_id: str) -> None:
        barrier.wait()
        got.append(manager.get("asr", model_id))

    threads = [threading.Thread(target=use, args=("m1" if i % 2 else "m2",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(calls) == ["asr:m1", "asr:m2"]  # each loaded once
    assert len({id(e) for e in got}) == 2
    # two keys load in parallel (per-key locks), not one after the other
    assert len(manager.loaded()) == 2


def test_aliases_share_the_catalogue_entry(settings) -> None:
    calls: list[str] = []
    manager = ModelManager(settings, loader=_slow_loader(calls))
    assert manager.get("asr", "base") is manager.get("asr", "whisper-base")
    assert calls == ["asr:whisper-base"]


def test_spellings_of_one_local_directory_share_one_engine(settings, tmp_path, monkeypatch) -> None:
    calls: list[str] = []
    manager = ModelManager(settings, loader=_slow_loader(calls))
    (tmp_path / "m").mkdir()
    (tmp_path / "other").mkdir()
    monkeypatch.chdir(tmp_path)
    spellings = [str(tmp_path / "m"), f"{tmp_path}/m/", f"{tmp_path}/other/../m", "./m", "m"]
    engines = {id(manager.get("asr", s)) for s in spellings}
    assert len(engines) == 1 and calls == [f"asr:{(tmp_path / 'm').resolve()}"]
    assert [e["model"] for e in manager.loaded()] == [str((tmp_path / "m").resolve())]


def test_sweep_unloads_only_idle_unreferenced_engines(settings) -> None:
    manager = ModelManager(settings, loader=_slow_loader([]))
    idle = manager.get("asr", "idle")
    with manager.use("asr", "busy") as busy:
        assert manager.sweep(ttl_s=0.0) == ["idle"]  # busy is referenced
        assert idle.closed and not busy.closed
        assert [e["model"] for e in manager.loaded()] == ["busy"]
        assert manager.loaded()[0]["refs"] == 1
    assert manager.sweep(ttl_s=3600) == []  # just used: not idle yet
    assert manager.sweep(ttl_s=0.0) == ["busy"] and busy.closed
    fresh = manager.get("asr", "idle")  # reloads on next use
    assert fresh is not idle and not fresh.closed
    assert settings.model_idle_ttl_s == 0 and manager.sweep() == []  # 0: keep forever
    manager.close()
    assert fresh.closed and manager.loaded() == []


def test_real_models_are_shared(manager) -> None:
    """The session manager hands every caller the same loaded Whisper and Silero."""
    assert manager.asr() is manager.asr("whisper-base")
    assert manager.vad() is manager.get("vad", "silero-vad")
    assert manager.resolved("asr", "whisper-base").sha256.startswith("d01c3014")
    assert manager.asr().capabilities.translate and manager.asr().capabilities.word_timestamps


def test_real_concurrent_first_use(settings) -> None:
    manager = ModelManager(settings)
    barrier = threading.Barrier(4)
    got: list[object] = []

    def use() -> None:
        barrier.wait()
        got.append(manager.vad())

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and len({id(v) for v in got}) == 1
    manager.close()


def test_wrong_kind_and_unknown_model(manager) -> None:
    with pytest.raises(ModelError, match="is a vad model, not asr"):
        manager.get("asr", "silero-vad")
    with pytest.raises(ModelError, match="unknown model"):
        manager.get("asr", "nope-model")


def test_missing_extra_names_the_pip_install(tmp_path, monkeypatch) -> None:
    """A backend whose dependency is not installed: the error says which extra fixes it."""
    (tmp_path / "vg_needs_missing_dep.py").write_text(
        "import vg_dependency_that_is_not_installed  # noqa: F401\nclass Engine: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(REGISTRY["tts"], "vg-test",
                        EngineEntry("vg_needs_missing_dep:Engine", "tts"))
    with pytest.raises(MissingExtraError) as info:
        load_engine_class("tts", "vg-test")
    assert "pip install 'voxgate[tts]'" in str(info.value)
    assert isinstance(info.value, ImportError) and info.value.extra == "tts"
    with pytest.raises(ModelError, match="unknown asr engine 'nope'"):
        load_engine_class("asr", "nope")
    assert load_engine_class("asr", "whisper").__name__ == "WhisperAsr"
