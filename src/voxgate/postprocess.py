"""LLM post-processing of transcripts: cleanup that keeps the words, and schema-checked summaries.

* Cleanup goes chunk by chunk (a few hundred words each). A chunk the ASR already punctuated and
  cased is kept as is (no LLM call). Otherwise the LLM is asked for a JSON list of edits (or, with
  ``llm.cleanup_method = "rewrite"``, the whole chunk again); the answer is applied and checked in
  code (``text_edits``): edits must match the source, and with ``llm.cleanup_keep_words`` only
  punctuation and casing may change, so the WER stays the raw ASR's. A chunk the LLM changed more
  than ``llm.cleanup_max_edit_rate`` is kept raw, so the model cannot invent content.
* Summaries follow a template: a JSON Schema (``templates/<id>.json``) plus a Jinja2 prompt
  (``templates/prompts/<id>.j2``). Output is schema-constrained where the engine supports it,
  then always validated with ``jsonschema``; on failure the validation error is fed back and the
  model asked again, up to ``llm.summary_retries`` times. A transcript longer than the context
  is first condensed map-reduce style (notes per part, then the summary of the notes).
* A summary's cost is reading the transcript (issue 14: ~2300 prompt tokens for 10 minutes,
  75% of the stage) plus what it writes. With a grammar, the prompt names the template's keys
  instead of carrying the whole JSON Schema, and the grammar gets a tighter copy of the schema
  (:meth:`PostProcessor.generation_schema`: at most ``llm.summary_max_items`` list items of at
  most ``llm.summary_max_item_chars`` characters), so the answer is valid on the first attempt
  and short; items the model repeated word for word are dropped. The answer is still validated against the template's own schema.

Everything runs at temperature 0 with a fixed seed, so the same input gives the same output.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .config import Settings
from .engines.base import ChatMessage, Llm
from .errors import ConfigError, EngineError
from .text_edits import apply_edits, edits_schema, keep_source_words, looks_punctuated, norm_words

__all__ = [
    "Template",
    "CleanResult",
    "SummaryResult",
    "PostProcessor",
    "templates_dir",
    "list_templates",
    "load_template",
    "edit_rate",
    "llm_model_id",
    "cleanup_model_id",
    "cleanup_plan",
    "unchanged_result",
]

logger = logging.getLogger(__name__)

_TEMPLATE_ID = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")
_SYSTEM = ("You turn speech transcripts into accurate structured notes. You never invent facts "
           "that are not in the transcript.")
_CHARS_PER_TOKEN = 3.5  # conservative for English and most Latin-script text
_PROMPT_OVERHEAD_TOKENS = 700  # instructions + compact schema + chat template
CancelCheck = Callable[[], None]


def llm_model_id(settings: Settings) -> str:
    """The LLM to use: a configured OpenAI-compatible server, else the offline GGUF."""
    return "openai-compatible" if settings.llm.base_url else settings.llm.model


def cleanup_model_id(settings: Settings) -> str:
    """The LLM for cleanup: ``llm.cleanup_model`` when set (offline), else the summary's."""
    if settings.llm.base_url:
        return "openai-compatible"
    return settings.llm.cleanup_model or settings.llm.model


def cleanup_plan(settings: Settings, text: str, confidence: float | None = None,
                 chunk_words: int | None = None) -> list[tuple[str, bool]]:
    """The cleanup chunks of ``text``, each with whether it needs the LLM.

    A chunk the ASR already punctuated and cased (``text_edits.looks_punctuated``), with the
    ASR at least ``llm.cleanup_skip_min_confidence`` sure, is kept as it is: Whisper's output
    usually is, and a small LLM asked to improve it mostly makes it worse (bench/cleanup.py).
    """
    llm = settings.llm
    sure = llm.cleanup_skip_punctuated and (
        confidence is None or confidence >= llm.cleanup_skip_min_confidence)
    return [(piece, not (sure and looks_punctuated(piece)))
            for piece in _split_words(text, chunk_words or llm.cleanup_chunk_words)]


def unchanged_result(plan: Sequence[tuple[str, bool]], method: str) -> CleanResult:
    """The result of a cleanup that asked the LLM nothing (every chunk skipped)."""
    return CleanResult(" ".join(piece for piece, _ in plan), 0.0, len(plan), 0, method=method,
                       chunks_skipped=sum(not need for _, need in plan))


def templates_dir(settings: Settings) -> Path:
    """Configured dir, else the templates shipped in the wheel, else the repo's ``templates/``."""
    if settings.templates_dir is not None:
        return settings.templates_dir
    packaged = Path(__file__).resolve().parent / "templates"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "templates"


