"""Build TensorRT engines for a Parakeet export and measure TensorRT-vs-ONNX-Runtime parity.

Builds ``encoder.plan`` and ``decoder_joint.plan`` (or ``model.plan`` for CTC) from the ONNX
files of an export directory, with optimisation profiles from the model's own shapes (batch up
to ``--max-batch``, audio up to ``--max-seconds``), FP32 or ``--fp16``. ``--parity`` then runs
the same inputs through TensorRT and ONNX Runtime (CPU, FP32):

- encoder outputs on real speech (max/mean abs, cosine) and ``encoded_lengths``;
- decoder-joint steps (token and duration log-probs, argmax agreement, states);
- end-to-end token ids: TensorRT encoder + decoder-joint through voxgate's greedy decoder vs
  voxgate on ONNX Runtime (equal clips, token edit rate).

FP32 must match within ``--atol``; FP16 is quantified (the report holds the numbers and the
argmax stability) and fails only below ``--min-argmax`` agreement. One JSON report.

    python tools/export/build_trt.py --onnx out/v2 --out out/v2/trt --fp16 --parity

Needs a GPU with ``tensorrt`` (10.x) and ``torch`` (CUDA) for device buffers; not a voxgate
dependency. ONNX Runtime's own TensorRT provider (``VOXGATE_ONNX__PROVIDERS``) is the way to
serve with TensorRT; this tool validates the engines that provider (or Triton) would build.
"""

from __future__ import annotations

import argparse
import sys
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

from voxgate.engines.asr_parakeet import ParakeetAsr, model_files  # noqa: E402
from voxgate.engines.decoding import GreedyTransducer, TransducerConfig  # noqa: E402


def _edit_distance(a: list[int], b: list[int]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def profiles(asr: ParakeetAsr, role: str, max_batch: int, max_seconds: float
             ) -> dict[str, tuple[tuple[int, ...], ...]]:
    """min / opt / max shapes per input, from the loaded model's dimensions."""
    c = asr.contract
    frames = int(max_seconds * 100) + 1
    opt_batch = max(1, max_batch // 2)
    if role in ("encoder", "ctc"):
        return {"audio_signal": ((1, c.mel.n_mels, 5), (opt_batch, c.mel.n_mels, frames // 2),
                                 (max_batch, c.mel.n_mels, frames)),
                "length": ((1,), (opt_batch,), (max_batch,))}
    dim = c.d_model or int(asr._sessions["decoder_joint"].get_inputs()[0].shape[1])
    layers, hidden = c.pred_layers, c.pred_hidden
    return {"encoder_outputs": ((1, dim, 1), (opt_batch, dim, 1), (max_batch, dim, 1)),
            "targets": ((1, 1), (opt_batch, 1), (max_batch, 1)),
            "target_length": ((1,), (opt_batch,), (max_batch,)),
            "input_states_1": ((layers, 1, hidden), (layers, opt_batch, hidden),
                               (layers, max_batch, hidden)),
            "input_states_2": ((layers, 1, hidden), (layers, opt_batch, hidden),
                               (layers, max_batch, hidden))}


def build_engine(onnx_path: Path, plan: Path, shapes: dict[str, tuple[tuple[int, ...], ...]],
                 fp16: bool, workspace_gb: float) -> dict[str, Any]:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        return {"ok": False, "error": "ONNX parse failed", "details": errors}
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return {"ok": False, "error": "TensorRT build failed (see the log above)"}
    plan.write_bytes(bytes(serialized))
    return {"ok": True, "plan": str(plan), "bytes": plan.stat().st_size, "fp16": fp16,
            "profile": {k: [list(s) for s in v] for k, v in shapes.items()}}


class TrtRunner:
    """Run a serialized engine on numpy inputs (device buffers through torch)."""

    def __init__(self, plan: Path) -> None:
        import tensorrt as trt
        import torch

        self._trt, self._torch = trt, torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names
                       if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]

    def __call__(self, feeds: dict[str, np.ndarray], names: list[str] | None = None
                 ) -> list[np.ndarray]:
        torch = self._torch
        keep = []
        for name in self.inputs:
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name])).cuda()
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
        results = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = torch.from_numpy(np.zeros(0, self._trt.nptype(
                self.engine.get_tensor_dtype(name)))).dtype
            tensor = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, tensor.data_ptr())
            results[name] = tensor
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return [results[n].cpu().numpy() for n in (names or self.outputs)]


