"""The Riva NMT engine against voxgate's own Riva-compatible translation server (real gRPC).

RU->EN through RivaMt -> voxgate's RivaTranslation -> the offline LLM translator; a
deterministic translator on the server side (in addition) checks what travels: batches in
order, do-not-translate phrases and glossary entries as Riva's one-string ``dnt_phrases``.
Errors that are not retried, retries with exponential backoff on a port that refuses, the
API key (also over TLS, where the client sends it twice), and loading from Settings.
"""

from __future__ import annotations

import asyncio
import re
import socket

import pytest
from conftest import require_pack
from live_server import API_KEY, live_settings, start_live_server, tls_grpc_server

from voxgate.config import TranslationSettings
from voxgate.engines.base import MtOptions
from voxgate.errors import ConfigError, EngineError

pytest.importorskip("riva.client", reason="extra 'grpc' (nvidia-riva-client) is not installed")

from voxgate.engines.mt_riva import RivaMt, dnt_field  # needs the grpc extra
from voxgate.engines.riva_channel import RivaOptions

pytestmark = pytest.mark.slow
LLM = "qwen2.5-coder-1.5b-instruct-q4km"


class RecordingMt:
    """Deterministic server-side translator: ``<target>:text``, recording the options."""

    name = "recording"
    languages = ("en", "ru")

    def __init__(self) -> None:
        self.options: list[MtOptions | None] = []

    async def translate(self, text, source, target, *, options=None) -> str:
        self.options.append(options)
        return f"{target}:{text}"


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    """A live server translating with the real offline LLM."""
    yield from start_live_server(live_settings(tmp_path_factory.mktemp("mt-riva")), manager)


@pytest.fixture(scope="module")
def recording_server(manager, tmp_path_factory):
    """A live server translating with RecordingMt (catalogue name ``recording``)."""
    from test_riva_nmt import manager_with_mt

    fake = RecordingMt()
    settings = live_settings(tmp_path_factory.mktemp("mt-riva-rec"),
                             translation=TranslationSettings(mt="recording"))
    for live in start_live_server(settings, manager_with_mt(manager, "recording", fake)):
        live.fake = fake
        yield live


@pytest.fixture
def recording(recording_server):
    recording_server.fake.options.clear()
    return recording_server.fake


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _engine(server, **kw) -> RivaMt:
    return RivaMt(RivaOptions(uri=server.grpc_uri, api_key=API_KEY), **kw)


def test_ru_to_en_through_voxgates_riva_server_with_the_real_llm(server, manager):
    require_pack(LLM, manager.settings.cache_dir)
    engine = RivaMt(RivaOptions(uri=server.grpc_uri, api_key=API_KEY, timeout_s=600))
    try:  # a generous deadline: the LLM shares 2 cores with whatever else runs
        out = asyncio.run(engine.translate("Доброе утро! Сегодня мы поедем в Москву.", "ru", "en"))
    finally:
        engine.close()
    assert not re.search(r"[\u0400-\u04ff]", out)
    assert "morning" in out.lower() and "moscow" in out.lower()


def test_batches_dnt_and_glossary_travel_as_riva_fields(recording_server, recording):
    engine = _engine(recording_server, model="recording")
    options = MtOptions(context="ignored", dnt=("voxgate", "Riva NMT"),
                        glossary=(("cloud", "облако"),))
    try:
        out = asyncio.run(engine.translate_batch(["one", "two", "three"], "en", "ru",
                                                 options=options))
        again = asyncio.run(engine.translate("four", "en", "ru"))
        calls = engine.calls
        pairs = engine.language_pairs()
    finally:
        engine.close()
    assert out == ["ru:one", "ru:two", "ru:three"]
    assert recording.options[:3] == [MtOptions(dnt=("voxgate", "Riva NMT"),
                                               glossary=(("cloud", "облако"),))] * 3
    assert pairs == {"recording": (["en", "ru"], ["en", "ru"])}
    assert again == "ru:four" and recording.options[-1] == MtOptions()
    assert calls == 3  # one listing (asked once), two TranslateText


def test_dnt_field_format():
    assert dnt_field(None) == ""
    assert dnt_field(MtOptions(dnt=("a b",), glossary=(("c", "d"),))) == "a b##,c##d"
    with pytest.raises(ConfigError, match="no ',' or '##'"):
        dnt_field(MtOptions(dnt=("one, two",)))


def test_server_errors_are_not_retried(recording_server, recording):
    sleeps: list[float] = []
    engine = RivaMt(RivaOptions(uri=recording_server.grpc_uri, api_key=API_KEY, max_retries=3),
                    sleep=sleeps.append)
    with pytest.raises(EngineError, match="INVALID_ARGUMENT.*'de' is not supported") as err:
        asyncio.run(engine.translate("Hallo", "de", "en"))
    assert not err.value.retryable and engine.calls == 2 and sleeps == []
    wrong = RivaMt(RivaOptions(uri=recording_server.grpc_uri, api_key="wrong", max_retries=3),
                   sleep=sleeps.append)
    with pytest.raises(EngineError, match="ListSupportedLanguagePairs.*UNAUTHENTICATED"):
        asyncio.run(wrong.translate("Hello", "en", "ru"))
    assert wrong.calls == 1 and sleeps == []
    engine.close()
    wrong.close()


def test_unavailable_is_retried_with_exponential_backoff():
    sleeps: list[float] = []
    engine = RivaMt(RivaOptions(uri=f"127.0.0.1:{_free_port()}", max_retries=3,
                                backoff_s=0.05, timeout_s=5), sleep=sleeps.append)
    with pytest.raises(EngineError, match="UNAVAILABLE") as err:
        asyncio.run(engine.translate("Hello there.", "en", "ru"))
    assert err.value.retryable
    assert engine.calls == 4 and sleeps == pytest.approx([0.05, 0.1, 0.2])
    engine.close()


def test_tls_with_the_key_sent_twice(recording_server, recording, tmp_path):
    with tls_grpc_server(recording_server, tmp_path) as (port, cert):
        engine = RivaMt(RivaOptions(uri=f"localhost:{port}", use_ssl=True,
                                    ssl_root_cert=str(cert), api_key=API_KEY))
        out = asyncio.run(engine.translate("Good evening.", "en", "ru"))
        engine.close()
    assert out == "ru:Good evening."


def test_loads_from_settings(recording_server, recording, tmp_path):
    from voxgate.config import RivaSettings

    settings = live_settings(tmp_path, riva=RivaSettings(
        uri=recording_server.grpc_uri, api_key=API_KEY, nmt_model="recording", max_retries=0))
    engine = RivaMt.load(None, settings)
    try:
        assert engine.model == "recording"
        assert asyncio.run(engine.translate("Hi.", "en-US", "ru-RU")) == "ru:Hi."
    finally:
        engine.close()


def test_the_translation_mt_setting_selects_riva_by_catalogue_id(recording_server, recording, tmp_path):
    from voxgate.config import RivaSettings
    from voxgate.engines.manager import ModelManager
    from voxgate.server.riva_nmt import mt_model_name
    from voxgate.translation import open_mt

    settings = live_settings(tmp_path, riva=RivaSettings(uri=recording_server.grpc_uri,
                                                         api_key=API_KEY),
                             translation=TranslationSettings(mt="riva-nmt"))
    manager = ModelManager(settings)
    try:
        with open_mt(settings, manager) as engine:
            assert (engine.name, engine.languages) == ("riva", ("en", "ru"))
            assert asyncio.run(engine.translate("Hi.", "en", "ru")) == "ru:Hi."
        assert mt_model_name(settings) == "riva-nmt"
    finally:
        manager.close()
