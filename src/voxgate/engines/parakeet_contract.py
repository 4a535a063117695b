"""The Parakeet model contract: every number the runtime relies on, checked at each ONNX boundary.

A NeMo export that differs from what the runtime assumes (80 instead of 128 mel bins, a wider
predictor state, a different duration list) does not crash: it silently transcribes garbage.
So the numbers live in one place, ``contracts/<name>.contract.json``, each with its source
(NeMo config key, paper section, export metadata; see ``docs/CONTRACT_SOURCES.md``), and the
runtime compares the loaded files and every encoder / decoder-joint call against it, raising a
:class:`~voxgate.errors.ModelError` that names the mismatch and the source of the expected value.

Catalogue models name their contract (``ModelSpec.options["contract"]``); a local directory
without one gets a contract *derived* from its own ``config.json``, ``vocab.txt`` and ONNX
signatures, which still catches files that disagree with each other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ModelError
from .features import MelConfig

__all__ = [
    "ModelType",
    "ParakeetContract",
    "contract_path",
    "load_contract",
    "derive_contract",
    "subsampled_lengths",
    "check_vocab",
    "check_config",
    "check_session",
    "check_encoder_output",
    "check_joint_output",
]

logger = logging.getLogger(__name__)

ModelType = Literal["tdt", "rnnt", "ctc"]
_ONNX_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)", "int32": "tensor(int32)"}
_DEFAULT_DURATIONS = (0, 1, 2, 3, 4)


@dataclass(frozen=True, slots=True)
class ParakeetContract:
    """The values one model must satisfy (a loaded contract file or one derived from files)."""

    name: str
    model_type: ModelType
    mel: MelConfig
    subsampling_factor: int
    vocab_size: int  # real tokens; blank id == vocab_size
    durations: tuple[int, ...] = ()
    max_symbols_per_step: int = 10
    d_model: int | None = None  # None: not pinned
    pred_layers: int | None = None
    pred_hidden: int | None = None
    targets_dtype: str = "int32"
    languages: tuple[str, ...] = ()
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def blank_id(self) -> int:
        return self.vocab_size

    @property
    def joint_width(self) -> int:
        """Width of a decoder-joint output row: tokens, blank, duration logits."""
        return self.vocab_size + 1 + len(self.durations)

    @property
    def frame_shift_s(self) -> float:
        return self.mel.hop_length / self.mel.sample_rate * self.subsampling_factor

    def source(self, key: str) -> str:
        found = self.sources.get(key)
        return f"{self.name}: {found}" if found else f"contract {self.name}"

    def violation(self, what: str, got: object, want: object, key: str) -> ModelError:
        return ModelError(f"{what} is {got}, but the model contract expects {want} "
                          f"(source: {self.source(key)})")


def contract_path(name: str) -> Path:
    """Where contract ``name`` lives: packaged in the wheel, or the source checkout's copy."""
    here = Path(__file__).resolve()
    candidates = [here.parent.parent / "contracts", here.parents[3] / "contracts"]
    for directory in candidates:
        path = directory / f"{name}.contract.json"
        if path.is_file():
            return path
    raise ModelError(f"model contract {name!r} not found (looked in "
                     f"{', '.join(str(c) for c in candidates)})")


