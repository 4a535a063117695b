"""The Cyrillic answer grammar (engines/mt_grammar.py): which Latin tokens a source allows, what
an answer string may hold, the GBNF text, and how LlmMt passes it (or, without grammar support,
falls back to the JSON schema). The real model under the grammar is in test_mt_llm.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from voxgate.engines.base import ChatMessage, LlmCapabilities, MtOptions
from voxgate.engines.mt_grammar import answer_grammar, latin_tokens, string_pattern
from voxgate.engines.mt_llm import LlmMt

SOURCE = ["And Mr. John Dashwood had then leisure to consider how much NASA could do.",
          "The <x1> app runs on an iPhone with MP3 files."]


def test_latin_tokens_without_names_are_acronyms_brands_marks_and_glossary() -> None:
    assert latin_tokens(SOURCE, glossary_targets=["Kubernetes кластер"]) == [
        "<x1>", "Kubernetes", "MP3", "NASA", "iPhone"]


def test_latin_tokens_with_names_add_capitalised_words_but_not_honorifics_or_first_words() -> None:
    tokens = latin_tokens(SOURCE, names=True)
    assert {"John", "Dashwood", "NASA", "iPhone", "MP3", "<x1>"} == set(tokens)
    # "And", "The" start their sentence; "Mr" is said in Russian ("мистер")
    assert not {"And", "The", "Mr", "had", "app"} & set(tokens)


@pytest.mark.parametrize("text, allowed", [
    ("И мистер Джон Дэшвуд тогда имел время подумать.", True),
    ("NASA отправило зонд в 2024 году.", True),
    ("Приложение <x1> работает на iPhone, а файлы — MP3.", True),
    ('Он сказал: \\"нет\\" — и ушёл…', True),  # a quote inside a JSON string is escaped
    ("2024.", True),  # digits and punctuation only
    ("Дашwood", False),  # mixed in one word
    ("prudentным", False),
    ("NASAовский", False),  # an allowed token glued to Cyrillic
    ("Он был more уважаемым.", False),  # a Latin word the source does not allow
    ("John Dashwood", False),  # names are not allowed unless asked for
    ('Он сказал "нет".', False),  # an unescaped quote would end the JSON string
    ("", False),
])
def test_answer_string_allows_only_cyrillic_words_and_whole_allowed_tokens(
        text: str, allowed: bool) -> None:
    pattern = string_pattern(latin_tokens(SOURCE))
    assert bool(pattern.fullmatch(text)) is allowed


def test_names_pass_as_whole_words_only_when_allowed() -> None:
    pattern = string_pattern(latin_tokens(SOURCE, names=True))
    assert pattern.fullmatch("И мистер John Dashwood подумал.")
    assert not pattern.fullmatch("И мистер Дашwood подумал.")
    assert not pattern.fullmatch("JohnDashwood")


def test_grammar_fixes_the_count_and_lists_the_tokens() -> None:
    grammar = answer_grammar(3, ["NASA", "<x1>"])
    root = next(line for line in grammar.splitlines() if line.startswith("root ::="))
    assert root.count(" str") == 3 and '\\"translations\\"' in root
    assert 'word ::= cyr+ | "<x1>" | "NASA"' in grammar
    assert "cyr ::= [\\u0400-\\u04FF]" in grammar
    with pytest.raises(ValueError, match="at least 1"):
        answer_grammar(0)
    with pytest.raises(ValueError, match="single Latin words"):
        answer_grammar(1, ["two words"])


class GrammarLlm:
    """A fake llama.cpp-like engine: its stream takes a grammar; records requests."""

    name = "grammar-fake"

    def __init__(self, answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.requests: list[dict[str, Any]] = []
        self.capabilities = LlmCapabilities(json_schema=True)

    async def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int = 512,
                     temperature: float = 0.0, json_schema: dict[str, Any] | None = None,
                     grammar: str | None = None) -> AsyncIterator[str]:
        self.requests.append({"messages": list(messages), "json_schema": json_schema,
                              "grammar": grammar})
        answer = self.answers.pop(0)
        for i in range(0, len(answer), 5):
            yield answer[i:i + 5]


def _answer(*items: str) -> str:
    return json.dumps({"translations": list(items)}, ensure_ascii=False)


def test_russian_target_is_sampled_under_the_grammar_instead_of_the_schema() -> None:
    llm = GrammarLlm([_answer("Откройте <x1> на iPhone.", "Спасибо.")])
    mt = LlmMt(llm)
    out = asyncio.run(mt.translate("Open Voxgate on the iPhone. Thanks.", "en", "ru",
                                   options=MtOptions(dnt=("voxgate",))))
    assert out == "Откройте Voxgate на iPhone. Спасибо."
    request = llm.requests[0]
    assert request["json_schema"] is None
    assert request["grammar"].count(" str") == 2
    assert 'word ::= cyr+ | "iPhone" | "<x1>"' in request["grammar"]
    assert mt.version_info()["grammar"] == "cyrillic/1"
    assert [m.role for m in request["messages"]] == ["system", "user"]
    # with ``examples`` the prompt shows one worked pair before the request
    shown = GrammarLlm([_answer("Спасибо.")])
    asyncio.run(LlmMt(shown, examples=True).translate("Thanks.", "en", "ru"))
    assert [m.role for m in shown.requests[0]["messages"]] == [
        "system", "user", "assistant", "user"]
    assert "Мистер Браун" in shown.requests[0]["messages"][2].content


def test_english_target_and_opt_out_keep_the_json_schema() -> None:
    llm = GrammarLlm([_answer("Hello."), _answer("Привет.")])
    asyncio.run(LlmMt(llm).translate("Привет.", "ru", "en"))
    asyncio.run(LlmMt(llm, constrain_script=False).translate("Hello.", "en", "ru"))
    assert all(r["grammar"] is None and r["json_schema"] is not None for r in llm.requests)


def test_the_stream_path_uses_the_grammar_too() -> None:
    llm = GrammarLlm([_answer("Закройте окно, пожалуйста, потому что сегодня холодно.")])

    async def pieces() -> list[str]:
        async with contextlib.aclosing(LlmMt(llm).translate_stream(
                "Please close the window, because it is cold today.", "en", "ru")) as stream:
            return [piece.text async for piece in stream]

    assert "".join(asyncio.run(pieces())) == \
        "Закройте окно, пожалуйста, потому что сегодня холодно."
    assert llm.requests[0]["grammar"] is not None


def test_an_engine_without_grammar_support_falls_back_to_schema_and_guard() -> None:
    class SchemaOnly(GrammarLlm):
        async def stream(self, messages: Sequence[ChatMessage], *, max_tokens: int = 512,
                         temperature: float = 0.0, json_schema: dict[str, Any] | None = None,
                         ) -> AsyncIterator[str]:
            async for delta in super().stream(messages, json_schema=json_schema):
                yield delta

    llm = SchemaOnly([_answer("Он всегда был очень prudentным человеком."),
                    _answer("Он был благоразумным.")])
    mt = LlmMt(llm)
    assert asyncio.run(mt.translate("He was prudent.", "en", "ru")) == "Он был благоразумным."
    assert mt.version_info()["grammar"] is None
    assert llm.requests[0]["grammar"] is None and llm.requests[0]["json_schema"] is not None
    assert "mixing Latin and Cyrillic" in llm.requests[1]["messages"][0].content


# ---- an OpenAI-compatible server: the grammar only when it is declared to take one ----------
def _sse_server(bodies: list[dict[str, Any]], answer: str) -> Any:
    import httpx

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        chunk = {"choices": [{"delta": {"content": answer}}]}
        return httpx.Response(200, text=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n")

    return httpx.MockTransport(handle)


def _openai(transport: Any, *, accepts_grammar: bool) -> Any:
    from voxgate.engines.llm_openai import OpenAiLlm

    return OpenAiLlm("http://llm.test/v1", "m", "", timeout_s=5, max_retries=0, seed=1,
                     context_tokens=4096, transport=transport, accepts_grammar=accepts_grammar)


def test_openai_server_declared_to_take_a_grammar_gets_it_instead_of_the_schema() -> None:
    bodies: list[dict[str, Any]] = []
    llm = _openai(_sse_server(bodies, _answer("Он был благоразумным.")), accepts_grammar=True)
    mt = LlmMt(llm)
    assert mt.grammar
    assert asyncio.run(mt.translate("He was prudent.", "en", "ru")) == "Он был благоразумным."
    assert "grammar" in bodies[0] and "response_format" not in bodies[0]
    assert bodies[0]["grammar"].startswith("root ::=")


def test_openai_server_not_declared_keeps_the_schema_and_is_never_sent_a_grammar() -> None:
    from voxgate.errors import ConfigError

    bodies: list[dict[str, Any]] = []
    llm = _openai(_sse_server(bodies, _answer("Он был благоразумным.")), accepts_grammar=False)
    mt = LlmMt(llm)
    assert not mt.grammar
    assert asyncio.run(mt.translate("He was prudent.", "en", "ru")) == "Он был благоразумным."
    assert "grammar" not in bodies[0] and bodies[0]["response_format"]["type"] == "json_schema"

    async def ask() -> None:
        async for _ in llm.stream([ChatMessage("user", "hi")], grammar="root ::= \"x\""):
            pass

    with pytest.raises(ConfigError, match="VOXGATE_LLM__GRAMMAR"):
        asyncio.run(ask())
    assert len(bodies) == 1


def test_real_llama_cpp_server_over_http_takes_the_grammar(manager, settings) -> None:
    """llama.cpp's own OpenAI-compatible HTTP server (inside xllamacpp) with the grammar: the
    sentence the model answered "... selfishным ..." without it comes back all Cyrillic."""
    import re

    from conftest import require_pack

    from voxgate.engines.llm_openai import OpenAiLlm

    require_pack(settings.llm.model, settings.cache_dir)
    base_url, key = manager.get("llm", settings.llm.model).http_endpoint
    remote = OpenAiLlm(base_url, "qwen", key, timeout_s=300, max_retries=0, seed=settings.llm.seed,
                       context_tokens=4096, accepts_grammar=True)
    out = asyncio.run(LlmMt(remote).translate(
        "Unless to be rather cold-hearted and rather selfish is to be ill-disposed.", "en", "ru"))
    assert not re.search(r"[A-Za-z]", out), out
    assert len(re.findall(r"[\u0400-\u04ff]", out)) > 20, out
