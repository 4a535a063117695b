"""Full jobs before vs after issue 14's summary work, side by side in one run (one process).

Each recording goes through ``run_pipeline`` (raw + clean transcript + ``enhancement_metrics`` +
``meeting_notes_v1`` summary), the way the queue worker runs a job, twice: with the summary as
it was before (the whole JSON Schema in the prompt, the template's own bounds: ``BEFORE``) and
with the defaults (the prompt names the keys, the grammar enforces a tighter copy of the schema). Models are loaded and warmed before the first timed
job, so both sides find them in memory, as a running worker does.

Recordings: ``librivox-600`` (the LibriVox clips repeated to 600 s, as ``bench/jobs.py``: the
figure the issue tracks) and ``meeting`` (``jobs_meeting.py``: ~5 min of varied speech, two
voices, names, numbers, decisions). Per job: wall, RTF, process CPU seconds, stage times,
llama.cpp's prompt and generated tokens for the summary, attempts, the names/numbers check,
WER of the raw and the clean transcript against the reference (meeting). Then the summary is
asked again on the same text with the defaults: identical or not.

    python bench/jobs_summary.py [--recordings librivox-600,meeting] [--no-rerun]

Writes bench/results/jobs_summary.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from voxgate.config import Settings

# the summary as before issue 14's summary work (prompt, bounds, whitespace)
BEFORE = {"summary_schema_in_prompt": True, "summary_max_items": 0,
          "summary_max_item_chars": 0}
FEATURES = ("raw_transcript", "clean_transcript", "enhancement_metrics", "summary")
TEMPLATE = "meeting_notes_v1"


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LlamaTimings:
    """Sums llama.cpp's own timings of every request the loaded engine serves."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.inner = engine, engine.complete_raw
        self.reset()
        engine.complete_raw = self._complete_raw  # bench only: the engine is otherwise as is

    def reset(self) -> None:
        self.totals = {"calls": 0, "prompt_n": 0, "prompt_ms": 0.0, "predicted_n": 0,
                       "predicted_ms": 0.0}

    def _complete_raw(self, messages: Any, **options: Any) -> dict[str, Any]:
        response = self.inner(messages, **options)
        timings = response.get("timings") or {}
        self.totals["calls"] += 1
        for key in ("prompt_n", "prompt_ms", "predicted_n", "predicted_ms"):
            self.totals[key] += timings.get(key) or 0
        return response

    def report(self) -> dict[str, float]:
        t = self.totals
        return {**{k: round(v, 1) for k, v in t.items()},
                "prompt_tok_s": round(t["prompt_n"] / max(t["prompt_ms"], 1e-9) * 1000, 1),
                "gen_tok_s": round(t["predicted_n"] / max(t["predicted_ms"], 1e-9) * 1000, 1)}


def recordings(manager: Any, names: list[str], work: Path) -> list[dict[str, Any]]:
    from jobs import recording
    from jobs_meeting import meeting_audio, meeting_text

    from voxgate.audio import encode_wav

    out = []
    if "librivox-600" in names:
        path = work / "librivox-600.wav"
        out.append({"name": "librivox-600", "path": path, "audio_s": recording(600.0, path),
                    "reference": None})
    if "meeting" in names:
        audio = meeting_audio(manager)
        path = work / "meeting.wav"
        path.write_bytes(encode_wav(audio))
        out.append({"name": "meeting", "path": path, "audio_s": audio.size / 16000,
                    "reference": meeting_text()})
    return out


