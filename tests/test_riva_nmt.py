"""Riva-compatible translation against a live voxgate on loopback, with the official client.

``riva.client.NeuralMachineTranslationClient`` exactly as NVIDIA's ``nmt.py`` calls it:
``translate`` on the real offline LLM translator (RU->EN, EN->RU in Cyrillic, do-not-translate
phrases kept), ``get_config`` (ListSupportedLanguagePairs). A deterministic fake translator
(in addition to the real one) checks the orchestration: order, empty texts, the one-string
``dnt_phrases`` parsed into do-not-translate and glossary entries, the bounds and the errors.
"""

from __future__ import annotations

import asyncio
import re
import threading

import grpc
import pytest
from conftest import require_pack
from live_server import API_KEY, live_settings, start_live_server

from voxgate.config import TranslationSettings
from voxgate.engines.base import MtOptions

riva_client = pytest.importorskip("riva.client", reason="extra 'grpc' (nvidia-riva-client) "
                                                        "is not installed")

from voxgate.server.riva_nmt import (  # needs the grpc extra
    RIVA_NMT_SERVICE,
    parse_dnt_phrases,
)

pytestmark = pytest.mark.slow
LLM = "qwen2.5-coder-1.5b-instruct-q4km"
CYRILLIC = re.compile(r"[\u0400-\u04ff]")


class FakeMt:
    """Deterministic translator: ``[target] text``; records what it was asked; can be held."""

    name = "fake"
    languages = ("en", "ru", "de")

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str, str, MtOptions | None]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    async def translate(self, text: str, source: str, target: str, *,
                        options: MtOptions | None = None) -> str:
        return (await self.translate_batch([text], source, target, options=options))[0]

    async def translate_batch(self, texts, source, target, *, options=None) -> list[str]:
        self.calls.append((list(texts), source, target, options))
        self.entered.set()
        await asyncio.to_thread(self.gate.wait, 20)
        return [f"[{target}] {t}" for t in texts]


def _nmt(server, metadata=(("x-api-key", API_KEY),)):
    auth = riva_client.Auth(uri=server.grpc_uri, metadata_args=[list(m) for m in metadata])
    return riva_client.NeuralMachineTranslationClient(auth)


@pytest.fixture(scope="module")
def server(manager, tmp_path_factory):
    """A live server translating with the real offline LLM."""
    require_pack(LLM, manager.settings.cache_dir)
    yield from start_live_server(live_settings(tmp_path_factory.mktemp("riva-nmt")), manager)


def manager_with_mt(manager, name: str, engine):
    """A ModelManager whose mt model ``name`` is ``engine``; every other model is the session
    manager's (loaded once, never closed by this one)."""
    from voxgate.engines.manager import ModelManager

    def load(kind: str, model_id: str):
        if (kind, model_id) == ("mt", name):
            return engine, None
        return manager.get(kind, model_id), manager.resolved(kind, model_id)

    return ModelManager(manager.settings, loader=load)


@pytest.fixture(scope="module")
def fake_server(manager, tmp_path_factory):
    """A live server translating with FakeMt, small bounds, one translation at a time."""
    fake = FakeMt()
    settings = live_settings(tmp_path_factory.mktemp("riva-nmt-fake"), riva_nmt_max_texts=4,
                             riva_nmt_max_chars=200, riva_nmt_max_concurrent=1,
                             translation=TranslationSettings(mt="fake-mt"))
    for live in start_live_server(settings, manager_with_mt(manager, "fake-mt", fake)):
        live.fake = fake
        yield live


# ---- the real LLM translator ----------------------------------------------------------------
def test_translate_ru_to_en_with_the_real_llm(server):
    texts = ["Сегодня очень хорошая погода.", "Я люблю читать книги вечером."]
    response = _nmt(server).translate(texts, "", "ru-RU", "en-US")
    out = [t.text for t in response.translations]
    assert len(out) == 2 and all(t.language == "en-US" for t in response.translations)
    assert not any(CYRILLIC.search(t) for t in out)
    assert "weather" in out[0].lower()
    assert "book" in out[1].lower() and "read" in out[1].lower()


def test_translate_en_to_ru_in_cyrillic_keeping_dnt_phrases(server):
    texts = ["Please install voxgate on the new server tomorrow."]
    response = _nmt(server).translate(texts, "", "en", "ru", dnt_phrases_dict={"voxgate": ""})
    (out,) = [t.text for t in response.translations]
    assert "voxgate" in out  # kept verbatim
    letters = re.sub(r"voxgate", "", out)
    assert len(CYRILLIC.findall(letters)) > 0.8 * sum(c.isalpha() for c in letters)


