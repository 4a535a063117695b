"""Language codes and English names of the languages Whisper knows.

OpenAI's API reports languages by name ("english") while requests carry ISO-639-1 codes ("en");
Wyoming's ``info`` lists codes. One table serves both, and lets users send either form.
"""

from __future__ import annotations

__all__ = ["WHISPER_LANGUAGES", "language_code", "language_name", "primary_language"]

_TABLE = """
en english|zh chinese|de german|es spanish|ru russian|ko korean|fr french|ja japanese|
pt portuguese|tr turkish|pl polish|ca catalan|nl dutch|ar arabic|sv swedish|it italian|
id indonesian|hi hindi|fi finnish|vi vietnamese|he hebrew|uk ukrainian|el greek|ms malay|
cs czech|ro romanian|da danish|hu hungarian|ta tamil|no norwegian|th thai|ur urdu|hr croatian|
bg bulgarian|lt lithuanian|la latin|mi maori|ml malayalam|cy welsh|sk slovak|te telugu|
fa persian|lv latvian|bn bengali|sr serbian|az azerbaijani|sl slovenian|kn kannada|et estonian|
mk macedonian|br breton|eu basque|is icelandic|hy armenian|ne nepali|mn mongolian|bs bosnian|
kk kazakh|sq albanian|sw swahili|gl galician|mr marathi|pa punjabi|si sinhala|km khmer|sn shona|
yo yoruba|so somali|af afrikaans|oc occitan|ka georgian|be belarusian|tg tajik|sd sindhi|
gu gujarati|am amharic|yi yiddish|lo lao|uz uzbek|fo faroese|ht haitian creole|ps pashto|
tk turkmen|nn nynorsk|mt maltese|sa sanskrit|lb luxembourgish|my myanmar|bo tibetan|tl tagalog|
mg malagasy|as assamese|tt tatar|haw hawaiian|ln lingala|ha hausa|ba bashkir|jw javanese|
su sundanese|yue cantonese
"""

WHISPER_LANGUAGES: dict[str, str] = dict(
    entry.strip().split(" ", 1) for entry in _TABLE.replace("\n", "").split("|")
)
_BY_NAME = {name: code for code, name in WHISPER_LANGUAGES.items()}


def language_name(code: str) -> str:
    """``"en"`` -> ``"english"``; unknown codes are returned unchanged."""
    return WHISPER_LANGUAGES.get(code, code)


def language_code(value: str) -> str:
    """Accept a code or an English name (any case): ``"English"`` -> ``"en"``."""
    lowered = value.strip().lower()
    return _BY_NAME.get(lowered, lowered)


_DETECT = ("", "auto", "multi")


def primary_language(value: str | None) -> str | None:
    """Any form of a language a client sends -> voxgate's primary code; None means "detect".

    The one rule every door uses: ``"en-US"``, ``"en_us"``, ``"EN"`` and ``"English"`` are
    ``"en"``; ``""``, ``"auto"`` and ``"multi"`` (Riva) are None. Raises ValueError (the message
    quotes the value) when it is neither a language name nor a 2-3 letter code.
    """
    text = (value or "").strip()
    if text.lower() in _DETECT:
        return None
    by_name = _BY_NAME.get(text.lower())
    if by_name:
        return by_name
    primary = text.replace("_", "-").split("-")[0].lower()
    if not primary.isascii() or not primary.isalpha() or not 2 <= len(primary) <= 3:
        raise ValueError(f"not a language code: {text[:40]!r}")
    return primary
