"""PyTorch vs ONNX Runtime parity for a Parakeet export: per component, then end-to-end tokens.

Components: front end (NeMo preprocessor vs voxgate's numpy features), encoder (same features
in), decoder-joint (the same steps: frames, previous tokens and predictor states), and finally
token ids of whole utterances (PyTorch greedy vs voxgate on ONNX Runtime). Joint outputs are
compared after log-softmax over the token and duration parts separately (an export may or may
not apply it), with argmax agreement reported too. Writes one JSON report; exits 1 on failure.

    # a NeMo checkpoint against its export (tools/export/export_nemo.py)
    python tools/export/parity_ort.py --nemo parakeet-tdt-0.6b-v2.nemo --onnx out/v2
    # the tool itself, on the tiny random-weight model the tests use (needs torch only)
    python tools/export/parity_ort.py --self-test

Heavy dependencies (torch, nemo_toolkit) are imported here only; ``src/`` never imports this.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import (
    JOINT_OUTPUTS,
    ROOT,
    compare,
    joint_feed,
    random_joint_steps,
    speech,
    versions,
    write_report,
)

sys.path.insert(0, str(ROOT / "src"))

from voxgate.engines.asr_parakeet import ParakeetAsr  # noqa: E402
from voxgate.engines.decoding import GreedyTransducer, TransducerConfig  # noqa: E402

StepFn = Callable[..., tuple[Any, Any, Any]]  # torch (enc, targets, lengths, s1, s2) -> out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def normalise_joint(out: np.ndarray, classes: int) -> np.ndarray:
    """Log-softmax of the token+blank part and of the duration part, side by side."""
    parts = [_log_softmax(out[..., :classes])]
    if out.shape[-1] > classes:
        parts.append(_log_softmax(out[..., classes:]))
    return np.concatenate(parts, axis=-1)


class TorchJoint:
    """A :class:`voxgate.engines.decoding.JointFn` running a PyTorch decoder+joint step."""

    def __init__(self, step: StepFn) -> None:
        self.step = step

    def __call__(self, frames: np.ndarray, targets: np.ndarray, state1: np.ndarray,
                 state2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        with torch.no_grad():
            out, _, h, c = self.step(*(torch.from_numpy(v) for v in joint_feed(
                frames, targets, state1, state2).values()))
        return out.reshape(frames.shape[0], -1).numpy(), h.numpy(), c.numpy()


def encoder_parity(encoder: Callable[[Any, Any], tuple[Any, Any]], asr: ParakeetAsr,
                   clips: list[np.ndarray], atol: float) -> tuple[dict[str, Any], list[Any]]:
    """Same features into the PyTorch encoder and the ORT encoder; returns torch outputs too."""
    import torch

    features, lengths = asr.frontend.from_chunks(clips)
    with torch.no_grad():
        ref, ref_len = encoder(torch.from_numpy(features), torch.from_numpy(lengths))
    session = asr._sessions["encoder"]
    got, got_len = session.run(["outputs", "encoded_lengths"],
                               {"audio_signal": features, "length": lengths})
    ref, ref_len = ref.numpy(), ref_len.numpy()
    report = compare(ref, got, atol=atol, rtol=1e-3)
    report["lengths_equal"] = bool(np.array_equal(ref_len, got_len))
    report["ok"] = report["ok"] and report["lengths_equal"]
    encoded = [np.ascontiguousarray(ref[i, :, : ref_len[i]].T) for i in range(len(clips))]
    return report, encoded


def joint_parity(step: StepFn, asr: ParakeetAsr, encoded: list[np.ndarray], steps: int,
                 atol: float, seed: int = 0) -> dict[str, Any]:
    """Random (frame, previous token, state) triples through both decoder-joints."""
    import torch

    c = asr.contract
    feed = random_joint_steps(np.concatenate(encoded), c.blank_id + 1, c.pred_layers,
                              c.pred_hidden, steps, seed)
    with torch.no_grad():
        ref, _, h, cell = step(*(torch.from_numpy(v) for v in feed.values()))
    got, got_h, got_c = asr._sessions["decoder_joint"].run(JOINT_OUTPUTS, feed)
    classes = c.blank_id + 1
    ref2, got2 = ref.numpy().reshape(steps, -1), got.reshape(steps, -1)
    report = {
        "steps": steps,
        "tokens": compare(normalise_joint(ref2, classes)[:, :classes],
                          normalise_joint(got2, classes)[:, :classes], atol=atol,
                          argmax_axis=-1),
        "states": compare(np.stack([h.numpy(), cell.numpy()]), np.stack([got_h, got_c]),
                          atol=atol),
    }
    if ref2.shape[1] > classes:
        report["durations"] = compare(normalise_joint(ref2, classes)[:, classes:],
                                      normalise_joint(got2, classes)[:, classes:], atol=atol,
                                      argmax_axis=-1)
    report["ok"] = all(v["ok"] for v in report.values() if isinstance(v, dict))
    return report


def token_parity(reference: list[list[int]], asr: ParakeetAsr, clips: list[np.ndarray],
                 names: list[str]) -> dict[str, Any]:
    ours = [h.tokens for h in asr.recognize(clips)]
    per_clip = {name: {"equal": r == o, "reference": len(r), "voxgate": len(o)}
                for name, r, o in zip(names, reference, ours, strict=True)}
    return {"ok": all(v["equal"] for v in per_clip.values()), "clips": per_clip}


def self_test(atol: float) -> dict[str, Any]:
    """The tool on the tiny random-weight model of the test suite (PyTorch only)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from parakeet_fixtures import TINY, build, torch_modules

    named = speech(None)
    names, clips = [n for n, _ in named], [a for _, a in named]
    spec = TINY["tdt"]
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        asr = ParakeetAsr(build(spec, Path(tmp) / "tdt"))  # sessions live on after the files
    modules = torch_modules(spec)
    encoder, joint = modules["encoder"][0], modules["decoder_joint"][0]
    enc_report, encoded = encoder_parity(encoder, asr, clips, atol)
    c = asr.contract
    decoder = GreedyTransducer(TorchJoint(joint), TransducerConfig(
        c.blank_id, c.durations, c.max_symbols_per_step), (c.pred_layers, c.pred_hidden))
    reference = [decoder.decode(e[None], np.array([len(e)]))[0].hypothesis.tokens
                 for e in encoded]
    return {"model": "tiny random-weight TDT (tests/parakeet_fixtures.py)",
            "encoder": enc_report, "decoder_joint": joint_parity(joint, asr, encoded, 256, atol),
            "tokens": token_parity(reference, asr, clips, names)}


