"""A GBNF grammar that makes a Russian translation Cyrillic by construction (llama.cpp).

A 1.5B model translating English into Russian runs out of Russian mid-word: "Дашwood",
"prudentным", "в его poderе". The guard in ``mt_llm`` rejects such answers, but a rejection
costs a retry and, when the model repeats itself, the whole utterance. With llama.cpp the
sampler can forbid them instead: :func:`answer_grammar` describes the JSON answer
``{"translations": ["...", ...]}`` (exactly one string per sentence) whose strings hold only
Cyrillic words, digits, punctuation and spaces, plus Latin only as *whole tokens the source
allows*:

* the marks ``<x1>``, ``<x2>``... that stand for do-not-translate phrases (``mt_llm._protect``);
* the Latin words of glossary targets (``"server" -> "Kubernetes"``);
* acronyms and brand-like words of the source (``NASA``, ``USB``, ``iPhone``, ``MP3``);
* with ``names=True``, capitalised words of the source that are not the first word of their
  sentence (``John``, ``Dashwood``). With ``names=False`` names must be written in Cyrillic
  (Russian transliterates them: "Джон Дэшвуд"); honorifics (``Mr``, ``Mrs``, ``Dr``) never pass
  in Latin, Russian says "мистер".

A word is either all Cyrillic or one allowed Latin token, and two words are separated by at
least one non-letter, so "Дашwood" cannot be written even when "Dashwood" is allowed. The
grammar fixes only the script: the guard (``check_translation``) stays the last check.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

__all__ = ["answer_grammar", "latin_tokens", "string_pattern"]

# Latin words of the source: letters, then letters or digits ("MP3", "iPhone", "COVID19")
_SOURCE_WORD = re.compile(r"(?<![\w])[A-Za-z][A-Za-z0-9]*(?![\w])")
_MARK = re.compile(r"<x\d+>")
_HONORIFICS = frozenset({"mr", "mrs", "ms", "miss", "dr", "prof", "sir", "st", "jr", "sr"})
# what may stand between words inside a translation: space, digits, punctuation, quotes
_OTHER = r"""[ 0-9.,!?;:()«»„“”'…%/+№=*&°–—-]"""
_CYRILLIC = r"[\u0400-\u04FF]"
_ESCAPED_QUOTE = '\\"'  # a quote inside a JSON string, as written: backslash, quote


def latin_tokens(sentences: Sequence[str], *, glossary_targets: Iterable[str] = (),
                 names: bool = False) -> list[str]:
    """The Latin tokens a Russian translation of ``sentences`` may contain (sorted, unique):
    do-not-translate marks, Latin words of glossary targets, the source's acronyms and
    brand-like words, and with ``names`` its capitalised non-initial words (see module doc)."""
    allowed: set[str] = set()
    for sentence in sentences:
        allowed.update(_MARK.findall(sentence))
        for position, match in enumerate(_SOURCE_WORD.finditer(_MARK.sub(" ", sentence))):
            word = match.group(0)
            if word.lower() in _HONORIFICS:
                continue
            letters = [ch for ch in word if ch.isalpha()]
            acronym = len(letters) >= 2 and all(ch.isupper() for ch in letters)
            brand = any(ch.isupper() for ch in word[1:]) or any(ch.isdigit() for ch in word)
            name = names and word[0].isupper() and position > 0 and len(word) > 1
            if acronym or brand or name:
                allowed.add(word)
    for target in glossary_targets:
        allowed.update(m.group(0) for m in _SOURCE_WORD.finditer(target))
    return sorted(allowed)


def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a GBNF string literal is JSON-quoted


def _tokens(allowed: Iterable[str]) -> list[str]:
    tokens = sorted({t for t in allowed if t.strip()}, key=lambda t: (-len(t), t))
    bad = [t for t in tokens if not re.fullmatch(r"[A-Za-z0-9<>]+", t)]
    if bad:
        raise ValueError(f"allowed tokens must be single Latin words or marks: {bad[:3]}")
    return tokens


def string_pattern(allowed: Iterable[str] = ()) -> re.Pattern[str]:
    """The language of one answer string of :func:`answer_grammar` (its JSON-escaped content,
    without the quotes) as a Python regex, built from the same parts, so what the grammar
    allows and forbids can be checked without a model (tests/test_mt_grammar.py)."""
    word = "|".join([_CYRILLIC + "+", *(re.escape(t) for t in _tokens(allowed))])
    other = f"(?:{_OTHER}|{re.escape(_ESCAPED_QUOTE)})"
    return re.compile(f"(?:{other}*(?:{word})(?:{other}+(?:{word}))*{other}*|{other}+)")


def answer_grammar(count: int, allowed: Iterable[str] = ()) -> str:
    """GBNF for ``{"translations": [s1, ..., s<count>]}`` whose strings are Cyrillic text with
    only the ``allowed`` Latin tokens (whole words). ``count`` >= 1."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    tokens = _tokens(allowed)
    word = "cyr+" + "".join(f" | {_literal(t)}" for t in tokens)
    strings = ' "," ws '.join(["str"] * count)
    return "\n".join([
        f'root ::= "{{" ws "\\"translations\\"" ws ":" ws "[" ws {strings} ws "]" ws "}}"',
        'str ::= "\\"" body "\\""',
        "body ::= other* word (other+ word)* other* | other+",
        f"word ::= {word}",
        f"cyr ::= {_CYRILLIC}",
        f"other ::= {_OTHER} | {_literal(_ESCAPED_QUOTE)}",
        "ws ::= [ \\t\\n]{0,20}",
    ]) + "\n"
