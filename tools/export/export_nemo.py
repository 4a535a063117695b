"""Export a NeMo Parakeet ``.nemo`` checkpoint to the ONNX layout voxgate (and onnx-asr) load.

Writes into ``--out``: ``encoder-model.onnx`` + ``decoder_joint-model.onnx`` (TDT / RNN-T) or
``model.onnx`` (CTC), ``vocab.txt`` (``piece id``, ``<blk>`` last), ``config.json``,
optionally ``*.int8.onnx`` (``--int8``) and a cache-aware ``encoder-streaming.onnx``
(``--streaming``), then ``model_meta.json`` (every contract value read from the NeMo config) and
``export_report.json`` (versions, hashes, ``onnx.checker`` results, contract comparison).

    python tools/export/export_nemo.py --inspect parakeet-tdt-0.6b-v2.nemo
    python tools/export/export_nemo.py parakeet-tdt-0.6b-v2.nemo --out out/v2 \\
        --contract parakeet-tdt-0.6b --variant v2 --int8 --smoke-test-ort

Needs ``pip install nemo_toolkit[asr] onnx onnxruntime`` (not voxgate dependencies). Exits 1
when the exported model disagrees with the contract or fails ``onnx.checker``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import ROOT, onnx_check, sha256, speech, versions, write_report

sys.path.insert(0, str(ROOT / "src"))

# contract key -> how to read it from the resolved NeMo config (and the tokenizer)
_META_KEYS = (
    "audio.sample_rate", "features.n_mels", "features.n_fft", "features.win_length",
    "features.hop_length", "features.window", "features.normalize", "features.preemphasis",
    "features.log_guard", "features.pad_value", "encoder.subsampling", "encoder.subsampling_factor",
    "encoder.d_model", "decoder_joint.pred_rnn_layers", "decoder_joint.pred_hidden",
    "decoder_joint.joint_hidden", "decoding.durations", "decoding.max_symbols_per_step",
    "vocab_size",
)


def restore(path: Path) -> Any:
    import nemo.collections.asr as nemo_asr

    model = nemo_asr.models.ASRModel.restore_from(str(path), map_location="cpu")
    return model.eval()


def resolved_config(model: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(model.cfg, resolve=True)


def model_meta(config: dict[str, Any], vocab_size: int) -> dict[str, Any]:
    """Contract values as the NeMo config states them (S1 in docs/CONTRACT_SOURCES.md)."""
    pre = config.get("preprocessor", {})
    enc = config.get("encoder", {})
    dec = config.get("decoder", {}).get("prednet", {})
    joint = config.get("joint", {}).get("jointnet", {})
    decoding = config.get("decoding", {})
    defaults = config.get("model_defaults", {})
    rate = int(pre.get("sample_rate", 16000))
    durations = decoding.get("durations") or defaults.get("tdt_durations") or []
    meta = {
        "audio.sample_rate": rate,
        "features.n_mels": pre.get("features", pre.get("nfilt")),
        "features.n_fft": pre.get("n_fft"),
        "features.win_length": round(float(pre.get("window_size", 0.025)) * rate),
        "features.hop_length": round(float(pre.get("window_stride", 0.01)) * rate),
        # NeMo builds its windows with periodic=False (S2): "hann" is the symmetric Hann
        "features.window": {"hann": "hann_symmetric"}.get(pre.get("window", "hann"),
                                                          pre.get("window")),
        "features.normalize": pre.get("normalize"),
        "features.preemphasis": pre.get("preemph", 0.97),
        "features.log_guard": pre.get("log_zero_guard_value", 2.0**-24),
        "features.pad_value": pre.get("pad_value", 0.0),
        "features.dither_training": pre.get("dither"),
        "encoder.subsampling": enc.get("subsampling"),
        "encoder.subsampling_factor": enc.get("subsampling_factor"),
        "encoder.d_model": enc.get("d_model"),
        "decoder_joint.pred_rnn_layers": dec.get("pred_rnn_layers"),
        "decoder_joint.pred_hidden": dec.get("pred_hidden"),
        "decoder_joint.joint_hidden": joint.get("joint_hidden"),
        "decoding.durations": list(durations),
        "decoding.max_symbols_per_step": (decoding.get("greedy") or {}).get("max_symbols"),
        "vocab_size": vocab_size,
    }
    return meta


def contract_diff(meta: dict[str, Any], name: str, variant: str | None) -> list[str]:
    """Keys where the NeMo config and the voxgate contract disagree."""
    contract = json.loads((ROOT / "contracts" / f"{name}.contract.json").read_text())
    flat: dict[str, Any] = {"audio.sample_rate": contract["audio"]["sample_rate"]}
    for section in ("features", "encoder", "decoder_joint", "decoding"):
        for key, value in contract[section].items():
            flat[f"{section}.{key}"] = value
    if variant:
        flat["vocab_size"] = contract["variants"][variant]["vocab_size"]
    mismatches = []
    for key in _META_KEYS:
        if key in flat and meta.get(key) is not None and meta[key] != flat[key]:
            if isinstance(flat[key], float) and abs(float(meta[key]) - flat[key]) < 1e-12:
                continue
            mismatches.append(f"{key}: NeMo config {meta[key]!r}, contract {flat[key]!r}")
    return mismatches


def write_vocab(model: Any, out: Path) -> list[str]:
    tokenizer = model.tokenizer
    pieces = tokenizer.ids_to_tokens(list(range(tokenizer.vocab_size)))
    pieces = [*pieces, "<blk>"]
    (out / "vocab.txt").write_text("".join(f"{p} {i}\n" for i, p in enumerate(pieces)),
                                   encoding="utf-8")
    return pieces


def export(model: Any, out: Path, meta: dict[str, Any], kind: str) -> list[Path]:
    """NeMo's own exporter: an RNN-T/TDT model becomes encoder-<name> + decoder_joint-<name>."""
    model.export(str(out / "model.onnx"), check_trace=False)
    files = [out / "encoder-model.onnx", out / "decoder_joint-model.onnx"] \
        if kind != "ctc" else [out / "model.onnx"]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"NeMo export did not write {missing} (got "
                         f"{sorted(p.name for p in out.glob('*.onnx'))})")
    config = {"model_type": f"nemo-conformer-{kind}", "features_size": meta["features.n_mels"],
              "subsampling_factor": meta["encoder.subsampling_factor"]}
    if kind != "ctc":
        config["max_tokens_per_step"] = meta["decoding.max_symbols_per_step"] or 10
    if kind == "tdt":
        config["durations"] = meta["decoding.durations"]
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return files


