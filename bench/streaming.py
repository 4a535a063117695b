"""Live transcription: voxgate streaming sessions vs plain faster-whisper re-decoding.

N concurrent streams of real speech are fed in real time (100 ms chunks, wall-clock paced).
Each stream is the 5 LibriVox clips of Debian ``pocketsphinx-testdata`` in a rotated order,
1.5 s of low noise between them (~33 s). Measured per stream, pooled over streams:

* partial lag: from the end of each spoken word (word end times from a reference alignment:
  whisper-base with word timestamps on each clean clip, offline) to the first partial that
  shows it (the word at its position +-2 in the partial, after normalisation);
* final latency: from the end of the utterance's last spoken word to its final (p50/p95), and
  the decode part alone (from the endpoint decision, ``end_of_speech``, to the final);
* final WER against the clips' reference transcripts;
* real time: a run is real time when the p95 final latency stays under ``--rt-limit`` s and
  no stream ends more than that behind its audio; the largest such N is reported.

The peer is the common whisper-streaming approach (``whisper_online``): every ``--min-chunk``
seconds the whole uncommitted buffer is re-decoded with plain ``faster_whisper.WhisperModel``
(whisper-base, the same weights), words confirmed by two consecutive hypotheses
(LocalAgreement-2) are committed, the buffer is trimmed after committed sentence ends or past
15 s. Its "partial" is the first hypothesis showing a word, its "final" the commit.

    python bench/streaming.py                    # N = 1, 2, 4, 6, 8 for voxgate; 1, 2 peer
    python bench/streaming.py --streams 1 4 --peer-streams 1
    python bench/streaming.py --final-beam 5     # accuracy over latency
    python bench/streaming.py --streams 1 2 --peer-streams --doors inprocess ws grpc wyoming
        # the same streams through the WebSocket, Riva gRPC and Wyoming doors of a server on
        # loopback (real clients: websockets, nvidia-riva-client, wyoming), beside in-process
    python bench/streaming.py --streams 1 2 --peer-streams --with-job 600
        # mixed load: each N runs twice, quiet and while a 10-minute file is transcribed on the
        # same model (the jobs/OpenAI file path); reports final latency with/without the job
        # and the job's time with the streams over its time alone

Writes ``bench/results/streaming.json`` (plus a timestamped copy) and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
RESULTS = Path(__file__).resolve().parent / "results"
SR = 16_000
GAP_S = 1.5
CHUNK_S = 0.1


# ---- input and reference --------------------------------------------------------------------
@dataclass
class Utterance:
    text: str  # reference transcript
    start: float  # stream seconds
    words: list[tuple[str, float]]  # normalised word, end time in stream seconds


@dataclass
class StreamInput:
    audio: np.ndarray
    utterances: list[Utterance]


def _norm_words(text: str) -> list[str]:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()(text).split()


def _wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return float(jiwer.wer(" ".join(_norm_words(reference)), " ".join(_norm_words(hypothesis))))


def build_inputs(n: int, aligner) -> list[StreamInput]:
    from voxgate.audio import decode_audio
    from voxgate.engines.base import AsrOptions

    listing = (LIBRIVOX / "transcription").read_text().splitlines()
    clips = []
    for line in listing:
        m = re.match(r"<s>\s*(.*?)\s*</s>\s*\((.+)\)", line.strip())
        if m:
            audio = decode_audio(LIBRIVOX / f"{m.group(2)}.wav")
            result = aligner.transcribe(audio, AsrOptions(language="en", beam_size=5,
                                                          word_timestamps=True))
            aligned = []
            for w in (w for s in result.segments for w in s.words):
                for token in _norm_words(w.word):
                    aligned.append((token, w.end))
            clips.append((audio, m.group(1), aligned))
    rng = np.random.default_rng(0)
    inputs = []
    for k in range(n):
        order = clips[k % len(clips):] + clips[:k % len(clips)]
        pieces = [(rng.standard_normal(int(0.5 * SR)) * 3e-4).astype(np.float32)]
        pos = pieces[0].size
        utterances = []
        for audio, text, aligned in order:
            utterances.append(Utterance(text, pos / SR, [(w, pos / SR + e) for w, e in aligned]))
            gap = (rng.standard_normal(int(GAP_S * SR)) * 3e-4).astype(np.float32)
            pieces += [audio, gap]
            pos += audio.size + gap.size
        inputs.append(StreamInput(np.concatenate(pieces), utterances))
    return inputs


# ---- scoring --------------------------------------------------------------------------------
@dataclass
class Hypothesis:
    at: float  # stream seconds (wall clock since the stream started)
    words: list[str]
    utterance: int | None  # which reference utterance it belongs to (None: match by time)
    final: bool


@dataclass
class RunResult:
    system: str
    streams: int
    partial_lag: list[float] = field(default_factory=list)
    partial_coverage: float = 0.0
    first_seen_lag: list[float] = field(default_factory=list)  # partial or final, first shown
    final_latency: list[float] = field(default_factory=list)
    decode_latency: list[float] = field(default_factory=list)
    wer: float = 0.0
    behind_at_end: float = 0.0
    dropped_partials: int = 0
    batches: list[int] = field(default_factory=list)
    finals: list[str] = field(default_factory=list)
    speculative: int = 0  # voxgate: final decodes started early, in a pause
    discarded: int = 0  # ... of which thrown away because speech resumed

    def summary(self, rt_limit: float) -> dict:
        def pct(values: list[float], q: float) -> float | None:
            return round(float(np.percentile(values, q)), 3) if values else None

        return {
            "system": self.system, "streams": self.streams,
            "partial_lag_p50": pct(self.partial_lag, 50),
            "partial_lag_p95": pct(self.partial_lag, 95),
            "partial_coverage": round(self.partial_coverage, 3),
            "first_seen_lag_p50": pct(self.first_seen_lag, 50),
            "final_latency_p50": pct(self.final_latency, 50),
            "final_latency_p95": pct(self.final_latency, 95),
            "decode_latency_p50": pct(self.decode_latency, 50),
            "wer": round(self.wer, 4), "behind_at_end_s": round(self.behind_at_end, 3),
            "dropped_partials": self.dropped_partials,
            "mean_final_batch": round(float(np.mean(self.batches)), 2) if self.batches else None,
            "real_time": bool(self.final_latency) and pct(self.final_latency, 95) <= rt_limit
            and self.behind_at_end <= rt_limit,
            "speculative_finals": self.speculative, "speculative_discarded": self.discarded,
            "finals": self.finals,
        }


def score_words(inp: StreamInput, hyps: list[Hypothesis], *, finals: bool = False
                ) -> tuple[list[float], int, int]:
    """Lag per reference word: the first hypothesis of its utterance that holds it (the j-th
    occurrence of a word needs j occurrences). ``finals``: finals count as hypotheses too."""
    lags, seen, total = [], 0, 0
    for index, utt in enumerate(inp.utterances):
        own = [h for h in hyps if (finals or not h.final) and h.utterance == index]
        counts: dict[str, int] = {}
        for word, end in utt.words:
            total += 1
            counts[word] = counts.get(word, 0) + 1
            for h in own:
                if h.at >= end and h.words.count(word) >= counts[word]:
                    lags.append(h.at - end)
                    seen += 1
                    break
    return lags, seen, total


# ---- voxgate --------------------------------------------------------------------------------
async def run_voxgate(inputs: list[StreamInput], settings, manager) -> RunResult:
    from voxgate.streaming import StreamingService

    service = StreamingService(settings, manager)
    await service.start()
    result = RunResult("voxgate", len(inputs))
    batches_before = len(service.scheduler.stats.batch_sizes)

    async def one(inp: StreamInput) -> tuple[list[Hypothesis], dict, float]:
        session = await service.open(service.config())
        hyps: list[Hypothesis] = []
        endpoints: dict[int, float] = {}
        finals: dict[int, tuple[float, str, float, float]] = {}
        started = time.monotonic()

        async def read() -> None:
            async for event in session.events():
                now = time.monotonic() - started
                if event.kind == "partial":  # its start is the utterance onset, stream time
                    hyps.append(Hypothesis(now, _norm_words(event.text),
                                           _utterance_at(inp, event.start + 0.2), False))
                elif event.kind == "end_of_speech":
                    endpoints[event.utterance_id] = now
                elif event.kind == "final":
                    finals[event.utterance_id] = (now, event.text, event.start, event.end)
                    hyps.append(Hypothesis(now, _norm_words(event.text),
                                           _utterance_at(inp, (event.start + event.end) / 2),
                                           True))

        reader = asyncio.create_task(read())
        step = int(CHUNK_S * SR)
        for i in range(0, inp.audio.size, step):
            await session.accept(inp.audio[i:i + step])
            delay = started + (i + step) / SR - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await session.finish()
        await reader
        behind = time.monotonic() - started - inp.audio.size / SR
        result.dropped_partials += session.dropped_partials
        result.speculative += session.speculative_finals
        result.discarded += session.speculative_discarded
        await session.close()
        return hyps, {"finals": finals, "endpoints": endpoints}, behind

    outputs = await asyncio.gather(*(one(inp) for inp in inputs))
    score_streams(result, inputs, outputs)
    result.batches = service.scheduler.stats.batch_sizes[batches_before:]
    await service.stop()
    return result


StreamOutput = tuple[list[Hypothesis], dict, float]  # hypotheses, finals/endpoints, behind


def score_streams(result: RunResult, inputs: list[StreamInput],
                  outputs: list[StreamOutput]) -> None:
    """Pool the per-stream observations of any door into ``result``."""
    seen = total = 0
    finals_text: list[str] = []
    references: list[str] = []
    for inp, (hyps, events, behind) in zip(inputs, outputs):
        result.behind_at_end = max(result.behind_at_end, behind)
        # map each final to the reference utterance its time span overlaps
        for uid, (at, text, start, end) in sorted(events["finals"].items()):
            index = _utterance_at(inp, (start + end) / 2)
            utt = inp.utterances[index]
            if utt.words:
                result.final_latency.append(at - utt.words[-1][1])
            if uid in events["endpoints"]:
                result.decode_latency.append(at - events["endpoints"][uid])
            finals_text.append(text)
            result.finals.append(text)
        lags, s, t = score_words(inp, hyps)
        result.partial_lag += lags
        result.first_seen_lag += score_words(inp, hyps, finals=True)[0]
        seen, total = seen + s, total + t
        references += [u.text for u in inp.utterances]
    result.partial_coverage = seen / max(total, 1)
    result.wer = _wer(" ".join(references), " ".join(finals_text))


# ---- voxgate through its doors: WebSocket /v1/asr and Riva gRPC StreamingRecognize --------
async def _ws_stream(url: str, inp: StreamInput) -> StreamOutput:
    """One stream through ``/v1/asr`` with the ``websockets`` client, float32 frames paced in
    real time; events as the in-process run sees them, timed on arrival at the client."""
    import websockets

    hyps: list[Hypothesis] = []
    finals: dict[int, tuple[float, str, float, float]] = {}
    endpoints: dict[int, float] = {}
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"sample_rate": SR, "encoding": "f32"}))
        if json.loads(await ws.recv()).get("type") != "ready":
            raise RuntimeError("the WebSocket door refused the stream")
        started = time.monotonic()

        async def read() -> None:
            async for raw in ws:
                message = json.loads(raw)
                now, kind = time.monotonic() - started, message.get("type")
                if kind == "partial":
                    hyps.append(Hypothesis(now, _norm_words(message["text"]),
                                           _utterance_at(inp, message["start"] + 0.2), False))
                elif kind == "end_of_speech":
                    endpoints[message["utterance_id"]] = now
                elif kind == "final":
                    start, end = message["start"], message["end"]
                    finals[message["utterance_id"]] = (now, message["text"], start, end)
                    hyps.append(Hypothesis(now, _norm_words(message["text"]),
                                           _utterance_at(inp, (start + end) / 2), True))
                elif kind in ("end", "error"):
                    return

        reader = asyncio.create_task(read())
        step = int(CHUNK_S * SR)
        for i in range(0, inp.audio.size, step):
            await ws.send(inp.audio[i:i + step].astype("<f4").tobytes())
            delay = started + (i + step) / SR - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await ws.send(json.dumps({"type": "end"}))
        await reader
        behind = time.monotonic() - started - inp.audio.size / SR
    return hyps, {"finals": finals, "endpoints": endpoints}, behind


def _grpc_stream(uri: str, inp: StreamInput) -> StreamOutput:
    """One stream through Riva ``StreamingRecognize`` with NVIDIA's own client, PCM16 paced in
    real time. Riva results carry no utterance times: a final's span comes from its word
    offsets, a partial is attributed to the utterance being spoken 0.5 s before it arrived,
    and there is no end-of-speech event (no decode-latency figure for this door)."""
    import riva.client

    from voxgate.audio import float32_to_pcm16

    config = riva.client.StreamingRecognitionConfig(
        config=riva.client.RecognitionConfig(
            encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=SR,
            language_code="en-US", max_alternatives=1, enable_automatic_punctuation=True,
            enable_word_time_offsets=True),
        interim_results=True)
    service = riva.client.ASRService(riva.client.Auth(uri=uri))
    pcm = float32_to_pcm16(inp.audio)
    clock: dict[str, float] = {}

    def chunks():
        clock["started"] = started = time.monotonic()
        step = int(CHUNK_S * SR) * 2
        for i in range(0, len(pcm), step):
            yield pcm[i:i + step]
            delay = started + (i + step) / 2 / SR - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    hyps: list[Hypothesis] = []
    finals: dict[int, tuple[float, str, float, float]] = {}
    for response in service.streaming_response_generator(chunks(), config):
        now = time.monotonic() - clock["started"]
        for res in response.results:
            alt = res.alternatives[0]
            if res.is_final and alt.words:
                start, end = alt.words[0].start_time / 1000, alt.words[-1].end_time / 1000
                finals[len(finals)] = (now, alt.transcript, start, end)
                hyps.append(Hypothesis(now, _norm_words(alt.transcript),
                                       _utterance_at(inp, (start + end) / 2), True))
            elif not res.is_final:
                hyps.append(Hypothesis(now, _norm_words(alt.transcript),
                                       _utterance_at(inp, max(now - 0.5, 0.0)), False))
    behind = time.monotonic() - clock["started"] - inp.audio.size / SR
    return hyps, {"finals": finals, "endpoints": {}}, behind


async def _wyoming_stream(address: tuple[str, int], inp: StreamInput) -> StreamOutput:
    """One stream through Wyoming's streaming speech-to-text (``transcript-chunk`` per final,
    as Home Assistant reads it) with the ``wyoming`` package's client, PCM16 paced in real time.
    Chunks carry no times: each is attributed to the utterance whose last word ended last
    before it arrived; Wyoming has no partials and no end-of-speech event."""
    from wyoming.asr import Transcribe, TranscriptChunk
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    from voxgate.audio import float32_to_pcm16

    hyps: list[Hypothesis] = []
    finals: dict[int, tuple[float, str, float, float]] = {}
    pcm = float32_to_pcm16(inp.audio)
    async with AsyncTcpClient(*address) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=SR, width=2, channels=1).event())
        started = time.monotonic()

        async def read() -> None:
            while (event := await client.read_event()) is not None:
                now = time.monotonic() - started
                if TranscriptChunk.is_type(event.type):
                    text = TranscriptChunk.from_event(event).text.strip()
                    ended = [i for i, u in enumerate(inp.utterances)
                             if u.words and u.words[-1][1] <= now] or [0]
                    utt = inp.utterances[ended[-1]]
                    finals[len(finals)] = (now, text, utt.start, utt.words[-1][1])
                    hyps.append(Hypothesis(now, _norm_words(text), ended[-1], True))
                elif event.type in ("transcript", "error"):
                    return

        reader = asyncio.create_task(read())
        step = int(CHUNK_S * SR) * 2
        for i in range(0, len(pcm), step):
            await client.write_event(AudioChunk(rate=SR, width=2, channels=1,
                                                audio=pcm[i:i + step]).event())
            delay = started + (i + step) / 2 / SR - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await client.write_event(AudioStop().event())
        await reader
        behind = time.monotonic() - started - inp.audio.size / SR
    return hyps, {"finals": finals, "endpoints": {}}, behind


async def run_door(inputs: list[StreamInput], live, door: str) -> RunResult:
    """N concurrent streams through a running server's ``door`` (``ws`` or ``grpc``)."""
    result = RunResult(f"voxgate-{door}", len(inputs))
    streaming = live.streaming
    batches_before = len(streaming.scheduler.stats.batch_sizes)
    dropped = streaming.scheduler.stats.dropped_partials
    if door == "ws":
        outputs = await asyncio.gather(*(_ws_stream(live.ws_url, inp) for inp in inputs))
    elif door == "wyoming":
        address = (live.wyoming.host, live.wyoming.port)
        outputs = await asyncio.gather(*(_wyoming_stream(address, inp) for inp in inputs))
    else:
        outputs = await asyncio.gather(*(asyncio.to_thread(_grpc_stream, live.grpc_uri, inp)
                                         for inp in inputs))
    score_streams(result, inputs, list(outputs))
    result.batches = streaming.scheduler.stats.batch_sizes[batches_before:]
    result.dropped_partials = streaming.scheduler.stats.dropped_partials - dropped
    return result


