"""Tiny random-weight Parakeet-style models with the exact NeMo ONNX export signature.

No Parakeet weights are reachable from CI, so the runtime is tested on models built here with
PyTorch (CPU) and exported with ``torch.onnx.export``, in the layout of the public exports
(``istupakov/parakeet-tdt-0.6b-v2-onnx``):

- ``encoder-model.onnx``: ``audio_signal [B, n_mels, T]`` f32, ``length [B]`` i64 ->
  ``outputs [B, D, T/8]`` f32, ``encoded_lengths [B]`` i64 (three stride-2 convolutions, like
  NeMo's ``dw_striding`` subsampling, masked past each length so batching changes nothing);
- ``decoder_joint-model.onnx``: ``encoder_outputs [B, D, 1]``, ``targets [B, 1]`` i32,
  ``target_length [B]`` i32, ``input_states_1/2 [L, B, H]`` ->
  ``outputs [B, 1, 1, V+1(+durations)]``, ``prednet_lengths``, ``output_states_1/2`` (LSTM
  predictor with blank-as-pad embedding);
- ``model.onnx`` (CTC): ``audio_signal``, ``length`` -> ``logprobs [B, T/8, V+1]``;
- ``vocab.txt`` (``piece id``, ``<blk>`` last) and ``config.json`` as onnx-asr reads them.

Building needs ``torch`` (tests skip without it); results are cached on disk, so every test
module shares one build per session. ``bench/parakeet.py`` uses the same builder.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

Kind = Literal["tdt", "rnnt", "ctc"]
_STAMP = "built.json"
_BUILDER_VERSION = 7  # bump when the modules below change, so cached builds are redone


@dataclass(frozen=True)
class TinySpec:
    kind: Kind = "tdt"
    n_mels: int = 80
    d_model: int = 48
    conv_channels: int = 32
    attention_layers: int = 0  # 0: convolutions only (tiny); >0: masked self-attention blocks
    pred_hidden: int = 32
    pred_layers: int = 2
    joint_hidden: int = 48
    vocab_size: int = 40  # real tokens; blank is vocab_size
    durations: tuple[int, ...] = (0, 1, 2, 3, 4)
    blank_bias: float = 0.0  # added to the calibrated blank logit (see _calibrate_blank)
    logit_scale: float = 4.0
    seed: int = 0
    # True: the encoder standardises its output over each whole input (every frame depends on
    # all audio, as with full attention). False: by constants measured at build time, so an
    # encoder frame sees only ~15 feature frames around it (a model whose context a window's
    # overlap covers: windowed decoding must then equal whole decoding exactly)
    utterance_norm: bool = True

    @property
    def model_type(self) -> str:
        return f"nemo-conformer-{self.kind}"


TINY = {
    "tdt": TinySpec(kind="tdt"),
    "rnnt": TinySpec(kind="rnnt", durations=(), blank_bias=0.5),  # fewer symbol-cap runs
    "ctc": TinySpec(kind="ctc", durations=()),
}
# local-context variants for the windowed long-input path (see TinySpec.utterance_norm)
LOCAL = {
    "tdt": TinySpec(kind="tdt", utterance_norm=False),
    "ctc": TinySpec(kind="ctc", durations=(), utterance_norm=False),
}
# A mid-size model (~25M parameters) for encoder scaling and GPU runs; vocabulary as Parakeet v2.
MID = TinySpec(kind="tdt", n_mels=128, d_model=512, conv_channels=256, attention_layers=6,
               pred_hidden=640, joint_hidden=640, vocab_size=1024, seed=1)


def vocab_pieces(size: int) -> list[str]:
    """``size`` unique SentencePiece-style pieces: ``<unk>``, word starts ``▁x``, suffixes."""
    letters = string.ascii_lowercase
    pieces = ["<unk>"]
    candidates = [f"\u2581{a}" for a in letters] + list(letters) + \
        [f"\u2581{a}{b}" for a in letters for b in letters] + \
        [f"{a}{b}" for a in letters for b in letters] + list(".,?!'")
    for piece in candidates:
        if len(pieces) == size:
            break
        pieces.append(piece)
    if len(pieces) < size:
        raise ValueError(f"cannot make {size} unique pieces")
    return pieces


# ONNX names and dynamic axes of each exported file, as NeMo writes them
SIGNATURES: dict[str, tuple[str, list[str], list[str], dict[str, dict[int, str]]]] = {
    "ctc": ("model.onnx", ["audio_signal", "length"], ["logprobs"],
            {"audio_signal": {0: "batch", 2: "time"}, "length": {0: "batch"},
             "logprobs": {0: "batch", 1: "frames"}}),
    "encoder": ("encoder-model.onnx", ["audio_signal", "length"], ["outputs", "encoded_lengths"],
                {"audio_signal": {0: "batch", 2: "time"}, "length": {0: "batch"},
                 "outputs": {0: "batch", 2: "frames"}, "encoded_lengths": {0: "batch"}}),
    "decoder_joint": (
        "decoder_joint-model.onnx",
        ["encoder_outputs", "targets", "target_length", "input_states_1", "input_states_2"],
        ["outputs", "prednet_lengths", "output_states_1", "output_states_2"],
        {"encoder_outputs": {0: "batch", 2: "frames"}, "targets": {0: "batch"},
         "target_length": {0: "batch"}, "input_states_1": {1: "batch"},
         "input_states_2": {1: "batch"}, "outputs": {0: "batch"},
         "prednet_lengths": {0: "batch"}, "output_states_1": {1: "batch"},
         "output_states_2": {1: "batch"}}),
}


def torch_modules(spec: TinySpec) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """The seeded PyTorch modules of ``spec`` with example inputs, by role (``encoder`` +
    ``decoder_joint``, or ``ctc``); ``tools/export/parity_ort.py --self-test`` uses them too."""
    import torch

    torch.manual_seed(spec.seed)
    encoder = _encoder_module(spec).eval()
    batch, frames = 2, 97
    features = torch.randn(batch, spec.n_mels, frames)
    length = torch.tensor([frames, 61], dtype=torch.int64)
    if spec.kind == "ctc":
        return {"ctc": (_ctc_module(spec, encoder).eval(), (features, length))}
    joint = _decoder_joint_module(spec).eval()
    states = torch.zeros(spec.pred_layers, batch, spec.pred_hidden)
    example = (torch.randn(batch, spec.d_model, 1), torch.zeros(batch, 1, dtype=torch.int32),
               torch.ones(batch, dtype=torch.int32), states, states)
    return {"encoder": (encoder, (features, length)), "decoder_joint": (joint, example)}


def build(spec: TinySpec, directory: Path) -> Path:
    """Export ``spec`` into ``directory`` (reused when already built with the same spec)."""
    stamp = directory / _STAMP
    wanted = json.dumps({"builder": _BUILDER_VERSION, **asdict(spec)}, sort_keys=True)
    if stamp.is_file() and stamp.read_text() == wanted:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    for role, (module, example) in torch_modules(spec).items():
        filename, inputs, outputs, axes = SIGNATURES[role]
        _export(module, example, directory / filename, inputs, outputs, axes)
    pieces = vocab_pieces(spec.vocab_size) + ["<blk>"]
    (directory / "vocab.txt").write_text(
        "".join(f"{piece} {i}\n" for i, piece in enumerate(pieces)), encoding="utf-8")
    config = {"model_type": spec.model_type, "features_size": spec.n_mels,
              "subsampling_factor": 8}
    if spec.kind != "ctc":
        config["max_tokens_per_step"] = 10
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    stamp.write_text(wanted)
    return directory


def quantize_int8(directory: Path) -> None:
    """Add ``*.int8.onnx`` siblings (dynamic int8 weights), as the public exports ship."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in ("encoder-model", "decoder_joint-model", "model"):
        source = directory / f"{name}.onnx"
        target = directory / f"{name}.int8.onnx"
        if source.is_file() and not target.is_file():
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)


