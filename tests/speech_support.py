"""Helpers for the speech-out door tests (Riva TTS, Wyoming TTS)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def counting_sentences(service: Any) -> Iterator[list[str]]:
    """Record every sentence ``service`` (a SpeechService) synthesizes while the block runs;
    synthesis itself is the real one, only counted."""
    said: list[str] = []
    lock = threading.Lock()
    original = service._say

    def counting_say(engine, ref, sentence, speed):
        with lock:
            said.append(sentence)
        return original(engine, ref, sentence, speed)

    service._say = counting_say
    try:
        yield said
    finally:
        service._say = original
