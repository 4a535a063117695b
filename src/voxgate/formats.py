"""Transcript writers: text, json, srt, vtt, tsv (the formats Whisper users expect)."""

from __future__ import annotations

import json
from collections.abc import Callable

from .types import Transcript

__all__ = ["FORMATS", "render", "format_timestamp"]


def format_timestamp(seconds: float, decimal: str = ".", always_hours: bool = True) -> str:
    """``HH:MM:SS.mmm`` (SRT uses a comma, VTT a dot)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _text(t: Transcript) -> str:
    return t.text + "\n" if t.text else ""


def _json(t: Transcript) -> str:
    return json.dumps(t.to_dict(), ensure_ascii=False, indent=2) + "\n"


def _cues(t: Transcript) -> list[tuple[float, float, str]]:
    cues = []
    for seg in t.segments:
        text = seg.text.strip().replace("-->", "->")
        if text:
            cues.append((seg.start, max(seg.end, seg.start + 0.001), text))
    return cues


def _srt(t: Transcript) -> str:
    blocks = [f"{i}\n{format_timestamp(s, ',')} --> {format_timestamp(e, ',')}\n{text}\n"
              for i, (s, e, text) in enumerate(_cues(t), start=1)]
    return "\n".join(blocks)


def _vtt(t: Transcript) -> str:
    blocks = [f"{format_timestamp(s)} --> {format_timestamp(e)}\n{text}\n" for s, e, text in _cues(t)]
    return "WEBVTT\n\n" + "\n".join(blocks)


def _tsv(t: Transcript) -> str:
    rows = ["start\tend\ttext"]
    rows += [f"{round(s * 1000)}\t{round(e * 1000)}\t{text.replace(chr(9), ' ')}"
             for s, e, text in _cues(t)]
    return "\n".join(rows) + "\n"


FORMATS: dict[str, Callable[[Transcript], str]] = {
    "text": _text,
    "json": _json,
    "srt": _srt,
    "vtt": _vtt,
    "tsv": _tsv,
}

EXTENSIONS = {"text": "txt", "json": "json", "srt": "srt", "vtt": "vtt", "tsv": "tsv"}


def render(transcript: Transcript, fmt: str) -> str:
    """The transcript as a string in ``fmt`` (one of :data:`FORMATS`)."""
    try:
        return FORMATS[fmt](transcript)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}") from None