def _export(module, args, path: Path, inputs, outputs, axes) -> None:
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter and LSTM batch notices
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17,
                          input_names=inputs, output_names=outputs, dynamic_axes=axes)


def _encoder_module(spec: TinySpec):
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, dim: int) -> None:
            super().__init__()
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)
            self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.scale = dim ** -0.5

        def forward(self, x, pad):  # x [B, T, D], pad [B, T] True where padding
            q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
            scores = (q @ k.transpose(1, 2)) * self.scale
            scores = scores.masked_fill(pad[:, None, :], -1e4)
            x = x + self.out(scores.softmax(dim=-1) @ v)
            return x + self.ff(self.norm2(x))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            channels = spec.conv_channels
            self.convs = nn.ModuleList([nn.Conv1d(spec.n_mels, channels, 3, 2, 1),
                                        nn.Conv1d(channels, channels, 3, 2, 1),
                                        nn.Conv1d(channels, channels, 3, 2, 1)])
            self.proj = nn.Linear(channels, spec.d_model)
            self.norm = nn.LayerNorm(spec.d_model)
            self.blocks = nn.ModuleList([Attention(spec.d_model)
                                         for _ in range(spec.attention_layers)])
            self.register_buffer("mean", torch.zeros(spec.d_model))
            self.register_buffer("std", torch.ones(spec.d_model))
            if not spec.utterance_norm:  # fixed statistics of the projection on noise
                with torch.no_grad():
                    x = torch.randn(8, spec.n_mels, 400)
                    for conv in self.convs:
                        x = torch.relu(conv(x))
                    x = self.norm(self.proj(x.transpose(1, 2))).reshape(-1, spec.d_model)
                    self.mean.copy_(x.mean(dim=0))
                    self.std.copy_(x.std(dim=0))

        def forward(self, audio_signal, length):
            x, lengths = audio_signal, length
            for conv in self.convs:
                x = torch.relu(conv(x))
                lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
                keep = torch.arange(x.shape[2])[None, :] < lengths[:, None]
                x = x * keep[:, None, :].to(x.dtype)
            x = self.norm(self.proj(x.transpose(1, 2)))  # [B, T, D]
            pad = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
            # standardise each dimension over the utterance's valid frames: random weights
            # otherwise leave one direction common to all frames and the argmax never moves
            keep = (~pad)[:, :, None].to(x.dtype)
            if spec.utterance_norm:
                count = keep.sum(dim=1, keepdim=True).clamp(min=1.0)
                mean = (x * keep).sum(dim=1, keepdim=True) / count
                std = ((((x - mean) * keep) ** 2).sum(dim=1, keepdim=True) / count).sqrt()
            else:
                mean, std = self.mean, self.std
            x = torch.tanh((x - mean) / (std + 1e-3)) * keep
            for block in self.blocks:
                x = block(x, pad)
            return x.transpose(1, 2), lengths

    return Encoder()


