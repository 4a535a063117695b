"""Which models a network client may name (``client_model_id``): catalogue ids and aliases under
the operator's policy, never a path or a hub repo; the refusal says nothing about the disk."""

from __future__ import annotations

import re

import pytest

from voxgate.config import Settings
from voxgate.errors import ConfigError, ModelError
from voxgate.server.model_cards import client_model_id


@pytest.fixture
def settings(tmp_path) -> Settings:
    # an empty cache dir: no hub snapshot is installed, only the offline packs
    return Settings(data_dir=tmp_path / "data", cache_dir=tmp_path / "cache", offline=True,
                    _env_file=None)


def _refusal(settings: Settings, name: str) -> str:
    with pytest.raises(ModelError) as caught:
        client_model_id(settings, name)
    return re.sub(r"^model '.*' is not", "model <name> is not", str(caught.value))


def test_installed_catalogue_models_and_aliases(settings):
    assert client_model_id(settings, "whisper-base") == "whisper-base"
    assert client_model_id(settings, "base") == "whisper-base"  # catalogue alias
    assert client_model_id(settings, "whisper-1") == settings.asr.model  # OpenAI's name
    assert client_model_id(settings, "tiny.en") == "whisper-tiny.en"


def test_paths_and_hub_ids_get_one_answer_whether_or_not_they_exist(settings, tmp_path):
    names = [str(tmp_path), str(tmp_path / "missing"), "/etc", "./x", "C:\\models",
             "Systran/faster-whisper-base", "x" * 5000]
    answers = {_refusal(settings, name) for name in names}
    assert len(answers) == 1, answers
    assert "whisper-base" in answers.pop()


def test_downloads_are_the_operators_choice(settings):
    # in the catalogue but only on the hub: not offered until the operator allows it
    assert "not offered" in _refusal(settings, "whisper-large-v3")
    allowed = settings.model_copy(update={"allowed_models": ["large-v3"]})  # an alias works
    assert client_model_id(allowed, "whisper-large-v3") == "whisper-large-v3"
    assert "not offered" in _refusal(allowed, "whisper-medium")
    # a list replaces "installed": the configured models and the listed ones are offered
    assert client_model_id(allowed, "whisper-tiny.en") == "whisper-tiny.en"  # partial model
    every = settings.model_copy(update={"allowed_models": ["*"]})
    assert client_model_id(every, "whisper-medium") == "whisper-medium"
    assert "not offered" in _refusal(every, "/etc")  # "*" never opens paths


def test_configured_local_directory_and_wrong_kind(settings, tmp_path):
    local = str(tmp_path / "my-whisper")
    configured = settings.model_copy(update={"asr": settings.asr.model_copy(
        update={"model": local})})
    assert client_model_id(configured, "whisper-1") == local
    assert client_model_id(configured, local) == local
    assert "not offered" in _refusal(configured, str(tmp_path / "other"))
    with pytest.raises(ConfigError, match="vad model, not speech recognition"):
        client_model_id(settings, "silero-vad")


def test_allowed_models_setting_from_the_environment(monkeypatch):
    monkeypatch.setenv("VOXGATE_ALLOWED_MODELS", "whisper-large-v3, parakeet")
    assert Settings(_env_file=None).allowed_models == ["whisper-large-v3", "parakeet"]

