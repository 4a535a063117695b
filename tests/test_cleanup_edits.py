"""Cleanup by edits (issue 14): what an LLM may change is checked in code.

Hand-built LLM answers (a scripted fake Llm) for the checks: edits must match the source, may
change only punctuation and casing, chunks Whisper already punctuated skip the LLM. Then the real
path: the offline Qwen on a LibriVox transcript (same answer twice, words untouched) and a real
job whose Whisper output is kept as is with its ``enhancement_metrics``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import require_pack

from voxgate.config import LlmSettings, Settings
from voxgate.engines.base import LlmCapabilities
from voxgate.errors import ConfigError
from voxgate.pipeline import JobSpec, run_pipeline
from voxgate.postprocess import PostProcessor, cleanup_plan
from voxgate.text_edits import apply_edits, keep_source_words, looks_punctuated, norm_words

pytest.importorskip("jsonschema", reason="the llm extra (jsonschema, jinja2) is not installed")

RAW = ("and mister john dashwood had then leisure to consider how much there might be prudently "
       "in his power to do for them")


class EditLlm:
    """Answers with the given texts in order; records each request's schema and prompt."""

    name = "scripted"

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, dict | None]] = []
        self.capabilities = LlmCapabilities(json_schema=True, context_tokens=8192)

    def complete_sync(self, messages, *, max_tokens, temperature, json_schema=None) -> str:
        self.requests.append((messages[-1].content, json_schema))
        return self.answers.pop(0)


def _edits(*pairs: tuple[str, str]) -> str:
    return json.dumps({"edits": [{"old": old, "new": new} for old, new in pairs]})


@pytest.fixture()
def quiet_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, _env_file=None)


def test_edits_must_match_the_source_and_keep_its_words() -> None:
    outcome = apply_edits(RAW, [
        {"old": "and mister john", "new": "And Mister John"},       # casing: applied
        {"old": "dashwood had", "new": "Dashwood has"},              # changes a word: rejected
        {"old": "leisure to think", "new": "leisure, to think"},     # not in the source
        {"old": "them", "new": "them.,"},                            # doubled punctuation
        {"old": "prudently", "new": "prudently"},                    # no-op: not counted
        {"old": "in his power", "new": "in his power,"},             # applied
        {"old": "had then", "new": "Had then"},                      # behind the cursor now
        {"old": 3, "new": None},                                     # malformed
    ])
    assert outcome.applied == 2 and outcome.rejected == 5
    assert outcome.text.startswith("And Mister John dashwood had then")
    assert "in his power, to do for them" in outcome.text
    assert norm_words(outcome.text) == norm_words(RAW)
    assert any("changes words" in r for r in outcome.reasons)
    assert any("not in the source" in r for r in outcome.reasons)
    # word changes are allowed only when asked for
    loose = apply_edits(RAW, [{"old": "mister", "new": "Mr."}], keep_words=False)
    assert loose.applied == 1 and loose.text.startswith("and Mr. john")


def test_a_rewrite_keeps_only_its_punctuation_and_casing() -> None:
    rewritten = ("And Mr. John Dashwood then had the leisure to consider how much might be "
                 "prudently in his power to do for them.")
    kept = keep_source_words(RAW, rewritten)
    assert norm_words(kept) == norm_words(RAW)  # words as spoken, in their order
    assert kept.startswith("And mister John Dashwood had then leisure")
    assert kept.endswith("for them.")


def test_whisper_style_text_counts_as_punctuated() -> None:
    assert looks_punctuated("He was not an ill-disposed young man. Unless to be rather cold.")
    assert not looks_punctuated(" ".join([RAW] * 3))
    assert not looks_punctuated("He was here. and then he left. so it goes")  # no capitals


def test_edits_method_asks_for_a_schema_and_applies_checked_edits(
        quiet_settings: Settings) -> None:
    llm = EditLlm(_edits(("and mister john dashwood", "And Mister John Dashwood"),
                         ("for them", "for them."), ("to consider", "will consider")))
    result = PostProcessor(llm, quiet_settings).clean(RAW, method="edits")
    prompt, schema = llm.requests[0]
    assert RAW in prompt and schema["properties"]["edits"]["type"] == "array"
    assert result.text == ("And Mister John Dashwood had then leisure to consider how much there "
                           "might be prudently in his power to do for them.")
    assert (result.edits_applied, result.edits_rejected, result.chunks_changed) == (2, 1, 1)
    assert result.metrics()["method"] == "edits" and result.edit_rate > 0