class TrtJoint:
    """:class:`voxgate.engines.decoding.JointFn` over a decoder-joint engine."""

    def __init__(self, runner: TrtRunner) -> None:
        self.runner = runner

    def __call__(self, frames: np.ndarray, targets: np.ndarray, state1: np.ndarray,
                 state2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out, h, c = self.runner(joint_feed(frames, targets, state1, state2), JOINT_OUTPUTS)
        return out.reshape(frames.shape[0], -1), h, c


def parity(asr: ParakeetAsr, plans: dict[str, Path], clips: list[tuple[str, np.ndarray]],
           atol: float, min_argmax: float, fp16: bool) -> dict[str, Any]:
    from parity_ort import normalise_joint

    names, audio = [n for n, _ in clips], [a for _, a in clips]
    features, lengths = asr.frontend.from_chunks(audio)
    report: dict[str, Any] = {}
    if "ctc" in plans:
        ref = asr._sessions["ctc"].run(["logprobs"], {"audio_signal": features,
                                                       "length": lengths})[0]
        got = TrtRunner(plans["ctc"])({"audio_signal": features, "length": lengths},
                                      ["logprobs"])[0]
        report["ctc"] = compare(ref, got, atol=atol, argmax_axis=-1)
        report["ok"] = report["ctc"]["ok"] if not fp16 else \
            report["ctc"]["argmax_agreement"] >= min_argmax
        return report
    ref, ref_len = asr._sessions["encoder"].run(["outputs", "encoded_lengths"],
                                                {"audio_signal": features, "length": lengths})
    encoder = TrtRunner(plans["encoder"])
    got, got_len = encoder({"audio_signal": features, "length": lengths},
                           ["outputs", "encoded_lengths"])
    report["encoder"] = compare(ref, got, atol=atol, rtol=1e-3)
    report["encoder"]["lengths_equal"] = bool(np.array_equal(ref_len, got_len))

    c = asr.contract
    classes = c.blank_id + 1
    frames = np.concatenate([ref[i, :, : ref_len[i]].T for i in range(len(audio))])
    feed = random_joint_steps(frames, classes, c.pred_layers, c.pred_hidden, 256)
    ort_out = asr._sessions["decoder_joint"].run(JOINT_OUTPUTS, feed)
    joint = TrtRunner(plans["decoder_joint"])
    trt_out = joint(feed, JOINT_OUTPUTS)
    a = normalise_joint(ort_out[0].reshape(256, -1), classes)
    b = normalise_joint(trt_out[0].reshape(256, -1), classes)
    report["decoder_joint"] = {
        "tokens": compare(a[:, :classes], b[:, :classes], atol=atol, argmax_axis=-1),
        "durations": compare(a[:, classes:], b[:, classes:], atol=atol, argmax_axis=-1)
        if a.shape[1] > classes else {"ok": True},
        "states": compare(np.stack(ort_out[1:]), np.stack(trt_out[1:]), atol=atol)}
    report["decoder_joint"]["ok"] = all(v["ok"] for v in report["decoder_joint"].values())

    decoder = GreedyTransducer(TrtJoint(joint), TransducerConfig(
        c.blank_id, c.durations, c.max_symbols_per_step), (c.pred_layers, c.pred_hidden))
    reference = [h.tokens for h in asr.recognize(audio)]
    edits = total = 0
    clips_report = {}
    for i, name in enumerate(names):
        enc = np.ascontiguousarray(got[i, :, : got_len[i]].T)[None]
        tokens = decoder.decode(enc, np.array([got_len[i]]))[0].hypothesis.tokens
        distance = _edit_distance(reference[i], tokens)
        edits, total = edits + distance, total + len(reference[i])
        clips_report[name] = {"equal": tokens == reference[i], "edits": distance}
    report["tokens"] = {"clips": clips_report, "token_edit_rate": edits / max(total, 1),
                        "ok": all(v["equal"] for v in clips_report.values())}
    agreement = min(report["decoder_joint"]["tokens"]["argmax_agreement"],
                    report["decoder_joint"]["durations"].get("argmax_agreement", 1.0))
    report["argmax_stability"] = agreement
    if fp16:  # quantified, not held to FP32 tolerances
        report["ok"] = agreement >= min_argmax and report["encoder"]["lengths_equal"]
    else:
        report["ok"] = all(v.get("ok", True) for v in report.values() if isinstance(v, dict))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onnx", type=Path, required=True, help="export directory")
    parser.add_argument("--out", type=Path, required=True, help="where the .plan files go")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--workspace-gb", type=float, default=8.0)
    parser.add_argument("--parity", action="store_true", help="compare with ONNX Runtime")
    parser.add_argument("--audio", type=Path, nargs="*")
    parser.add_argument("--atol", type=float, default=1e-3)
    parser.add_argument("--min-argmax", type=float, default=0.99,
                        help="FP16: lowest acceptable argmax agreement")
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()

    asr = ParakeetAsr(args.onnx)  # contract checks on the ONNX files first
    args.out.mkdir(parents=True, exist_ok=True)
    builds, plans = {}, {}
    for role, path in model_files(args.onnx).items():
        plan = args.out / f"{role}{'.fp16' if args.fp16 else ''}.plan"
        builds[role] = build_engine(path, plan, profiles(asr, role, args.max_batch,
                                                          args.max_seconds),
                                    args.fp16, args.workspace_gb)
        if builds[role]["ok"]:
            plans[role] = plan
    report: dict[str, Any] = {"versions": versions("tensorrt", "torch", "onnxruntime"),
                              "onnx": str(args.onnx), "builds": builds}
    ok = all(b["ok"] for b in builds.values())
    if args.parity and ok:
        report["parity"] = parity(asr, plans, speech(args.audio), args.atol, args.min_argmax,
                                  args.fp16)
        ok = report["parity"]["ok"]
    report["ok"] = ok
    write_report(args.report or args.out / "trt_report.json", report)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
