"""Silero VAD v6 (ONNX) for whole files and for live streams.

The model consumes 512-sample frames (32 ms at 16 kHz) each prefixed with the previous frame's
last 64 samples, and carries an LSTM state (h, c). Whole files run all frames in one call;
streams keep their own context and state in a :class:`SileroVadStream` while sharing one session.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..errors import ModelError
from ..types import SpeechSpan
from .base import VadOptions

__all__ = ["SileroVad", "SileroVadStream", "spans_from_probs", "FRAME_SAMPLES"]

FRAME_SAMPLES = 512
CONTEXT_SAMPLES = 64
_STATE_SHAPE = (1, 1, 128)
_MAX_FRAMES_PER_CALL = 10_000
_BLOCK_FRAMES = 1875  # 60 s of frames per pass over a whole file
_QUIET_PEAK = 1e-4  # ~ -80 dBFS: digital silence (3 LSB of PCM16)
_QUIET_RUN_FRAMES = 32  # ~1 s of it before the model is skipped


class SileroVad:
    """Shared Silero session; ``speech_spans`` for files, ``stream()`` for live audio."""

    name = "silero"

    def __init__(self, model_path: str, intra_threads: int = 1) -> None:
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = max(intra_threads, 1)
        opts.log_severity_level = 4
        try:
            self._session = onnxruntime.InferenceSession(
                model_path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"cannot load Silero VAD from {model_path}: {exc}") from exc
        names = [i.name for i in self._session.get_inputs()]
        if names != ["input", "h", "c"]:
            raise ModelError(f"{model_path}: unexpected Silero VAD inputs {names} (want v6)")
        self._lock = threading.Lock()

    @classmethod
    def load(cls, resolved: Any, settings: Any) -> "SileroVad":
        path = resolved.path
        model = path if path.is_file() else path / "silero_vad_v6.onnx"
        return cls(str(model))

    def run_frames(self, frames: np.ndarray, h: np.ndarray, c: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run [n, 576] context+frame rows; returns probabilities and the next state."""
        outputs = []
        with self._lock:
            for i in range(0, frames.shape[0], _MAX_FRAMES_PER_CALL):
                probs, h, c = self._session.run(
                    None, {"input": frames[i:i + _MAX_FRAMES_PER_CALL], "h": h, "c": c})
                outputs.append(np.asarray(probs, dtype=np.float32).reshape(-1))
        return (np.concatenate(outputs) if outputs else np.zeros(0, np.float32)), h, c

    def probabilities(self, audio: np.ndarray) -> np.ndarray:
        """Speech probability for each 512-sample frame of a whole signal.

        Runs the model a minute of audio at a time (memory stays bounded on 3-hour files) and
        skips runs of >= 1 s of digital silence (peak below -80 dBFS), which the model would
        score as silence anyway: a 2-hour silent file costs seconds, not minutes. The model
        state restarts after such a run, as at the start of a file.
        """
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        n_frames = -(-audio.size // FRAME_SAMPLES)
        probs = np.zeros(n_frames, np.float32)
        for first, last in _active_ranges(audio, n_frames):
            stream = self.stream()
            for start in range(first, last, _BLOCK_FRAMES):
                stop = min(start + _BLOCK_FRAMES, last)
                block = audio[start * FRAME_SAMPLES: stop * FRAME_SAMPLES]
                if block.size < (stop - start) * FRAME_SAMPLES:  # the file's last partial frame
                    block = np.pad(block, (0, (stop - start) * FRAME_SAMPLES - block.size))
                probs[start:stop] = stream.accept(block)
        return probs

    def speech_spans(self, audio: np.ndarray, options: VadOptions) -> list[SpeechSpan]:
        if audio.size == 0:
            return []
        return spans_from_probs(self.probabilities(audio), audio.size, options)

    def stream(self) -> "SileroVadStream":
        return SileroVadStream(self)


class SileroVadStream:
    """One live stream's VAD state. Feed any number of samples; get one probability per frame."""

    frame_samples = FRAME_SAMPLES

    def __init__(self, vad: SileroVad) -> None:
        self._vad = vad
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros(_STATE_SHAPE, np.float32)
        self._c = np.zeros(_STATE_SHAPE, np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, np.float32)
        self._buffer = np.zeros(0, np.float32)

    @property
    def pending(self) -> int:
        """Samples waiting for a complete frame."""
        return int(self._buffer.size)

    def accept(self, audio: np.ndarray) -> np.ndarray:
        data = np.concatenate([self._buffer, np.asarray(audio, np.float32).reshape(-1)])
        n = data.size // FRAME_SAMPLES
        self._buffer = data[n * FRAME_SAMPLES:].copy()
        if n == 0:
            return np.zeros(0, np.float32)
        frames = data[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
        contexts = np.empty((n, CONTEXT_SAMPLES), np.float32)
        contexts[0] = self._context
        contexts[1:] = frames[:-1, -CONTEXT_SAMPLES:]
        self._context = frames[-1, -CONTEXT_SAMPLES:].copy()
        probs, self._h, self._c = self._vad.run_frames(
            np.concatenate([contexts, frames], axis=1), self._h, self._c)
        return probs


def _active_ranges(audio: np.ndarray, n_frames: int) -> list[tuple[int, int]]:
    """Frame ranges to run the model on: everything except long runs of digital silence."""
    quiet = np.zeros(n_frames, bool)
    for start in range(0, n_frames, _BLOCK_FRAMES):
        stop = min(start + _BLOCK_FRAMES, n_frames)
        block = audio[start * FRAME_SAMPLES: stop * FRAME_SAMPLES]
        full = block.size // FRAME_SAMPLES
        peaks = np.abs(block[: full * FRAME_SAMPLES]).reshape(full, FRAME_SAMPLES).max(axis=1)
        quiet[start:start + full] = peaks < _QUIET_PEAK
    edges = np.diff(np.concatenate([[0], quiet.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    long_runs = (ends - starts) >= _QUIET_RUN_FRAMES
    ranges, position = [], 0
    for start, end in zip(starts[long_runs], ends[long_runs]):
        if start > position:
            ranges.append((position, int(start)))
        position = int(end)
    if position < n_frames:
        ranges.append((position, n_frames))
    return ranges


def spans_from_probs(probs: np.ndarray, total_samples: int, options: VadOptions,
                     frame_samples: int = FRAME_SAMPLES, sample_rate: int = 16_000
                     ) -> list[SpeechSpan]:
    """Turn per-frame speech probabilities into padded speech spans (Silero's hysteresis rule).

    Speech starts at ``threshold`` and ends after ``min_silence_ms`` below ``threshold - 0.15``;
    spans shorter than ``min_speech_ms`` are dropped; spans longer than ``max_speech_s`` are
    split at their last pause (or hard-split when there is none).
    """
    threshold = options.threshold
    neg_threshold = max(threshold - 0.15, 0.01)
    min_speech = sample_rate * options.min_speech_ms / 1000
    min_silence = sample_rate * options.min_silence_ms / 1000
    pad = int(sample_rate * options.speech_pad_ms / 1000)
    max_speech = sample_rate * options.max_speech_s - frame_samples - 2 * pad
    min_silence_at_max = sample_rate * 0.098

    spans: list[list[int]] = []
    triggered = False
    start = temp_end = prev_end = next_start = 0
    for i, p in enumerate(probs):
        pos = i * frame_samples
        if p >= threshold and temp_end:
            if next_start < prev_end:
                next_start = pos
            temp_end = 0
        if p >= threshold and not triggered:
            triggered, start = True, pos
            continue
        if triggered and pos - start > max_speech:
            if prev_end:
                spans.append([start, prev_end])
                if next_start < prev_end:
                    triggered = False
                else:
                    start = next_start
                prev_end = next_start = temp_end = 0
            else:
                spans.append([start, pos])
                prev_end = next_start = temp_end = 0
                triggered = False
                continue
        if triggered and p < neg_threshold:
            if not temp_end:
                temp_end = pos
            if pos - temp_end > min_silence_at_max:
                prev_end = temp_end
            if pos - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                spans.append([start, temp_end])
            prev_end = next_start = temp_end = 0
            triggered = False
    if triggered and total_samples - start > min_speech:
        spans.append([start, total_samples])

    for k, span in enumerate(spans):
        left = 0 if k == 0 else spans[k - 1][1]
        gap_before = span[0] - left
        span[0] = max(0, span[0] - (pad if k == 0 else min(pad, gap_before // 2)))
        if k + 1 < len(spans):
            gap_after = spans[k + 1][0] - span[1]
            span[1] = min(total_samples, span[1] + min(pad, gap_after // 2))
        else:
            span[1] = min(total_samples, span[1] + pad)
    return [SpeechSpan(s, e) for s, e in spans if e > s]