def _utterance_at(inp: StreamInput, t: float) -> int:
    index = 0
    for k, utt in enumerate(inp.utterances):
        if utt.start - 0.3 <= t:
            index = k
    return index


# ---- plain faster-whisper re-decoding (whisper-streaming, LocalAgreement-2) -------------------
def run_peer_stream(inp: StreamInput, model, min_chunk: float, beam: int,
                    out: dict, start_barrier: threading.Barrier) -> None:
    hyps: list[Hypothesis] = []
    commits: list[tuple[float, str, float]] = []  # (wall, word, word end in stream time)
    buffer_start = 0.0  # stream seconds where the buffer begins
    committed_until = 0.0
    previous: list[tuple[str, float, float]] = []
    processed = 0.0
    start_barrier.wait()
    started = time.monotonic()
    duration = inp.audio.size / SR
    while True:
        now = time.monotonic() - started
        available = min(now, duration)
        if available - processed < min_chunk and available < duration:
            time.sleep(min_chunk - (available - processed))
            continue
        processed = available
        chunk = inp.audio[int(buffer_start * SR):int(available * SR)]
        segments, _ = model.transcribe(chunk, language="en", beam_size=beam, word_timestamps=True,
                                       condition_on_previous_text=False, vad_filter=False)
        words = [(w.word.strip(), buffer_start + w.start, buffer_start + w.end)
                 for s in segments for w in (s.words or [])]
        words = [w for w in words if w[2] > committed_until + 0.05]
        wall = time.monotonic() - started
        timed = [(c[1], c[2]) for c in commits] + [(w[0], w[2]) for w in words]
        for utt in sorted({_utterance_at(inp, w[2]) for w in words}):  # one view per utterance
            shown = [w for w, end in timed if _utterance_at(inp, end) == utt]
            hyps.append(Hypothesis(wall, [t for w in shown for t in _norm_words(w)], utt, False))
        agreed = 0
        for a, b in zip(previous, words):
            if a[0].lower().strip(".,?!") != b[0].lower().strip(".,?!"):
                break
            agreed += 1
        for w in words[:agreed]:
            commits.append((wall, w[0], w[2]))
            committed_until = w[2]
        previous = words[agreed:]
        if agreed and (words[agreed - 1][0].endswith((".", "?", "!")) or
                       available - buffer_start > 15.0):
            buffer_start = committed_until
            previous = []
        if available >= duration:
            wall = time.monotonic() - started
            for w in previous:  # end of stream: commit the rest
                commits.append((wall, w[0], w[2]))
            break
    out["hyps"], out["commits"] = hyps, commits
    out["behind"] = time.monotonic() - started - duration


