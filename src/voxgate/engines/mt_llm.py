"""Translation through any chat LLM (:class:`~voxgate.engines.base.Llm`): the offline Qwen GGUF
in-process or an OpenAI-compatible server.

A general LLM is a loose translator: it adds "Here is the translation:", merges or drops
sentences, answers in the wrong language, or keeps a name it was told to keep in another form.
This engine makes it a checked one:

* **deterministic**: temperature 0 and the LLM's fixed seed (``VOXGATE_LLM__SEED``);
* **sentence-aligned**: the text is cut into sentences, the model answers a JSON object
  ``{"translations": [...]}`` constrained by a JSON schema (grammar-enforced on llama.cpp) with
  exactly one string per input sentence, and the count is checked again on the answer;
* **guarded**: every output sentence must be in the target language's script (Cyrillic for
  ``ru``, Latin for ``en``), carry no commentary ("Here is the translation", "Перевод:"), keep
  every do-not-translate phrase verbatim and use the glossary's target terms;
* a rejected answer is asked once more with the reason added to the conversation (so the retry
  is a different, still deterministic, request); a second rejection is an
  :class:`~voxgate.errors.EngineError` naming the reason, never a silently bad translation.

``MtOptions.context`` (the previous utterance) is shown to the model as context only.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, EngineError
from .base import ChatMessage, Llm, MtOptions
from .priority import live_llm_kwargs

__all__ = ["LANGUAGE_NAMES", "LlmMt", "check_translation", "split_for_translation"]

logger = logging.getLogger(__name__)

LANGUAGE_NAMES = {"en": "English", "ru": "Russian"}
# script of each target language: (letters that must dominate, letters that must not appear)
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")
_LATIN = re.compile(r"[A-Za-z]")
_LATIN_WORD = re.compile(r"(?<![\w<])[A-Za-z]{2,}(?!\w)")
_WORD = re.compile(r"\w+")
# a sentence ends at . ! ? … (and closing quotes/brackets) followed by space and a new sentence
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])[\"'\u201d\u00bb)\]]*\s+(?=[\"'\u201c\u00ab(\[]?"
                           r"[A-Z\u0410-\u042f\u0401\d])")
_COMMENTARY = re.compile(
    r"here(?:'s| is| are)\b.{0,30}\btranslat|\btranslat(?:ion|ed)(?: text)?\s*(?:is)?\s*:"
    r"|^\s*(?:sure|certainly|of course)[,!.]|\bas an ai\b|\bI (?:cannot|can't) translate"
    r"|вот перевод|перевод(?: текста)?\s*:|переведённый текст|переведенный текст",
    re.IGNORECASE)
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs",
                            "etc", "no", "г", "гг", "т", "др", "пр", "им", "ул", "стр"})
_MAX_SENTENCES = 64  # one request; a longer text is translated in several requests


def split_for_translation(text: str) -> list[str]:
    """Sentences of ``text`` (whitespace normalised): the unit the translation is aligned on."""
    text = " ".join(text.split())
    out: list[str] = []
    for piece in (p.strip() for p in _SENTENCE_END.split(text)):
        if not piece:
            continue
        last = re.search(r"(\w+)\.$", out[-1]) if out else None
        if last and (last.group(1).lower() in _ABBREVIATIONS or len(last.group(1)) == 1):
            out[-1] = f"{out[-1]} {piece}"  # "Dr. Smith", "J. Smith", "т. е."
        else:
            out.append(piece)
    return out


def _kept_name(word: str, source: str) -> bool:
    """A Latin word a Russian translation may keep: a name or acronym the source itself writes
    capitalised (``Linux``, ``NASA``, ``Mr``); a lower-case word, or one the source does not
    have, is English left in (or made up) and is not."""
    return word[:1].isupper() and re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)",
                                             source) is not None


def _letters(text: str) -> int:
    return sum(ch.isalpha() for ch in text)


def _without(text: str, phrases: Sequence[str]) -> str:
    for phrase in phrases:
        if phrase:
            text = re.sub(re.escape(phrase), " ", text, flags=re.IGNORECASE)
    return text


def check_translation(source: str, output: str, target: str,
                      options: MtOptions | None = None) -> str | None:
    """Why ``output`` is not an acceptable ``target``-language translation of ``source``
    (one sentence each), or None when it is."""
    options = options or MtOptions()
    if not output.strip():
        return "an empty translation" if _letters(source) else None
    match = _COMMENTARY.search(output)
    if match and not _COMMENTARY.search(source):
        return f"commentary instead of a translation ({match.group(0).strip()!r})"
    for phrase in options.dnt:
        if phrase and phrase.lower() in source.lower() and phrase.lower() not in output.lower():
            return f"the do-not-translate phrase {phrase!r} was changed"
    for term, wanted in options.glossary:
        if term and term.lower() in source.lower() and wanted.lower() not in output.lower():
            return f"the glossary term {term!r} was not translated as {wanted!r}"
    kept = [p for p in options.dnt] + [w for _, w in options.glossary]
    plain = _without(output, kept)
    letters = _letters(plain)
    if letters == 0:
        return None  # numbers / names only: nothing to judge the script by
    cyrillic = len(_CYRILLIC.findall(plain))
    latin = len(_LATIN.findall(plain))
    if target == "ru" and cyrillic < 0.6 * (cyrillic + latin):
        return "not in Russian (Cyrillic) script"
    mixed = [w for w in _WORD.findall(plain) if _CYRILLIC.search(w) and _LATIN.search(w)]
    if mixed:  # "prudentным", "Дашwood": half-translated words, in either direction
        return f"words mixing Latin and Cyrillic letters ({', '.join(mixed[:5])})"
    if target == "ru":  # English words copied through untranslated ("и had to walk домой")
        left = [w for w in _LATIN_WORD.findall(plain) if not _kept_name(w, source)]
        if left:
            return f"English words left untranslated ({', '.join(left[:5])})"
    if target == "en" and cyrillic:
        return "Cyrillic letters in an English translation"
    if target == "en" and latin < 0.6 * letters:
        return "not in English (Latin) script"
    return None


class LlmMt:
    """Sentence-aligned, guarded translation over a shared :class:`Llm` (see module doc).

    Built on an engine the caller holds (``ModelManager.use("llm", ...)``), so the LLM is loaded
    once for cleanup, summaries and translation alike.
    """

    name = "llm"
    languages = ("en", "ru")

    def __init__(self, llm: Llm, *, max_tokens_per_sentence: int = 160,
                 retries: int = 1) -> None:
        self.llm = llm
        self.max_tokens_per_sentence = max_tokens_per_sentence
        self.retries = retries

    def version_info(self) -> dict[str, Any]:
        """What changes the output: the LLM (file, seed, endpoint) and this prompt's version."""
        info = getattr(self.llm, "version_info", None)
        return {"engine": self.name, "prompt": "mt-llm/1", "llm": info() if info else {}}

    async def translate(self, text: str, source: str, target: str, *,
                        options: MtOptions | None = None) -> str:
        """``text`` (any number of sentences) in ``target``; sentences joined by one space."""
        return " ".join(await self.translate_sentences(split_for_translation(text), source,
                                                       target, options=options))

    async def translate_batch(self, texts: Sequence[str], source: str, target: str, *,
                              options: MtOptions | None = None) -> list[str]:
        """One translation per text, in order (each text may hold several sentences)."""
        return [await self.translate(t, source, target, options=options) for t in texts]

    async def translate_sentences(self, sentences: Sequence[str], source: str, target: str, *,
                                  options: MtOptions | None = None) -> list[str]:
        """Exactly one translated sentence per input sentence, in order."""
        self._check_pair(source, target)
        options = options or MtOptions()
        out: list[str] = []
        for i in range(0, len(sentences), _MAX_SENTENCES):
            block = list(sentences[i:i + _MAX_SENTENCES])
            try:
                out.extend(await self._translate_block(block, source, target, options))
            except EngineError:
                if len(block) == 1:
                    raise
                # one bad sentence should not sink the others: each alone (with its own
                # retry); a sentence that still fails fails the whole request, clearly
                logger.info("translation %s->%s: block of %d rejected twice, one sentence at "
                            "a time", source, target, len(block))
                for sentence in block:
                    out.extend(await self._translate_block([sentence], source, target,
                                                           options))
        return out

    # ---- internals -----------------------------------------------------------------------
    def _check_pair(self, source: str, target: str) -> None:
        for field, code in (("source", source), ("target", target)):
            if code not in LANGUAGE_NAMES:
                raise ConfigError(f"{field} language {code!r} is not supported by the LLM "
                                  f"translator; use one of {', '.join(LANGUAGE_NAMES)}")
        if source == target:
            raise ConfigError(f"source and target language are both {source!r}")

    async def _translate_block(self, sentences: list[str], source: str, target: str,
                               options: MtOptions) -> list[str]:
        if not sentences:
            return []
        protected, kept = _protect(sentences, options.dnt)
        schema = self._schema(len(sentences))
        use_schema = schema if self.llm.capabilities.json_schema else None
        max_tokens = 32 + self.max_tokens_per_sentence * len(sentences)
        reason = ""
        for attempt in range(self.retries + 1):
            # a retry states why the last answer was rejected: a different (still
            # deterministic) request, not a replay of the same one
            messages = self._messages(protected, source, target, options, rejected=reason)
            answer = await self._complete(messages, max_tokens, use_schema)
            result, reason = self._parse(answer, protected, kept, sentences, target, options)
            if result is not None:
                return result
            logger.info("translation %s->%s rejected (attempt %d): %s", source, target,
                        attempt + 1, reason)
        raise EngineError(f"translation {source}->{target} failed: the model gave {reason} "
                          f"({self.retries + 1} attempts)")

    async def _complete(self, messages: list[ChatMessage], max_tokens: int,
                        schema: dict[str, Any] | None) -> str:
        """The answer, streamed: a cancelled caller (client gone, timeout) closes the stream,
        which stops the generation itself, not just the wait for it."""
        parts: list[str] = []
        stream = self.llm.stream(messages, max_tokens=max_tokens, temperature=0.0,
                                 json_schema=schema, **live_llm_kwargs(self.llm))
        try:
            async for delta in stream:
                parts.append(delta)
        finally:
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                await closer()
        return "".join(parts)

    def _parse(self, answer: str, protected: list[str], kept: dict[str, str],
               sentences: list[str], target: str, options: MtOptions
               ) -> tuple[list[str] | None, str]:
        try:
            data = json.loads(_json_part(answer))
        except ValueError:
            return None, "no valid JSON object"
        items = data.get("translations") if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            return None, 'no "translations" list of strings'
        if len(items) != len(sentences):
            return None, f"{len(items)} translations for {len(sentences)} sentences"
        out = []
        for n, (src, item) in enumerate(zip(protected, items), 1):
            dst = " ".join(item.split())
            for mark, phrase in kept.items():
                if src.count(mark) != dst.count(mark):
                    return None, f"sentence {n}: the do-not-translate phrase {phrase!r} was lost"
                dst = dst.replace(mark, phrase)
            problem = check_translation(sentences[n - 1], dst, target, options)
            if problem:
                return None, f"sentence {n}: {problem}"
            out.append(dst)
        return out, ""

    @staticmethod
    def _schema(count: int) -> dict[str, Any]:
        return {"type": "object",
                "properties": {"translations": {"type": "array", "minItems": count,
                                                "maxItems": count,
                                                "items": {"type": "string", "minLength": 1}}},
                "required": ["translations"], "additionalProperties": False}

    @staticmethod
    def _messages(sentences: list[str], source: str, target: str, options: MtOptions,
                  rejected: str = "") -> list[ChatMessage]:
        src, dst = LANGUAGE_NAMES[source], LANGUAGE_NAMES[target]
        rules = [f"You are a professional {src}-to-{dst} translator.",
                 f"Translate each {src} sentence of the input into natural, fluent {dst}.",
                 (f'Answer with a JSON object {{"translations": [...]}}: exactly '
                  f"{len(sentences)} {dst} strings, one per input sentence, in the same order."),
                 "Translate only: no notes, no explanations, no quotes around the text.",
                 "Copy marks like <x1> unchanged into the translation."]
        if options.glossary:
            rules.append("Always translate these terms as given: "
                         + "; ".join(f'"{a}" -> "{b}"' for a, b in options.glossary) + ".")
        if rejected:
            rules.append(f"Your previous answer was rejected ({rejected}): avoid that.")
        user = ""
        if options.context.strip():
            user += (f"Context, the previous utterance (do not translate it): "
                     f"{' '.join(options.context.split())[:1000]}\n\n")
        user += f"{src} sentences ({len(sentences)}):\n" + json.dumps(
            {"sentences": sentences}, ensure_ascii=False)
        return [ChatMessage("system", " ".join(rules)), ChatMessage("user", user)]


def _protect(sentences: list[str], dnt: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Do-not-translate phrases replaced by marks ``<x1>``, ``<x2>``... (small models copy a
    mark reliably but "translate" a product name); mark -> the phrase as the source wrote it."""
    kept: dict[str, str] = {}
    by_text: dict[str, str] = {}
    out = list(sentences)
    for phrase in sorted((p for p in dnt if p.strip()), key=len, reverse=True):
        pattern = re.compile(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", re.IGNORECASE)

        def mark(match: re.Match[str]) -> str:
            text = match.group(0)
            if text not in by_text:
                by_text[text] = f"<x{len(by_text) + 1}>"
                kept[by_text[text]] = text
            return by_text[text]

        out = [pattern.sub(mark, s) for s in out]
    return out, kept


def _json_part(answer: str) -> str:
    """The JSON object in an answer (engines without schema support may wrap it in prose or a
    code fence; the guard still rejects any commentary inside the strings)."""
    start, end = answer.find("{"), answer.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object")
    return answer[start:end + 1]