def test_default_rewrite_keeps_the_spoken_words(quiet_settings: Settings) -> None:
    llm = EditLlm("And Mr. John Dashwood had then leisure to consider how much there might be "
                  "prudently in his power to do for them.")
    result = PostProcessor(llm, quiet_settings).clean(RAW)
    assert result.method == "rewrite" and llm.requests[0][1] is None  # no schema: plain text
    assert result.text == ("And mister John Dashwood had then leisure to consider how much there "
                           "might be prudently in his power to do for them.")
    assert result.chunks_changed == 1 and result.chunks_kept_raw == 0


def test_unusable_answers_keep_the_chunk_raw(quiet_settings: Settings) -> None:
    for answer in ("{not json", json.dumps({"fixes": []}), json.dumps([1, 2])):
        result = PostProcessor(EditLlm(answer), quiet_settings).clean(RAW, method="edits")
        assert result.text == RAW and result.chunks_kept_raw == 1, answer
    with pytest.raises(ConfigError, match="edits or rewrite"):
        PostProcessor(EditLlm(), quiet_settings).clean(RAW, method="summarise")


def test_punctuated_chunks_skip_the_llm_unless_the_asr_was_unsure(
        quiet_settings: Settings) -> None:
    whisper = ("He was not an ill-disposed young man. Unless to be rather cold-hearted and "
               "rather selfish is to be ill-disposed.")
    text = f"{whisper} {RAW}"
    plan = cleanup_plan(quiet_settings, text, confidence=0.93, chunk_words=19)
    assert [needs for _, needs in plan] == [False, True, True]
    llm = EditLlm(_edits(), _edits())
    result = PostProcessor(llm, quiet_settings).clean(text, chunk_words=19, confidence=0.93,
                                                      method="edits")
    assert len(llm.requests) == 2 and result.chunks_skipped == 1 and result.text == text
    unsure = PostProcessor(EditLlm(_edits(), _edits(), _edits()), quiet_settings)
    assert unsure.clean(text, chunk_words=19, confidence=0.3,
                        method="edits").chunks_skipped == 0
    off = Settings(data_dir=quiet_settings.data_dir, _env_file=None,
                   llm=LlmSettings(cleanup_skip_punctuated=False))
    assert all(needs for _, needs in cleanup_plan(off, text, 0.99, chunk_words=19))


def test_real_qwen_edits_a_librivox_transcript_deterministically(manager, librivox) -> None:
    """The offline 1.5B model on two clips' lower-case transcript (an unpunctuated ASR's)."""
    model = "qwen2.5-coder-1.5b-instruct-q4km"
    require_pack(model, manager.settings.cache_dir)
    text = f"{librivox[1].text} {librivox[2].text}"
    post = PostProcessor(manager.get("llm", model), manager.settings)
    first = post.clean(text, method="edits")
    second = post.clean(text, method="edits")
    assert first == second  # same input, same output
    assert norm_words(first.text) == norm_words(text)  # only punctuation/casing may change
    assert first.chunks == 1 and first.chunks_skipped == 0 and first.chunks_kept_raw == 0
    assert first.edits_applied + first.edits_rejected >= 1  # the model did propose fixes
    if first.edits_applied:
        assert first.text != text and first.chunks_changed == 1


def test_job_keeps_whisper_punctuation_without_loading_an_llm(manager, librivox,
                                                              tmp_path: Path) -> None:
    from jobs_support import wav_of

    clip = wav_of(librivox[0:1], tmp_path / "clip.wav")
    spec = JobSpec(("raw_transcript", "clean_transcript", "enhancement_metrics"), language="en")
    outcome = run_pipeline(manager.settings, manager, clip, spec)
    results = outcome.results
    assert results["clean_transcript"] == results["raw_transcript"]
    assert results["raw_transcript"][:1].isupper() and results["raw_transcript"].endswith(".")
    assert results["enhancement_metrics"] == {
        "method": "rewrite", "edit_rate": 0.0, "chunks": 1, "chunks_changed": 0,
        "chunks_skipped": 1, "chunks_kept_raw": 0, "edits_applied": 0, "edits_rejected": 0}
    assert outcome.versions["cleanup"]["llm"] is None and "llm" not in outcome.versions
    assert "cleanup" in outcome.metrics["stage_times_s"]
