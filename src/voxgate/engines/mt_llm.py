"""Translation through any chat LLM (:class:`~voxgate.engines.base.Llm`): the offline Qwen GGUF
in-process or an OpenAI-compatible server.

A general LLM is a loose translator: it adds "Here is the translation:", merges or drops
sentences, answers in the wrong language, or keeps a name it was told to keep in another form.
This engine makes it a checked one:

* **deterministic**: temperature 0 and the LLM's fixed seed (``VOXGATE_LLM__SEED``); with
  llama.cpp's prompt cache (live requests, ``prompt_cache``) bit-exact only for the same
  sequence of requests: a near tie can flip with what the cache held (bench/README.md);
* **sentence-aligned**: the text is cut into sentences, the model answers a JSON object
  ``{"translations": [...]}`` constrained by a JSON schema (grammar-enforced on llama.cpp) with
  exactly one string per input sentence, and the count is checked again on the answer;
* **guarded**: every output sentence must be in the target language's script (Cyrillic for
  ``ru``, Latin for ``en``), carry no commentary ("Here is the translation", "Перевод:"), keep
  every do-not-translate phrase verbatim and use the glossary's target terms;
* **Cyrillic by construction** (llama.cpp only): for a Russian target the answer is sampled
  under a GBNF grammar (``engines/mt_grammar.py``) whose strings hold Cyrillic words and only
  the Latin tokens the source allows (do-not-translate marks, glossary targets, acronyms), so
  "Дашwood" or "prudentным" cannot be written; names are written in Cyrillic (transliterated).
  An engine whose ``stream`` takes no ``grammar``, or an OpenAI-compatible server not declared
  to take one (``VOXGATE_LLM__GRAMMAR``, for a llama.cpp server), gets the JSON schema as
  before, and the guard stays the last check either way;
* a rejected answer is asked once more with the reason added to the conversation (so the retry
  is a different, still deterministic, request); a second rejection is an
  :class:`~voxgate.errors.EngineError` naming the reason, never a silently bad translation.

``MtOptions.context`` (the previous utterance) is shown to the model as context only.

**Streamed** (:meth:`LlmMt.translate_stream`, what live translation uses): the answer is parsed
while the model writes it; each translated sentence is checked and handed on the moment its
JSON string closes, and the head of a long sentence (up to a clause boundary, at least
``clause_chars`` long, passing the script/commentary part of the guard) even before, so speech
can start while the model is still writing. A sentence rejected after its head was handed on is
translated again and handed on whole, marked ``restart``. Accepted sentences stay accepted: a
retry asks only for the sentences from the rejected one on. :meth:`LlmMt.translate` is the same
stream, collected. On llama.cpp, live requests reuse the KV cache of the prompt prefix the last
request left (the fixed instructions): only the new text is read (``cache_prompt``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import ConfigError, EngineError
from .base import ChatMessage, Llm, MtOptions
from .mt_grammar import answer_grammar, latin_tokens
from .priority import live_llm_kwargs, stream_parameters

__all__ = ["LANGUAGE_NAMES", "LlmMt", "MtPiece", "check_translation", "split_for_translation"]

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
# where the head of a sentence may be handed on before the sentence is finished: after , ; : or
# a dash, when the next character (a space) has been written
_CLAUSE_END = re.compile(r"(?:[,;:]|\s[\u2013\u2014-])(?=\s)")


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
    """A Latin word a Russian translation may keep: a name, acronym or brand the source itself
    writes with a capital (``Linux``, ``NASA``, ``Mr``, ``iPhone``); a lower-case word, or one
    the source does not have, is English left in (or made up) and is not."""
    return any(ch.isupper() for ch in word) and re.search(r"(?<!\w)" + re.escape(word) + r"(?!\w)",
                                             source) is not None


def _letters(text: str) -> int:
    return sum(ch.isalpha() for ch in text)


def _without(text: str, phrases: Sequence[str]) -> str:
    for phrase in phrases:
        if phrase:
            text = re.sub(re.escape(phrase), " ", text, flags=re.IGNORECASE)
    return text


def check_translation(source: str, output: str, target: str,
                      options: MtOptions | None = None, *, partial: bool = False) -> str | None:
    """Why ``output`` is not an acceptable ``target``-language translation of ``source``
    (one sentence each), or None when it is. ``partial``: ``output`` is the head of the
    translation so far, judged by what a head can show (script, commentary, stray words); the
    do-not-translate phrases and glossary terms may still come."""
    options = options or MtOptions()
    if not output.strip():
        return "an empty translation" if _letters(source) and not partial else None
    match = _COMMENTARY.search(output)
    if match and not _COMMENTARY.search(source):
        return f"commentary instead of a translation ({match.group(0).strip()!r})"
    for phrase in options.dnt if not partial else ():
        if phrase and phrase.lower() in source.lower() and phrase.lower() not in output.lower():
            return f"the do-not-translate phrase {phrase!r} was changed"
    for term, wanted in options.glossary if not partial else ():
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


@dataclass(frozen=True, slots=True)
class MtPiece:
    """A checked piece of a streamed translation, ready to be spoken.

    ``text`` continues sentence ``sentence`` (0-based, of the whole text): the whole sentence,
    or a head of it up to a clause boundary, or the rest after such a head (the pieces of a
    sentence concatenate to it exactly). ``complete``: this piece ends its sentence.
    ``restart``: the sentence's earlier pieces are withdrawn (the rest of it failed the guard
    and it was translated again); this piece starts it anew.
    """

    text: str
    sentence: int
    complete: bool = False
    restart: bool = False


class LlmMt:
    """Sentence-aligned, guarded translation over a shared :class:`Llm` (see module doc).

    Built on an engine the caller holds (``ModelManager.use("llm", ...)``), so the LLM is loaded
    once for cleanup, summaries and translation alike. ``clause_chars``: the shortest head of
    a sentence a stream hands on before the sentence is finished (0: whole sentences only).
    ``constrain_script``: Russian answers under the Cyrillic grammar where the engine takes
    one; ``latin_names``: that grammar lets the source's capitalised names through in Latin
    (default: they must be transliterated, as Russian writes them); ``examples``: the EN->RU
    prompt carries one worked example (off: it did not pay for its prompt tokens). Defaults
    from ``bench/translation.py quality`` (bench/README.md "Translation quality").
    """

    name = "llm"
    languages = ("en", "ru")

    def __init__(self, llm: Llm, *, max_tokens_per_sentence: int = 160,
                 retries: int = 1, clause_chars: int = 24, constrain_script: bool = True,
                 latin_names: bool = False, examples: bool = False,
                 prompt_cache: bool = True) -> None:
        self.llm = llm
        self.max_tokens_per_sentence = max_tokens_per_sentence
        self.retries = retries
        self.clause_chars = clause_chars
        self.latin_names = latin_names
        self.examples = examples
        self._llm_kwargs = live_llm_kwargs(llm)
        parameters = stream_parameters(llm)
        if prompt_cache and "cache_prompt" in parameters:
            # live requests: read only what follows the prefix the last one left in the
            # KV cache (the fixed instructions); see the module doc
            self._llm_kwargs["cache_prompt"] = True
        # a grammar only where the engine takes one (llama.cpp in-process, or a server declared
        # to: ``accepts_grammar``); others keep the JSON schema
        self.grammar = (constrain_script and "grammar" in parameters
                        and getattr(llm, "accepts_grammar", True))

    def version_info(self) -> dict[str, Any]:
        """What changes the output: the LLM (file, seed, endpoint) and this prompt's version."""
        info = getattr(self.llm, "version_info", None)
        return {"engine": self.name, "prompt": "mt-llm/2" if self.examples else "mt-llm/1",
                "grammar": "cyrillic/1" if self.grammar else None,
                "latin_names": self.latin_names, "llm": info() if info else {}}

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
        out = [""] * len(sentences)
        async with contextlib.aclosing(self._stream_sentences(
                list(sentences), source, target, options or MtOptions(), clauses=False)) as pieces:
            async for piece in pieces:
                out[piece.sentence] = piece.text if piece.restart else out[piece.sentence] + piece.text
        return [" ".join(t.split()) for t in out]

    def translate_stream(self, text: str, source: str, target: str, *,
                         options: MtOptions | None = None) -> AsyncIterator[MtPiece]:
        """``text`` translated piece by piece as the model writes it (see :class:`MtPiece`);
        the pieces of all sentences, joined, are what :meth:`translate` returns. Raises like
        :meth:`translate` (possibly after some pieces). Iterate inside
        ``contextlib.aclosing``: closing the stream stops the generation."""
        return self._stream_sentences(split_for_translation(text), source, target,
                                      options or MtOptions(), clauses=self.clause_chars > 0)

    # ---- internals -----------------------------------------------------------------------
    def _check_pair(self, source: str, target: str) -> None:
        for field, code in (("source", source), ("target", target)):
            if code not in LANGUAGE_NAMES:
                raise ConfigError(f"{field} language {code!r} is not supported by the LLM "
                                  f"translator; use one of {', '.join(LANGUAGE_NAMES)}")
        if source == target:
            raise ConfigError(f"source and target language are both {source!r}")

    async def _stream_sentences(self, sentences: list[str], source: str, target: str,
                                options: MtOptions, *, clauses: bool) -> AsyncIterator[MtPiece]:
        """Blocks of at most ``_MAX_SENTENCES`` sentences, one request each (plus retries).

        In a block, the answer's sentences are accepted in order as they close; the first one
        the guard rejects ends the request, and the next request (stating the reason) asks for
        the sentences from that one on. A sentence rejected ``retries + 1`` times in a block
        is asked alone (``retries + 1`` more times); still rejected, it is an EngineError.
        """
        self._check_pair(source, target)
        start = 0
        reason = ""
        failures = 0
        alone = False  # the rejected sentence is asked on its own
        headed: set[int] = set()  # sentences with a head handed on, then rejected
        while start < len(sentences):
            block_end = start - start % _MAX_SENTENCES + _MAX_SENTENCES
            end = start + 1 if alone else min(len(sentences), block_end)
            first = start
            protected, kept = _protect(sentences[first:end], options.dnt)
            spoken = 0  # characters of the open sentence handed on so far
            try:
                async with contextlib.aclosing(self._answer_items(
                        protected, source, target, self._context(options, sentences, first),
                        reason, stream=clauses)) as items:
                    reason = ""
                    async for index, raw, complete in items:
                        if index != start - first:
                            continue  # a later item the guard cannot reach yet
                        text, lost = _restore(raw, protected[index], kept)
                        restart = start in headed and not spoken
                        if not complete:
                            cut = self._clause_cut(text, spoken) if clauses else None
                            if cut is not None and check_translation(
                                    sentences[start], text[:cut], target, options,
                                    partial=True) is None:
                                headed.discard(start)
                                yield MtPiece(text[spoken:cut], start, restart=restart)
                                spoken = cut
                            continue
                        problem = lost or check_translation(sentences[start], text, target,
                                                            options)
                        if problem:
                            reason = f"{problem}, in the translation of {sentences[start]!r}"
                            break
                        headed.discard(start)
                        yield MtPiece(text[spoken:], start, complete=True, restart=restart)
                        spoken = 0
                        start += 1
                        if start == end:
                            break
                    else:
                        if start < end:
                            reason = f"{start - first} translations for {end - first} sentences"
            except _Rejected as exc:
                reason = str(exc)
            if start == end and not reason:
                failures, alone = 0, False
                continue
            if spoken:
                headed.add(start)  # a head of it was handed on: its next text restarts it
            logger.info("translation %s->%s rejected: %s", source, target, reason)
            failures = (0 if start > first else failures) + 1
            if failures > self.retries:
                if alone or end - start == 1:
                    raise EngineError(f"translation {source}->{target} failed: the model gave "
                                      f"{reason} ({self.retries + 1} attempts)")
                logger.info("translation %s->%s: sentence %d rejected %d times in its block, "
                            "asked alone", source, target, start + 1, failures)
                alone, failures = True, 0

    @staticmethod
    def _context(options: MtOptions, sentences: list[str], start: int) -> MtOptions:
        """A retry from sentence ``start`` on sees the sentences before it as context."""
        if not start:
            return options
        before = " ".join(sentences[max(0, start - 8):start])
        return replace(options, context=f"{options.context} {before}".strip())

    def _clause_cut(self, text: str, spoken: int) -> int | None:
        """End of the last clause of ``text`` at least ``clause_chars`` past ``spoken``."""
        cut = None
        for match in _CLAUSE_END.finditer(text, spoken):
            if match.end() - spoken >= self.clause_chars:
                cut = match.end()
        return cut

    async def _answer_items(self, protected: list[str], source: str, target: str,
                            options: MtOptions, rejected: str, *, stream: bool
                            ) -> AsyncIterator[tuple[int, str, bool]]:
        """``(index, text so far, complete)`` of the answer's translations, marks kept.

        Schema-bound engines (llama.cpp's grammar fixes the count) are read as they write;
        others are read whole first, and a wrong count is rejected (:class:`_Rejected`) before
        anything is handed on: a merged sentence would otherwise be spoken before the count
        showed it.
        """
        extra = dict(self._llm_kwargs)
        if self.grammar and target == "ru":
            allowed = latin_tokens(protected, glossary_targets=[w for _, w in options.glossary],
                                   names=self.latin_names)
            extra["grammar"] = answer_grammar(len(protected), allowed)
        bound = self.llm.capabilities.json_schema or "grammar" in extra
        schema = self._schema(len(protected)) if bound and "grammar" not in extra else None
        messages = self._messages(protected, source, target, options, rejected=rejected,
                                  examples=self.examples)
        max_tokens = 32 + self.max_tokens_per_sentence * len(protected)
        parser = _JsonStrings("translations")
        answer: list[str] = []
        llm_stream = self.llm.stream(messages, max_tokens=max_tokens, temperature=0.0,
                                     json_schema=schema, **extra)
        try:
            async for delta in llm_stream:
                if not bound:
                    answer.append(delta)
                    continue
                for index, text, complete in parser.feed(delta):
                    if complete or stream:
                        yield index, text, complete
        finally:
            closer = getattr(llm_stream, "aclose", None)
            if closer is not None:
                await closer()
        if bound:
            if not parser.started:
                raise _Rejected('no "translations" list of strings')
            return
        found = [(i, t) for i, t, done in parser.feed("".join(answer)) if done]
        if not parser.started:
            raise _Rejected("no valid JSON object")
        if len(found) != len(protected):
            raise _Rejected(f"{len(found)} translations for {len(protected)} sentences")
        for index, text in found:
            yield index, text, True

    @staticmethod
    def _schema(count: int) -> dict[str, Any]:
        return {"type": "object",
                "properties": {"translations": {"type": "array", "minItems": count,
                                                "maxItems": count,
                                                "items": {"type": "string", "minLength": 1}}},
                "required": ["translations"], "additionalProperties": False}

    @staticmethod
    def _messages(sentences: list[str], source: str, target: str, options: MtOptions,
                  rejected: str = "", *, examples: bool = False) -> list[ChatMessage]:
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
        user += _sentences_message(src, sentences)
        shots: list[ChatMessage] = []
        if examples and (source, target) in _EXAMPLES:
            shown, answer = _EXAMPLES[(source, target)]
            shots = [ChatMessage("user", _sentences_message(src, shown)),
                     ChatMessage("assistant", json.dumps({"translations": answer},
                                                         ensure_ascii=False))]
        return [ChatMessage("system", " ".join(rules)), *shots, ChatMessage("user", user)]


