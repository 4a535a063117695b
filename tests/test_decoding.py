"""Greedy CTC / RNN-T / TDT decoding on hand-built logits (no model, no ONNX)."""

from __future__ import annotations

import numpy as np
import pytest

from voxgate.engines.decoding import (
    GreedyTransducer,
    Hypothesis,
    TokenSpan,
    TransducerConfig,
    ctc_greedy,
    group_words,
    token_spans,
)
from voxgate.errors import ConfigError, ModelError

V = 6  # tokens 0..5, blank = 6
BLANK = V
DURATIONS = (0, 1, 2, 3, 4)


class ScriptedJoint:
    """A joint whose output is scripted per (frame, tokens emitted so far).

    Encoder frames carry their own index (D = 1), and the predictor state counts the tokens the
    predictor has consumed, so ``script[(frame, k)] = (token, duration index)``; anything not
    scripted is a blank of duration 1. Calls are recorded.
    """

    def __init__(self, script: dict[tuple[int, int], tuple[int, int]],
                 durations: tuple[int, ...] = DURATIONS) -> None:
        self.script = script
        self.n_dur = len(durations)
        self.calls: list[tuple[int, int, int]] = []  # (frame, consumed, last token)

    def __call__(self, frames, targets, state1, state2):
        n = frames.shape[0]
        logits = np.full((n, V + 1 + self.n_dur), -10.0, dtype=np.float32)
        for r in range(n):
            frame, consumed = int(frames[r, 0]), int(state1[0, r, 0])
            self.calls.append((frame, consumed, int(targets[r])))
            token, dur = self.script.get((frame, consumed), (BLANK, 1 if self.n_dur > 1 else 0))
            logits[r, token] = 5.0
            if self.n_dur:
                logits[r, V + 1 + dur] = 5.0
        return logits, state1 + 1.0, state2 - 1.0


