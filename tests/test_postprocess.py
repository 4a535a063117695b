"""Cleanup and summaries with a deterministic scripted LLM (orchestration: retries with the
validation error fed back, map-reduce, the edit-rate guard); the real model runs in
tests/test_jobs_e2e.py and tests/test_llm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voxgate.config import LlmSettings, Settings
from voxgate.engines.base import LlmCapabilities
from voxgate.errors import ConfigError, EngineError
from voxgate.pipeline import JobSpec
from voxgate.postprocess import PostProcessor, edit_rate, list_templates, load_template

pytest.importorskip("jsonschema", reason="the llm extra (jsonschema, jinja2) is not installed")

GOOD = {"title": "Plans", "summary": "The team agreed to ship on Friday.",
        "key_points": ["ship Friday"], "decisions": ["ship on Friday"],
        "action_items": [{"task": "write docs", "owner": "Alice"}]}


class ScriptedLlm:
    """Answers from a script, in order; records every request."""

    name = "scripted"

    def __init__(self, answers, context_tokens: int = 8192) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[list, dict | None]] = []
        self.capabilities = LlmCapabilities(json_schema=True, context_tokens=context_tokens)

    def complete_sync(self, messages, *, max_tokens, temperature, json_schema=None) -> str:
        assert temperature == 0.0
        self.requests.append((list(messages), json_schema))
        answer = self.answers.pop(0)
        return answer(messages) if callable(answer) else answer

    def version_info(self) -> dict:
        return {"engine": self.name}


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, _env_file=None)


def test_templates_are_valid_and_unsafe_ids_rejected(settings: Settings) -> None:
    ids = [t.id for t in list_templates(settings)]
    assert {"meeting_notes_v1", "interview_v1", "lecture_v1"} <= set(ids)
    template = load_template(settings, "interview_v1")
    assert template.version == "1.0.0" and len(template.sha256) == 64
    assert "{{ transcript }}" in template.prompt
    for bad in ("../templates/meeting_notes_v1", "nope", "", "A B"):
        with pytest.raises(ConfigError, match="meeting_notes_v1"):
            load_template(settings, bad)


def test_summary_valid_first_time_with_schema_constraint(settings: Settings) -> None:
    llm = ScriptedLlm([json.dumps(GOOD)])
    template = load_template(settings, "meeting_notes_v1")
    result = PostProcessor(llm, settings).summarize("we ship on friday alice writes docs", template)
    assert result.summary == GOOD and result.attempts == 1 and not result.map_reduce
    messages, schema = llm.requests[0]
    assert schema is not None and schema["required"] == template.schema["required"]  # grammar
    assert "we ship on friday" in messages[-1].content


def _bounds(node, path=""):
    """Every maxItems/maxLength of a schema by its path."""
    found = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("maxItems", "maxLength"):
                found[f"{path}/{key}"] = value
            else:
                found.update(_bounds(value, f"{path}/{key}"))
    return found


def test_summary_prompt_names_the_keys_and_the_grammar_gets_a_tighter_schema(
        settings: Settings) -> None:
    """Issue 14: no whole JSON Schema in the prompt (the grammar enforces it), bounded lists; every bound is at most the template's, so a grammar-valid answer is valid."""
    template = load_template(settings, "meeting_notes_v1")
    llm = ScriptedLlm([json.dumps(GOOD)])
    PostProcessor(llm, settings).summarize("we ship on friday alice writes docs", template)
    (messages, schema), = llm.requests
    prompt = messages[-1].content
    assert '"key_points" (list of at most 5 texts)' in prompt
    assert '"action_items" (list of at most 5 objects with "task", "owner")' in prompt
    assert "maxLength" not in prompt and template.compact_schema() not in prompt
    props = schema["properties"]
    assert props["key_points"]["maxItems"] == 5 and props["key_points"]["items"]["maxLength"] == 200
    assert props["action_items"]["items"]["properties"]["owner"]["maxLength"] == 80  # kept
    assert props["summary"]["maxLength"] == 1200  # top-level text: the template's bound
    tight, own = _bounds(schema), _bounds(template.schema)
    assert tight.keys() == own.keys() and all(tight[k] <= own[k] for k in own)
    assert tight != own


def test_summary_as_before_issue_14_and_without_a_grammar(settings: Settings) -> None:
    """The settings bring back the whole schema in the prompt and the template's own bounds;
    an engine that cannot constrain output always gets the whole schema in the prompt."""
    template = load_template(settings, "meeting_notes_v1")
    before = Settings(data_dir=settings.data_dir, _env_file=None, llm=LlmSettings(
        summary_schema_in_prompt=True, summary_max_items=0, summary_max_item_chars=0))
    llm = ScriptedLlm([json.dumps(GOOD)])
    PostProcessor(llm, before).summarize("text", template)
    (messages, schema), = llm.requests
    assert schema == template.schema
    assert "matches this JSON Schema:\n" + template.compact_schema() in messages[-1].content
    free = ScriptedLlm([json.dumps(GOOD)])
    free.capabilities = LlmCapabilities(json_schema=False, context_tokens=8192)
    PostProcessor(free, settings).summarize("text", template)
    (messages, schema), = free.requests
    assert schema is None and template.compact_schema() in messages[-1].content


