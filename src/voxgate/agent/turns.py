"""When has the user finished their turn? Pure functions, unit-tested on text.

The silence rule lives in the session (``end_of_turn_ms`` of silence after speech); this
module adds the text check: a turn whose text is clearly unfinished (it ends in a conjunction,
an article, a preposition or a comma: "I'd like to book a table for", "and then,") waits up to
``unfinished_wait_ms`` instead, for the rest of the sentence; one that is clearly complete (a
question asked: "What is the capital of France?") only ``complete_wait_ms``. A full stop is no
such sign: Whisper ends almost every utterance with one, mid-thought pauses included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["UserTurn", "count_words", "looks_complete", "looks_unfinished"]

# words a finished English sentence practically never ends with
_DANGLING = frozenset("""
a an the and or but so because if that which whose than of for with into onto to my your his
her our their its these those very um uh er erm
""".split())
_WORD = re.compile(r"\w[\w'\u2019-]*", re.UNICODE)  # "mm-hmm" is one word


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def looks_unfinished(text: str, language: str | None = "en") -> bool:
    """True when ``text`` stops mid-sentence: a trailing comma/dash/colon/ellipsis, or (English)
    a last word that practically never ends a sentence (article, conjunction, possessive, "to",
    "of", "for", "with", a filler), even with a full stop after it (Whisper adds one to almost
    everything). Words that end phrasal verbs and questions ("go on", "where from") are fine."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped[-1] in ",;:-\u2014\u2013" or stripped.endswith("..."):
        return True
    if language not in (None, "en") and not (language or "").startswith("en"):
        return False
    if stripped.endswith("?"):
        return False  # a question asked
    words = _WORD.findall(stripped.lower())
    return bool(words) and words[-1] in _DANGLING


_QUESTION_END = re.compile(r"[?\uff1f\u061f\u037e][\"'\u201d\u2019)\]]*$")


def looks_complete(text: str) -> bool:
    """True when ``text`` ends a question (``?``, full-width ``？``, Arabic ``؟``, Greek ``;``):
    the user asked and now waits for the answer (``min_words`` still applies)."""
    return bool(_QUESTION_END.search(text.strip()))


@dataclass(slots=True)
class UserTurn:
    """The user's turn in progress: its finals so far and when the speech stopped."""

    turn_id: int
    started_at: float
    texts: list[str] = field(default_factory=list)
    speech_end_at: float | None = None  # input seconds
    speech_end_wall: float | None = None
    final_wall: float | None = None
    cut: bool = False

    @property
    def text(self) -> str:
        return " ".join(t.strip() for t in self.texts if t.strip())
