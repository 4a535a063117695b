"""Transcript edits checked in code: what an LLM may change in a transcript, and how.

Cleanup asks a small LLM to fix punctuation and casing. A small model also rewords, drops or
invents words, which makes the word error rate worse (issue 14: WER 1.4% -> 3.0%). So whatever
the model answers passes through these checks, never straight into the result:

* :func:`apply_edits` applies a list of ``{"old", "new"}`` edits: ``old`` must be found verbatim
  in the source (in order, not overlapping) and, with ``keep_words``, ``new`` must say the same
  words (:func:`norm_words`: lower case, punctuation off), so only punctuation and casing change.
* :func:`keep_source_words` takes a rewritten text and keeps only its punctuation and casing on
  the source's own words (aligned with ``difflib``); words the rewrite changed stay as spoken.
* :func:`looks_punctuated` tells a chunk whose ASR output already has sentence punctuation and
  casing (Whisper's usually has), which cleanup can skip.

With ``keep_words`` the normalised words never change, so the WER against any reference is
exactly the raw ASR's.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EditOutcome", "apply_edits", "edits_schema", "keep_source_words", "looks_punctuated",
           "norm_words"]

_STRIP = re.compile(r"[^\w']+")
_DOUBLED = re.compile(r"[.,;:?!]\s*[.,;:?!]")
_SENTENCE_END = re.compile(r"[.?!][\"')\]]*$")


def norm_words(text: str) -> list[str]:
    """Words as WER counts them: lower case, hyphens split, other punctuation removed."""
    words = []
    for token in text.replace("-", " ").replace("\u2014", " ").split():
        word = _STRIP.sub("", token.lower()).strip("'")
        if word:
            words.append(word)
    return words


def edits_schema(max_edits: int) -> dict[str, Any]:
    """JSON Schema of the edit list (llama.cpp turns it into a grammar: the answer parses)."""
    return {"type": "object", "additionalProperties": False, "required": ["edits"],
            "properties": {"edits": {
                "type": "array", "maxItems": max_edits,
                "items": {"type": "object", "additionalProperties": False,
                          "required": ["old", "new"],
                          "properties": {"old": {"type": "string", "minLength": 1,
                                                 "maxLength": 120},
                                         "new": {"type": "string", "minLength": 1,
                                                 "maxLength": 160}}}}}}


@dataclass
class EditOutcome:
    """The edited text and what happened to each proposed edit."""

    text: str
    applied: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)


def apply_edits(source: str, edits: Sequence[Any], keep_words: bool = True) -> EditOutcome:
    """Apply the valid edits in order; an invalid one is skipped with its reason.

    ``old`` is searched from the end of the previous applied edit, so edits cannot overlap or
    go back; a no-op edit (``old == new``) is neither applied nor counted as rejected.
    """
    out: list[str] = []
    cursor = 0
    outcome = EditOutcome(source)
    for edit in edits:
        old = edit.get("old") if isinstance(edit, dict) else None
        new = edit.get("new") if isinstance(edit, dict) else None
        if not isinstance(old, str) or not isinstance(new, str) or not old.strip() \
                or not new.strip():
            outcome.rejected += 1
            outcome.reasons.append("malformed edit")
            continue
        if old == new:
            continue
        at = source.find(old, cursor)
        if at < 0:
            outcome.rejected += 1
            outcome.reasons.append(f"not in the source: {old[:40]!r}")
            continue
        if _DOUBLED.search(new) and not _DOUBLED.search(old):
            outcome.rejected += 1
            outcome.reasons.append(f"doubled punctuation: {new[:40]!r}")
            continue
        if keep_words and norm_words(old) != norm_words(new):
            outcome.rejected += 1
            outcome.reasons.append(f"changes words: {old[:40]!r} -> {new[:40]!r}")
            continue
        out.append(source[cursor:at])
        out.append(new)
        cursor = at + len(old)
        outcome.applied += 1
    out.append(source[cursor:])
    outcome.text = " ".join("".join(out).split())
    return outcome


def keep_source_words(source: str, rewritten: str) -> str:
    """``rewritten``'s punctuation and casing on ``source``'s words; other changes undone.

    Tokens are aligned on their normalised words; where the rewrite says the same words its
    tokens are taken, elsewhere (words added, dropped or changed) the source's tokens stay.
    """
    src_tokens, new_tokens = source.split(), rewritten.split()

    def keys(tokens: list[str]) -> list[str]:
        return [" ".join(norm_words(t)) for t in tokens]

    src_keys, new_keys = keys(src_tokens), keys(new_tokens)
    matcher = difflib.SequenceMatcher(None, src_keys, new_keys, autojunk=False)
    out: list[str] = []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        out.extend(new_tokens[j1:j2] if op == "equal" else src_tokens[i1:i2])
    return " ".join(out)


def looks_punctuated(text: str, max_words_per_sentence: int = 40) -> bool:
    """Sentence ends at least every ``max_words_per_sentence`` words, each followed by a capital.

    Lower-case, unpunctuated ASR (CTC models, older engines) fails this and goes to the LLM.
    """
    tokens = text.split()
    if not tokens:
        return True
    ends = [i for i, t in enumerate(tokens) if _SENTENCE_END.search(t)]
    if len(tokens) > max_words_per_sentence and \
            len(ends) < len(tokens) // max_words_per_sentence:
        return False
    # the chunk's last sentence may run on into the next chunk (chunks are cut by words)
    starts = [tokens[0]] + [tokens[i + 1] for i in ends if i + 1 < len(tokens)]
    letters = [s.lstrip("\"'(")[:1] for s in starts]
    return all(c.isupper() or not c.isalpha() for c in letters if c)