class WindowScriptedJoint(ScriptedJoint):
    """The scripted joint with window scoring (several frames, one predictor state)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.windows: list[int] = []

    def window(self, frames, targets, state1, state2):
        self.windows.append(frames.shape[0])
        rows = [self(frames[i:i + 1], targets, state1, state2)[0] for i in range(len(frames))]
        self.calls = self.calls[: len(self.calls) - len(frames)]  # count windows, not frames
        return np.concatenate(rows), state1 + 1.0, state2 - 1.0


def frames_of(length: int, offset: int = 0) -> np.ndarray:
    return (np.arange(length, dtype=np.float32) + offset).reshape(1, length, 1)


def decode(script, length, durations=DURATIONS, cap=10):
    joint = ScriptedJoint(script, durations)
    decoder = GreedyTransducer(joint, TransducerConfig(BLANK, durations, cap), (1, 1))
    (state,) = decoder.decode(frames_of(length), np.array([length]))
    return state, joint


def test_tdt_token_durations_move_frames():
    # frame 0: token 1 (dur 2) -> frame 2: token 2 (dur 1) -> frame 3: blank dur 1 -> 4 ...
    state, joint = decode({(0, 0): (1, 2), (2, 1): (2, 1)}, 6)
    assert state.hypothesis.tokens == [1, 2]
    assert state.hypothesis.frames == [0, 2]
    assert state.hypothesis.durations == [2, 1]
    assert [c[0] for c in joint.calls] == [0, 2, 3, 4, 5]


def test_blank_with_duration_zero_still_moves_one_frame():
    state, joint = decode({(f, 0): (BLANK, 0) for f in range(4)}, 4)
    assert state.hypothesis.tokens == []
    assert [c[0] for c in joint.calls] == [0, 1, 2, 3]


def test_blank_keeps_predictor_state_and_token_advances_it():
    state, joint = decode({(0, 0): (3, 1), (2, 1): (4, 1)}, 4)
    # the predictor saw: blank (start), then 3 after frame 0, still 3 on frame 1's blank
    assert [(c[0], c[1], c[2]) for c in joint.calls] == [(0, 0, BLANK), (1, 1, 3), (2, 1, 3),
                                                         (3, 2, 4)]
    assert state.last_token == 4
    assert state.state1[0, 0] == 2.0 and state.state2[0, 0] == -2.0


def test_duration_zero_run_hits_the_symbol_cap_then_moves_on():
    script = {(0, k): (k % V, 0) for k in range(50)}
    state, joint = decode(script, 2, cap=10)
    assert len(state.hypothesis.tokens) == 10
    assert state.hypothesis.frames == [0] * 10
    assert [c[0] for c in joint.calls].count(0) == 10  # 10 tokens, then forced to frame 1
    assert joint.calls[-1][0] == 1


def test_symbol_cap_counts_per_frame_not_per_utterance():
    script = {(0, 0): (1, 0), (0, 1): (2, 1), (1, 2): (3, 0), (1, 3): (4, 1)}
    state, _ = decode(script, 3, cap=2)
    assert state.hypothesis.tokens == [1, 2, 3, 4]
    assert state.hypothesis.frames == [0, 0, 1, 1]


def test_empty_input_calls_nothing():
    state, joint = decode({}, 0)
    assert state.hypothesis.tokens == [] and joint.calls == []
    assert state.frame_offset == 0 and state.skip == 0


def test_one_frame():
    state, joint = decode({(0, 0): (5, 1)}, 1)
    assert state.hypothesis.tokens == [5]
    assert len(joint.calls) == 1


def test_custom_durations_list_is_mapped():
    durations = (0, 2, 4)
    state, joint = decode({(0, 0): (1, 2)}, 9, durations=durations)  # index 2 -> 4 frames
    assert state.hypothesis.durations == [4]
    assert [c[0] for c in joint.calls][:2] == [0, 4]


def test_rnnt_mode_token_stays_blank_moves():
    script = {(0, 0): (1, 0), (0, 1): (2, 0), (1, 2): (3, 0)}
    joint = ScriptedJoint(script, durations=())
    decoder = GreedyTransducer(joint, TransducerConfig(BLANK, (), 10), (1, 1))
    (state,) = decoder.decode(frames_of(3), np.array([3]))
    assert state.hypothesis.tokens == [1, 2, 3]
    assert state.hypothesis.frames == [0, 0, 1]
    assert state.hypothesis.durations == [1, 1, 1]


def test_batch_with_mixed_lengths_matches_one_by_one():
    script = {(0, 0): (1, 0), (0, 1): (2, 3), (3, 2): (3, 2), (5, 3): (4, 4), (6, 3): (5, 1),
              (8, 4): (1, 0), (8, 5): (1, 0)}
    lengths = [9, 1, 0, 6, 4]
    total = max(lengths)
    enc = np.broadcast_to(frames_of(total), (len(lengths), total, 1)).copy()
    joint = ScriptedJoint(script)
    decoder = GreedyTransducer(joint, TransducerConfig(BLANK, DURATIONS, 10), (1, 1))
    batched = decoder.decode(enc, np.array(lengths))
    for length, got in zip(lengths, batched):
        alone, _ = decode(script, length)
        assert got.hypothesis == alone.hypothesis
        assert got.skip == alone.skip and got.last_token == alone.last_token
        assert np.array_equal(got.state1, alone.state1)


def test_resume_across_chunks_carries_tdt_jumps():
    script = {(0, 0): (1, 4), (4, 1): (2, 3), (7, 2): (3, 1)}
    whole, _ = decode(script, 9)
    joint = ScriptedJoint(script)
    decoder = GreedyTransducer(joint, TransducerConfig(BLANK, DURATIONS, 10), (1, 1))
    state = decoder.initial_state()
    for start, stop in ((0, 2), (2, 5), (5, 6), (6, 9)):
        (state,) = decoder.decode(frames_of(stop - start, start), np.array([stop - start]),
                                  [state])
    assert state.hypothesis == whole.hypothesis
    assert state.frame_offset == 9


def test_random_joint_batch_equals_single():
    rng = np.random.default_rng(0)
    dim, hidden, classes = 8, 4, V + 1 + len(DURATIONS)
    w_enc = rng.normal(size=(dim, classes)).astype(np.float32)
    w_state = rng.normal(size=(hidden, classes)).astype(np.float32)
    embed = rng.normal(size=(V + 1, hidden)).astype(np.float32)

    def joint(frames, targets, s1, s2):
        new1 = np.tanh(s1 + embed[targets][None])
        return frames @ w_enc + new1[-1] @ w_state, new1, s2 + 1

    decoder = GreedyTransducer(joint, TransducerConfig(BLANK, DURATIONS, 3), (2, hidden))
    lengths = np.array([30, 7, 19, 1])
    enc = rng.normal(size=(4, 30, dim)).astype(np.float32)
    batched = decoder.decode(enc, lengths)
    for i, got in enumerate(batched):
        (alone,) = decoder.decode(enc[i:i + 1, :lengths[i]], lengths[i:i + 1])
        assert got.hypothesis.tokens == alone.hypothesis.tokens
        assert got.hypothesis.frames == alone.hypothesis.frames
        assert np.allclose(got.hypothesis.probs, alone.hypothesis.probs)
    assert sum(len(s.hypothesis.tokens) for s in batched) > 10


def test_confidence_is_softmax_of_chosen_token():
    def joint(frames, targets, s1, s2):
        logits = np.array([[0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, -9, 9, -9, -9, -9]], np.float32)
        return np.repeat(logits, frames.shape[0], 0), s1, s2

    decoder = GreedyTransducer(joint, TransducerConfig(BLANK), (1, 1))
    (state,) = decoder.decode(np.zeros((1, 1, 1), np.float32), np.array([1]))
    expected = np.exp(2.0) / (np.exp(2.0) + 6)
    assert state.hypothesis.probs == pytest.approx([expected], rel=1e-5)


def test_bad_shapes_and_config_raise_clear_errors():
    decoder = GreedyTransducer(ScriptedJoint({}), TransducerConfig(BLANK), (1, 1))
    with pytest.raises(ModelError, match=r"\[B, T, D\]"):
        decoder.decode(np.zeros((3, 1), np.float32), np.array([3]))
    with pytest.raises(ModelError, match="lengths"):
        decoder.decode(np.zeros((2, 3, 1), np.float32), np.array([3]))
    with pytest.raises(ConfigError):
        TransducerConfig(BLANK, (0, -1))
    with pytest.raises(ConfigError):
        TransducerConfig(BLANK, DURATIONS, 0)


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    seq = [[BLANK, 1, 1, BLANK, 1, 2, 2, 3, BLANK], [4, 4, 4, BLANK, BLANK, 5, 5, 5, 5]]
    logits = np.full((2, 9, V + 1), -5.0, np.float32)
    for b, row in enumerate(seq):
        logits[b, np.arange(9), row] = 0.0
    hyps = ctc_greedy(logits, np.array([9, 7]), BLANK, frame_offset=10)
    assert hyps[0].tokens == [1, 1, 2, 3]
    assert hyps[0].frames == [11, 14, 15, 17]
    assert hyps[0].durations == [2, 1, 2, 1]
    assert hyps[1].tokens == [4, 5]  # frames 7, 8 are past the length
    assert hyps[1].durations == [3, 2]
    assert all(0.9 < p <= 1.0 for p in hyps[0].probs)


def test_ctc_empty_and_zero_length():
    assert ctc_greedy(np.zeros((1, 0, V + 1)), np.array([0]), BLANK)[0] == Hypothesis()
    assert ctc_greedy(np.zeros((2, 4, V + 1)), np.array([0, 0]), BLANK) == [Hypothesis()] * 2


def test_words_from_pieces_with_times():
    pieces = ["<unk>", "\u2581he", "llo", "\u2581wor", "ld", "!", "<blk>"]
    hyp = Hypothesis(tokens=[1, 2, 3, 4, 5], frames=[0, 1, 5, 6, 8], durations=[1, 2, 1, 1, 1],
                     probs=[0.9, 0.8, 0.7, 0.95, 0.6])
    spans = token_spans(hyp, pieces, 0.08)
    assert spans[1] == TokenSpan("llo", pytest.approx(0.08), pytest.approx(0.24), 0.8)
    words = group_words(spans)
    assert [w.word for w in words] == ["hello", "world!"]
    assert words[0].start == 0.0 and words[0].end == pytest.approx(0.24)
    assert words[1].start == pytest.approx(0.40) and words[1].end == pytest.approx(0.72)
    assert words[1].prob == 0.6


@pytest.mark.parametrize("durations", [DURATIONS, ()])
def test_window_scoring_gives_the_same_hypothesis_in_fewer_calls(durations):
    script = {(3, 0): (1, 0), (3, 1): (2, 2), (10, 2): (3, 1), (17, 3): (4, 0), (17, 4): (5, 0),
              (17, 5): (1, 0), (17, 6): (2, 0), (30, 7): (3, 3), (44, 8): (4, 4),
              (59, 9): (5, 1)}
    config = TransducerConfig(BLANK, durations, 4)
    plain_joint = ScriptedJoint(script, durations)
    (plain,) = GreedyTransducer(plain_joint, config, (1, 1)).decode(frames_of(60), [60])
    windowed_joint = WindowScriptedJoint(script, durations)
    decoder = GreedyTransducer(windowed_joint, config, (1, 1), lookahead=8)
    (windowed,) = decoder.decode(frames_of(60), [60])
    assert len(plain.hypothesis.tokens) >= 8
    assert windowed.hypothesis == plain.hypothesis and windowed.skip == plain.skip
    assert np.array_equal(windowed.state1, plain.state1)
    assert len(windowed_joint.windows) < len(plain_joint.calls) / 2
    assert max(windowed_joint.windows) <= 8


def test_lookahead_needs_a_window_joint():
    assert GreedyTransducer(ScriptedJoint({}), TransducerConfig(BLANK), (1, 1),
                            lookahead=8).lookahead == 1