def load_contract(name: str, variant: str | None = None) -> ParakeetContract:
    """Read ``contracts/<name>.contract.json``; ``variant`` picks vocabulary size and languages."""
    path = contract_path(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        feats, enc, joint, dec = (data["features"], data["encoder"], data["decoder_joint"],
                                  data["decoding"])
        variants = data.get("variants", {})
        if variant is None and len(variants) == 1:
            variant = next(iter(variants))
        if variant not in variants:
            raise ModelError(f"{path}: variant {variant!r} not in {sorted(variants)}")
        chosen = variants[variant]
        if chosen.get("blank_id", chosen["vocab_size"]) != chosen["vocab_size"]:
            raise ModelError(f"{path}: blank_id must equal vocab_size (blank is the last id)")
        mel = MelConfig(sample_rate=data["audio"]["sample_rate"], n_mels=feats["n_mels"],
                        n_fft=feats["n_fft"], win_length=feats["win_length"],
                        hop_length=feats["hop_length"], preemphasis=feats["preemphasis"],
                        log_guard=feats["log_guard"], normalize=feats["normalize"],
                        std_eps=feats["std_eps"], f_min=feats["f_min"], f_max=feats["f_max"])
        return ParakeetContract(
            name=f"{data['name']}/{variant}", model_type=dec["model_type"], mel=mel,
            subsampling_factor=enc["subsampling_factor"], vocab_size=chosen["vocab_size"],
            durations=tuple(dec.get("durations", ())),
            max_symbols_per_step=dec.get("max_symbols_per_step", 10),
            d_model=enc.get("d_model"), pred_layers=joint.get("pred_rnn_layers"),
            pred_hidden=joint.get("pred_hidden"),
            targets_dtype=joint["inputs"]["targets"]["dtype"],
            languages=tuple(chosen.get("languages", ())), sources=_variant_sources(
                data.get("sources", {}), variant))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{path}: malformed contract ({type(exc).__name__}: {exc})") from exc


def _variant_sources(sources: Mapping[str, str], variant: str) -> dict[str, str]:
    """Sources with ``variants.<variant>.x`` also filed under ``variants.x``."""
    out = dict(sources)
    prefix = f"variants.{variant}."
    for key, value in sources.items():
        if key.startswith(prefix):
            out["variants." + key[len(prefix):]] = value
    return out


def derive_contract(directory: Path, config: Mapping[str, Any], pieces: Sequence[str],
                    signatures: Mapping[str, Any]) -> ParakeetContract:
    """A contract read off a model directory's own files (no catalogue contract for it).

    ``signatures`` maps a session role (``"encoder"``, ``"decoder_joint"``, ``"ctc"``) to an
    ONNX Runtime session; shapes that are static there become pinned values.
    """
    src = {"features.n_mels": f"{directory}/config.json features_size",
           "encoder.subsampling_factor": f"{directory}/config.json subsampling_factor",
           "variants.vocab_size": f"{directory}/vocab.txt"}
    model_type = str(config.get("model_type", "")).removeprefix("nemo-conformer-")
    if model_type not in ("tdt", "rnnt", "ctc"):
        model_type = "ctc" if "ctc" in signatures else "tdt"
    vocab = len(pieces) - 1
    durations: tuple[int, ...] = ()
    pred_layers = pred_hidden = None
    targets_dtype = "int32"
    joint = signatures.get("decoder_joint")
    if joint is not None:
        inputs = {i.name: i for i in joint.get_inputs()}
        outputs = {o.name: o for o in joint.get_outputs()}
        state = inputs.get("input_states_1")
        if state is not None:
            pred_layers = _static(state.shape, 0)
            pred_hidden = _static(state.shape, 2)
        targets = inputs.get("targets")
        if targets is not None:
            targets_dtype = next((k for k, v in _ONNX_TYPES.items() if v == targets.type),
                                 targets.type)
        width = _static(outputs["outputs"].shape, -1) if "outputs" in outputs else None
        extra = None if width is None else width - vocab - 1
        if model_type == "tdt":
            durations = tuple(config.get("durations", _DEFAULT_DURATIONS))
            src["decoding.durations"] = (f"{directory}/config.json durations" if "durations"
                                         in config else "default [0, 1, 2, 3, 4] (NeMo TDT)")
            if extra is not None and extra != len(durations):
                raise ModelError(
                    f"{directory}: decoder_joint outputs {width} values per step, but vocab.txt "
                    f"({vocab} tokens + <blk>) and {len(durations)} TDT durations "
                    f"{list(durations)} make {vocab + 1 + len(durations)}; fix vocab.txt or "
                    "add the model's 'durations' to config.json")
    encoder = signatures.get("encoder") or signatures.get("ctc")
    d_model = None
    if encoder is not None and "encoder" in signatures:
        out = {o.name: o for o in encoder.get_outputs()}.get("outputs")
        d_model = _static(out.shape, 1) if out is not None else None
    n_mels = int(config.get("features_size", 80))
    return ParakeetContract(
        name=f"derived from {directory.name}", model_type=model_type,  # type: ignore[arg-type]
        mel=MelConfig(n_mels=n_mels), subsampling_factor=int(config.get("subsampling_factor", 8)),
        vocab_size=vocab, durations=durations,
        max_symbols_per_step=int(config.get("max_tokens_per_step", 10)), d_model=d_model,
        pred_layers=pred_layers, pred_hidden=pred_hidden, targets_dtype=targets_dtype,
        sources=src)


def _static(shape: Sequence[Any], axis: int) -> int | None:
    """A dimension of an ONNX shape when it is a fixed number, else None."""
    try:
        value = shape[axis]
    except IndexError:
        return None
    return value if isinstance(value, int) and value > 0 else None


def subsampled_lengths(lengths: np.ndarray, factor: int) -> np.ndarray:
    """Encoder frames for ``lengths`` feature frames: NeMo ``calc_length`` of the stride-2,
    kernel-3, padding-1 convolutions, ``log2(factor)`` times (``ceil`` halving)."""
    out = np.asarray(lengths, dtype=np.int64)
    for _ in range(int(factor).bit_length() - 1):
        out = (out + 1) // 2
    return out


def check_vocab(contract: ParakeetContract, pieces: Sequence[str]) -> None:
    if len(pieces) != contract.vocab_size + 1:
        raise contract.violation("vocab.txt size", f"{len(pieces)} pieces",
                                 f"{contract.vocab_size} tokens + <blk> = "
                                 f"{contract.vocab_size + 1}", "variants.vocab_size")
    if pieces[contract.blank_id] != "<blk>":
        raise contract.violation(f"vocab piece {contract.blank_id}",
                                 repr(pieces[contract.blank_id]), "'<blk>'", "decoding.blank")


def check_config(contract: ParakeetContract, config: Mapping[str, Any]) -> None:
    """config.json (as written by the public exports) against the contract."""
    for key, want, source in (("features_size", contract.mel.n_mels, "features.n_mels"),
                              ("subsampling_factor", contract.subsampling_factor,
                               "encoder.subsampling_factor")):
        if key in config and int(config[key]) != want:
            raise contract.violation(f"config.json {key}", config[key], want, source)


def _check_io(contract: ParakeetContract, role: str, declared: Mapping[str, Any],
              name: str, dtype: str, dims: Mapping[int, tuple[int | None, str, str]]) -> None:
    value = declared.get(name)
    if value is None:
        raise ModelError(f"{role} has no {name!r} (has {sorted(declared)}); not a NeMo "
                         f"{contract.model_type.upper()} export (source: "
                         f"{contract.source('encoder.inputs')})")
    if value.type != _ONNX_TYPES[dtype]:
        raise contract.violation(f"{role} {name} type", value.type, _ONNX_TYPES[dtype],
                                 f"decoder_joint.inputs.{name}.dtype")
    for axis, (want, what, key) in dims.items():
        got = _static(value.shape, axis)
        if want is not None and got is not None and got != want:
            raise contract.violation(f"{role} {name} {what} (dim {axis} of {value.shape})",
                                     got, want, key)


def check_session(contract: ParakeetContract, role: str, session: Any) -> None:
    """Declared ONNX inputs/outputs of one session (load time)."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    c = contract
    if role in ("encoder", "ctc"):
        _check_io(c, role, inputs, "audio_signal", "float32",
                  {1: (c.mel.n_mels, "mel bins", "features.n_mels")})
        _check_io(c, role, inputs, "length", "int64", {})
    if role == "encoder":
        _check_io(c, role, outputs, "outputs", "float32",
                  {1: (c.d_model, "encoder dim", "encoder.d_model")})
        _check_io(c, role, outputs, "encoded_lengths", "int64", {})
    elif role == "ctc":
        _check_io(c, role, outputs, "logprobs", "float32",
                  {2: (c.vocab_size + 1, "CTC classes", "variants.vocab_size")})
    elif role == "decoder_joint":
        state_dims = {0: (c.pred_layers, "predictor layers", "decoder_joint.pred_rnn_layers"),
                      2: (c.pred_hidden, "predictor state size", "decoder_joint.pred_hidden")}
        _check_io(c, role, inputs, "encoder_outputs", "float32",
                  {1: (c.d_model, "encoder dim", "encoder.d_model")})
        _check_io(c, role, inputs, "targets", c.targets_dtype, {})
        _check_io(c, role, inputs, "target_length", c.targets_dtype, {})
        for name in ("input_states_1", "input_states_2"):
            _check_io(c, role, inputs, name, "float32", state_dims)
        _check_io(c, role, outputs, "outputs", "float32",
                  {-1: (c.joint_width, "joint output width (tokens + blank + durations)",
                        "decoding.durations")})
        for name in ("output_states_1", "output_states_2"):
            _check_io(c, role, outputs, name, "float32", state_dims)


def check_encoder_output(contract: ParakeetContract, frames: int, lengths: np.ndarray,
                         outputs: np.ndarray, encoded: np.ndarray, *, clamp: bool = False
                         ) -> np.ndarray:
    """One encoder call's results against the contract; returns the lengths to decode.

    ``clamp``: TensorRT in reduced precision may return wrong lengths (fp16 arithmetic), so
    they are clamped to the expected values instead of rejected.
    """
    c = contract
    batch = lengths.shape[0]
    expected_frames = int(subsampled_lengths(np.array([frames]), c.subsampling_factor)[0])
    if outputs.ndim != 3 or outputs.shape[0] != batch:
        raise c.violation("encoder output shape", outputs.shape, "[batch, d_model, frames]",
                          "encoder.outputs")
    if c.d_model is not None and outputs.shape[1] != c.d_model:
        raise c.violation("encoder output dim", outputs.shape[1], c.d_model, "encoder.d_model")
    if outputs.shape[2] != expected_frames:
        raise c.violation(f"encoder output frames for {frames} feature frames",
                          outputs.shape[2], expected_frames, "encoder.subsampling_factor")
    expected = subsampled_lengths(lengths, c.subsampling_factor)
    encoded = np.asarray(encoded, dtype=np.int64).reshape(-1)
    if not np.array_equal(encoded, expected):
        if clamp:
            return expected
        raise c.violation("encoder encoded_lengths", encoded.tolist(), expected.tolist(),
                          "encoder.subsampling_factor")
    return encoded


def check_joint_output(contract: ParakeetContract, rows: int, logits: np.ndarray,
                       state1: np.ndarray, state2: np.ndarray) -> None:
    """One decoder-joint step's results (cheap: shape compares only)."""
    if logits.shape[0] != rows or logits.shape[-1] != contract.joint_width:
        raise contract.violation("decoder_joint output shape", logits.shape,
                                 f"[{rows}, 1, 1, {contract.joint_width}]", "decoding.durations")
    want = (contract.pred_layers, rows, contract.pred_hidden)
    for state in (state1, state2):
        if state.shape[1] != rows or (want[0] is not None and state.shape[0] != want[0]) \
                or (want[2] is not None and state.shape[2] != want[2]):
            raise contract.violation("decoder_joint output state shape", state.shape,
                                     list(want), "decoder_joint.pred_hidden")
