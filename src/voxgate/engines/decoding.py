"""Greedy CTC, RNN-T and TDT decoding in pure numpy, batched over utterances.

The transducer loop talks to the model only through a :class:`JointFn` (one decoder+joint step
for a batch of rows), so it is unit-tested on hand-built logits and runs unchanged on ONNX
Runtime, TensorRT or anything else. Joint output layout (NeMo): ``[V tokens | blank | duration
logits]``; the blank id is ``V``.

TDT rules (Xu et al. 2023, "Efficient Sequence Transduction by Jointly Predicting Tokens and
Durations", greedy inference; NeMo ``GreedyTDTInfer``):

- token = argmax over tokens + blank; duration = ``durations[argmax(duration logits)]``;
- blank advances ``max(duration, 1)`` frames and leaves the predictor state unchanged;
- a token is emitted, advances the predictor, and moves ``duration`` frames;
- duration 0 stays on the frame, at most ``max_symbols_per_step`` symbols, then one frame on.

RNN-T is TDT without durations (a token stays, a blank moves one frame). Decoding state is
resumable (:class:`TransducerState`), so a stream continues its hypothesis chunk after chunk;
a TDT jump past the end of a chunk is carried into the next one.

The steady-state loop keeps its arrays preallocated: rows that finish are compacted away (at
most once per utterance), frames are gathered with ``np.take(out=...)``, and predictor states
are updated in place with ``np.copyto(where=...)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..errors import ConfigError, ModelError

__all__ = [
    "GreedyTransducer",
    "Hypothesis",
    "JointFn",
    "TokenSpan",
    "TransducerConfig",
    "TransducerState",
    "WindowJointFn",
    "WordSpan",
    "ctc_greedy",
    "group_words",
    "token_spans",
]

logger = logging.getLogger(__name__)

DEFAULT_DURATIONS: tuple[int, ...] = (0, 1, 2, 3, 4)
DEFAULT_MAX_SYMBOLS = 10


@dataclass(slots=True)
class Hypothesis:
    """Decoded tokens with the encoder frame each was emitted on (global index)."""

    tokens: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    durations: list[int] = field(default_factory=list)  # frames covered (>= 1)
    probs: list[float] = field(default_factory=list)  # softmax prob of the chosen token

    def extend(self, other: Hypothesis) -> None:
        self.tokens += other.tokens
        self.frames += other.frames
        self.durations += other.durations
        self.probs += other.probs


class JointFn(Protocol):
    """One predictor + joint step for ``n`` rows.

    ``frames`` ``[n, D]`` float32 encoder frames, ``targets`` ``[n]`` int64 previous tokens
    (blank for "none yet"), ``state1``/``state2`` ``[L, n, H]``. Returns logits ``[n, K]`` and
    the predictor states after consuming ``targets``. The returned arrays may be buffers the
    next call overwrites (the loop copies what it keeps) and must not alias the inputs.
    """

    def __call__(self, frames: np.ndarray, targets: np.ndarray, state1: np.ndarray,
                 state2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class WindowJointFn(JointFn, Protocol):
    """A joint that can also score several frames of one row against one predictor state.

    ``window(frames [k, D], targets [1], state1, state2)`` returns logits ``[k, K]`` (frame
    ``i`` scored with the predictor output for ``targets``) and the states after ``targets``.
    While blanks are emitted the predictor does not move, so these are exactly the logits
    frame-by-frame decoding would compute, in one model call instead of ``k``.
    """

    def window(self, frames: np.ndarray, targets: np.ndarray, state1: np.ndarray,
               state2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


@dataclass(frozen=True, slots=True)
class TransducerConfig:
    """What the loop needs to know about the joint's output."""

    blank_id: int  # == number of real tokens V
    durations: tuple[int, ...] = DEFAULT_DURATIONS  # empty: RNN-T
    max_symbols_per_step: int = DEFAULT_MAX_SYMBOLS

    def __post_init__(self) -> None:
        if self.blank_id < 0 or self.max_symbols_per_step < 1:
            raise ConfigError(f"invalid transducer config {self}")
        if any(d < 0 for d in self.durations):
            raise ConfigError(f"TDT durations must be >= 0, got {self.durations}")

    @property
    def num_classes(self) -> int:
        """Tokens + blank."""
        return self.blank_id + 1

    @property
    def output_size(self) -> int:
        """Width of one joint output row."""
        return self.num_classes + len(self.durations)


@dataclass(slots=True)
class TransducerState:
    """Everything needed to continue one utterance's decoding on the next chunk."""

    hypothesis: Hypothesis
    last_token: int
    state1: np.ndarray  # [L, H]
    state2: np.ndarray  # [L, H]
    frame_offset: int = 0  # global index of the next chunk's first frame
    skip: int = 0  # frames at the start of the next chunk already covered by a TDT jump