@dataclass(frozen=True)
class Template:
    """A summary template: JSON Schema + prompt. ``sha256`` covers both, for version records."""

    id: str
    name: str
    description: str
    version: str
    schema: dict[str, Any]
    prompt: str
    sha256: str

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "description": self.description,
                "version": self.version, "schema": self.schema}

    def compact_schema(self) -> str:
        """The schema without annotations, compact: fewer prompt tokens on small CPUs."""
        drop = {"$schema", "$id", "x-version", "title", "description"}
        return json.dumps({k: v for k, v in self.schema.items() if k not in drop},
                          separators=(",", ":"))

    def keys_outline(self, max_items: int = 0) -> str:
        """The top-level keys in one line, for a prompt whose grammar enforces the schema.

        ``max_items`` > 0 caps the list sizes it states (the generation schema's bounds).
        """
        parts = []
        for key, node in (self.schema.get("properties") or {}).items():
            if node.get("type") != "array":
                parts.append(f'"{key}" (text)')
                continue
            limit = node.get("maxItems")
            if max_items:
                limit = min(limit, max_items) if limit else max_items
            items = node.get("items") or {}
            kind = ("objects with " + ", ".join(f'"{k}"' for k in items.get("properties", {}))
                    if items.get("type") == "object" else "texts")
            parts.append(f'"{key}" (list of {f"at most {limit} " if limit else ""}{kind})')
        return "; ".join(parts)

    def mentions_keys(self) -> bool:
        """Whether the prompt uses ``{{ keys }}`` (else it needs the schema in full)."""
        from jinja2 import Environment, meta

        return "keys" in meta.find_undeclared_variables(Environment().parse(self.prompt))


@lru_cache(maxsize=64)
def _read_template(directory: Path, template_id: str, mtime: float) -> Template:
    schema_path = directory / f"{template_id}.json"
    prompt_path = directory / "prompts" / f"{template_id}.j2"
    raw_schema = schema_path.read_bytes()
    prompt = prompt_path.read_text(encoding="utf-8")
    try:
        schema = json.loads(raw_schema)
        import jsonschema

        jsonschema.Draft202012Validator.check_schema(schema)
    except (ValueError, Exception) as exc:  # jsonschema.SchemaError or JSON errors
        raise ConfigError(f"template {template_id}: invalid JSON Schema: {exc}") from exc
    digest = hashlib.sha256(raw_schema + b"\0" + prompt.encode()).hexdigest()
    return Template(id=template_id, name=schema.get("title", template_id),
                    description=schema.get("description", ""),
                    version=str(schema.get("x-version", "1")), schema=schema, prompt=prompt,
                    sha256=digest)


def load_template(settings: Settings, template_id: str) -> Template:
    """A template by id; ``ConfigError`` naming the known ids for an unknown or unsafe id."""
    directory = templates_dir(settings)
    schema_path = directory / f"{template_id}.json"
    if not _TEMPLATE_ID.match(template_id or "") or not schema_path.is_file() \
            or not (directory / "prompts" / f"{template_id}.j2").is_file():
        known = ", ".join(t.id for t in list_templates(settings)) or "none"
        raise ConfigError(f"unknown template {template_id!r}; available: {known}")
    return _read_template(directory, template_id, schema_path.stat().st_mtime)


def list_templates(settings: Settings) -> list[Template]:
    directory = templates_dir(settings)
    found = []
    for path in sorted(directory.glob("*.json")):
        if _TEMPLATE_ID.match(path.stem) and (directory / "prompts" / f"{path.stem}.j2").is_file():
            found.append(_read_template(directory, path.stem, path.stat().st_mtime))
    return found


def _render(template_source: str, **context: Any) -> str:
    from jinja2 import Environment, StrictUndefined

    env = Environment(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template_source).render(**context)


@lru_cache(maxsize=8)
def _prompt_file(directory: Path, name: str) -> str:
    return (directory / "prompts" / f"{name}.j2").read_text(encoding="utf-8")


def _levenshtein(a: Sequence[str], b: Sequence[str]) -> int:
    previous = list(range(len(b) + 1))
    for i, token in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (token != other)))
        previous = current
    return previous[-1]


def _words(text: str) -> list[str]:
    return text.split()


def edit_rate(original: str, edited: str) -> float:
    """Word-level Levenshtein distance / words in ``original`` (0: identical; may exceed 1)."""
    a, b = _words(original), _words(edited)
    if not a:
        return 0.0 if not b else 1.0
    return _levenshtein(a, b) / len(a)