def run_job(settings: Settings, manager: Any, timings: LlamaTimings, doc: dict[str, Any],
            side: str) -> dict[str, Any]:
    import jsonschema

    from voxgate.pipeline import JobSpec, run_pipeline
    from voxgate.postprocess import load_template
    from voxgate.text_edits import norm_words

    timings.reset()
    load, wall, cpu = os.getloadavg()[0], time.perf_counter(), cpu_s()
    outcome = run_pipeline(settings, manager, doc["path"], JobSpec(FEATURES, TEMPLATE, "en"))
    wall, cpu = time.perf_counter() - wall, cpu_s() - cpu
    results, metrics = outcome.results, outcome.metrics
    row: dict[str, Any] = {
        "recording": doc["name"], "side": side, "audio_s": round(doc["audio_s"], 1),
        "wall_s": round(wall, 2), "rtf": round(wall / doc["audio_s"], 4), "cpu_s": round(cpu, 1),
        "load_avg_start": round(load, 2), "load_avg_end": round(os.getloadavg()[0], 2),
        "stage_times_s": metrics["stage_times_s"], "summary_attempts": metrics.get(
            "summary_attempts"), "llama_summary": timings.report(),
        "schema_valid": not list(jsonschema.Draft202012Validator(
            load_template(settings, TEMPLATE).schema).iter_errors(results["summary"])),
        "faithfulness": metrics.get("summary_faithfulness"),
        "enhancement_metrics": results.get("enhancement_metrics"),
        "summary": results["summary"], "summary_chars": len(json.dumps(results["summary"]))}
    if doc["reference"]:
        from jiwer import wer

        ref = " ".join(norm_words(doc["reference"]))
        row["wer_raw"] = round(wer(ref, " ".join(norm_words(results["raw_transcript"]))), 4)
        row["wer_clean"] = round(wer(ref, " ".join(norm_words(results["clean_transcript"]))), 4)
    doc["text_for_summary"] = results["clean_transcript"]
    print(json.dumps({k: v for k, v in row.items() if k != "summary"}), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recordings", default="librivox-600,meeting")
    parser.add_argument("--no-rerun", action="store_true", help="skip the determinism re-ask")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" /
                        "jobs_summary.json")
    args = parser.parse_args()
    from voxgate.engines.manager import ModelManager
    from voxgate.postprocess import PostProcessor, llm_model_id, load_template

    work = Path(tempfile.mkdtemp(prefix="voxgate-bench-summary-"))
    after = Settings(data_dir=work / "data", offline=True, _env_file=None)
    before = after.model_copy(update={"llm": after.llm.model_copy(update=BEFORE)}, deep=True)
    manager = ModelManager(after)
    out: dict[str, Any] = {"load_avg_start": os.getloadavg(), "cores": os.cpu_count(),
                           "before": BEFORE, "jobs": []}
    try:
        docs = recordings(manager, args.recordings.split(","), work)
        llm = manager.get("llm", llm_model_id(after))
        timings = LlamaTimings(llm)
        manager.asr(after.asr.model)
        manager.vad()
        PostProcessor(llm, after).summarize("Warm-up: Alice will send the notes.",
                                            load_template(after, TEMPLATE))
        for doc in docs:
            for side, settings in (("before", before), ("after", after)):
                out["jobs"].append(run_job(settings, manager, timings, doc, side))
                args.output.parent.mkdir(parents=True, exist_ok=True)
                args.output.write_text(json.dumps(out, indent=2, default=str))
            if not args.no_rerun:
                timings.reset()
                again = PostProcessor(llm, after).summarize(doc["text_for_summary"],
                                                            load_template(after, TEMPLATE))
                out["jobs"][-1]["identical_rerun"] = again.summary == out["jobs"][-1]["summary"]
                print(f"{doc['name']} rerun identical: {out['jobs'][-1]['identical_rerun']}",
                      flush=True)
    finally:
        manager.close()
    out["load_avg_end"] = os.getloadavg()
    args.output.write_text(json.dumps(out, indent=2, default=str))
    print("\n| recording | summary | wall | RTF | CPU s | load | ASR | cleanup | summary stage |"
          " prompt tok | gen tok | attempts | names/numbers not in transcript | WER raw/clean |")
    print("|" + "---|" * 14)
    for row in out["jobs"]:
        stages, llama = row["stage_times_s"], row["llama_summary"]
        wer = f"{row['wer_raw']:.3f}/{row['wer_clean']:.3f}" if "wer_raw" in row else "—"
        print(f"| {row['recording']} | {row['side']} | {row['wall_s']:.1f} s | {row['rtf']:.3f} |"
              f" {row['cpu_s']:.0f} | {row['load_avg_start']}->{row['load_avg_end']} |"
              f" {stages.get('asr', 0):.1f} s | {stages.get('cleanup', 0):.1f} s |"
              f" {stages.get('summary', 0):.1f} s | {llama['prompt_n']:.0f} |"
              f" {llama['predicted_n']:.0f} | {row['summary_attempts']} |"
              f" {', '.join(row['faithfulness']['names_numbers_not_in_transcript']) or '—'} |"
              f" {wer} |")


if __name__ == "__main__":
    main()