def _chosen_probs(logits: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Softmax probability of ``chosen`` in each row of ``logits`` (numerically stable)."""
    peak = logits.max(axis=1, keepdims=True)
    total = np.exp(logits - peak).sum(axis=1)
    return np.exp(logits[np.arange(len(chosen)), chosen] - peak[:, 0]) / total


class GreedyTransducer:
    """Batched greedy RNN-T / TDT decoding over a :class:`JointFn`."""

    def __init__(self, joint: JointFn, config: TransducerConfig,
                 state_shape: tuple[int, int], lookahead: int = 1) -> None:
        """``lookahead`` > 1 (with a :class:`WindowJointFn`) lets a single utterance score up to
        that many frames per model call while the predictor state stands still."""
        self.joint = joint
        self.config = config
        self.state_shape = state_shape  # (layers, hidden)
        self.lookahead = max(int(lookahead), 1) if hasattr(joint, "window") else 1
        self._durations = np.asarray(config.durations or (0,), dtype=np.int64)
        self._tdt = bool(config.durations)

    def initial_state(self) -> TransducerState:
        layers, hidden = self.state_shape
        return TransducerState(Hypothesis(), self.config.blank_id,
                               np.zeros((layers, hidden), np.float32),
                               np.zeros((layers, hidden), np.float32))

    def decode(self, encoder_out: np.ndarray, lengths: np.ndarray,
               states: Sequence[TransducerState] | None = None) -> list[TransducerState]:
        """Decode ``encoder_out`` ``[B, T, D]`` (valid frames ``lengths``), continuing ``states``.

        Returns one state per row; its ``hypothesis`` holds all tokens so far (the input
        states are not modified).
        """
        enc = np.ascontiguousarray(encoder_out, dtype=np.float32)
        if enc.ndim != 3:
            raise ModelError(f"encoder output must be [B, T, D], got shape {enc.shape}")
        batch, total, _ = enc.shape
        lengths = np.minimum(np.asarray(lengths, dtype=np.int64).reshape(-1), total)
        if lengths.shape != (batch,):
            raise ModelError(f"{lengths.size} lengths for a batch of {batch}")
        if states is None:
            states = [self.initial_state() for _ in range(batch)]
        if len(states) != batch:
            raise ModelError(f"{len(states)} decoder states for a batch of {batch}")
        if batch == 0:
            return []

        t = np.fromiter((s.skip for s in states), dtype=np.int64, count=batch)
        last = np.fromiter((s.last_token for s in states), dtype=np.int64, count=batch)
        s1 = np.stack([s.state1 for s in states], axis=1).astype(np.float32, copy=False)
        s2 = np.stack([s.state2 for s in states], axis=1).astype(np.float32, copy=False)
        offsets = [s.frame_offset for s in states]
        loop = self._loop_one if batch == 1 else self._loop_batch
        hyps, final_t, final_last, final_s1, final_s2 = loop(enc, lengths, t, last, s1, s2,
                                                             offsets)

        results: list[TransducerState] = []
        for u, state in enumerate(states):
            hyp = Hypothesis(list(state.hypothesis.tokens), list(state.hypothesis.frames),
                             list(state.hypothesis.durations), list(state.hypothesis.probs))
            hyp.extend(hyps[u])
            results.append(TransducerState(
                hyp, int(final_last[u]), final_s1[:, u].copy(), final_s2[:, u].copy(),
                frame_offset=offsets[u] + int(lengths[u]),
                skip=max(int(final_t[u] - lengths[u]), 0)))
        return results

    def _loop_batch(self, enc: np.ndarray, lengths: np.ndarray, t: np.ndarray,
                    last: np.ndarray, s1: np.ndarray, s2: np.ndarray, offsets: list[int]
                    ) -> tuple[list[Hypothesis], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Vectorised loop over the rows still decoding; finished rows are compacted away.

        About twenty numpy calls per step whatever the batch size, none of them per token:
        emissions go to growable arrays and are split per utterance once at the end.
        """
        batch, total, dim = enc.shape
        cfg = self.config
        classes, blank, cap = cfg.num_classes, cfg.blank_id, cfg.max_symbols_per_step
        final_t, final_last = t.copy(), last.copy()
        final_s1, final_s2 = s1.copy(), s2.copy()
        rows = np.arange(batch, dtype=np.int64)  # row -> utterance
        length = lengths.copy()
        symbols = np.zeros(batch, dtype=np.int64)
        start = np.asarray(offsets, dtype=np.int64)  # global frame of each utterance's t = 0
        flat = enc.reshape(batch * total, dim)
        frame_buf = np.empty((batch, dim), dtype=np.float32)
        index_buf = np.empty(batch, dtype=np.int64)
        emissions = _Emissions(max(64, 2 * int(lengths.sum())))

        alive = t < length
        while True:
            if not alive.all():  # at most once per utterance
                for r in np.flatnonzero(~alive).tolist():
                    u = rows[r]
                    final_t[u], final_last[u] = t[r], last[r]
                    final_s1[:, u], final_s2[:, u] = s1[:, r], s2[:, r]
                rows, t, last, length, symbols = (a[alive] for a in (rows, t, last, length,
                                                                      symbols))
                s1, s2 = np.ascontiguousarray(s1[:, alive]), np.ascontiguousarray(s2[:, alive])
                if rows.size == 0:
                    break
            n = rows.size
            index = np.multiply(rows, total, out=index_buf[:n])
            index += t
            frames = np.take(flat, index, axis=0, out=frame_buf[:n])
            logits, n1, n2 = self.joint(frames, last, s1, s2)
            token = logits[:, :classes].argmax(axis=1)
            step = self._durations[logits[:, classes:].argmax(axis=1)] if self._tdt \
                else np.zeros(n, dtype=np.int64)
            emit = token != blank
            if emit.any():
                which = np.flatnonzero(emit)
                scores = logits[which, :classes]  # a copy: exp in place is safe
                scores -= scores.max(axis=1, keepdims=True)
                np.exp(scores, out=scores)
                emissions.add(rows[which], token[which], start[rows[which]] + t[which],
                              np.maximum(step[which], 1), 1.0 / scores.sum(axis=1))
                np.copyto(last, token, where=emit)
                np.copyto(s1, n1, where=emit[None, :, None])
                np.copyto(s2, n2, where=emit[None, :, None])
                symbols += emit
                step[(step == 0) & (symbols >= cap)] = 1  # duration-0 run hit the cap
            np.maximum(step, ~emit, out=step)  # a blank moves at least one frame
            symbols[step > 0] = 0
            t += step
            alive = t < length
        return emissions.split(batch), final_t, final_last, final_s1, final_s2

    def _loop_one(self, enc: np.ndarray, lengths: np.ndarray, t: np.ndarray, last: np.ndarray,
                  s1: np.ndarray, s2: np.ndarray, offsets: list[int]
                  ) -> tuple[list[Hypothesis], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The same rules for a single utterance with Python scalars.

        With ``lookahead`` the joint scores ``lookahead`` frames per call and the loop walks
        them while blanks leave the predictor unchanged; a token (the predictor moved) or a
        jump past the window's end asks for the next window.
        """
        cfg = self.config
        classes, blank, cap = cfg.num_classes, cfg.blank_id, cfg.max_symbols_per_step
        durations = [int(d) for d in self._durations] if self._tdt else None
        hyp = Hypothesis()
        frames = enc[0]
        pos, length, offset = int(t[0]), int(lengths[0]), offsets[0]
        target = last.copy()
        s1, s2 = s1.copy(), s2.copy()  # ours: the joint may reuse its output buffers
        symbols = 0
        window = self.joint.window if self.lookahead > 1 else None  # type: ignore[attr-defined]
        scored_from = scored_to = 0
        while pos < length:
            if not scored_from <= pos < scored_to:
                if window is None:
                    scored, n1, n2 = self.joint(frames[pos:pos + 1], target, s1, s2)
                    scored_to = pos + 1
                else:
                    scored_to = min(pos + self.lookahead, length)
                    scored, n1, n2 = window(frames[pos:scored_to], target, s1, s2)
                scored_from = pos
            row = scored[pos - scored_from]
            token = int(row[:classes].argmax())
            step = durations[int(row[classes:].argmax())] if durations else 0
            if token != blank:
                hyp.tokens.append(token)
                hyp.frames.append(offset + pos)
                hyp.durations.append(step or 1)
                hyp.probs.append(float(1.0 / np.exp(row[:classes] - row[token]).sum()))
                target[0] = token
                np.copyto(s1, n1)
                np.copyto(s2, n2)
                symbols += 1
                if step == 0 and symbols >= cap:
                    step = 1
                scored_from = scored_to = 0  # the predictor moved: rescore
            elif step == 0:
                step = 1
            if step:
                symbols = 0
                pos += step
        return [hyp], np.array([pos]), target, s1, s2


class _Emissions:
    """Emitted tokens of a batch in growable arrays, split per utterance once at the end."""

    def __init__(self, capacity: int) -> None:
        self.size = 0
        self.rows = np.empty(capacity, np.int64)
        self.tokens = np.empty(capacity, np.int64)
        self.frames = np.empty(capacity, np.int64)
        self.durations = np.empty(capacity, np.int64)
        self.probs = np.empty(capacity, np.float64)

    def add(self, rows: np.ndarray, tokens: np.ndarray, frames: np.ndarray,
            durations: np.ndarray, probs: np.ndarray) -> None:
        end = self.size + rows.size
        if end > self.rows.size:
            grow = max(end, 2 * self.rows.size)
            for name in ("rows", "tokens", "frames", "durations", "probs"):
                old = getattr(self, name)
                new = np.empty(grow, old.dtype)
                new[: self.size] = old[: self.size]
                setattr(self, name, new)
        self.rows[self.size:end] = rows
        self.tokens[self.size:end] = tokens
        self.frames[self.size:end] = frames
        self.durations[self.size:end] = durations
        self.probs[self.size:end] = probs
        self.size = end

    def split(self, batch: int) -> list[Hypothesis]:
        order = np.argsort(self.rows[: self.size], kind="stable")
        bounds = np.cumsum(np.bincount(self.rows[: self.size], minlength=batch))[:-1]
        columns = [np.split(getattr(self, name)[: self.size][order], bounds)
                   for name in ("tokens", "frames", "durations", "probs")]
        return [Hypothesis(tok.tolist(), fr.tolist(), du.tolist(), pr.tolist())
                for tok, fr, du, pr in zip(*columns, strict=True)]


def ctc_greedy(logits: np.ndarray, lengths: np.ndarray, blank_id: int,
               frame_offset: int = 0) -> list[Hypothesis]:
    """Best path per frame, repeats merged, blanks dropped; vectorised over the batch.

    ``logits`` ``[B, T, C]`` (log-probabilities or raw scores: the probability reported per
    token is the softmax at its first frame either way).
    """
    scores = np.asarray(logits)
    if scores.ndim != 3:
        raise ModelError(f"CTC output must be [B, T, C], got shape {scores.shape}")
    batch, total, _ = scores.shape
    lengths = np.minimum(np.asarray(lengths, dtype=np.int64).reshape(-1), total)
    best = scores.argmax(axis=-1)
    valid = np.arange(total)[None, :] < lengths[:, None]
    best = np.where(valid, best, blank_id)
    changed = np.diff(best, axis=1, prepend=blank_id) != 0
    keep = changed & (best != blank_id)
    b_idx, t_idx = np.nonzero(keep)
    probs = _chosen_probs(scores[b_idx, t_idx], best[b_idx, t_idx]) if b_idx.size else \
        np.zeros(0)
    # a token covers frames until the best path changes again
    change_b, change_t = np.nonzero(np.concatenate(
        [changed[:, 1:], np.ones((batch, 1), bool)], axis=1))
    hyps = [Hypothesis() for _ in range(batch)]
    ends_by_row: list[np.ndarray] = [change_t[change_b == b] for b in range(batch)]
    for k, (b, frame) in enumerate(zip(b_idx.tolist(), t_idx.tolist())):
        ends = ends_by_row[b]
        end = int(ends[np.searchsorted(ends, frame)]) + 1
        hyp = hyps[b]
        hyp.tokens.append(int(best[b, frame]))
        hyp.frames.append(frame_offset + frame)
        hyp.durations.append(min(end, int(lengths[b])) - frame)
        hyp.probs.append(float(probs[k]))
    return hyps


@dataclass(frozen=True, slots=True)
class TokenSpan:
    piece: str
    start: float
    end: float
    prob: float


@dataclass(frozen=True, slots=True)
class WordSpan:
    word: str
    start: float
    end: float
    prob: float  # the lowest token probability in the word (NeMo's default aggregation: min)
    first_token: int = 0  # index of the word's first token in the hypothesis
    tokens: int = 1  # how many tokens make the word


def token_spans(hyp: Hypothesis, pieces: Sequence[str], frame_s: float) -> list[TokenSpan]:
    """Token pieces with times: start = frame x frame shift, end = start + covered frames."""
    return [TokenSpan(pieces[tok], frame * frame_s, (frame + dur) * frame_s, prob)
            for tok, frame, dur, prob in zip(hyp.tokens, hyp.frames, hyp.durations, hyp.probs)]


def group_words(spans: Sequence[TokenSpan], space: str = "\u2581") -> list[WordSpan]:
    """Join SentencePiece pieces into words; a piece starting with ``space`` opens a word."""
    words: list[WordSpan] = []
    first = 0
    for index, span in enumerate(spans):
        if index > first and span.piece.startswith(space):
            words.append(_word(spans, first, index, space))
            first = index
    if first < len(spans):
        words.append(_word(spans, first, len(spans), space))
    return [w for w in words if w.word]


def _word(spans: Sequence[TokenSpan], first: int, stop: int, space: str) -> WordSpan:
    pieces = spans[first:stop]
    return WordSpan("".join(p.piece for p in pieces).replace(space, " ").strip(),
                    pieces[0].start, pieces[-1].end, min(p.prob for p in pieces), first,
                    stop - first)