# One worked example shown before the request (few-shot) when ``examples`` is on: a name
# transliterated, a clause. Measured (bench/README.md): +0.7 chrF EN->RU at most, not default.
_EXAMPLES: dict[tuple[str, str], tuple[list[str], list[str]]] = {
    ("en", "ru"): (["Mr. Brown was not a rich man, but he was kind and generous.",
                    "Unless the train is late, we will arrive before dinner."],
                   ["Мистер Браун не был богатым человеком, но он был добрым и щедрым.",
                    "Если поезд не опоздает, мы приедем до ужина."]),
}


def _sentences_message(src: str, sentences: list[str]) -> str:
    return f"{src} sentences ({len(sentences)}):\n" + json.dumps({"sentences": sentences},
                                                                 ensure_ascii=False)


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


def _restore(text: str, source: str, kept: dict[str, str]) -> tuple[str, str]:
    """``text`` whitespace-normalised (one trailing space kept: a clause end needs it) with the
    marks put back; and why a mark of ``source`` is missing from it ("" when none is)."""
    trailing = " " if text[-1:].isspace() else ""
    text = " ".join(text.split()) + trailing if text.strip() else ""
    lost = ""
    for mark, phrase in kept.items():
        if source.count(mark) != text.count(mark) and not lost:
            lost = f"the do-not-translate phrase {phrase!r} was lost"
        text = text.replace(mark, phrase)
    return text, lost


