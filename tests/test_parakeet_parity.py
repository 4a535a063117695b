"""Token-id parity with an independent decoder: onnx-asr on the same exported model.

The tiny random-weight models have the exact NeMo export signature (see parakeet_fixtures);
voxgate (own features, own batched greedy decoding) and onnx-asr (its own preprocessor and
per-utterance decoding loop) must emit identical token ids and token frames on every input.
"""

from __future__ import annotations

import numpy as np
import pytest
from parakeet_fixtures import long_speech, speech_inputs, tiny_model

from voxgate.batch import BatchOptions, transcribe_audio
from voxgate.engines.asr_parakeet import ParakeetAsr
from voxgate.engines.base import AsrOptions


@pytest.fixture(scope="module")
def inputs():
    found = speech_inputs()
    assert len(found) >= 20
    return found


@pytest.mark.parametrize("kind", ["tdt", "rnnt", "ctc"])
def test_token_ids_match_onnx_asr(kind, inputs, tmp_path_factory):
    onnx_asr = pytest.importorskip("onnx_asr", reason="onnx-asr (dev extra) is the reference")
    directory = tiny_model(kind, tmp_path_factory)
    asr = ParakeetAsr(directory, batch_size=8)
    reference = onnx_asr.load_model(f"nemo-conformer-{kind}", directory,
                                    providers=["CPUExecutionProvider"]).with_timestamps()
    ids = {piece.replace("\u2581", " "): i for i, piece in enumerate(asr.pieces)}

    ours = asr.transcribe_batch(inputs, AsrOptions())
    hyps = asr.recognize(inputs)
    theirs = reference.recognize(inputs)
    total = 0
    for index, (result, hyp, ref) in enumerate(zip(ours, hyps, theirs, strict=True)):
        ref_ids = [ids[token] for token in ref.tokens]
        assert result.extra["tokens"] == hyp.tokens == ref_ids, f"input {index}"
        np.testing.assert_allclose(np.array(hyp.frames) * 0.08, ref.timestamps, atol=1e-6)
        assert result.text.replace(" ", "") == ref.text.replace(" ", "")
        total += len(ref_ids)
    assert total > 20 * 10  # the random model really emits tokens


def test_batched_equals_one_at_a_time(inputs, tmp_path_factory):
    asr = ParakeetAsr(tiny_model("tdt", tmp_path_factory), batch_size=16)
    batched = asr.recognize(inputs[:12])
    for audio, hyp in zip(inputs[:12], batched, strict=True):
        (alone,) = asr.recognize([audio])
        assert alone.tokens == hyp.tokens and alone.frames == hyp.frames


@pytest.mark.parametrize("kind", ["tdt", "rnnt", "ctc"])
def test_long_recording_decoded_whole_matches_onnx_asr(kind, tmp_path_factory):
    """A 49 s recording decoded as one utterance (``voxgate transcribe --no-vad``): the same
    tokens and frames as onnx-asr, which encodes any length whole. Before Parakeet had its own
    limit, voxgate cut it into independent 30 s windows and differed from the first words."""
    onnx_asr = pytest.importorskip("onnx_asr", reason="onnx-asr (dev extra) is the reference")
    audio = long_speech()
    assert audio.size > 45 * 16_000
    directory = tiny_model(kind, tmp_path_factory)
    asr = ParakeetAsr(directory)
    reference = onnx_asr.load_model(f"nemo-conformer-{kind}", directory,
                                    providers=["CPUExecutionProvider"]).with_timestamps()
    ids = {piece.replace("\u2581", " "): i for i, piece in enumerate(asr.pieces)}
    transcript = transcribe_audio(audio, asr, None, BatchOptions(use_vad=False))
    (hyp,) = asr.recognize([audio])
    ref = reference.recognize(audio)
    assert hyp.tokens == [ids[token] for token in ref.tokens] and len(hyp.tokens) > 150
    np.testing.assert_allclose(np.array(hyp.frames) * 0.08, ref.timestamps, atol=1e-6)
    assert max(hyp.frames) * 0.08 > 45.0
    assert transcript.text.replace(" ", "") == ref.text.replace(" ", "")