def _split_words(text: str, max_words: int) -> list[str]:
    """Pieces of at most ``max_words`` words, cut after a sentence end where one is near."""
    words = _words(text)
    pieces: list[str] = []
    start = 0
    while start < len(words):
        end = min(start + max_words, len(words))
        if end < len(words):
            for k in range(end, max(start + max_words // 2, start + 1), -1):
                if words[k - 1][-1:] in ".?!":
                    end = k
                    break
        pieces.append(" ".join(words[start:end]))
        start = end
    return pieces


def _strip_wrapping(text: str) -> str:
    """Remove code fences / quotes small models like to wrap answers in."""
    text = text.strip()
    fence = re.match(r"^```[a-zA-Z]*\s*\n(.*?)\n?```$", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def _drop_repeats(value: Any) -> Any:
    """``value`` with items a list repeats word for word removed (small models loop on lists)."""
    if isinstance(value, dict):
        return {key: _drop_repeats(item) for key, item in value.items()}
    if isinstance(value, list):
        seen: list[Any] = []
        for item in (_drop_repeats(x) for x in value):
            if item not in seen:
                seen.append(item)
        return seen
    return value


@dataclass
class CleanResult:
    """A cleaned transcript and what cleanup did (``enhancement_metrics`` of a job)."""

    text: str
    edit_rate: float
    chunks: int
    chunks_kept_raw: int  # the model's answer was rejected whole (too many changes, unparsable)
    method: str = "rewrite"
    chunks_skipped: int = 0  # already punctuated by the ASR: no LLM call
    chunks_changed: int = 0
    edits_applied: int = 0
    edits_rejected: int = 0

    def metrics(self) -> dict[str, Any]:
        return {"method": self.method, "edit_rate": self.edit_rate, "chunks": self.chunks,
                "chunks_changed": self.chunks_changed, "chunks_skipped": self.chunks_skipped,
                "chunks_kept_raw": self.chunks_kept_raw, "edits_applied": self.edits_applied,
                "edits_rejected": self.edits_rejected}


@dataclass
class SummaryResult:
    summary: dict[str, Any]
    attempts: int
    map_reduce: bool
    parts: int = 1
    errors: list[str] = field(default_factory=list)


class PostProcessor:
    """Cleanup and summaries through one ``Llm``. Synchronous: jobs run in worker threads."""

    def __init__(self, llm: Llm, settings: Settings, check_cancel: CancelCheck | None = None,
                 ) -> None:
        self.llm = llm
        self.settings = settings
        self.check_cancel = check_cancel or (lambda: None)
        self._dir = templates_dir(settings)

    # --- plumbing -------------------------------------------------------------------------
    def _ask(self, messages: list[ChatMessage], max_tokens: int,
             json_schema: dict[str, Any] | None = None) -> str:
        self.check_cancel()
        complete_sync = getattr(self.llm, "complete_sync", None)
        if callable(complete_sync):
            return complete_sync(messages, max_tokens=max_tokens, temperature=0.0,
                                 json_schema=json_schema)
        return asyncio.run(self.llm.complete(messages, max_tokens=max_tokens, temperature=0.0,
                                             json_schema=json_schema))

    def decoding_params(self) -> dict[str, Any]:
        llm = self.settings.llm
        return {"temperature": 0.0, "seed": llm.seed, "summary_max_tokens": llm.summary_max_tokens,
                "summary_retries": llm.summary_retries,
                "summary_schema_in_prompt": llm.summary_schema_in_prompt,
                "summary_max_items": llm.summary_max_items,
                "summary_max_item_chars": llm.summary_max_item_chars,
                "cleanup_max_edit_rate": llm.cleanup_max_edit_rate,
                "context_tokens": self._context_tokens()}

    def cleanup_params(self) -> dict[str, Any]:
        """What decides the cleaned text besides the model (for ``versions``)."""
        llm = self.settings.llm
        return {"method": llm.cleanup_method, "keep_words": llm.cleanup_keep_words,
                "skip_punctuated": llm.cleanup_skip_punctuated,
                "skip_min_confidence": llm.cleanup_skip_min_confidence,
                "chunk_words": llm.cleanup_chunk_words,
                "max_edit_rate": llm.cleanup_max_edit_rate, "temperature": 0.0, "seed": llm.seed}

    def _context_tokens(self) -> int:
        return min(self.settings.llm.context_tokens, self.llm.capabilities.context_tokens)

    # --- cleanup --------------------------------------------------------------------------
    def clean(self, text: str, chunk_words: int | None = None, confidence: float | None = None,
              method: str | None = None) -> CleanResult:
        """Punctuation/casing fixes, chunk by chunk, every change checked in code.

        ``confidence`` is the ASR's (0..1): with ``llm.cleanup_skip_punctuated`` a chunk the
        ASR already punctuated and cased, at least ``cleanup_skip_min_confidence`` sure, is
        kept as it is without asking the LLM. ``method`` overrides ``llm.cleanup_method``.
        """
        llm = self.settings.llm
        method = method or llm.cleanup_method
        if method not in ("edits", "rewrite"):
            raise ConfigError(f"unknown cleanup method {method!r}; choose edits or rewrite")
        plan = cleanup_plan(self.settings, text, confidence, chunk_words)
        result = unchanged_result(plan, method)
        cleaned: list[str] = []
        edits = 0  # word edits summed over chunks: the chunks are aligned, so no whole-text
        # O(n^2) distance is needed (hours of transcript would take minutes of pure Python)
        for piece, needs_llm in plan:
            if not needs_llm:
                cleaned.append(piece)
                continue
            answer = self._clean_edits(piece, result) if method == "edits" \
                else self._clean_rewrite(piece, result)
            piece_words = _words(piece)
            distance = _levenshtein(piece_words, _words(answer)) if answer else 0
            # the guard counts changed words; punctuation and casing are not what it is for
            # (they may touch every token of an unpunctuated chunk)
            spoken = norm_words(piece)
            rate = _levenshtein(spoken, norm_words(answer)) / max(len(spoken), 1)
            if not answer or rate > llm.cleanup_max_edit_rate:
                logger.info("cleanup changed %.0f%% of a chunk's words; keeping it raw", rate * 100)
                cleaned.append(piece)
                result.chunks_kept_raw += 1
                continue
            cleaned.append(answer)
            edits += distance
            result.chunks_changed += answer != piece
        result.text = " ".join(cleaned)
        total_words = len(_words(text))
        result.edit_rate = round(edits / total_words, 4) if total_words else 0.0
        return result

    def _clean_rewrite(self, piece: str, result: CleanResult) -> str:
        """The whole chunk written out again (generation-bound); '' when the answer is unusable."""
        prompt = _prompt_file(self._dir, "clean_transcript_v1")
        messages = [ChatMessage("user", _render(prompt, text=piece))]
        answer = _strip_wrapping(self._ask(messages, max_tokens=len(piece) // 2 + 64))
        if not answer:
            return ""
        spoken = norm_words(piece)
        if _levenshtein(spoken, norm_words(answer)) / max(len(spoken), 1) \
                > self.settings.llm.cleanup_max_edit_rate:
            return answer  # rejected whole by the caller's edit-rate guard
        if self.settings.llm.cleanup_keep_words:
            answer = keep_source_words(piece, answer)
        return answer

    def _clean_edits(self, piece: str, result: CleanResult) -> str:
        """A JSON list of edits (output ~ the fixes, not the text), applied and checked here."""
        prompt = _prompt_file(self._dir, "clean_edits_v1")
        max_edits = min(32, max(4, len(_words(piece)) // 8))
        schema = edits_schema(max_edits)
        messages = [ChatMessage("user", _render(prompt, text=piece))]
        answer = self._ask(messages, max_tokens=max_edits * 40 + 16,
                           json_schema=schema if self.llm.capabilities.json_schema else None)
        try:
            value = json.loads(_strip_wrapping(answer))
        except ValueError:
            logger.info("cleanup edits are not valid JSON; keeping the chunk raw")
            return ""
        proposed = value.get("edits") if isinstance(value, dict) else None
        if not isinstance(proposed, list):
            logger.info("cleanup answer has no edit list; keeping the chunk raw")
            return ""
        outcome = apply_edits(piece, proposed[:max_edits], self.settings.llm.cleanup_keep_words)
        result.edits_applied += outcome.applied
        result.edits_rejected += outcome.rejected + max(len(proposed) - max_edits, 0)
        if outcome.reasons:
            logger.debug("cleanup edits rejected: %s", "; ".join(outcome.reasons[:5]))
        return outcome.text

    # --- summaries ------------------------------------------------------------------------
    def _budget_chars(self) -> int:
        tokens = self._context_tokens() - self.settings.llm.summary_max_tokens \
            - _PROMPT_OVERHEAD_TOKENS
        return max(int(tokens * _CHARS_PER_TOKEN), 2000)

    def _condense(self, text: str) -> tuple[str, int]:
        """Map step, repeated until the notes fit the context: (notes, parts summarised)."""
        budget = self._budget_chars()
        total_parts = 0
        while len(text) > budget:
            prompt = _prompt_file(self._dir, "chunk_notes_v1")  # read only when needed
            pieces = _split_words(text, max(int(budget / 7), 50))  # ~7 chars per word
            notes = []
            for index, piece in enumerate(pieces, 1):
                messages = [ChatMessage("system", _SYSTEM), ChatMessage(
                    "user", _render(prompt, index=index, total=len(pieces), text=piece))]
                notes.append(_strip_wrapping(self._ask(messages, max_tokens=256)))
            total_parts += len(pieces)
            condensed = "\n".join(notes)
            if len(condensed) >= len(text):  # no progress: cut rather than loop forever
                condensed = condensed[:budget]
            text = condensed
        return text, total_parts

    def generation_schema(self, template: Template) -> dict[str, Any]:
        """The schema the grammar enforces: the template's, tightened (never loosened).

        Every list gets at most ``llm.summary_max_items`` items and every string inside a list
        at most ``llm.summary_max_item_chars`` characters (0: the template's bound). An answer
        valid here is valid against ``template.schema``. (Compact JSON without whitespace
        tokens would save ~10% of the answer, but llama.cpp's chat endpoint builds its own
        grammar from ``response_format`` and ignores llguidance's ``x-guidance`` options.)
        """
        llm = self.settings.llm
        schema = copy.deepcopy(template.schema)

        def tighten(node: Any, in_list: bool) -> None:
            if isinstance(node, list):
                for item in node:
                    tighten(item, in_list)
                return
            if not isinstance(node, dict):
                return
            if node.get("type") == "array" and llm.summary_max_items:
                node["maxItems"] = min(node.get("maxItems", llm.summary_max_items),
                                       llm.summary_max_items)
            if node.get("type") == "string" and in_list and llm.summary_max_item_chars:
                bound = max(llm.summary_max_item_chars, node.get("minLength", 0))
                node["maxLength"] = min(node.get("maxLength", bound), bound)
            for key, child in node.items():
                tighten(child, in_list or (key == "items" and node.get("type") == "array"))

        tighten(schema, False)
        return schema

    def _summary_prompt(self, template: Template, text: str, source: str,
                        constrained: bool) -> str:
        """The template's prompt; the whole schema only when no grammar enforces it."""
        llm = self.settings.llm
        full = llm.summary_schema_in_prompt or not constrained or not template.mentions_keys()
        return _render(template.prompt, transcript=text, source=source,
                       schema=template.compact_schema() if full else "",
                       keys=template.keys_outline(llm.summary_max_items))

    def summarize(self, text: str, template: Template) -> SummaryResult:
        """A summary dict valid against ``template.schema`` or ``EngineError`` after retries."""
        import jsonschema

        source_text, parts = self._condense(text)
        source = "notes of a transcript" if parts else "transcript"
        constrained = self.llm.capabilities.json_schema
        prompt = self._summary_prompt(template, source_text, source, constrained)
        messages = [ChatMessage("system", _SYSTEM), ChatMessage("user", prompt)]
        schema = self.generation_schema(template) if constrained else None
        validator = jsonschema.Draft202012Validator(template.schema)
        errors: list[str] = []
        for attempt in range(1, self.settings.llm.summary_retries + 2):
            answer = self._ask(messages, self.settings.llm.summary_max_tokens, json_schema=schema)
            problem = ""
            try:
                value = _drop_repeats(json.loads(_strip_wrapping(answer)))
            except ValueError as exc:
                problem = f"not valid JSON ({exc})"
            else:
                found = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
                if not found:
                    return SummaryResult(value, attempt, bool(parts), max(parts, 1), errors)
                first = found[0]
                where = "/".join(str(p) for p in first.path) or "(root)"
                problem = f"schema violation at {where}: {first.message}"
            errors.append(problem)
            logger.info("summary attempt %d rejected: %s", attempt, problem)
            messages = [*messages[:2], ChatMessage("assistant", answer[:4000]), ChatMessage(
                "user", f"That answer is invalid: {problem}. Reply with the corrected JSON "
                        "object only, matching the schema exactly.")]
        raise EngineError(f"summary did not match template {template.id} after {len(errors)} "
                          f"attempts: {errors[-1]}")
