"""NVIDIA Parakeet TDT / RNN-T / CTC (NeMo ONNX exports) on ONNX Runtime, with our own decoding.

Model directory layout (as the public exports, e.g. ``istupakov/parakeet-tdt-0.6b-v2-onnx``):
``encoder-model.onnx`` + ``decoder_joint-model.onnx`` (transducers) or ``model.onnx`` (CTC),
``*.int8.onnx`` variants when present, ``vocab.txt`` (``piece id`` lines, ``▁`` = space,
``<blk>`` last) and ``config.json`` (``model_type``, ``features_size``, ``subsampling_factor``).

Pipeline: :mod:`.features` (NeMo log-mel) -> encoder, one call per batch of chunks ->
:mod:`.decoding` (batched greedy TDT / RNN-T over the decoder-joint session, or vectorised
CTC) -> tokens with 80 ms frame times -> words and segments. Every ONNX boundary is checked
against the model contract (:mod:`.parakeet_contract`). An input up to ``max_whole_s`` (several
minutes; a limit set by memory, not Whisper's 30 s) is encoded whole, as NeMo and onnx-asr do.
A longer one is encoded in overlapping windows over features normalised once for the whole
input: each window sees ``window_context_s`` of audio on either side of the encoder frames it
owns, only owned frames are decoded, and one decoder state runs through them all, so a window
boundary never cuts or repeats a word (see :meth:`ParakeetAsr.recognize`).
Execution providers (CPU, CUDA, TensorRT with fp16 and an engine cache) and thread counts come
from ``Settings.onnx``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, EngineError, ModelError
from ..types import Segment, Word
from .base import AsrCapabilities, AsrOptions, AsrResult
from .decoding import (
    GreedyTransducer,
    Hypothesis,
    TransducerConfig,
    TransducerState,
    ctc_greedy,
    group_words,
    token_spans,
)
from .features import LogMelFrontend, valid_frames
from .parakeet_contract import (
    ParakeetContract,
    check_config,
    check_encoder_output,
    check_joint_output,
    check_session,
    check_vocab,
    derive_contract,
    load_contract,
    subsampled_lengths,
)

__all__ = ["ParakeetAsr", "ParakeetStream", "onnx_providers", "read_vocab", "model_files"]

logger = logging.getLogger(__name__)
_SAMPLE_RATE = 16_000
_SENTENCE_END = (".", "?", "!")
_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                   "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider"}
_FILES = {"encoder": "encoder-model", "decoder_joint": "decoder_joint-model", "ctc": "model"}


def onnx_providers(onnx: Any, trt_profile: dict[str, str] | None = None
                   ) -> list[tuple[str, dict[str, Any]]]:
    """``(provider, options)`` pairs from ``Settings.onnx``; unavailable ones are skipped with a
    warning and CPU always comes last, so a CUDA-less machine still runs."""
    import onnxruntime

    available = set(onnxruntime.get_available_providers())
    chosen: list[tuple[str, dict[str, Any]]] = []
    for name in onnx.providers:
        full = _PROVIDER_NAMES.get(name.lower(), name)
        if full not in available:
            logger.warning("ONNX Runtime provider %s is not available (have %s); skipped",
                           full, ", ".join(sorted(available)))
            continue
        options: dict[str, Any] = {}
        if full == "TensorrtExecutionProvider":
            options["trt_fp16_enable"] = bool(onnx.trt_fp16)
            if onnx.trt_engine_cache_dir:
                Path(onnx.trt_engine_cache_dir).mkdir(parents=True, exist_ok=True)
                options.update(trt_engine_cache_enable=True,
                               trt_engine_cache_path=str(onnx.trt_engine_cache_dir),
                               trt_timing_cache_enable=True,
                               trt_timing_cache_path=str(onnx.trt_engine_cache_dir))
            options.update(trt_profile or {})
        if full not in (p for p, _ in chosen):
            chosen.append((full, options))
    if "CPUExecutionProvider" not in (p for p, _ in chosen):
        chosen.append(("CPUExecutionProvider", {}))
    return chosen


def _open_session(path: Path, onnx: Any, trt_profile: dict[str, str] | None = None,
                  threads: int | None = None) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(int(onnx.intra_op_threads if threads is None
                                           else threads), 0)
    options.inter_op_num_threads = max(int(onnx.inter_op_threads), 0)
    options.log_severity_level = 3
    providers = onnx_providers(onnx, trt_profile)
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options,
                                            providers=[p for p, _ in providers],
                                            provider_options=[o for _, o in providers])
    except Exception as exc:  # onnxruntime raises Fail / InvalidGraph / NoSuchFile types
        raise ModelError(f"cannot load {path}: {exc}") from exc


def read_vocab(path: Path) -> list[str]:
    """``vocab.txt`` (``piece id`` per line) as a list indexed by id."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ModelError(f"cannot read vocabulary {path}: {exc}") from exc
    entries: dict[int, str] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        piece, _, index = line.rpartition(" ")
        if not piece or not index.isdigit():
            raise ModelError(f"{path}:{number}: expected 'piece id', got {line!r}")
        entries[int(index)] = piece
    if sorted(entries) != list(range(len(entries))):
        raise ModelError(f"{path}: token ids are not 0..{len(entries) - 1} without gaps")
    return [entries[i] for i in range(len(entries))]