def export_streaming(model: Any, out: Path, context: list[int]) -> Path:
    """A cache-aware encoder (limited attention context) for chunked streaming experiments.

    Parakeet TDT 0.6B is trained with full attention; limited-context streaming needs its
    accuracy measured before use (``parity_ort.py`` on the streaming file).
    """
    model.encoder.set_default_att_context_size(context)
    model.set_export_config({"cache_support": "True"})
    path = out / "encoder-streaming.onnx"
    model.encoder.export(str(path), check_trace=False)
    return path


def quantize(files: list[Path]) -> list[Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    written = []
    for path in files:
        target = path.with_name(path.stem + ".int8.onnx")
        quantize_dynamic(path, target, weight_type=QuantType.QInt8, use_external_data_format=True)
        written.append(target)
    return written


def model_kind(model: Any, meta: dict[str, Any]) -> str:
    name = type(model).__name__.lower()
    if "ctc" in name and "hybrid" not in name:
        return "ctc"
    return "tdt" if meta["decoding.durations"] else "rnnt"


def smoke_test(out: Path, contract: str | None, variant: str | None) -> dict[str, Any]:
    """Load the export with voxgate (contract checks included) and transcribe one clip."""
    from voxgate.engines.asr_parakeet import ParakeetAsr
    from voxgate.engines.base import AsrOptions
    from voxgate.engines.parakeet_contract import load_contract

    asr = ParakeetAsr(out, contract=load_contract(contract, variant) if contract else None)
    name, audio = speech(None)[0]
    return {"clip": name, "text": asr.transcribe(audio, AsrOptions()).text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path, help=".nemo checkpoint")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--inspect", action="store_true", help="print the contract values only")
    parser.add_argument("--contract", help="contract name to compare with (contracts/)")
    parser.add_argument("--variant", help="contract variant (v2, v3)")
    parser.add_argument("--int8", action="store_true", help="also write dynamic int8 variants")
    parser.add_argument("--streaming", action="store_true",
                        help="also export a cache-aware streaming encoder")
    parser.add_argument("--att-context", default="70,13",
                        help="left,right attention context (frames) for --streaming")
    parser.add_argument("--smoke-test-ort", action="store_true",
                        help="load the export with voxgate and transcribe a clip")
    args = parser.parse_args()

    model = restore(args.model)
    config = resolved_config(model)
    meta = model_meta(config, int(model.tokenizer.vocab_size))
    if args.inspect:
        print(json.dumps(meta, indent=2))
        return
    if args.out is None:
        parser.error("--out is required unless --inspect")
    args.out.mkdir(parents=True, exist_ok=True)
    kind = model_kind(model, meta)
    mismatches = contract_diff(meta, args.contract, args.variant) if args.contract else []
    files = export(model, args.out, meta, kind)
    write_vocab(model, args.out)
    if args.streaming:
        files.append(export_streaming(model, args.out,
                                      [int(x) for x in args.att_context.split(",")]))
    if args.int8:
        files += quantize([f for f in files if f.name != "encoder-streaming.onnx"])
    checks = {f.name: onnx_check(f) for f in files}
    meta_doc = {"source": str(args.model), "sha256": sha256(args.model), "kind": kind,
                "values": meta, "nemo_config": config}
    (args.out / "model_meta.json").write_text(json.dumps(meta_doc, indent=2, default=str))
    report: dict[str, Any] = {
        "versions": versions("nemo", "torch", "onnx", "onnxruntime"),
        "model": str(args.model), "kind": kind,
        "files": {f.name: {"sha256": sha256(f), "bytes": f.stat().st_size} for f in files},
        "onnx_checker": checks, "contract": args.contract, "variant": args.variant,
        "contract_mismatches": mismatches,
    }
    if args.smoke_test_ort and not mismatches:
        report["smoke_test"] = smoke_test(args.out, args.contract, args.variant)
    write_report(args.out / "export_report.json", report)
    failed = mismatches or [n for n, c in checks.items() if not c["ok"]]
    if failed:
        raise SystemExit(f"export does not pass: {failed}")


if __name__ == "__main__":
    main()
