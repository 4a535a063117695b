"""One job's processing: decode -> batched ASR -> LLM cleanup -> schema-checked summary.

The queue worker and ``voxgate transcribe --summary`` both run :func:`run_pipeline`, so a file
gives the same transcript and summary whichever way it came in. Every run records ``versions``
(what produced the output: pipeline, models with source and sha256, decoding parameters,
template) and ``metrics`` (durations, RTF, VAD coverage, ASR confidence, edit rate, stage times,
and for a summary the names/numbers it states that the transcript never says).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .audio import decode_audio
from .config import Settings
from .engines.manager import ModelManager
from .errors import AudioTooLongError, ConfigError
from .faithfulness import check_summary
from .postprocess import (
    CleanResult,
    PostProcessor,
    cleanup_model_id,
    cleanup_plan,
    llm_model_id,
    load_template,
    unchanged_result,
)
from .tracing import span
from .transcriber import FileTranscriber, TranscribeRequest
from .types import Transcript

__all__ = ["FEATURES", "PIPELINE_VERSION", "JobSpec", "JobOutcome", "run_pipeline",
           "pipeline_version", "summarize_text"]

logger = logging.getLogger(__name__)

PIPELINE_VERSION = "3"  # bump when a stage changes what it outputs for the same input
FEATURES = ("raw_transcript", "clean_transcript", "summary", "enhancement_metrics")
StageFn = Callable[[str, float], None]  # (status, progress 0..1)
CancelCheck = Callable[[], None]


def pipeline_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("voxgate")
    except PackageNotFoundError:
        package = "0+unknown"
    return f"voxgate-{package}/jobs-{PIPELINE_VERSION}"


@dataclass(slots=True)
class JobSpec:
    """What a job asks for (validated before it is queued)."""

    features: tuple[str, ...] = ("raw_transcript",)
    template_id: str | None = None
    language: str | None = None
    model: str | None = None

    def validate(self, settings: Settings) -> None:
        """``ConfigError`` with a one-line reason for any invalid combination."""
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or not self.features:
            raise ConfigError(f"unknown feature(s) {', '.join(unknown) or '(none given)'}; "
                              f"choose from {', '.join(FEATURES)}")
        if "summary" in self.features:
            if not self.template_id:
                raise ConfigError("template_id is required when 'summary' is requested")
            load_template(settings, self.template_id)
        if self.language is not None and not (2 <= len(self.language) <= 3
                                              and self.language.isalpha()
                                              and self.language.islower()):
            raise ConfigError(f"language must be a 2-3 letter code or 'auto', "
                              f"got {self.language!r}")
        if self.model is not None:
            from .models import get_spec

            spec = get_spec(self.model)  # ModelError for an unknown id; paths are not accepted
            if spec.kind != "asr":
                raise ConfigError(f"model {self.model!r} is a {spec.kind} model, not ASR")

    @property
    def needs_llm(self) -> bool:
        return bool({"clean_transcript", "summary", "enhancement_metrics"} & set(self.features))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "template_id": self.template_id,
                "language": self.language, "model": self.model}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobSpec":
        return cls(features=tuple(data.get("features") or ("raw_transcript",)),
                   template_id=data.get("template_id"), language=data.get("language"),
                   model=data.get("model"))


@dataclass(slots=True)
class JobOutcome:
    results: dict[str, Any]
    versions: dict[str, Any]
    metrics: dict[str, Any]
    transcript: Transcript | None = None


@dataclass
class _Clock:
    times: dict[str, float] = field(default_factory=dict)

    def run(self, stage: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            with span(f"voxgate.{stage}"):  # one trace span per stage (tracing.py)
                return fn()
        finally:
            self.times[stage] = round(time.perf_counter() - started, 3)


def _model_record(manager: ModelManager, kind: str, model_id: str) -> dict[str, Any]:
    resolved = manager.resolved(kind, model_id)
    if resolved is None:
        return {"id": model_id, "source": "custom", "sha256": ""}
    return {"id": resolved.spec.id, "engine": resolved.spec.engine, "source": resolved.source,
            "sha256": resolved.sha256}


def _decode(audio_path: Path | str, max_seconds: float):  # -> np.ndarray
    """The job's audio, decoding no further than the jobs' duration limit."""
    try:
        return decode_audio(audio_path, max_seconds=max_seconds)
    except AudioTooLongError:
        raise AudioTooLongError(f"the audio is longer than the {max_seconds:g} s limit for jobs "
                                "(VOXGATE_MAX_JOB_AUDIO_S)", max_seconds) from None


def run_pipeline(settings: Settings, manager: ModelManager, audio_path: Path | str,
                 spec: JobSpec, on_stage: StageFn | None = None,
                 check_cancel: CancelCheck | None = None) -> JobOutcome:
    """Process one file. Raises ``AudioError`` (permanent), ``EngineError`` or ``JobCancelled``."""
    report = on_stage or (lambda status, progress: None)
    cancel = check_cancel or (lambda: None)
    clock = _Clock()
    started = time.perf_counter()
    asr_end = 0.6 if spec.needs_llm else 0.95

    report("PREPROCESSING", 0.01)
    audio = clock.run("preprocess", lambda: _decode(audio_path, settings.max_job_audio_s))
    duration = audio.size / 16_000
    cancel()

    report("PROCESSING_ASR", 0.05)
    request = TranscribeRequest(model=spec.model or settings.asr.model, language=spec.language,
                                beam_size=settings.asr.beam_size,
                                batch_size=settings.asr.batch_size)
    transcriber = FileTranscriber(settings, request, manager)

    def asr_progress(done: float, total: float) -> None:
        cancel()
        report("PROCESSING_ASR", round(0.05 + (asr_end - 0.05) * done / max(total, 1e-9), 4))

    transcript: Transcript = clock.run("asr", lambda: transcriber.run_audio(audio, asr_progress))
    cancel()
    raw_text = transcript.text
    batch = transcriber.batch_options()
    versions: dict[str, Any] = {
        "pipeline_version": pipeline_version(),
        "asr": {**_model_record(manager, "asr", request.model),
                "decoding": {**request.asr_options().as_versions(), "language": transcript.language,
                             "batch_size": batch.batch_size, "max_chunk_s": batch.max_chunk_s}},
        "vad": {**_model_record(manager, "vad", "silero-vad"),
                "params": {"threshold": batch.vad.threshold,
                           "min_silence_ms": batch.vad.min_silence_ms,
                           "speech_pad_ms": batch.vad.speech_pad_ms}},
    }
    results: dict[str, Any] = {"language": transcript.language}
    if "raw_transcript" in spec.features:
        results["raw_transcript"] = raw_text
        results["segments"] = [{"start": s.start, "end": s.end, "text": s.text.strip()}
                               for s in transcript.segments]
    clean_rate: float | None = None
    extra_metrics: dict[str, Any] = {}

    if spec.needs_llm and raw_text:
        cancel()
        report("PROCESSING_LLM", asr_end)
        text_for_summary = raw_text
        if {"clean_transcript", "enhancement_metrics"} & set(spec.features):
            cleaned = clock.run("cleanup", lambda: _clean(settings, manager, raw_text,
                                                          transcript.confidence, cancel,
                                                          versions))
            clean_rate = cleaned.edit_rate
            text_for_summary = cleaned.text
            if "clean_transcript" in spec.features:
                results["clean_transcript"] = cleaned.text
            if "enhancement_metrics" in spec.features:
                results["enhancement_metrics"] = cleaned.metrics()
            report("PROCESSING_LLM", 0.8 if "summary" in spec.features else 0.95)
        if "summary" in spec.features and spec.template_id:
            model_id = llm_model_id(settings)
            with manager.use("llm", model_id) as llm:
                post = PostProcessor(llm, settings, cancel)
                versions["llm"] = {**_model_record(manager, "llm", model_id),
                                   **llm.version_info(), "decoding": post.decoding_params()}
                template = load_template(settings, spec.template_id)
                versions["template"] = {"id": template.id, "version": template.version,
                                        "sha256": template.sha256}
                summary = clock.run("summary", lambda: post.summarize(text_for_summary, template))
            results["summary"] = summary.summary
            extra_metrics["summary_attempts"] = summary.attempts
            extra_metrics["summary_map_reduce"] = summary.map_reduce
            faithfulness = check_summary(summary.summary, text_for_summary).metrics()
            extra_metrics["summary_faithfulness"] = faithfulness
            if "enhancement_metrics" in results:
                results["enhancement_metrics"]["summary_faithfulness"] = faithfulness
            if faithfulness["names_numbers_not_in_transcript"]:
                logger.info("summary names/numbers not in the transcript: %s",
                            ", ".join(faithfulness["names_numbers_not_in_transcript"][:10]))
    elif spec.needs_llm:  # no speech at all: nothing to clean or summarise
        if "clean_transcript" in spec.features:
            results["clean_transcript"] = ""
        if "summary" in spec.features:
            results["summary"] = None
        clean_rate = 0.0

    elapsed = time.perf_counter() - started
    metrics = {
        "input_duration_s": round(duration, 3),
        "processing_time_s": round(elapsed, 3),
        "rtf": round(elapsed / duration, 4) if duration else None,
        "vad_coverage": round(transcript.vad_coverage, 4),
        "asr_confidence": round(transcript.confidence, 4),
        "edit_rate": clean_rate,
        "segments": len(transcript.segments),
        "stage_times_s": clock.times,
        **extra_metrics,
    }
    return JobOutcome(results=results, versions=versions, metrics=metrics, transcript=transcript)


def _clean(settings: Settings, manager: ModelManager, text: str, confidence: float,
           cancel: CancelCheck, versions: dict[str, Any]) -> CleanResult:
    """Cleanup stage; the LLM is loaded only when some chunk needs it (``cleanup_plan``)."""
    plan = cleanup_plan(settings, text, confidence)
    if not any(needs_llm for _, needs_llm in plan):
        versions["cleanup"] = {"llm": None, "skipped": "already punctuated by the ASR"}
        return unchanged_result(plan, settings.llm.cleanup_method)
    model_id = cleanup_model_id(settings)
    with manager.use("llm", model_id) as llm:
        post = PostProcessor(llm, settings, cancel)
        versions["cleanup"] = {"llm": {**_model_record(manager, "llm", model_id),
                                       **llm.version_info()}, "params": post.cleanup_params()}
        return post.clean(text, confidence=confidence)


def summarize_text(settings: Settings, manager: ModelManager, text: str, template_id: str,
                   ) -> dict[str, Any] | None:
    """The summary stage alone (``voxgate transcribe --summary``): same LLM, prompt and checks."""
    template = load_template(settings, template_id)
    if not text.strip():
        return None
    with manager.use("llm", llm_model_id(settings)) as llm:
        return PostProcessor(llm, settings).summarize(text, template).summary
