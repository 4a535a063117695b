"""Helpers for the speech-out door tests (Riva TTS, Wyoming TTS)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SentenceLog:
    """Sentences a SpeechService started to synthesize, and how many are in progress now."""

    said: list[str] = field(default_factory=list)
    running: int = 0


@contextmanager
def counting_sentences(service: Any) -> Iterator[SentenceLog]:
    """Record every sentence ``service`` (a SpeechService) synthesizes while the block runs;
    synthesis itself is the real one, only counted."""
    log = SentenceLog()
    lock = threading.Lock()
    original = service._say

    def counting_say(engine, ref, sentence, speed):
        with lock:
            log.said.append(sentence)
            log.running += 1
        try:
            return original(engine, ref, sentence, speed)
        finally:
            with lock:
                log.running -= 1

    service._say = counting_say
    try:
        yield log
    finally:
        service._say = original
