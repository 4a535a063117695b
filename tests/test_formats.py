"""Transcript writers: SRT/VTT parse with the subtitle libraries players use; JSON/TSV/text."""

from __future__ import annotations

import io
import json

import pytest
import srt
import webvtt

from voxgate.formats import FORMATS, format_timestamp, render
from voxgate.transcriber import FileTranscriber, TranscribeRequest
from voxgate.types import Segment, Transcript, Word


def _transcript() -> Transcript:
    return Transcript(
        segments=[
            Segment(0, 0.0, 2.5, " Hello there.", [Word(0.0, 0.4, "Hello", 0.9),
                                                    Word(0.5, 2.5, "there.", 0.8)]),
            Segment(1, 2.5, 2.5, "Zero length --> still a cue"),
            Segment(2, 3.0, 4.0, "   "),  # blank: no cue
            Segment(3, 3725.25, 3727.0, "After an hour,\tcomma and tab."),
        ],
        language="en", language_probability=0.98, duration=3730.0, model="whisper-base")


@pytest.fixture(scope="module")
def real(settings, manager, librivox) -> Transcript:
    runner = FileTranscriber(settings, TranscribeRequest(model="whisper-base", language="en",
                                                         word_timestamps=True), manager)
    return runner.run(librivox[0].path)


def test_timestamps() -> None:
    assert format_timestamp(0) == "00:00:00.000"
    assert format_timestamp(3725.2506, ",") == "01:02:05,251"
    assert format_timestamp(59.9996) == "00:01:00.000"
    assert format_timestamp(-1) == "00:00:00.000"


def test_srt_parses_with_the_srt_library() -> None:
    subs = list(srt.parse(render(_transcript(), "srt")))
    assert [s.index for s in subs] == [1, 2, 3]
    assert subs[0].content == "Hello there."
    assert "-->" not in subs[1].content and subs[1].end > subs[1].start
    assert subs[2].start.total_seconds() == pytest.approx(3725.25)
    assert srt.compose(subs)  # round-trips


def test_vtt_parses_with_webvtt() -> None:
    captions = webvtt.from_buffer(io.StringIO(render(_transcript(), "vtt")))
    assert captions[0].text == "Hello there."
    assert len(captions) == 3
    assert captions[2].start == "01:02:05.250"


def test_json_tsv_text() -> None:
    t = _transcript()
    data = json.loads(render(t, "json"))
    assert data["language"] == "en" and data["segments"][0]["words"][1]["word"] == "there."
    assert data["text"].startswith("Hello there. Zero length")
    rows = render(t, "tsv").splitlines()
    assert rows[0] == "start\tend\ttext" and rows[-1].split("\t")[:2] == ["3725250", "3727000"]
    assert len(rows[-1].split("\t")) == 3  # a tab inside the text does not add a column
    assert render(t, "text").endswith("comma and tab.\n")
    empty = Transcript([], "", 0.0, 5.0)
    assert render(empty, "text") == "" and render(empty, "vtt").startswith("WEBVTT")
    assert list(srt.parse(render(empty, "srt"))) == []
    with pytest.raises(ValueError, match="unknown format"):
        render(t, "docx")
    assert set(FORMATS) == {"text", "json", "srt", "vtt", "tsv"}


def test_real_transcript_in_every_format(real: Transcript) -> None:
    subs = list(srt.parse(render(real, "srt")))
    captions = webvtt.from_buffer(io.StringIO(render(real, "vtt")))
    assert subs and len(subs) == len(captions)
    assert "dashwood" in " ".join(s.content for s in subs).lower()
    for sub in subs:
        assert 0 <= sub.start.total_seconds() < sub.end.total_seconds() <= real.duration + 1e-3
    data = json.loads(render(real, "json"))
    assert data["segments"][0]["words"] and data["vad_coverage"] > 0.5
    assert 0.5 < data["confidence"] <= 1.0