def _ctc_module(spec: TinySpec, encoder):
    import torch
    from torch import nn

    class Ctc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = nn.Conv1d(spec.d_model, spec.vocab_size + 1, 1)
            with torch.no_grad():
                self.head.weight.mul_(spec.logit_scale)
                hidden = encoder(torch.randn(4, spec.n_mels, 400),
                                 torch.full((4,), 400, dtype=torch.int64))[0]
                _calibrate_blank(self.head.weight[:, :, 0], self.head.bias,
                                 hidden.transpose(1, 2).reshape(-1, spec.d_model), spec)

        def forward(self, audio_signal, length):
            encoded, _ = self.encoder(audio_signal, length)
            return torch.log_softmax(self.head(encoded).transpose(1, 2), dim=-1)

    return Ctc()


def _decoder_joint_module(spec: TinySpec):
    import torch
    from torch import nn

    outputs = spec.vocab_size + 1 + len(spec.durations)

    class DecoderJoint(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(spec.vocab_size + 1, spec.pred_hidden,
                                      padding_idx=spec.vocab_size)  # blank as pad / start
            self.lstm = nn.LSTM(spec.pred_hidden, spec.pred_hidden, spec.pred_layers)
            self.enc = nn.Linear(spec.d_model, spec.joint_hidden)
            self.pred = nn.Linear(spec.pred_hidden, spec.joint_hidden)
            self.out = nn.Linear(spec.joint_hidden, outputs)
            with torch.no_grad():
                self.out.weight.mul_(spec.logit_scale)
                self.pred.weight.mul_(10.0)  # the predictor must matter, or tokens repeat
                targets = torch.randint(0, spec.vocab_size + 1, (1, 2000))
                g, _ = self.lstm(self.embed(targets))
                hidden = torch.tanh(self.enc(torch.tanh(torch.randn(2000, spec.d_model)))
                                    + self.pred(g[0]))
                _calibrate_blank(self.out.weight, self.out.bias, hidden, spec)

        def forward(self, encoder_outputs, targets, target_length, input_states_1,
                    input_states_2):
            embedded = self.embed(targets.long()).transpose(0, 1)  # [U, B, H]
            g, (h, c) = self.lstm(embedded, (input_states_1, input_states_2))
            f = self.enc(encoder_outputs.transpose(1, 2))  # [B, T, J]
            p = self.pred(g.transpose(0, 1))  # [B, U, J]
            z = self.out(torch.tanh(f[:, :, None, :] + p[:, None, :, :]))  # [B, T, U, K]
            return z, target_length, h, c

    return DecoderJoint()


def _calibrate_blank(weight, bias, hidden, spec: TinySpec) -> None:
    """Make blank win about half the frames: a constant blank logit at the median best token.

    Random weights otherwise give all-blank or no-blank outputs, which test nothing.
    """
    import torch

    v = spec.vocab_size
    best_token = (hidden @ weight[:v].T + bias[:v]).max(dim=1).values
    weight[v] = 0.0
    bias[v] = torch.quantile(best_token, 0.5) + spec.blank_bias


def tiny_model(kind: Kind, tmp_path_factory: Any, local: bool = False) -> Path:
    """The tiny ``kind`` model for a test session (skips cleanly without torch);
    ``local``: the local-context variant (:data:`LOCAL`)."""
    import pytest

    pytest.importorskip("torch", reason="building the tiny Parakeet test model needs torch "
                                        "(pip install torch==2.13.0)")
    spec = LOCAL[kind] if local else TINY[kind]
    name = f"{kind}-local" if local else kind
    return build(spec, tmp_path_factory.getbasetemp() / "parakeet-models" / name)


def long_speech() -> Any:
    """~49 s of real read speech: the five LibriVox clips, then the same clips in reverse order
    (an input well over Whisper's 30 s, decoded whole); skips without the clips."""
    import numpy as np
    import pytest

    from voxgate.audio import decode_audio

    clips = [decode_audio(p) for p in
             sorted(Path("/usr/share/pocketsphinx/test/data/librivox").glob("*.wav"))]
    if not clips:
        pytest.skip("pocketsphinx-testdata clips are not installed "
                    "(apt install pocketsphinx-testdata)")
    return np.concatenate(clips + clips[::-1])


def speech_inputs() -> list[Any]:
    """>= 20 real-speech inputs (see :func:`load_speech_inputs`); skips without the clips."""
    import pytest

    inputs = load_speech_inputs()
    if not inputs:
        pytest.skip("pocketsphinx-testdata clips are not installed "
                    "(apt install pocketsphinx-testdata)")
    return inputs


def load_speech_inputs() -> list[Any]:
    """The 5 LibriVox clips plus four slices/offsets of each (25 inputs, ~100 s of speech)."""
    from voxgate.audio import decode_audio

    inputs = []
    for path in sorted(Path("/usr/share/pocketsphinx/test/data/librivox").glob("*.wav")):
        audio = decode_audio(path)
        n = audio.size
        inputs += [audio, audio[8_000:], audio[: int(n * 0.6)], audio[int(n * 0.3): int(n * 0.8)],
                   audio[n // 2 + 123:]]
    return inputs