def test_custom_template_without_keys_gets_the_whole_schema(settings: Settings,
                                                           tmp_path: Path) -> None:
    directory = tmp_path / "templates"
    (directory / "prompts").mkdir(parents=True)
    shipped = load_template(settings, "meeting_notes_v1")
    (directory / "notes_v1.json").write_text(json.dumps(shipped.schema))
    (directory / "prompts" / "notes_v1.j2").write_text(
        "Notes as JSON matching {{ schema }} of:\n{{ transcript }}")
    custom = Settings(data_dir=settings.data_dir, templates_dir=directory, _env_file=None)
    llm = ScriptedLlm([json.dumps(GOOD)])
    PostProcessor(llm, custom).summarize("text", load_template(custom, "notes_v1"))
    assert shipped.compact_schema() in llm.requests[0][0][-1].content


def test_summary_items_repeated_word_for_word_are_dropped(settings: Settings) -> None:
    looped = dict(GOOD, key_points=["ship Friday", "docs by Alice", "ship Friday", "ship Friday"])
    llm = ScriptedLlm([json.dumps(looped)])
    result = PostProcessor(llm, settings).summarize("text", load_template(
        settings, "meeting_notes_v1"))
    assert result.summary["key_points"] == ["ship Friday", "docs by Alice"]


def test_summary_retried_with_the_validation_error_fed_back(settings: Settings) -> None:
    bad = dict(GOOD, key_points="not a list")
    llm = ScriptedLlm(["```json\n{not json", json.dumps(bad), json.dumps(GOOD)])
    template = load_template(settings, "meeting_notes_v1")
    result = PostProcessor(llm, settings).summarize("text", template)
    assert result.summary == GOOD and result.attempts == 3
    second, third = llm.requests[1][0], llm.requests[2][0]
    assert "not valid JSON" in second[-1].content and second[-2].role == "assistant"
    assert "key_points" in third[-1].content and "not of type 'array'" in third[-1].content


def test_summary_gives_up_after_the_configured_retries(settings: Settings) -> None:
    settings = Settings(data_dir=settings.data_dir, llm=LlmSettings(summary_retries=1),
                        _env_file=None)
    llm = ScriptedLlm(["[]", "{}"])
    with pytest.raises(EngineError, match="after 2 attempts"):
        PostProcessor(llm, settings).summarize("text", load_template(settings, "lecture_v1"))


def test_long_transcript_is_summarised_map_reduce(settings: Settings) -> None:
    settings = Settings(data_dir=settings.data_dir, _env_file=None,
                        llm=LlmSettings(context_tokens=2048, summary_max_tokens=256))
    sentence = "The budget for the new bridge was approved by the council today. "
    transcript = sentence * 120  # ~7,900 chars: more than the ~3,800 that fit
    answer = lambda m: "- budget approved" if m[-1].content.startswith("This is part") \
        else json.dumps(GOOD)  # noqa: E731
    llm = ScriptedLlm([answer] * 20)
    result = PostProcessor(llm, settings).summarize(transcript, load_template(
        settings, "meeting_notes_v1"))
    assert result.map_reduce and result.parts >= 2
    notes_requests = [r for r in llm.requests if r[1] is None]
    assert len(notes_requests) == result.parts
    assert "part 1 of" in notes_requests[0][0][-1].content
    final_prompt = llm.requests[-1][0][-1].content
    assert "notes of a transcript" in final_prompt and "- budget approved" in final_prompt


def test_cleanup_keeps_words_and_rejects_invented_content(settings: Settings) -> None:
    raw = " ".join(["so we will ship the release on friday and alice writes the docs"] * 30)
    fixed = lambda m: m[-1].content.split("Excerpt:\n", 1)[1].strip().capitalize() + "."  # noqa: E731
    invented = "Here is a summary: the team discussed many unrelated things at length today."
    llm = ScriptedLlm([fixed, invented])
    result = PostProcessor(llm, settings).clean(raw, chunk_words=200, method="rewrite")
    assert result.chunks == 2 and result.chunks_kept_raw == 1 and result.method == "rewrite"
    assert result.text.startswith("So we will ship")
    assert 0 < result.edit_rate < 0.05  # only casing/punctuation of chunk 1 changed
    # summed per-chunk edits (no whole-transcript O(n^2) pass) equal the whole-text distance
    assert result.edit_rate == pytest.approx(edit_rate(raw, result.text), abs=1e-4)
    assert "summary" not in result.text


def test_edit_rate() -> None:
    assert edit_rate("a b c d", "a b c d") == 0.0
    assert edit_rate("a b c d", "a x c d") == 0.25
    assert edit_rate("a b", "") == 1.0 and edit_rate("", "") == 0.0


def test_job_spec_validation(settings: Settings) -> None:
    JobSpec(("raw_transcript", "summary"), "meeting_notes_v1", "en").validate(settings)
    for spec, words in [
        (JobSpec(()), "feature"), (JobSpec(("bogus",)), "bogus"),
        (JobSpec(("summary",)), "template_id"), (JobSpec(language="EN1"), "language"),
        (JobSpec(model="silero-vad"), "not ASR"),
    ]:
        with pytest.raises(ConfigError, match=words):
            spec.validate(settings)