class _Rejected(Exception):
    """An answer with no usable list of translations (the reason is the message)."""


class _JsonStrings:
    """The strings of one JSON array member (``{"translations": ["...", ...]}``) as a model
    writes them: :meth:`feed` returns ``(index, text so far, complete)`` for every string that
    grew or closed. Prose or a code fence around the object is skipped; escapes are decoded."""

    _ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
                "t": "\t"}

    def __init__(self, key: str) -> None:
        self._seek = re.compile(r'"' + re.escape(key) + r'"\s*:\s*\[')
        self._buffer = ""  # text not consumed yet
        self.started = False
        self._state = "seek"  # seek | between | string | end
        self._text: list[str] = []
        self._index = 0

    def feed(self, delta: str) -> list[tuple[int, str, bool]]:
        buf = self._buffer + delta
        out: list[tuple[int, str, bool]] = []
        i = 0
        if self._state == "seek":
            match = self._seek.search(buf)
            if match is None:
                self._buffer = buf[-64:]  # the key may be cut between deltas
                return out
            self.started, self._state, i = True, "between", match.end()
        grew = False
        while i < len(buf) and self._state != "end":
            ch = buf[i]
            if self._state == "between":
                if ch == '"':
                    self._state, self._text = "string", []
                elif ch == "]":
                    self._state = "end"
                i += 1
            elif ch == "\\":
                if i + 1 >= len(buf) or (buf[i + 1] == "u" and i + 6 > len(buf)):
                    break  # the escape is cut between deltas
                if buf[i + 1] == "u":
                    try:
                        self._text.append(chr(int(buf[i + 2:i + 6], 16)))
                    except ValueError:
                        self._text.append(buf[i:i + 6])
                    i += 6
                else:
                    self._text.append(self._ESCAPES.get(buf[i + 1], buf[i + 1]))
                    i += 2
                grew = True
            elif ch == '"':
                out.append((self._index, "".join(self._text), True))
                self._index += 1
                self._state, grew = "between", False
                i += 1
            else:
                self._text.append(ch)
                grew = True
                i += 1
        self._buffer = buf[i:]
        if self._state == "string" and grew:
            out.append((self._index, "".join(self._text), False))
        return out