def nemo_parity(nemo_path: Path, onnx_dir: Path, audio: list[Path] | None, atol: float,
                contract: str | None, variant: str | None) -> dict[str, Any]:
    """A NeMo checkpoint against its ONNX export."""
    import torch
    from export_nemo import restore
    from omegaconf import open_dict

    from voxgate.engines.parakeet_contract import load_contract

    model = restore(nemo_path)
    asr = ParakeetAsr(onnx_dir, contract=load_contract(contract, variant) if contract else None)
    named = speech(audio)
    names, clips = [n for n, _ in named], [a for _, a in named]

    from voxgate.engines.features import pad_batch

    batch, lens = pad_batch(clips)
    with torch.no_grad():
        nemo_feats, nemo_len = model.preprocessor(input_signal=torch.from_numpy(batch),
                                                  length=torch.from_numpy(lens))
    ours, ours_len = asr.frontend(batch, lens)
    width = min(nemo_feats.shape[-1], ours.shape[-1])
    features = compare(nemo_feats.numpy()[..., :width], ours[..., :width], atol=1e-3)
    features["lengths_equal"] = bool(np.array_equal(nemo_len.numpy(), ours_len))

    def encoder(feats: Any, length: Any) -> tuple[Any, Any]:
        return model.encoder(audio_signal=feats, length=length)

    enc_report, encoded = encoder_parity(encoder, asr, clips, atol)

    def step(enc: Any, targets: Any, _lengths: Any, s1: Any, s2: Any) -> tuple[Any, ...]:
        g, state = model.decoder.predict(targets.long(), state=[s1, s2], add_sos=False,
                                         batch_size=enc.shape[0])
        return model.joint.joint(enc.transpose(1, 2), g), None, state[0], state[1]

    decoding = model.cfg.decoding
    with open_dict(decoding):
        decoding.strategy = "greedy"
        decoding.greedy.max_symbols = asr.contract.max_symbols_per_step
    model.change_decoding_strategy(decoding)
    with tempfile.TemporaryDirectory() as tmp:
        from voxgate.audio import encode_wav

        paths = []
        for name, audio_clip in named:
            path = Path(tmp) / f"{Path(name).stem}.wav"
            path.write_bytes(encode_wav(audio_clip))
            paths.append(str(path))
        hyps = model.transcribe(paths, batch_size=1, return_hypotheses=True)
    if isinstance(hyps, tuple):  # older NeMo: (best, all)
        hyps = hyps[0]
    reference = [[int(t) for t in h.y_sequence] for h in hyps]
    return {"model": str(nemo_path), "onnx": str(onnx_dir), "features": features,
            "encoder": enc_report, "decoder_joint": joint_parity(step, asr, encoded, 512, atol),
            "tokens": token_parity(reference, asr, clips, names)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("--nemo", type=Path, help=".nemo checkpoint (PyTorch reference)")
    parser.add_argument("--onnx", type=Path, help="export directory (voxgate layout)")
    parser.add_argument("--audio", type=Path, nargs="*", help="clips (default: LibriVox)")
    parser.add_argument("--contract", help="check the export against this contract too")
    parser.add_argument("--variant")
    parser.add_argument("--atol", type=float, default=1e-3)
    parser.add_argument("--report", type=Path, default=Path("parity_ort.json"))
    args = parser.parse_args()
    if args.self_test:
        report = self_test(args.atol)
    elif args.nemo and args.onnx:
        report = nemo_parity(args.nemo, args.onnx, args.audio, args.atol, args.contract,
                             args.variant)
    else:
        parser.error("give --self-test, or --nemo and --onnx")
    report["versions"] = versions("torch", "onnxruntime", "nemo")
    report["ok"] = all(v.get("ok", True) for v in report.values() if isinstance(v, dict))
    write_report(args.report, report)
    for key in ("features", "encoder", "decoder_joint", "tokens"):
        if key in report:
            print(f"{key:14s} {'ok' if report[key].get('ok', True) else 'FAILED'}")
    if not report["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
