"""Cleanup quality and speed (issue 14): does LLM cleanup help, what does it cost, which way wins.

Evaluation set (real speech first, then speech made from public-domain text):

* ``librivox``: the 5 LibriVox clips of /usr/share/pocketsphinx/test/data/librivox/ (Sense and
  Sensibility, ch. 1, read for LibriVox; public domain), joined with 0.3 s of silence into one
  24.7 s recording. Reference: the book's own text for the words read (Project Gutenberg eBook
  #161, ch. 1), punctuation and casing as printed, assembled here by hand from the clip spans in
  the ``transcription`` file (which is lower case without punctuation); the reader's repeated
  "a" in clip 0920 is in the reference because it was spoken.
* ``piper-gettysburg``, ``piper-austen``: the Gettysburg Address (Nicolay copy) and the opening
  of Sense and Sensibility, read by the offline Piper voice (synthetic speech; the text is the
  reference by construction).

Searched for other public-domain recordings with texts on this machine: every *.wav/*.flac/
*.ogg/*.mp3/*.raw/*.sph over 100 kB (only the LibriVox clips, ALSA test sounds, pocketsphinx
command/digit recordings and Festival's Russian unit database), and the PyPI name list for
speech corpora (librivox, librivox-mirror and audiobooker only download at run time).

Each recording's whisper-base output is the input in two forms: ``whisper`` (as the ASR gives
it, punctuated and cased) and ``lower`` (its words lower case with no punctuation, as a CTC/
Parakeet-style ASR gives them: the case where cleanup has work to do). Per method: WER against
the reference (normalised: lower case, punctuation off, hyphens split), punctuation F1 (marks
after aligned words; classes: sentence end . ? !, pause , ; : and dashes) and capitalisation F1
(aligned words starting upper case), share of chunks changed, and time per audio minute: wall,
process CPU seconds (all threads, llama.cpp's included) and llama.cpp's own token timings.
Wall time is unreliable on a loaded machine; CPU seconds and tok/s are read beside the load.

Summary faithfulness (no judge model): ``meeting_notes_v1`` on each recording's ASR text, twice:
the schema validates, both runs are identical, every name (capitalised word) and number in the
summary occurs in the transcript. Prompt-prefix reuse: the same request answered uncached and
after a request sharing its prefix with ``cache_prompt`` on: identical output or not.

    python bench/cleanup.py [--methods raw,rewrite-1.5b,...] [--no-summary] [--no-prefix]

Writes bench/results/cleanup.json and prints tables.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from voxgate.config import LlmSettings, Settings
from voxgate.text_edits import norm_words

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
SMALL = "qwen2.5-coder-0.5b-instruct-q4km"
LARGE = "qwen2.5-coder-1.5b-instruct-q4km"

# Project Gutenberg #161, ch. 1: the spans of clips 0870, 0880+0890, 0920+0930 (0900-0910 are not
# in the test data, so the text between "ill-disposed:" and "Had he married" is left out).
LIBRIVOX_REFERENCE = (
    "And Mr. John Dashwood had then leisure to consider how much there might be prudently in his "
    "power to do for them. He was not an ill-disposed young man, unless to be rather cold hearted "
    "and rather selfish is to be ill-disposed: had he married a more a amiable woman, he might "
    "have been made still more respectable than he was:—he might even have been made amiable "
    "himself;")
GETTYSBURG = (
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, "
    "conceived in Liberty, and dedicated to the proposition that all men are created equal. Now "
    "we are engaged in a great civil war, testing whether that nation, or any nation so conceived "
    "and so dedicated, can long endure. We are met on a great battle-field of that war. We have "
    "come to dedicate a portion of that field, as a final resting place for those who here gave "
    "their lives that that nation might live. It is altogether fitting and proper that we should "
    "do this.")
AUSTEN = (
    "The family of Dashwood had long been settled in Sussex. Their estate was large, and their "
    "residence was at Norland Park, in the centre of their property, where, for many "
    "generations, they had lived in so respectable a manner as to engage the general good "
    "opinion of their surrounding acquaintance. The late owner of this estate was a single man, "
    "who lived to a very advanced age, and who for many years of his life, had a constant "
    "companion and housekeeper in his sister. But her death, which happened ten years before his "
    "own, produced a great alteration in his home; for to supply her loss, he invited and "
    "received into his house the family of his nephew Mr. Henry Dashwood, the legal inheritor of "
    "the Norland estate, and the person to whom he intended to bequeath it.")

# name -> (PostProcessor.clean method, LLM id, keep_words, skip_punctuated); "raw": no cleanup
METHODS: dict[str, tuple[str, str, bool, bool] | None] = {
    "raw": None,
    "rewrite-1.5b (before)": ("rewrite", LARGE, False, False),
    "rewrite-1.5b keep-words": ("rewrite", LARGE, True, False),
    "edits-1.5b": ("edits", LARGE, True, False),
    "edits-0.5b": ("edits", SMALL, True, False),
    "rewrite-0.5b keep-words": ("rewrite", SMALL, True, False),
    "default (skip + edits-1.5b)": ("edits", LARGE, True, True),
}
# Answers by (model, request): methods that send the same request (rewrite before / keep-words)
# reuse the first answer (temperature 0: the same) and its llama.cpp timings, on a loaded machine.
_ANSWERS: dict[str, dict[str, Any]] = {}


class _MemoLlm:
    """The engine with answers remembered per request; timings summed as if asked again."""

    def __init__(self, model: str, llm: Any) -> None:
        self.model, self.llm, self.capabilities = model, llm, llm.capabilities
        self.reused = 0

    def complete_raw(self, messages: Any, **options: Any) -> dict[str, Any]:
        key = json.dumps([self.model, [(m.role, m.content) for m in messages], options],
                         sort_keys=True, default=str)
        if key in _ANSWERS:
            self.reused += 1
        else:
            _ANSWERS[key] = self.llm.complete_raw(messages, **options)
        return _ANSWERS[key]


# --- quality metrics --------------------------------------------------------------------------
@dataclass
class _Word:
    key: str
    cap: bool
    punct: str  # "", "end" or "pause"


_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st."}


def _annotated(text: str) -> list[_Word]:
    """Each spoken word with its casing and the punctuation class that follows it."""
    words: list[_Word] = []
    for token in text.split():
        pieces = re.split(r"(\u2014+|-{2,}|-)", token)  # dashes: punctuation; one hyphen: not
        for k in range(0, len(pieces), 2):
            part = pieces[k]
            if not norm_words(part):
                continue
            tail = "" if part.lower().strip("\"'(") in _ABBREVIATIONS \
                else re.sub(r"^.*?[\w']+", "", part, flags=re.DOTALL)
            after = pieces[k + 1] if k + 1 < len(pieces) else ""
            if after and after != "-":
                tail += "\u2014"
            punct = "end" if re.search(r"[.?!]", tail) else "pause" if re.search(
                r"[,;:\u2014]", tail) else ""
            letters = part.lstrip("\"'(")
            words.append(_Word(" ".join(norm_words(part)), letters[:1].isupper(), punct))
    return words


def _f1(tp: int, predicted: int, actual: int) -> float:
    precision = tp / predicted if predicted else 1.0
    recall = tp / actual if actual else 1.0
    return round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0


def quality(hypothesis: str, reference: str) -> dict[str, float]:
    """WER and punctuation/capitalisation F1 of ``hypothesis`` against ``reference``."""
    hyp, ref = _annotated(hypothesis), _annotated(reference)
    hyp_keys, ref_keys = [w.key for w in hyp], [w.key for w in ref]
    from voxgate.postprocess import _levenshtein

    wer = _levenshtein(ref_keys, hyp_keys) / max(len(ref_keys), 1)
    matcher = difflib.SequenceMatcher(None, hyp_keys, ref_keys, autojunk=False)
    pairs = [(hyp[i + k], ref[j + k]) for i, j, n in matcher.get_matching_blocks()
             for k in range(n)]
    punct_tp = sum(bool(h.punct) and h.punct == r.punct for h, r in pairs)
    cap_tp = sum(h.cap and r.cap for h, r in pairs)
    return {"wer": round(wer, 4),
            "punct_f1": _f1(punct_tp, sum(bool(h.punct) for h, _ in pairs),
                            sum(bool(r.punct) for _, r in pairs)),
            "cap_f1": _f1(cap_tp, sum(h.cap for h, _ in pairs), sum(r.cap for _, r in pairs))}


def unpunctuated(text: str) -> str:
    """What an ASR without punctuation or casing would give for the same words."""
    return " ".join(norm_words(text))


# --- evaluation set ---------------------------------------------------------------------------
def recordings(manager: Any) -> list[dict[str, Any]]:
    from voxgate.audio import decode_audio, resample

    gap = np.zeros(int(0.3 * 16000), dtype=np.float32)
    clips = [decode_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
    librivox = np.concatenate([x for clip in clips for x in (clip, gap)])
    tts = manager.get("tts", "en_US-joe-medium")
    out = [{"name": "librivox", "audio": librivox, "reference": LIBRIVOX_REFERENCE,
            "speech": "real (LibriVox)"}]
    for name, text in (("piper-gettysburg", GETTYSBURG), ("piper-austen", AUSTEN)):
        chunks = list(tts.synthesize(text))
        audio = np.concatenate([resample(np.asarray(c.audio, dtype=np.float32), c.sample_rate)
                                for c in chunks])
        out.append({"name": name, "audio": audio, "reference": text,
                    "speech": "synthetic (Piper joe)"})
    return out


def transcribe(settings: Settings, manager: Any, audio: np.ndarray) -> tuple[str, float]:
    from voxgate.transcriber import FileTranscriber, TranscribeRequest

    request = TranscribeRequest(model=settings.asr.model, language="en",
                                beam_size=settings.asr.beam_size,
                                batch_size=settings.asr.batch_size)
    transcript = FileTranscriber(settings, request, manager).run_audio(audio)
    return transcript.text, transcript.confidence


# --- runs -------------------------------------------------------------------------------------
def run_method(settings: Settings, manager: Any, name: str, docs: list[dict[str, Any]],
               ) -> list[dict[str, Any]]:
    from jobs import _TimedLlm

    from voxgate.postprocess import PostProcessor

    spec = METHODS[name]
    rows = []
    for doc in docs:
        for variant, text in (("whisper", doc["asr"]), ("lower", unpunctuated(doc["asr"]))):
            minutes = doc["audio_s"] / 60
            row: dict[str, Any] = {"name": name, "doc": doc["name"], "input": variant}
            if spec is None:
                row.update(quality(text, doc["reference"]), chunks=1, chunks_changed=0)
                rows.append(row)
                continue
            method, model, keep_words, skip = spec
            llm_settings = LlmSettings(**{**settings.llm.model_dump(),
                                          "cleanup_keep_words": keep_words,
                                          "cleanup_skip_punctuated": skip})
            run_settings = settings.model_copy(update={"llm": llm_settings})
            memo = _MemoLlm(model, manager.get("llm", model))
            timed = _TimedLlm(memo)
            wall, cpu = time.perf_counter(), time.process_time()
            result = PostProcessor(timed, run_settings).clean(text, method=method,
                                                              confidence=doc["confidence"])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            metrics = result.metrics()
            metrics["clean_method"] = metrics.pop("method")
            row.update(quality(result.text, doc["reference"]), **metrics,
                       wall_s_per_audio_min=round(wall / minutes, 2),
                       cpu_s_per_audio_min=round(cpu / minutes, 2),
                       llama=timed.report(), answers_reused=memo.reused, text=result.text,
                       input_text=text)
            rows.append(row)
    return rows


def summary_checks(settings: Settings, manager: Any, docs: list[dict[str, Any]],
                   ) -> list[dict[str, Any]]:
    """Schema, determinism and names/numbers found in the transcript, per recording."""
    import jsonschema

    from voxgate.faithfulness import check_summary
    from voxgate.postprocess import PostProcessor, load_template

    template = load_template(settings, "meeting_notes_v1")
    rows = []
    for doc in docs:
        post = PostProcessor(manager.get("llm", LARGE), settings)
        wall, cpu = time.perf_counter(), time.process_time()
        first = post.summarize(doc["asr"], template)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        second = post.summarize(doc["asr"], template)
        faithfulness = check_summary(first.summary, doc["asr"])
        names, unsupported = faithfulness.checked, faithfulness.not_in_transcript
        rows.append({"doc": doc["name"], "schema_valid": not list(
            jsonschema.Draft202012Validator(template.schema).iter_errors(first.summary)),
            "identical_rerun": first.summary == second.summary, "attempts": first.attempts,
            "names_numbers": names, "not_in_transcript": unsupported,
            "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "summary": first.summary})
    return rows


def prefix_cache_check(manager: Any, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Shared prompt prefix served from llama.cpp's KV cache + fresh suffix vs uncached."""
    from voxgate.engines.llm_openai import chat_body, content_of
    from voxgate.postprocess import _prompt_file, _render, templates_dir

    llm = manager.get("llm", LARGE)
    prompt = _prompt_file(templates_dir(Settings(_env_file=None)), "clean_edits_v1")
    texts = [unpunctuated(d["asr"]) for d in docs]
    server = llm._server  # bench only: the engine keeps the cache off for jobs

    def ask(text: str, cache: bool) -> dict[str, Any]:
        from voxgate.engines.base import ChatMessage

        body = chat_body([ChatMessage("user", _render(prompt, text=text))], max_tokens=48,
                         temperature=0.0, seed=llm.seed, json_schema=None)
        return server.handle_chat_completions({**body, "cache_prompt": cache})

    uncached = [content_of(ask(t, False)) for t in texts]
    cached, prompt_n = [], []
    for text in texts:  # each request shares the instructions with the one before it
        response = ask(text, True)
        cached.append(content_of(response))
        prompt_n.append((response.get("timings") or {}).get("prompt_n"))
    return {"requests": len(texts), "identical": [a == b for a, b in zip(uncached, cached)],
            "cached_prompt_tokens_evaluated": prompt_n}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--docs", default="librivox,piper-gettysburg,piper-austen")
    parser.add_argument("--no-summary", action="store_true")
    parser.add_argument("--no-prefix", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "cleanup.json")
    args = parser.parse_args()
    from voxgate.engines.manager import ModelManager

    settings = Settings(offline=True, _env_file=None)
    manager = ModelManager(settings)
    out: dict[str, Any] = {"load_avg_start": os.getloadavg(), "cores": os.cpu_count()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    try:
        wanted = args.docs.split(",")
        docs = [d for d in recordings(manager) if d["name"] in wanted]
        for doc in docs:
            audio = doc.pop("audio")
            doc["audio_s"] = round(audio.size / 16000, 2)
            doc["asr"], doc["confidence"] = transcribe(settings, manager, audio)
        out["docs"] = docs
        rows = []
        for name in args.methods.split(","):
            rows.extend(run_method(settings, manager, name, docs))
            out["cleanup"] = rows
            args.output.write_text(json.dumps(out, indent=2))  # kept if stopped later
            print(f"done {name} (load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)
        out["cleanup"] = rows
        if not args.no_summary:
            out["summary"] = summary_checks(settings, manager, docs)
        if not args.no_prefix:
            out["prefix_cache"] = prefix_cache_check(manager, docs)
    finally:
        manager.close()
    out["load_avg_end"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2))
    print_tables(out)


def print_tables(out: dict[str, Any]) -> None:
    print("| method | input | WER | punct F1 | cap F1 | chunks changed | skipped | edits ok/rejected"
          " | wall s/audio min | CPU s/audio min | gen tok | gen tok/s |")
    print("|" + "---|" * 12)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in out["cleanup"]:
        groups.setdefault((row["name"], row["input"]), []).append(row)
    for (method, variant), rows in groups.items():
        n = len(rows)
        mean = lambda k: sum(r.get(k, 0) or 0 for r in rows) / n
        changed = sum(r.get("chunks_changed", 0) for r in rows) / max(
            sum(r.get("chunks", 1) for r in rows), 1)
        llama = [r["llama"] for r in rows if "llama" in r]
        gen = sum(x["predicted_n"] for x in llama)
        gen_ms = sum(x["predicted_ms"] for x in llama)
        print(f"| {method} | {variant} | {mean('wer'):.3f} | {mean('punct_f1'):.3f} | "
              f"{mean('cap_f1'):.3f} | {changed:.0%} | {sum(r.get('chunks_skipped', 0) for r in rows)}"
              f" | {sum(r.get('edits_applied', 0) for r in rows)}/"
              f"{sum(r.get('edits_rejected', 0) for r in rows)} | "
              f"{mean('wall_s_per_audio_min'):.1f} | {mean('cpu_s_per_audio_min'):.1f} | "
              f"{gen:.0f} | {gen / gen_ms * 1000 if gen_ms else 0:.1f} |")
    for row in out.get("summary", []):
        print(f"summary {row['doc']}: valid={row['schema_valid']} identical={row['identical_rerun']}"
              f" not_in_transcript={row['not_in_transcript']} wall={row['wall_s']} s "
              f"cpu={row['cpu_s']} s")
    if "prefix_cache" in out:
        print("prefix cache:", out["prefix_cache"])
    print("load average start/end:", out["load_avg_start"], out["load_avg_end"])


if __name__ == "__main__":
    main()