def test_list_supported_language_pairs(server):
    response = _nmt(server).get_config("")
    assert list(response.languages) == [LLM]
    pair = response.languages[LLM]
    assert sorted(pair.src_lang) == sorted(pair.tgt_lang) == ["en", "ru"]
    assert not _nmt(server).get_config("no-such-model").languages


def test_health_reports_the_translation_service(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.grpc_uri) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=RIVA_NMT_SERVICE))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


# ---- orchestration with a deterministic translator ------------------------------------------
def test_batch_order_empty_texts_and_dnt_string(fake_server):
    fake = fake_server.fake
    fake.calls.clear()
    texts = ["first one", "", "  third   one "]
    dnt = {"voxgate": "", "Riva": "Riva", "cloud": "облако"}
    response = _nmt(fake_server).translate(texts, "fake-mt", "en-US", "ru-RU",
                                           dnt_phrases_dict=dnt, max_len_variation="20")
    assert [t.text for t in response.translations] == ["[ru] first one", "", "[ru] third one"]
    assert [t.language for t in response.translations] == ["ru-RU"] * 3
    ((sent, source, target, options),) = fake.calls  # the empty text cost nothing
    assert (sent, source, target) == (["first one", "third one"], "en", "ru")
    assert options == MtOptions(dnt=("voxgate", "Riva"), glossary=(("cloud", "облако"),))


def test_parse_dnt_phrases_forms():
    assert parse_dnt_phrases(["a##,b##b , c ## d", "e"]) == MtOptions(
        dnt=("a", "b", "e"), glossary=(("c", "d"),))
    assert parse_dnt_phrases([]) == MtOptions()
    assert parse_dnt_phrases([",,"]) == MtOptions()
    with pytest.raises(ValueError, match="dnt_phrases.*no source phrase"):
        parse_dnt_phrases(["##x"])


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("texts, source, target, field", [
    ([], "en", "ru", "texts: empty"),
    (["a", "b", "c", "d", "e"], "en", "ru", "texts: 5 texts exceed the limit of 4"),
    (["x" * 150, "y" * 60], "en", "ru", "texts: 210 characters exceed the limit of 200"),
    (["hello"], "en", "fr", "target_language: 'fr' is not supported; language pairs: en->ru"),
    (["hello"], "ja-JP", "en", "source_language: 'ja' is not supported"),
    (["hello"], "en-US", "en-GB", "target_language: same as source_language"),
    (["hello"], "", "en", "source_language: required"),
    (["hello"], "en", "r1", "target_language: not a language code"),
])
def test_bad_requests_are_invalid_argument(fake_server, texts, source, target, field):
    fake_server.fake.calls.clear()
    code, details = _code(lambda: _nmt(fake_server).translate(texts, "", source, target))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details
    assert fake_server.fake.calls == []


def test_unknown_model_is_invalid_argument(fake_server):
    code, details = _code(lambda: _nmt(fake_server).translate(["hi"], "gpt-9", "en", "ru"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "model: 'gpt-9' is not offered" in details and "fake-mt" in details


def test_api_key_is_required(fake_server):
    for metadata in ((), (("x-api-key", "wrong"),)):
        client = _nmt(fake_server, metadata)
        code, _ = _code(lambda c=client: c.translate(["hi"], "", "en", "ru"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        code, _ = _code(lambda c=client: c.get_config(""))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    bearer = _nmt(fake_server, (("authorization", f"Bearer {API_KEY}"),))
    assert bearer.translate(["hi"], "", "en", "de").translations[0].text == "[de] hi"


def test_busy_server_answers_resource_exhausted(fake_server):
    fake = fake_server.fake
    fake.gate.clear()
    fake.entered.clear()
    first = _nmt(fake_server).translate(["slow"], "", "en", "ru", future=True)
    try:
        assert fake.entered.wait(10)
        code, details = _code(lambda: _nmt(fake_server).translate(["hi"], "", "en", "ru"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "VOXGATE_RIVA_NMT_MAX_CONCURRENT" in details
    finally:
        fake.gate.set()
    assert first.result(timeout=20).translations[0].text == "[ru] slow"
