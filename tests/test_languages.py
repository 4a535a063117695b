"""One rule for the language a client names, whatever door it comes through."""

from __future__ import annotations

import pytest

from voxgate.languages import language_code, language_name, primary_language


@pytest.mark.parametrize("value, expected", [
    ("en", "en"), ("en-US", "en"), ("en_us", "en"), ("EN", "en"), (" ru-RU ", "ru"),
    ("English", "en"), ("russian", "ru"), ("Haitian Creole", "ht"), ("yue", "yue"),
    ("", None), ("auto", None), ("AUTO", None), ("multi", None), (None, None),
])
def test_every_spelling_of_a_language_is_one_code(value, expected) -> None:
    assert primary_language(value) == expected


@pytest.mark.parametrize("value", ["12-34", "e", "englishh", "ру", "en/../x", "a" * 500])
def test_what_is_not_a_language_is_refused_with_the_value_quoted(value) -> None:
    with pytest.raises(ValueError, match="not a language code") as err:
        primary_language(value)
    assert len(str(err.value)) < 80  # a long value is cut, not echoed whole


def test_names_and_codes_round_trip() -> None:
    assert language_code(language_name("ru")) == "ru"