def run_peer(inputs: list[StreamInput], model, min_chunk: float, beam: int) -> RunResult:
    result = RunResult("faster-whisper re-decode (LocalAgreement-2)", len(inputs))
    outs = [dict() for _ in inputs]
    barrier = threading.Barrier(len(inputs))
    threads = [threading.Thread(target=run_peer_stream,
                                args=(inp, model, min_chunk, beam, out, barrier))
               for inp, out in zip(inputs, outs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen = total = 0
    hyp_text: list[str] = []
    references: list[str] = []
    for inp, out in zip(inputs, outs):
        result.behind_at_end = max(result.behind_at_end, out["behind"])
        lags, s, t = score_words(inp, out["hyps"])
        result.partial_lag += lags
        result.first_seen_lag += lags  # its hypotheses already hold the committed words
        seen, total = seen + s, total + t
        commits = out["commits"]
        hyp_text.append(" ".join(c[1] for c in commits))
        references += [u.text for u in inp.utterances]
        for k, utt in enumerate(inp.utterances):
            # the utterance is final when a word ending near its last word's end is committed
            last_end = utt.words[-1][1] if utt.words else utt.start
            nxt = inp.utterances[k + 1].start if k + 1 < len(inp.utterances) else 1e9
            inside = [c for c in commits if utt.start - 0.3 <= c[2] <= min(nxt, last_end + 0.6)]
            if inside:
                result.final_latency.append(max(c[0] for c in inside) - last_end)
    result.partial_coverage = seen / max(total, 1)
    result.wer = _wer(" ".join(references), " ".join(hyp_text))
    return result


# ---- main -------------------------------------------------------------------------------------
def build_job_audio(seconds: float) -> np.ndarray:
    """``seconds`` of real speech for the file job: the LibriVox clips with 0.6 s pauses,
    repeated (a recording as a job would get; not the streams' own rotation)."""
    from voxgate.audio import decode_audio

    clips = [decode_audio(p) for p in sorted(LIBRIVOX.glob("*.wav"))]
    gap = np.zeros(int(0.6 * SR), np.float32)
    one = np.concatenate([part for c in clips for part in (c, gap)])
    return np.tile(one, int(np.ceil(seconds * SR / one.size)))[: int(seconds * SR)]


def run_job(audio: np.ndarray, settings, manager) -> dict:
    """Transcribe ``audio`` as the jobs / OpenAI file path does (VAD chunks, batched, beam 5)."""
    from voxgate.transcriber import FileTranscriber, TranscribeRequest

    request = TranscribeRequest(model=settings.asr.model, beam_size=settings.asr.beam_size,
                                batch_size=settings.asr.batch_size)
    started = time.monotonic()
    transcript = FileTranscriber(settings, request, manager).run_audio(audio)
    took = time.monotonic() - started
    return {"seconds": round(took, 2), "rtf": round(took / (audio.size / SR), 4),
            "words": len(transcript.text.split())}


def _mixed_row(n: int, quiet: dict, loaded: dict, job: dict, alone: dict) -> dict:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a and b else None

    return {"streams": n, "final_p50_quiet": quiet["final_latency_p50"],
            "final_p50_with_job": loaded["final_latency_p50"],
            "final_p95_quiet": quiet["final_latency_p95"],
            "final_p95_with_job": loaded["final_latency_p95"],
            "final_p95_ratio": ratio(loaded["final_latency_p95"], quiet["final_latency_p95"]),
            "wer_quiet": quiet["wer"], "wer_with_job": loaded["wer"],
            "job_alone_s": alone["seconds"], "job_with_streams_s": job.get("seconds"),
            "job_time_ratio": ratio(job.get("seconds"), alone["seconds"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 6, 8])
    parser.add_argument("--peer-streams", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--min-chunk", type=float, default=1.0, help="peer re-decode interval")
    parser.add_argument("--final-beam", type=int, default=None,
                        help="voxgate final beam (default: the setting, 1)")
    parser.add_argument("--endpointing-ms", type=int, default=None,
                        help="silence that ends an utterance (default: the setting, 500)")
    parser.add_argument("--full-window", action="store_true",
                        help="Whisper's 30 s encoder window for live decodes (before 2026-11)")
    parser.add_argument("--no-speculative", action="store_true",
                        help="start the final decode only once the endpoint is confirmed")
    parser.add_argument("--with-job", type=float, default=0.0, metavar="SECONDS",
                        help="also run each N while a file of this many seconds of real speech "
                        "is transcribed on the same model (mixed load)")
    parser.add_argument("--doors", nargs="+", default=["inprocess"],
                        choices=["inprocess", "ws", "grpc", "wyoming"],
                        help="where voxgate's streams go: the session API in-process, the "
                        "WebSocket /v1/asr, Riva gRPC StreamingRecognize or Wyoming streaming "
                        "speech-to-text of a server on loopback (same process, real clients)")
    parser.add_argument("--rt-limit", type=float, default=2.0,
                        help="p95 final latency (s) under which a run counts as real time")
    args = parser.parse_args()

    from voxgate.config import Settings
    from voxgate.engines.manager import ModelManager

    overrides = {}
    if args.final_beam:
        overrides["final_beam_size"] = args.final_beam
    if args.endpointing_ms:
        overrides["endpointing_ms"] = args.endpointing_ms
    if args.full_window:
        overrides["short_window"] = False
    if args.no_speculative:
        overrides["speculative_finals"] = False
    settings = Settings(_env_file=None, offline=True, max_streams=max(args.streams + [1]))
    if overrides:
        settings = settings.model_copy(update={"streaming": settings.streaming.model_copy(
            update=overrides)})
    manager = ModelManager(settings)
    base = manager.get("asr", settings.asr.model)
    manager.get("asr", settings.asr.partial_model)
    manager.vad()
    print(f"building inputs (aligning {LIBRIVOX.name} clips with {settings.asr.model}) ...",
          file=sys.stderr)
    all_inputs = build_inputs(max(args.streams + args.peer_streams + [1]), base)
    rows = []
    mixed: list[dict] = []
    job_audio = build_job_audio(args.with_job) if args.with_job else None
    job_alone = run_job(job_audio, settings, manager) if job_audio is not None else None
    server = contextlib.ExitStack()
    live = None
    if set(args.doors) - {"inprocess"}:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from live_server import start_live_server  # the one way to serve the app

        live = server.enter_context(contextlib.contextmanager(start_live_server)(settings,
                                                                                 manager))
        if "wyoming" in args.doors:  # Wyoming on a free loopback port, on the same server
            from voxgate.server.wyoming import WyomingServer

            wyoming = WyomingServer("tcp://127.0.0.1:0")
            live.call(wyoming.start(live.state))
            server.callback(lambda: live.call(wyoming.stop(live.state)))
            live.wyoming = wyoming.bound
    for n in args.streams:
        for door in (d for d in args.doors if d != "inprocess"):
            print(f"voxgate through {door}, {n} stream(s) ...", file=sys.stderr)
            res = asyncio.run(run_door(all_inputs[:n], live, door))
            rows.append(res.summary(args.rt_limit))
            print(json.dumps(rows[-1]), file=sys.stderr)
        if "inprocess" not in args.doors:
            continue
        print(f"voxgate, {n} stream(s) ...", file=sys.stderr)
        res = asyncio.run(run_voxgate(all_inputs[:n], settings, manager))
        rows.append(res.summary(args.rt_limit))
        print(json.dumps(rows[-1]), file=sys.stderr)
        if job_audio is not None:
            print(f"voxgate, {n} stream(s) while a {args.with_job:.0f} s file is transcribed",
                  file=sys.stderr)
            quiet = rows[-1]
            job: dict = {}
            worker = threading.Thread(target=lambda: job.update(
                run_job(job_audio, settings, manager)))
            worker.start()
            res = asyncio.run(run_voxgate(all_inputs[:n], settings, manager))
            worker.join()
            res.system = "voxgate+job"
            rows.append(res.summary(args.rt_limit))
            mixed.append(_mixed_row(n, quiet, rows[-1], job, job_alone))
            print(json.dumps(mixed[-1]), file=sys.stderr)
    server.close()
    for n in args.peer_streams:
        print(f"faster-whisper re-decode, {n} stream(s) ...", file=sys.stderr)
        res = run_peer(all_inputs[:n], base.model, args.min_chunk,
                       settings.streaming.final_beam_size)
        rows.append(res.summary(args.rt_limit))
        print(json.dumps(rows[-1]), file=sys.stderr)

    def best_n(system_prefix: str) -> int:
        ok = [r["streams"] for r in rows
              if r["system"].startswith(system_prefix) and "+job" not in r["system"]
              and r["real_time"]]
        return max(ok) if ok else 0

    one_vox = next((r for r in rows if r["system"] == "voxgate" and r["streams"] == 1), None)
    one_peer = next((r for r in rows if r["system"].startswith("faster-whisper")
                     and r["streams"] == 1), None)
    ratios = {}
    if one_vox and one_peer:
        for key in ("partial_lag_p50", "final_latency_p50", "final_latency_p95", "wer"):
            if one_vox[key] and one_peer[key]:
                ratios[key + "_peer_over_voxgate"] = round(one_peer[key] / one_vox[key], 2)
    report = {
        "bench": "streaming", "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_avg_at_start": os.getloadavg()},
        "models": {"final": settings.asr.model, "partial": settings.asr.partial_model},
        "settings": settings.streaming.model_dump(),
        "rt_limit_s": args.rt_limit, "rows": rows,
        "max_real_time_streams": {"voxgate": best_n("voxgate"), "peer": best_n("faster-whisper")},
        "ratios_1_stream": ratios,
        "mixed_load": {"job_seconds": args.with_job, "job_alone": job_alone, "rows": mixed},
    }
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2)
    (RESULTS / "streaming.json").write_text(text)
    (RESULTS / f"streaming-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(text)
    cols = ["system", "streams", "partial_lag_p50", "partial_lag_p95", "partial_coverage",
            "first_seen_lag_p50",
            "final_latency_p50", "final_latency_p95", "decode_latency_p50", "wer",
            "behind_at_end_s", "dropped_partials", "mean_final_batch", "real_time"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    for m in mixed:
        print(f"mixed load, {m['streams']} stream(s): final p50 {m['final_p50_quiet']} -> "
              f"{m['final_p50_with_job']} s, p95 {m['final_p95_quiet']} -> "
              f"{m['final_p95_with_job']} s (x{m['final_p95_ratio']}); job {m['job_alone_s']} "
              f"-> {m['job_with_streams_s']} s (x{m['job_time_ratio']})")
    for door in ("ws", "grpc", "wyoming"):
        through = next((r for r in rows if r["system"] == f"voxgate-{door}"
                        and r["streams"] == 1), None)
        if through and one_vox and one_vox["final_latency_p50"]:
            print(f"{door} door / in-process, 1 stream: final p50 x"
                  f"{through['final_latency_p50'] / one_vox['final_latency_p50']:.2f}")
    print(f"largest real-time N: voxgate {report['max_real_time_streams']['voxgate']}, "
          f"peer {report['max_real_time_streams']['peer']}; ratios (1 stream, peer/voxgate): "
          f"{ratios}")


if __name__ == "__main__":
    main()
