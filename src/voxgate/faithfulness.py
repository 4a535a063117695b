"""Summary faithfulness without a judge model: names and numbers must come from the transcript.

A small LLM that summarises a transcript sometimes adds what it knows rather than what was said
(bench/README.md "Cleanup": a Gettysburg summary named the Declaration of Independence, which
the speech never mentions). Names and numbers are the part of such an addition that can be
checked in code: every capitalised word that does not start a sentence, and every number, in
any string of the summary, should occur in the transcript. :func:`check_summary` lists those
that do not; a job reports them in ``enhancement_metrics`` (issue 14).

The check is deliberately simple and errs towards flagging: a word counts as said when the
transcript has it, case and possessive ``'s`` ignored, or has the same stem (common English
suffixes off: "Considerations" is supported by "consider"); a number when the transcript has
its digits or, up to twenty and the tens, its word ("4" by "four"). Title-cased headings can
still raise a false alarm, so the result is a measurement, not a reason to fail a job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .text_edits import norm_words

__all__ = ["FaithfulnessReport", "check_summary", "summary_strings"]

_CANDIDATE = re.compile(r"\b(?:[A-Z][\w'-]*|\d[\d,.:]*)")
_ABBREVIATION = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Prof)\.$")
_SUFFIXES = ("ations", "ation", "ions", "ion", "ings", "ing", "ies", "ed", "es", "s")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                 "nine", "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
                 "sixteen", "seventeen", "eighteen", "nineteen", "twenty")
_TENS = {30: "thirty", 40: "forty", 50: "fifty", 60: "sixty", 70: "seventy", 80: "eighty",
         90: "ninety", 100: "hundred", 1000: "thousand"}


@dataclass(frozen=True)
class FaithfulnessReport:
    """Names/numbers the summary states (``checked``) and those the transcript never says."""

    checked: list[str] = field(default_factory=list)
    not_in_transcript: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return {"names_numbers_checked": len(self.checked),
                "names_numbers_not_in_transcript": list(self.not_in_transcript)}


def summary_strings(value: Any) -> list[str]:
    """Every string inside a summary (dicts and lists walked in order)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in summary_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in summary_strings(item)]
    return []


def _starts_sentence(text: str, at: int) -> bool:
    before = text[:at].rstrip()
    if not before:
        return True
    if _ABBREVIATION.search(before):  # "Mr. John": a title, not the end of a sentence
        return False
    return before[-1] in ".?!:;\"(\u2014-"


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _number_words(token: str) -> set[str]:
    digits = token.replace(",", "").rstrip(".:")
    if not digits.isdigit():
        return set()
    value = int(digits)
    if value < len(_NUMBER_WORDS):
        return {_NUMBER_WORDS[value]}
    return {_TENS[value]} if value in _TENS else set()


def check_summary(summary: Any, transcript: str) -> FaithfulnessReport:
    """Names (capitalised, not sentence-initial) and numbers of ``summary`` not in ``transcript``."""
    found: dict[str, None] = {}
    for text in summary_strings(summary):
        for match in _CANDIDATE.finditer(text):
            token = match.group(0)
            if token[0].isdigit() or not _starts_sentence(text, match.start()):
                found[re.sub(r"'s$", "", token).rstrip(".,:'-")] = None
    said = [word.removesuffix("'s") for word in norm_words(transcript)]
    words = set(said)
    stems = {_stem(w) for w in said}
    joined = f" {' '.join(said)} "
    missing = []
    for name in found:
        keys = norm_words(name)
        if not keys:
            continue
        if len(keys) == 1:
            key = keys[0]
            ok = key in words or _stem(key) in stems or bool(_number_words(name) & words)
        else:  # hyphenated or dotted: the words in order
            ok = f" {' '.join(keys)} " in joined
        if not ok:
            missing.append(name)
    return FaithfulnessReport(checked=list(found), not_in_transcript=missing)
