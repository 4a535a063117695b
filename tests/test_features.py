"""NeMo log-mel front end, checked against two independent references on real speech.

References: onnx-asr's numpy NeMo preprocessor with its librosa-built filterbanks, and NeMo's
``FilterbankFeatures`` formula written out with ``torch.stft``. Stated tolerance: after per-bin
normalisation (unit variance) the largest difference anywhere is below 1e-3 and the mean
difference below 1e-5 (measured: ~4e-5 and ~3e-7).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voxgate.audio import decode_audio
from voxgate.engines.features import LogMelFrontend, MelConfig, pad_batch, slaney_mel_filterbank
from voxgate.errors import AudioError, ConfigError

CLIPS = sorted(Path("/usr/share/pocketsphinx/test/data/librivox").glob("*.wav"))
MAX_ABS, MEAN_ABS = 1e-3, 1e-5


@pytest.fixture(scope="module")
def speech() -> list[np.ndarray]:
    if not CLIPS:
        pytest.skip("pocketsphinx-testdata clips are not installed "
                    "(apt install pocketsphinx-testdata)")
    return [decode_audio(p) for p in CLIPS]


def _onnx_asr_reference(n_mels: int):
    module = pytest.importorskip("onnx_asr.preprocessors.numpy_preprocessor",
                                 reason="onnx-asr (dev extra) is the reference implementation")
    return module.NemoPreprocessorNumpy(f"nemo{n_mels}")


@pytest.mark.parametrize("n_mels", [80, 128])
def test_filterbank_matches_librosa_slaney(n_mels):
    reference = _onnx_asr_reference(n_mels)._melscale_fbanks
    ours = slaney_mel_filterbank(16_000, 512, n_mels)
    assert ours.shape == reference.shape == (257, n_mels)
    assert np.abs(ours - reference).max() < 1e-7


@pytest.mark.parametrize("n_mels", [80, 128])
def test_features_match_onnx_asr_on_real_speech(speech, n_mels):
    reference = _onnx_asr_reference(n_mels)
    waves, lengths = pad_batch(speech)
    ours, ours_len = LogMelFrontend(MelConfig(n_mels=n_mels))(waves, lengths)
    ref, ref_len = reference(waves.copy(), lengths)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert ours_len.tolist() == ref_len.tolist() == (lengths // 160).tolist()
    diff = np.abs(ours - ref)
    assert diff.max() < MAX_ABS and diff.mean() < MEAN_ABS


def _nemo_formula_torch(wave: np.ndarray, filterbank: np.ndarray) -> np.ndarray:
    """NeMo ``FilterbankFeatures.forward`` for one signal, written with torch ops."""
    torch = pytest.importorskip("torch", reason="torch gives the STFT reference")
    x = torch.from_numpy(wave)[None]
    x = torch.cat((x[:, :1], x[:, 1:] - 0.97 * x[:, :-1]), dim=1)
    spec = torch.stft(x, n_fft=512, hop_length=160, win_length=400, center=True,
                      window=torch.hann_window(400, periodic=False), return_complex=True,
                      pad_mode="constant")
    power = spec.abs() ** 2
    mel = torch.log(torch.from_numpy(filterbank).T @ power + 2.0**-24)[0]
    valid = wave.size // 160
    mean = mel[:, :valid].mean(dim=1, keepdim=True)
    std = mel[:, :valid].std(dim=1, keepdim=True) + 1e-5
    out = (mel - mean) / std
    out[:, valid:] = 0.0
    return out.numpy()


def test_features_match_nemo_formula_with_torch_stft(speech):
    frontend = LogMelFrontend(MelConfig(n_mels=128))
    for wave in speech:
        ours, _ = frontend(wave)
        ref = _nemo_formula_torch(wave, frontend.filterbank)
        assert ours[0].shape == ref.shape
        diff = np.abs(ours[0] - ref)
        assert diff.max() < MAX_ABS and diff.mean() < MEAN_ABS


def test_batched_equals_one_by_one(speech):
    frontend = LogMelFrontend(MelConfig(n_mels=80))
    batch, lengths = frontend.from_chunks(speech)
    for wave, row, valid in zip(speech, batch, lengths):
        alone, alone_len = frontend(wave)
        assert alone_len[0] == valid
        np.testing.assert_allclose(row[:, :valid], alone[0, :, :valid], atol=1e-5)
        assert not row[:, valid:].any()  # padding frames are exactly 0


def test_edge_lengths():
    frontend = LogMelFrontend(MelConfig(n_mels=80))
    feats, lengths = frontend.from_chunks([np.zeros(0, np.float32), np.ones(100, np.float32),
                                           np.ones(160, np.float32)])
    assert lengths.tolist() == [0, 0, 1]
    assert feats.shape == (3, 80, 2)
    assert np.isfinite(feats).all()
    assert not feats[:2].any()
    empty, empty_len = frontend(np.zeros((1, 0), np.float32))
    assert empty.shape == (1, 80, 1) and empty_len.tolist() == [0]


def test_bad_input_raises_clear_errors():
    frontend = LogMelFrontend()
    with pytest.raises(AudioError, match="lengths"):
        frontend(np.zeros((2, 100), np.float32), np.array([100, 200]))
    with pytest.raises(AudioError, match="shape"):
        frontend(np.zeros((1, 2, 3), np.float32))
    with pytest.raises(AudioError, match="1-D"):
        pad_batch([np.zeros((2, 2), np.float32)])
    with pytest.raises(ConfigError):
        MelConfig(win_length=1024)
