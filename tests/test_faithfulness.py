"""Summary faithfulness check (issue 14): names and numbers of a summary must occur in the
transcript. Cases from real summaries the offline 1.5B model wrote (bench/README.md)."""

from __future__ import annotations

from voxgate.faithfulness import check_summary, summary_strings

GETTYSBURG_ASR = ("Four score and seven years ago, our fathers brought forth on this continent a "
                  "new nation, conceived in liberty and dedicated to the proposition that all men "
                  "are created equal.")


def test_invented_names_are_flagged_and_spoken_ones_are_not() -> None:
    summary = {"title": "The Gettysburg Address",
               "summary": "Here Lincoln says the nation was conceived in Liberty. It discusses "
                          "the Declaration of Independence.",
               "key_points": ["All men are created equal."], "decisions": [],
               "action_items": [{"task": "Dedicate the field", "owner": "unknown"}]}
    report = check_summary(summary, GETTYSBURG_ASR)
    assert report.not_in_transcript == ["Gettysburg", "Address", "Lincoln", "Declaration",
                                        "Independence"]
    assert "Liberty" in report.checked  # capitalised mid-sentence, said (case ignored)
    # sentence-initial words are not taken for names (a name said only there goes unchecked)
    assert "It" not in report.checked and "All" not in report.checked and "Here" not in report.checked
    assert report.metrics() == {"names_numbers_checked": len(report.checked),
                                "names_numbers_not_in_transcript": report.not_in_transcript}


def test_numbers_digits_or_words_titles_possessives_and_stems() -> None:
    transcript = ("Mr. John Dashwood had then leisure to consider how much there might be in his "
                  "power. The roof took 11,000 pounds and four weeks; Tom's team meets at ten.")
    summary = {"title": "Mr. John Dashwood's Considerations",
               "points": ["The roof cost 11,000 pounds over 4 weeks.", "Meeting at 10 with Tom.",
                          "Budget of 42,000 pounds, due in 1811."]}
    report = check_summary(summary, transcript)
    assert "John" in report.checked  # after "Mr.", not a sentence start
    assert report.not_in_transcript == ["42,000", "1811"]


def test_empty_or_nameless_summaries() -> None:
    assert check_summary(None, "text").checked == []
    report = check_summary({"summary": "nothing was decided.", "items": []}, "")
    assert report.checked == [] and report.not_in_transcript == []
    assert summary_strings({"a": ["x", {"b": "y"}], "c": 3}) == ["x", "y"]