def model_files(directory: Path, quantization: str | None = None) -> dict[str, Path]:
    """The ONNX files to load: role -> path (``encoder`` + ``decoder_joint``, or ``ctc``).

    ``quantization=None`` prefers full precision and falls back to ``int8`` when only that
    is present; ``"int8"`` (or another suffix) asks for that variant.
    """
    def pick(stem: str) -> Path | None:
        suffixes = [f".{quantization}"] if quantization else ["", ".int8"]
        return next((directory / f"{stem}{s}.onnx" for s in suffixes
                     if (directory / f"{stem}{s}.onnx").is_file()), None)

    encoder, joint = pick(_FILES["encoder"]), pick(_FILES["decoder_joint"])
    if encoder and joint:
        return {"encoder": encoder, "decoder_joint": joint}
    ctc = pick(_FILES["ctc"])
    if ctc:
        return {"ctc": ctc}
    variant = f" ({quantization})" if quantization else ""
    raise ModelError(f"{directory}: no Parakeet ONNX files{variant}: expected encoder-model.onnx "
                     "+ decoder_joint-model.onnx (TDT/RNN-T) or model.onnx (CTC)")


class _OrtJoint:
    """:class:`~.decoding.JointFn` over the decoder-joint session for up to ``rows`` rows.

    Steady state allocates nothing: inputs are bound where they lie and outputs are written
    into buffers kept per row count (ONNX Runtime I/O binding), which also saves ~40% of the
    per-call overhead on small steps. The output shapes were checked against the contract when
    the model was loaded; a model that changes them later fails the binding, reported as a
    contract violation.
    """

    _OUTPUTS = ("outputs", "output_states_1", "output_states_2")

    def __init__(self, session: Any, contract: ParakeetContract, rows: int,
                 window: int = 1) -> None:
        self._session = session
        self.window_size = max(int(window), 1)
        self._frames: np.ndarray | None = None
        self._contract = contract
        self._binding = session.io_binding()
        dtype = np.int32 if contract.targets_dtype == "int32" else np.int64
        self._targets = np.zeros((rows, 1), dtype=dtype)
        self._lengths = np.ones(rows, dtype=dtype)
        self._outputs: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._bound = (-1, -1)
        self._states: tuple[Any, Any] = (None, None)

    def _bind_outputs(self, n: int, k: int, state: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        buffers = self._outputs.get((n, k))
        if buffers is None:
            buffers = (np.empty((n, k, 1, self._contract.joint_width), np.float32),
                       np.empty(state, np.float32), np.empty(state, np.float32))
            self._outputs[(n, k)] = buffers
        if self._bound != (n, k):
            for name, buffer in zip(self._OUTPUTS, buffers, strict=True):
                self._binding.bind_output(name, "cpu", 0, np.float32, list(buffer.shape),
                                          buffer.ctypes.data)
            self._bound = (n, k)
        return buffers

    def _run(self, encoder_outputs: np.ndarray, targets: np.ndarray, state1: np.ndarray,
             state2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, _, k = encoder_outputs.shape
        bind = self._binding.bind_cpu_input
        reshaped = self._bound != (n, k)
        if self._bound[0] != n:  # same buffers for every call with n rows
            bind("targets", self._targets[:n])
            bind("target_length", self._lengths[:n])
        logits, out1, out2 = self._bind_outputs(n, k, state1.shape)
        self._targets[:n, 0] = targets
        if reshaped or encoder_outputs is not self._frames:  # the window buffer stays bound
            bind("encoder_outputs", encoder_outputs)
        if state1 is not self._states[0] or state2 is not self._states[1]:
            bind("input_states_1", state1)  # the decoder keeps its state arrays between
            bind("input_states_2", state2)  # steps, so this is rare
            self._states = (state1, state2)
        try:
            self._session.run_with_iobinding(self._binding)
        except Exception as exc:  # onnxruntime raises its own Fail type on shape mismatch
            raise self._contract.violation(
                "decoder_joint step", f"failing ({exc})",
                f"outputs [{n}, {k}, 1, {self._contract.joint_width}] and states "
                f"{list(state1.shape)}", "decoder_joint.pred_hidden") from exc
        return logits.reshape(n * k, -1), out1, out2

    def __call__(self, frames: np.ndarray, targets: np.ndarray, state1: np.ndarray,
                 state2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, dim = frames.shape
        return self._run(frames.reshape(n, dim, 1), targets, state1, state2)

    def window(self, frames: np.ndarray, targets: np.ndarray, state1: np.ndarray,
               state2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frames ``[k, D]`` (``k <= window``) of one row against one predictor state.

        Always ``window`` frames go in (zero-padded at the end of an utterance): a fixed
        shape keeps the bindings and ONNX Runtime's plans, which costs less than sizing each
        call to fit (measured ~15 us per call on the tiny test model).
        """
        k, dim = frames.shape
        if self._frames is None or self._frames.shape[1] != dim:
            self._frames = np.zeros((1, dim, self.window_size), np.float32)
        self._frames[0, :, :k] = frames.T
        if k < self.window_size:
            self._frames[0, :, k:] = 0.0
        logits, out1, out2 = self._run(self._frames, targets, state1, state2)
        return logits[:k], out1, out2


def _probe_joint(session: Any, contract: ParakeetContract) -> bool:
    """Real decoder-joint calls at load time, checked against the contract.

    Returns whether the joint scores a window of frames exactly like frame-by-frame calls
    (the NeMo export's encoder time axis is dynamic), which window decoding relies on.
    """
    layers, hidden = contract.pred_layers, contract.pred_hidden
    dim = contract.d_model or session.get_inputs()[0].shape[1]
    if layers is None or hidden is None or not isinstance(dim, int):
        return False  # not pinned: ParakeetAsr.decoder() refuses such a model with a clear error
    dtype = np.int32 if contract.targets_dtype == "int32" else np.int64
    frames = np.random.default_rng(0).normal(size=(2, dim, 3)).astype(np.float32)

    def run(rows: int, encoder_outputs: np.ndarray) -> list[np.ndarray]:
        state = np.zeros((layers, rows, hidden), np.float32)
        return session.run(list(_OrtJoint._OUTPUTS), {
            "encoder_outputs": encoder_outputs,
            "targets": np.full((rows, 1), contract.blank_id, dtype),
            "target_length": np.ones(rows, dtype), "input_states_1": state,
            "input_states_2": state})

    for rows in (1, 2):
        check_joint_output(contract, rows, *run(rows, frames[:rows, :, :1]))
    try:
        windowed = run(1, frames[:1])[0].reshape(3, -1)
    except Exception:  # a decoder-joint exported with a fixed time axis of 1
        logger.info("decoder_joint takes one frame per call: window decoding off")
        return False
    single = np.concatenate([run(1, frames[:1, :, i:i + 1])[0].reshape(1, -1)
                             for i in range(3)])
    return windowed.shape == single.shape and bool(np.allclose(windowed, single, atol=1e-5))


@dataclass(frozen=True, slots=True)
class _Window:
    """One encoder call's input for one utterance: audio (encoded as is, features normalised
    over it) or a slice of features normalised over the whole utterance, and the encoder
    frames of that call the utterance keeps (the others are context owned by a neighbour)."""

    audio: np.ndarray | None
    features: np.ndarray | None  # [n_mels, frames]
    size: int  # samples covered, for batching by cost
    keep: tuple[int, int] | None = None  # encoder frames [start, stop); None: all valid


@dataclass(slots=True)
class _Progress:
    """One input's decoding so far, across its windows."""

    windows: list[_Window]
    state: TransducerState | None = None
    ctc: list[np.ndarray] = field(default_factory=list)  # owned CTC log-probs per window


class ParakeetAsr:
    """A Parakeet model shared by all sessions (ORT sessions are thread-safe; per-call state
    lives in the call)."""

    name = "parakeet"

    def __init__(self, model_dir: str | Path, *, model_id: str = "", onnx: Any = None,
                 quantization: str | None = None, contract: ParakeetContract | None = None,
                 languages: Sequence[str] = (), batch_size: int = 8,
                 max_whole_s: float = 300.0, window_context_s: float = 10.0,
                 lookahead: int = 8) -> None:
        from ..config import OnnxSettings

        directory = Path(model_dir)
        if not directory.is_dir():
            raise ModelError(f"{directory}: not a Parakeet model directory")
        self.model_id = model_id or str(directory)
        onnx = onnx or OnnxSettings()
        config = self._read_config(directory)
        files = model_files(directory, quantization)
        self.pieces = read_vocab(directory / "vocab.txt")
        n_mels = contract.mel.n_mels if contract else int(config.get("features_size", 80))
        frames = int(max_whole_s * 100) + 1
        profile = {f"trt_profile_{k}_shapes": f"audio_signal:{b}x{n_mels}x{t},length:{b}"
                   for k, b, t in (("min", 1, 5), ("opt", 1, min(frames, 3001)),
                                   ("max", batch_size, frames))}
        # The decoder-joint runs one small step at a time: a thread pool costs more than it
        # gives there, so it gets one thread unless the settings name a count.
        self._sessions = {
            role: _open_session(path, onnx, None, onnx.intra_op_threads or 1)
            if role == "decoder_joint" else _open_session(path, onnx, profile)
            for role, path in files.items()}
        self.contract = contract or derive_contract(directory, config, self.pieces,
                                                    self._sessions)
        if self.contract.model_type == "ctc" and "ctc" not in files \
                or self.contract.model_type != "ctc" and "ctc" in files:
            raise ModelError(f"{directory}: files {sorted(p.name for p in files.values())} do "
                             f"not hold a {self.contract.model_type.upper()} model "
                             f"({self.contract.source('decoding.model_type')})")
        check_config(self.contract, config)
        check_vocab(self.contract, self.pieces)
        for role, session in self._sessions.items():
            check_session(self.contract, role, session)
        windows_ok = "decoder_joint" in self._sessions and _probe_joint(
            self._sessions["decoder_joint"], self.contract)
        self.lookahead = max(int(lookahead), 1) if windows_ok else 1
        self.frontend = LogMelFrontend(self.contract.mel)
        self.batch_size = max(int(batch_size), 1)
        # windows of whole encoder frames, so frame offsets add up exactly
        self._frame = self.contract.mel.hop_length * self.contract.subsampling_factor
        self.max_whole = max(int(max_whole_s * _SAMPLE_RATE) // self._frame, 1) * self._frame
        self._context = max(int(window_context_s * _SAMPLE_RATE) // self._frame, 0) \
            * self._frame
        if 3 * self._context > self.max_whole:  # as AsrSettings checks
            raise ConfigError(f"Parakeet window context {window_context_s} s on each side "
                              f"leaves too little of a {max_whole_s} s window to keep: use "
                              "at most a third of the whole-input limit")
        self._clamp_lengths = bool(onnx.trt_fp16) and any(
            "TensorrtExecutionProvider" in s.get_providers() for s in self._sessions.values())
        self.files = files
        self.capabilities = self.declared_capabilities(
            self.contract.languages or tuple(languages), self.max_whole / _SAMPLE_RATE)
        logger.info("loaded Parakeet %s (%s, contract %s, providers %s)", self.model_id,
                    self.contract.model_type, self.contract.name,
                    next(iter(self._sessions.values())).get_providers())

    @staticmethod
    def declared_capabilities(languages: Sequence[str] = (),
                              max_utterance_s: float | None = None) -> AsrCapabilities:
        """What a Parakeet TDT model can do, known before loading it: its own chunked streaming
        (:class:`ParakeetStream`), word times, no translation or language detection."""
        return AsrCapabilities(batch=True, streaming=True, word_timestamps=True, translate=False,
                               language_detection=False, languages=tuple(languages),
                               max_utterance_s=max_utterance_s)

    @classmethod
    def capabilities_of(cls, spec: Any) -> AsrCapabilities:
        """Capabilities of a catalogue model of this engine, without loading it."""
        return cls.declared_capabilities(spec.languages)

    @classmethod
    def load(cls, resolved: Any, settings: Any) -> ParakeetAsr:
        options = resolved.spec.options
        contract = load_contract(str(options["contract"]), options.get("variant")) \
            if options.get("contract") else None
        return cls(resolved.path, model_id=resolved.spec.id, onnx=settings.onnx,
                   quantization=options.get("quantization"), contract=contract,
                   languages=resolved.spec.languages, batch_size=settings.asr.batch_size,
                   max_whole_s=settings.asr.parakeet_max_whole_s,
                   window_context_s=settings.asr.parakeet_window_context_s)

    @staticmethod
    def _read_config(directory: Path) -> dict[str, Any]:
        path = directory / "config.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: unreadable config ({exc})") from exc

    # -- model calls ---------------------------------------------------------------------

    def encode(self, chunks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Encoder output ``[B, T, D]`` (CTC: log-probs ``[B, T, V+1]``) and valid frames."""
        return self.encode_features(*self.frontend.from_chunks(chunks))

    def encode_features(self, features: np.ndarray, lengths: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encode` from features ``[B, n_mels, T]`` with valid frame counts ``[B]``."""
        role = "ctc" if "ctc" in self._sessions else "encoder"
        feed = {"audio_signal": features, "length": lengths}
        if role == "ctc":
            (logprobs,) = self._sessions[role].run(["logprobs"], feed)
            expected = subsampled_lengths(lengths, self.contract.subsampling_factor)
            want = (len(lengths), int(subsampled_lengths(np.array([features.shape[2]]),
                                                         self.contract.subsampling_factor)[0]),
                    self.contract.vocab_size + 1)
            if logprobs.shape != want:
                raise self.contract.violation("CTC output shape", logprobs.shape, want,
                                              "encoder.subsampling_factor")
            return logprobs, expected
        outputs, encoded = self._sessions[role].run(["outputs", "encoded_lengths"], feed)
        encoded = check_encoder_output(self.contract, features.shape[2], lengths, outputs,
                                       encoded, clamp=self._clamp_lengths)
        return np.ascontiguousarray(outputs.transpose(0, 2, 1)), encoded

    def whole_features(self, signal: np.ndarray, block_s: float = 60.0) -> np.ndarray:
        """Features ``[n_mels, n // hop]`` of one signal normalised over all of it, computed
        ``block_s`` at a time so a long input never holds its whole spectrum.

        Equal to the valid frames of ``frontend(signal)``: each block is framed with
        ``n_fft // 2 + 1`` samples of its neighbours (the centred STFT and pre-emphasis reach
        that far), and the per-bin mean and unbiased std are those of every frame.
        """
        c = self.contract.mel
        raw = LogMelFrontend(replace(c, normalize="none"))
        total = signal.size // c.hop_length
        features = np.empty((c.n_mels, total), np.float32)
        margin = -(-(c.n_fft // 2 + 1) // c.hop_length) * c.hop_length  # whole hops, past
        # the reach of a frame's window and of pre-emphasis
        step = max(int(block_s * c.sample_rate) // c.hop_length, 1)
        for first in range(0, total, step):
            stop = min(first + step, total)
            begin = max(first * c.hop_length - margin, 0)
            end = min(stop * c.hop_length + margin, signal.size)
            block, _ = raw(signal[begin:end])
            skip = (first * c.hop_length - begin) // c.hop_length
            features[:, first:stop] = block[0, :, skip:skip + stop - first]
        if c.normalize == "per_feature" and total:
            wide = features.astype(np.float64)
            mean = wide.mean(axis=1, keepdims=True)
            var = np.square(wide - mean).sum(axis=1, keepdims=True) / max(total - 1, 1)
            del wide
            features -= mean.astype(np.float32)
            features /= (np.sqrt(var) + c.std_eps).astype(np.float32)
        return features

    def decoder(self, rows: int) -> GreedyTransducer:
        """A greedy TDT / RNN-T decoder over this model for batches of up to ``rows``."""
        c = self.contract
        shape = (c.pred_layers, c.pred_hidden)
        if None in shape:
            raise ModelError(f"{self.model_id}: decoder_joint predictor state size is not fixed "
                             "in the ONNX graph; give the model a contract that pins it")
        return GreedyTransducer(_OrtJoint(self._sessions["decoder_joint"], c, rows,
                                          self.lookahead),
                                TransducerConfig(c.blank_id, c.durations, c.max_symbols_per_step),
                                (int(shape[0]), int(shape[1])), lookahead=self.lookahead)

    def plan(self, signal: np.ndarray) -> list[_Window]:
        """The encoder calls for one utterance: itself when it fits ``max_whole``, else
        windows of at most ``max_whole`` that own consecutive encoder frames and see
        ``context`` of audio on either side (frame-aligned, so every window's frame ``j`` is
        the whole input's frame ``start / frame + j``)."""
        if signal.size <= self.max_whole:
            return [_Window(signal, None, signal.size)]
        features = self.whole_features(signal)
        mel_per_frame = self.contract.subsampling_factor
        total = int(subsampled_lengths(np.array([features.shape[1]]), mel_per_frame)[0])
        context = self._context // self._frame
        owned = self.max_whole // self._frame - 2 * context
        windows = []
        for start in range(0, total, owned):
            stop = min(start + owned, total)
            first, last = max(start - context, 0), min(stop + context, total)
            part = features[:, first * mel_per_frame:last * mel_per_frame]
            windows.append(_Window(None, part, part.shape[1] * self.contract.mel.hop_length,
                                   (start - first, stop - first)))
        logger.debug("%.1f s input over the %.1f s whole-input limit: %d windows",
                     signal.size / _SAMPLE_RATE, self.max_whole / _SAMPLE_RATE, len(windows))
        return windows

    def recognize(self, chunks: Sequence[np.ndarray]) -> list[Hypothesis]:
        """Token hypotheses for each chunk (any length).

        Encoder calls are batched up to ``batch_size`` rows and at most ``batch_size`` x 30 s
        of audio (the memory of a full batch of VAD chunks), so a several-minute input is
        encoded alone. Windows of a long input are decoded in order with one decoder state
        (CTC: one best path over the owned frames of all windows).
        """
        signals = [np.asarray(c, dtype=np.float32).reshape(-1) for c in chunks]
        progress = [_Progress(self.plan(s)) for s in signals]
        budget = self.batch_size * 30 * _SAMPLE_RATE
        for round_ in range(max((len(p.windows) for p in progress), default=0)):
            active = [p for p in progress if round_ < len(p.windows)
                      and p.windows[round_].size >= self.contract.mel.hop_length]
            active.sort(key=lambda p: p.windows[round_].size)
            group: list[_Progress] = []
            for p in active:
                if group and (len(group) == self.batch_size
                              or (len(group) + 1) * p.windows[round_].size > budget):
                    self._decode_group(group, round_)
                    group = []
                group.append(p)
            if group:
                self._decode_group(group, round_)
        return [p.state.hypothesis if p.state is not None else self._ctc_best(p)
                for p in progress]

    def _ctc_best(self, p: _Progress) -> Hypothesis:
        if not p.ctc:
            return Hypothesis()
        logprobs = np.concatenate(p.ctc)[None] if len(p.ctc) > 1 else p.ctc[0][None]
        return ctc_greedy(logprobs, np.array([logprobs.shape[1]]), self.contract.blank_id)[0]

    def _features(self, windows: list[_Window]) -> tuple[np.ndarray, np.ndarray]:
        if all(w.audio is not None for w in windows):
            return self.frontend.from_chunks([w.audio for w in windows])  # type: ignore[misc]
        parts = [w.features if w.features is not None
                 else self.frontend(w.audio)[0][0] for w in windows]  # type: ignore[arg-type]
        lengths = np.array([p.shape[1] if w.features is not None
                            else valid_frames(w.audio.size, self.contract.mel.hop_length)
                            for p, w in zip(parts, windows)], dtype=np.int64)
        batch = np.zeros((len(parts), self.contract.mel.n_mels, int(lengths.max()) + 1),
                         np.float32)
        for row, (part, length) in enumerate(zip(parts, lengths)):
            batch[row, :, :length] = part[:, :length]
        return batch, lengths

    def _decode_group(self, group: list[_Progress], round_: int) -> None:
        windows = [p.windows[round_] for p in group]
        encoded, lengths = self.encode_features(*self._features(windows))
        starts = np.array([w.keep[0] if w.keep else 0 for w in windows], dtype=np.int64)
        stops = np.array([min(w.keep[1], int(n)) if w.keep else int(n)
                          for w, n in zip(windows, lengths)], dtype=np.int64)
        if "ctc" in self._sessions:
            for p, rows, start, stop in zip(group, encoded, starts, stops):
                p.ctc.append(rows[start:stop])
            return
        if starts.any():  # owned frames only: shift each row to start at its first one
            width = int((stops - starts).max())
            owned = np.zeros((len(group), width, encoded.shape[2]), np.float32)
            for row, (start, stop) in enumerate(zip(starts, stops)):
                owned[row, :stop - start] = encoded[row, start:stop]
            encoded = owned
        decoder = self.decoder(len(group))
        states = [p.state or decoder.initial_state() for p in group]
        for p, state in zip(group, decoder.decode(encoded, stops - starts, states)):
            p.state = state

    # -- Asr protocol --------------------------------------------------------------------

    def _check(self, options: AsrOptions) -> None:
        if options.task == "translate":
            raise EngineError(f"{self.model_id} cannot translate (speech recognition only)")
        language = options.language
        if language not in (None, "", "auto") and self.capabilities.languages \
                and language not in self.capabilities.languages:
            raise EngineError(f"unsupported language {language!r} for {self.model_id} "
                              f"(supports {', '.join(self.capabilities.languages)})")

    def transcribe(self, audio: np.ndarray, options: AsrOptions) -> AsrResult:
        """One utterance of any length (whole up to ``max_whole``, then overlapping windows)."""
        return self.transcribe_batch([audio], options)[0]

    def transcribe_batch(self, chunks: Sequence[np.ndarray], options: AsrOptions
                         ) -> list[AsrResult]:
        """Several chunks in as few encoder calls as the batch size allows; input order kept."""
        self._check(options)
        language, _ = self.detect_language(np.zeros(0, np.float32))
        if options.language not in (None, "", "auto"):
            language = str(options.language)
        return [self.result(hyp, np.asarray(c).size / _SAMPLE_RATE, options.word_timestamps,
                            language) for hyp, c in zip(self.recognize(chunks), chunks)]

    def detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """Parakeet has no language identification: a one-language model reports that
        language, a multilingual one ``"und"`` (undetermined) with probability 0."""
        languages = self.capabilities.languages
        return (languages[0], 1.0) if len(languages) == 1 else ("und", 0.0)

    def stream(self, chunk_s: float = 1.6, left_context_s: float = 4.0) -> ParakeetStream:
        """A new streaming state sharing this model."""
        return ParakeetStream(self, chunk_s=chunk_s, left_context_s=left_context_s)

    def result(self, hyp: Hypothesis, duration: float, word_timestamps: bool = False,
               language: str = "") -> AsrResult:
        """Hypothesis -> segments (split after sentence-final punctuation) with times."""
        spans = token_spans(hyp, self.pieces, self.contract.frame_shift_s)
        segments: list[Segment] = []
        current: list[Any] = []
        words = group_words(spans)
        for position, word in enumerate(words):
            current.append(word)
            if not (word.word.endswith(_SENTENCE_END) or position == len(words) - 1):
                continue
            first, stop = current[0].first_token, current[-1].first_token + current[-1].tokens
            probs = np.array([s.prob for s in spans[first:stop]])
            segments.append(Segment(
                id=len(segments), start=min(current[0].start, duration),
                end=min(current[-1].end, duration), text=" ".join(w.word for w in current),
                words=[Word(min(w.start, duration), min(w.end, duration), w.word, w.prob)
                       for w in current] if word_timestamps else [],
                avg_logprob=float(np.log(np.maximum(probs, 1e-12)).mean()),
                confidence=float(probs.mean()), tokens=list(hyp.tokens[first:stop])))
            current = []
        return AsrResult(segments=segments, language=language, duration=duration,
                         extra={"tokens": list(hyp.tokens)})


class ParakeetStream:
    """Live decoding in fixed chunks: each chunk is encoded with ``left_context_s`` of audio
    before it, and only the chunk's own encoder frames are decoded, continuing the previous
    decoder state. Chunk and context are whole 80 ms encoder frames so times line up."""

    def __init__(self, asr: ParakeetAsr, chunk_s: float = 1.6, left_context_s: float = 4.0
                 ) -> None:
        frame = asr.contract.mel.hop_length * asr.contract.subsampling_factor
        self.asr = asr
        self.chunk = max(int(chunk_s * _SAMPLE_RATE) // frame, 1) * frame
        self.context = max(int(left_context_s * _SAMPLE_RATE) // frame, 0) * frame
        self._frame = frame
        self._state: TransducerState | None = None
        self.reset()

    @property
    def hypothesis(self) -> Hypothesis:
        return self._state.hypothesis if self._state is not None else self._ctc

    def accept(self, audio: np.ndarray) -> AsrResult:
        """Feed audio (float32 16 kHz, any length); returns the transcript so far."""
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        self._received += audio.size
        self._pending = np.concatenate([self._pending, audio])
        while self._pending.size >= self.chunk:
            piece, self._pending = self._pending[:self.chunk], self._pending[self.chunk:]
            self._decode(piece)
        return self.asr.result(self.hypothesis, self._received / _SAMPLE_RATE, True)

    def finish(self) -> AsrResult:
        """Decode what is left and return the final transcript; the stream is then reset."""
        if self._pending.size >= self.asr.contract.mel.hop_length:
            self._decode(self._pending)
        result = self.asr.result(self.hypothesis, self._received / _SAMPLE_RATE, True)
        self.reset()
        return result

    def reset(self) -> None:
        """Forget everything; the next ``accept`` starts a new utterance at time 0."""
        self._pending = np.zeros(0, np.float32)
        self._history = np.zeros(0, np.float32)
        self._received = 0
        self._state = None
        self._ctc = Hypothesis()
        self._ctc_offset = 0

    def _decode(self, piece: np.ndarray) -> None:
        window = np.concatenate([self._history, piece])
        skip = self._history.size // self._frame
        encoded, lengths = self.asr.encode([window])
        frames = encoded[:, skip:int(lengths[0])]
        valid = np.array([frames.shape[1]])
        if "ctc" in self.asr.files:
            (hyp,) = ctc_greedy(frames, valid, self.asr.contract.blank_id, self._ctc_offset)
            self._ctc.extend(hyp)
            self._ctc_offset += int(valid[0])
        else:
            decoder = self.asr.decoder(1)
            (self._state,) = decoder.decode(frames, valid,
                                            [self._state or decoder.initial_state()])
        self._history = window[max(window.size - self.context, 0):] if self.context else \
            np.zeros(0, np.float32)
        self._history = self._history[self._history.size % self._frame:]
